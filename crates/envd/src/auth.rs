//! Who is asking: the access token check and the user a request runs as.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::http_error::json_error;
use crate::state::Envd;

/// Header carrying the access token.
pub const ACCESS_TOKEN_HEADER: &str = "x-access-token";

/// Compare in time independent of where the inputs differ.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry the right token (always true when no token is set).
#[must_use]
pub fn has_valid_token(envd: &Envd, headers: &HeaderMap) -> bool {
    let Some(expected) = envd.settings().access_token else {
        return true;
    };
    headers
        .get(ACCESS_TOKEN_HEADER)
        .is_some_and(|value| constant_time_eq(value.as_bytes(), expected.as_bytes()))
}

/// Middleware: every route except `/health`, `/init` and `/files` (which also accept a
/// signature and check for themselves) needs the access token.
pub async fn require_token(State(envd): State<Envd>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let exempt = path == "/health" || path == "/init" || path == "/files";
    if exempt || has_valid_token(&envd, request.headers()) {
        next.run(request).await
    } else {
        json_error(StatusCode::UNAUTHORIZED, "invalid access token").into_response()
    }
}

/// The user named by `Authorization: Basic base64("<name>:")`, if the header is there.
///
/// # Errors
///
/// A message when the header is malformed.
pub fn basic_auth_user(headers: &HeaderMap) -> Result<Option<String>, String> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| "authorization header is not text".to_owned())?;
    let encoded = value
        .strip_prefix("Basic ")
        .ok_or_else(|| "authorization must be Basic".to_owned())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| "authorization is not valid base64".to_owned())?;
    let decoded =
        String::from_utf8(decoded).map_err(|_| "authorization is not UTF-8".to_owned())?;
    let name = decoded.split(':').next().unwrap_or_default();
    Ok((!name.is_empty()).then(|| name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_names_the_user() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_auth_user(&headers).unwrap(), None);
        headers.insert("authorization", "Basic cm9vdDo=".parse().unwrap());
        assert_eq!(basic_auth_user(&headers).unwrap().as_deref(), Some("root"));
        headers.insert("authorization", "Basic !!!".parse().unwrap());
        assert!(basic_auth_user(&headers).is_err());
        headers.insert("authorization", "Bearer x".parse().unwrap());
        assert!(basic_auth_user(&headers).is_err());
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
