//! `SingleNodeBackend`: the one entry path to sandboxes on this host.
//!
//! Every operation goes through the same gates: ids and inputs validated, the disk floor
//! (for work that consumes disk), admission, the state machine, the driver, and the durable
//! state, with a rollback for each failure so that a reservation exists exactly while a record
//! does. Operations on one sandbox are serialised by a per-sandbox lock; different sandboxes
//! proceed in parallel.

mod lifecycle;
mod oom;
mod query;
mod reconcile;
mod snapshot;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard};

pub use query::{ListOrder, ListPage, ListQuery};
pub use reconcile::Reconciliation;

use crate::admission::SingleNodeScheduler;
use crate::clock::{Clock, SystemClock};
use crate::config::SingleNodeConfig;
use crate::disk_guard::DiskPressureGuard;
use crate::driver::RuntimeDriver;
use crate::error::{Error, Result};
use crate::model::{LogEvent, LogLevel};
use crate::phases::{PhaseHistogram, PhaseTimings};
use crate::ports::PortRegistry;
use crate::pressure::{HostPressure, PressureSource};
use crate::state::{LogStore, StateStore};
use crate::template::TemplateSource;

/// The backend facade. Cloning shares it.
#[derive(Clone, Debug)]
pub struct SingleNodeBackend {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    config: SingleNodeConfig,
    scheduler: SingleNodeScheduler,
    driver: Arc<dyn RuntimeDriver>,
    state: StateStore,
    logs: LogStore,
    ports: PortRegistry,
    disk: DiskPressureGuard,
    clock: Arc<dyn Clock>,
    sandbox_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Woken whenever a deadline moves earlier, so the reaper need not wait a full tick.
    pub(crate) deadlines_changed: Notify,
    /// What the startup reconciliation did.
    reconciliation: Mutex<Reconciliation>,
    /// Per-phase timings of successful creates.
    pub(crate) create_phases: PhaseTimings,
    /// OOM kills last seen per live sandbox, and their total since the start.
    oom_kills_seen: Mutex<HashMap<String, u64>>,
    oom_kills_total: std::sync::atomic::AtomicU64,
    /// Where template names other than `base` are resolved.
    templates: Option<Arc<dyn TemplateSource>>,
}

/// Builds a [`SingleNodeBackend`]; every part not given comes from the configuration.
#[derive(Debug)]
pub struct SingleNodeBackendBuilder {
    config: SingleNodeConfig,
    driver: Arc<dyn RuntimeDriver>,
    state: Option<StateStore>,
    disk: Option<DiskPressureGuard>,
    clock: Option<Arc<dyn Clock>>,
    ports: Option<PortRegistry>,
    pressure: Option<Arc<dyn PressureSource>>,
    templates: Option<Arc<dyn TemplateSource>>,
}

impl SingleNodeBackendBuilder {
    /// Use `state` instead of opening the durable store under the configured root.
    #[must_use]
    pub fn state(mut self, state: StateStore) -> Self {
        self.state = Some(state);
        self
    }

    /// Use `guard` instead of `statvfs` at the state root.
    #[must_use]
    pub fn disk_guard(mut self, guard: DiskPressureGuard) -> Self {
        self.disk = Some(guard);
        self
    }

    /// Use `clock` instead of the system clock.
    #[must_use]
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Read the host's memory pressure from `pressure` instead of `/proc`.
    #[must_use]
    pub fn pressure(mut self, pressure: Arc<dyn PressureSource>) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// Resolve template names other than `base` in `templates` (without one, the driver
    /// gets the name as it came and decides).
    #[must_use]
    pub fn templates(mut self, templates: Arc<dyn TemplateSource>) -> Self {
        self.templates = Some(templates);
        self
    }

    /// Share `ports` with a proxy.
    #[must_use]
    pub fn ports(mut self, ports: PortRegistry) -> Self {
        self.ports = Some(ports);
        self
    }

    /// Validate the configuration, open the state, and reconcile it with the driver: re-admit
    /// and re-adopt live sandboxes, reclaim half-made ones, forget vanished ones, act on
    /// deadlines that passed while no daemon ran, and clean orphan snapshot artifacts.
    ///
    /// # Errors
    ///
    /// An invalid configuration, or state that cannot be opened or written.
    pub async fn build(self) -> Result<SingleNodeBackend> {
        self.config.validate()?;
        let state = match self.state {
            Some(state) => state,
            None => StateStore::open(self.config.root())?,
        };
        let logs = LogStore::new(
            state.durable().clone(),
            self.config.max_log_events_per_sandbox,
        );
        let backend = SingleNodeBackend {
            shared: Arc::new(Shared {
                scheduler: SingleNodeScheduler::new(
                    self.config.scheduler,
                    self.pressure
                        .unwrap_or_else(|| Arc::new(HostPressure::new())),
                ),
                disk: self
                    .disk
                    .unwrap_or_else(|| DiskPressureGuard::from_config(&self.config)),
                config: self.config,
                driver: self.driver,
                state,
                logs,
                ports: self.ports.unwrap_or_default(),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                sandbox_locks: Mutex::new(HashMap::new()),
                deadlines_changed: Notify::new(),
                reconciliation: Mutex::new(Reconciliation::default()),
                create_phases: PhaseTimings::default(),
                oom_kills_seen: Mutex::new(HashMap::new()),
                oom_kills_total: std::sync::atomic::AtomicU64::new(0),
                templates: self.templates,
            }),
        };
        let report = backend.reconcile_on_start().await?;
        *backend
            .shared
            .reconciliation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = report;
        Ok(backend)
    }
}

impl SingleNodeBackend {
    /// A builder over `config` and `driver`.
    #[must_use]
    pub fn builder(
        config: SingleNodeConfig,
        driver: Arc<dyn RuntimeDriver>,
    ) -> SingleNodeBackendBuilder {
        SingleNodeBackendBuilder {
            config,
            driver,
            state: None,
            disk: None,
            clock: None,
            ports: None,
            pressure: None,
            templates: None,
        }
    }

    /// The backend for `config` and `driver` with durable state under the configured root.
    ///
    /// # Errors
    ///
    /// As [`SingleNodeBackendBuilder::build`].
    pub async fn open(config: SingleNodeConfig, driver: Arc<dyn RuntimeDriver>) -> Result<Self> {
        Self::builder(config, driver).build().await
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SingleNodeConfig {
        &self.shared.config
    }

    /// The admission ledger.
    #[must_use]
    pub fn scheduler(&self) -> &SingleNodeScheduler {
        &self.shared.scheduler
    }

    /// The state store.
    #[must_use]
    pub fn state(&self) -> &StateStore {
        &self.shared.state
    }

    /// The disk-floor guard of the state root (what refuses creates, and template builds,
    /// when the disk is nearly full).
    #[must_use]
    pub fn disk_guard(&self) -> &DiskPressureGuard {
        &self.shared.disk
    }

    /// The log store.
    #[must_use]
    pub fn logs(&self) -> &LogStore {
        &self.shared.logs
    }

    /// The port routes the driver registers and a proxy reads.
    #[must_use]
    pub fn ports(&self) -> &PortRegistry {
        &self.shared.ports
    }

    /// What the startup reconciliation found and did (for the daemon's start-up report).
    #[must_use]
    pub fn startup_reconciliation(&self) -> Reconciliation {
        self.shared
            .reconciliation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Per-phase timings of the successful creates so far, by phase: the backend's
    /// `admission` and `persist`, the driver's own phases, and `total`.
    #[must_use]
    pub fn create_phases(&self) -> std::collections::BTreeMap<String, PhaseHistogram> {
        self.shared.create_phases.snapshot()
    }

    /// The daemon is stopping: the driver releases its pools; sandboxes keep running.
    ///
    /// # Errors
    ///
    /// The driver's.
    pub async fn shutdown(&self) -> Result<()> {
        self.shared.driver.shutdown().await
    }

    /// The driver.
    #[must_use]
    pub fn driver(&self) -> &Arc<dyn RuntimeDriver> {
        &self.shared.driver
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.shared.clock.now_unix_ms()
    }

    /// `now + timeout`, or the configured default; refuses timeouts past the maximum.
    fn deadline_after(&self, timeout: Option<Duration>) -> Result<i64> {
        let timeout = timeout.unwrap_or_else(|| self.shared.config.default_timeout());
        let max = self.shared.config.max_timeout();
        if timeout > max {
            return Err(Error::InvalidRequest(format!(
                "timeout of {} s is longer than the maximum of {} s",
                timeout.as_secs(),
                max.as_secs()
            )));
        }
        let millis = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        Ok(self.now_ms().saturating_add(millis))
    }

    /// Hold the per-sandbox operation lock for `sandbox_id` until the guard drops.
    pub(crate) async fn lock_sandbox(&self, sandbox_id: &str) -> SandboxGuard {
        let lock = self
            .shared
            .sandbox_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(sandbox_id.to_owned())
            .or_default()
            .clone();
        let guard = Arc::clone(&lock).lock_owned().await;
        SandboxGuard {
            shared: Arc::clone(&self.shared),
            sandbox_id: sandbox_id.to_owned(),
            lock,
            guard: Some(guard),
        }
    }

    /// How many operations hold or await `sandbox_id`'s operation lock right now. Tests use
    /// it to force an interleaving ("B waits behind A") instead of sleeping and hoping.
    #[doc(hidden)]
    #[must_use]
    pub fn lock_users(&self, sandbox_id: &str) -> usize {
        self.shared
            .sandbox_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sandbox_id)
            // The map holds one reference; every holder and waiter holds another.
            .map_or(0, |lock| Arc::strong_count(lock) - 1)
    }

    /// Append a lifecycle event to a sandbox's log. Logging never fails an operation: a
    /// write failure is reported through `tracing` instead.
    fn log(&self, sandbox_id: &str, level: LogLevel, message: String) {
        let event = LogEvent {
            seq: 0,
            timestamp_unix_ms: self.now_ms(),
            level,
            source: "single-node".to_owned(),
            message,
        };
        if let Err(error) = self.shared.logs.record_event(sandbox_id, &event) {
            tracing::warn!(sandbox = sandbox_id, %error, "could not record sandbox log event");
        }
    }
}

/// The per-sandbox operation lock, held. On drop it also removes the lock's map entry when
/// nobody else holds or awaits that lock and the sandbox no longer exists: removing an entry
/// that others still wait on would let a later arrival take a fresh lock and run beside them.
pub(crate) struct SandboxGuard {
    shared: Arc<Shared>,
    sandbox_id: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for SandboxGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self
            .shared
            .sandbox_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let unused = locks.get(&self.sandbox_id).is_some_and(|entry| {
            // Two references: the map's and ours. Waiters hold clones, so they count too.
            Arc::ptr_eq(entry, &self.lock) && Arc::strong_count(entry) == 2
        });
        if unused && self.shared.state.get_active(&self.sandbox_id).is_none() {
            locks.remove(&self.sandbox_id);
        }
    }
}

impl std::fmt::Debug for SandboxGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxGuard")
            .field("sandbox_id", &self.sandbox_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
