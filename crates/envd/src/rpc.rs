//! Helpers shared by the Connect services.

use std::time::Duration;

use axum::http::HeaderMap;
use connectrpc::{ConnectError, RequestContext};

use crate::auth::basic_auth_user;
use crate::state::Envd;
use crate::users::{User, UserError};

/// The user a request runs as: `Authorization: Basic` when present, else the default user.
///
/// # Errors
///
/// `invalid_argument` for a malformed header, `unauthenticated` for an unknown user.
pub fn request_user(envd: &Envd, headers: &HeaderMap) -> Result<User, ConnectError> {
    let name = basic_auth_user(headers).map_err(ConnectError::invalid_argument)?;
    envd.user(name.as_deref()).map_err(|error| match error {
        UserError::Unknown(name) => {
            ConnectError::unauthenticated(format!("invalid user: user {name:?} does not exist"))
        }
        other => to_connect_error(&other),
    })
}

/// An internal error with the whole cause chain as its message.
#[must_use]
pub fn to_connect_error(error: &(dyn std::error::Error + 'static)) -> ConnectError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ConnectError::internal(message)
}

/// `Keepalive-Ping-Interval` in seconds, if the client asked for keepalives on a stream.
#[must_use]
pub fn keepalive_interval(ctx: &RequestContext) -> Option<Duration> {
    ctx.header("keepalive-ping-interval")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
}
