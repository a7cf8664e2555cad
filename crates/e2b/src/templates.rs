//! The template routes of the Template SDK and the CLI (`E2B-CONTRACT-2.md` §2.3, §2.8):
//! build requests, COPY uploads, build start and status, listing, aliases, tags, delete.
//! Without a builder (a daemon with no image store) they answer 501.
//!
//! Upload URLs point back at this server (`PUT /upload/templates/{id}/files/{hash}`) and carry
//! a token derived from the API key, so the SDK's plain PUT (no API key) is still the key
//! holder's.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use firkin_build::{BuildError, BuildStart, Builder};
use firkin_image::catalog::{BuildStatus, CatalogError};
use firkin_single_node::{BASE_TEMPLATE, ListQuery, SandboxState};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::control::json_body;
use crate::dto::rfc3339;
use crate::error::ApiError;

type Shared = State<Arc<AppState>>;
type ApiResult<T> = Result<T, ApiError>;

fn builder(state: &AppState) -> ApiResult<&Arc<Builder>> {
    state
        .builder
        .as_ref()
        .ok_or_else(|| ApiError::not_implemented("templates (this server has no image store)"))
}

fn build_error(error: BuildError) -> ApiError {
    match error {
        BuildError::BadRequest(m) | BuildError::NotWaiting(m) => ApiError::bad_request(m),
        BuildError::NotFound(m) => ApiError::not_found(m),
        BuildError::DiskFull(m) => ApiError::new(StatusCode::INSUFFICIENT_STORAGE, m),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

fn catalog_error(error: CatalogError) -> ApiError {
    build_error(error.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NewBuild {
    name: Option<String>,
    alias: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// `POST /v3/templates` → 202: the template (new, or the one with that name) and a waiting
/// build of it.
pub(crate) async fn request_build(State(state): Shared, body: Body) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let body: NewBuild = json_body(body).await?;
    let name = body
        .name
        .or(body.alias)
        .ok_or_else(|| ApiError::bad_request("name is required"))?;
    let request = builder
        .templates()
        .catalog
        .request_build(&name, &body.tags)
        .map_err(catalog_error)?;
    let answer = json!({
        "templateID": request.template_id,
        "buildID": request.build_id,
        "public": false,
        "names": [request.name],
        "tags": request.tags,
        "aliases": [request.name],
    });
    Ok((StatusCode::ACCEPTED, axum::Json(answer)).into_response())
}

/// The token of the upload URL for `hash` of `template_id`.
fn upload_token(api_key: &str, template_id: &str, hash: &str) -> String {
    let digest = Sha256::digest(format!("firkin upload\n{api_key}\n{template_id}\n{hash}"));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `GET /templates/{id}/files/{hash}` → 201 `{present, url}`.
pub(crate) async fn upload_link(
    State(state): Shared,
    Path((template_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let present = builder
        .upload_present(&template_id, &hash)
        .map_err(build_error)?;
    // The client reached this server by its Host: the upload goes there too.
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let token = upload_token(&state.config.api_key, &template_id, &hash);
    let scheme = if came_over_tls(&state.config, host) {
        "https"
    } else {
        "http"
    };
    let url =
        format!("{scheme}://{host}/upload/templates/{template_id}/files/{hash}?token={token}");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "present": present, "url": url })),
    )
        .into_response())
}

/// Whether a request with this `Host` reached the TLS listener: with TLS on, the advertised
/// domain carries the TLS listener's port, and a client that used that port spoke TLS.
fn came_over_tls(config: &crate::E2bConfig, host: &str) -> bool {
    let port = |text: &str| text.rsplit_once(':').map(|(_, port)| port.to_owned());
    config.advertise_domain && port(host).is_some() && port(host) == port(&config.domain)
}

/// `PUT /upload/templates/{id}/files/{hash}?token=…` (no API key: the token stands for it).
pub(crate) async fn upload(
    State(state): Shared,
    Path((template_id, hash)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Body,
) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let expected = upload_token(&state.config.api_key, &template_id, &hash);
    let token = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !crate::auth::constant_time_eq(token.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this upload URL is not valid (ask GET /templates/{id}/files/{hash} for one)",
        ));
    }
    let size = builder
        .save_upload(&template_id, &hash, body)
        .await
        .map_err(build_error)?;
    Ok((StatusCode::CREATED, axum::Json(json!({ "size": size }))).into_response())
}

/// `POST /v2/templates/{id}/builds/{bid}` → 202: the build runs in the background.
pub(crate) async fn start_build(
    State(state): Shared,
    Path((template_id, build_id)): Path<(String, String)>,
    body: Body,
) -> ApiResult<StatusCode> {
    let builder = builder(&state)?;
    let start: BuildStart = json_body(body).await?;
    builder
        .start(&template_id, &build_id, start)
        .map_err(build_error)?;
    Ok(StatusCode::ACCEPTED)
}

/// `GET /templates/{id}/builds/{bid}/status?logsOffset&limit&level` → 200.
pub(crate) async fn build_status(
    State(state): Shared,
    Path((template_id, build_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let (mut offset, mut limit, mut level) = (0_usize, 100_usize, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("{key} must be a number")))
        };
        match key.as_ref() {
            "logsOffset" => offset = number()?,
            "limit" => limit = number()?.min(100),
            "level" => level = Some(value.into_owned()),
            _ => {}
        }
    }
    let catalog = &builder.templates().catalog;
    let found = catalog
        .build_state(&template_id, &build_id, offset, limit)
        .map_err(|e| match e {
            CatalogError::NotFound(m) => ApiError::bad_request(m),
            other => catalog_error(other),
        })?;
    let rank = |l: &str| {
        ["debug", "info", "warn", "error"]
            .iter()
            .position(|x| *x == l)
    };
    let floor = level.as_deref().and_then(rank).unwrap_or(0);
    let entries: Vec<_> = found
        .logs
        .iter()
        .filter(|e| rank(&e.level).unwrap_or(1) >= floor)
        .map(|e| {
            json!({
                "timestamp": rfc3339(e.at_unix_ms),
                "level": e.level,
                "message": e.message,
                "step": e.step,
            })
        })
        .collect();
    let mut answer = json!({
        "templateID": template_id,
        "buildID": build_id,
        "status": found.status.as_str(),
        "logs": [],
        "logEntries": entries,
    });
    if found.status == BuildStatus::Error {
        // The step a failure is blamed on is the one of its last error line.
        let all = catalog
            .build_state(&template_id, &build_id, 0, usize::MAX >> 1)
            .map_err(catalog_error)?;
        let step = all
            .logs
            .iter()
            .rev()
            .find(|e| e.level == "error")
            .and_then(|e| e.step.clone());
        answer["reason"] = json!({
            "message": found.reason.unwrap_or_else(|| "the build failed".to_owned()),
            "step": step,
        });
    }
    Ok(axum::Json(answer).into_response())
}

/// `GET /templates/aliases/{alias}` → 200 `{templateID, public}` / 404.
pub(crate) async fn alias(State(state): Shared, Path(alias): Path<String>) -> ApiResult<Response> {
    if alias.trim() == BASE_TEMPLATE {
        return Ok(
            axum::Json(json!({ "templateID": BASE_TEMPLATE, "public": true })).into_response(),
        );
    }
    let builder = builder(&state)?;
    match builder
        .templates()
        .catalog
        .find(&alias)
        .map_err(catalog_error)?
    {
        Some(id) => Ok(axum::Json(json!({ "templateID": id, "public": false })).into_response()),
        None => Err(ApiError::not_found(format!("template '{alias}' not found"))),
    }
}

/// `GET /templates` → 200 `[Template]`, newest first.
pub(crate) async fn list(State(state): Shared) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let resources = state.backend.config().default_sandbox_resources;
    let templates: Vec<_> = builder
        .templates()
        .catalog
        .list()
        .map_err(catalog_error)?
        .into_iter()
        .map(|t| {
            let created = rfc3339(t.created_at * 1000);
            let (build_id, status) = t
                .latest_build
                .map_or((String::new(), "waiting"), |(b, s)| (b, s.as_str()));
            json!({
                "templateID": t.template_id,
                "buildID": build_id,
                "cpuCount": resources.vcpus,
                "memoryMB": resources.memory_bytes >> 20,
                "diskSizeMB": state.config.disk_size_mb.unwrap_or(0),
                "public": false,
                "aliases": [t.name],
                "names": [t.name],
                "createdAt": created,
                "updatedAt": created,
                "createdBy": null,
                "lastSpawnedAt": null,
                "spawnCount": 0,
                "buildCount": 1,
                "envdVersion": state.config.envd_version,
                "buildStatus": status,
            })
        })
        .collect();
    Ok(axum::Json(templates).into_response())
}

/// `DELETE /templates/{id}` → 204; 400 while a running or paused sandbox uses it; 404.
pub(crate) async fn delete(State(state): Shared, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let builder = builder(&state)?;
    let catalog = &builder.templates().catalog;
    let template_id = catalog
        .find(&id)
        .map_err(catalog_error)?
        .ok_or_else(|| ApiError::not_found(format!("template '{id}' not found")))?;
    let users = state
        .backend
        .list(&ListQuery {
            states: vec![SandboxState::Running, SandboxState::Paused],
            template_id: Some(template_id.clone()),
            limit: Some(1),
            ..ListQuery::default()
        })
        .map_err(ApiError::from)?;
    if let Some(user) = users.sandboxes.first() {
        return Err(ApiError::bad_request(format!(
            "template '{id}' is in use by sandbox {} (kill its sandboxes first)",
            user.sandbox_id()
        )));
    }
    catalog.delete(&template_id).map_err(catalog_error)?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_url_is_https_on_the_tls_listeners_port_only() {
        let mut config = crate::E2bConfig::new("key");
        assert!(
            !came_over_tls(&config, "127.0.0.1:49980"),
            "no TLS listener"
        );
        config.domain = "e2b.localhost:49443".into();
        config.advertise_domain = true;
        assert!(came_over_tls(&config, "api.e2b.localhost:49443"));
        assert!(!came_over_tls(&config, "127.0.0.1:49980"));
        assert!(!came_over_tls(&config, "api.e2b.localhost"));
    }
}

#[derive(Deserialize)]
struct AssignTags {
    target: String,
    tags: Vec<String>,
}

#[derive(Deserialize)]
struct RemoveTags {
    name: String,
    tags: Vec<String>,
}

/// `POST /templates/tags` → 201 `{tags, buildID}`.
pub(crate) async fn assign_tags(State(state): Shared, body: Body) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let body: AssignTags = json_body(body).await?;
    let (tags, build_id) = builder
        .templates()
        .catalog
        .assign_tags(&body.target, &body.tags)
        .map_err(catalog_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "tags": tags, "buildID": build_id })),
    )
        .into_response())
}

/// `DELETE /templates/tags` (a JSON body) → 204.
pub(crate) async fn remove_tags(State(state): Shared, body: Body) -> ApiResult<StatusCode> {
    let builder = builder(&state)?;
    let body: RemoveTags = json_body(body).await?;
    builder
        .templates()
        .catalog
        .remove_tags(&body.name, &body.tags)
        .map_err(catalog_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /templates/{id}/tags` → 200 `[{tag, buildID, createdAt}]`.
pub(crate) async fn tags(State(state): Shared, Path(id): Path<String>) -> ApiResult<Response> {
    let builder = builder(&state)?;
    let tags: Vec<_> = builder
        .templates()
        .catalog
        .tags(&id)
        .map_err(catalog_error)?
        .into_iter()
        .map(|(tag, build_id, at)| json!({ "tag": tag, "buildID": build_id, "createdAt": rfc3339(at) }))
        .collect();
    Ok(axum::Json(tags).into_response())
}
