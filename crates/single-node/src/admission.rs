//! Admission: a ledger of the CPU, memory and session slots that live sandboxes reserve.
//!
//! Decisions are immediate (no queue). A sandbox id holds at most one reservation: admitting
//! an id that already holds one is a [`Error::Conflict`], never a silent re-admit, so a
//! failed duplicate create can never release the first sandbox's reservation.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::config::SingleNodeSchedulerConfig;
use crate::error::{Error, Result};
use crate::model::SandboxResources;

/// The admission ledger.
#[derive(Debug)]
pub struct SingleNodeScheduler {
    config: SingleNodeSchedulerConfig,
    admitted: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    reservations: HashMap<String, SandboxResources>,
    used_vcpus: u64,
    used_memory_bytes: u64,
}

impl SingleNodeScheduler {
    /// An empty ledger with `config`'s limits.
    #[must_use]
    pub fn new(config: SingleNodeSchedulerConfig) -> Self {
        Self {
            config,
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
    /// [`Error::CapacityRejected`] when the session count, CPU or memory would exceed the
    /// limits (checked in that order, the message giving requested and available amounts).
    pub fn admit(&self, sandbox_id: &str, resources: SandboxResources) -> Result<()> {
        let mut ledger = self.lock();
        if ledger.reservations.contains_key(sandbox_id) {
            return Err(Error::Conflict(format!(
                "sandbox {sandbox_id} is already admitted"
            )));
        }
        let limits = self.config;
        if ledger.reservations.len() >= limits.max_sessions {
            return Err(Error::CapacityRejected(format!(
                "sandbox {sandbox_id} rejected: the limit of {} sandboxes is reached",
                limits.max_sessions
            )));
        }
        let available_vcpus = u64::from(limits.resources.vcpus).saturating_sub(ledger.used_vcpus);
        if u64::from(resources.vcpus) > available_vcpus {
            return Err(Error::CapacityRejected(format!(
                "sandbox {sandbox_id} rejected: CPU requested {}, available {available_vcpus}",
                resources.vcpus
            )));
        }
        let available_memory = limits
            .resources
            .memory_bytes
            .saturating_sub(ledger.used_memory_bytes);
        if resources.memory_bytes > available_memory {
            return Err(Error::CapacityRejected(format!(
                "sandbox {sandbox_id} rejected: memory requested {} MiB, available {} MiB",
                resources.memory_bytes >> 20,
                available_memory >> 20
            )));
        }
        ledger.used_vcpus += u64::from(resources.vcpus);
        ledger.used_memory_bytes += resources.memory_bytes;
        ledger.reservations.insert(sandbox_id.to_owned(), resources);
        Ok(())
    }

    /// Record the reservation of a sandbox that already exists (found again after a restart),
    /// even past the limits: it is running whatever the ledger says, and new sandboxes are
    /// refused until enough capacity is free again. Idempotent.
    pub fn admit_existing(&self, sandbox_id: &str, resources: SandboxResources) {
        let mut ledger = self.lock();
        if ledger.reservations.contains_key(sandbox_id) {
            return;
        }
        if ledger.reservations.len() >= self.config.max_sessions {
            tracing::warn!(sandbox = sandbox_id, "re-admitted past the session limit");
        }
        ledger.used_vcpus += u64::from(resources.vcpus);
        ledger.used_memory_bytes += resources.memory_bytes;
        ledger.reservations.insert(sandbox_id.to_owned(), resources);
    }

    /// Return `sandbox_id`'s reservation, if it holds one. Releasing twice is harmless.
    pub fn release(&self, sandbox_id: &str) -> Option<SandboxResources> {
        let mut ledger = self.lock();
        let resources = ledger.reservations.remove(sandbox_id)?;
        ledger.used_vcpus -= u64::from(resources.vcpus);
        ledger.used_memory_bytes -= resources.memory_bytes;
        Some(resources)
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

    /// Total reserved CPU and memory.
    #[must_use]
    pub fn used_resources(&self) -> SandboxResources {
        let ledger = self.lock();
        SandboxResources::new(
            u32::try_from(ledger.used_vcpus).unwrap_or(u32::MAX),
            ledger.used_memory_bytes,
        )
    }

    /// Capacity minus reservations.
    #[must_use]
    pub fn available_resources(&self) -> SandboxResources {
        let used = self.used_resources();
        SandboxResources::new(
            self.config.resources.vcpus.saturating_sub(used.vcpus),
            self.config
                .resources
                .memory_bytes
                .saturating_sub(used.memory_bytes),
        )
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
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn scheduler(sessions: usize, vcpus: u32, memory_gib: u64) -> SingleNodeScheduler {
        SingleNodeScheduler::new(SingleNodeSchedulerConfig::new(
            sessions,
            SandboxResources::new(vcpus, memory_gib * GIB),
        ))
    }

    #[test]
    fn duplicate_admission_is_a_conflict_and_keeps_the_first() {
        let scheduler = scheduler(2, 4, 8);
        scheduler
            .admit("one", SandboxResources::new(2, 2 * GIB))
            .unwrap();
        let error = scheduler
            .admit("one", SandboxResources::new(1, GIB))
            .unwrap_err();
        assert!(matches!(error, Error::Conflict(_)), "{error}");
        assert_eq!(scheduler.admitted_len(), 1);
        assert_eq!(
            scheduler.available_resources(),
            SandboxResources::new(2, 6 * GIB)
        );
        assert_eq!(
            scheduler.release("one"),
            Some(SandboxResources::new(2, 2 * GIB))
        );
        assert_eq!(scheduler.release("one"), None);
        assert_eq!(
            scheduler.available_resources(),
            SandboxResources::new(4, 8 * GIB)
        );
    }

    #[test]
    fn rejects_by_sessions_then_cpu_then_memory() {
        let scheduler = scheduler(1, 4, 8);
        scheduler.admit("a", SandboxResources::new(1, GIB)).unwrap();
        let error = scheduler
            .admit("b", SandboxResources::new(1, GIB))
            .unwrap_err();
        assert!(
            error.to_string().contains("limit of 1 sandboxes"),
            "{error}"
        );

        let scheduler = self::scheduler(4, 4, 8);
        scheduler.admit("a", SandboxResources::new(3, GIB)).unwrap();
        let error = scheduler
            .admit("b", SandboxResources::new(2, GIB))
            .unwrap_err();
        assert!(
            error.to_string().contains("CPU requested 2, available 1"),
            "{error}"
        );

        let scheduler = self::scheduler(4, 8, 8);
        scheduler
            .admit("a", SandboxResources::new(1, 7 * GIB))
            .unwrap();
        let error = scheduler
            .admit("b", SandboxResources::new(1, 2 * GIB))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("memory requested 2048 MiB, available 1024 MiB")
        );
        assert!(matches!(error, Error::CapacityRejected(_)));
        assert_eq!(scheduler.admitted_len(), 1);
    }
}
