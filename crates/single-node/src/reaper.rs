//! The deadline reaper: kills (or pauses, when the sandbox asked for it) running sandboxes
//! whose deadline has passed, and now and then logs the OOM kills of sandboxes.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::backend::SingleNodeBackend;
use crate::error::{Error, Result};
use crate::model::TimeoutAction;

/// How often the reaper asks the driver about OOM kills: one small file per sandbox.
pub const OOM_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// What the reaper did to one sandbox.
#[derive(Debug)]
pub struct Reaped {
    /// The sandbox.
    pub sandbox_id: String,
    /// What its deadline asked for.
    pub action: TimeoutAction,
    /// How it went.
    pub result: Result<()>,
}

/// A running reaper task; it stops when this is dropped.
#[derive(Debug)]
pub struct ReaperHandle {
    task: JoinHandle<()>,
}

impl Drop for ReaperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SingleNodeBackend {
    /// Act on every running sandbox whose deadline has passed, now.
    pub async fn reap_due(&self) -> Vec<Reaped> {
        let now = self.now_ms();
        let due = self.state().due_active(now);
        let mut reaped = Vec::with_capacity(due.len());
        for record in due {
            let id = record.sandbox_id;
            let Some(result) = self.expire_if_due(&id, record.on_timeout).await else {
                continue;
            };
            match &result {
                Err(error) => tracing::error!(sandbox = %id, %error, "deadline action failed"),
                Ok(()) => {
                    tracing::info!(sandbox = %id, action = ?record.on_timeout, "deadline reached")
                }
            }
            reaped.push(Reaped {
                sandbox_id: id,
                action: record.on_timeout,
                result,
            });
        }
        reaped
    }

    /// Under the sandbox's lock, check again that it is due (it may have been deleted, paused
    /// or given more time since it was seen) and act. `None` when it was no longer due.
    async fn expire_if_due(&self, sandbox_id: &str, action: TimeoutAction) -> Option<Result<()>> {
        let _guard = self.lock_sandbox(sandbox_id).await;
        let now = self.now_ms();
        self.state()
            .get_active(sandbox_id)
            .filter(|record| record.is_due(now))?;
        Some(match action {
            TimeoutAction::Kill => self.delete_locked(sandbox_id).await,
            TimeoutAction::Pause => match self.pause_locked(sandbox_id).await {
                Ok(_) => Ok(()),
                // A driver that cannot pause still must not let the sandbox outlive its
                // deadline.
                Err(Error::UnsupportedCapability(reason)) => {
                    tracing::warn!(sandbox = sandbox_id, %reason, "cannot pause at deadline; killing");
                    self.delete_locked(sandbox_id).await
                }
                Err(error) => Err(error),
            },
        })
    }

    /// Run [`SingleNodeBackend::reap_due`] every `reaper_interval_ms`, and at once when a
    /// deadline changes, and [`SingleNodeBackend::check_oom_kills`] every
    /// [`OOM_CHECK_INTERVAL`], until the handle is dropped. Needs a Tokio runtime.
    #[must_use]
    pub fn spawn_reaper(&self) -> ReaperHandle {
        let backend = self.clone();
        let interval = Duration::from_millis(self.config().reaper_interval_ms);
        let task = tokio::spawn(async move {
            let mut oom_checked = tokio::time::Instant::now();
            loop {
                let _ = tokio::time::timeout(interval, backend.shared.deadlines_changed.notified())
                    .await;
                backend.reap_due().await;
                if oom_checked.elapsed() >= OOM_CHECK_INTERVAL {
                    backend.check_oom_kills().await;
                    oom_checked = tokio::time::Instant::now();
                }
            }
        });
        ReaperHandle { task }
    }
}
