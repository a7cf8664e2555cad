//! Connect framing edge cases against a real envd served in-process, spoken to in raw
//! HTTP/1.1 over a `TcpStream` (no HTTP client: every byte on the wire is the test's):
//! envelopes split across writes and chunks, oversize and truncated envelopes, bad JSON, bad
//! base64, unknown enum names, defaults for missing fields, content types, the access token,
//! the binary protobuf codec, the end-of-stream envelope, keepalives and deadlines. After
//! every bad request the server must still serve a good one.
//!
//! The tests run as whoever runs `cargo test`: the default user is the current user, and the
//! default working directory is the temporary directory, so nothing needs root.

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use base64::Engine;
    use buffa::Message;
    use firkin_envd::proto::process::__buffa::oneof::process_event::{
        Event as WireEvent, data_event::Output as WireOutput,
    };
    use firkin_envd::proto::process::__buffa::oneof::process_selector::Selector;
    use firkin_envd::proto::process::{
        ListRequest, ListResponse, ProcessConfig, ProcessSelector, SendSignalRequest, Signal,
        StartRequest, StartResponse,
    };
    use firkin_envd::state::{Envd, Settings};
    use firkin_envd::users::UserDb;
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::oneshot;

    /// No single read of a response may take longer than this: a hang is a failure.
    const READ_TIMEOUT: Duration = Duration::from_secs(15);
    const JSON: &str = "application/json";
    const CONNECT_JSON: &str = "application/connect+json";
    const PROTO: &str = "application/proto";
    const CONNECT_PROTO: &str = "application/connect+proto";
    const MESSAGE: u8 = 0x00;
    const END_STREAM: u8 = 0x02;

    // -- the server ---------------------------------------------------------------------

    /// An envd serving on 127.0.0.1:<any port>; when dropped, it kills what it still runs
    /// (so a failed test leaves nothing behind) and stops. A copy made with [`Server::as_caller`]
    /// only sends requests.
    struct Server {
        addr: SocketAddr,
        token: Option<String>,
        owned: Option<(Envd, oneshot::Sender<()>)>,
    }

    impl Server {
        /// The same server, called with `token`.
        fn as_caller(&self, token: Option<&str>) -> Self {
            Self {
                addr: self.addr,
                token: token.map(str::to_owned),
                owned: None,
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some((envd, _stop)) = &self.owned {
                for process in envd.processes().list() {
                    let _ = process.signal(rustix::process::Signal::KILL);
                }
            }
        }
    }

    /// The name of the user running the tests, from /etc/passwd ("root" as root).
    fn current_user() -> String {
        let uid = rustix::process::geteuid().as_raw();
        if uid == 0 {
            return "root".to_owned();
        }
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 7 && fields[2] == uid.to_string())
            .map(|fields| fields[0].to_owned())
            .expect("the current uid has an /etc/passwd entry")
    }

    async fn serve(token: Option<&str>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind :0");
        let addr = listener.local_addr().expect("local address");
        let settings = Settings {
            access_token: token.map(str::to_owned),
            default_user: current_user(),
            default_workdir: Some(std::env::temp_dir().display().to_string()),
            ..Settings::default()
        };
        let envd = Envd::new(settings, UserDb::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let served = envd.clone();
        tokio::spawn(async move {
            firkin_envd::server::serve(listener, served, async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Server {
            addr,
            token: token.map(str::to_owned),
            owned: Some((envd, stop)),
        }
    }

    // -- raw HTTP/1.1 -------------------------------------------------------------------

    /// One TCP connection, with what was read past the last response.
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    #[derive(Debug)]
    struct Head {
        status: u16,
        headers: Vec<(String, String)>,
    }

    impl Head {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        fn chunked(&self) -> bool {
            self.header("transfer-encoding")
                .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        }

        fn closes(&self) -> bool {
            self.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        }
    }

    #[derive(Debug)]
    struct Reply {
        head: Head,
        body: Vec<u8>,
    }

    impl Reply {
        fn status(&self) -> u16 {
            self.head.status
        }

        fn content_type(&self) -> &str {
            self.head.header("content-type").unwrap_or_default()
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|error| {
                panic!(
                    "body is not JSON ({error}): {:?}",
                    String::from_utf8_lossy(&self.body)
                )
            })
        }

        fn envelopes(&self) -> Vec<(u8, Vec<u8>)> {
            parse_envelopes(&self.body)
        }
    }

    impl Conn {
        async fn open(addr: SocketAddr) -> Self {
            let stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            Self {
                stream,
                buf: Vec::new(),
            }
        }

        /// Write `bytes` as one TCP write.
        async fn write(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("write");
            self.stream.flush().await.expect("flush");
        }

        /// Write each part separately, pausing between them so they arrive as separate
        /// segments.
        async fn write_split(&mut self, parts: &[&[u8]]) {
            for part in parts {
                self.write(part).await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }

        /// Read more bytes into the buffer; false at end of stream.
        async fn fill(&mut self) -> bool {
            let mut chunk = [0_u8; 16 * 1024];
            let n = tokio::time::timeout(READ_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("the server did not answer in time")
                .expect("read");
            self.buf.extend_from_slice(&chunk[..n]);
            n > 0
        }

        async fn take_line(&mut self) -> String {
            loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8(self.buf[..at].to_vec()).expect("ASCII line");
                    self.buf.drain(..at + 2);
                    return line;
                }
                assert!(self.fill().await, "connection closed inside a line");
            }
        }

        async fn take(&mut self, n: usize) -> Vec<u8> {
            while self.buf.len() < n {
                assert!(self.fill().await, "connection closed inside a body");
            }
            self.buf.drain(..n).collect()
        }

        async fn head(&mut self) -> Head {
            let status_line = self.take_line().await;
            let mut parts = status_line.splitn(3, ' ');
            assert_eq!(
                parts.next(),
                Some("HTTP/1.1"),
                "status line {status_line:?}"
            );
            let status = parts
                .next()
                .and_then(|s| s.parse().ok())
                .expect("a status code");
            let mut headers = Vec::new();
            loop {
                let line = self.take_line().await;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').expect("a header line");
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            Head { status, headers }
        }

        /// The next chunk of a chunked body; `None` after the last one.
        async fn next_chunk(&mut self) -> Option<Vec<u8>> {
            let size_line = self.take_line().await;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            if size == 0 {
                // Trailers, then the empty line.
                while !self.take_line().await.is_empty() {}
                return None;
            }
            let data = self.take(size).await;
            assert_eq!(self.take(2).await, b"\r\n", "chunk terminator");
            Some(data)
        }

        async fn body(&mut self, head: &Head) -> Vec<u8> {
            if head.chunked() {
                let mut body = Vec::new();
                while let Some(chunk) = self.next_chunk().await {
                    body.extend(chunk);
                }
                body
            } else if let Some(length) = head.header("content-length") {
                let length = length.parse().expect("content-length");
                self.take(length).await
            } else if matches!(head.status, 204 | 304) {
                Vec::new()
            } else {
                while self.fill().await {}
                std::mem::take(&mut self.buf)
            }
        }

        async fn reply(&mut self) -> Reply {
            let head = self.head().await;
            let body = self.body(&head).await;
            Reply { head, body }
        }
    }

    /// Request headers as the Python SDK sends them (plus the token when the server has one).
    fn headers(server: &Server, content_type: &str, extra: &[(&str, &str)]) -> String {
        let mut headers = format!(
            "Host: {}\r\nContent-Type: {content_type}\r\nConnect-Protocol-Version: 1\r\n\
             User-Agent: connectrpc/0.12.1\r\n",
            server.addr
        );
        if let Some(token) = &server.token {
            headers.push_str(&format!("X-Access-Token: {token}\r\n"));
        }
        for (name, value) in extra {
            headers.push_str(&format!("{name}: {value}\r\n"));
        }
        headers
    }

    /// A complete request with a Content-Length body.
    fn request(
        server: &Server,
        path: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Vec<u8> {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n",
            headers(server, content_type, extra),
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    /// The head of a request whose body follows in chunks.
    fn chunked_head(
        server: &Server,
        path: &str,
        content_type: &str,
        extra: &[(&str, &str)],
    ) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\n{}Transfer-Encoding: chunked\r\n\r\n",
            headers(server, content_type, extra)
        )
        .into_bytes()
    }

    fn chunk(data: &[u8]) -> Vec<u8> {
        let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(b"\r\n");
        bytes
    }

    const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

    fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![flags];
        bytes.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn json_envelope(value: &Value) -> Vec<u8> {
        envelope(MESSAGE, value.to_string().as_bytes())
    }

    fn parse_envelopes(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut envelopes = Vec::new();
        while !body.is_empty() {
            assert!(body.len() >= 5, "a truncated envelope header: {body:?}");
            let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
            assert!(body.len() >= 5 + length, "a truncated envelope: {body:?}");
            envelopes.push((body[0], body[5..5 + length].to_vec()));
            body = &body[5 + length..];
        }
        envelopes
    }

    /// The JSON messages of a connect+json stream and its end-of-stream JSON, checking that
    /// the stream is well formed: messages, then exactly one end-of-stream envelope, last.
    fn json_stream(reply: &Reply) -> (Vec<Value>, Value) {
        assert_eq!(reply.status(), 200, "stream status; body {:?}", reply.body);
        assert_eq!(reply.content_type(), CONNECT_JSON);
        let envelopes = reply.envelopes();
        let (last, messages) = envelopes.split_last().expect("at least the end of stream");
        assert_eq!(
            last.0, END_STREAM,
            "the last envelope must be end-of-stream: {envelopes:?}"
        );
        let messages = messages
            .iter()
            .map(|(flags, payload)| {
                assert_eq!(*flags, MESSAGE, "only the last envelope may end the stream");
                serde_json::from_slice(payload).expect("a JSON message")
            })
            .collect();
        let end = serde_json::from_slice(&last.1).expect("end-of-stream JSON");
        (messages, end)
    }

    /// Event kinds of a process stream, in order: "start", "data", "end", "keepalive".
    fn kinds(messages: &[Value]) -> Vec<String> {
        messages
            .iter()
            .map(|message| {
                let event = message["event"].as_object().expect("an event");
                assert_eq!(event.len(), 1, "one oneof member: {message}");
                event.keys().next().unwrap().clone()
            })
            .collect()
    }

    fn stdout_of(messages: &[Value]) -> Vec<u8> {
        messages
            .iter()
            .filter_map(|m| m["event"]["data"]["stdout"].as_str())
            .flat_map(|b64| {
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .expect("stdout is base64")
            })
            .collect()
    }

    /// The `{"code": "...", "message": "..."}` Connect error: exactly those keys (and
    /// optional details), a snake_case code name and a non-empty message.
    fn assert_connect_error(error: &Value, code: &str) {
        let object = error.as_object().expect("an error object");
        assert_eq!(object.get("code"), Some(&json!(code)), "error {error}");
        assert!(
            object
                .get("message")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {error}"
        );
        assert!(
            object
                .keys()
                .all(|key| matches!(key.as_str(), "code" | "message" | "details")),
            "unexpected keys in {error}"
        );
    }

    /// A unary Connect error: the status of §5.1, application/json, the error body.
    fn assert_unary_error(reply: &Reply, status: u16, code: &str) {
        assert_eq!(
            reply.status(),
            status,
            "status for {code}; body {:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type(), JSON);
        assert_connect_error(&reply.json(), code);
    }

    /// A stream that failed: HTTP 200 and an end-of-stream envelope carrying the error;
    /// returns the messages before it.
    fn assert_stream_error(reply: &Reply, code: &str) -> Vec<Value> {
        let (messages, end) = json_stream(reply);
        assert_connect_error(&end["error"], code);
        messages
    }

    async fn unary(server: &Server, method: &str, body: &Value) -> Reply {
        let mut conn = Conn::open(server.addr).await;
        conn.write(&request(
            server,
            &format!("/process.Process/{method}"),
            JSON,
            &[],
            body.to_string().as_bytes(),
        ))
        .await;
        conn.reply().await
    }

    /// A Start (or Connect) stream sent the way the Python SDK sends it: chunked.
    async fn stream(server: &Server, method: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(
            server,
            &format!("/process.Process/{method}"),
            CONNECT_JSON,
            extra,
        );
        bytes.extend(chunk(&json_envelope(body)));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        conn.reply().await
    }

    fn start_body(cmd: &str, args: &[&str]) -> Value {
        json!({"process": {"cmd": cmd, "args": args}})
    }

    /// The server still answers a good List on a new connection.
    async fn assert_serves(server: &Server) {
        let reply = unary(server, "List", &json!({})).await;
        assert_eq!(
            reply.status(),
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type(), JSON);
        assert!(reply.json().is_object());
    }

    /// The server still answers a good List on `conn` (unless it said it would close it,
    /// then on a new one).
    async fn assert_serves_on(server: &Server, conn: &mut Conn, previous: &Reply) {
        if previous.head.closes() {
            return assert_serves(server).await;
        }
        conn.write(&request(server, "/process.Process/List", JSON, &[], b"{}"))
            .await;
        let reply = conn.reply().await;
        assert_eq!(
            reply.status(),
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.json().is_object());
    }

    fn assert_echo_hi(reply: &Reply) {
        let (messages, end) = json_stream(reply);
        assert_eq!(end, json!({}), "a successful stream ends with {{}}");
        let kinds = kinds(&messages);
        assert_eq!(
            kinds.first().map(String::as_str),
            Some("start"),
            "{kinds:?}"
        );
        assert_eq!(kinds.last().map(String::as_str), Some("end"), "{kinds:?}");
        assert!(messages[0]["event"]["start"]["pid"].as_u64().unwrap() > 0);
        assert_eq!(stdout_of(&messages), b"hi\n");
        let end_event = &messages.last().unwrap()["event"]["end"];
        assert_eq!(end_event["exited"], json!(true));
        assert_eq!(end_event["status"], json!("exit status 0"));
        // exitCode 0 is a default: omitted, or 0.
        assert!(matches!(
            end_event.get("exitCode"),
            None | Some(Value::Number(_))
        ));
        assert_eq!(
            end_event
                .get("exitCode")
                .and_then(Value::as_i64)
                .unwrap_or(0),
            0
        );
    }

    // -- split envelopes ----------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_envelope_split_across_writes_and_chunks_is_reassembled() {
        let server = serve(None).await;
        let payload = json_envelope(&start_body("/bin/echo", &["hi"]));

        // Chunked: the flag byte, the length in two pieces, then the JSON in three chunks.
        let mut conn = Conn::open(server.addr).await;
        conn.write(&chunked_head(
            &server,
            "/process.Process/Start",
            CONNECT_JSON,
            &[],
        ))
        .await;
        let cuts = [0, 1, 3, 5, 9, 20, payload.len()];
        for pair in cuts.windows(2) {
            conn.write(&chunk(&payload[pair[0]..pair[1]])).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        conn.write(LAST_CHUNK).await;
        let reply = conn.reply().await;
        assert_echo_hi(&reply);
        assert_serves_on(&server, &mut conn, &reply).await;

        // One HTTP chunk whose bytes arrive in several TCP writes, split inside the chunk
        // size line, the envelope header and the JSON.
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/Start", CONNECT_JSON, &[]);
        let head_len = bytes.len();
        bytes.extend(chunk(&payload));
        bytes.extend_from_slice(LAST_CHUNK);
        let cuts = [
            0,
            head_len - 3,
            head_len + 1,
            head_len + 5,
            head_len + 12,
            bytes.len() - 3,
            bytes.len(),
        ];
        let parts: Vec<&[u8]> = cuts.windows(2).map(|p| &bytes[p[0]..p[1]]).collect();
        conn.write_split(&parts).await;
        assert_echo_hi(&conn.reply().await);

        // Content-Length body, the envelope in byte-sized writes.
        let mut conn = Conn::open(server.addr).await;
        let bytes = request(
            &server,
            "/process.Process/Start",
            CONNECT_JSON,
            &[],
            &payload,
        );
        let body_at = bytes.len() - payload.len();
        conn.write(&bytes[..body_at]).await;
        for byte in &bytes[body_at..body_at + 8] {
            conn.write(std::slice::from_ref(byte)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        conn.write(&bytes[body_at + 8..]).await;
        assert_echo_hi(&conn.reply().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_input_envelopes_split_across_chunks() {
        let server = serve(None).await;
        // A `cat` whose Start stream stays open on its own connection.
        let mut start = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/Start", CONNECT_JSON, &[]);
        bytes.extend(chunk(&json_envelope(
            &json!({"process": {"cmd": "/bin/cat"}, "stdin": true}),
        )));
        bytes.extend_from_slice(LAST_CHUNK);
        start.write(&bytes).await;
        let head = start.head().await;
        assert_eq!(head.status, 200);
        assert!(
            head.chunked(),
            "streams are chunked and flushed per message"
        );
        // The start event arrives while the process still runs: it was flushed.
        let envelope_len =
            |bytes: &[u8]| 5 + u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        let mut first = Vec::new();
        while first.len() < 5 || first.len() < envelope_len(&first) {
            first.extend(start.next_chunk().await.expect("the start event"));
        }
        let started = parse_envelopes(&first[..envelope_len(&first)]);
        let start_event: Value = serde_json::from_slice(&started[0].1).unwrap();
        let pid = start_event["event"]["start"]["pid"]
            .as_u64()
            .expect("a pid");

        // StreamInput: start, data split inside its envelope, keepalive, data, then the end
        // of the request body.
        let mut input = Conn::open(server.addr).await;
        input
            .write(&chunked_head(
                &server,
                "/process.Process/StreamInput",
                CONNECT_JSON,
                &[],
            ))
            .await;
        let first_data = json_envelope(&json!({"data": {"input": {"stdin": "YWJj"}}}));
        let mut stream_bytes = json_envelope(&json!({"start": {"process": {"pid": pid}}}));
        stream_bytes.extend(&first_data[..3]);
        input.write(&chunk(&stream_bytes)).await;
        tokio::time::sleep(Duration::from_millis(25)).await;
        input.write(&chunk(&first_data[3..])).await;
        input
            .write(&chunk(&json_envelope(&json!({"keepalive": {}}))))
            .await;
        input
            .write(&chunk(&json_envelope(
                &json!({"data": {"input": {"stdin": "ZGVmCg=="}}}),
            )))
            .await;
        input.write(LAST_CHUNK).await;
        let reply = input.reply().await;
        let (messages, end) = json_stream(&reply);
        assert_eq!(
            messages,
            vec![json!({})],
            "a client stream answers one {{}} message"
        );
        assert_eq!(end, json!({}));

        let closed = unary(&server, "CloseStdin", &json!({"process": {"pid": pid}})).await;
        assert_eq!(closed.status(), 200);
        assert_eq!(closed.json(), json!({}));

        let rest = start.body(&head).await;
        let mut all = first;
        all.extend(rest);
        let reply = Reply {
            head: Head {
                status: 200,
                headers: vec![("content-type".into(), CONNECT_JSON.into())],
            },
            body: all,
        };
        let (messages, end) = json_stream(&reply);
        assert_eq!(end, json!({}));
        assert_eq!(stdout_of(&messages), b"abcdef\n");
        assert_eq!(kinds(&messages).last().map(String::as_str), Some("end"));
    }

    // -- bad input ------------------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversize_envelope_is_a_clear_error() {
        let server = serve(None).await;

        // A length prefix of 4 GiB - 1 in front of a tiny payload.
        let mut lying = vec![MESSAGE];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        lying.extend_from_slice(br#"{"process":{"cmd":"/bin/true"}}"#);
        for content_type in [CONNECT_JSON, CONNECT_PROTO] {
            let mut conn = Conn::open(server.addr).await;
            conn.write(&request(
                &server,
                "/process.Process/Start",
                content_type,
                &[],
                &lying,
            ))
            .await;
            let reply = conn.reply().await;
            assert_oversize_error(&reply);
            assert_serves(&server).await;
        }

        // The same, chunked, as the SDK sends streams.
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/Start", CONNECT_JSON, &[]);
        bytes.extend(chunk(&lying));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        assert_oversize_error(&conn.reply().await);

        // A real 5 MiB message (over the 4 MiB message limit).
        let big = json!({"process": {"cmd": "/bin/true", "args": ["x".repeat(5 << 20)]}});
        let reply = stream(&server, "Start", &big, &[]).await;
        assert_oversize_error(&reply);

        // A client stream (read incrementally) with a huge prefix.
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/StreamInput", CONNECT_JSON, &[]);
        bytes.extend(chunk(&lying));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        assert_oversize_error(&conn.reply().await);
        assert_serves(&server).await;
    }

    /// An oversize message: either a stream ending in resource_exhausted, or a plain
    /// non-2xx Connect error, answered at once.
    fn assert_oversize_error(reply: &Reply) {
        if reply.status() == 200 {
            assert!(
                reply.content_type().starts_with("application/connect+"),
                "{reply:?}"
            );
            let envelopes = reply.envelopes();
            let (flags, payload) = envelopes.last().expect("an end-of-stream envelope");
            assert_eq!(*flags, END_STREAM);
            assert!(envelopes[..envelopes.len() - 1].is_empty(), "no messages");
            let end: Value = serde_json::from_slice(payload).unwrap();
            assert_connect_error(&end["error"], "resource_exhausted");
        } else {
            assert_unary_error(reply, 429, "resource_exhausted");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn truncated_and_compressed_envelopes_are_errors() {
        let server = serve(None).await;
        // The envelope says 100 bytes; the body ends after 10.
        let mut truncated = vec![MESSAGE];
        truncated.extend_from_slice(&100_u32.to_be_bytes());
        truncated.extend_from_slice(br#"{"process""#);
        let mut conn = Conn::open(server.addr).await;
        conn.write(&request(
            &server,
            "/process.Process/Start",
            CONNECT_JSON,
            &[],
            &truncated,
        ))
        .await;
        let reply = conn.reply().await;
        let (messages, end) = json_stream(&reply);
        assert!(messages.is_empty());
        let code = end["error"]["code"].as_str().unwrap_or_default();
        assert!(
            matches!(code, "invalid_argument" | "internal" | "unknown"),
            "truncated envelope: {end}"
        );
        assert_serves(&server).await;

        // Flag 0x01 (compressed) although no Connect-Content-Encoding was negotiated.
        let compressed = envelope(0x01, start_body("/bin/true", &[]).to_string().as_bytes());
        let mut conn = Conn::open(server.addr).await;
        conn.write(&request(
            &server,
            "/process.Process/Start",
            CONNECT_JSON,
            &[],
            &compressed,
        ))
        .await;
        let reply = conn.reply().await;
        let (messages, end) = json_stream(&reply);
        assert!(messages.is_empty(), "nothing may run: {messages:?}");
        assert!(end["error"]["code"].is_string(), "{end}");
        assert_serves(&server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_json_is_invalid_argument() {
        let server = serve(None).await;
        for body in [
            &b"{not json"[..],
            b"\"x\"",
            b"{\"process\": 5}",
            b"{\"process\": {\"pid\": -1}}",
        ] {
            let mut conn = Conn::open(server.addr).await;
            conn.write(&request(
                &server,
                "/process.Process/SendSignal",
                JSON,
                &[],
                body,
            ))
            .await;
            let reply = conn.reply().await;
            assert_unary_error(&reply, 400, "invalid_argument");
            assert_serves_on(&server, &mut conn, &reply).await;
        }
        // In a stream: HTTP 200, no events, the error in the end-of-stream envelope.
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/Start", CONNECT_JSON, &[]);
        bytes.extend(chunk(&envelope(MESSAGE, b"{\"process\": {\"cmd\": ")));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        let reply = conn.reply().await;
        assert!(assert_stream_error(&reply, "invalid_argument").is_empty());
        assert_serves_on(&server, &mut conn, &reply).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_base64_in_a_bytes_field_is_invalid_argument() {
        let server = serve(None).await;
        let reply = unary(
            &server,
            "SendInput",
            &json!({"process": {"pid": 1}, "input": {"stdin": "!!not base64!!"}}),
        )
        .await;
        assert_unary_error(&reply, 400, "invalid_argument");
        assert_serves(&server).await;

        // In a client stream.
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/StreamInput", CONNECT_JSON, &[]);
        bytes.extend(chunk(&json_envelope(
            &json!({"data": {"input": {"stdin": "%%%"}}}),
        )));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        let reply = conn.reply().await;
        assert!(assert_stream_error(&reply, "invalid_argument").is_empty());
        assert_serves(&server).await;

        // Both base64 alphabets and missing padding are accepted (proto3 JSON).
        for stdin in ["aGk-", "aGk_", "aGk", "aGk="] {
            let reply = unary(
                &server,
                "SendInput",
                &json!({"process": {"pid": 4_000_000}, "input": {"stdin": stdin}}),
            )
            .await;
            assert_unary_error(&reply, 404, "not_found");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_enum_name_is_invalid_argument() {
        let server = serve(None).await;
        let reply = unary(
            &server,
            "SendSignal",
            &json!({"process": {"pid": 4_000_000}, "signal": "SIGNAL_FOO"}),
        )
        .await;
        assert_unary_error(&reply, 400, "invalid_argument");
        assert_serves(&server).await;
        // Known names and numbers parse (then the pid is not found).
        for signal in [
            json!("SIGNAL_SIGKILL"),
            json!("SIGNAL_SIGTERM"),
            json!(9),
            json!(15),
        ] {
            let reply = unary(
                &server,
                "SendSignal",
                &json!({"process": {"pid": 4_000_000}, "signal": signal}),
            )
            .await;
            assert_unary_error(&reply, 404, "not_found");
            assert_eq!(
                reply.json()["message"],
                json!("process with pid 4000000 not found")
            );
        }
        // An unspecified signal is refused, not sent.
        let reply = unary(
            &server,
            "SendSignal",
            &json!({"process": {"pid": 4_000_000}}),
        )
        .await;
        assert_unary_error(&reply, 400, "invalid_argument");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_fields_are_defaults() {
        let server = serve(None).await;
        let reply = unary(&server, "List", &json!({})).await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.content_type(), JSON);
        // No processes: the empty repeated field is omitted (or empty).
        let list = reply.json();
        assert!(
            list.get("processes")
                .is_none_or(|p| p.as_array().is_some_and(Vec::is_empty)),
            "{list}"
        );
        // Unknown fields are ignored.
        let reply = unary(&server, "List", &json!({"someFutureField": 1})).await;
        assert_eq!(
            reply.status(),
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );

        // Start with only process.cmd: no args, envs, cwd, pty, tag or stdin.
        let reply = stream(
            &server,
            "Start",
            &json!({"process": {"cmd": "/bin/pwd"}}),
            &[],
        )
        .await;
        let (messages, end) = json_stream(&reply);
        assert_eq!(end, json!({}));
        assert_eq!(kinds(&messages).first().map(String::as_str), Some("start"));
        let expected = format!("{}\n", std::env::temp_dir().display());
        assert_eq!(String::from_utf8(stdout_of(&messages)).unwrap(), expected);

        // Start with nothing at all is refused in the stream.
        let reply = stream(&server, "Start", &json!({}), &[]).await;
        assert!(assert_stream_error(&reply, "invalid_argument").is_empty());
        // SendInput without input does nothing; without a process it is refused.
        let reply = unary(&server, "SendInput", &json!({})).await;
        assert_unary_error(&reply, 400, "invalid_argument");
        assert_serves(&server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_content_type_is_refused() {
        let server = serve(None).await;
        for content_type in [
            "text/plain",
            "application/xml",
            "application/connect+thrift",
        ] {
            let mut conn = Conn::open(server.addr).await;
            conn.write(&request(
                &server,
                "/process.Process/List",
                content_type,
                &[],
                b"{}",
            ))
            .await;
            let reply = conn.reply().await;
            assert_eq!(reply.status(), 415, "{content_type}: {reply:?}");
            assert_serves_on(&server, &mut conn, &reply).await;
        }
        // No content type at all.
        let mut conn = Conn::open(server.addr).await;
        conn.write(
            format!(
                "POST /process.Process/List HTTP/1.1\r\nHost: {}\r\nContent-Length: 2\r\n\r\n{{}}",
                server.addr
            )
            .as_bytes(),
        )
        .await;
        let reply = conn.reply().await;
        assert_eq!(reply.status(), 415, "{reply:?}");
        assert_serves_on(&server, &mut conn, &reply).await;
        // A unary content type on a streaming method, and a stream content type on a unary:
        // refused (415, or a Connect error) before anything runs.
        let reply = unary(
            &server,
            "Start",
            &json!({"process": {"cmd": "/bin/sleep", "args": ["7.31"]}, "tag": "wrong-type"}),
        )
        .await;
        assert_refused(&reply);
        let reply = stream(&server, "List", &json!({}), &[]).await;
        assert_refused(&reply);
        let list = unary(&server, "List", &json!({})).await.json();
        assert!(list.get("processes").is_none(), "something ran: {list}");
        assert_serves(&server).await;
    }

    /// 415, a non-2xx Connect error, or (answering in the stream's own framing) a stream
    /// holding only an end-of-stream envelope with the error.
    fn assert_refused(reply: &Reply) {
        match reply.status() {
            415 => {}
            200 => {
                let (messages, end) = json_stream(reply);
                assert!(messages.is_empty(), "{messages:?}");
                assert!(end["error"]["code"].is_string(), "{end}");
            }
            status => {
                assert!(status >= 400, "{reply:?}");
                assert!(reply.content_type().starts_with(JSON), "{reply:?}");
                assert!(reply.json()["code"].is_string(), "{reply:?}");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unknown_method_is_not_served() {
        let server = serve(None).await;
        let reply = unary(&server, "NoSuchMethod", &json!({})).await;
        assert_unary_error(&reply, 404, "unimplemented");
        assert_serves(&server).await;
    }

    // -- the access token ---------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wrong_or_missing_token_is_401_with_a_json_body() {
        let server = serve(Some("s3cret")).await;
        let tokenless = server.as_caller(None);
        let wrong = server.as_caller(Some("s3creT"));
        let prefix = server.as_caller(Some("s3cret-and-more"));
        for caller in [&tokenless, &wrong, &prefix] {
            let reply = unary(caller, "List", &json!({})).await;
            assert_eq!(reply.status(), 401, "{reply:?}");
            assert!(reply.content_type().starts_with(JSON), "{reply:?}");
            let body = reply.json();
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{body}"
            );
            assert!(
                body["code"] == json!(401) || body["code"] == json!("unauthenticated"),
                "{body}"
            );
            // A stream is refused before anything runs.
            let reply = stream(caller, "Start", &start_body("/bin/true", &[]), &[]).await;
            assert_eq!(reply.status(), 401, "{reply:?}");
        }
        assert_serves(&server).await;
        // /health needs no token.
        let mut conn = Conn::open(server.addr).await;
        conn.write(format!("GET /health HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr).as_bytes())
            .await;
        assert_eq!(conn.reply().await.status(), 204);
    }

    // -- the binary codec ---------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binary_protobuf_unary_and_stream() {
        let server = serve(None).await;

        // Stream Start of `/bin/echo hi` in application/connect+proto.
        let start = StartRequest {
            process: buffa::MessageField::some(ProcessConfig {
                cmd: "/bin/echo".to_owned(),
                args: vec!["hi".to_owned()],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut conn = Conn::open(server.addr).await;
        let mut bytes = chunked_head(&server, "/process.Process/Start", CONNECT_PROTO, &[]);
        bytes.extend(chunk(&envelope(MESSAGE, &start.encode_to_vec())));
        bytes.extend_from_slice(LAST_CHUNK);
        conn.write(&bytes).await;
        let reply = conn.reply().await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.content_type(), CONNECT_PROTO);
        let envelopes = reply.envelopes();
        let (last, messages) = envelopes.split_last().unwrap();
        assert_eq!(last.0, END_STREAM);
        // The end-of-stream payload is JSON even with the binary codec.
        assert_eq!(serde_json::from_slice::<Value>(&last.1).unwrap(), json!({}));
        let events: Vec<WireEvent> = messages
            .iter()
            .map(|(flags, payload)| {
                assert_eq!(*flags, MESSAGE);
                StartResponse::decode_from_slice(payload)
                    .expect("a StartResponse")
                    .event
                    .into_option()
                    .and_then(|event| event.event)
                    .expect("an event")
            })
            .collect();
        let Some(WireEvent::Start(started)) = events.first() else {
            panic!("the first event must be start: {events:?}");
        };
        assert!(started.pid > 0);
        let stdout: Vec<u8> = events
            .iter()
            .filter_map(|event| match event {
                WireEvent::Data(data) => match &data.output {
                    Some(WireOutput::Stdout(bytes)) => Some(bytes.clone()),
                    _ => None,
                },
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(stdout, b"hi\n");
        let Some(WireEvent::End(end)) = events.last() else {
            panic!("the last event must be end: {events:?}");
        };
        assert_eq!((end.exit_code, end.exited), (0, true));
        assert_eq!(end.status, "exit status 0");

        // Unary List in application/proto, with a process running.
        let sleeper = tokio::spawn({
            let server = server.as_caller(None);
            async move {
                stream(
                    &server,
                    "Start",
                    &json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "sleeper"}),
                    &[],
                )
                .await
            }
        });
        let pid = wait_for_tag(&server, "sleeper").await;
        let mut conn = Conn::open(server.addr).await;
        conn.write(&request(
            &server,
            "/process.Process/List",
            PROTO,
            &[],
            &ListRequest::default().encode_to_vec(),
        ))
        .await;
        let reply = conn.reply().await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.content_type(), PROTO);
        let list = ListResponse::decode_from_slice(&reply.body).expect("a ListResponse");
        let info = list
            .processes
            .iter()
            .find(|p| p.pid == pid)
            .expect("the sleeper is listed");
        assert_eq!(info.tag.as_deref(), Some("sleeper"));
        let config = info.config.as_option().expect("a config");
        assert_eq!(
            (config.cmd.as_str(), config.args.as_slice()),
            ("/bin/sleep", &["30".to_owned()][..])
        );

        // SendSignal in application/proto ends it.
        let signal = SendSignalRequest {
            process: buffa::MessageField::some(ProcessSelector {
                selector: Some(Selector::Pid(pid)),
                ..Default::default()
            }),
            signal: Signal::SIGNAL_SIGKILL.into(),
            ..Default::default()
        };
        conn.write(&request(
            &server,
            "/process.Process/SendSignal",
            PROTO,
            &[],
            &signal.encode_to_vec(),
        ))
        .await;
        let reply = conn.reply().await;
        assert_eq!(reply.status(), 200);
        assert!(reply.body.is_empty(), "an empty SendSignalResponse");
        let (_, end) = json_stream(&sleeper.await.unwrap());
        assert_eq!(end, json!({}));

        // A proto error is still a JSON Connect error.
        conn.write(&request(
            &server,
            "/process.Process/SendSignal",
            PROTO,
            &[],
            &signal.encode_to_vec(),
        ))
        .await;
        assert_unary_error(&conn.reply().await, 404, "not_found");
        // Garbage protobuf.
        conn.write(&request(
            &server,
            "/process.Process/List",
            PROTO,
            &[],
            &[0xff, 0xff, 0xff],
        ))
        .await;
        let reply = conn.reply().await;
        assert_unary_error(&reply, 400, "invalid_argument");
        assert_serves_on(&server, &mut conn, &reply).await;
    }

    /// The pid of the process tagged `tag`, once List shows it.
    async fn wait_for_tag(server: &Server, tag: &str) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = unary(server, "List", &json!({})).await.json();
            if let Some(process) = list["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["tag"] == json!(tag))
            {
                return u32::try_from(process["pid"].as_u64().expect("a pid")).unwrap();
            }
            assert!(Instant::now() < deadline, "no process tagged {tag}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // -- stream endings -----------------------------------------------------------------

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_start_stream_ends_with_an_end_of_stream_envelope() {
        let server = serve(None).await;
        // Success.
        assert_echo_hi(&stream(&server, "Start", &start_body("/bin/echo", &["hi"]), &[]).await);
        // A non-zero exit: an end event, then a successful end of stream.
        let reply = stream(
            &server,
            "Start",
            &start_body("/bin/sh", &["-c", "exit 3"]),
            &[],
        )
        .await;
        let (messages, end) = json_stream(&reply);
        assert_eq!(end, json!({}));
        let end_event = &messages.last().unwrap()["event"]["end"];
        assert_eq!(end_event["exitCode"], json!(3));
        assert_eq!(end_event["status"], json!("exit status 3"));
        // A program that does not exist.
        let reply = stream(
            &server,
            "Start",
            &start_body("/nonexistent/program", &[]),
            &[],
        )
        .await;
        assert!(assert_stream_error(&reply, "invalid_argument").is_empty());
        // A user that does not exist.
        let reply = stream(
            &server,
            "Start",
            &start_body("/bin/true", &[]),
            &[("Authorization", "Basic bm8tc3VjaC11c2VyLXh5ejo=")],
        )
        .await;
        assert!(assert_stream_error(&reply, "unauthenticated").is_empty());
        // A cwd that does not exist.
        let reply = stream(
            &server,
            "Start",
            &json!({"process": {"cmd": "/bin/true", "cwd": "/nonexistent/dir"}}),
            &[],
        )
        .await;
        assert!(assert_stream_error(&reply, "invalid_argument").is_empty());
        // Connect to a pid that does not exist.
        let reply = stream(
            &server,
            "Connect",
            &json!({"process": {"pid": 4_000_000}}),
            &[],
        )
        .await;
        assert!(assert_stream_error(&reply, "not_found").is_empty());
        assert_serves(&server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_process_reports_signal_killed() {
        let server = serve(None).await;
        let sleeper = tokio::spawn({
            let server = server.as_caller(None);
            async move {
                stream(
                    &server,
                    "Start",
                    &json!({"process": {"cmd": "/bin/sleep", "args": ["30"]}, "tag": "victim"}),
                    &[],
                )
                .await
            }
        });
        let pid = wait_for_tag(&server, "victim").await;
        // Connect by tag sees the same process.
        let connected = tokio::spawn({
            let server = server.as_caller(None);
            async move {
                stream(
                    &server,
                    "Connect",
                    &json!({"process": {"tag": "victim"}}),
                    &[],
                )
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reply = unary(
            &server,
            "SendSignal",
            &json!({"process": {"tag": "victim"}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.json(), json!({}));
        for reply in [sleeper.await.unwrap(), connected.await.unwrap()] {
            let (messages, end) = json_stream(&reply);
            assert_eq!(end, json!({}));
            assert_eq!(
                messages[0]["event"]["start"]["pid"],
                json!(pid),
                "{messages:?}"
            );
            let end_event = &messages.last().unwrap()["event"]["end"];
            assert_eq!(end_event["exitCode"], json!(-1), "{end_event}");
            assert_eq!(end_event["status"], json!("signal: killed"));
            assert!(matches!(
                end_event.get("exited"),
                None | Some(Value::Bool(false))
            ));
        }
        // Gone: a second kill is not_found.
        let reply = unary(
            &server,
            "SendSignal",
            &json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
        )
        .await;
        assert_unary_error(&reply, 404, "not_found");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepalives_fill_silences() {
        let server = serve(None).await;
        let sleep = start_body("/bin/sleep", &["2.5"]);
        let started = Instant::now();
        let reply = stream(
            &server,
            "Start",
            &sleep,
            &[("Keepalive-Ping-Interval", "1")],
        )
        .await;
        assert!(started.elapsed() >= Duration::from_secs(2));
        let (messages, end) = json_stream(&reply);
        assert_eq!(end, json!({}));
        let seen = kinds(&messages);
        let keepalives = seen.iter().filter(|k| *k == "keepalive").count();
        assert!(keepalives >= 2, "{seen:?}");
        assert_eq!(seen.first().map(String::as_str), Some("start"));
        assert_eq!(seen.last().map(String::as_str), Some("end"));
        for message in &messages {
            if message["event"].get("keepalive").is_some() {
                assert_eq!(message, &json!({"event": {"keepalive": {}}}));
            }
        }
        // Without the header: no keepalives.
        let reply = stream(&server, "Start", &start_body("/bin/sleep", &["1.2"]), &[]).await;
        let (messages, _) = json_stream(&reply);
        assert_eq!(kinds(&messages), ["start", "end"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_deadline_ends_the_stream_and_the_process() {
        let server = serve(None).await;
        let started = Instant::now();
        let reply = stream(
            &server,
            "Start",
            &json!({"process": {"cmd": "/bin/sleep", "args": ["10"]}, "tag": "deadline"}),
            &[("Connect-Timeout-Ms", "1000")],
        )
        .await;
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(3),
            "the stream outlived its deadline: {elapsed:?}"
        );
        // The process was killed with the deadline.
        let list = unary(&server, "List", &json!({})).await.json();
        assert!(
            list.get("processes")
                .is_none_or(|p| p.as_array().is_some_and(Vec::is_empty)),
            "{list}"
        );
        // Real envd ends a Start stream at its deadline with deadline_exceeded (the Go
        // handler returns the request context's error; the process, on its own context,
        // dies just after). That is what makes the SDKs raise TimeoutException.
        let (messages, end) = json_stream(&reply);
        assert_eq!(kinds(&messages).first().map(String::as_str), Some("start"));
        assert!(
            end["error"].is_object(),
            "the stream ended without deadline_exceeded: end of stream {end}, last event {}",
            messages.last().unwrap()
        );
        assert_connect_error(&end["error"], "deadline_exceeded");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alive_connections_survive_errors() {
        let server = serve(None).await;
        let mut conn = Conn::open(server.addr).await;
        let bad: [&[u8]; 4] = [
            b"{",
            br#"{"process":{"pid":"x"}}"#,
            br#"{"process":{"pid":4000000},"signal":"SIGNAL_NOPE"}"#,
            br#"{"process":{"pid":4000000},"signal":"SIGNAL_SIGKILL"}"#,
        ];
        for body in bad {
            conn.write(&request(
                &server,
                "/process.Process/SendSignal",
                JSON,
                &[],
                body,
            ))
            .await;
            let reply = conn.reply().await;
            assert!(matches!(reply.status(), 400 | 404), "{reply:?}");
            assert_serves_on(&server, &mut conn, &reply).await;
        }
    }
}
