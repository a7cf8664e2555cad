//! The daemon's own Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! sandboxes by state, the driver's pools, create latency as histograms (in all and per
//! phase), proxy traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use firkin_single_node::{ListQuery, PHASE_BUCKETS, PhaseHistogram, SandboxState};

use crate::AppState;

/// Counters the request handlers update.
#[derive(Debug, Default)]
pub struct DaemonMetrics {
    create_failures: AtomicU64,
}

impl DaemonMetrics {
    /// One create failed (successful ones are timed by the backend, phase by phase).
    pub fn record_create_failure(&self) {
        self.create_failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `# HELP` and `# TYPE` lines of one metric family.
fn write_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One histogram in the exposition format, `labels` inside the braces (may be empty).
fn write_histogram(out: &mut String, name: &str, labels: &str, histogram: &PhaseHistogram) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, n) in PHASE_BUCKETS.iter().zip(histogram.buckets) {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
        histogram.count
    );
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", histogram.sum_seconds);
    let _ = writeln!(out, "{name}_count{braces} {}", histogram.count);
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
    write_header(&mut out, "firkin_sandboxes", "gauge", "Sandboxes by state.");
    for (sandbox_state, n) in by_state {
        let _ = writeln!(
            out,
            "firkin_sandboxes{{state=\"{}\"}} {n}",
            sandbox_state.as_str()
        );
    }
    let pools = state.backend.driver().pools();
    let gauges = [
        (
            "firkin_warm_sandboxes_ready",
            "Sandboxes started ahead, ready to be handed out by a create.",
            pools.warm_ready,
        ),
        (
            "firkin_warm_sandboxes_target",
            "How many sandboxes the driver keeps started ahead.",
            pools.warm_target,
        ),
        (
            "firkin_spare_network_slots",
            "Network slots prepared ahead and not in use.",
            pools.spare_slots,
        ),
    ];
    for (name, help, value) in gauges {
        write_header(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let phases = state.backend.create_phases();
    write_header(
        &mut out,
        "firkin_sandbox_create_seconds",
        "histogram",
        "Time from the create request to envd answering in the new sandbox.",
    );
    write_histogram(
        &mut out,
        "firkin_sandbox_create_seconds",
        "",
        &phases.get("total").cloned().unwrap_or_default(),
    );
    write_header(
        &mut out,
        "firkin_sandbox_create_phase_seconds",
        "histogram",
        "Each phase of a create: the backend's admission and persist, the driver's own steps.",
    );
    for (phase, histogram) in phases.iter().filter(|(phase, _)| *phase != "total") {
        write_histogram(
            &mut out,
            "firkin_sandbox_create_phase_seconds",
            &format!("phase=\"{phase}\""),
            histogram,
        );
    }
    write_header(
        &mut out,
        "firkin_sandbox_create_failures_total",
        "counter",
        "Creates that failed.",
    );
    let _ = writeln!(
        out,
        "firkin_sandbox_create_failures_total {}",
        state.metrics.create_failures.load(Ordering::Relaxed)
    );
    let proxy = state.proxy.stats();
    write_header(
        &mut out,
        "firkin_proxy_requests_total",
        "counter",
        "Requests forwarded to sandboxes.",
    );
    let _ = writeln!(out, "firkin_proxy_requests_total {}", proxy.requests);
    write_header(
        &mut out,
        "firkin_proxy_bytes_total",
        "counter",
        "Body bytes through the sandbox proxy.",
    );
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
    write_header(
        &mut out,
        "firkin_proxy_signature_checks_total",
        "counter",
        "Signatures computed to find the sandbox of signed /files URLs that named none.",
    );
    let _ = writeln!(
        out,
        "firkin_proxy_signature_checks_total {}",
        proxy.signature_checks
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_written_cumulatively_with_its_labels() {
        let mut histogram = PhaseHistogram::default();
        histogram.buckets[3] = 1;
        histogram.buckets[4] = 2;
        histogram.count = 2;
        histogram.sum_seconds = 0.012;
        let mut out = String::new();
        write_histogram(&mut out, "x_seconds", "phase=\"launch\"", &histogram);
        assert!(
            out.contains("x_seconds_bucket{phase=\"launch\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{phase=\"launch\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_count{phase=\"launch\"} 2\n"),
            "{out}"
        );
        let mut plain = String::new();
        write_histogram(&mut plain, "y_seconds", "", &histogram);
        assert!(
            plain.contains("y_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{plain}"
        );
        assert!(plain.contains("y_seconds_sum 0.012\n"), "{plain}");
    }
}
