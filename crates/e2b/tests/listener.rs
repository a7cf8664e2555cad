//! The listeners' bounds, end to end over real sockets on 127.0.0.1: the header timeout
//! (silent and trickling clients), the TLS handshake timeout, and the connection cap.
//! Timeouts are set short here; each check waits generously for the server to act, so a
//! slow machine does not fail them.

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use firkin_e2b::listener::ConnectionLimits;
    use firkin_e2b::{AppState, E2bConfig};
    use firkin_single_node::testing::FakeDriver;
    use firkin_single_node::{
        DiskPressureGuard, SandboxResources, SingleNodeBackend, SingleNodeConfig,
        SingleNodeSchedulerConfig, StatvfsDiskProbe,
    };
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    /// How long the server gets to do what it should (far above the timeouts set below).
    const WAIT: Duration = Duration::from_secs(10);

    async fn state(dir: &std::path::Path, limits: ConnectionLimits) -> Arc<AppState> {
        let config = SingleNodeConfig::new(dir).with_scheduler(SingleNodeSchedulerConfig::new(
            8,
            SandboxResources::from_mib(8, 4096),
        ));
        let backend = SingleNodeBackend::builder(config, Arc::new(FakeDriver::new()))
            .disk_guard(DiskPressureGuard::with_probe(
                dir,
                0,
                0,
                Arc::new(StatvfsDiskProbe),
            ))
            .build()
            .await
            .expect("backend opens");
        let mut config = E2bConfig::new("key");
        config.connections = limits;
        AppState::new(backend, config)
    }

    /// The plain listener with `limits`, serving until the test ends.
    async fn serve(dir: &std::path::Path, limits: ConnectionLimits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = state(dir, limits).await;
        tokio::spawn(firkin_e2b::serve(listener, state, std::future::pending()));
        address
    }

    /// Read until the server closes the connection; what it sent. Panics if it does not
    /// close within [`WAIT`].
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buffer = [0_u8; 1024];
        loop {
            match timeout(WAIT, stream.read(&mut buffer)).await {
                Err(_) => panic!(
                    "the server kept the connection open; it sent {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(Ok(0) | Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
                Ok(Ok(n)) => got.extend_from_slice(&buffer[..n]),
            }
        }
    }

    /// One `GET /health` with keep-alive on `stream`; the response head.
    async fn health(stream: &mut TcpStream) -> String {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut byte = [0_u8; 1];
        // /health answers 200 with an empty body: the head is the whole response.
        while !got.ends_with(b"\r\n\r\n") {
            let n = timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("an answer in time")
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap()
    }

    fn short_timeouts() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_millis(200),
            handshake_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test]
    async fn silent_trickling_and_idle_clients_are_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let address = serve(dir.path(), short_timeouts()).await;

        // Connects and sends nothing.
        let mut silent = TcpStream::connect(address).await.unwrap();
        until_closed(&mut silent).await;

        // Slowloris: part of a request line, then nothing.
        let mut trickling = TcpStream::connect(address).await.unwrap();
        trickling.write_all(b"GET /health HT").await.unwrap();
        let sent = until_closed(&mut trickling).await;
        assert!(!sent.contains(" 200 "), "it was served: {sent}");

        // A whole request is served; the connection then idles and is closed too.
        let mut idle = TcpStream::connect(address).await.unwrap();
        let head = health(&mut idle).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        until_closed(&mut idle).await;
    }

    #[tokio::test]
    async fn a_tls_client_that_never_finishes_its_handshake_is_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            firkin_e2b::tls::LocalCa::ensure(&dir.path().join("tls"), "e2b.localhost").unwrap();
        let state = state(dir.path(), short_timeouts()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(firkin_e2b::tls::serve_tls(
            listener,
            ca.server_config().unwrap(),
            firkin_e2b::app(state.clone()),
            state.config.connections,
            std::future::pending(),
        ));

        let mut silent = TcpStream::connect(address).await.unwrap();
        until_closed(&mut silent).await;
        // Half a ClientHello record header, then nothing.
        let mut trickling = TcpStream::connect(address).await.unwrap();
        trickling.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        until_closed(&mut trickling).await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_free_slot() {
        let dir = tempfile::tempdir().unwrap();
        let limits = ConnectionLimits {
            max_connections: 1,
            ..ConnectionLimits::default()
        };
        let address = serve(dir.path(), limits).await;

        // The first client is served and keeps its connection (the one slot).
        let mut first = TcpStream::connect(address).await.unwrap();
        assert!(health(&mut first).await.starts_with("HTTP/1.1 200 "));

        // The second gets through the kernel's backlog but is not read while the cap is full.
        let mut second = TcpStream::connect(address).await.unwrap();
        second
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0_u8; 1];
        let early = timeout(Duration::from_millis(300), second.read(&mut byte)).await;
        assert!(early.is_err(), "served over the cap: {early:?}");
        // The first is still served meanwhile.
        assert!(health(&mut first).await.starts_with("HTTP/1.1 200 "));

        // Once the first leaves, the second is served.
        drop(first);
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\n") {
            let n = timeout(WAIT, second.read(&mut byte))
                .await
                .expect("served once a slot freed")
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&got));
            got.push(byte[0]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let state = state(dir.path(), ConnectionLimits::default()).await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(firkin_e2b::serve(listener, state, async {
            let _ = stopped.await;
        }));

        let mut idle = TcpStream::connect(address).await.unwrap();
        assert!(health(&mut idle).await.starts_with("HTTP/1.1 200 "));
        stop.send(()).unwrap();
        until_closed(&mut idle).await;
        timeout(WAIT, serving)
            .await
            .expect("serve returns once its connections are gone")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(address).await.is_err(),
            "still accepting"
        );
    }
}
