//! firkin-single-node: the one-host sandbox runtime, without the substrate.
//!
//! It owns the public model ([`SingleNodeCreateRequest`], [`SandboxSession`] and its state
//! machine, [`SnapshotRecord`], ...), the host configuration ([`SingleNodeConfig`]),
//! admission ([`SingleNodeScheduler`], over-committing caps and watching the host's memory
//! through a [`PressureSource`]), the disk-floor guard ([`DiskPressureGuard`]), durable
//! state in SQLite ([`StateStore`], [`DurableStateStore`], [`LogStore`]), port routes
//! ([`PortRegistry`]), the [`SingleNodeBackend`] facade with its deadline reaper, and the
//! [`RuntimeDriver`] trait that a substrate (the Linux namespaces driver in `firkin-linux`)
//! implements.
//!
//! It must not own syscalls beyond `statvfs`, mounts, HTTP routes or wire formats: those
//! belong to the driver crates and to `firkin-e2b`.
//!
//! ```no_run
//! # async fn demo(driver: std::sync::Arc<dyn firkin_single_node::RuntimeDriver>) -> firkin_single_node::Result<()> {
//! use firkin_single_node::{SingleNodeBackend, SingleNodeConfig, SingleNodeCreateRequest};
//!
//! let config = SingleNodeConfig::new("/var/lib/firkin");
//! let resources = config.default_sandbox_resources;
//! let backend = SingleNodeBackend::open(config, driver).await?;
//! let _reaper = backend.spawn_reaper();
//! let sandbox = backend.create(SingleNodeCreateRequest::new("base", resources)).await?;
//! backend.delete(sandbox.sandbox_id()).await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

mod admission;
mod backend;
mod clock;
mod config;
mod disk_guard;
mod driver;
mod error;
mod id;
mod model;
mod phases;
mod ports;
mod pressure;
mod reaper;
mod state;
mod template;
pub mod testing;

pub use admission::{CapacityReport, Holding, Refusal, RefusalReason, SingleNodeScheduler};
pub use backend::{
    ListOrder, ListPage, ListQuery, Reconciliation, SingleNodeBackend, SingleNodeBackendBuilder,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{SingleNodeConfig, SingleNodeSchedulerConfig};
pub use disk_guard::{CachedDiskProbe, DiskPressureGuard, DiskProbe, DiskSpace, StatvfsDiskProbe};
pub use driver::RuntimeDriver;
pub use error::{Error, ErrorKind, Result};
pub use id::{GENERATED_ID_LEN, MAX_ID_LEN, SandboxId};
pub use model::{
    CommandOutput, CommandRequest, LogEvent, LogLevel, PortRoute, RuntimeCreatedSandbox,
    RuntimeHandle, RuntimeMetrics, RuntimePools, RuntimeSnapshotRef, SandboxResources,
    SandboxSession, SandboxState, SingleNodeCreateRequest, SnapshotRecord, TemplateMetadata,
    TimeoutAction,
};
pub use phases::{PHASE_BUCKETS, PhaseHistogram, PhaseTimings};
pub use ports::PortRegistry;
pub use pressure::{FixedPressure, HostPressure, PressureReading, PressureSource};
pub use reaper::{OOM_CHECK_INTERVAL, Reaped, ReaperHandle};
pub use state::{
    ActiveSessionRecord, DurableStateStore, ImportSummary, LogStore, SeedState, StateStore,
    StoredState, import_seed_dir,
};
pub use template::{BASE_TEMPLATE, TemplateImage, TemplateSource};
