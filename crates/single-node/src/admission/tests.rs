use super::*;
use crate::pressure::FixedPressure;

const GIB: u64 = 1 << 30;

/// A calm 24 GiB host: 20 GiB available, no stall.
fn calm() -> PressureReading {
    PressureReading {
        memory_total_bytes: 24 * GIB,
        memory_available_bytes: 20 * GIB,
        memory_full_avg10: Some(0.0),
    }
}

fn scheduler(sessions: usize, vcpus: u32, memory_gib: u64) -> SingleNodeScheduler {
    SingleNodeScheduler::new(
        SingleNodeSchedulerConfig::new(sessions, SandboxResources::new(vcpus, memory_gib * GIB)),
        Arc::new(FixedPressure::new(calm())),
    )
}

/// This host on the defaults: 2 CPUs, 24 GiB.
fn default_host(pressure: Arc<FixedPressure>) -> SingleNodeScheduler {
    SingleNodeScheduler::new(SingleNodeSchedulerConfig::for_host(2, 24 * GIB), pressure)
}

fn base() -> SandboxResources {
    SandboxResources::from_mib(2, 512)
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
    // A conflict is not a capacity refusal.
    assert_eq!(scheduler.report().last_refusal, None);
}

#[test]
fn refuses_by_count_then_cpu_then_memory_naming_the_setting() {
    let scheduler = scheduler(1, 4, 8);
    scheduler.admit("a", SandboxResources::new(1, GIB)).unwrap();
    let error = scheduler
        .admit("b", SandboxResources::new(1, GIB))
        .unwrap_err();
    assert!(matches!(error, Error::CapacityRejected(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains("the limit of 1 sandboxes is reached (setting max-sandboxes)"),
        "{error}"
    );

    let scheduler = self::scheduler(4, 4, 8);
    scheduler.admit("a", SandboxResources::new(3, GIB)).unwrap();
    let error = scheduler
        .admit("b", SandboxResources::new(2, GIB))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("CPU requested 2, available 1 of 4 vCPUs (4 host CPUs × cpu-overcommit 1)"),
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
            .contains("memory requested 2048 MiB, available 1024 MiB"),
        "{error}"
    );
    assert!(error.to_string().contains("memory-overcommit"), "{error}");
    assert_eq!(scheduler.admitted_len(), 1);
    let report = scheduler.report();
    assert_eq!(
        report.last_refusal.map(|refusal| refusal.reason),
        Some(RefusalReason::Memory)
    );
}

#[test]
fn the_defaults_admit_far_more_sandboxes_than_caps_would_reserve() {
    // The old ledger reserved each cap: 32 default sandboxes on this host's 2 × 32 vCPUs.
    let scheduler = default_host(Arc::new(FixedPressure::new(calm())));
    for n in 0..1000 {
        scheduler.admit(&format!("s{n}"), base()).unwrap();
    }
    let report = scheduler.report();
    assert_eq!(report.admitted, 1000);
    assert_eq!(report.reserved, SandboxResources::from_mib(2000, 512_000));
    assert!(report.refusals.iter().all(|(_, n)| *n == 0));
}

#[test]
fn memory_pressure_refuses_new_sandboxes_and_names_the_reading() {
    let pressure = Arc::new(FixedPressure::new(calm()));
    let scheduler = default_host(Arc::clone(&pressure));
    scheduler.admit("before", base()).unwrap();

    pressure.set(PressureReading {
        memory_available_bytes: 900 << 20,
        ..calm()
    });
    let error = scheduler.admit("short", base()).unwrap_err();
    assert!(matches!(error, Error::CapacityRejected(_)), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("short of memory: 900 MiB available, below the floor of 1228 MiB"),
        "{message}"
    );
    assert!(message.contains("min-available-memory-mb"), "{message}");

    pressure.set(PressureReading {
        memory_full_avg10: Some(35.5),
        ..calm()
    });
    let message = scheduler.admit("stalled", base()).unwrap_err().to_string();
    assert!(
        message.contains("stalled on memory 35.5% of the last 10 s"),
        "{message}"
    );

    // Nothing admitted by the refusals, and what ran before runs on.
    assert_eq!(scheduler.admitted_len(), 1);
    let report = scheduler.report();
    let pressure_refusals = report
        .refusals
        .iter()
        .find(|(reason, _)| *reason == RefusalReason::MemoryPressure)
        .map(|(_, n)| *n);
    assert_eq!(pressure_refusals, Some(2));
    let last = report.last_refusal.unwrap();
    assert_eq!(last.reason, RefusalReason::MemoryPressure);
    assert!(last.message.contains("sandbox stalled refused"), "{last:?}");
    assert!(last.at_unix_ms > 0);

    // A kernel without PSI: MemAvailable alone decides.
    pressure.set(PressureReading {
        memory_full_avg10: None,
        ..calm()
    });
    scheduler.admit("after", base()).unwrap();
}

#[test]
fn an_unreadable_host_is_not_refused_everything() {
    #[derive(Debug)]
    struct Unreadable;
    impl PressureSource for Unreadable {
        fn read(&self) -> Result<PressureReading, String> {
            Err("no /proc".to_owned())
        }
    }
    let scheduler = SingleNodeScheduler::new(
        SingleNodeSchedulerConfig::for_host(2, 24 * GIB),
        Arc::new(Unreadable),
    );
    scheduler.admit("one", base()).unwrap();
    assert_eq!(scheduler.report().pressure, None);
}

#[test]
fn paused_sandboxes_give_back_cpu_but_keep_memory() {
    let scheduler = scheduler(10, 4, 8);
    scheduler.admit("a", SandboxResources::new(2, GIB)).unwrap();
    scheduler.admit("b", SandboxResources::new(2, GIB)).unwrap();
    assert!(scheduler.admit("c", SandboxResources::new(2, GIB)).is_err());

    scheduler.pause("a");
    scheduler.pause("a");
    let report = scheduler.report();
    assert_eq!((report.admitted, report.paused), (2, 1));
    assert_eq!(report.reserved, SandboxResources::new(2, 2 * GIB));
    scheduler.admit("c", SandboxResources::new(2, GIB)).unwrap();

    // The CPU a paused sandbox gave back went to "c": "a" cannot come back yet.
    let error = scheduler.resume("a").unwrap_err();
    assert!(
        error
            .to_string()
            .contains("sandbox a cannot resume: CPU requested 2, available 0"),
        "{error}"
    );
    assert_eq!(scheduler.report().paused, 1);
    scheduler.release("c");
    scheduler.resume("a").unwrap();
    scheduler.resume("a").unwrap();
    let report = scheduler.report();
    assert_eq!((report.admitted, report.paused), (2, 0));
    assert_eq!(report.reserved, SandboxResources::new(4, 2 * GIB));

    // Releasing a paused sandbox returns its memory only.
    scheduler.pause("b");
    scheduler.release("b");
    assert_eq!(scheduler.used_resources(), SandboxResources::new(2, GIB));
    assert_eq!(scheduler.report().paused, 0);
}

#[test]
fn existing_sandboxes_are_readmitted_paused_or_not_even_past_the_limits() {
    let scheduler = scheduler(1, 2, 2);
    scheduler.admit_existing("a", SandboxResources::new(2, 2 * GIB), Holding::Running);
    scheduler.admit_existing("b", SandboxResources::new(2, 2 * GIB), Holding::Paused);
    scheduler.admit_existing("b", SandboxResources::new(2, 2 * GIB), Holding::Paused);
    scheduler.admit_existing("c", SandboxResources::new(2, GIB), Holding::Failed);
    let report = scheduler.report();
    assert_eq!((report.admitted, report.paused, report.failed), (3, 1, 1));
    assert_eq!(report.reserved, SandboxResources::new(2, 5 * GIB));
    assert!(scheduler.admit("d", SandboxResources::new(1, GIB)).is_err());
    // A failed sandbox cannot be resumed into running by the ledger.
    scheduler.resume("c").unwrap();
    assert_eq!(scheduler.report().failed, 1);
}

#[test]
fn a_failed_sandbox_gives_back_its_cpu_and_keeps_its_memory_until_released() {
    let scheduler = scheduler(10, 4, 8);
    scheduler.admit("a", SandboxResources::new(4, GIB)).unwrap();
    scheduler.pause("a");
    scheduler.fail("a");
    let report = scheduler.report();
    assert_eq!((report.paused, report.failed), (0, 1));
    assert_eq!(report.reserved, SandboxResources::new(0, GIB));
    scheduler.release("a");
    assert_eq!(scheduler.report().failed, 0);
}

#[test]
fn a_disk_refusal_is_reported_as_the_last() {
    let scheduler = scheduler(1, 2, 2);
    scheduler.record_refusal(RefusalReason::Disk, "disk below its floor");
    let report = scheduler.report();
    let last = report.last_refusal.unwrap();
    assert_eq!(
        (last.reason, last.message.as_str()),
        (RefusalReason::Disk, "disk below its floor")
    );
    assert_eq!(RefusalReason::Disk.as_str(), "disk");
}
