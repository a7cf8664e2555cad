//! `firkin doctor`'s capacity section: what the default limits admit on this host, whether
//! the host's memory would let a create in right now, and, when a daemon answers at `--url`,
//! what it has admitted and why it last refused (read from its public `/metrics`).

use std::fmt::Write as _;
use std::time::Duration;

use firkin_single_node::{
    HostPressure, PressureReading, PressureSource as _, SingleNodeSchedulerConfig,
};
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// What the section found.
#[derive(Debug)]
pub(crate) struct CapacitySection {
    defaults: SingleNodeSchedulerConfig,
    pressure: Result<PressureReading, String>,
    url: String,
    /// The daemon's admission metrics, by name (labels included), or why none were read.
    daemon: Result<Vec<(String, String)>, String>,
}

impl CapacitySection {
    /// Reads this host and asks the daemon at `url`.
    pub(crate) fn probe(url: &str) -> Self {
        Self {
            defaults: SingleNodeSchedulerConfig::from_host(),
            pressure: HostPressure::new().read(),
            url: url.trim_end_matches('/').to_owned(),
            daemon: daemon_metrics(url),
        }
    }

    /// Why the defaults would refuse a create now, if they would.
    fn refusal_now(&self) -> Option<String> {
        let reading = self.pressure.as_ref().ok()?;
        self.defaults
            .pressure_refusal(reading)
            .map(|why| format!("refused: {why}"))
    }

    fn metric(&self, prefix: &str) -> Option<&str> {
        let metrics = self.daemon.as_ref().ok()?;
        metrics
            .iter()
            .find(|(name, _)| name == prefix)
            .map(|(_, value)| value.as_str())
    }

    /// The section as JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "defaults": self.defaults,
            "default_capacity": self.defaults.capacity(),
            "pressure": self.pressure.as_ref().ok(),
            "pressure_error": self.pressure.as_ref().err(),
            "refused_now": self.refusal_now(),
            "daemon_url": self.url,
            "daemon": match &self.daemon {
                Ok(metrics) => metrics
                    .iter()
                    .map(|(name, value)| (name.clone(), Value::from(value.clone())))
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
                Err(_) => Value::Null,
            },
            "daemon_error": self.daemon.as_ref().err(),
        })
    }
}

impl std::fmt::Display for CapacitySection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "capacity")?;
        writeln!(
            f,
            "  defaults: {}",
            crate::capacity_args::describe(&self.defaults)
        )?;
        match &self.pressure {
            Ok(reading) => {
                let stall = reading
                    .memory_full_avg10
                    .map_or_else(|| "no PSI".to_owned(), |s| format!("{s:.1}% memory stall"));
                let verdict = self
                    .refusal_now()
                    .unwrap_or_else(|| "creates are admitted".to_owned());
                writeln!(
                    f,
                    "  now: {} MiB available of {} MiB, {stall}: {verdict}",
                    reading.memory_available_bytes / MIB,
                    reading.memory_total_bytes / MIB
                )?;
            }
            Err(error) => writeln!(f, "  now: cannot read the host's memory: {error}")?,
        }
        match &self.daemon {
            Ok(_) => writeln!(f, "  daemon at {}: {}", self.url, self.daemon_summary())?,
            Err(error) => writeln!(f, "  daemon at {}: {error}", self.url)?,
        }
        Ok(())
    }
}

impl CapacitySection {
    fn daemon_summary(&self) -> String {
        let get = |name: &str| self.metric(name).unwrap_or("?");
        let mib = |name: &str| {
            self.metric(name)
                .and_then(|v| v.parse::<u64>().ok())
                .map_or_else(|| "?".to_owned(), |bytes| (bytes / MIB).to_string())
        };
        let mut out = format!(
            "{} admitted ({} paused) of {}; {} of {} vCPUs and {} of {} MiB of limits",
            get("firkin_admitted_sandboxes"),
            get("firkin_admitted_paused_sandboxes"),
            get("firkin_capacity_max_sandboxes"),
            get("firkin_admitted_vcpus"),
            get("firkin_capacity_vcpus"),
            mib("firkin_admitted_memory_bytes"),
            mib("firkin_capacity_memory_bytes"),
        );
        let refusals: Vec<String> = self
            .daemon
            .iter()
            .flatten()
            .filter_map(|(name, value)| {
                let reason = name
                    .strip_prefix("firkin_admission_refusals_total{reason=\"")?
                    .strip_suffix("\"}")?;
                (value != "0").then(|| format!("{reason} {value}"))
            })
            .collect();
        if refusals.is_empty() {
            out.push_str("; no refusals");
        } else {
            let _ = write!(out, "; refused: {}", refusals.join(", "));
        }
        if let Some((labels, _)) = self
            .daemon
            .iter()
            .flatten()
            .find(|(name, _)| name.starts_with("firkin_admission_last_refusal{"))
        {
            let message = labels
                .split_once("message=\"")
                .map_or("", |(_, rest)| rest.trim_end_matches("\"}"));
            let _ = write!(out, "; last refusal: {}", message.replace("\\\"", "\""));
        }
        out
    }
}

/// The admission lines of the daemon's `/metrics`, as (name with labels, value).
fn daemon_metrics(url: &str) -> Result<Vec<(String, String)>, String> {
    let url = format!("{}/metrics", url.trim_end_matches('/'));
    let text = ureq::get(&url)
        .timeout(Duration::from_secs(2))
        .call()
        .map_err(|error| format!("not answering ({error}); start it with `sudo firkin serve`"))?
        .into_string()
        .map_err(|error| format!("unreadable /metrics: {error}"))?;
    Ok(text
        .lines()
        .filter(|line| {
            [
                "firkin_capacity_",
                "firkin_admitted_",
                "firkin_admission_",
                "firkin_host_",
            ]
            .iter()
            .any(|prefix| line.starts_with(prefix))
        })
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect())
}
