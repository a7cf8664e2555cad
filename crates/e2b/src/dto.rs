//! The JSON the E2B SDKs send and read (keys exactly as on the wire; see
//! `E2B-CONTRACT.md` §4). Requests ignore unknown keys and take missing ones as defaults.

use std::collections::{BTreeMap, HashMap};

use firkin_single_node::{SandboxSession, SandboxState, TimeoutAction};
use serde::{Deserialize, Serialize};

/// `POST /v2/sandboxes` and `POST /sandboxes`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    /// Template name or id.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Seconds until the sandbox is killed (or paused); the server default when absent.
    pub timeout: Option<u64>,
    /// Pause instead of kill at the deadline.
    pub auto_pause: Option<bool>,
    /// Resume on traffic.
    pub auto_resume: Option<AutoResume>,
    /// Egress beyond the sandbox (snake_case on the wire).
    #[serde(rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    /// User metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Environment of every process.
    pub env_vars: Option<HashMap<String, String>>,
}

/// `autoResume`.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct AutoResume {
    /// Whether it is on.
    #[serde(default)]
    pub enabled: bool,
}

/// `POST /v2/sandboxes/{id}/connect` and `POST /sandboxes/{id}/resume`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConnectSandbox {
    /// Seconds from now the sandbox lives at least.
    pub timeout: Option<u64>,
}

/// `POST /sandboxes/{id}/timeout`.
#[derive(Clone, Debug, Deserialize)]
pub struct SetTimeout {
    /// Seconds from now.
    pub timeout: u64,
}

/// What create and connect answer.
#[derive(Clone, Debug, Serialize)]
pub struct Sandbox {
    /// Template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Node id (any string).
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// envd version (the SDK gates features on it).
    #[serde(rename = "envdVersion")]
    pub envd_version: String,
    /// Token envd requires in `X-Access-Token`.
    #[serde(rename = "envdAccessToken", skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Sandbox domain (host routing), or null.
    pub domain: Option<String>,
}

/// `lifecycle` of a sandbox.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// `kill` or `pause`.
    pub on_timeout: &'static str,
    /// Resume on traffic.
    pub auto_resume: bool,
}

/// `GET /sandboxes/{id}` and the entries of the lists.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    /// Template.
    #[serde(rename = "templateID")]
    pub template_id: String,
    /// Id.
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Node id.
    #[serde(rename = "clientID")]
    pub client_id: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub end_at: String,
    /// envd version.
    pub envd_version: String,
    /// vCPUs.
    pub cpu_count: u32,
    /// Memory limit, MiB.
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Disk the sandbox may use, MiB.
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: &'static str,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// Timeout behaviour.
    pub lifecycle: Lifecycle,
    /// Egress allowed.
    pub allow_internet_access: bool,
    /// Token envd requires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    /// Sandbox domain, or null.
    pub domain: Option<String>,
}

/// `GET /sandboxes/{id}/metrics`: one sample.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// RFC 3339.
    pub timestamp: String,
    /// Unix seconds.
    pub timestamp_unix: i64,
    /// vCPUs.
    pub cpu_count: u32,
    /// CPU use since the previous sample (or since start), percent of all its vCPUs.
    pub cpu_used_pct: f64,
    /// Memory in use, bytes.
    pub mem_used: u64,
    /// Memory limit, bytes.
    pub mem_total: u64,
    /// Page cache, bytes.
    pub mem_cache: u64,
    /// Disk written by the sandbox, bytes.
    pub disk_used: u64,
    /// Disk it may use in all, bytes.
    pub disk_total: u64,
}

/// One log line of `GET /sandboxes/{id}/logs`.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    /// RFC 3339.
    pub timestamp: String,
    /// The text.
    pub line: String,
}

/// One structured entry of the v2 logs.
#[derive(Clone, Debug, Serialize)]
pub struct LogEntry {
    /// RFC 3339.
    pub timestamp: String,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text.
    pub message: String,
    /// Source and cursor.
    pub fields: BTreeMap<String, String>,
}

/// RFC 3339 (UTC, milliseconds) for unix milliseconds.
#[must_use]
pub fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Unix milliseconds of an RFC 3339 time.
#[must_use]
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let time =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The wire name of a state that E2B knows (`running`, `paused`); others are reported as
/// `running` only while they last (creating, stopping), which the SDK never sees in practice.
#[must_use]
pub fn state_name(state: SandboxState) -> &'static str {
    match state {
        SandboxState::Paused => "paused",
        _ => "running",
    }
}

impl SandboxDetail {
    /// The detail of `session`; `domain` as [`Sandbox::domain`].
    #[must_use]
    pub fn of(
        session: &SandboxSession,
        envd_version: &str,
        disk_size_mb: u64,
        domain: Option<String>,
    ) -> Self {
        let record = session.record();
        Self {
            template_id: session.template_id().to_owned(),
            sandbox_id: session.sandbox_id().to_owned(),
            client_id: record.client_id.clone(),
            started_at: rfc3339(session.started_at_unix_ms()),
            end_at: rfc3339(session.end_at_unix_ms()),
            envd_version: envd_version.to_owned(),
            cpu_count: session.resources().vcpus,
            memory_mb: session.resources().memory_bytes >> 20,
            disk_size_mb,
            state: state_name(session.state()),
            metadata: session.metadata().clone(),
            lifecycle: Lifecycle {
                on_timeout: match record.on_timeout {
                    TimeoutAction::Kill => "kill",
                    TimeoutAction::Pause => "pause",
                },
                auto_resume: record.auto_resume,
            },
            allow_internet_access: record.allow_internet_access,
            envd_access_token: record.envd_access_token.clone(),
            domain,
        }
    }
}

impl Sandbox {
    /// What create/connect answer for `session`.
    #[must_use]
    pub fn of(session: &SandboxSession, envd_version: &str, domain: Option<String>) -> Self {
        let record = session.record();
        Self {
            template_id: session.template_id().to_owned(),
            sandbox_id: session.sandbox_id().to_owned(),
            client_id: record.client_id.clone(),
            envd_version: envd_version.to_owned(),
            envd_access_token: record.envd_access_token.clone(),
            domain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_rfc3339() {
        let ms = 1_780_000_000_123;
        let text = rfc3339(ms);
        assert!(text.ends_with('Z'), "{text}");
        assert_eq!(parse_rfc3339(&text), Some(ms));
        assert_eq!(
            parse_rfc3339("2026-01-01T00:00:00+00:00"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn new_sandbox_ignores_unknown_keys_and_defaults_missing_ones() {
        let body: NewSandbox = serde_json::from_str(
            r#"{"templateID":"base","metadata":{},"envVars":{"A":"1"},"secure":true,"allow_internet_access":false,"autoPause":true}"#,
        )
        .unwrap();
        assert_eq!(body.template_id, "base");
        assert_eq!(body.timeout, None);
        assert_eq!(body.allow_internet_access, Some(false));
        assert_eq!(body.auto_pause, Some(true));
        assert_eq!(body.env_vars.unwrap()["A"], "1");
    }
}
