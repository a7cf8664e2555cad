//! Snapshots: capture, restore into a new sandbox, delete.

use crate::backend::SingleNodeBackend;
use crate::backend::lifecycle::Origin;
use crate::error::{Error, Result};
use crate::id::{SandboxId, validate_snapshot_id};
use crate::model::{
    LogLevel, SandboxSession, SandboxState, SingleNodeCreateRequest, SnapshotRecord,
};

impl SingleNodeBackend {
    /// Capture a snapshot of a running or paused sandbox, which keeps its state. The snapshot
    /// id is `name` when given, else `<sandbox id>-<random>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`] for a bad name, [`Error::DiskPressure`],
    /// [`Error::SandboxNotFound`], [`Error::Conflict`] for a taken id or a sandbox in another
    /// state, the driver's error, or a persistence failure (after which the driver's artifacts
    /// are removed again).
    pub async fn snapshot(&self, sandbox_id: &str, name: Option<&str>) -> Result<SnapshotRecord> {
        let snapshot_id = match name {
            Some(name) => name.to_owned(),
            None => format!("{sandbox_id}-{}", &SandboxId::generate().as_str()[..8]),
        };
        validate_snapshot_id(&snapshot_id)?;
        self.shared.disk.check("sandbox snapshot")?;
        let _guard = self.lock_sandbox(sandbox_id).await;
        let source = self
            .shared
            .state
            .get_active(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        if !matches!(source.state, SandboxState::Running | SandboxState::Paused) {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox_id} is {}; only a running or paused sandbox can be snapshotted",
                source.state
            )));
        }
        if self.shared.state.get_snapshot(&snapshot_id).is_some() {
            return Err(Error::Conflict(format!(
                "snapshot {snapshot_id} already exists"
            )));
        }
        let captured = self
            .shared
            .driver
            .snapshot(sandbox_id, &snapshot_id)
            .await?;
        let record = SnapshotRecord {
            snapshot_id: snapshot_id.clone(),
            source_sandbox_id: sandbox_id.to_owned(),
            template_id: source.template_id,
            names: name.map(|name| vec![name.to_owned()]).unwrap_or_default(),
            location: captured.location,
            runtime_data: captured.runtime_data,
            resources: source.resources,
            created_at_unix_ms: self.now_ms(),
            template_metadata: crate::model::TemplateMetadata::default(),
        };
        if let Err(error) = self.shared.state.insert_snapshot(record.clone()) {
            if let Err(cleanup) = self.shared.driver.delete_snapshot(&record).await {
                tracing::error!(snapshot = %snapshot_id, %cleanup,
                    "could not remove the artifacts of an unrecorded snapshot");
            }
            return Err(error);
        }
        self.log(
            sandbox_id,
            LogLevel::Info,
            format!("snapshot {snapshot_id} taken"),
        );
        Ok(record)
    }

    /// Start a new sandbox from a snapshot. The request's template id is replaced by the
    /// snapshot's id (what the sandbox was made from).
    ///
    /// # Errors
    ///
    /// [`Error::SnapshotNotFound`], then as [`SingleNodeBackend::create`].
    pub async fn restore(
        &self,
        snapshot_id: &str,
        request: SingleNodeCreateRequest,
    ) -> Result<SandboxSession> {
        let snapshot = self
            .shared
            .state
            .get_snapshot(snapshot_id)
            .ok_or_else(|| Error::SnapshotNotFound(snapshot_id.to_owned()))?;
        self.start_sandbox(request, Origin::Snapshot(&snapshot))
            .await
    }

    /// Delete a snapshot and its artifacts.
    ///
    /// # Errors
    ///
    /// [`Error::SnapshotNotFound`], the driver's error, or a persistence failure.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        let snapshot = self
            .shared
            .state
            .get_snapshot(snapshot_id)
            .ok_or_else(|| Error::SnapshotNotFound(snapshot_id.to_owned()))?;
        self.shared.driver.delete_snapshot(&snapshot).await?;
        self.shared.state.remove_snapshot(snapshot_id)?;
        Ok(())
    }

    /// All snapshots, optionally only those of one source sandbox.
    #[must_use]
    pub fn snapshots(&self, source_sandbox_id: Option<&str>) -> Vec<SnapshotRecord> {
        self.shared
            .state
            .load_snapshots()
            .into_iter()
            .filter(|record| source_sandbox_id.is_none_or(|id| record.source_sandbox_id == id))
            .collect()
    }
}
