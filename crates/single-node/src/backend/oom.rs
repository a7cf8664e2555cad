//! OOM kills: when the kernel had to kill a sandbox's process for memory, the sandbox's log
//! says so (a warning naming how many and the sandbox's memory limit) and the daemon counts
//! it, so that nothing is lost silently. The driver keeps envd and the daemon out of the OOM
//! killer's reach; this reports what it did take.

use std::sync::atomic::Ordering;

use crate::backend::SingleNodeBackend;
use crate::model::{LogLevel, SandboxState};

impl SingleNodeBackend {
    /// Ask the driver how many processes the OOM killer took in each live sandbox, and log
    /// the new kills in each sandbox's log. Returns the sandboxes with new kills and how many.
    ///
    /// Counts are remembered from the daemon's start: a sandbox that had kills before a
    /// restart has them logged once more, as a total.
    pub async fn check_oom_kills(&self) -> Vec<(String, u64)> {
        let running: Vec<(String, u64)> = self
            .shared
            .state
            .load_active()
            .into_iter()
            .filter(|record| matches!(record.state, SandboxState::Running | SandboxState::Paused))
            .map(|record| (record.sandbox_id, record.resources.memory_bytes))
            .collect();
        let mut fresh = Vec::new();
        let mut counts = Vec::with_capacity(running.len());
        for (id, memory_bytes) in running {
            // A sandbox deleted meanwhile, or a driver that cannot tell: nothing to report.
            if let Ok(Some(total)) = self.shared.driver.oom_kills(&id).await {
                counts.push((id, memory_bytes, total));
            }
        }
        let mut seen = self
            .shared
            .oom_kills_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut still_live = std::collections::HashMap::with_capacity(counts.len());
        for (id, memory_bytes, total) in counts {
            let before = seen.get(&id).copied().unwrap_or(0);
            if total > before {
                let new = total - before;
                self.shared
                    .oom_kills_total
                    .fetch_add(new, Ordering::Relaxed);
                let plural = if total == 1 { "process" } else { "processes" };
                self.log(
                    &id,
                    LogLevel::Warn,
                    format!(
                        "out of memory: the kernel killed {total} {plural} of this sandbox so \
                         far, at its memory limit of {} MiB (envd keeps running)",
                        memory_bytes >> 20
                    ),
                );
                tracing::warn!(sandbox = %id, kills = total, "OOM kills in a sandbox");
                fresh.push((id.clone(), new));
            }
            still_live.insert(id, total.max(before));
        }
        *seen = still_live;
        fresh
    }

    /// Processes of sandboxes the OOM killer took since the daemon started.
    #[must_use]
    pub fn oom_kills_total(&self) -> u64 {
        self.shared.oom_kills_total.load(Ordering::Relaxed)
    }
}
