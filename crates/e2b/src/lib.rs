//! firkin-e2b: the E2B face of firkin.
//!
//! One listener serves two kinds of requests (see `E2B-CONTRACT.md`):
//!
//! - **sandbox requests**, recognised by their `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers, by
//!   a `Host: <port>-<sandboxID>.<domain>`, or as signed `/files` URLs: forwarded byte for
//!   byte to that port inside the sandbox ([`proxy`]);
//! - **control-plane requests** (everything else): the E2B REST API over
//!   [`SingleNodeBackend`], behind the API key check: `X-API-KEY` or `Authorization: Bearer`
//!   ([`control`], [`auth`]).
//!
//! Every error body is E2B's `{"code": int, "message": str}` ([`error`]). Both listeners
//! (plain and TLS) bound what one client can hold: a connection cap, a header read timeout
//! and a TLS handshake timeout ([`listener`]); control-plane bodies are capped at
//! [`control::MAX_BODY_BYTES`], proxied bodies are streamed and not capped.

#![forbid(unsafe_code)]

pub mod auth;
pub mod control;
pub mod dto;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod proxy;
mod signed_files;
mod templates;
pub mod tls;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use firkin_single_node::SingleNodeBackend;
use tower::ServiceExt as _;

/// Settings of the E2B face.
#[derive(Clone, Debug)]
pub struct E2bConfig {
    /// The key every control-plane request must carry (`X-API-KEY` or `Authorization:
    /// Bearer`), and which the proxy never forwards into a sandbox.
    pub api_key: String,
    /// The sandbox domain: `Host: <port>-<id>.<domain>` routes to a sandbox, and responses
    /// carry it as `domain` when [`E2bConfig::advertise_domain`] is set.
    pub domain: String,
    /// Whether create/connect responses name [`E2bConfig::domain`] (recipe B, TLS and host
    /// names); without it the SDK uses `E2B_SANDBOX_URL` or its own domain setting.
    pub advertise_domain: bool,
    /// The envd version sandboxes report (the SDK gates features on it).
    pub envd_version: String,
    /// Connection cap and timeouts of every listener ([`listener`]).
    pub connections: listener::ConnectionLimits,
    /// The disk each sandbox gets, MiB, reported as `diskSizeMB` and in the metrics'
    /// `disk_total`; `None` (no limit): the free space of the state file system instead.
    pub disk_size_mb: Option<u64>,
}

impl E2bConfig {
    /// Settings with `api_key`, the default domain `e2b.localhost`, envd version `0.6.4` and
    /// the default [`listener::ConnectionLimits`].
    #[must_use]
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            domain: "e2b.localhost".to_owned(),
            advertise_domain: false,
            envd_version: "0.6.4".to_owned(),
            connections: listener::ConnectionLimits::default(),
            disk_size_mb: None,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The sandboxes.
    pub backend: SingleNodeBackend,
    /// Settings.
    pub config: E2bConfig,
    /// The sandbox proxy's connection pools.
    pub proxy: proxy::Proxy,
    /// The daemon's own counters (`GET /metrics`).
    pub metrics: metrics::DaemonMetrics,
    /// Last CPU sample per sandbox (unix ms, CPU µs), for the metrics' CPU percentage.
    pub(crate) cpu_samples: std::sync::Mutex<std::collections::HashMap<String, (i64, u64)>>,
    /// Template builds and the image catalog; `None`: the template routes answer 501.
    pub builder: Option<Arc<firkin_build::Builder>>,
}

impl AppState {
    /// State over `backend` with `config`.
    #[must_use]
    pub fn new(backend: SingleNodeBackend, config: E2bConfig) -> Arc<Self> {
        Self::with(backend, config, None)
    }

    /// State over `backend` with `config` that builds templates with `builder`.
    #[must_use]
    pub fn with_builder(
        backend: SingleNodeBackend,
        config: E2bConfig,
        builder: Arc<firkin_build::Builder>,
    ) -> Arc<Self> {
        Self::with(backend, config, Some(builder))
    }

    fn with(
        backend: SingleNodeBackend,
        config: E2bConfig,
        builder: Option<Arc<firkin_build::Builder>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            backend,
            config,
            proxy: proxy::Proxy::new(),
            metrics: metrics::DaemonMetrics::default(),
            cpu_samples: std::sync::Mutex::default(),
            builder,
        })
    }
}

/// The whole service: sandbox requests to the proxy, the rest to the control plane.
pub fn app(state: Arc<AppState>) -> axum::Router {
    let control = control::router(state.clone());
    axum::Router::new()
        .fallback(
            move |State(state): State<Arc<AppState>>, request: Request<Body>| {
                let control = control.clone();
                async move {
                    match proxy::route(&state, request).await {
                        Ok(response) => response,
                        Err(request) => match control.oneshot(request).await {
                            Ok(response) => response,
                            Err(never) => match never {},
                        },
                    }
                }
            },
        )
        .with_state(state)
}

/// Serve [`app`] on `listener` until `shutdown` completes (connections then drain), within
/// the config's [`E2bConfig::connections`] limits.
///
/// # Errors
///
/// None so far: failed accepts are logged and retried (see [`listener::serve_connections`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.config.connections;
    listener::serve_connections(listener, app(state), limits, shutdown, |tcp| async {
        Ok(tcp)
    })
    .await
}
