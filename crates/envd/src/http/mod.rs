//! envd's plain HTTP endpoints: `/files` (download and upload, signed URLs), `/init`,
//! `/envs`, `/metrics`.

use axum::Router;

use crate::state::Envd;

/// The plain HTTP routes (everything but `/health` and the Connect services).
pub fn routes() -> Router<Envd> {
    Router::new()
}
