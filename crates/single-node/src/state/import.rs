//! Import of a seed-format state directory (`active.json`, `snapshots.json`, `logs.json`, as
//! written by firkin-single-node's `FileStateStore`) into the state store.
//!
//! All three files are parsed and validated before anything is written, and everything is
//! written in one transaction: a bad file or a clash with existing state changes nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{Error, Result};
use crate::id::{SandboxId, validate_snapshot_id};
use crate::model::{
    LogEvent, LogLevel, SandboxResources, SandboxState, SnapshotRecord, TemplateMetadata,
    TimeoutAction,
};
use crate::state::{ActiveSessionRecord, StateStore, StoredState};

/// What an import brought in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Active session records.
    pub active: usize,
    /// Snapshot records.
    pub snapshots: usize,
    /// Log events (after trimming to the per-sandbox bound).
    pub log_events: usize,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedActive {
    sandbox_id: String,
    template_id: String,
    client_id: String,
    envd_access_token: Option<String>,
    started_at_unix_seconds: i64,
    end_at_unix_seconds: i64,
    resources: SandboxResources,
    runtime_attached: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedSnapshot {
    snapshot_id: String,
    source_sandbox_id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    staging_dir: Option<String>,
    #[serde(default)]
    machine_identifier: Option<Vec<u8>>,
    #[serde(default)]
    network_macs: Option<Vec<String>>,
    #[serde(default)]
    template_metadata: TemplateMetadata,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedLogEvent {
    timestamp_unix_seconds: i64,
    message: String,
    source: String,
}

/// A seed-format state directory, parsed and validated, ready to import.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedState {
    /// Converted active records.
    pub active: Vec<ActiveSessionRecord>,
    /// Converted snapshot records.
    pub snapshots: Vec<SnapshotRecord>,
    /// Log events per sandbox, oldest first, sorted by sandbox id.
    pub logs: Vec<(String, Vec<LogEvent>)>,
}

impl SeedState {
    /// Read and validate `dir`'s `active.json`, `snapshots.json` and `logs.json`. Missing files
    /// count as empty, as the seed treats them. Reads only.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for a file that does not parse (with its path and the
    /// position) or an id that firkin cannot serve; [`Error::StatePersistenceFailed`] for a
    /// read failure.
    pub fn read(dir: &Path) -> Result<Self> {
        let active: Vec<SeedActive> = read_seed_file(dir, "active.json")?;
        let snapshots: Vec<SeedSnapshot> = read_seed_file(dir, "snapshots.json")?;
        let seed_logs: HashMap<String, Vec<SeedLogEvent>> = read_seed_file(dir, "logs.json")?;

        let active = active
            .into_iter()
            .map(convert_active)
            .collect::<Result<Vec<_>>>()?;
        let snapshots = snapshots
            .into_iter()
            .map(convert_snapshot)
            .collect::<Result<Vec<_>>>()?;
        let mut logs = Vec::with_capacity(seed_logs.len());
        for (sandbox_id, events) in seed_logs {
            SandboxId::parse(&sandbox_id).map_err(|error| invalid_id("logs.json", &error))?;
            let events: Vec<LogEvent> = events
                .into_iter()
                .map(|event| LogEvent {
                    seq: 0,
                    timestamp_unix_ms: event.timestamp_unix_seconds.saturating_mul(1000),
                    level: LogLevel::Info,
                    source: event.source,
                    message: event.message,
                })
                .collect();
            logs.push((sandbox_id, events));
        }
        logs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            active,
            snapshots,
            logs,
        })
    }

    /// What importing this would bring in, with at most `max_log_events_per_sandbox` events
    /// kept per sandbox.
    #[must_use]
    pub fn summary(&self, max_log_events_per_sandbox: u32) -> ImportSummary {
        let keep = max_log_events_per_sandbox.max(1) as usize;
        ImportSummary {
            active: self.active.len(),
            snapshots: self.snapshots.len(),
            log_events: self
                .logs
                .iter()
                .map(|(_, events)| events.len().min(keep))
                .sum(),
        }
    }
}

impl StateStore {
    /// Import `seed` in one transaction, keeping at most `max_log_events_per_sandbox` of each
    /// sandbox's newest log events; the in-memory view sees the records at once.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] for an id (or a sandbox's log) already in the store;
    /// [`Error::StatePersistenceFailed`] for a write failure. Nothing is written then.
    pub fn import_seed(
        &self,
        seed: &SeedState,
        max_log_events_per_sandbox: u32,
    ) -> Result<ImportSummary> {
        let keep = max_log_events_per_sandbox.max(1);
        let stored = StoredState {
            active: seed.active.clone(),
            snapshots: seed.snapshots.clone(),
        };
        self.with_records(|records| {
            if let Some(record) = seed
                .active
                .iter()
                .find(|r| records.active.contains_key(&r.sandbox_id))
            {
                return Err(Error::Conflict(format!(
                    "sandbox {} is already in the state database; nothing was imported",
                    record.sandbox_id
                )));
            }
            self.durable().import(&stored, &seed.logs, keep)?;
            for record in &seed.active {
                records
                    .active
                    .insert(record.sandbox_id.clone(), record.clone());
            }
            for record in &seed.snapshots {
                records
                    .snapshots
                    .insert(record.snapshot_id.clone(), record.clone());
            }
            Ok(())
        })?;
        Ok(seed.summary(keep))
    }
}

/// Read the seed-format directory `dir` and import it into `state` (see [`SeedState::read`]
/// and [`StateStore::import_seed`]). All or nothing.
///
/// # Errors
///
/// As [`SeedState::read`] and [`StateStore::import_seed`].
pub fn import_seed_dir(
    dir: &Path,
    state: &StateStore,
    max_log_events_per_sandbox: u32,
) -> Result<ImportSummary> {
    state.import_seed(&SeedState::read(dir)?, max_log_events_per_sandbox)
}

fn read_seed_file<T: serde::de::DeserializeOwned + Default>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|error| {
            Error::InvalidRequest(format!(
                "{} is not a valid seed state file: {error}; nothing was imported",
                path.display()
            ))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(error) => Err(Error::persistence(
            format!("read {}", path.display()),
            error,
        )),
    }
}

fn invalid_id(file: &str, error: &Error) -> Error {
    Error::InvalidRequest(format!(
        "{file}: {error}; firkin sandbox ids are DNS labels, so this record cannot be served; \
         nothing was imported"
    ))
}

fn convert_active(seed: SeedActive) -> Result<ActiveSessionRecord> {
    SandboxId::parse(&seed.sandbox_id).map_err(|error| invalid_id("active.json", &error))?;
    Ok(ActiveSessionRecord {
        sandbox_id: seed.sandbox_id,
        template_id: seed.template_id,
        client_id: seed.client_id,
        envd_access_token: seed.envd_access_token,
        traffic_access_token: None,
        envd_version: None,
        state: SandboxState::Running,
        started_at_unix_ms: seed.started_at_unix_seconds.saturating_mul(1000),
        end_at_unix_ms: seed.end_at_unix_seconds.saturating_mul(1000),
        resources: seed.resources,
        metadata: BTreeMap::new(),
        on_timeout: TimeoutAction::Kill,
        auto_resume: false,
        allow_internet_access: true,
        runtime_attached: seed.runtime_attached,
        runtime_handle: None,
    })
}

fn convert_snapshot(seed: SeedSnapshot) -> Result<SnapshotRecord> {
    validate_snapshot_id(&seed.snapshot_id).map_err(|error| {
        Error::InvalidRequest(format!("snapshots.json: {error}; nothing was imported"))
    })?;
    // The Apple-specific restore data (staging dir, machine identifier, MACs) is kept whole
    // as the record's opaque runtime data: nothing the seed knew is lost.
    let runtime_data = serde_json::json!({
        "seed": {
            "staging_dir": seed.staging_dir,
            "machine_identifier": seed.machine_identifier,
            "network_macs": seed.network_macs,
        }
    });
    Ok(SnapshotRecord {
        snapshot_id: seed.snapshot_id,
        source_sandbox_id: seed.source_sandbox_id,
        template_id: String::new(),
        names: seed.names,
        location: seed.location,
        runtime_data: Some(runtime_data.to_string()),
        resources: SandboxResources::default(),
        created_at_unix_ms: 0,
        template_metadata: seed.template_metadata,
    })
}
