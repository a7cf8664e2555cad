//! Sandboxes started ahead of their create, so that a create only hands one out.
//!
//! A warm sandbox is a whole sandbox of its pool's template (`base`, or a template from an
//! image, whose start command then already runs and whose ready command has succeeded, as in
//! E2B's snapshots): directories, a cgroup holding
//! only the PID limit, a network slot with the default egress, and envd running as PID 1
//! and answering, under a pool name (`warm-<random>`) instead of a sandbox id. Handing one
//! out ([`crate::driver`]'s create) writes the request's limits into its cgroup, sets its
//! hostname and `/etc/hosts` to the sandbox id, sets the slot's egress, and checks that envd
//! still answers; no process but envd has run in it before. A cold create does the whole
//! launch instead.
//!
//! The pool's size follows demand between a floor and a ceiling: every create that finds
//! the pool empty raises the target by one (a burst of 20 creates leaves 20 ready for the
//! next), and after `warm_pool_idle` (a minute) without such a miss the target steps back
//! down to the floor, tearing down what is then surplus. The filler starts up to one
//! sandbox per CPU at once (one while creates are in flight), and none while the host's
//! `MemAvailable` is under `warm_pool_min_available_memory` (the daemon's admission floor):
//! the pool never adds to a pressure that refuses creates. Its sandboxes are no user's: [`WarmPool::shutdown`] tears them down, and after a
//! crash the next driver's start-up reclaims them with any other leftover of its state
//! directory (their directories are there and no stored handle owns them).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use firkin_single_node::{Result, TemplateImage};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::cgroup::CgroupLimits;
use crate::driver::{Core, Started};

/// The first wait after a failed start; it doubles up to [`MAX_RETRY`] while starts fail.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// After `warm_pool_idle` without a miss the target steps down by one at most this often.
const SHRINK_STEP: Duration = Duration::from_secs(5);

/// Keeps between `floor` and `ceiling` warm sandboxes, as demand asks.
#[derive(Debug)]
pub(crate) struct WarmPool {
    inner: Arc<Inner>,
    filler: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    /// The template of its sandboxes (`None`: `base`).
    image: Option<TemplateImage>,
    floor: usize,
    ceiling: usize,
    /// Starts at once while no create is in flight: one per CPU (a start is mostly CPU work
    /// in the kernel). While creates run, one at a time, so that the pool does not take the
    /// CPUs from the creates a burst is waiting for.
    parallel: usize,
    /// Creates between their [`WarmPool::take`] and their [`WarmPool::refill`].
    creating: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    ready: VecDeque<Started>,
    target: usize,
    /// When a create last found the pool empty (or when the target last stepped down).
    last_miss: Instant,
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
    /// Starts filling a pool of `floor` to `ceiling` sandboxes of `image` (`None`: `base`)
    /// in the background (a ceiling below the floor is the floor). A floor of 0 is no pool
    /// at all, whatever the ceiling: every create starts its own sandbox. Needs a tokio
    /// runtime.
    pub(crate) fn start(
        core: Arc<Core>,
        image: Option<TemplateImage>,
        floor: usize,
        ceiling: usize,
    ) -> Self {
        let parallel = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let ceiling = if floor == 0 { 0 } else { ceiling.max(floor) };
        let inner = Arc::new(Inner {
            core,
            image,
            floor,
            ceiling,
            parallel,
            creating: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(State {
                ready: VecDeque::new(),
                target: floor,
                last_miss: Instant::now(),
                closed: false,
            }),
            wake: Notify::new(),
        });
        let filler = (ceiling > 0).then(|| tokio::spawn(fill(Arc::clone(&inner))));
        Self {
            inner,
            filler: Mutex::new(filler),
        }
    }

    /// A warm sandbox, if one is ready; when none is, the pool's target grows by one (up to
    /// its ceiling). Every create calls this first and [`WarmPool::refill`] once it is done,
    /// whatever the outcome: between the two it counts as in flight, and the pool then starts
    /// one sandbox at a time (on this kind of host, 2 cores, a start running beside the
    /// hand-out doubled its latency).
    pub(crate) fn take(&self) -> Option<Started> {
        self.inner
            .creating
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut state = self.inner.state();
        let taken = state.ready.pop_front();
        if taken.is_none() && !state.closed {
            state.target = (state.target + 1).min(self.inner.ceiling);
            state.last_miss = Instant::now();
        }
        taken
    }

    /// A create that called [`WarmPool::take`] is done: the filler starts sandboxes until
    /// the pool is full again.
    pub(crate) fn refill(&self) {
        self.inner
            .creating
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    /// How many warm sandboxes are ready now.
    pub(crate) fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// How many the pool aims to keep now (between its floor and ceiling).
    pub(crate) fn target(&self) -> usize {
        self.inner.state().target
    }

    /// Stops the filler (letting starts in flight finish) and tears every warm sandbox down.
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

/// What the filler should do next.
enum Next {
    /// Start one more sandbox.
    Start,
    /// Tear down a surplus sandbox (the target stepped down).
    Shrink(Box<Started>),
    /// Wait for a start to finish, a wake-up or the next shrink check.
    Wait,
    /// The host is short of memory: start nothing for a while.
    Short,
    /// The pool is closed.
    Close,
}

/// Whether the host's `MemAvailable` is under the pool's floor (never when it has none, or
/// when it cannot be read).
fn memory_short(inner: &Inner) -> bool {
    let floor = inner.core.config.warm_pool_min_available_memory;
    floor > 0
        && firkin_single_node::PressureSource::read(&firkin_single_node::HostPressure::new())
            .is_ok_and(|reading| reading.memory_available_bytes < floor)
}

fn next(inner: &Inner, starting: usize, backing_off: bool) -> Next {
    let mut state = inner.state();
    if state.closed {
        return Next::Close;
    }
    let idle = inner.core.config.warm_pool_idle;
    if state.target > inner.floor && state.last_miss.elapsed() >= idle {
        state.target -= 1;
        // The next step comes one step later, unless a miss comes first.
        state.last_miss = Instant::now()
            .checked_sub(idle.saturating_sub(SHRINK_STEP.min(idle)))
            .unwrap_or_else(Instant::now);
    }
    if state.ready.len() > state.target {
        return state
            .ready
            .pop_back()
            .map_or(Next::Wait, |surplus| Next::Shrink(Box::new(surplus)));
    }
    let parallel = if inner.creating.load(std::sync::atomic::Ordering::SeqCst) > 0 {
        1
    } else {
        inner.parallel
    };
    if !backing_off && starting < parallel && state.ready.len() + starting < state.target {
        drop(state);
        return if memory_short(inner) {
            Next::Short
        } else {
            Next::Start
        };
    }
    Next::Wait
}

/// Starts sandboxes, up to `parallel` at once, until the pool holds its target; shrinks it
/// when demand has gone; backs off while starts fail.
async fn fill(inner: Arc<Inner>) {
    let limits = CgroupLimits {
        pids_max: Some(inner.core.config.pids_max),
        ..CgroupLimits::default()
    };
    let internet = inner.core.config.net.default_internet_access;
    let mut starting: JoinSet<Result<Started>> = JoinSet::new();
    let mut retry = FIRST_RETRY;
    let mut retry_at: Option<Instant> = None;
    loop {
        let backing_off = retry_at.is_some_and(|at| Instant::now() < at);
        let next = next(&inner, starting.len(), backing_off);
        let backing_off = backing_off || matches!(next, Next::Short);
        match next {
            Next::Start => {
                let (core, image) = (Arc::clone(&inner.core), inner.image.clone());
                starting.spawn(async move {
                    core.start(&warm_name(), None, &limits, internet, image.as_ref())
                        .await
                });
                continue;
            }
            Next::Shrink(surplus) => {
                if let Err(error) = inner.core.teardown(&surplus.handle).await {
                    tracing::warn!(%error, "tearing down a surplus warm sandbox");
                }
                continue;
            }
            Next::Close => break,
            Next::Short => {
                tracing::debug!("the host is short of memory: the warm pool waits");
                retry_at = Some(Instant::now() + FIRST_RETRY);
            }
            Next::Wait => {}
        }
        let check = SHRINK_STEP.min(inner.core.config.warm_pool_idle);
        let wait_until = retry_at
            .filter(|_| backing_off)
            .unwrap_or_else(|| Instant::now() + check);
        tokio::select! {
            Some(joined) = starting.join_next(), if !starting.is_empty() => {
                match joined {
                    Ok(Ok(started)) => {
                        retry = FIRST_RETRY;
                        retry_at = None;
                        inner.state().ready.push_back(started);
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, retry_in = ?retry, "starting a warm sandbox failed");
                        retry_at = Some(Instant::now() + retry);
                        retry = (retry * 2).min(MAX_RETRY);
                    }
                    Err(error) => tracing::error!(%error, "a warm sandbox start panicked"),
                }
            }
            () = inner.wake.notified() => {}
            () = tokio::time::sleep_until(wait_until) => {}
        }
    }
    // Closed: starts in flight finish and are torn down, not kept.
    while let Some(joined) = starting.join_next().await {
        if let Ok(Ok(started)) = joined
            && let Err(error) = inner.core.teardown(&started.handle).await
        {
            tracing::warn!(%error, "tearing down a warm sandbox after close");
        }
    }
}
