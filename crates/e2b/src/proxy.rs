//! The sandbox proxy: requests for a port inside a sandbox, streamed both ways.
//!
//! A request is for a sandbox when it carries `E2b-Sandbox-Id` (and `E2b-Sandbox-Port`,
//! default 49983), when its `Host` is `<port>-<sandboxID>.<domain>`, or when it is a signed
//! `GET`/`POST /files` URL (the sandbox is then the one whose envd access token makes the
//! signature fit). Such a request is sent on to the port's address from the backend's
//! [`PortRegistry`](firkin_single_node::PortRegistry) with the same method, path, query and
//! end-to-end headers, less the daemon's own credentials ([`crate::auth`]); bodies are
//! streamed frame by frame in both directions, never buffered, so chunked uploads and Connect
//! server streams flow message by message. An `Upgrade` (websocket) request whose target
//! answers 101 becomes a byte pipe.

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode, Uri, Version};
use axum::response::{IntoResponse, Response};
use firkin_single_node::SandboxState;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::AppState;
use crate::auth::strip_daemon_credentials;
use crate::error::{ApiError, port_not_open, sandbox_gone};
use crate::signed_files::{Lookup, SignedFiles, SignedUrls};

pub use crate::signed_files::{
    SCAN_BURST as SIGNED_URL_SCAN_BURST, SCANS_PER_SECOND as SIGNED_URL_SCANS_PER_SECOND,
};

/// The port of envd inside every sandbox (the default of `E2b-Sandbox-Port`).
pub const ENVD_PORT: u16 = 49983;

/// How long connecting to a sandbox port may take before the proxy answers 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an unused connection to a sandbox stays in the pool.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";

/// The proxy's connection pool (keep-alive, per sandbox address), the sandboxes of signed URLs
/// seen before, and its traffic counters.
#[derive(Debug)]
pub struct Proxy {
    client: Client<HttpConnector, Body>,
    /// The sandboxes of signed URLs that named none, and the budget to find them.
    pub(crate) signed_urls: SignedUrls,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_to_sandboxes: AtomicU64,
    bytes_from_sandboxes: AtomicU64,
}

/// What the proxy has carried so far (body bytes, and bytes of upgraded connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Requests forwarded to a sandbox (answered by it or not).
    pub requests: u64,
    /// Body bytes sent to sandboxes.
    pub bytes_to_sandboxes: u64,
    /// Body bytes received from sandboxes.
    pub bytes_from_sandboxes: u64,
    /// Signatures computed to find the sandbox of a signed `/files` URL that named none.
    pub signature_checks: u64,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    /// A proxy with an empty pool.
    #[must_use]
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            signed_urls: SignedUrls::default(),
            counters: Arc::default(),
        }
    }

    /// Traffic so far.
    #[must_use]
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            bytes_to_sandboxes: self.counters.bytes_to_sandboxes.load(Ordering::Relaxed),
            bytes_from_sandboxes: self.counters.bytes_from_sandboxes.load(Ordering::Relaxed),
            signature_checks: self.signed_urls.checks(),
        }
    }
}

/// Answers a request meant for a sandbox (by `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, by
/// `Host: <port>-<id>.<domain>`, or as a signed `/files` URL); hands any other request back
/// for the control plane.
///
/// # Errors
///
/// `Err(request)`: the request is not for a sandbox.
pub async fn route(state: &AppState, request: Request<Body>) -> Result<Response, Request<Body>> {
    match classify(state, &request) {
        Destination::ControlPlane => Err(request),
        Destination::Refused(response) => Ok(response),
        Destination::Sandbox { id, port } => Ok(forward(state, &id, port, request).await),
    }
}

/// Where a request goes.
enum Destination {
    /// Not a sandbox request.
    ControlPlane,
    /// A sandbox request answered without reaching a sandbox (bad port, bad signature).
    Refused(Response),
    /// Port `port` of sandbox `id`.
    Sandbox { id: String, port: u16 },
}

fn classify(state: &AppState, request: &Request<Body>) -> Destination {
    if let Some(id) = request.headers().get(SANDBOX_ID_HEADER) {
        return by_headers(id, request.headers().get(SANDBOX_PORT_HEADER));
    }
    if let Some((id, port)) = by_host(request, &state.config.domain) {
        return Destination::Sandbox { id, port };
    }
    if (request.method() == Method::GET || request.method() == Method::POST)
        && request.uri().path() == "/files"
        && let Some(signed) = SignedFiles::from_request(request)
    {
        return match signed.find(state) {
            Lookup::Sandbox(id) => Destination::Sandbox {
                id,
                port: ENVD_PORT,
            },
            Lookup::NoMatch => Destination::Refused(
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid signature").into_response(),
            ),
            Lookup::OverBudget => Destination::Refused(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many signed /files URLs that name no sandbox; name it with the \
                     E2b-Sandbox-Id header or the host <port>-<sandboxID>.<domain>",
                )
                .into_response(),
            ),
        };
    }
    Destination::ControlPlane
}

fn by_headers(id: &HeaderValue, port: Option<&HeaderValue>) -> Destination {
    let Ok(id) = id.to_str() else {
        return Destination::Refused(
            ApiError::bad_request("the E2b-Sandbox-Id header is not a valid sandbox id")
                .into_response(),
        );
    };
    let port = match port {
        None => ENVD_PORT,
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<u16>().ok())
        {
            Some(port) if port != 0 => port,
            _ => {
                return Destination::Refused(
                    ApiError::bad_request(format!(
                        "the E2b-Sandbox-Port header must be a port number between 1 and \
                         65535, not {:?}",
                        String::from_utf8_lossy(value.as_bytes())
                    ))
                    .into_response(),
                );
            }
        },
    };
    Destination::Sandbox {
        id: id.trim().to_owned(),
        port,
    }
}

/// `<port>-<id>.<domain>[:<any port>]` from the `Host` header (or an absolute URI).
fn by_host(request: &Request<Body>, domain: &str) -> Option<(String, u16)> {
    let host = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().host()?,
    };
    let host = strip_port(host.trim()).trim_end_matches('.');
    let domain = strip_port(domain).trim_end_matches('.');
    if domain.is_empty() || host.len() <= domain.len() + 1 {
        return None;
    }
    let (label, suffix) = host.split_at(host.len() - domain.len() - 1);
    let suffix = suffix.strip_prefix('.')?;
    if !suffix.eq_ignore_ascii_case(domain) || label.contains('.') {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    if port.is_empty() || !port.bytes().all(|byte| byte.is_ascii_digit()) || id.is_empty() {
        return None;
    }
    let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
    Some((id.to_ascii_lowercase(), port))
}

/// `host` without a `:port` suffix (an `[ipv6]:port` keeps its brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon)
            if !host[colon + 1..].is_empty()
                && host[colon + 1..].bytes().all(|byte| byte.is_ascii_digit())
                && (!host.starts_with('[') || host[..colon].ends_with(']')) =>
        {
            &host[..colon]
        }
        _ => host,
    }
}

/// The 502 for a paused sandbox: not "was not found" (it exists), and `connect` resumes it.
fn sandbox_paused(sandbox_id: &str) -> Response {
    let body = serde_json::json!({
        "sandboxId": sandbox_id,
        "message": format!("The sandbox {sandbox_id} is paused; connect to it to resume"),
        "code": 502,
    });
    let mut response = (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("should-retry", HeaderValue::from_static("false"));
    response
}

/// A 502 for a sandbox port that could not be reached for another reason than a refusal.
fn unreachable_port(sandbox_id: &str, port: u16, message: String) -> Response {
    let body = serde_json::json!({
        "sandboxId": sandbox_id,
        "message": message,
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}

/// Headers that belong to one connection, not to the request or response.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.as_str().starts_with("proxy-")
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Drop hop-by-hop headers, and the headers a `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| HeaderName::from_bytes(item.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Whether `error` (or what caused it) is an I/O error of `kind`.
fn caused_by(error: &(dyn StdError + 'static), kind: io::ErrorKind) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
        {
            return true;
        }
        current = error.source();
    }
    false
}

async fn forward(state: &AppState, id: &str, port: u16, mut request: Request<Body>) -> Response {
    match state.backend.get(id).map(|sandbox| sandbox.state()) {
        Ok(SandboxState::Running) => {}
        Ok(SandboxState::Paused) => {
            tracing::debug!(sandbox = id, port, "proxy: sandbox is paused");
            return sandbox_paused(id);
        }
        Ok(other) => {
            tracing::debug!(sandbox = id, port, state = %other, "proxy: sandbox is not running");
            return sandbox_gone(id);
        }
        Err(_) => {
            tracing::debug!(sandbox = id, port, "proxy: no such sandbox");
            return sandbox_gone(id);
        }
    }
    let Ok(target) = state.backend.ports().target(id, port) else {
        tracing::debug!(
            sandbox = id,
            port,
            "proxy: the sandbox has no route for the port"
        );
        return sandbox_gone(id);
    };
    let proxy = &state.proxy;
    proxy.counters.requests.fetch_add(1, Ordering::Relaxed);

    let method = request.method().clone();
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let Ok(uri) = Uri::try_from(format!("http://{target}{path_and_query}")) else {
        return ApiError::bad_request(format!(
            "cannot forward the request target {path_and_query:?}"
        ))
        .into_response();
    };

    // An upgrade keeps its `Connection: upgrade` and `Upgrade` headers; the client side of
    // the upgrade is taken before the request is consumed.
    let upgrade = if connection_has(request.headers(), "upgrade") {
        request.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
    // The pipe keeps the client connection's slot under the listener's cap.
    let slot = request
        .extensions_mut()
        .remove::<crate::listener::ConnectionSlot>();

    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    strip_daemon_credentials(&mut parts.headers, &state.config.api_key);
    if let Some(protocol) = &upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol.clone());
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    // The server side's extensions (its upgrade handle, connection info) mean nothing here.
    parts.extensions = axum::http::Extensions::new();
    let counters = proxy.counters.clone();
    let body = Body::new(body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counters
                .bytes_to_sandboxes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    }));
    let outgoing = Request::from_parts(parts, body);

    let mut response = match proxy.client.request(outgoing).await {
        Ok(response) => response,
        Err(error) => {
            return if caused_by(&error, io::ErrorKind::ConnectionRefused) {
                tracing::debug!(sandbox = id, port, %target, "proxy: port not open");
                port_not_open(id, port)
            } else if caused_by(&error, io::ErrorKind::TimedOut) {
                tracing::debug!(sandbox = id, port, %target, "proxy: connect timed out");
                unreachable_port(
                    id,
                    port,
                    format!(
                        "The sandbox is running but connecting to port {port} timed out after \
                         {} seconds",
                        CONNECT_TIMEOUT.as_secs()
                    ),
                )
            } else {
                let detail = error_chain(&error);
                tracing::debug!(sandbox = id, port, %target, error = %detail, "proxy: forwarding failed");
                let message = if error.is_connect() {
                    format!("The sandbox is running but port {port} could not be reached: {detail}")
                } else {
                    format!("The sandbox did not answer the request on port {port}: {detail}")
                };
                unreachable_port(id, port, message)
            };
        }
    };
    let status = response.status();
    tracing::debug!(sandbox = id, port, %method, path = %path_and_query, status = status.as_u16(), "proxy: forwarded");

    if status == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let sandbox_upgrade = hyper::upgrade::on(&mut response);
        let counters = proxy.counters.clone();
        let sandbox = id.to_owned();
        tokio::spawn(async move {
            let _slot = slot;
            let (client, upstream) = match tokio::try_join!(client_upgrade, sandbox_upgrade) {
                Ok(both) => both,
                Err(error) => {
                    tracing::debug!(sandbox, port, %error, "proxy: upgrade did not complete");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                Ok((up, down)) => {
                    counters.bytes_to_sandboxes.fetch_add(up, Ordering::Relaxed);
                    counters
                        .bytes_from_sandboxes
                        .fetch_add(down, Ordering::Relaxed);
                    tracing::debug!(sandbox, port, up, down, "proxy: upgraded connection closed");
                }
                Err(error) => {
                    tracing::debug!(sandbox, port, %error, "proxy: upgraded connection failed");
                }
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let counters = proxy.counters.clone();
    let body = Body::new(body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counters
                .bytes_from_sandboxes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    }));
    Response::from_parts(parts, body)
}

/// `error: cause: cause ...` on one line.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(cause) = current {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        current = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_request(host: &str) -> Request<Body> {
        Request::builder()
            .uri("/x")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    #[test]
    fn host_names_route_to_sandboxes() {
        let route = |host: &str, domain: &str| by_host(&host_request(host), domain);
        assert_eq!(
            route("49983-abc.e2b.localhost", "e2b.localhost"),
            Some(("abc".to_owned(), 49983))
        );
        assert_eq!(
            route("3000-abc.E2B.localhost:8443", "e2b.localhost"),
            Some(("abc".to_owned(), 3000))
        );
        assert_eq!(
            route("3000-abc.e2b.localhost", "e2b.localhost:8443"),
            Some(("abc".to_owned(), 3000))
        );
        for (host, domain) in [
            ("api.e2b.localhost", "e2b.localhost"),
            ("e2b.localhost", "e2b.localhost"),
            ("x.3000-abc.e2b.localhost", "e2b.localhost"),
            ("3000-abc.other.localhost", "e2b.localhost"),
            ("3000-abcxe2b.localhost", "e2b.localhost"),
            ("-abc.e2b.localhost", "e2b.localhost"),
            ("3000-.e2b.localhost", "e2b.localhost"),
            ("99999-abc.e2b.localhost", "e2b.localhost"),
            ("0-abc.e2b.localhost", "e2b.localhost"),
            ("127.0.0.1:3000", "e2b.localhost"),
        ] {
            assert_eq!(route(host, domain), None, "{host} under {domain}");
        }
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("a.b:"), "a.b:");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("proxy-authorization", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-access-token", HeaderValue::from_static("t"));
        assert!(!connection_has(&headers, "upgrade"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-access-token"));
    }
}
