//! State: the hot in-memory view of live sandboxes and snapshots ([`StateStore`]), written
//! through to the durable SQLite store ([`DurableStateStore`]) in the same critical section,
//! and the bounded per-sandbox [`LogStore`].
//!
//! Memory and database never disagree: every mutation takes the one state lock, commits its
//! transaction, and only then changes memory. A failed commit changes nothing.

mod durable;
mod import;
mod logs;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

pub use durable::{DurableStateStore, StoredState};
pub use import::{ImportSummary, SeedState, import_seed_dir};
pub use logs::LogStore;

use crate::error::{Error, Result};
use crate::model::{RuntimeHandle, SandboxResources, SandboxState, SnapshotRecord, TimeoutAction};

/// A live sandbox as persisted: enough to list it, enforce its deadline, re-admit it and let
/// the driver re-adopt it after a restart.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ActiveSessionRecord {
    /// Sandbox id.
    pub sandbox_id: String,
    /// Template it was created from.
    pub template_id: String,
    /// Client id reported by the driver.
    pub client_id: String,
    /// Token envd requires, if any.
    pub envd_access_token: Option<String>,
    /// Token for proxied user ports, if any.
    #[serde(default)]
    pub traffic_access_token: Option<String>,
    /// envd version running inside.
    #[serde(default)]
    pub envd_version: Option<String>,
    /// Lifecycle state.
    pub state: SandboxState,
    /// Creation time, unix milliseconds.
    pub started_at_unix_ms: i64,
    /// Deadline, unix milliseconds (enforced while running).
    pub end_at_unix_ms: i64,
    /// Reserved resources; re-admitted on restart.
    pub resources: SandboxResources,
    /// User metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// What the reaper does at the deadline.
    #[serde(default)]
    pub on_timeout: TimeoutAction,
    /// Whether traffic resumes it when paused.
    #[serde(default)]
    pub auto_resume: bool,
    /// Whether it may reach the internet.
    #[serde(default = "default_true")]
    pub allow_internet_access: bool,
    /// Whether a runtime exists for it (false for records imported without one).
    pub runtime_attached: bool,
    /// The driver's re-adoption handles.
    #[serde(default)]
    pub runtime_handle: Option<RuntimeHandle>,
}

const fn default_true() -> bool {
    true
}

impl ActiveSessionRecord {
    /// Whether its deadline has passed at `now_unix_ms` (only running sandboxes expire).
    #[must_use]
    pub fn is_due(&self, now_unix_ms: i64) -> bool {
        self.state == SandboxState::Running && self.end_at_unix_ms <= now_unix_ms
    }
}

/// The in-memory view of live sandboxes and snapshots, written through to a durable store.
/// Cloning shares it.
#[derive(Clone, Debug)]
pub struct StateStore {
    inner: Arc<Mutex<Records>>,
    durable: DurableStateStore,
}

#[derive(Debug, Default)]
struct Records {
    active: BTreeMap<String, ActiveSessionRecord>,
    snapshots: BTreeMap<String, SnapshotRecord>,
}

impl StateStore {
    /// An empty store kept in memory only.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] if the in-memory database cannot be created.
    pub fn new() -> Result<Self> {
        Self::with_durable(DurableStateStore::open_in_memory()?)
    }

    /// The store over `durable`, loaded from it.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the records cannot be read.
    pub fn with_durable(durable: DurableStateStore) -> Result<Self> {
        let stored = durable.load()?;
        let records = Records {
            active: stored
                .active
                .into_iter()
                .map(|record| (record.sandbox_id.clone(), record))
                .collect(),
            snapshots: stored
                .snapshots
                .into_iter()
                .map(|record| (record.snapshot_id.clone(), record))
                .collect(),
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(records)),
            durable,
        })
    }

    /// Open the durable store under `root` and load it.
    ///
    /// # Errors
    ///
    /// As [`DurableStateStore::open`].
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        Self::with_durable(DurableStateStore::open(root)?)
    }

    /// The durable store underneath.
    #[must_use]
    pub fn durable(&self) -> &DurableStateStore {
        &self.durable
    }

    /// All active records, ordered by id.
    #[must_use]
    pub fn load_active(&self) -> Vec<ActiveSessionRecord> {
        self.lock().active.values().cloned().collect()
    }

    /// The records due at `now_unix_ms` ([`ActiveSessionRecord::is_due`]), cloning only
    /// those: the reaper asks several times a second, with any number of sandboxes live.
    #[must_use]
    pub fn due_active(&self, now_unix_ms: i64) -> Vec<ActiveSessionRecord> {
        self.lock()
            .active
            .values()
            .filter(|record| record.is_due(now_unix_ms))
            .cloned()
            .collect()
    }

    /// One active record.
    #[must_use]
    pub fn get_active(&self, sandbox_id: &str) -> Option<ActiveSessionRecord> {
        self.lock().active.get(sandbox_id).cloned()
    }

    /// Add a record for a new sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the id is taken; [`Error::StatePersistenceFailed`] when the
    /// write fails. Either way nothing changes.
    pub fn insert_active(&self, record: ActiveSessionRecord) -> Result<()> {
        let mut records = self.lock();
        if records.active.contains_key(&record.sandbox_id) {
            return Err(Error::Conflict(format!(
                "sandbox {} already exists",
                record.sandbox_id
            )));
        }
        self.durable.upsert_active(&record)?;
        records.active.insert(record.sandbox_id.clone(), record);
        Ok(())
    }

    /// Change one record with `change`, which sees the current record and may refuse. The
    /// change is committed before memory is updated. Returns the updated record.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`]; the error `change` returns; [`Error::StatePersistenceFailed`].
    pub fn update_active(
        &self,
        sandbox_id: &str,
        change: impl FnOnce(&mut ActiveSessionRecord) -> Result<()>,
    ) -> Result<ActiveSessionRecord> {
        let mut records = self.lock();
        let current = records
            .active
            .get(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        let mut updated = current.clone();
        change(&mut updated)?;
        if updated.sandbox_id != sandbox_id {
            return Err(Error::InvalidRequest(
                "a record's sandbox id cannot change".to_owned(),
            ));
        }
        self.durable.upsert_active(&updated)?;
        records
            .active
            .insert(sandbox_id.to_owned(), updated.clone());
        Ok(updated)
    }

    /// Move `sandbox_id` to state `to` if the transition table allows it.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], [`Error::InvalidTransition`], or a persistence failure.
    pub fn transition(&self, sandbox_id: &str, to: SandboxState) -> Result<ActiveSessionRecord> {
        self.update_active(sandbox_id, |record| {
            record.state = record.state.transition(sandbox_id, to)?;
            Ok(())
        })
    }

    /// Remove a record (and its logs). Returns it, or `None` if there was none.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`]; nothing changes then.
    pub fn remove_active(&self, sandbox_id: &str) -> Result<Option<ActiveSessionRecord>> {
        let mut records = self.lock();
        if !records.active.contains_key(sandbox_id) {
            return Ok(None);
        }
        self.durable.remove_active(sandbox_id)?;
        Ok(records.active.remove(sandbox_id))
    }

    /// Drop records whose deadline passed at `now_unix_ms` (paused sandboxes do not expire)
    /// and return the survivors. This forgets the runtimes of dropped records: the backend
    /// uses it only after it has torn them down.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`].
    pub fn reconcile_active_entries(&self, now_unix_ms: i64) -> Result<Vec<ActiveSessionRecord>> {
        let due: Vec<String> = self
            .lock()
            .active
            .values()
            .filter(|record| record.is_due(now_unix_ms))
            .map(|record| record.sandbox_id.clone())
            .collect();
        for sandbox_id in due {
            self.remove_active(&sandbox_id)?;
        }
        Ok(self.load_active())
    }

    /// All snapshot records, ordered by id.
    #[must_use]
    pub fn load_snapshots(&self) -> Vec<SnapshotRecord> {
        self.lock().snapshots.values().cloned().collect()
    }

    /// One snapshot record.
    #[must_use]
    pub fn get_snapshot(&self, snapshot_id: &str) -> Option<SnapshotRecord> {
        self.lock().snapshots.get(snapshot_id).cloned()
    }

    /// Add a snapshot record.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the id is taken; a persistence failure.
    pub fn insert_snapshot(&self, record: SnapshotRecord) -> Result<()> {
        let mut records = self.lock();
        if records.snapshots.contains_key(&record.snapshot_id) {
            return Err(Error::Conflict(format!(
                "snapshot {} already exists",
                record.snapshot_id
            )));
        }
        self.durable.upsert_snapshot(&record)?;
        records.snapshots.insert(record.snapshot_id.clone(), record);
        Ok(())
    }

    /// Remove a snapshot record; returns it if there was one.
    ///
    /// # Errors
    ///
    /// A persistence failure.
    pub fn remove_snapshot(&self, snapshot_id: &str) -> Result<Option<SnapshotRecord>> {
        let mut records = self.lock();
        if !records.snapshots.contains_key(snapshot_id) {
            return Ok(None);
        }
        self.durable.remove_snapshot(snapshot_id)?;
        Ok(records.snapshots.remove(snapshot_id))
    }

    /// Reconcile snapshot records with the managed artifact directory (`<root>/snapshot-artifacts`):
    /// records whose managed artifact vanished are dropped; files in that directory that no
    /// record references are deleted; records outside it are kept as they are. Returns the
    /// surviving records. An in-memory store has no managed directory and changes nothing.
    ///
    /// # Errors
    ///
    /// A persistence failure, or a file that cannot be deleted (with its path).
    pub fn reconcile_snapshot_artifacts(&self) -> Result<Vec<SnapshotRecord>> {
        let Some(artifacts) = self.durable.snapshot_artifacts_dir() else {
            return Ok(self.load_snapshots());
        };
        let is_managed = |location: &Path| location.parent() == Some(artifacts.as_path());
        let mut referenced = HashSet::new();
        for record in self.load_snapshots() {
            let Some(location) = record.location.as_deref().map(PathBuf::from) else {
                continue;
            };
            if !is_managed(&location) {
                continue;
            }
            if location.exists() {
                referenced.insert(location);
            } else {
                tracing::warn!(snapshot = %record.snapshot_id, path = %location.display(),
                    "snapshot artifact vanished; dropping its record");
                self.remove_snapshot(&record.snapshot_id)?;
            }
        }
        delete_unreferenced_files(&artifacts, &referenced)?;
        Ok(self.load_snapshots())
    }

    /// Run `change` on the records under the state lock (for multi-record operations such as
    /// imports, which must commit before they touch memory).
    fn with_records<T>(&self, change: impl FnOnce(&mut Records) -> Result<T>) -> Result<T> {
        change(&mut self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        // Memory is changed only after a successful commit, by infallible map operations, so
        // a poisoned lock still guards records equal to the database's.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn delete_unreferenced_files(dir: &Path, referenced: &HashSet<PathBuf>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(Error::persistence(format!("read {}", dir.display()), error)),
    };
    for entry in entries {
        let path = entry
            .map_err(|error| Error::persistence(format!("read {}", dir.display()), error))?
            .path();
        if path.is_file() && !referenced.contains(&path) {
            tracing::info!(path = %path.display(), "deleting orphan snapshot artifact");
            std::fs::remove_file(&path).map_err(|error| {
                Error::persistence(format!("delete orphan artifact {}", path.display()), error)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
