//! The sandbox proxy end to end, without real sandboxes: a backend over the fake driver, its
//! sandboxes' ports routed to small hyper servers on 127.0.0.1, and the E2B app in front.
//! Checks routing (headers, Host, signed `/files` URLs), streaming in both directions with
//! no buffering, upgrades, and the sandbox-gone / port-not-open answers.

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::http::{Method, Request, Response, StatusCode};
    use base64::Engine as _;
    use firkin_e2b::{AppState, E2bConfig};
    use firkin_single_node::testing::FakeDriver;
    use firkin_single_node::{
        DiskPressureGuard, SandboxResources, SingleNodeBackend, SingleNodeConfig,
        SingleNodeCreateRequest, SingleNodeSchedulerConfig, StatvfsDiskProbe,
    };
    use http_body_util::BodyExt as _;
    use http_body_util::channel::{Channel, Sender};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use sha2::{Digest as _, Sha256};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Notify, mpsc};
    use tokio::time::timeout;

    const ENVD_PORT: u16 = 49983;
    const WAIT: Duration = Duration::from_secs(10);

    /// A stand-in for a server inside a sandbox.
    struct Upstream {
        addr: SocketAddr,
        shared: Arc<UpstreamShared>,
        uploads: mpsc::UnboundedReceiver<Bytes>,
    }

    struct UpstreamShared {
        tag: String,
        hits: AtomicUsize,
        /// `/stream` sends its second chunk once this is notified.
        release: Notify,
        /// `/upload` reports each body chunk here as it arrives.
        upload_chunks: mpsc::UnboundedSender<Bytes>,
    }

    impl Upstream {
        async fn start(tag: &str) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (upload_chunks, uploads) = mpsc::unbounded_channel();
            let shared = Arc::new(UpstreamShared {
                tag: tag.to_owned(),
                hits: AtomicUsize::new(0),
                release: Notify::new(),
                upload_chunks,
            });
            let serving = shared.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let shared = serving.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            handle(shared.clone(), request)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
            Self {
                addr,
                shared,
                uploads,
            }
        }

        fn hits(&self) -> usize {
            self.shared.hits.load(Ordering::SeqCst)
        }
    }

    async fn handle(
        shared: Arc<UpstreamShared>,
        request: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        shared.hits.fetch_add(1, Ordering::SeqCst);
        let response = match request.uri().path() {
            "/stream" => {
                let (mut sender, body): (Sender<Bytes>, Channel<Bytes>) = Channel::new(1);
                tokio::spawn(async move {
                    sender.send_data(Bytes::from_static(b"one")).await.unwrap();
                    shared.release.notified().await;
                    sender.send_data(Bytes::from_static(b"two")).await.unwrap();
                });
                Response::new(Body::new(body))
            }
            "/upload" => {
                let mut body = request.into_body();
                let mut total = 0;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.unwrap().into_data() {
                        total += data.len();
                        let _ = shared.upload_chunks.send(data);
                    }
                }
                Response::new(Body::from(format!("got {total} bytes")))
            }
            "/ws" if request.headers().contains_key("upgrade") => {
                let protocol = request.headers()["upgrade"].clone();
                let connection = request.headers()["connection"].clone();
                let mut request = request;
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buffer = [0_u8; 1024];
                    loop {
                        let n = io.read(&mut buffer).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        if io.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("upgrade", protocol)
                    .header("connection", connection)
                    .body(Body::empty())
                    .unwrap()
            }
            _ => {
                // Echo what arrived: who answered, the request line and the headers.
                let mut text = format!(
                    "tag={}\n{} {}\n",
                    shared.tag,
                    request.method(),
                    request.uri()
                );
                for (name, value) in request.headers() {
                    text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                }
                let body = request.into_body().collect().await.unwrap().to_bytes();
                text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                Response::builder()
                    .header("x-upstream", shared.tag.clone())
                    .body(Body::from(text))
                    .unwrap()
            }
        };
        Ok(response)
    }

    struct Harness {
        app: SocketAddr,
        backend: SingleNodeBackend,
        state: Arc<AppState>,
        _dir: tempfile::TempDir,
    }

    async fn backend(dir: &Path) -> SingleNodeBackend {
        let config = SingleNodeConfig::new(dir).with_scheduler(SingleNodeSchedulerConfig::new(
            8,
            SandboxResources::from_mib(8, 4096),
        ));
        SingleNodeBackend::builder(config, Arc::new(FakeDriver::new()))
            .disk_guard(DiskPressureGuard::with_probe(
                dir,
                0,
                0,
                Arc::new(StatvfsDiskProbe),
            ))
            .build()
            .await
            .expect("backend opens")
    }

    impl Harness {
        async fn start() -> Self {
            Self::start_with(E2bConfig::new("key")).await
        }

        async fn start_with(config: E2bConfig) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let backend = backend(dir.path()).await;
            let state = AppState::new(backend.clone(), config);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let app = listener.local_addr().unwrap();
            tokio::spawn(firkin_e2b::serve(
                listener,
                state.clone(),
                std::future::pending(),
            ));
            Self {
                app,
                backend,
                state,
                _dir: dir,
            }
        }

        /// A running sandbox whose envd port goes to `envd`; returns its id and access token.
        async fn sandbox(&self, envd: SocketAddr) -> (String, String) {
            let session = self
                .backend
                .create(SingleNodeCreateRequest::new(
                    "base",
                    SandboxResources::from_mib(1, 64),
                ))
                .await
                .unwrap();
            let id = session.sandbox_id().to_owned();
            self.backend.ports().route(&id, ENVD_PORT, envd);
            let token = session.record().envd_access_token.clone().unwrap();
            (id, token)
        }

        /// A fresh HTTP/1.1 connection to the app.
        async fn connect(&self) -> hyper::client::conn::http1::SendRequest<Body> {
            let stream = TcpStream::connect(self.app).await.unwrap();
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(connection);
            sender
        }

        async fn send(&self, request: Request<Body>) -> Response<Incoming> {
            let mut sender = self.connect().await;
            timeout(WAIT, sender.send_request(request))
                .await
                .expect("answer in time")
                .unwrap()
        }

        /// Send and read the whole answer as text.
        async fn fetch(&self, request: Request<Body>) -> (StatusCode, String) {
            let response = self.send(request).await;
            let status = response.status();
            let body = timeout(WAIT, response.into_body().collect())
                .await
                .expect("body in time")
                .unwrap()
                .to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }

        fn request(&self, method: Method, path: &str) -> axum::http::request::Builder {
            Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.app.to_string())
        }

        fn to_sandbox(&self, id: &str, port: u16, path: &str) -> axum::http::request::Builder {
            self.request(Method::GET, path)
                .header("e2b-sandbox-id", id)
                .header("e2b-sandbox-port", port.to_string())
        }
    }

    /// Read `body` until it has produced exactly `expected` (more is a failure).
    async fn read_exactly(body: &mut Incoming, expected: &str) {
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let frame = timeout(WAIT, body.frame())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "waited for {expected:?}, got only {:?}",
                        String::from_utf8_lossy(&got)
                    )
                })
                .expect("body not ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(String::from_utf8_lossy(&got), expected);
    }

    fn sign(path: &str, operation: &str, username: &str, token: &str, exp: Option<i64>) -> String {
        let mut raw = format!("{path}:{operation}:{username}:{token}");
        if let Some(exp) = exp {
            raw.push_str(&format!(":{exp}"));
        }
        format!(
            "v1_{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(raw))
        )
    }

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
    }

    #[tokio::test]
    async fn header_routing_reaches_the_port_with_headers_and_body() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let user = Upstream::start("user").await;
        let (id, _) = h.sandbox(envd.addr).await;

        // Default port: envd.
        let (status, text) = h
            .fetch(
                h.request(Method::POST, "/process.Process/List?a=1&b=%20")
                    .header("e2b-sandbox-id", &id)
                    .header("x-access-token", "t")
                    .header("connection", "keep-alive, x-drop")
                    .header("x-drop", "1")
                    .header("keep-alive", "timeout=5")
                    .header("content-type", "application/json")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.starts_with("tag=envd\nPOST /process.Process/List?a=1&b=%20\n"),
            "{text}"
        );
        assert!(text.contains("x-access-token: t\n"), "{text}");
        assert!(text.contains("content-type: application/json\n"), "{text}");
        assert!(
            text.contains(&format!("host: {}\n", h.app)),
            "the Host is kept: {text}"
        );
        assert!(!text.contains("x-drop"), "named in Connection: {text}");
        assert!(!text.contains("keep-alive: "), "hop-by-hop: {text}");
        assert!(text.ends_with("body={}\n"), "{text}");

        // Any other port: the fake driver routes every port of the sandbox to 127.0.0.1.
        let (status, text) = h
            .fetch(
                h.to_sandbox(&id, user.addr.port(), "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.starts_with("tag=user\nGET /health\n"), "{text}");
        assert_eq!((envd.hits(), user.hits()), (1, 1));

        // Keep-alive: several requests over one client connection.
        let mut sender = h.connect().await;
        for round in 0..3 {
            let response = sender
                .send_request(
                    h.to_sandbox(&id, user.addr.port(), &format!("/r{round}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let text = response.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&text).contains(&format!("GET /r{round}\n")));
        }
        assert!(h.state.proxy.stats().requests >= 5);
        assert!(h.state.proxy.stats().bytes_from_sandboxes > 0);
    }

    #[tokio::test]
    async fn bad_port_header_is_a_400_with_e2b_json() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (id, _) = h.sandbox(envd.addr).await;
        for port in ["http", "0", "70000", ""] {
            let (status, text) = h
                .fetch(
                    h.request(Method::GET, "/health")
                        .header("e2b-sandbox-id", &id)
                        .header("e2b-sandbox-port", port)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{port}: {text}");
            let body = json(&text);
            assert_eq!(body["code"], 400);
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("E2b-Sandbox-Port")
            );
        }
        assert_eq!(envd.hits(), 0);
    }

    #[tokio::test]
    async fn host_routing_reaches_the_port() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let user = Upstream::start("user").await;
        let (id, _) = h.sandbox(envd.addr).await;

        let host = format!("{}-{id}.e2b.localhost:{}", user.addr.port(), h.app.port());
        let (status, text) = h
            .fetch(
                Request::builder()
                    .uri("/index.html?x=y")
                    .header("host", &host)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.starts_with("tag=user\nGET /index.html?x=y\n"),
            "{text}"
        );
        assert!(text.contains(&format!("host: {host}\n")), "{text}");

        let (status, text) = h
            .fetch(
                Request::builder()
                    .uri("/health")
                    .header("host", format!("{ENVD_PORT}-{id}.e2b.localhost"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.starts_with("tag=envd\n"), "{text}");

        // Another domain, or the API host under ours, is the control plane.
        for host in [
            format!("{}-{id}.example.com", user.addr.port()),
            "api.e2b.localhost".to_owned(),
        ] {
            let (status, text) = h
                .fetch(
                    Request::builder()
                        .uri("/health")
                        .header("host", host)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!((status, text.as_str()), (StatusCode::OK, ""));
        }
        assert_eq!((envd.hits(), user.hits()), (1, 1));
    }

    #[tokio::test]
    async fn a_server_stream_arrives_chunk_by_chunk() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (id, _) = h.sandbox(envd.addr).await;

        let response = h
            .send(
                h.to_sandbox(&id, ENVD_PORT, "/stream")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        // The upstream sends "two" only after this read: a buffering proxy would hang here.
        read_exactly(&mut body, "one").await;
        envd.shared.release.notify_one();
        read_exactly(&mut body, "two").await;
        let end = timeout(WAIT, body.frame()).await.unwrap();
        assert!(end.is_none(), "the stream ends with the upstream's");
    }

    #[tokio::test]
    async fn a_chunked_request_body_is_streamed() {
        let h = Harness::start().await;
        let mut envd = Upstream::start("envd").await;
        let (id, _) = h.sandbox(envd.addr).await;

        let (mut chunks, body): (Sender<Bytes>, Channel<Bytes>) = Channel::new(1);
        let request = h
            .request(Method::POST, "/upload")
            .header("e2b-sandbox-id", &id)
            .header("e2b-sandbox-port", ENVD_PORT.to_string())
            .body(Body::new(body))
            .unwrap();
        let mut sender = h.connect().await;
        let answer = tokio::spawn(async move { sender.send_request(request).await });
        for chunk in ["first", "second", "third"] {
            chunks.send_data(Bytes::from(chunk)).await.unwrap();
            // The upstream sees each chunk before the next one is even sent.
            let mut got = Vec::new();
            while got.len() < chunk.len() {
                let data = timeout(WAIT, envd.uploads.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{chunk:?} did not reach the upstream"))
                    .unwrap();
                got.extend_from_slice(&data);
            }
            assert_eq!(got, chunk.as_bytes());
        }
        drop(chunks);
        let response = timeout(WAIT, answer).await.unwrap().unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&text[..], b"got 16 bytes");
        assert!(h.state.proxy.stats().bytes_to_sandboxes >= 16);
    }

    #[tokio::test]
    async fn a_large_body_goes_through_whole() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (id, _) = h.sandbox(envd.addr).await;
        let size = 8 << 20;
        let (status, text) = h
            .fetch(
                h.request(Method::POST, "/upload")
                    .header("e2b-sandbox-id", &id)
                    .body(Body::from(vec![7_u8; size]))
                    .unwrap(),
            )
            .await;
        assert_eq!(
            (status, text),
            (StatusCode::OK, format!("got {size} bytes"))
        );
    }

    #[tokio::test]
    async fn an_upgrade_becomes_a_byte_pipe() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let user = Upstream::start("user").await;
        let (id, _) = h.sandbox(envd.addr).await;

        let mut stream = TcpStream::connect(h.app).await.unwrap();
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nE2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: {}\r\n\
             Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            h.app,
            user.addr.port()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0_u8; 1];
            let n = timeout(WAIT, stream.read(&mut byte))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.push(byte[0]);
        }
        let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 101 "), "{answer}");
        assert!(answer.contains("upgrade: echo\r\n"), "{answer}");
        for message in ["ping", "a longer message over the same pipe"] {
            stream.write_all(message.as_bytes()).await.unwrap();
            let mut echoed = vec![0_u8; message.len()];
            timeout(WAIT, stream.read_exact(&mut echoed))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(echoed, message.as_bytes());
        }
        assert_eq!(user.hits(), 1);
    }

    #[tokio::test]
    async fn an_upgraded_pipe_keeps_its_connection_slot() {
        let mut config = E2bConfig::new("key");
        config.connections.max_connections = 1;
        let h = Harness::start_with(config).await;
        let envd = Upstream::start("envd").await;
        let user = Upstream::start("user").await;
        let (id, _) = h.sandbox(envd.addr).await;

        let mut pipe = TcpStream::connect(h.app).await.unwrap();
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {id}\r\nE2b-Sandbox-Port: {}\r\n\
             Connection: Upgrade\r\nUpgrade: echo\r\n\r\n",
            user.addr.port()
        );
        pipe.write_all(head.as_bytes()).await.unwrap();
        let answer = read_head(&mut pipe).await;
        assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
        pipe.write_all(b"ping").await.unwrap();
        let mut echoed = [0_u8; 4];
        timeout(WAIT, pipe.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed, b"ping");

        // The pipe holds the only slot: another client waits, unread.
        let mut next = TcpStream::connect(h.app).await.unwrap();
        next.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut byte = [0_u8; 1];
        let early = timeout(Duration::from_millis(300), next.read(&mut byte)).await;
        assert!(
            early.is_err(),
            "served while the pipe held the slot: {early:?}"
        );

        drop(pipe);
        let answer = read_head(&mut next).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }

    /// A response head, byte by byte (nothing after it is read).
    async fn read_head(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut byte = [0_u8; 1];
            let n = timeout(WAIT, stream.read(&mut byte))
                .await
                .expect("an answer in time")
                .unwrap();
            assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&answer));
            answer.push(byte[0]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn unknown_paused_and_deleted_sandboxes_get_a_502() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;

        let (status, text) = h
            .fetch(
                h.to_sandbox("nosuchsandbox", ENVD_PORT, "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let body = json(&text);
        assert_eq!(body["code"], 502);
        assert_eq!(body["sandboxId"], "nosuchsandbox");
        assert!(
            body["message"].as_str().unwrap().contains("was not found"),
            "{text}"
        );

        let (paused, _) = h.sandbox(envd.addr).await;
        h.backend.pause(&paused).await.unwrap();
        let (status, text) = h
            .fetch(
                h.to_sandbox(&paused, ENVD_PORT, "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let body = json(&text);
        assert_eq!(body["code"], 502);
        assert_eq!(body["sandboxId"], paused.as_str());
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("paused") && message.contains("connect"),
            "{text}"
        );
        assert!(!message.contains("was not found"), "{text}");

        let (deleted, _) = h.sandbox(envd.addr).await;
        let (status, _) = h
            .fetch(
                h.to_sandbox(&deleted, ENVD_PORT, "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        h.backend.delete(&deleted).await.unwrap();
        let (status, text) = h
            .fetch(
                h.to_sandbox(&deleted, ENVD_PORT, "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(
            json(&text)["message"]
                .as_str()
                .unwrap()
                .contains("was not found")
        );
        assert_eq!(envd.hits(), 1);
    }

    #[tokio::test]
    async fn a_closed_port_is_port_not_open() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (id, _) = h.sandbox(envd.addr).await;
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let (status, text) = h
            .fetch(h.to_sandbox(&id, closed, "/").body(Body::empty()).unwrap())
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
        let body = json(&text);
        assert_eq!(body["code"], 502);
        assert_eq!(body["port"], closed);
        assert_eq!(body["sandboxId"], id.as_str());
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("port") && message.contains("not open"),
            "{text}"
        );
        assert!(!message.contains("was not found"), "{text}");
    }

    #[tokio::test]
    async fn signed_files_urls_find_their_sandbox() {
        let h = Harness::start().await;
        let envd_a = Upstream::start("a").await;
        let envd_b = Upstream::start("b").await;
        let (_a, _) = h.sandbox(envd_a.addr).await;
        let (_b, token_b) = h.sandbox(envd_b.addr).await;

        // A download URL for sandbox b, with an expiration and a path that needs encoding.
        let path = "/home/user/a b+c.txt";
        let expiration = 4_000_000_000_i64;
        let signature = sign(path, "read", "", &token_b, Some(expiration));
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("path", path)
            .append_pair("signature", &signature)
            .append_pair("signature_expiration", &expiration.to_string())
            .finish();
        let (status, text) = h
            .fetch(
                h.request(Method::GET, &format!("/files?{query}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(
            text.starts_with(&format!("tag=b\nGET /files?{query}\n")),
            "{text}"
        );

        // An upload URL for b with a user.
        let signature = sign("out.bin", "write", "root", &token_b, None);
        let query = format!(
            "path=out.bin&username=root&signature={}",
            encode(&signature)
        );
        let (status, text) = h
            .fetch(
                h.request(Method::POST, &format!("/files?{query}"))
                    .body(Body::from("data"))
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert!(text.starts_with("tag=b\nPOST /files?"), "{text}");
        assert!(text.ends_with("body=data\n"), "{text}");

        // A read signature does not allow a write; a foreign token matches nothing.
        let read = sign("out.bin", "read", "root", &token_b, None);
        let forged = sign("out.bin", "write", "root", "not-a-token", None);
        for (method, signature) in [(Method::POST, read), (Method::GET, forged)] {
            let query = format!(
                "path=out.bin&username=root&signature={}",
                encode(&signature)
            );
            let (status, text) = h
                .fetch(
                    h.request(method, &format!("/files?{query}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
            assert_eq!(
                json(&text),
                serde_json::json!({"code": 401, "message": "invalid signature"})
            );
        }
        assert_eq!((envd_a.hits(), envd_b.hits()), (0, 2));
    }

    #[tokio::test]
    async fn the_daemons_key_never_reaches_a_sandbox() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let user = Upstream::start("user").await;
        let (id, token) = h.sandbox(envd.addr).await;
        let signature = encode(&sign("a.txt", "read", "", &token, None));

        // Every way a request reaches a sandbox: headers, host name, a signed URL.
        let by_headers = h
            .to_sandbox(&id, user.addr.port(), "/echo")
            .header("authorization", "Bearer key");
        let by_host = Request::builder()
            .uri("/echo")
            .header("host", format!("{}-{id}.e2b.localhost", user.addr.port()))
            .header("authorization", "bEaReR key");
        let signed = h
            .request(
                Method::GET,
                &format!("/files?path=a.txt&signature={signature}"),
            )
            .header("authorization", "Bearer key");
        for (route, request) in [
            ("headers", by_headers),
            ("host", by_host),
            ("signed", signed),
        ] {
            let (status, text) = h
                .fetch(
                    request
                        .header("x-api-key", "key")
                        .header("x-access-token", "envd-token")
                        .header("e2b-traffic-access-token", "traffic-token")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{route}: {text}");
            assert!(text.starts_with("tag="), "{route}: {text}");
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("x-api-key"), "{route}: {text}");
            assert!(!lower.contains("authorization"), "{route}: {text}");
            assert!(!text.contains("key\n"), "{route}: {text}");
            // What the sandbox needs stays.
            assert!(
                text.contains("x-access-token: envd-token\n"),
                "{route}: {text}"
            );
            assert!(
                text.contains("e2b-traffic-access-token: traffic-token\n"),
                "{route}: {text}"
            );
        }

        // Any X-API-KEY goes; an Authorization that is not the daemon's key passes (envd's
        // user selection, a user's own server's token).
        for (authorization, kept) in [
            ("Basic dXNlcjo=", true),
            ("Bearer the-users-own-token", true),
            ("Bearer key", false),
        ] {
            let (status, text) = h
                .fetch(
                    h.to_sandbox(&id, user.addr.port(), "/echo")
                        .header("x-api-key", "some-other-deployments-key")
                        .header("authorization", authorization)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{text}");
            assert!(!text.contains("x-api-key"), "{text}");
            assert_eq!(
                text.contains(&format!("authorization: {authorization}\n")),
                kept,
                "{authorization}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn a_signed_url_seen_before_costs_one_signature_check() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (mut ids, mut urls) = (Vec::new(), Vec::new());
        for _ in 0..4 {
            let (id, token) = h.sandbox(envd.addr).await;
            ids.push(id);
            let signature = encode(&sign("a.txt", "read", "", &token, None));
            urls.push(format!("/files?path=a.txt&signature={signature}"));
        }
        let checks = || h.state.proxy.stats().signature_checks;
        let fetch_all = || async {
            let before = checks();
            for url in &urls {
                let (status, text) = h
                    .fetch(h.request(Method::GET, url).body(Body::empty()).unwrap())
                    .await;
                assert_eq!(status, StatusCode::OK, "{url}: {text}");
            }
            checks() - before
        };
        // First sight: each URL is checked against the live sandboxes until one fits.
        let first = fetch_all().await;
        assert!((4..=4 * 4).contains(&first), "{first}");
        // Again: one check per URL, against the sandbox it fitted.
        assert_eq!(fetch_all().await, 4);
        assert_eq!(envd.hits(), 8);

        // A request that names its sandbox (header or host) is never checked by the proxy:
        // envd checks the signature itself.
        let (id, token) = h.sandbox(envd.addr).await;
        let url = format!(
            "/files?path=b.txt&signature={}",
            encode(&sign("b.txt", "read", "", &token, None))
        );
        let before = checks();
        let named = [
            h.request(Method::GET, &url).header("e2b-sandbox-id", &id),
            Request::builder()
                .uri(&url)
                .header("host", format!("{ENVD_PORT}-{id}.e2b.localhost")),
        ];
        for request in named {
            let (status, _) = h.fetch(request.body(Body::empty()).unwrap()).await;
            assert_eq!(status, StatusCode::OK);
        }
        // A signature that cannot be envd's is refused without hashing.
        for junk in ["v1_short", "nonsense", &format!("v1_{}", "!".repeat(43))] {
            let (status, text) = h
                .fetch(
                    h.request(
                        Method::GET,
                        &format!("/files?path=a&signature={}", encode(junk)),
                    )
                    .body(Body::empty())
                    .unwrap(),
                )
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{junk}: {text}");
        }
        assert_eq!(checks(), before);

        // The remembered URL of a deleted sandbox costs at most one check, and is refused.
        h.backend.delete(&ids[0]).await.unwrap();
        let before = checks();
        let (status, text) = h
            .fetch(
                h.request(Method::GET, &urls[0])
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
        assert!(checks() - before <= 1, "{}", checks() - before);
        assert_eq!(envd.hits(), 10);
    }

    #[tokio::test]
    async fn made_up_signatures_cost_a_bounded_number_of_scans() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (_, token) = h.sandbox(envd.addr).await;
        h.sandbox(envd.addr).await;
        let live = 2;
        let known = format!(
            "/files?path=a.txt&signature={}",
            encode(&sign("a.txt", "read", "", &token, None))
        );
        async fn fetch(h: &Harness, url: String) -> (StatusCode, String) {
            h.fetch(h.request(Method::GET, &url).body(Body::empty()).unwrap())
                .await
        }
        assert_eq!(fetch(&h, known.clone()).await.0, StatusCode::OK);

        // A flood of well-formed signatures no sandbox made, each never seen before.
        let flood = 2 * firkin_e2b::proxy::SIGNED_URL_SCAN_BURST as usize;
        let before = h.state.proxy.stats().signature_checks;
        let started = std::time::Instant::now();
        let mut refused = 0;
        for i in 0..flood {
            let (status, text) = fetch(
                &h,
                format!(
                    "/files?path=a.txt&signature={}",
                    encode(&format!("v1_{i:043}"))
                ),
            )
            .await;
            match status {
                StatusCode::UNAUTHORIZED => {}
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(json(&text)["code"], 429, "{text}");
                    refused += 1;
                }
                other => panic!("{other}: {text}"),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let checks = h.state.proxy.stats().signature_checks - before;
        // At most the burst plus the rate over the time taken, each scan one check per
        // live sandbox (not one scan per request).
        let scans_allowed = f64::from(firkin_e2b::proxy::SIGNED_URL_SCAN_BURST)
            + f64::from(firkin_e2b::proxy::SIGNED_URL_SCANS_PER_SECOND) * elapsed
            + 1.0;
        #[allow(clippy::cast_precision_loss)]
        let bound = scans_allowed * live as f64;
        #[allow(clippy::cast_precision_loss)]
        let spent = checks as f64;
        assert!(
            spent <= bound,
            "{checks} checks in {elapsed:.2}s, bound {bound}"
        );
        #[allow(clippy::cast_precision_loss)]
        let over = scans_allowed < flood as f64;
        assert!(
            refused > 0 || !over,
            "none refused of {flood} in {elapsed:.2}s"
        );
        // A URL seen before still works: it spends no scan.
        assert_eq!(fetch(&h, known).await.0, StatusCode::OK);
    }

    fn encode(value: &str) -> String {
        form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }

    #[tokio::test]
    async fn requests_without_sandbox_routing_are_not_proxied() {
        let h = Harness::start().await;
        let envd = Upstream::start("envd").await;
        let (_id, token) = h.sandbox(envd.addr).await;

        // The control plane's own /health.
        let (status, text) = h
            .fetch(
                h.request(Method::GET, "/health")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((status, text.as_str()), (StatusCode::OK, ""));
        // /files without a signature, or a signature on another path or method.
        let signature = encode(&sign("a", "read", "", &token, None));
        for (method, path) in [
            (Method::GET, "/files?path=a".to_owned()),
            (
                Method::GET,
                format!("/files/x?path=a&signature={signature}"),
            ),
            (
                Method::DELETE,
                format!("/files?path=a&signature={signature}"),
            ),
            (Method::GET, "/sandboxes".to_owned()),
        ] {
            let (status, text) = h
                .fetch(
                    h.request(method.clone(), &path)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert!(!text.contains("tag=envd"), "{method} {path}: {text}");
            assert_ne!(status, StatusCode::OK, "{method} {path}: {text}");
        }
        assert_eq!(envd.hits(), 0);
        assert_eq!(h.state.proxy.stats().requests, 0);
    }
}
