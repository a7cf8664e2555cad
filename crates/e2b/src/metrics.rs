//! The daemon's own Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! sandboxes by state, the driver's pools, create latency as histograms (in all and per
//! phase), admission (capacity, what is admitted, the host's memory, refusals), proxy traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use firkin_single_node::{CapacityReport, ListQuery, PHASE_BUCKETS, PhaseHistogram, SandboxState};

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
            "Sandboxes of base started ahead, ready to be handed out by a create.",
            pools.warm_ready,
        ),
        (
            "firkin_warm_sandboxes_target",
            "How many sandboxes of base the driver keeps started ahead.",
            pools.warm_target,
        ),
        (
            "firkin_template_warm_sandboxes_ready",
            "Sandboxes of templates other than base started ahead and ready, all together.",
            pools.template_warm_ready,
        ),
        (
            "firkin_template_warm_sandboxes_target",
            "How many sandboxes of templates other than base the driver keeps started ahead.",
            pools.template_warm_target,
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
    write_capacity(&mut out, &state.backend.scheduler().report());
    write_header(
        &mut out,
        "firkin_sandbox_oom_kills_total",
        "counter",
        "Sandbox processes the kernel's OOM killer took since the daemon started (each is in its sandbox's log).",
    );
    let _ = writeln!(
        out,
        "firkin_sandbox_oom_kills_total {}",
        state.backend.oom_kills_total()
    );
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

/// Admission: the limits, what is admitted, the host's memory, refusals and the last one.
fn write_capacity(out: &mut String, report: &CapacityReport) {
    let gauges: [(&str, &str, String); 9] = [
        (
            "firkin_capacity_max_sandboxes",
            "Most sandboxes admitted at once (max-sandboxes).",
            report.config.max_sandboxes.to_string(),
        ),
        (
            "firkin_capacity_vcpus",
            "vCPU caps admissible in all: host CPUs times cpu-overcommit.",
            report.capacity.vcpus.to_string(),
        ),
        (
            "firkin_capacity_memory_bytes",
            "Memory caps admissible in all: host memory (less a reserve) times memory-overcommit.",
            report.capacity.memory_bytes.to_string(),
        ),
        (
            "firkin_admitted_sandboxes",
            "Sandboxes holding an admission (running, paused, being created or failed).",
            report.admitted.to_string(),
        ),
        (
            "firkin_admitted_paused_sandboxes",
            "Admitted sandboxes that are paused: their memory caps count, their vCPUs do not.",
            report.paused.to_string(),
        ),
        (
            "firkin_admitted_vcpus",
            "vCPU caps of admitted running sandboxes.",
            report.reserved.vcpus.to_string(),
        ),
        (
            "firkin_admitted_memory_bytes",
            "Memory caps of admitted sandboxes.",
            report.reserved.memory_bytes.to_string(),
        ),
        (
            "firkin_host_memory_available_bytes",
            "The host's MemAvailable at this scrape (creates stop below min-available-memory-mb).",
            report.pressure.map_or_else(
                || "NaN".to_owned(),
                |p| p.memory_available_bytes.to_string(),
            ),
        ),
        (
            "firkin_host_memory_full_pressure_percent",
            "PSI memory full avg10 at this scrape (creates stop above max-memory-pressure).",
            report
                .pressure
                .and_then(|p| p.memory_full_avg10)
                .map_or_else(|| "NaN".to_owned(), |stall| stall.to_string()),
        ),
    ];
    for (name, help, value) in gauges {
        write_header(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    write_header(
        out,
        "firkin_admission_refusals_total",
        "counter",
        "Creates refused for capacity, by reason.",
    );
    for (reason, n) in &report.refusals {
        let _ = writeln!(
            out,
            "firkin_admission_refusals_total{{reason=\"{}\"}} {n}",
            reason.as_str()
        );
    }
    if let Some(last) = &report.last_refusal {
        write_header(
            out,
            "firkin_admission_last_refusal",
            "gauge",
            "When the last refusal happened (Unix seconds), with its reason and message.",
        );
        let _ = writeln!(
            out,
            "firkin_admission_last_refusal{{reason=\"{}\",message=\"{}\"}} {}",
            last.reason.as_str(),
            escape_label(&last.message),
            last.at_unix_ms / 1000
        );
    }
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_message_is_a_valid_label_value() {
        assert_eq!(
            escape_label("a \"quoted\" C:\\path\nnext"),
            "a \\\"quoted\\\" C:\\\\path\\nnext"
        );
    }

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
