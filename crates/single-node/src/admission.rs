//! Admission: a ledger of the caps that admitted sandboxes hold, checked against the host
//! times its overcommit ratios, and the host's live memory pressure.
//!
//! Decisions are immediate (no queue). A sandbox id holds at most one reservation: admitting
//! an id that already holds one is a [`Error::Conflict`], never a silent re-admit, so a
//! failed duplicate create can never release the first sandbox's reservation. A paused
//! sandbox keeps its memory cap in the ledger (its memory stays in use) but not its vCPUs
//! (a frozen cgroup runs nothing); resuming takes them back, and can be refused for them. A
//! failed sandbox (its teardown failed) keeps its memory cap until a delete finishes the
//! teardown, and no vCPUs: what is left of it is being torn down, not run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::SingleNodeSchedulerConfig;
use crate::error::{Error, Result};
use crate::model::SandboxResources;
use crate::pressure::{PressureReading, PressureSource};

const MIB: u64 = 1 << 20;

/// Why a sandbox was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The sandbox count limit.
    MaxSandboxes,
    /// The vCPU caps would pass the host's CPUs times the CPU overcommit.
    Cpu,
    /// The memory caps would pass the host's memory times the memory overcommit.
    Memory,
    /// The host is short of memory right now (`MemAvailable` floor or PSI).
    MemoryPressure,
    /// The state directory's file system is below its free space floor.
    Disk,
}

impl RefusalReason {
    /// Every reason, in a fixed order (for metrics).
    pub const ALL: [Self; 5] = [
        Self::MaxSandboxes,
        Self::Cpu,
        Self::Memory,
        Self::MemoryPressure,
        Self::Disk,
    ];

    /// The reason's name in metrics and reports.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MaxSandboxes => "max_sandboxes",
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::MemoryPressure => "memory_pressure",
            Self::Disk => "disk",
        }
    }
}

/// The last refusal: why, the message the client got, and when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// Why.
    pub reason: RefusalReason,
    /// The error message returned to the client.
    pub message: String,
    /// When, in Unix milliseconds.
    pub at_unix_ms: u64,
}

/// What admission holds now, for `/metrics` and `firkin doctor`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CapacityReport {
    /// The limits.
    pub config: SingleNodeSchedulerConfig,
    /// The caps admitted sandboxes may add up to ([`SingleNodeSchedulerConfig::capacity`]).
    pub capacity: SandboxResources,
    /// Sandboxes holding a reservation (running, paused, being created, failed).
    pub admitted: usize,
    /// Of which paused: they hold memory but no vCPUs.
    pub paused: usize,
    /// Of which failed (a teardown to finish): they hold memory but no vCPUs.
    pub failed: usize,
    /// vCPU caps of running sandboxes and memory caps of all, in the ledger.
    pub reserved: SandboxResources,
    /// The host's memory now (`None` when it could not be read).
    pub pressure: Option<PressureReading>,
    /// Refusals since the daemon started, per reason (in [`RefusalReason::ALL`]'s order).
    pub refusals: Vec<(RefusalReason, u64)>,
    /// The last refusal.
    pub last_refusal: Option<Refusal>,
}

/// The admission ledger.
#[derive(Debug)]
pub struct SingleNodeScheduler {
    config: SingleNodeSchedulerConfig,
    pressure: Arc<dyn PressureSource>,
    admitted: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    reservations: HashMap<String, Reservation>,
    running_vcpus: u64,
    memory_bytes: u64,
    paused: usize,
    failed: usize,
    refusals: HashMap<RefusalReason, u64>,
    last_refusal: Option<Refusal>,
}

/// What an admitted sandbox is doing, as far as its vCPUs go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holding {
    /// Running (or being created or deleted): it holds its vCPUs.
    Running,
    /// Paused: frozen, no vCPUs.
    Paused,
    /// Failed: a teardown to finish, no vCPUs.
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Reservation {
    resources: SandboxResources,
    holding: Holding,
}

impl Ledger {
    fn add(&mut self, id: &str, reservation: Reservation) {
        match reservation.holding {
            Holding::Running => self.running_vcpus += u64::from(reservation.resources.vcpus),
            Holding::Paused => self.paused += 1,
            Holding::Failed => self.failed += 1,
        }
        self.memory_bytes += reservation.resources.memory_bytes;
        self.reservations.insert(id.to_owned(), reservation);
    }

    fn remove(&mut self, id: &str) -> Option<Reservation> {
        let reservation = self.reservations.remove(id)?;
        match reservation.holding {
            Holding::Running => self.running_vcpus -= u64::from(reservation.resources.vcpus),
            Holding::Paused => self.paused -= 1,
            Holding::Failed => self.failed -= 1,
        }
        self.memory_bytes -= reservation.resources.memory_bytes;
        Some(reservation)
    }

    fn refuse(&mut self, reason: RefusalReason, message: String) -> Error {
        *self.refusals.entry(reason).or_default() += 1;
        let at_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        tracing::warn!(reason = reason.as_str(), "{message}");
        self.last_refusal = Some(Refusal {
            reason,
            message: message.clone(),
            at_unix_ms,
        });
        Error::CapacityRejected(message)
    }
}

impl SingleNodeScheduler {
    /// An empty ledger with `config`'s limits, reading the host's pressure from `pressure`.
    #[must_use]
    pub fn new(config: SingleNodeSchedulerConfig, pressure: Arc<dyn PressureSource>) -> Self {
        Self {
            config,
            pressure,
            admitted: Mutex::new(Ledger::default()),
        }
    }

    /// The limits.
    #[must_use]
    pub fn config(&self) -> SingleNodeSchedulerConfig {
        self.config
    }

    /// Reserve `resources` for `sandbox_id`.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when the id already holds a reservation;
    /// [`Error::CapacityRejected`] when the sandbox count, the vCPU caps or the memory caps
    /// would pass the limits, or the host is short of memory now (checked in that order, the
    /// message giving what was asked, what is left and the setting that decides).
    pub fn admit(&self, sandbox_id: &str, resources: SandboxResources) -> Result<()> {
        // Read before taking the lock: two small /proc files, never under the ledger's lock.
        let reading = self.read_pressure();
        let mut ledger = self.lock();
        if ledger.reservations.contains_key(sandbox_id) {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox_id} is already admitted"
            )));
        }
        if let Some((reason, message)) = self.refusal(&ledger, resources, reading.as_ref()) {
            return Err(ledger.refuse(reason, format!("sandbox {sandbox_id} refused: {message}")));
        }
        ledger.add(
            sandbox_id,
            Reservation {
                resources,
                holding: Holding::Running,
            },
        );
        Ok(())
    }

    fn refusal(
        &self,
        ledger: &Ledger,
        resources: SandboxResources,
        reading: Option<&PressureReading>,
    ) -> Option<(RefusalReason, String)> {
        let limits = &self.config;
        if ledger.reservations.len() >= limits.max_sandboxes {
            return Some((
                RefusalReason::MaxSandboxes,
                format!(
                    "the limit of {} sandboxes is reached (setting max-sandboxes)",
                    limits.max_sandboxes
                ),
            ));
        }
        if let Some(message) = self.cpu_shortfall(ledger, resources.vcpus) {
            return Some((RefusalReason::Cpu, message));
        }
        let capacity = limits.capacity();
        let available = capacity.memory_bytes.saturating_sub(ledger.memory_bytes);
        if resources.memory_bytes > available {
            return Some((
                RefusalReason::Memory,
                format!(
                    "memory requested {} MiB, available {} MiB of {} MiB ({} MiB of host \
                     memory × memory-overcommit {})",
                    resources.memory_bytes / MIB,
                    available / MIB,
                    capacity.memory_bytes / MIB,
                    limits.host.memory_bytes / MIB,
                    limits.memory_overcommit
                ),
            ));
        }
        limits
            .pressure_refusal(reading?)
            .map(|message| (RefusalReason::MemoryPressure, message))
    }

    /// Why `vcpus` more would not fit, if they would not.
    fn cpu_shortfall(&self, ledger: &Ledger, vcpus: u32) -> Option<String> {
        let capacity = u64::from(self.config.capacity().vcpus);
        let available = capacity.saturating_sub(ledger.running_vcpus);
        (u64::from(vcpus) > available).then(|| {
            format!(
                "CPU requested {vcpus}, available {available} of {capacity} vCPUs ({} host CPUs \
                 × cpu-overcommit {})",
                self.config.host.vcpus, self.config.cpu_overcommit
            )
        })
    }

    fn read_pressure(&self) -> Option<PressureReading> {
        match self.pressure.read() {
            Ok(reading) => Some(reading),
            Err(error) => {
                tracing::debug!(%error, "no memory pressure reading");
                None
            }
        }
    }

    /// Record the reservation of a sandbox that already exists (found again after a restart),
    /// even past the limits: it is running whatever the ledger says, and new sandboxes are
    /// refused until enough capacity is free again. Idempotent.
    pub fn admit_existing(&self, sandbox_id: &str, resources: SandboxResources, holding: Holding) {
        let mut ledger = self.lock();
        if ledger.reservations.contains_key(sandbox_id) {
            return;
        }
        if ledger.reservations.len() >= self.config.max_sandboxes {
            tracing::warn!(sandbox = sandbox_id, "re-admitted past the sandbox limit");
        }
        ledger.add(sandbox_id, Reservation { resources, holding });
    }

    /// A sandbox was frozen: it gives back its vCPUs and keeps its memory. Harmless for an
    /// unknown or already paused id.
    pub fn pause(&self, sandbox_id: &str) {
        self.set_holding(sandbox_id, Holding::Paused);
    }

    /// A sandbox failed (a teardown to finish): it gives back its vCPUs and keeps its memory
    /// until a delete releases it. Harmless for an unknown id.
    pub fn fail(&self, sandbox_id: &str) {
        self.set_holding(sandbox_id, Holding::Failed);
    }

    fn set_holding(&self, sandbox_id: &str, holding: Holding) {
        let mut ledger = self.lock();
        if let Some(reservation) = ledger.remove(sandbox_id) {
            ledger.add(
                sandbox_id,
                Reservation {
                    holding,
                    ..reservation
                },
            );
        }
    }

    /// A paused sandbox is about to be thawed: take its vCPUs back. Harmless for an unknown
    /// or running id.
    ///
    /// # Errors
    ///
    /// [`Error::CapacityRejected`] when its vCPUs no longer fit (the sandbox stays paused).
    pub fn resume(&self, sandbox_id: &str) -> Result<()> {
        let mut ledger = self.lock();
        let Some(&reservation) = ledger.reservations.get(sandbox_id) else {
            return Ok(());
        };
        if reservation.holding != Holding::Paused {
            return Ok(());
        }
        if let Some(message) = self.cpu_shortfall(&ledger, reservation.resources.vcpus) {
            return Err(ledger.refuse(
                RefusalReason::Cpu,
                format!("sandbox {sandbox_id} cannot resume: {message}"),
            ));
        }
        ledger.remove(sandbox_id);
        ledger.add(
            sandbox_id,
            Reservation {
                holding: Holding::Running,
                ..reservation
            },
        );
        Ok(())
    }

    /// Count a refusal decided before the ledger (the disk floor), so that reports show it.
    pub fn record_refusal(&self, reason: RefusalReason, message: &str) {
        let _ = self.lock().refuse(reason, message.to_owned());
    }

    /// Return `sandbox_id`'s reservation, if it holds one. Releasing twice is harmless.
    pub fn release(&self, sandbox_id: &str) -> Option<SandboxResources> {
        self.lock()
            .remove(sandbox_id)
            .map(|reservation| reservation.resources)
    }

    /// Whether `sandbox_id` holds a reservation.
    #[must_use]
    pub fn is_admitted(&self, sandbox_id: &str) -> bool {
        self.lock().reservations.contains_key(sandbox_id)
    }

    /// Number of reservations.
    #[must_use]
    pub fn admitted_len(&self) -> usize {
        self.lock().reservations.len()
    }

    /// Reserved vCPUs (of running sandboxes) and memory (of all).
    #[must_use]
    pub fn used_resources(&self) -> SandboxResources {
        let ledger = self.lock();
        SandboxResources::new(
            u32::try_from(ledger.running_vcpus).unwrap_or(u32::MAX),
            ledger.memory_bytes,
        )
    }

    /// Capacity minus reservations.
    #[must_use]
    pub fn available_resources(&self) -> SandboxResources {
        let used = self.used_resources();
        let capacity = self.config.capacity();
        SandboxResources::new(
            capacity.vcpus.saturating_sub(used.vcpus),
            capacity.memory_bytes.saturating_sub(used.memory_bytes),
        )
    }

    /// What admission holds now, with a fresh pressure reading.
    #[must_use]
    pub fn report(&self) -> CapacityReport {
        let pressure = self.read_pressure();
        let ledger = self.lock();
        CapacityReport {
            config: self.config,
            capacity: self.config.capacity(),
            admitted: ledger.reservations.len(),
            paused: ledger.paused,
            failed: ledger.failed,
            reserved: SandboxResources::new(
                u32::try_from(ledger.running_vcpus).unwrap_or(u32::MAX),
                ledger.memory_bytes,
            ),
            pressure,
            refusals: RefusalReason::ALL
                .iter()
                .map(|reason| (*reason, ledger.refusals.get(reason).copied().unwrap_or(0)))
                .collect(),
            last_refusal: ledger.last_refusal.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // Every critical section above is panic-free arithmetic on owned data, so a poisoned
        // lock still guards a consistent ledger: keep using it.
        self.admitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
