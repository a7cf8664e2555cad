//! The public model: what a sandbox asks for, what it is, and what the runtime reports.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::id::SandboxId;
use crate::state::ActiveSessionRecord;

const MIB: u64 = 1024 * 1024;

/// CPU and memory of one sandbox, or of the whole host's capacity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SandboxResources {
    /// Virtual CPUs (a cgroup CPU quota for the namespaces driver).
    pub vcpus: u32,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
}

impl SandboxResources {
    /// The smallest memory limit a sandbox may ask for: below this its agent cannot run.
    pub const MIN_MEMORY_BYTES: u64 = 32 * MIB;

    /// Resources of `vcpus` CPUs and `memory_bytes` of memory.
    #[must_use]
    pub const fn new(vcpus: u32, memory_bytes: u64) -> Self {
        Self {
            vcpus,
            memory_bytes,
        }
    }

    /// Resources of `vcpus` CPUs and `memory_mib` MiB of memory.
    #[must_use]
    pub const fn from_mib(vcpus: u32, memory_mib: u64) -> Self {
        Self::new(vcpus, memory_mib.saturating_mul(MIB))
    }

    /// Number of CPUs.
    #[must_use]
    pub const fn cpu_count(&self) -> u32 {
        self.vcpus
    }

    /// Memory in whole MiB (rounded down).
    #[must_use]
    pub const fn memory_mib(&self) -> u64 {
        self.memory_bytes / MIB
    }

    /// Check that these resources make sense for one sandbox on a host of `capacity`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for 0 CPUs, less than 32 MiB of memory, or more than the
    /// host's whole capacity (such a sandbox could never be admitted).
    pub fn validate_for(&self, capacity: &Self) -> Result<()> {
        if self.vcpus == 0 {
            return Err(Error::InvalidRequest(
                "a sandbox needs at least 1 CPU".to_owned(),
            ));
        }
        if self.memory_bytes < Self::MIN_MEMORY_BYTES {
            return Err(Error::InvalidRequest(format!(
                "a sandbox needs at least {} MiB of memory, {} bytes were asked for",
                Self::MIN_MEMORY_BYTES / MIB,
                self.memory_bytes
            )));
        }
        if self.vcpus > capacity.vcpus || self.memory_bytes > capacity.memory_bytes {
            return Err(Error::InvalidRequest(format!(
                "a sandbox of {} CPUs and {} MiB can never fit this host's capacity of {} CPUs \
                 and {} MiB",
                self.vcpus,
                self.memory_mib(),
                capacity.vcpus,
                capacity.memory_mib()
            )));
        }
        Ok(())
    }
}

/// Where a sandbox is in its life.
///
/// ```text
/// Creating ──► Running ⇄ Paused
///    │            │        │
///    │            ▼        ▼
///    ├────────► Stopping ◄─┘ ──► Stopped
///    ▼            │
///  Failed ◄───────┘   (Failed ──► Stopping: a failed sandbox can be deleted again)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// Admitted; the driver is building it.
    Creating,
    /// Up and serving.
    Running,
    /// Frozen: memory kept, no CPU.
    Paused,
    /// Being torn down.
    Stopping,
    /// Gone. Terminal.
    Stopped,
    /// Creation or teardown failed; it still holds its reservation until deleted.
    Failed,
}

impl SandboxState {
    /// Every state, for exhaustive tests and filters.
    pub const ALL: [Self; 6] = [
        Self::Creating,
        Self::Running,
        Self::Paused,
        Self::Stopping,
        Self::Stopped,
        Self::Failed,
    ];

    /// Whether a sandbox in this state may move to `to`. The one table of legal transitions.
    #[must_use]
    pub const fn can_become(self, to: Self) -> bool {
        use SandboxState::{Creating, Failed, Paused, Running, Stopped, Stopping};
        match (self, to) {
            (Creating, Running | Stopping | Failed)
            | (Running, Paused | Stopping)
            | (Paused, Running | Stopping)
            | (Stopping, Stopped | Failed)
            | (Failed, Stopping) => true,
            (Creating, Creating | Paused | Stopped)
            | (Running, Creating | Running | Stopped | Failed)
            | (Paused, Creating | Paused | Stopped | Failed)
            | (Stopping, Creating | Running | Paused | Stopping)
            | (Stopped, _)
            | (Failed, Creating | Running | Paused | Stopped | Failed) => false,
        }
    }

    /// Move `sandbox_id` from this state to `to`, or say why not.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTransition`] naming both states.
    pub fn transition(self, sandbox_id: &str, to: Self) -> Result<Self> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(Error::InvalidTransition {
                sandbox_id: sandbox_id.to_owned(),
                from: self,
                to,
            })
        }
    }

    /// The state's name as used in filters and on the wire (`running`, `paused`, ...).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for SandboxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SandboxState {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "unknown sandbox state {s:?}; expected one of creating, running, paused, \
                     stopping, stopped, failed"
                ))
            })
    }
}

/// What happens when a running sandbox reaches its deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    /// Delete it (E2B's default).
    #[default]
    Kill,
    /// Pause it (E2B `autoPause`).
    Pause,
}

/// A request to create a sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleNodeCreateRequest {
    sandbox_id: SandboxId,
    template_id: String,
    resources: SandboxResources,
    timeout: Option<Duration>,
    env: HashMap<String, String>,
    metadata: BTreeMap<String, String>,
    on_timeout: TimeoutAction,
    auto_resume: bool,
    allow_internet_access: bool,
    image: Option<crate::template::TemplateImage>,
}

impl SingleNodeCreateRequest {
    /// A request for a sandbox from `template_id` with `resources` and a fresh random id.
    #[must_use]
    pub fn new(template_id: impl Into<String>, resources: SandboxResources) -> Self {
        Self {
            sandbox_id: SandboxId::generate(),
            template_id: template_id.into(),
            resources,
            timeout: None,
            env: HashMap::new(),
            metadata: BTreeMap::new(),
            on_timeout: TimeoutAction::Kill,
            auto_resume: false,
            allow_internet_access: true,
            image: None,
        }
    }

    /// Build the sandbox from `image` (what the backend's template source resolved the
    /// template id to) instead of the driver's `base`.
    #[must_use]
    pub fn with_image(mut self, image: crate::template::TemplateImage) -> Self {
        self.image = Some(image);
        self
    }

    /// The resolved template, when it is not `base`.
    #[must_use]
    pub fn image(&self) -> Option<&crate::template::TemplateImage> {
        self.image.as_ref()
    }

    /// Use `id` instead of a generated id.
    #[must_use]
    pub fn with_sandbox_id(mut self, id: SandboxId) -> Self {
        self.sandbox_id = id;
        self
    }

    /// Run for `timeout` before the deadline action (default: the config's default timeout).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Set one environment variable for every process in the sandbox.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Replace all environment variables.
    #[must_use]
    pub fn with_envs(mut self, env: HashMap<String, String>) -> Self {
        self.env = env;
        self
    }

    /// Replace the user metadata (free key/value pairs, used by list filters).
    #[must_use]
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.metadata = metadata;
        self
    }

    /// What to do at the deadline.
    #[must_use]
    pub fn with_on_timeout(mut self, action: TimeoutAction) -> Self {
        self.on_timeout = action;
        self
    }

    /// Whether a paused sandbox resumes when traffic reaches it.
    #[must_use]
    pub fn with_auto_resume(mut self, auto_resume: bool) -> Self {
        self.auto_resume = auto_resume;
        self
    }

    /// Whether the sandbox may reach the internet (E2B `allow_internet_access`).
    #[must_use]
    pub fn with_internet_access(mut self, allowed: bool) -> Self {
        self.allow_internet_access = allowed;
        self
    }

    /// The sandbox id.
    #[must_use]
    pub fn sandbox_id(&self) -> &SandboxId {
        &self.sandbox_id
    }
    /// The template id.
    #[must_use]
    pub fn template_id(&self) -> &str {
        &self.template_id
    }
    /// Requested resources.
    #[must_use]
    pub fn resources(&self) -> SandboxResources {
        self.resources
    }
    /// Requested timeout, if any.
    #[must_use]
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    /// Environment variables for every process.
    #[must_use]
    pub fn env(&self) -> &HashMap<String, String> {
        &self.env
    }
    /// User metadata.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// Deadline action.
    #[must_use]
    pub fn on_timeout(&self) -> TimeoutAction {
        self.on_timeout
    }
    /// Auto-resume flag.
    #[must_use]
    pub fn auto_resume(&self) -> bool {
        self.auto_resume
    }
    /// Internet access flag.
    #[must_use]
    pub fn allow_internet_access(&self) -> bool {
        self.allow_internet_access
    }
}

/// Opaque data a driver needs to find a sandbox again after a daemon restart (for the Linux
/// driver: init PID and start time, cgroup path, network slot). Stored, never interpreted,
/// by this crate.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RuntimeHandle(pub String);

/// What a driver returns from `create` and `restore`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeCreatedSandbox {
    /// Client id reported to E2B clients.
    pub client_id: String,
    /// Token the sandbox's envd requires in `X-Access-Token`.
    pub envd_access_token: Option<String>,
    /// Token for proxied user ports, when the driver issues one.
    pub traffic_access_token: Option<String>,
    /// envd version the sandbox runs.
    pub envd_version: Option<String>,
    /// Handles for re-adoption after a restart.
    pub runtime_handle: Option<RuntimeHandle>,
    /// How long the driver's own steps took (name, duration), for the create timings.
    pub phases: Vec<(&'static str, std::time::Duration)>,
}

/// A sandbox as the backend reports it: a read-only view of its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSession {
    record: ActiveSessionRecord,
}

impl SandboxSession {
    /// The view of `record`.
    #[must_use]
    pub fn new(record: ActiveSessionRecord) -> Self {
        Self { record }
    }
    /// The sandbox id.
    #[must_use]
    pub fn sandbox_id(&self) -> &str {
        &self.record.sandbox_id
    }
    /// Its state.
    #[must_use]
    pub fn state(&self) -> SandboxState {
        self.record.state
    }
    /// Template it was made from.
    #[must_use]
    pub fn template_id(&self) -> &str {
        &self.record.template_id
    }
    /// Creation time, unix milliseconds.
    #[must_use]
    pub fn started_at_unix_ms(&self) -> i64 {
        self.record.started_at_unix_ms
    }
    /// Deadline, unix milliseconds.
    #[must_use]
    pub fn end_at_unix_ms(&self) -> i64 {
        self.record.end_at_unix_ms
    }
    /// Reserved resources.
    #[must_use]
    pub fn resources(&self) -> SandboxResources {
        self.record.resources
    }
    /// User metadata.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.record.metadata
    }
    /// The full record (tokens, lifecycle flags, runtime handle).
    #[must_use]
    pub fn record(&self) -> &ActiveSessionRecord {
        &self.record
    }
}

/// Environment, start and ready commands a template or snapshot carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateMetadata {
    /// Environment variables.
    #[serde(default)]
    pub envs: HashMap<String, String>,
    /// Command started in the background when a sandbox starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Command that must succeed before the sandbox counts as ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
}

impl TemplateMetadata {
    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.envs.is_empty() && self.start_cmd.is_none() && self.ready_cmd.is_none()
    }
}

/// Resource usage of a sandbox, as a driver measures it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeMetrics {
    /// CPU time used since the sandbox started, microseconds (all CPUs together).
    pub cpu_usage_usec: u64,
    /// Memory in use, page cache included, bytes.
    pub memory_used_bytes: u64,
    /// Of which page cache, bytes.
    pub memory_cache_bytes: u64,
    /// Bytes the sandbox wrote to its own layers.
    pub disk_used_bytes: u64,
}

/// What a driver keeps ready for sandboxes to come, as it reports it for monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimePools {
    /// Sandboxes of `base` started ahead and ready to be handed out by a create.
    pub warm_ready: usize,
    /// How many of `base` the driver keeps started ahead when it can.
    pub warm_target: usize,
    /// Sandboxes of other templates started ahead and ready, all templates together.
    pub template_warm_ready: usize,
    /// How many of other templates the driver keeps started ahead, all together.
    pub template_warm_target: usize,
    /// Network slots prepared ahead and not in use.
    pub spare_slots: usize,
}

/// What a driver returns from `snapshot`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeSnapshotRef {
    /// Snapshot id.
    pub snapshot_id: String,
    /// Path of the snapshot artifact.
    pub location: Option<String>,
    /// Driver-private data the restore needs.
    pub runtime_data: Option<String>,
}

/// A persisted snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    /// Snapshot id.
    pub snapshot_id: String,
    /// The sandbox it was taken from.
    pub source_sandbox_id: String,
    /// Template the source sandbox was made from.
    #[serde(default)]
    pub template_id: String,
    /// Names (E2B snapshot names).
    #[serde(default)]
    pub names: Vec<String>,
    /// Artifact path.
    #[serde(default)]
    pub location: Option<String>,
    /// Driver-private restore data.
    #[serde(default)]
    pub runtime_data: Option<String>,
    /// Resources of the source sandbox.
    #[serde(default)]
    pub resources: SandboxResources,
    /// When it was taken (unix milliseconds).
    #[serde(default)]
    pub created_at_unix_ms: i64,
    /// Template metadata carried with it.
    #[serde(default)]
    pub template_metadata: TemplateMetadata,
}

/// A shell command to run to completion inside a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandRequest {
    /// Shell command line.
    pub command: String,
    /// Working directory (default: the user's home).
    pub cwd: Option<String>,
    /// Extra environment.
    pub envs: HashMap<String, String>,
    /// User to run as (default: the sandbox's default user).
    pub user: Option<String>,
    /// Bytes written to stdin, which is then closed.
    pub stdin: Vec<u8>,
}

impl CommandRequest {
    /// A request for `command`.
    #[must_use]
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            ..Self::default()
        }
    }
}

/// Result of a [`CommandRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code (128 + signal for a signalled process).
    pub exit_code: i32,
}

impl CommandOutput {
    /// Whether the command exited 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }
}

/// Severity of a [`LogEvent`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Debugging detail.
    Debug,
    /// Normal events.
    #[default]
    Info,
    /// Something odd that did not stop the sandbox.
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// Lowercase name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "debug" => Self::Debug,
            "warn" => Self::Warn,
            "error" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// One log line of a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogEvent {
    /// Position in the sandbox's log: strictly increasing, never reused, stable as a cursor
    /// even after older events are dropped. 0 until the store assigns it.
    #[serde(default)]
    pub seq: u64,
    /// When it happened (unix milliseconds).
    pub timestamp_unix_ms: i64,
    /// Severity.
    #[serde(default)]
    pub level: LogLevel,
    /// Who wrote it (`single-node`, `driver`, `envd`, ...).
    pub source: String,
    /// The text.
    pub message: String,
}

impl LogEvent {
    /// An info event from `single-node`, stamped now.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            seq: 0,
            timestamp_unix_ms: crate::clock::system_now_unix_ms(),
            level: LogLevel::Info,
            source: "single-node".to_owned(),
            message: message.into(),
        }
    }

    /// The text.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A route key: one port of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortRoute {
    /// The sandbox.
    pub sandbox_id: String,
    /// The port inside it.
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        use SandboxState::*;
        let legal = [
            (Creating, Running),
            (Creating, Stopping),
            (Creating, Failed),
            (Running, Paused),
            (Running, Stopping),
            (Paused, Running),
            (Paused, Stopping),
            (Stopping, Stopped),
            (Stopping, Failed),
            (Failed, Stopping),
        ];
        for from in SandboxState::ALL {
            for to in SandboxState::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                let result = from.transition("sbx", to);
                if expected {
                    assert_eq!(result.unwrap(), to);
                } else {
                    let message = result.unwrap_err().to_string();
                    assert!(message.contains(from.as_str()) && message.contains(to.as_str()));
                }
            }
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in SandboxState::ALL {
            assert_eq!(state.as_str().parse::<SandboxState>().unwrap(), state);
        }
        assert!("frozen".parse::<SandboxState>().is_err());
    }

    #[test]
    fn resources_are_validated_against_the_host() {
        let host = SandboxResources::from_mib(4, 8192);
        assert!(
            SandboxResources::from_mib(0, 512)
                .validate_for(&host)
                .is_err()
        );
        assert!(SandboxResources::new(1, 1).validate_for(&host).is_err());
        let too_big = SandboxResources::from_mib(5, 512)
            .validate_for(&host)
            .unwrap_err();
        assert!(too_big.to_string().contains("never fit"));
        assert!(
            SandboxResources::from_mib(1, 9000)
                .validate_for(&host)
                .is_err()
        );
        SandboxResources::from_mib(4, 8192)
            .validate_for(&host)
            .unwrap();
    }
}
