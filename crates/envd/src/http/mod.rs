//! envd's plain HTTP endpoints: `/files` (download and upload, signed URLs), `/init`,
//! `/envs`, `/metrics`.
//!
//! Every error answer has envd's JSON body `{"code": <status>, "message": "..."}`, including
//! malformed queries and methods a route does not have.

pub mod cgroup;
pub mod download;
pub mod files;
pub mod init;
pub mod metrics;
pub mod signature;
pub mod upload;

use std::io;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::http_error::json_error;
use crate::state::Envd;
use crate::users::{User, UserError};

/// Largest `/init` body accepted (env vars and a few settings).
pub const INIT_BODY_LIMIT: usize = 1024 * 1024;

/// The plain HTTP routes (everything but `/health` and the Connect services).
pub fn routes() -> Router<Envd> {
    Router::new()
        .route(
            "/files",
            get(download::get_files)
                .post(upload::post_files)
                .fallback(method_not_allowed)
                // Uploads stream to disk of any size; the body is never collected.
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/init",
            post(init::post_init)
                .fallback(method_not_allowed)
                .layer(DefaultBodyLimit::max(INIT_BODY_LIMIT)),
        )
        .route("/envs", get(init::get_envs).fallback(method_not_allowed))
        .route(
            "/metrics",
            get(metrics::get_metrics).fallback(method_not_allowed),
        )
}

async fn method_not_allowed() -> Response {
    json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

/// An error answer: a status and the message of envd's JSON error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpError {
    /// The status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
}

impl HttpError {
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

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The answer to a failed file-system operation `what` on `path` (the statuses E2B's SDK
    /// maps: 404 FileNotFound, 507 NotEnoughSpace; 403 for permissions, 400 for a path that
    /// is not what the operation needs).
    pub fn from_io(what: &str, path: &std::path::Path, error: &io::Error) -> Self {
        let path = path.display();
        match error.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Self::new(
                StatusCode::NOT_FOUND,
                format!("path '{path}' does not exist"),
            ),
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => Self::new(
                StatusCode::FORBIDDEN,
                format!("{what} '{path}': permission denied ({error})"),
            ),
            Some(libc::ENOSPC | libc::EDQUOT) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                format!("{what} '{path}': not enough disk space available ({error})"),
            ),
            Some(libc::EISDIR) => Self::bad_request(format!("path '{path}' is a directory")),
            Some(libc::ELOOP | libc::ENAMETOOLONG | libc::EINVAL) => {
                Self::bad_request(format!("{what} '{path}': {error}"))
            }
            _ => Self::internal(format!("{what} '{path}': {error}")),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        json_error(self.status, self.message)
    }
}

/// `name` (or the default user), with envd's statuses: an unknown user is 401.
///
/// # Errors
///
/// 401 for an unknown user, 500 when the account database cannot be read.
pub fn lookup_user(envd: &Envd, name: Option<&str>) -> Result<User, HttpError> {
    envd.user(name).map_err(|error| match error {
        UserError::Unknown(name) => {
            HttpError::unauthorized(format!("error looking up user '{name}': unknown user"))
        }
        UserError::Read { path, source } => HttpError::internal(format!(
            "error looking up user: cannot read {}: {source}",
            path.display()
        )),
    })
}

/// The current time in unix seconds.
#[must_use]
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_get_the_sdks_statuses() {
        let path = std::path::Path::new("/x/y");
        let status = |errno| HttpError::from_io("open", path, &io::Error::from_raw_os_error(errno));
        assert_eq!(status(libc::ENOENT).status, StatusCode::NOT_FOUND);
        assert_eq!(status(libc::ENOENT).message, "path '/x/y' does not exist");
        assert_eq!(status(libc::ENOTDIR).status, StatusCode::NOT_FOUND);
        assert_eq!(status(libc::EACCES).status, StatusCode::FORBIDDEN);
        assert_eq!(
            status(libc::ENOSPC).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            status(libc::EDQUOT).status,
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(status(libc::EISDIR).status, StatusCode::BAD_REQUEST);
        assert_eq!(status(libc::EIO).status, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
