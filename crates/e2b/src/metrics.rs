//! The daemon's own Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! sandboxes by state, create latency as a histogram, proxy traffic.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use firkin_single_node::{ListQuery, SandboxState};

use crate::AppState;

/// Upper bounds of the create-latency buckets, seconds.
const CREATE_BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Counters the request handlers update.
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    creates: Mutex<Histogram>,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; CREATE_BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
    failures: u64,
}

impl DaemonMetrics {
    /// One create took `elapsed` (successful or not).
    pub fn record_create(&self, elapsed: Duration, succeeded: bool) {
        let mut histogram = self
            .creates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seconds = elapsed.as_secs_f64();
        if succeeded {
            for (bucket, bound) in histogram.buckets.iter_mut().zip(CREATE_BUCKETS) {
                if seconds <= bound {
                    *bucket += 1;
                }
            }
            histogram.count += 1;
            histogram.sum_seconds += seconds;
        } else {
            histogram.failures += 1;
        }
    }
}

/// The exposition of `state`'s metrics.
pub fn render(state: &AppState) -> String {
    let mut out = String::new();
    let mut by_state = [(SandboxState::Running, 0_u64), (SandboxState::Paused, 0)];
    let mut query = ListQuery {
        limit: Some(ListQuery::MAX_LIMIT),
        ..ListQuery::default()
    };
    while let Ok(page) = state.backend.list(&query) {
        for sandbox in &page.sandboxes {
            if let Some((_, n)) = by_state.iter_mut().find(|(s, _)| *s == sandbox.state()) {
                *n += 1;
            }
        }
        match page.next_token {
            Some(token) => query.next_token = Some(token),
            None => break,
        }
    }
    let _ = writeln!(out, "# HELP firkin_sandboxes Sandboxes by state.");
    let _ = writeln!(out, "# TYPE firkin_sandboxes gauge");
    for (sandbox_state, n) in by_state {
        let _ = writeln!(
            out,
            "firkin_sandboxes{{state=\"{}\"}} {n}",
            sandbox_state.as_str()
        );
    }
    let histogram = state
        .metrics
        .creates
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let _ = writeln!(
        out,
        "# HELP firkin_sandbox_create_seconds Time from the create request to envd answering in the new sandbox."
    );
    let _ = writeln!(out, "# TYPE firkin_sandbox_create_seconds histogram");
    for (bound, n) in CREATE_BUCKETS.iter().zip(histogram.buckets) {
        let _ = writeln!(
            out,
            "firkin_sandbox_create_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "firkin_sandbox_create_seconds_bucket{{le=\"+Inf\"}} {}",
        histogram.count
    );
    let _ = writeln!(
        out,
        "firkin_sandbox_create_seconds_sum {}",
        histogram.sum_seconds
    );
    let _ = writeln!(
        out,
        "firkin_sandbox_create_seconds_count {}",
        histogram.count
    );
    let _ = writeln!(
        out,
        "# HELP firkin_sandbox_create_failures_total Creates that failed."
    );
    let _ = writeln!(out, "# TYPE firkin_sandbox_create_failures_total counter");
    let _ = writeln!(
        out,
        "firkin_sandbox_create_failures_total {}",
        histogram.failures
    );
    drop(histogram);
    let proxy = state.proxy.stats();
    let _ = writeln!(
        out,
        "# HELP firkin_proxy_requests_total Requests forwarded to sandboxes."
    );
    let _ = writeln!(out, "# TYPE firkin_proxy_requests_total counter");
    let _ = writeln!(out, "firkin_proxy_requests_total {}", proxy.requests);
    let _ = writeln!(
        out,
        "# HELP firkin_proxy_bytes_total Body bytes through the sandbox proxy."
    );
    let _ = writeln!(out, "# TYPE firkin_proxy_bytes_total counter");
    let _ = writeln!(
        out,
        "firkin_proxy_bytes_total{{direction=\"to_sandbox\"}} {}",
        proxy.bytes_to_sandboxes
    );
    let _ = writeln!(
        out,
        "firkin_proxy_bytes_total{{direction=\"from_sandbox\"}} {}",
        proxy.bytes_from_sandboxes
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_fall_into_every_bucket_at_or_above_their_time() {
        let metrics = DaemonMetrics::default();
        metrics.record_create(Duration::from_millis(3), true);
        metrics.record_create(Duration::from_millis(30), true);
        metrics.record_create(Duration::from_secs(1), false);
        let histogram = metrics.creates.lock().unwrap();
        assert_eq!(histogram.buckets[0], 0); // 2 ms
        assert_eq!(histogram.buckets[1], 1); // 5 ms
        assert_eq!(histogram.buckets[4], 2); // 50 ms
        assert_eq!(histogram.count, 2);
        assert_eq!(histogram.failures, 1);
    }
}
