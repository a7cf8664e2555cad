//! Configuration of one host: where state lives, the proxy domain, disk floors, timeouts, log
//! bounds and admission capacity. Every knob has a default that works on a laptop; capacity
//! defaults come from the host, not from constants.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::SandboxResources;

const GIB: u64 = 1024 * 1024 * 1024;

/// Admission limits: how many sandboxes, and how much CPU and memory they may reserve in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SingleNodeSchedulerConfig {
    /// Most sandboxes admitted at once.
    pub max_sessions: usize,
    /// Total CPU and memory sandboxes may reserve.
    pub resources: SandboxResources,
}

impl SingleNodeSchedulerConfig {
    /// Sessions admitted at once by default.
    pub const DEFAULT_MAX_SESSIONS: usize = 64;
    /// How many sandbox vCPUs one host CPU backs by default. A vCPU is a CFS quota, and
    /// agent sandboxes idle most of the time, so CPU is overcommitted; memory is not.
    pub const DEFAULT_CPU_OVERCOMMIT: u32 = 32;
    /// Memory kept back for the host and the daemon: this fraction (percent) of the host's
    /// memory, at least 512 MiB.
    pub const HOST_MEMORY_RESERVE_PERCENT: u64 = 10;

    /// Limits of `max_sessions` sandboxes and `resources` in total.
    #[must_use]
    pub const fn new(max_sessions: usize, resources: SandboxResources) -> Self {
        Self {
            max_sessions,
            resources,
        }
    }

    /// Limits derived from a host with `cpus` CPUs and `memory_bytes` of memory.
    #[must_use]
    pub fn for_host(cpus: u32, memory_bytes: u64) -> Self {
        let reserve = (memory_bytes / 100 * Self::HOST_MEMORY_RESERVE_PERCENT).max(512 << 20);
        Self::new(
            Self::DEFAULT_MAX_SESSIONS,
            SandboxResources::new(
                cpus.max(1).saturating_mul(Self::DEFAULT_CPU_OVERCOMMIT),
                memory_bytes.saturating_sub(reserve),
            ),
        )
    }

    /// Limits derived from this machine (its usable CPUs and `MemTotal`).
    #[must_use]
    pub fn from_host() -> Self {
        let cpus = std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
        Self::for_host(cpus, host_memory_bytes().unwrap_or(4 * GIB))
    }

    /// Most sandboxes admitted at once.
    #[must_use]
    pub const fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Total capacity.
    #[must_use]
    pub const fn resources(&self) -> SandboxResources {
        self.resources
    }
}

impl Default for SingleNodeSchedulerConfig {
    fn default() -> Self {
        Self::from_host()
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Everything one host's runtime needs to know.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        if self.scheduler.max_sessions == 0 {
            return bad("scheduler.max_sessions must be at least 1".to_owned());
        }
        self.default_sandbox_resources
            .validate_for(&self.scheduler.resources)
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
    fn capacity_comes_from_the_host() {
        let config = SingleNodeSchedulerConfig::for_host(2, 24 * GIB);
        assert_eq!(config.resources.vcpus, 64);
        assert!(config.resources.memory_bytes < 24 * GIB);
        assert!(config.resources.memory_bytes > 20 * GIB);
        let tiny = SingleNodeSchedulerConfig::for_host(1, GIB);
        assert_eq!(tiny.resources.memory_bytes, GIB - (512 << 20));
        let here = SingleNodeSchedulerConfig::from_host();
        assert!(here.resources.vcpus >= SingleNodeSchedulerConfig::DEFAULT_CPU_OVERCOMMIT);
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
