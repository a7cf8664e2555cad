//! Startup reconciliation: make the records, the ledger and the driver agree again after the
//! daemon was stopped or killed.

use crate::admission::Holding;
use crate::backend::SingleNodeBackend;
use crate::error::Result;
use crate::model::{LogLevel, SandboxState};

/// What a startup reconciliation did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Live sandboxes found again and re-admitted.
    pub adopted: Vec<String>,
    /// Half-created or half-deleted sandboxes torn down.
    pub reclaimed: Vec<String>,
    /// Records whose runtime had vanished, forgotten.
    pub vanished: Vec<String>,
    /// Sandboxes kept as `Failed` (teardown or adoption failed).
    pub failed: Vec<String>,
}

impl SingleNodeBackend {
    pub(super) async fn reconcile_on_start(&self) -> Result<Reconciliation> {
        let mut report = Reconciliation::default();
        for record in self.shared.state.load_active() {
            let id = record.sandbox_id.clone();
            let handle = record.runtime_handle.as_ref();
            let holding = match record.state {
                SandboxState::Paused => Holding::Paused,
                SandboxState::Failed => Holding::Failed,
                _ => Holding::Running,
            };
            match record.state {
                // The daemon died inside create or delete: whatever the driver built goes.
                SandboxState::Creating | SandboxState::Stopping | SandboxState::Stopped => {
                    self.shared
                        .scheduler
                        .admit_existing(&id, record.resources, holding);
                    match self.shared.driver.delete(&id, handle).await {
                        Ok(()) => {
                            self.shared.state.remove_active(&id)?;
                            self.shared.scheduler.release(&id);
                            report.reclaimed.push(id);
                        }
                        Err(error) => {
                            self.mark_failed(
                                &id,
                                &format!("reclaim after restart failed: {error}"),
                            );
                            report.failed.push(id);
                        }
                    }
                }
                SandboxState::Failed => {
                    self.shared
                        .scheduler
                        .admit_existing(&id, record.resources, holding);
                    report.failed.push(id);
                }
                SandboxState::Running | SandboxState::Paused if !record.runtime_attached => {
                    self.shared
                        .scheduler
                        .admit_existing(&id, record.resources, holding);
                    report.adopted.push(id);
                }
                SandboxState::Running | SandboxState::Paused => {
                    match self
                        .shared
                        .driver
                        .adopt(&id, handle, &self.shared.ports)
                        .await
                    {
                        Ok(true) => {
                            self.shared
                                .scheduler
                                .admit_existing(&id, record.resources, holding);
                            self.log(
                                &id,
                                LogLevel::Info,
                                "sandbox re-adopted after a restart".to_owned(),
                            );
                            report.adopted.push(id);
                        }
                        Ok(false) => {
                            tracing::warn!(sandbox = %id, "sandbox vanished while no daemon ran; forgetting it");
                            self.shared.ports.remove_sandbox(&id);
                            self.shared.state.remove_active(&id)?;
                            report.vanished.push(id);
                        }
                        Err(error) => {
                            self.shared
                                .scheduler
                                .admit_existing(&id, record.resources, holding);
                            self.mark_failed(
                                &id,
                                &format!("re-adoption after restart failed: {error}"),
                            );
                            report.failed.push(id);
                        }
                    }
                }
            }
        }
        // Deadlines that passed while no daemon ran are acted on now, through the driver.
        self.reap_due().await;
        self.shared.state.reconcile_snapshot_artifacts()?;
        tracing::info!(
            adopted = report.adopted.len(),
            reclaimed = report.reclaimed.len(),
            vanished = report.vanished.len(),
            failed = report.failed.len(),
            "state reconciled"
        );
        Ok(report)
    }
}
