//! The seam between the backend facade and a concrete substrate (Linux namespaces today, a
//! microVM later).

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::{
    CommandOutput, CommandRequest, RuntimeCreatedSandbox, RuntimeHandle, RuntimeMetrics,
    RuntimePools, RuntimeSnapshotRef, SingleNodeCreateRequest, SnapshotRecord,
};
use crate::ports::PortRegistry;

/// What the backend needs from a sandbox substrate.
///
/// The backend has already checked the disk floor, admitted the resources, validated ids and
/// checked the state machine before it calls a driver, and it serialises operations on one
/// sandbox: a driver never sees two concurrent calls for the same id. Drivers must make
/// `delete` idempotent (an unknown or already-gone sandbox is `Ok`), so that a retry after a
/// failure or a restart can always finish.
///
/// Optional capabilities default to [`Error::UnsupportedCapability`].
#[async_trait]
pub trait RuntimeDriver: Send + Sync + std::fmt::Debug + 'static {
    /// Short name for logs and errors (`linux-namespaces`, `fake`).
    fn name(&self) -> &str;

    /// Build and start a sandbox for `request`, register its routes in `ports`, and return
    /// once it answers. Unknown template ⇒ [`Error::SnapshotNotFound`] before anything is built.
    async fn create(
        &self,
        request: &SingleNodeCreateRequest,
        ports: &PortRegistry,
    ) -> Result<RuntimeCreatedSandbox>;

    /// Tear a sandbox down completely. Must succeed for an unknown or already-gone sandbox.
    async fn delete(&self, sandbox_id: &str, handle: Option<&RuntimeHandle>) -> Result<()>;

    /// After a daemon restart: find the sandbox again from its stored `handle`, re-register
    /// its routes, and say whether it is still alive. `false` makes the backend forget it.
    async fn adopt(
        &self,
        sandbox_id: &str,
        handle: Option<&RuntimeHandle>,
        ports: &PortRegistry,
    ) -> Result<bool>;

    /// Freeze a running sandbox (memory kept, no CPU).
    async fn pause(&self, sandbox_id: &str) -> Result<()> {
        Err(self.unsupported("pause", sandbox_id))
    }

    /// Thaw a paused sandbox.
    async fn resume(&self, sandbox_id: &str) -> Result<()> {
        Err(self.unsupported("resume", sandbox_id))
    }

    /// Capture a snapshot `snapshot_id` of a sandbox, which keeps its state.
    async fn snapshot(&self, sandbox_id: &str, snapshot_id: &str) -> Result<RuntimeSnapshotRef> {
        let _ = snapshot_id;
        Err(self.unsupported("snapshot", sandbox_id))
    }

    /// Start a new sandbox for `request` from `snapshot`.
    async fn restore(
        &self,
        request: &SingleNodeCreateRequest,
        snapshot: &SnapshotRecord,
        ports: &PortRegistry,
    ) -> Result<RuntimeCreatedSandbox> {
        let _ = (snapshot, ports);
        Err(self.unsupported("restore", request.sandbox_id().as_str()))
    }

    /// Remove a snapshot's artifacts. Missing artifacts are not an error.
    async fn delete_snapshot(&self, snapshot: &SnapshotRecord) -> Result<()> {
        let _ = snapshot;
        Ok(())
    }

    /// Run a shell command to completion inside a sandbox.
    async fn run_command(
        &self,
        sandbox_id: &str,
        request: CommandRequest,
    ) -> Result<CommandOutput> {
        let _ = request;
        Err(self.unsupported("run_command", sandbox_id))
    }

    /// What a sandbox uses now: CPU time since it started, memory, disk.
    async fn metrics(&self, sandbox_id: &str) -> Result<RuntimeMetrics> {
        Err(self.unsupported("report metrics", sandbox_id))
    }

    /// How many of a sandbox's processes the kernel's OOM killer has killed since it
    /// started; `None` when the driver cannot tell.
    async fn oom_kills(&self, sandbox_id: &str) -> Result<Option<u64>> {
        let _ = sandbox_id;
        Ok(None)
    }

    /// The directories holding what a live sandbox wrote (overlay uppers, with overlay
    /// whiteouts), each with where it is mounted inside the sandbox (`""` for the root, `usr`
    /// for a `/usr` of its own), for builds that keep them as a layer; read them only while
    /// the sandbox is paused. Empty when the driver has none.
    fn writes_dirs(&self, _sandbox_id: &str) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
        Vec::new()
    }

    /// What the driver keeps ready for sandboxes to come (nothing, unless it pools).
    fn pools(&self) -> RuntimePools {
        RuntimePools::default()
    }

    /// The daemon is stopping: release what the driver keeps ready for future sandboxes
    /// (pools). Sandboxes keep running, to be re-adopted by the next daemon.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    /// The error the defaults return.
    fn unsupported(&self, operation: &str, sandbox_id: &str) -> Error {
        Error::UnsupportedCapability(format!(
            "the {} driver cannot {operation} (sandbox {sandbox_id})",
            self.name()
        ))
    }
}
