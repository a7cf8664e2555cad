//! Sandboxes started ahead of their create, so that a create only hands one out.
//!
//! A warm sandbox is a whole sandbox of the `base` template: directories, a cgroup holding
//! only the PID limit, a network slot with the default egress, and envd running as PID 1
//! and answering, under a pool name (`warm-<random>`) instead of a sandbox id. Handing one
//! out ([`crate::driver`]'s create) writes the request's limits into its cgroup, sets its
//! hostname and `/etc/hosts` to the sandbox id, sets the slot's egress, and checks that envd
//! still answers; no process but envd has run in it before. A cold create does the whole
//! launch instead (3–5 ms of helper, cgroup joins and envd start-up on this kind of host).
//!
//! The pool is refilled one sandbox at a time in the background. Its sandboxes are no user's:
//! [`WarmPool::shutdown`] tears them down, and after a crash the next driver's start-up
//! reclaims them with any other leftover of its state directory (their directories are
//! there and no stored handle owns them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use firkin_single_node::Result;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::cgroup::CgroupLimits;
use crate::driver::{Core, Started};

/// The first wait after a failed start; it doubles up to [`MAX_RETRY`] while starts fail.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Keeps up to `size` warm sandboxes.
#[derive(Debug)]
pub(crate) struct WarmPool {
    inner: Arc<Inner>,
    filler: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    size: usize,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Started>,
    closed: bool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pool name: valid as a cgroup and directory name, never a sandbox id (generated ids have no `-`).
fn warm_name() -> String {
    format!(
        "warm-{}",
        firkin_single_node::SandboxId::generate().as_str()
    )
}

impl WarmPool {
    /// Starts filling a pool of `size` in the background (none for 0). Needs a tokio runtime.
    pub(crate) fn start(core: Arc<Core>, size: usize) -> Self {
        let inner = Arc::new(Inner {
            core,
            size,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let filler = (size > 0).then(|| tokio::spawn(fill(Arc::clone(&inner))));
        Self {
            inner,
            filler: Mutex::new(filler),
        }
    }

    /// A warm sandbox, if one is ready. The pool starts another only at [`WarmPool::refill`],
    /// which the caller calls once the create is done: on this kind of host (2 cores) a start
    /// running beside the hand-out doubled its latency.
    pub(crate) fn take(&self) -> Option<Started> {
        self.inner.state().ready.pop_front()
    }

    /// Lets the filler start sandboxes until the pool is full again.
    pub(crate) fn refill(&self) {
        self.inner.wake.notify_one();
    }

    /// How many warm sandboxes are ready now.
    pub(crate) fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// Stops the filler (letting a start in flight finish) and tears every warm sandbox down.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
        let filler = self
            .filler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(filler) = filler {
            let _ = filler.await;
        }
        let ready: Vec<Started> = self.inner.state().ready.drain(..).collect();
        let mut result = Ok(());
        for started in ready {
            result = result.and(self.inner.core.teardown(&started.handle).await);
        }
        result
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // The filler stops; what is warm is left for the next driver's reclaim.
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
    }
}

/// One start at a time until the pool is full, then sleep until a take wakes it.
async fn fill(inner: Arc<Inner>) {
    let limits = CgroupLimits {
        pids_max: Some(inner.core.config.pids_max),
        ..CgroupLimits::default()
    };
    let internet = inner.core.config.net.default_internet_access;
    let mut retry = FIRST_RETRY;
    loop {
        let wanted = {
            let state = inner.state();
            if state.closed {
                return;
            }
            state.ready.len() < inner.size
        };
        if !wanted {
            inner.wake.notified().await;
            continue;
        }
        let name = warm_name();
        match inner.core.start(&name, &limits, internet).await {
            Ok(started) => {
                retry = FIRST_RETRY;
                let unwanted = {
                    let mut state = inner.state();
                    if state.closed {
                        Some(started)
                    } else {
                        state.ready.push_back(started);
                        None
                    }
                };
                if let Some(started) = unwanted {
                    if let Err(error) = inner.core.teardown(&started.handle).await {
                        tracing::warn!(%error, "tearing down a warm sandbox after close");
                    }
                    return;
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "starting a warm sandbox failed");
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = inner.wake.notified() => {}
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}
