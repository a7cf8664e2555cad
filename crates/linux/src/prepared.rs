//! Sandbox directories made ahead, as network slots are: a cold create (the warm pool was
//! empty) takes one instead of making its disk on its path.
//!
//! A prepared directory is `<state>/sandboxes/prep-<random>`: its disk copied, attached and
//! mounted, its overlay directories made; the sandbox that takes it keeps that name for its
//! directory and its cgroup (as a warm sandbox keeps its pool name), and gets its own
//! `/etc/hostname` and `/etc/hosts` written at the take. Making one costs ~25 ms here, most
//! of it the kernel's `LOOP_CONFIGURE` (see [`crate::disk`]); taking one, two small writes.
//! Only with per-sandbox disks: without them a directory costs well under a millisecond.
//!
//! The pool is refilled one directory at a time in the background. Its directories are no
//! sandbox's: [`PreparedDirs::shutdown`] removes them, and after a crash the next driver's
//! start-up reclaims them with any other leftover of its state directory.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::driver::Core;

/// The wait after a failed preparation.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps up to `size` prepared sandbox directories.
#[derive(Debug)]
pub(crate) struct PreparedDirs {
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
    ready: Vec<PathBuf>,
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

impl PreparedDirs {
    /// Starts preparing `size` directories in the background (none for 0). Needs a tokio
    /// runtime.
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

    /// A prepared directory, if one is ready; the pool makes another in the background.
    pub(crate) fn take(&self) -> Option<PathBuf> {
        let taken = self.inner.state().ready.pop();
        if taken.is_some() {
            self.inner.wake.notify_one();
        }
        taken
    }

    /// How many are ready now.
    pub(crate) fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// Stops the filler (letting a preparation in flight finish) and removes every prepared
    /// directory, disk and all.
    pub(crate) async fn shutdown(&self) {
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
        let ready: Vec<PathBuf> = self.inner.state().ready.drain(..).collect();
        let core = Arc::clone(&self.inner.core);
        let _ = tokio::task::spawn_blocking(move || {
            for dir in ready {
                core.discard_dir(&dir);
            }
        })
        .await;
    }
}

impl Drop for PreparedDirs {
    fn drop(&mut self) {
        // The filler stops; what is prepared is left for the next driver's reclaim.
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
    }
}

/// One preparation at a time until the pool is full, then sleep until a take wakes it.
async fn fill(inner: Arc<Inner>) {
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
        let core = Arc::clone(&inner.core);
        let name = format!(
            "prep-{}",
            firkin_single_node::SandboxId::generate().as_str()
        );
        let prepared = tokio::task::spawn_blocking(move || core.prepare_dirs(&name)).await;
        match prepared {
            Ok(Ok(dir)) => {
                let mut state = inner.state();
                if state.closed {
                    drop(state);
                    inner.core.discard_dir(&dir);
                    return;
                }
                state.ready.push(dir);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "preparing a sandbox directory failed");
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = inner.wake.notified() => {}
                }
            }
            Err(error) => tracing::error!(%error, "a directory preparation panicked"),
        }
    }
}
