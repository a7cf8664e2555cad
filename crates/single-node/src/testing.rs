//! An in-memory [`RuntimeDriver`] for testing code above the driver (the backend, the E2B
//! routes, an embedding harness) without a kernel. It builds nothing; it keeps a table of the
//! sandboxes it "runs", can be told to fail any operation, and counts what it saw.
//!
//! Not for production: no sandbox it reports exists anywhere.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::driver::RuntimeDriver;
use crate::error::{Error, Result};
use crate::model::{
    RuntimeCreatedSandbox, RuntimeHandle, RuntimeSnapshotRef, SingleNodeCreateRequest,
    SnapshotRecord,
};
use crate::ports::PortRegistry;

/// Operations of [`FakeDriver`] that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// `create`.
    Create,
    /// `delete`.
    Delete,
    /// `adopt`.
    Adopt,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `snapshot`.
    Snapshot,
    /// `restore`.
    Restore,
}

/// Calls of one [`FakeDriver`] operation held inside the driver until the test lets them
/// go: the way to force an interleaving ("A is inside the driver, now start B") without
/// sleeping and hoping.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    /// How many more calls to catch.
    to_hold: Mutex<usize>,
    /// How many calls have been caught so far.
    held: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::Semaphore,
}

impl Gate {
    fn new(calls: usize) -> Self {
        Self {
            inner: Arc::new(GateInner {
                to_hold: Mutex::new(calls),
                held: tokio::sync::watch::Sender::new(0),
                release: tokio::sync::Semaphore::new(0),
            }),
        }
    }

    /// Waits until `calls` calls in all have been caught (and so are inside the driver).
    pub async fn held(&self, calls: usize) {
        let mut held = self.inner.held.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = held.wait_for(|&count| count >= calls).await;
    }

    /// Lets `calls` held (or yet to be held) calls go on.
    pub fn release(&self, calls: usize) {
        self.inner.release.add_permits(calls);
    }

    async fn pass(&self) {
        {
            let mut to_hold = self
                .inner
                .to_hold
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *to_hold == 0 {
                return;
            }
            *to_hold -= 1;
        }
        self.inner.held.send_modify(|count| *count += 1);
        if let Ok(permit) = self.inner.release.acquire().await {
            permit.forget();
        }
    }
}

/// The fake driver. Cloning shares its table, so a test can drop a backend, keep the driver
/// (the "sandboxes" survive, as real ones survive a daemon restart) and build a new backend.
#[derive(Clone, Debug, Default)]
pub struct FakeDriver {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    table: Mutex<Table>,
    failures: Mutex<HashMap<FakeOp, usize>>,
    delay: Mutex<Option<Duration>>,
    gates: Mutex<HashMap<FakeOp, Gate>>,
    live_high_water: AtomicUsize,
    creates: AtomicUsize,
    deletes: AtomicUsize,
}

#[derive(Debug, Default)]
struct Table {
    live: HashMap<String, FakeSandbox>,
    snapshots: HashSet<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct FakeSandbox {
    paused: bool,
    oom_kills: u64,
}

impl FakeDriver {
    /// A driver running nothing.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Make the next `times` calls of `op` fail with [`Error::RuntimeLaunchFailed`].
    pub fn fail(&self, op: FakeOp, times: usize) {
        self.lock_failures().insert(op, times);
    }

    /// Sleep this long inside every operation (to widen race windows in tests).
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self
            .inner
            .delay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = delay;
    }

    /// Hold the next `calls` calls of `op` inside the driver (after any delay, before any
    /// injected failure) until the returned gate releases them; later calls pass. Replaces
    /// an earlier gate of `op`.
    pub fn gate(&self, op: FakeOp, calls: usize) -> Gate {
        let gate = Gate::new(calls);
        self.inner
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(op, gate.clone());
        gate
    }

    /// Ids of the sandboxes it runs, sorted.
    #[must_use]
    pub fn live(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().live.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Whether `id` runs and is paused.
    #[must_use]
    pub fn is_paused(&self, id: &str) -> bool {
        self.table()
            .live
            .get(id)
            .is_some_and(|sandbox| sandbox.paused)
    }

    /// Pretend the kernel's OOM killer has taken `total` processes of a live sandbox so far.
    pub fn set_oom_kills(&self, id: &str, total: u64) {
        if let Some(sandbox) = self.table().live.get_mut(id) {
            sandbox.oom_kills = total;
        }
    }

    /// Make a sandbox vanish behind the backend's back (as if it crashed).
    pub fn vanish(&self, id: &str) {
        self.table().live.remove(id);
    }

    /// Pretend a sandbox runs that the backend never created (a leftover).
    pub fn insert_live(&self, id: &str) {
        self.table()
            .live
            .insert(id.to_owned(), FakeSandbox::default());
    }

    /// Most sandboxes that ran at once.
    #[must_use]
    pub fn live_high_water(&self) -> usize {
        self.inner.live_high_water.load(Ordering::SeqCst)
    }

    /// Successful creates and restores so far.
    #[must_use]
    pub fn creates(&self) -> usize {
        self.inner.creates.load(Ordering::SeqCst)
    }

    /// Successful deletes so far.
    #[must_use]
    pub fn deletes(&self) -> usize {
        self.inner.deletes.load(Ordering::SeqCst)
    }

    /// Ids of the snapshots it holds.
    #[must_use]
    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().snapshots.iter().cloned().collect();
        ids.sort();
        ids
    }

    async fn enter(&self, op: FakeOp, id: &str) -> Result<()> {
        let delay = *self
            .inner
            .delay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match delay {
            Some(delay) => tokio::time::sleep(delay).await,
            None => tokio::task::yield_now().await,
        }
        let gate = self
            .inner
            .gates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&op)
            .cloned();
        if let Some(gate) = gate {
            gate.pass().await;
        }
        let mut failures = self.lock_failures();
        if let Some(left) = failures.get_mut(&op)
            && *left > 0
        {
            *left -= 1;
            return Err(Error::RuntimeLaunchFailed(format!(
                "fake driver told to fail {op:?} ({id})"
            )));
        }
        Ok(())
    }

    fn start(&self, id: &str, ports: &PortRegistry) -> Result<RuntimeCreatedSandbox> {
        let mut table = self.table();
        if table.live.contains_key(id) {
            return Err(Error::RuntimeLaunchFailed(format!(
                "fake driver already runs {id}: the backend created it twice"
            )));
        }
        table.live.insert(id.to_owned(), FakeSandbox::default());
        self.inner
            .live_high_water
            .fetch_max(table.live.len(), Ordering::SeqCst);
        self.inner.creates.fetch_add(1, Ordering::SeqCst);
        ports.route_all_ports(id, IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(RuntimeCreatedSandbox {
            client_id: "fake".to_owned(),
            envd_access_token: Some(format!("token-{id}")),
            traffic_access_token: None,
            envd_version: Some("0.0.0-fake".to_owned()),
            runtime_handle: Some(RuntimeHandle(format!("fake:{id}"))),
            phases: Vec::new(),
        })
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let mut table = self.table();
        let sandbox = table
            .live
            .get_mut(id)
            .ok_or_else(|| Error::SandboxNotFound(id.to_owned()))?;
        if sandbox.paused == paused {
            return Err(Error::RuntimeLaunchFailed(format!(
                "fake driver: {id} is already {}: the backend broke its state machine",
                if paused { "paused" } else { "running" }
            )));
        }
        sandbox.paused = paused;
        Ok(())
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.inner
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_failures(&self) -> MutexGuard<'_, HashMap<FakeOp, usize>> {
        self.inner
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl RuntimeDriver for FakeDriver {
    fn name(&self) -> &str {
        "fake"
    }

    async fn create(
        &self,
        request: &SingleNodeCreateRequest,
        ports: &PortRegistry,
    ) -> Result<RuntimeCreatedSandbox> {
        let id = request.sandbox_id().as_str();
        self.enter(FakeOp::Create, id).await?;
        if request.template_id() == "missing" {
            return Err(Error::SnapshotNotFound(format!(
                "template {}",
                request.template_id()
            )));
        }
        self.start(id, ports)
    }

    async fn delete(&self, sandbox_id: &str, _handle: Option<&RuntimeHandle>) -> Result<()> {
        self.enter(FakeOp::Delete, sandbox_id).await?;
        if self.table().live.remove(sandbox_id).is_some() {
            self.inner.deletes.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    async fn adopt(
        &self,
        sandbox_id: &str,
        _handle: Option<&RuntimeHandle>,
        ports: &PortRegistry,
    ) -> Result<bool> {
        self.enter(FakeOp::Adopt, sandbox_id).await?;
        let alive = self.table().live.contains_key(sandbox_id);
        if alive {
            ports.route_all_ports(sandbox_id, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Ok(alive)
    }

    async fn pause(&self, sandbox_id: &str) -> Result<()> {
        self.enter(FakeOp::Pause, sandbox_id).await?;
        self.set_paused(sandbox_id, true)
    }

    async fn resume(&self, sandbox_id: &str) -> Result<()> {
        self.enter(FakeOp::Resume, sandbox_id).await?;
        self.set_paused(sandbox_id, false)
    }

    async fn oom_kills(&self, sandbox_id: &str) -> Result<Option<u64>> {
        self.table()
            .live
            .get(sandbox_id)
            .map(|sandbox| Some(sandbox.oom_kills))
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))
    }

    async fn snapshot(&self, sandbox_id: &str, snapshot_id: &str) -> Result<RuntimeSnapshotRef> {
        self.enter(FakeOp::Snapshot, sandbox_id).await?;
        if !self.table().live.contains_key(sandbox_id) {
            return Err(Error::SandboxNotFound(sandbox_id.to_owned()));
        }
        self.table().snapshots.insert(snapshot_id.to_owned());
        Ok(RuntimeSnapshotRef {
            snapshot_id: snapshot_id.to_owned(),
            location: None,
            runtime_data: Some(format!("fake-snapshot-of:{sandbox_id}")),
        })
    }

    async fn restore(
        &self,
        request: &SingleNodeCreateRequest,
        snapshot: &SnapshotRecord,
        ports: &PortRegistry,
    ) -> Result<RuntimeCreatedSandbox> {
        let id = request.sandbox_id().as_str();
        self.enter(FakeOp::Restore, id).await?;
        if !self.table().snapshots.contains(&snapshot.snapshot_id) {
            return Err(Error::SnapshotNotFound(snapshot.snapshot_id.clone()));
        }
        self.start(id, ports)
    }

    async fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        self.table().snapshots.remove(&snapshot.snapshot_id);
        Ok(())
    }
}
