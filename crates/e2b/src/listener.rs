//! The accept loop both listeners share (plain HTTP and TLS), with the bounds on what one
//! client can make the daemon hold:
//!
//! - **a connection cap** per listener ([`ConnectionLimits::max_connections`]): while it is
//!   full the loop accepts nothing, so further clients wait in the kernel's listen backlog
//!   (their requests are not read) and are served, in order, as connections close. Waiting
//!   rather than refusing keeps well-behaved bursts working; the backlog itself is bounded by
//!   the kernel (`somaxconn`), beyond which new connections are refused by the kernel.
//! - **a handshake timeout** ([`ConnectionLimits::handshake_timeout`]): a TLS client that
//!   connects and never finishes its handshake is dropped.
//! - **a header timeout** ([`ConnectionLimits::header_read_timeout`]): hyper starts the clock
//!   whenever it waits for a request head (on a new connection, and again on a keep-alive
//!   connection after each response), so a client that sends nothing, trickles its headers
//!   (slowloris) or idles between requests is dropped when it runs out.
//!
//! Bodies are not timed: uploads and command streams through the proxy may be slow for good
//! reasons. An upgraded connection (a websocket through the proxy) keeps its slot until the
//! pipe closes: every request carries its connection's [`ConnectionSlot`], and the proxy
//! moves it into the pipe.
//!
//! Shutdown stops accepting, asks every connection to close after its current request, and
//! returns once all have, upgraded pipes included (the caller bounds that wait).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt as _;

/// Bounds on the work one client can make a listener do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a client may take to send a request head (request line and headers), counted
    /// from when the server starts waiting for it; also the idle limit of keep-alive
    /// connections.
    pub header_read_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Connections served at once by one listener; more wait in the listen backlog.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// The default [`ConnectionLimits::max_connections`].
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
}

impl Default for ConnectionLimits {
    /// 20 s for a request head, 10 s for a TLS handshake, 4096 connections.
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// One of a listener's connection slots, in the extensions of every request of the connection
/// that holds it; the slot frees when the connection and every clone of this have gone.
#[derive(Clone, Debug)]
pub struct ConnectionSlot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// How long the loop waits after a failed `accept` (e.g. out of file descriptors) before
/// trying again, so that it does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serve `app` on `listener` within `limits` until `shutdown` completes, then drain: every
/// connection is asked to close after its current request, and this returns once all have.
/// `handshake` turns an accepted TCP stream into the stream HTTP runs over (TLS, or itself).
///
/// # Errors
///
/// Never for now: failed accepts are logged and retried, as a daemon must keep serving.
pub async fn serve_connections<H, F, S>(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    handshake: H,
) -> io::Result<()>
where
    H: Fn(TcpStream) -> F + Send + Sync + 'static,
    F: Future<Output = io::Result<S>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // `acquire_many` counts in u32, so the cap does too.
    let max = u32::try_from(limits.max_connections)
        .unwrap_or(u32::MAX)
        .max(1);
    let slots = Arc::new(Semaphore::new(max as usize));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A slot first: over the cap, clients stay in the backlog, unread.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed; retrying");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Connect streams are many small writes: without TCP_NODELAY each waits for an ACK.
        let _ = tcp.set_nodelay(true);
        let handshaking = handshake(tcp);
        let app = app.clone();
        let mut stopping = stopping.clone();
        tokio::spawn(async move {
            let slot = ConnectionSlot {
                _permit: Arc::new(slot),
            };
            let stream = match tokio::time::timeout(limits.handshake_timeout, handshaking).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "handshake timed out");
                    return;
                }
            };
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let app = app.map_request(move |mut request: axum::http::Request<_>| {
                request.extensions_mut().insert(slot.clone());
                request
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                .with_upgrades();
            tokio::pin!(connection);
            let stop_requested = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                () = stop_requested => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it ends: all slots back means all ended.
    let _all = slots.acquire_many(max).await;
    Ok(())
}
