//! The E2B control plane: the REST routes the SDKs call (`E2B-CONTRACT.md` §4), each mapped
//! to [`SingleNodeBackend`](firkin_single_node::SingleNodeBackend), behind the API key check
//! ([`crate::auth`]). Bodies and queries are parsed here, not by extractors, so that every bad
//! input gets E2B's error JSON (a body over [`MAX_BODY_BYTES`] is a 413); routes of the
//! contract that are not built yet answer 501 with it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use firkin_single_node::{
    DiskProbe as _, Error, ListOrder, ListQuery, SandboxState, SingleNodeCreateRequest,
    StatvfsDiskProbe, TimeoutAction,
};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::auth::{self, Presented};
use crate::dto::{
    self, ConnectSandbox, LogEntry, LogLine, NewSandbox, Sandbox, SandboxDetail, SetTimeout,
};
use crate::error::ApiError;
use crate::templates;

/// Largest request body the control plane reads (its bodies are small JSON objects).
pub const MAX_BODY_BYTES: usize = 1 << 20;

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

/// The control-plane routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let not_built = |what: &'static str| move || async move { ApiError::not_implemented(what) };
    Router::new()
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes", post(create).get(list_v1))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/logs", get(logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs_v2))
        .route("/sandboxes/{id}/metrics", get(metrics))
        .route("/sandboxes/{id}/refreshes", post(not_built("refreshes")))
        .route("/sandboxes/{id}/snapshots", post(not_built("snapshots")))
        .route("/snapshots", get(not_built("snapshots")))
        .route("/sandboxes/{id}/fork", post(not_built("fork")))
        .route("/sandboxes/{id}/network", put(not_built("network updates")))
        .route("/v3/templates", post(templates::request_build))
        .route("/templates", get(templates::list))
        .route("/templates/{id}", delete(templates::delete))
        .route("/templates/{id}/files/{hash}", get(templates::upload_link))
        .route(
            "/v2/templates/{id}/builds/{bid}",
            post(templates::start_build),
        )
        .route(
            "/templates/{id}/builds/{bid}/status",
            get(templates::build_status),
        )
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route(
            "/templates/tags",
            post(templates::assign_tags).delete(templates::remove_tags),
        )
        .route("/templates/{id}/tags", get(templates::tags))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .route("/health", get(|| async { StatusCode::OK }))
        // The SDK's upload PUT carries no API key: its URL's token stands for it.
        .route(
            "/upload/templates/{id}/files/{hash}",
            put(templates::upload),
        )
        .route("/metrics", get(daemon_metrics))
        .with_state(state)
}

/// Prometheus text: sandboxes by state, create latency, proxy traffic (no API key, like
/// `/health`: it names no sandbox).
async fn daemon_metrics(State(state): Shared) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&state),
    )
        .into_response()
}

/// 401 unless the request carries the configured key, in `X-API-KEY` or as
/// `Authorization: Bearer` (see [`crate::auth`]).
async fn require_api_key(State(state): Shared, request: Request, next: Next) -> Response {
    match auth::presented(request.headers(), &state.config.api_key) {
        Presented::TheKey => next.run(request).await,
        Presented::WrongKey => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key").into_response()
        }
        Presented::Nothing => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no API key: send it as X-API-KEY or Authorization: Bearer (E2B_API_KEY; firkin \
             serve keeps a generated key in <state>/api-key)",
        )
        .into_response(),
    }
}

/// The JSON body of a request: 413 when too large, 400 when not the expected JSON. An empty
/// body reads as `{}` (the SDK sends none on some routes).
pub(crate) async fn json_body<T: DeserializeOwned>(body: Body) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {MAX_BODY_BYTES} bytes"),
            )
        })?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        &bytes[..]
    };
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("invalid request body: {error}")))
}

fn domain(state: &AppState) -> Option<String> {
    state
        .config
        .advertise_domain
        .then(|| state.config.domain.clone())
}

/// A sandbox's disk, MiB: the configured limit, or with none what it could fill, the state
/// file system's free space.
fn disk_size_mb(state: &AppState) -> u64 {
    state.config.disk_size_mb.unwrap_or_else(|| {
        StatvfsDiskProbe
            .measure(state.backend.config().root())
            .map_or(0, |space| space.available_bytes >> 20)
    })
}

/// Turns sessions into their E2B detail; the disk is measured once per request, not once
/// per listed sandbox.
fn details(state: &AppState) -> impl Fn(&firkin_single_node::SandboxSession) -> SandboxDetail {
    let disk_mb = disk_size_mb(state);
    let domain = domain(state);
    move |session| SandboxDetail::of(session, &state.config.envd_version, disk_mb, domain.clone())
}

/// Not-found errors of the backend as E2B words them.
fn for_sandbox(id: &str) -> impl FnOnce(Error) -> ApiError + '_ {
    move |error| match error {
        Error::SandboxNotFound(_) => ApiError::sandbox_not_found(id),
        other => other.into(),
    }
}

async fn create(State(state): Shared, body: Body) -> ApiResult<Response> {
    let body: NewSandbox = json_body(body).await?;
    if body.template_id.is_empty() {
        return Err(ApiError::bad_request("templateID is required"));
    }
    let resources = state.backend.config().default_sandbox_resources;
    let mut request = SingleNodeCreateRequest::new(body.template_id, resources)
        .with_metadata(body.metadata.unwrap_or_default())
        .with_envs(body.env_vars.unwrap_or_default())
        .with_internet_access(body.allow_internet_access.unwrap_or(true))
        .with_auto_resume(body.auto_resume.is_some_and(|a| a.enabled));
    if let Some(timeout) = body.timeout {
        request = request.with_timeout(Duration::from_secs(timeout));
    }
    if body.auto_pause == Some(true) {
        request = request.with_on_timeout(TimeoutAction::Pause);
    }
    let created = state.backend.create(request).await;
    if created.is_err() {
        state.metrics.record_create_failure();
    }
    let session = created?;
    let sandbox = Sandbox::of(&session, &state.config.envd_version, domain(&state));
    Ok((StatusCode::CREATED, axum::Json(sandbox)).into_response())
}

async fn detail(State(state): Shared, Path(id): Path<String>) -> ApiResult<Response> {
    let session = state.backend.get(&id).map_err(for_sandbox(&id))?;
    Ok(axum::Json(details(&state)(&session)).into_response())
}

async fn kill(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state.backend.get(&id).map_err(for_sandbox(&id))?;
    state.backend.delete(&id).await.map_err(for_sandbox(&id))?;
    state
        .cpu_samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn set_timeout(
    State(state): Shared,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let body: SetTimeout = json_body(body).await?;
    state
        .backend
        .set_timeout(&id, Duration::from_secs(body.timeout))
        .await
        .map_err(for_sandbox(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(State(state): Shared, Path(id): Path<String>, body: Body) -> ApiResult<StatusCode> {
    // `{memory?, requireHealthyGuest?}`: a freeze always keeps memory, and envd is asked
    // nothing, so both are accepted as they come.
    let _: serde_json::Value = json_body(body).await?;
    let session = state.backend.get(&id).map_err(for_sandbox(&id))?;
    if session.state() == SandboxState::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already paused"),
        ));
    }
    state.backend.pause(&id).await.map_err(for_sandbox(&id))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect(State(state): Shared, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    let body: ConnectSandbox = json_body(body).await?;
    let (session, resumed) = state
        .backend
        .connect(&id, body.timeout.map(Duration::from_secs))
        .await
        .map_err(for_sandbox(&id))?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let sandbox = Sandbox::of(&session, &state.config.envd_version, domain(&state));
    Ok((status, axum::Json(sandbox)).into_response())
}

async fn resume(State(state): Shared, Path(id): Path<String>, body: Body) -> ApiResult<Response> {
    let body: ConnectSandbox = json_body(body).await?;
    let session = state.backend.get(&id).map_err(for_sandbox(&id))?;
    if session.state() != SandboxState::Paused {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("sandbox {id} is not paused"),
        ));
    }
    let session = state
        .backend
        .resume(&id, body.timeout.map(Duration::from_secs))
        .await
        .map_err(for_sandbox(&id))?;
    let sandbox = Sandbox::of(&session, &state.config.envd_version, domain(&state));
    Ok((StatusCode::CREATED, axum::Json(sandbox)).into_response())
}

async fn metrics(State(state): Shared, Path(id): Path<String>) -> ApiResult<Response> {
    let (session, usage) = state.backend.metrics(&id).await.map_err(for_sandbox(&id))?;
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(i64::MAX);
    let (since_ms, cpu_before) = state
        .cpu_samples
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(id.clone(), (now_ms, usage.cpu_usage_usec))
        .unwrap_or((session.started_at_unix_ms(), 0));
    let cpus = session.resources().vcpus.max(1);
    let wall_usec = (now_ms - since_ms).max(1) as f64 * 1000.0;
    let cpu_used = usage.cpu_usage_usec.saturating_sub(cpu_before) as f64;
    let cpu_used_pct = (cpu_used / (wall_usec * f64::from(cpus)) * 100.0).clamp(0.0, 100.0);
    let metric = dto::SandboxMetric {
        timestamp: dto::rfc3339(now_ms),
        timestamp_unix: now_ms / 1000,
        cpu_count: cpus,
        cpu_used_pct: (cpu_used_pct * 100.0).round() / 100.0,
        mem_used: usage.memory_used_bytes,
        mem_total: session.resources().memory_bytes,
        mem_cache: usage.memory_cache_bytes,
        disk_used: usage.disk_used_bytes,
        disk_total: match state.config.disk_size_mb {
            Some(size_mb) => size_mb << 20,
            None => usage.disk_used_bytes + (disk_size_mb(&state) << 20),
        },
    };
    Ok(axum::Json(vec![metric]).into_response())
}

/// The query pairs of `query`, decoded once.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The v2 list query (see `E2B-CONTRACT.md` §4 on the triple-encoded `metadata`).
fn list_query(query: Option<&str>) -> ApiResult<ListQuery> {
    let mut list = ListQuery::default();
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "state" => {
                for state in value.split(',').filter(|s| !s.is_empty()) {
                    list.states.push(match state {
                        "running" => SandboxState::Running,
                        "paused" => SandboxState::Paused,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "unknown state {other:?}: use running or paused"
                            )));
                        }
                    });
                }
            }
            "metadata" => {
                for (k, v) in form_urlencoded::parse(value.as_bytes()) {
                    let decode = |s: &str| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    };
                    list.metadata.insert(decode(&k), decode(&v));
                }
            }
            "template" | "templateID" => list.template_id = Some(value),
            "order" => {
                list.order = match value.as_str() {
                    "asc" => ListOrder::Ascending,
                    "desc" => ListOrder::Descending,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "unknown order {other:?}: use asc or desc"
                        )));
                    }
                }
            }
            "startedAfter" => {
                list.started_after_unix_ms = Some(dto::parse_rfc3339(&value).ok_or_else(|| {
                    ApiError::bad_request(format!("startedAfter {value:?} is not an RFC 3339 time"))
                })?);
            }
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit {value:?} is not a positive integer"))
                })?;
                if limit == 0 || limit > ListQuery::MAX_LIMIT {
                    return Err(ApiError::bad_request(format!(
                        "limit must be between 1 and {}",
                        ListQuery::MAX_LIMIT
                    )));
                }
                list.limit = Some(limit);
            }
            "nextToken" if !value.is_empty() => list.next_token = Some(value),
            _ => {}
        }
    }
    Ok(list)
}

async fn list_v2(State(state): Shared, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let query = list_query(query.as_deref())?;
    let page = state.backend.list(&query)?;
    let items: Vec<SandboxDetail> = page.sandboxes.iter().map(details(&state)).collect();
    let mut headers = HeaderMap::new();
    if let Some(token) = page.next_token {
        let value = HeaderValue::from_str(&token)
            .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad page token"))?;
        headers.insert("x-next-token", value);
    }
    Ok((headers, axum::Json(items)).into_response())
}

async fn list_v1(State(state): Shared, RawQuery(query): RawQuery) -> ApiResult<Response> {
    let mut list = ListQuery {
        states: vec![SandboxState::Running],
        limit: Some(ListQuery::MAX_LIMIT),
        ..ListQuery::default()
    };
    // v1 filters by `metadata` only (encoded once).
    for (key, value) in query_pairs(query.as_deref()) {
        if key == "metadata" {
            for (k, v) in form_urlencoded::parse(value.as_bytes()) {
                list.metadata.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    let detail = details(&state);
    let mut items = Vec::new();
    loop {
        let page = state.backend.list(&list)?;
        items.extend(page.sandboxes.iter().map(&detail));
        match page.next_token {
            Some(token) => list.next_token = Some(token),
            None => break,
        }
    }
    Ok(axum::Json(items).into_response())
}

/// `start` (unix ms: events at or after it) and `limit` of the logs routes.
fn logs_query(query: Option<&str>) -> ApiResult<(Option<i64>, usize)> {
    let mut start = None;
    let mut limit = 1000;
    for (key, value) in query_pairs(query) {
        match key.as_str() {
            "start" => {
                start = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(format!("start {value:?} is not unix milliseconds"))
                })?);
            }
            "limit" => {
                limit = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit {value:?} is not a number"))
                })?;
            }
            _ => {}
        }
    }
    Ok((start, limit.clamp(1, 10_000)))
}

fn log_events(
    state: &AppState,
    id: &str,
    query: Option<&str>,
) -> ApiResult<Vec<firkin_single_node::LogEvent>> {
    let (start, limit) = logs_query(query)?;
    let events = state
        .backend
        .sandbox_logs(id, None, usize::MAX)
        .map_err(for_sandbox(id))?;
    Ok(events
        .into_iter()
        .filter(|event| start.is_none_or(|start| event.timestamp_unix_ms >= start))
        .take(limit)
        .collect())
}

fn entry_of(event: &firkin_single_node::LogEvent) -> LogEntry {
    LogEntry {
        timestamp: dto::rfc3339(event.timestamp_unix_ms),
        level: format!("{:?}", event.level).to_lowercase(),
        message: event.message.clone(),
        fields: BTreeMap::from([
            ("source".to_owned(), event.source.clone()),
            ("seq".to_owned(), event.seq.to_string()),
        ]),
    }
}

async fn logs_v1(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let events = log_events(&state, &id, query.as_deref())?;
    let logs: Vec<LogLine> = events
        .iter()
        .map(|event| LogLine {
            timestamp: dto::rfc3339(event.timestamp_unix_ms),
            line: event.message.clone(),
        })
        .collect();
    let entries: Vec<LogEntry> = events.iter().map(entry_of).collect();
    Ok(axum::Json(serde_json::json!({ "logs": logs, "logEntries": entries })).into_response())
}

async fn logs_v2(
    State(state): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let events = log_events(&state, &id, query.as_deref())?;
    let entries: Vec<LogEntry> = events.iter().map(entry_of).collect();
    Ok(axum::Json(serde_json::json!({ "logs": entries })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_list_query_decodes_what_the_sdk_sends() {
        // metadata={"team": "a b", "k": "v"} as the Python SDK encodes it.
        let query = "state=running%2Cpaused&metadata=team%3Da%2520b%26k%3Dv&order=desc&limit=5&startedAfter=2026-01-01T00%3A00%3A00%2B00%3A00&nextToken=";
        let list = list_query(Some(query)).unwrap();
        assert_eq!(list.states, [SandboxState::Running, SandboxState::Paused]);
        assert_eq!(list.metadata["team"], "a b");
        assert_eq!(list.metadata["k"], "v");
        assert_eq!(list.order, ListOrder::Descending);
        assert_eq!(list.limit, Some(5));
        assert_eq!(list.started_after_unix_ms, Some(1_767_225_600_000));
        assert_eq!(list.next_token, None);
    }

    #[test]
    fn bad_list_queries_are_rejected_with_a_reason() {
        for query in [
            "state=dead",
            "limit=0",
            "limit=x",
            "order=up",
            "startedAfter=now",
        ] {
            let error = list_query(Some(query)).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{query}");
        }
    }
}
