//! Admission as a client sees it: the E2B routes over a backend on the fake driver, with this
//! issue's host (2 CPUs, 24 GiB) on the default limits and a pressure reading the test sets.
//! Many more sandboxes are admitted than the old cap reservations allowed; under memory
//! pressure a create is refused with E2B's error JSON and a reason, nothing running is
//! touched, and `/metrics` says what happened.

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use firkin_e2b::{AppState, E2bConfig};
    use firkin_single_node::testing::FakeDriver;
    use firkin_single_node::{
        DiskPressureGuard, FixedPressure, ListQuery, PressureReading, SingleNodeBackend,
        SingleNodeConfig, SingleNodeSchedulerConfig, StatvfsDiskProbe,
    };
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    const KEY: &str = "the-daemons-key";
    const GIB: u64 = 1 << 30;

    fn calm() -> PressureReading {
        PressureReading {
            memory_total_bytes: 24 * GIB,
            memory_available_bytes: 20 * GIB,
            memory_full_avg10: Some(0.0),
        }
    }

    async fn state(dir: &std::path::Path, pressure: Arc<FixedPressure>) -> Arc<AppState> {
        let config = SingleNodeConfig::new(dir)
            .with_scheduler(SingleNodeSchedulerConfig::for_host(2, 24 * GIB));
        let backend = SingleNodeBackend::builder(config, Arc::new(FakeDriver::new()))
            .disk_guard(DiskPressureGuard::with_probe(
                dir,
                0,
                0,
                Arc::new(StatvfsDiskProbe),
            ))
            .pressure(pressure)
            .build()
            .await
            .expect("backend opens");
        AppState::new(backend, E2bConfig::new(KEY))
    }

    async fn call(state: &Arc<AppState>, method: Method, uri: &str) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-api-key", KEY)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"templateID": "base"}"#))
            .unwrap();
        let response = firkin_e2b::app(state.clone())
            .oneshot(request)
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// The value of the metric line starting with `prefix` (name and labels).
    fn metric(metrics: &str, prefix: &str) -> Option<String> {
        metrics
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn pressure_refuses_creates_with_a_reason_and_metrics_tell_why() {
        let dir = tempfile::tempdir().unwrap();
        let pressure = Arc::new(FixedPressure::new(calm()));
        let state = state(dir.path(), Arc::clone(&pressure)).await;

        // Past what the old ledger allowed on this host: 32 sandboxes by CPU, ~43 by memory.
        let mut ids = Vec::new();
        for _ in 0..60 {
            let (status, body) = call(&state, Method::POST, "/sandboxes").await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            ids.push(json(&body)["sandboxID"].as_str().unwrap().to_owned());
        }
        let (status, body) = call(
            &state,
            Method::POST,
            &format!("/sandboxes/{}/pause", ids[0]),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");

        pressure.set(PressureReading {
            memory_available_bytes: 512 << 20,
            ..calm()
        });
        let (status, body) = call(&state, Method::POST, "/sandboxes").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        let error = json(&body);
        assert_eq!(error["code"], 429);
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("short of memory: 512 MiB available, below the floor of 1228 MiB"),
            "{message}"
        );

        // Nothing that ran was touched.
        let live = state.backend.list(&ListQuery::default()).unwrap();
        assert_eq!(live.sandboxes.len(), 60);

        let (status, metrics) = call(&state, Method::GET, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            metric(&metrics, "firkin_admitted_sandboxes ").as_deref(),
            Some("60")
        );
        assert_eq!(
            metric(&metrics, "firkin_admitted_paused_sandboxes ").as_deref(),
            Some("1")
        );
        // 59 running × 2 vCPUs: the paused one gave its vCPUs back.
        assert_eq!(
            metric(&metrics, "firkin_admitted_vcpus ").as_deref(),
            Some("118")
        );
        assert_eq!(
            metric(&metrics, "firkin_capacity_vcpus ").as_deref(),
            Some("2048")
        );
        assert_eq!(
            metric(&metrics, "firkin_host_memory_available_bytes ").as_deref(),
            Some("536870912")
        );
        assert_eq!(
            metric(
                &metrics,
                "firkin_admission_refusals_total{reason=\"memory_pressure\"}"
            )
            .as_deref(),
            Some("1")
        );
        let last = metrics
            .lines()
            .find(|line| line.starts_with("firkin_admission_last_refusal{"))
            .unwrap_or_else(|| panic!("no last refusal in:\n{metrics}"));
        assert!(last.contains("reason=\"memory_pressure\""), "{last}");
        assert!(last.contains("short of memory"), "{last}");

        // Pressure gone: creates are admitted again.
        pressure.set(calm());
        let (status, body) = call(&state, Method::POST, "/sandboxes").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
}
