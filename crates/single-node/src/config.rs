//! Configuration of one host: where state lives, the proxy domain, disk floors, timeouts, log
//! bounds and admission capacity. Every knob has a default that works on a laptop; capacity
//! defaults come from the host, not from constants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::SandboxResources;
use crate::pressure::PressureReading;

const GIB: u64 = 1024 * 1024 * 1024;

/// Admission limits: how many sandboxes, how far their CPU and memory caps may overcommit the
/// host, and the live memory pressure at which creates stop.
///
/// A sandbox's vCPUs and memory are caps (a CFS quota, a memory cgroup limit), not
/// reservations: an idle agent sandbox uses about 1 MiB of host memory and no CPU. Admission
/// therefore lets the sum of caps exceed the host by the overcommit ratios, and protects the
/// host with what it really has left ([`crate::PressureSource`]): below
/// `min_available_memory_bytes` of `MemAvailable`, or above `max_memory_full_pressure` percent
/// of PSI memory stall, new sandboxes are refused rather than running ones OOM-killed.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleNodeSchedulerConfig {
    /// Most sandboxes admitted at once (running, paused and failed ones all count).
    #[serde(alias = "max_sessions")]
    pub max_sandboxes: usize,
    /// What the host gives sandboxes before overcommit: its CPUs, and its memory less a
    /// reserve for itself and the daemon.
    pub host: SandboxResources,
    /// Sandbox vCPUs admitted per host CPU (running sandboxes only: a paused one uses none).
    pub cpu_overcommit: f64,
    /// Bytes of sandbox memory limits admitted per byte of `host` memory.
    pub memory_overcommit: f64,
    /// Creates are refused while the host's `MemAvailable` is below this many bytes.
    pub min_available_memory_bytes: u64,
    /// ... or while PSI `full avg10` of memory is above this percent.
    pub max_memory_full_pressure: f64,
}

impl SingleNodeSchedulerConfig {
    /// Sandboxes admitted at once by default: a guard against a runaway client, above what
    /// this kind of host holds idle (each sandbox also takes a network slot, a loop device,
    /// a few mounts and ~2 MiB of host memory); memory pressure normally binds first.
    pub const DEFAULT_MAX_SANDBOXES: usize = 2048;
    /// Sandbox vCPUs per host CPU by default. CPU overcommit only ever slows sandboxes down
    /// (the kernel shares CPUs fairly between cgroups), never loses work, and idle agent
    /// sandboxes use none: the ratio only bounds how thinly a host's CPUs can be spread if
    /// every sandbox turned busy at once. 1,024 lets a 2-CPU host hold 1,024 default
    /// (2-vCPU) sandboxes.
    pub const DEFAULT_CPU_OVERCOMMIT: f64 = 1024.0;
    /// Bytes of memory limits per byte of host memory by default. Idle agent sandboxes use a
    /// few percent of a 512 MiB cap; 32 admits ~1,380 default sandboxes on 24 GiB. If they
    /// all grow at once, the pressure floor refuses further creates, and the OOM killer picks
    /// sandbox commands (never envd, never the daemon).
    pub const DEFAULT_MEMORY_OVERCOMMIT: f64 = 32.0;
    /// Memory kept back for the host and the daemon: this fraction (percent) of the host's
    /// memory, at least 512 MiB.
    pub const HOST_MEMORY_RESERVE_PERCENT: u64 = 10;
    /// The `MemAvailable` floor by default: this percent of the host's memory, at least
    /// 256 MiB.
    pub const MIN_AVAILABLE_MEMORY_PERCENT: u64 = 5;
    /// PSI memory `full avg10` above which creates are refused by default: for a tenth of
    /// the last 10 s every runnable task waited on memory, which is a host already thrashing.
    pub const DEFAULT_MAX_MEMORY_FULL_PRESSURE: f64 = 10.0;

    /// At most `max_sandboxes` sandboxes whose caps add up to at most `capacity`, without
    /// overcommit and without a pressure check (for tests and embedders that meter
    /// elsewhere).
    #[must_use]
    pub const fn new(max_sandboxes: usize, capacity: SandboxResources) -> Self {
        Self {
            max_sandboxes,
            host: capacity,
            cpu_overcommit: 1.0,
            memory_overcommit: 1.0,
            min_available_memory_bytes: 0,
            max_memory_full_pressure: 100.0,
        }
    }

    /// The defaults for a host with `cpus` CPUs and `memory_bytes` of memory.
    #[must_use]
    pub fn for_host(cpus: u32, memory_bytes: u64) -> Self {
        let reserve = (memory_bytes / 100 * Self::HOST_MEMORY_RESERVE_PERCENT).max(512 << 20);
        let floor = (memory_bytes / 100 * Self::MIN_AVAILABLE_MEMORY_PERCENT).max(256 << 20);
        Self {
            max_sandboxes: Self::DEFAULT_MAX_SANDBOXES,
            host: SandboxResources::new(cpus.max(1), memory_bytes.saturating_sub(reserve)),
            cpu_overcommit: Self::DEFAULT_CPU_OVERCOMMIT,
            memory_overcommit: Self::DEFAULT_MEMORY_OVERCOMMIT,
            min_available_memory_bytes: floor,
            max_memory_full_pressure: Self::DEFAULT_MAX_MEMORY_FULL_PRESSURE,
        }
    }

    /// The defaults for this machine (its usable CPUs and `MemTotal`).
    #[must_use]
    pub fn from_host() -> Self {
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        Self::for_host(cpus, host_memory_bytes().unwrap_or(4 * GIB))
    }

    /// Most sandboxes admitted at once.
    #[must_use]
    pub const fn max_sandboxes(&self) -> usize {
        self.max_sandboxes
    }

    /// What the caps of admitted sandboxes may add up to: the host times the ratios.
    #[must_use]
    pub fn capacity(&self) -> SandboxResources {
        SandboxResources::new(
            scale(u64::from(self.host.vcpus), self.cpu_overcommit)
                .try_into()
                .unwrap_or(u32::MAX),
            scale(self.host.memory_bytes, self.memory_overcommit),
        )
    }

    /// Check the limits.
    ///
    /// # Errors
    ///
    /// A message naming the first bad value.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_sandboxes == 0 {
            return Err("max_sandboxes must be at least 1".to_owned());
        }
        for (name, ratio) in [
            ("cpu_overcommit", self.cpu_overcommit),
            ("memory_overcommit", self.memory_overcommit),
        ] {
            Self::check_ratio(ratio).map_err(|message| format!("{name} {message}"))?;
        }
        Self::check_percent(self.max_memory_full_pressure)
            .map_err(|message| format!("max_memory_full_pressure {message}"))?;
        Ok(())
    }

    /// An overcommit ratio as a configuration may set it: 0.1 to 100000.
    ///
    /// # Errors
    ///
    /// A message starting with the value, for any other number (NaN included).
    pub fn check_ratio(ratio: f64) -> std::result::Result<f64, String> {
        if (0.1..=100_000.0).contains(&ratio) {
            Ok(ratio)
        } else {
            Err(format!("{ratio} must be between 0.1 and 100000"))
        }
    }

    /// A memory stall ceiling as a configuration may set it: a percent, 0 to 100.
    ///
    /// # Errors
    ///
    /// A message starting with the value, for any other number (NaN included).
    pub fn check_percent(percent: f64) -> std::result::Result<f64, String> {
        if (0.0..=100.0).contains(&percent) {
            Ok(percent)
        } else {
            Err(format!("{percent} must be a percent (0 to 100)"))
        }
    }

    /// Why a create is refused with the host's memory at `reading`, if it is: `MemAvailable`
    /// under the floor, or PSI's full stall over the ceiling (not checked without PSI).
    #[must_use]
    pub fn pressure_refusal(&self, reading: &PressureReading) -> Option<String> {
        if reading.memory_available_bytes < self.min_available_memory_bytes {
            return Some(format!(
                "the host is short of memory: {} MiB available, below the floor of {} MiB \
                 (setting min-available-memory-mb)",
                reading.memory_available_bytes >> 20,
                self.min_available_memory_bytes >> 20
            ));
        }
        let stalled = reading.memory_full_avg10?;
        (stalled > self.max_memory_full_pressure).then(|| {
            format!(
                "the host is thrashing: every task stalled on memory {stalled:.1}% of the last \
                 10 s (PSI), above {}% (setting max-memory-pressure)",
                self.max_memory_full_pressure
            )
        })
    }
}

/// `value × ratio`, rounded down, saturating.
fn scale(value: u64, ratio: f64) -> u64 {
    // An f64 holds every capacity this computes to within a byte of rounding; the cast
    // saturates at u64::MAX and maps NaN to 0 (validate refuses both ratios anyway).
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let scaled = (value as f64 * ratio).floor() as u64;
    scaled
}

impl Default for SingleNodeSchedulerConfig {
    fn default() -> Self {
        Self::from_host()
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    crate::pressure::parse_meminfo(&meminfo).map(|(total, _)| total)
}

/// Everything one host's runtime needs to know.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SingleNodeConfig {
    /// State root: the SQLite database, its lock and managed artifacts live here.
    pub root: PathBuf,
    /// Proxy domain: sandboxes are reached at `<port>-<id>.<domain>`.
    pub domain: String,
    /// Creates, restores and snapshots are refused when less than this many bytes are free
    /// at the state root.
    pub minimum_free_disk_bytes: u64,
    /// ... or fewer than this many inodes.
    pub minimum_free_inodes: u64,
    /// How long a disk measurement is reused, in milliseconds.
    pub disk_probe_ttl_ms: u64,
    /// Lifetime of a sandbox that asks for none, in seconds.
    pub default_timeout_secs: u64,
    /// Longest lifetime a sandbox may ask for, in seconds.
    pub max_timeout_secs: u64,
    /// Resources of a sandbox whose template asks for none.
    pub default_sandbox_resources: SandboxResources,
    /// Log events kept per sandbox (the oldest are dropped).
    pub max_log_events_per_sandbox: u32,
    /// How often the deadline reaper looks for due sandboxes, in milliseconds.
    pub reaper_interval_ms: u64,
    /// Admission capacity.
    pub scheduler: SingleNodeSchedulerConfig,
}

impl SingleNodeConfig {
    /// State database file name inside [`SingleNodeConfig::root`].
    pub const STATE_DB_FILE: &'static str = "state.db";

    /// Defaults with state under `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            ..Self::default()
        }
    }

    /// Replace the admission limits.
    #[must_use]
    pub fn with_scheduler(mut self, scheduler: SingleNodeSchedulerConfig) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// The state root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The proxy domain.
    #[must_use]
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Admission limits.
    #[must_use]
    pub fn scheduler(&self) -> SingleNodeSchedulerConfig {
        self.scheduler
    }

    /// Default sandbox lifetime.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        Duration::from_secs(self.default_timeout_secs)
    }

    /// Longest sandbox lifetime.
    #[must_use]
    pub fn max_timeout(&self) -> Duration {
        Duration::from_secs(self.max_timeout_secs)
    }

    /// Path of the state database.
    #[must_use]
    pub fn state_db_path(&self) -> PathBuf {
        self.root.join(Self::STATE_DB_FILE)
    }

    /// Check the configuration as a whole.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |message: String| Err(Error::InvalidRequest(format!("configuration: {message}")));
        if self.root.as_os_str().is_empty() {
            return bad("root (the state directory) is empty".to_owned());
        }
        if self.domain.is_empty() || self.domain.contains(['/', ' ', ':']) {
            return bad(format!("domain {:?} is not a host name", self.domain));
        }
        if self.default_timeout_secs == 0 || self.default_timeout_secs > self.max_timeout_secs {
            return bad(format!(
                "default_timeout_secs {} must be between 1 and max_timeout_secs {}",
                self.default_timeout_secs, self.max_timeout_secs
            ));
        }
        if self.max_log_events_per_sandbox == 0 {
            return bad("max_log_events_per_sandbox must be at least 1".to_owned());
        }
        if self.reaper_interval_ms == 0 {
            return bad("reaper_interval_ms must be at least 1".to_owned());
        }
        if let Err(message) = self.scheduler.validate() {
            return bad(format!("scheduler.{message}"));
        }
        self.default_sandbox_resources
            .validate_for(&self.scheduler.capacity())
            .or_else(|error| bad(format!("default_sandbox_resources: {error}")))
    }
}

impl Default for SingleNodeConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("firkin-state"),
            domain: "e2b.localhost".to_owned(),
            minimum_free_disk_bytes: 10 * GIB,
            minimum_free_inodes: 10_000,
            disk_probe_ttl_ms: 30_000,
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 60 * 60,
            default_sandbox_resources: SandboxResources::from_mib(2, 512),
            max_log_events_per_sandbox: 1_000,
            reaper_interval_ms: 250,
            scheduler: SingleNodeSchedulerConfig::from_host(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_comes_from_the_host_times_the_ratios() {
        let config = SingleNodeSchedulerConfig::for_host(2, 24 * GIB);
        assert_eq!(config.host.vcpus, 2);
        assert!(config.host.memory_bytes < 24 * GIB);
        assert!(config.host.memory_bytes > 20 * GIB);
        // 1,000 default (2 vCPU, 512 MiB) sandboxes fit this issue's 2-CPU, 24 GiB host.
        let capacity = config.capacity();
        assert_eq!(capacity.vcpus, 2048);
        assert!(capacity.memory_bytes > 1000 * (512 << 20));
        assert!(config.min_available_memory_bytes > GIB);
        let tiny = SingleNodeSchedulerConfig::for_host(1, GIB);
        assert_eq!(tiny.host.memory_bytes, GIB - (512 << 20));
        assert_eq!(tiny.min_available_memory_bytes, 256 << 20);
        let here = SingleNodeSchedulerConfig::from_host();
        assert!(here.capacity().vcpus >= 1024);
        let plain = SingleNodeSchedulerConfig::new(3, SandboxResources::from_mib(4, 4096));
        assert_eq!(plain.capacity(), SandboxResources::from_mib(4, 4096));
    }

    #[test]
    fn bad_ratios_and_limits_are_named() {
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.scheduler.memory_overcommit = 0.0;
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("scheduler.memory_overcommit 0"), "{error}");
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.scheduler.cpu_overcommit = f64::NAN;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("cpu_overcommit")
        );
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.scheduler.max_sandboxes = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("max_sandboxes")
        );
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.scheduler.max_memory_full_pressure = 101.0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("percent")
        );
    }

    #[test]
    fn defaults_validate_and_bad_values_are_named() {
        SingleNodeConfig::new("/tmp/x").validate().unwrap();
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.default_timeout_secs = config.max_timeout_secs + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("default_timeout_secs")
        );
        let mut config = SingleNodeConfig::new("/tmp/x");
        config.domain = "a/b".to_owned();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("domain")
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parsed: Result<SingleNodeConfig, _> =
            serde_json::from_str(r#"{"root": "/x", "max_sesions": 3}"#);
        assert!(parsed.unwrap_err().to_string().contains("max_sesions"));
        let parsed: SingleNodeConfig =
            serde_json::from_str(r#"{"root": "/x", "default_timeout_secs": 60}"#).unwrap();
        assert_eq!(parsed.default_timeout(), Duration::from_secs(60));
        assert_eq!(parsed.max_log_events_per_sandbox, 1_000);
    }
}
