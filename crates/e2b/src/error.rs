//! E2B error bodies: `{"code": int, "message": str}` on every error status, as the SDKs'
//! generated clients require (anything else crashes them inside), and the sandbox-gone body
//! of the proxy.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use firkin_single_node::{Error, ErrorKind};

/// An error answered to an E2B client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status (also the body's `code`).
    pub status: StatusCode,
    /// What happened and what to do, shown to the SDK's user.
    pub message: String,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 501: a route of the contract that firkin does not implement yet.
    pub fn not_implemented(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{what} is not implemented by this firkin server yet"),
        )
    }

    /// 404 for an unknown sandbox, worded as E2B does.
    pub fn sandbox_not_found(sandbox_id: &str) -> Self {
        Self::not_found(format!(
            "sandbox \"{sandbox_id}\" doesn't exist or you don't have access to it"
        ))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let status = match error.kind() {
            ErrorKind::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
            // Capacity and disk pressure are not retried by the SDK only if they are not
            // 429/503: answer 429 with Should-Retry: false (see IntoResponse).
            ErrorKind::Capacity => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            // Internal, and kinds added later.
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.status.as_u16(),
            "message": self.message,
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        // Permanent errors must not be retried by the SDK (it retries 429/502/503/504).
        response
            .headers_mut()
            .insert("should-retry", HeaderValue::from_static("false"));
        response
    }
}

/// The proxy's answer for a sandbox that does not exist (any more): 502 with the words
/// "was not found", which the SDK turns into "sandbox was killed or reached its end of life".
pub fn sandbox_gone(sandbox_id: &str) -> Response {
    let body = serde_json::json!({
        "sandboxId": sandbox_id,
        "message": "The sandbox was not found",
        "code": 502,
    });
    let mut response = (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
}

/// The proxy's answer when the sandbox lives but nothing listens on `port`.
pub fn port_not_open(sandbox_id: &str, port: u16) -> Response {
    let body = serde_json::json!({
        "sandboxId": sandbox_id,
        "message": format!("The sandbox is running but port {port} is not open"),
        "port": port,
        "code": 502,
    });
    (StatusCode::BAD_GATEWAY, axum::Json(body)).into_response()
}
