//! The control plane's gate and its bounds, without a server: the app over a backend on the
//! fake driver, called request by request. Checks the API key in both headers it may come in,
//! and the body cap.

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use firkin_e2b::control::MAX_BODY_BYTES;
    use firkin_e2b::{AppState, E2bConfig};
    use firkin_single_node::testing::FakeDriver;
    use firkin_single_node::{
        DiskPressureGuard, ListQuery, SandboxResources, SingleNodeBackend, SingleNodeConfig,
        SingleNodeSchedulerConfig, StatvfsDiskProbe,
    };
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const KEY: &str = "the-daemons-key";

    async fn state(dir: &std::path::Path) -> Arc<AppState> {
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
        AppState::new(backend, E2bConfig::new(KEY))
    }

    /// Status and body (as JSON, `null` when empty) of `request` answered by the app.
    async fn call(
        state: &Arc<AppState>,
        request: Request<Body>,
    ) -> (StatusCode, serde_json::Value) {
        let response = firkin_e2b::app(state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, body)
    }

    fn list(header: Option<(&str, &str)>) -> Request<Body> {
        let mut request = Request::builder().uri("/v2/sandboxes");
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        request.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn the_key_is_accepted_as_x_api_key_or_bearer() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        let bearer = format!("Bearer {KEY}");
        for header in [("x-api-key", KEY), ("authorization", bearer.as_str())] {
            let (status, body) = call(&state, list(Some(header))).await;
            assert_eq!(status, StatusCode::OK, "{header:?}: {body}");
            assert_eq!(body, serde_json::json!([]));
        }
    }

    #[tokio::test]
    async fn a_wrong_or_missing_key_is_a_401_with_e2b_json() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        for (header, message) in [
            (
                Some(("authorization", "Bearer not-the-key")),
                "invalid API key",
            ),
            (Some(("x-api-key", "not-the-key")), "invalid API key"),
            (Some(("authorization", KEY)), "no API key"),
            (
                Some(("authorization", "Basic dGhlLWRhZW1vbnMta2V5Og==")),
                "no API key",
            ),
            (None, "no API key"),
        ] {
            let (status, body) = call(&state, list(header)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{header:?}: {body}");
            assert_eq!(body["code"], 401, "{header:?}: {body}");
            let text = body["message"].as_str().unwrap();
            assert!(text.contains(message), "{header:?}: {body}");
        }
    }

    fn create(body: Vec<u8>) -> Request<Body> {
        Request::builder()
            .method(Method::POST)
            .uri("/sandboxes")
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_a_413_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = state(dir.path()).await;
        // Valid JSON, 2 MiB of it: only its size is wrong.
        let padding = "x".repeat(2 << 20);
        let big = format!(r#"{{"templateID": "base", "metadata": {{"pad": "{padding}"}}}}"#);
        assert!(big.len() > MAX_BODY_BYTES);
        let (status, body) = call(&state, create(big.into_bytes())).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
        assert_eq!(body["code"], 413);
        assert!(body["message"].as_str().unwrap().contains("larger than"));
        let live = state.backend.list(&ListQuery::default()).unwrap();
        assert!(live.sandboxes.is_empty(), "{:?}", live.sandboxes);

        // A small body still works.
        let (status, body) = call(&state, create(br#"{"templateID": "base"}"#.to_vec())).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(
            state
                .backend
                .list(&ListQuery::default())
                .unwrap()
                .sandboxes
                .len(),
            1
        );
    }
}
