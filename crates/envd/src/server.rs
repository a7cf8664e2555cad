//! The HTTP server: Connect services, plain endpoints and the token check on one listener.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::filesystem::service::FilesystemService;
use crate::process::service::ProcessService;
use crate::state::Envd;

/// envd's port inside a sandbox.
pub const ENVD_PORT: u16 = 49983;

/// Every route of envd.
pub fn router(envd: Envd) -> Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(ProcessService::new(envd.clone())))
        .add_service(Arc::new(FilesystemService::new(envd.clone())));
    Router::new()
        .route("/health", get(|| async { StatusCode::NO_CONTENT }))
        .merge(crate::http::routes())
        .fallback_service(connect.into_axum_service())
        .layer(axum::middleware::from_fn_with_state(
            envd.clone(),
            crate::auth::require_token,
        ))
        .with_state(envd)
}

/// Serve `envd` on `listener` until `shutdown` completes.
///
/// # Errors
///
/// When accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    envd: Envd,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY each streamed event waits for the peer's delayed ACK (a Start of
    // `true` took 44 ms instead of under 1 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(envd))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves at the first SIGTERM or SIGINT: the shutdown signal of a daemon (envd's, and
/// `firkin serve`'s). Without signal handlers it never resolves (the process runs until
/// killed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
