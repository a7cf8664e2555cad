//! Create, delete, pause, resume, connect and deadlines.

use std::time::Duration;

use crate::admission::RefusalReason;
use crate::backend::SingleNodeBackend;
use crate::error::{Error, Result};
use crate::model::{
    LogLevel, RuntimeCreatedSandbox, SandboxSession, SandboxState, SingleNodeCreateRequest,
    SnapshotRecord,
};
use crate::state::ActiveSessionRecord;
use crate::template::BASE_TEMPLATE;

/// Where a new sandbox comes from.
pub(super) enum Origin<'a> {
    Template,
    Snapshot(&'a SnapshotRecord),
}

impl SingleNodeBackend {
    /// Create a sandbox: validate, check the disk floor, admit, record it as `Creating`, let
    /// the driver build it, then record it `Running` with its deadline.
    ///
    /// On any failure everything done so far is undone (driver teardown, record, reservation),
    /// except when the driver's teardown itself fails: then the record stays as `Failed`,
    /// holding its reservation, so that a later delete can finish the job.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRequest`], [`Error::DiskPressure`], [`Error::CapacityRejected`],
    /// [`Error::Conflict`] for an id in use, the driver's error, or a persistence failure.
    ///
    /// The create runs to its end on a task of its own even if the caller stops waiting (an
    /// HTTP client that hangs up mid-create): a create abandoned half-way would leave the
    /// driver's work and a `Creating` record behind until the next restart. Needs a tokio
    /// runtime.
    pub async fn create(&self, request: SingleNodeCreateRequest) -> Result<SandboxSession> {
        let backend = self.clone();
        tokio::spawn(async move { backend.start_sandbox(request, Origin::Template).await })
            .await
            .map_err(|error| {
                Error::RuntimeLaunchFailed(format!("the create task failed: {error}"))
            })?
    }

    pub(super) async fn start_sandbox(
        &self,
        mut request: SingleNodeCreateRequest,
        origin: Origin<'_>,
    ) -> Result<SandboxSession> {
        let operation = match origin {
            Origin::Template => "sandbox create",
            Origin::Snapshot(_) => "sandbox restore",
        };
        let id = request.sandbox_id().as_str().to_owned();
        let started = std::time::Instant::now();
        if request.template_id().is_empty() {
            return Err(Error::InvalidRequest(
                "a template id is required".to_owned(),
            ));
        }
        request
            .resources()
            .validate_for(&self.shared.config.scheduler.capacity())?;
        if let (Origin::Template, Some(templates)) = (&origin, &self.shared.templates)
            && request.template_id() != BASE_TEMPLATE
            && request.image().is_none()
        {
            let image = templates.resolve(request.template_id())?;
            request = request.with_image(image);
        }
        let deadline = self.deadline_after(request.timeout())?;
        if let Err(error) = self.shared.disk.check(operation) {
            self.shared
                .scheduler
                .record_refusal(RefusalReason::Disk, &error.to_string());
            return Err(error);
        }

        let _guard = self.lock_sandbox(&id).await;
        self.shared.scheduler.admit(&id, request.resources())?;
        let now = self.now_ms();
        let record = ActiveSessionRecord {
            sandbox_id: id.clone(),
            // A resolved template is recorded by its id, whatever name the create gave.
            template_id: request.image().map_or_else(
                || request.template_id().to_owned(),
                |image| image.template_id.clone(),
            ),
            client_id: String::new(),
            envd_access_token: None,
            traffic_access_token: None,
            envd_version: None,
            state: SandboxState::Creating,
            started_at_unix_ms: now,
            end_at_unix_ms: deadline,
            resources: request.resources(),
            metadata: request.metadata().clone(),
            on_timeout: request.on_timeout(),
            auto_resume: request.auto_resume(),
            allow_internet_access: request.allow_internet_access(),
            runtime_attached: false,
            runtime_handle: None,
        };
        // The `Creating` record is written before the driver runs so that a daemon killed
        // mid-create finds it on restart and reclaims whatever the driver had built.
        if let Err(error) = self.shared.state.insert_active(record) {
            self.shared.scheduler.release(&id);
            return Err(error);
        }
        let admitted = started.elapsed();

        let ports = &self.shared.ports;
        let created = match origin {
            Origin::Template => self.shared.driver.create(&request, ports).await,
            Origin::Snapshot(snapshot) => {
                self.shared.driver.restore(&request, snapshot, ports).await
            }
        };
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                self.roll_back_create(&id, None).await;
                return Err(error);
            }
        };
        let driven = started.elapsed();
        match self.record_running(&id, &request, &created) {
            Ok(record) => {
                let total = started.elapsed();
                self.shared.create_phases.record(
                    [
                        ("admission", admitted),
                        ("persist", total.saturating_sub(driven)),
                        ("total", total),
                    ]
                    .into_iter()
                    .chain(created.phases.iter().copied()),
                );
                let from = match origin {
                    Origin::Template => format!("template {}", request.template_id()),
                    Origin::Snapshot(snapshot) => format!("snapshot {}", snapshot.snapshot_id),
                };
                self.log(&id, LogLevel::Info, format!("sandbox created from {from}"));
                self.shared.deadlines_changed.notify_one();
                Ok(SandboxSession::new(record))
            }
            Err(error) => {
                self.roll_back_create(&id, created.runtime_handle.as_ref())
                    .await;
                Err(error)
            }
        }
    }

    fn record_running(
        &self,
        id: &str,
        request: &SingleNodeCreateRequest,
        created: &RuntimeCreatedSandbox,
    ) -> Result<ActiveSessionRecord> {
        // The lifetime counts from when the sandbox is usable, not from when it was asked for.
        let deadline = self.deadline_after(request.timeout())?;
        let now = self.now_ms();
        self.shared.state.update_active(id, |record| {
            record.state = record.state.transition(id, SandboxState::Running)?;
            record.client_id.clone_from(&created.client_id);
            record
                .envd_access_token
                .clone_from(&created.envd_access_token);
            record
                .traffic_access_token
                .clone_from(&created.traffic_access_token);
            record.envd_version.clone_from(&created.envd_version);
            record.runtime_handle.clone_from(&created.runtime_handle);
            record.runtime_attached = true;
            record.started_at_unix_ms = now;
            record.end_at_unix_ms = deadline;
            Ok(())
        })
    }

    /// Undo a create after the `Creating` record was written.
    async fn roll_back_create(&self, id: &str, handle: Option<&crate::model::RuntimeHandle>) {
        self.shared.ports.remove_sandbox(id);
        if let Err(error) = self.shared.driver.delete(id, handle).await {
            tracing::error!(sandbox = id, %error, "teardown after a failed create failed");
            self.mark_failed(
                id,
                &format!("teardown after a failed create failed: {error}"),
            );
            return;
        }
        self.forget(id);
    }

    /// Remove a sandbox's record and reservation. If the record cannot be
    /// removed, it is marked failed and keeps its reservation.
    fn forget(&self, id: &str) {
        match self.shared.state.remove_active(id) {
            Ok(_) => {
                self.shared.scheduler.release(id);
            }
            Err(error) => {
                tracing::error!(sandbox = id, %error, "could not remove sandbox record");
                self.mark_failed(id, &format!("could not remove its record: {error}"));
            }
        }
    }

    pub(super) fn mark_failed(&self, id: &str, reason: &str) {
        self.shared.scheduler.fail(id);
        let marked = self.shared.state.update_active(id, |record| {
            record.state = SandboxState::Failed;
            Ok(())
        });
        if let Err(error) = marked {
            tracing::error!(sandbox = id, %error, "could not mark sandbox failed");
        }
        self.log(id, LogLevel::Error, format!("sandbox failed: {reason}"));
    }

    /// Delete a sandbox: tear it down, drop its routes, record, logs and reservation.
    ///
    /// A sandbox whose teardown fails is kept as `Failed` with its reservation; deleting it
    /// again retries the teardown.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], the driver's error, or a persistence failure.
    pub async fn delete(&self, sandbox_id: &str) -> Result<()> {
        let _guard = self.lock_sandbox(sandbox_id).await;
        self.delete_locked(sandbox_id).await
    }

    pub(crate) async fn delete_locked(&self, sandbox_id: &str) -> Result<()> {
        let record = self
            .shared
            .state
            .get_active(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        // Under the sandbox lock a `Stopping` record is a teardown that failed half-way (or a
        // daemon that died during one): carry on with it.
        if record.state != SandboxState::Stopping {
            self.shared
                .state
                .transition(sandbox_id, SandboxState::Stopping)?;
        }
        self.shared.ports.remove_sandbox(sandbox_id);
        if let Err(error) = self
            .shared
            .driver
            .delete(sandbox_id, record.runtime_handle.as_ref())
            .await
        {
            self.mark_failed(sandbox_id, &format!("teardown failed: {error}"));
            return Err(error);
        }
        self.shared.state.remove_active(sandbox_id)?;
        self.shared.scheduler.release(sandbox_id);
        Ok(())
    }

    /// Freeze a running sandbox.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], [`Error::InvalidTransition`] if it is not running (an
    /// already paused sandbox included), the driver's error, or a persistence failure (after
    /// which the sandbox is thawed again).
    pub async fn pause(&self, sandbox_id: &str) -> Result<SandboxSession> {
        let _guard = self.lock_sandbox(sandbox_id).await;
        self.pause_locked(sandbox_id).await
    }

    pub(crate) async fn pause_locked(&self, sandbox_id: &str) -> Result<SandboxSession> {
        self.require_transition(sandbox_id, SandboxState::Paused)?;
        self.shared.driver.pause(sandbox_id).await?;
        match self
            .shared
            .state
            .transition(sandbox_id, SandboxState::Paused)
        {
            Ok(record) => {
                self.shared.scheduler.pause(sandbox_id);
                self.log(sandbox_id, LogLevel::Info, "sandbox paused".to_owned());
                Ok(SandboxSession::new(record))
            }
            Err(error) => {
                if let Err(resume_error) = self.shared.driver.resume(sandbox_id).await {
                    tracing::error!(sandbox = sandbox_id, %resume_error,
                        "could not thaw a sandbox whose pause was not recorded");
                }
                Err(error)
            }
        }
    }

    /// Thaw a paused sandbox; its deadline becomes now + `timeout` (default: the configured
    /// default timeout).
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], [`Error::InvalidTransition`] if it is not paused,
    /// [`Error::InvalidRequest`] for a timeout past the maximum, the driver's error, or a
    /// persistence failure (after which the sandbox is frozen again).
    pub async fn resume(
        &self,
        sandbox_id: &str,
        timeout: Option<Duration>,
    ) -> Result<SandboxSession> {
        let _guard = self.lock_sandbox(sandbox_id).await;
        self.resume_locked(sandbox_id, timeout).await
    }

    async fn resume_locked(
        &self,
        sandbox_id: &str,
        timeout: Option<Duration>,
    ) -> Result<SandboxSession> {
        let deadline = self.deadline_after(timeout)?;
        self.require_transition(sandbox_id, SandboxState::Running)?;
        // A paused sandbox gave its vCPUs back: it takes them again before it runs.
        self.shared.scheduler.resume(sandbox_id)?;
        if let Err(error) = self.shared.driver.resume(sandbox_id).await {
            self.shared.scheduler.pause(sandbox_id);
            return Err(error);
        }
        let recorded = self.shared.state.update_active(sandbox_id, |record| {
            record.state = record.state.transition(sandbox_id, SandboxState::Running)?;
            record.end_at_unix_ms = deadline;
            Ok(())
        });
        match recorded {
            Ok(record) => {
                self.log(sandbox_id, LogLevel::Info, "sandbox resumed".to_owned());
                self.shared.deadlines_changed.notify_one();
                Ok(SandboxSession::new(record))
            }
            Err(error) => {
                self.shared.scheduler.pause(sandbox_id);
                if let Err(pause_error) = self.shared.driver.pause(sandbox_id).await {
                    tracing::error!(sandbox = sandbox_id, %pause_error,
                        "could not re-freeze a sandbox whose resume was not recorded");
                }
                Err(error)
            }
        }
    }

    /// E2B `connect`: a paused sandbox is resumed with deadline now + `timeout`; a running one
    /// keeps running and its deadline is moved to now + `timeout` if that is later. Returns
    /// the sandbox and whether it was resumed.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], [`Error::InvalidTransition`] for a sandbox being created,
    /// stopped or failed, and the errors of [`SingleNodeBackend::resume`].
    pub async fn connect(
        &self,
        sandbox_id: &str,
        timeout: Option<Duration>,
    ) -> Result<(SandboxSession, bool)> {
        let _guard = self.lock_sandbox(sandbox_id).await;
        let record = self
            .shared
            .state
            .get_active(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        match record.state {
            SandboxState::Paused => Ok((self.resume_locked(sandbox_id, timeout).await?, true)),
            SandboxState::Running => {
                let deadline = self.deadline_after(timeout)?;
                let record = self.shared.state.update_active(sandbox_id, |record| {
                    record.end_at_unix_ms = record.end_at_unix_ms.max(deadline);
                    Ok(())
                })?;
                Ok((SandboxSession::new(record), false))
            }
            other => Err(Error::InvalidTransition {
                sandbox_id: sandbox_id.to_owned(),
                from: other,
                to: SandboxState::Running,
            }),
        }
    }

    /// Set a sandbox's deadline to now + `timeout`: shorter or longer than before.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`], [`Error::InvalidRequest`] for a timeout past the maximum,
    /// [`Error::Conflict`] for a sandbox that is not running or paused, or a persistence
    /// failure.
    pub async fn set_timeout(&self, sandbox_id: &str, timeout: Duration) -> Result<SandboxSession> {
        let deadline = self.deadline_after(Some(timeout))?;
        let _guard = self.lock_sandbox(sandbox_id).await;
        let record = self.shared.state.update_active(sandbox_id, |record| {
            if !matches!(record.state, SandboxState::Running | SandboxState::Paused) {
                return Err(Error::Conflict(format!(
                    "sandbox {sandbox_id} is {}; only a running or paused sandbox has a deadline",
                    record.state
                )));
            }
            record.end_at_unix_ms = deadline;
            Ok(())
        })?;
        self.shared.deadlines_changed.notify_one();
        Ok(SandboxSession::new(record))
    }

    /// Check that `sandbox_id` exists and may become `to`.
    fn require_transition(
        &self,
        sandbox_id: &str,
        to: SandboxState,
    ) -> Result<ActiveSessionRecord> {
        let record = self
            .shared
            .state
            .get_active(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        record.state.transition(sandbox_id, to)?;
        Ok(record)
    }
}
