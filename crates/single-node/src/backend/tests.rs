//! Backend rules against the fake driver: every gate, every rollback path, the reaper and
//! restart reconciliation over a real SQLite file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::testing::{FakeDriver, FakeOp};
use crate::{
    DiskPressureGuard, DiskProbe, DiskSpace, Error, ListOrder, ListQuery, ManualClock, SandboxId,
    SandboxResources, SandboxState, SingleNodeBackend, SingleNodeConfig, SingleNodeCreateRequest,
    SingleNodeSchedulerConfig, StateStore, StatvfsDiskProbe, TimeoutAction,
};

const T0: i64 = 1_800_000_000_000;

struct Harness {
    backend: SingleNodeBackend,
    driver: FakeDriver,
    clock: ManualClock,
}

fn config(dir: &Path) -> SingleNodeConfig {
    SingleNodeConfig::new(dir).with_scheduler(SingleNodeSchedulerConfig::new(
        3,
        SandboxResources::from_mib(8, 4096),
    ))
}

async fn open(dir: &Path, driver: &FakeDriver, clock: &ManualClock) -> SingleNodeBackend {
    open_with(config(dir), driver, clock).await
}

async fn open_with(
    config: SingleNodeConfig,
    driver: &FakeDriver,
    clock: &ManualClock,
) -> SingleNodeBackend {
    let dir = config.root().to_owned();
    SingleNodeBackend::builder(config, Arc::new(driver.clone()))
        .disk_guard(DiskPressureGuard::with_probe(
            dir,
            0,
            0,
            Arc::new(StatvfsDiskProbe),
        ))
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("backend opens")
}

async fn harness(dir: &Path) -> Harness {
    let driver = FakeDriver::new();
    let clock = ManualClock::new(T0);
    let backend = open(dir, &driver, &clock).await;
    Harness {
        backend,
        driver,
        clock,
    }
}

fn request(id: &str) -> SingleNodeCreateRequest {
    SingleNodeCreateRequest::new("base", SandboxResources::from_mib(2, 512))
        .with_sandbox_id(SandboxId::parse(id).unwrap())
}

/// Records and reservations agree, and the driver runs exactly the recorded sandboxes.
fn assert_consistent(h: &Harness) {
    let records = h.backend.state().load_active();
    assert_eq!(h.backend.scheduler().admitted_len(), records.len());
    // Paused and failed sandboxes hold their memory in the ledger, not their vCPUs.
    let running = records
        .iter()
        .filter(|r| !matches!(r.state, SandboxState::Paused | SandboxState::Failed));
    let vcpus: u32 = running.map(|r| r.resources.vcpus).sum();
    let memory: u64 = records.iter().map(|r| r.resources.memory_bytes).sum();
    assert_eq!(
        h.backend.scheduler().used_resources(),
        SandboxResources::new(vcpus, memory)
    );
    let paused = records.iter().filter(|r| r.state == SandboxState::Paused);
    assert_eq!(h.backend.scheduler().report().paused, paused.count());
    let mut ids: Vec<String> = records
        .iter()
        .filter(|r| r.state != SandboxState::Failed)
        .map(|r| r.sandbox_id.clone())
        .collect();
    ids.sort();
    assert_eq!(h.driver.live(), ids);
}

#[tokio::test]
async fn create_records_a_running_sandbox_with_its_deadline_route_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let mut metadata = BTreeMap::new();
    metadata.insert("user".to_owned(), "ada".to_owned());
    let sandbox = h
        .backend
        .create(request("one").with_metadata(metadata.clone()))
        .await
        .unwrap();
    assert_eq!(sandbox.state(), SandboxState::Running);
    assert_eq!(sandbox.started_at_unix_ms(), T0);
    assert_eq!(sandbox.end_at_unix_ms(), T0 + 300_000);
    assert_eq!(sandbox.metadata(), &metadata);
    assert_eq!(
        sandbox.record().envd_access_token.as_deref(),
        Some("token-one")
    );
    assert!(h.backend.ports().target("one", 8080).is_ok());
    let logs = h.backend.sandbox_logs("one", None, 10).unwrap();
    assert_eq!(logs.len(), 1);
    assert!(logs[0].message.contains("template base"));
    assert_consistent(&h);
}

#[tokio::test]
async fn generated_ids_are_dns_labels() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let request = SingleNodeCreateRequest::new("base", SandboxResources::from_mib(1, 256));
    let sandbox = h.backend.create(request).await.unwrap();
    SandboxId::parse(sandbox.sandbox_id()).unwrap();
    assert_eq!(sandbox.sandbox_id().len(), crate::GENERATED_ID_LEN);
}

#[tokio::test]
async fn impossible_requests_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let zero_cpu = SingleNodeCreateRequest::new("base", SandboxResources::from_mib(0, 512));
    let bigger_than_host = SingleNodeCreateRequest::new("base", SandboxResources::from_mib(9, 512));
    let too_long = request("a").with_timeout(Duration::from_secs(25 * 3600));
    let no_template = SingleNodeCreateRequest::new("", SandboxResources::from_mib(1, 512));
    for bad in [zero_cpu, bigger_than_host, too_long, no_template] {
        let error = h.backend.create(bad).await.unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error}");
    }
    assert!(h.backend.state().load_active().is_empty());
    assert_eq!(h.driver.creates(), 0);
    assert_consistent(&h);
}

/// A disk that is full while the flag is set.
#[derive(Debug, Default)]
struct FillableDisk(std::sync::atomic::AtomicBool);

impl DiskProbe for FillableDisk {
    fn measure(&self, _: &Path) -> crate::Result<DiskSpace> {
        let full = self.0.load(std::sync::atomic::Ordering::SeqCst);
        Ok(DiskSpace {
            available_bytes: if full { 1 } else { u64::MAX },
            available_inodes: u64::MAX,
        })
    }
}

#[tokio::test]
async fn disk_pressure_refuses_create_and_snapshot_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FakeDriver::new();
    let disk = Arc::new(FillableDisk::default());
    let backend = SingleNodeBackend::builder(config(dir.path()), Arc::new(driver.clone()))
        .disk_guard(DiskPressureGuard::with_probe(
            dir.path(),
            1 << 30,
            0,
            disk.clone(),
        ))
        .build()
        .await
        .unwrap();
    backend.create(request("one")).await.unwrap();
    disk.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let error = backend.create(request("two")).await.unwrap_err();
    assert!(matches!(error, Error::DiskPressure(_)), "{error}");
    assert!(error.to_string().contains("sandbox create"));
    let error = backend.snapshot("one", None).await.unwrap_err();
    assert!(error.to_string().contains("sandbox snapshot"), "{error}");
    assert_eq!(backend.scheduler().admitted_len(), 1);
    assert_eq!(driver.live(), ["one"]);
    assert!(backend.snapshots(None).is_empty());
}

#[tokio::test]
async fn capacity_and_duplicates_are_refused_without_touching_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let duplicate = h.backend.create(request("one")).await.unwrap_err();
    assert!(matches!(duplicate, Error::Conflict(_)), "{duplicate}");
    assert_eq!(h.backend.get("one").unwrap().state(), SandboxState::Running);
    h.backend.create(request("two")).await.unwrap();
    h.backend.create(request("three")).await.unwrap();
    let full = h.backend.create(request("four")).await.unwrap_err();
    assert!(matches!(full, Error::CapacityRejected(_)), "{full}");
    assert_eq!(h.driver.creates(), 3);
    assert_consistent(&h);
}

#[tokio::test]
async fn a_failed_driver_create_rolls_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.driver.fail(FakeOp::Create, 1);
    let error = h.backend.create(request("one")).await.unwrap_err();
    assert!(matches!(error, Error::RuntimeLaunchFailed(_)), "{error}");
    assert!(h.backend.get("one").is_err());
    assert!(h.backend.ports().target("one", 1).is_err());
    assert_consistent(&h);
    let missing = SingleNodeCreateRequest::new("missing", SandboxResources::from_mib(1, 256));
    let error = h.backend.create(missing).await.unwrap_err();
    assert!(matches!(error, Error::SnapshotNotFound(_)), "{error}");
    assert_consistent(&h);
    h.backend.create(request("one")).await.unwrap();
    assert_consistent(&h);
}

#[tokio::test]
async fn a_failed_teardown_after_a_failed_create_keeps_a_failed_record_until_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.driver.fail(FakeOp::Create, 1);
    h.driver.fail(FakeOp::Delete, 1);
    h.backend.create(request("one")).await.unwrap_err();
    let record = h.backend.get("one").unwrap();
    assert_eq!(record.state(), SandboxState::Failed);
    assert!(h.backend.scheduler().is_admitted("one"));
    let failed = ListQuery {
        states: vec![SandboxState::Failed],
        ..ListQuery::default()
    };
    assert_eq!(h.backend.list(&failed).unwrap().sandboxes.len(), 1);
    assert!(
        h.backend
            .list(&ListQuery::default())
            .unwrap()
            .sandboxes
            .is_empty()
    );
    h.backend.delete("one").await.unwrap();
    assert!(h.backend.get("one").is_err());
    assert_consistent(&h);
}

#[tokio::test]
async fn delete_removes_record_route_logs_and_reservation_and_twice_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    h.backend.delete("one").await.unwrap();
    assert!(matches!(
        h.backend.get("one"),
        Err(Error::SandboxNotFound(_))
    ));
    assert!(h.backend.ports().target("one", 49983).is_err());
    assert_eq!(h.backend.logs().len("one").unwrap(), 0);
    assert_eq!(h.driver.deletes(), 1);
    let again = h.backend.delete("one").await.unwrap_err();
    assert!(matches!(again, Error::SandboxNotFound(_)));
    assert_eq!(again.to_string(), "sandbox one was not found");
    assert_consistent(&h);
}

#[tokio::test]
async fn a_failed_teardown_is_retried_by_the_next_delete() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    h.driver.fail(FakeOp::Delete, 1);
    h.backend.delete("one").await.unwrap_err();
    assert_eq!(h.backend.get("one").unwrap().state(), SandboxState::Failed);
    assert!(h.backend.scheduler().is_admitted("one"));
    h.backend.delete("one").await.unwrap();
    assert_consistent(&h);
}

#[tokio::test]
async fn pause_and_resume_follow_the_state_machine() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let paused = h.backend.pause("one").await.unwrap();
    assert_eq!(paused.state(), SandboxState::Paused);
    assert!(h.driver.is_paused("one"));
    let twice = h.backend.pause("one").await.unwrap_err();
    assert!(matches!(
        twice,
        Error::InvalidTransition {
            from: SandboxState::Paused,
            ..
        }
    ));
    h.clock.advance_ms(10_000);
    let resumed = h
        .backend
        .resume("one", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(resumed.state(), SandboxState::Running);
    assert_eq!(resumed.end_at_unix_ms(), T0 + 10_000 + 60_000);
    assert!(!h.driver.is_paused("one"));
    let running = h.backend.resume("one", None).await.unwrap_err();
    assert!(matches!(running, Error::InvalidTransition { .. }));
    assert!(matches!(
        h.backend.pause("nope").await,
        Err(Error::SandboxNotFound(_))
    ));
}

#[tokio::test]
async fn a_failed_driver_pause_leaves_the_sandbox_running() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    h.driver.fail(FakeOp::Pause, 1);
    h.backend.pause("one").await.unwrap_err();
    assert_eq!(h.backend.get("one").unwrap().state(), SandboxState::Running);
    assert!(!h.driver.is_paused("one"));
}

#[tokio::test]
async fn connect_resumes_paused_and_only_extends_running_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let (sandbox, resumed) = h
        .backend
        .connect("one", Some(Duration::from_secs(10)))
        .await
        .unwrap();
    assert!(!resumed);
    assert_eq!(
        sandbox.end_at_unix_ms(),
        T0 + 300_000,
        "a shorter connect timeout never shortens"
    );
    let (sandbox, _) = h
        .backend
        .connect("one", Some(Duration::from_secs(900)))
        .await
        .unwrap();
    assert_eq!(sandbox.end_at_unix_ms(), T0 + 900_000);
    h.backend.pause("one").await.unwrap();
    let (sandbox, resumed) = h.backend.connect("one", None).await.unwrap();
    assert!(resumed);
    assert_eq!(sandbox.state(), SandboxState::Running);
    assert!(matches!(
        h.backend.connect("nope", None).await,
        Err(Error::SandboxNotFound(_))
    ));
}

#[tokio::test]
async fn set_timeout_shortens_and_extends_within_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let shorter = h
        .backend
        .set_timeout("one", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(shorter.end_at_unix_ms(), T0 + 5_000);
    let longer = h
        .backend
        .set_timeout("one", Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(longer.end_at_unix_ms(), T0 + 3_600_000);
    let error = h
        .backend
        .set_timeout("one", Duration::from_secs(90_000))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)));
    assert_eq!(
        h.backend.get("one").unwrap().end_at_unix_ms(),
        T0 + 3_600_000
    );
    assert!(matches!(
        h.backend.set_timeout("nope", Duration::from_secs(5)).await,
        Err(Error::SandboxNotFound(_))
    ));
}

#[tokio::test]
async fn the_reaper_kills_or_pauses_at_the_deadline_and_nothing_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend
        .create(request("kill").with_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    h.backend
        .create(
            request("pause")
                .with_timeout(Duration::from_secs(10))
                .with_on_timeout(TimeoutAction::Pause),
        )
        .await
        .unwrap();
    h.backend
        .create(request("later").with_timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    h.clock.advance_ms(9_999);
    assert!(h.backend.reap_due().await.is_empty());
    h.clock.advance_ms(1);
    let reaped = h.backend.reap_due().await;
    assert_eq!(reaped.len(), 2);
    assert!(reaped.iter().all(|r| r.result.is_ok()));
    assert!(h.backend.get("kill").is_err());
    assert_eq!(
        h.backend.get("pause").unwrap().state(),
        SandboxState::Paused
    );
    assert_eq!(
        h.backend.get("later").unwrap().state(),
        SandboxState::Running
    );
    h.clock.advance_ms(1_000_000);
    let reaped = h.backend.reap_due().await;
    assert_eq!(reaped.len(), 1, "a paused sandbox does not expire");
    assert_eq!(reaped[0].sandbox_id, "later");
    assert_consistent(&h);
}

#[tokio::test]
async fn the_spawned_reaper_acts_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path()).await;
    let mut config = config(dir.path());
    config.reaper_interval_ms = 5;
    drop(h.backend);
    h.backend = open_with(config, &h.driver, &h.clock).await;
    let _reaper = h.backend.spawn_reaper();
    h.backend
        .create(request("one").with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    h.clock.advance_ms(1_000);
    for _ in 0..400 {
        if h.backend.get("one").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        h.backend.get("one").is_err(),
        "the reaper did not kill the sandbox within 2 s"
    );
    assert!(h.driver.live().is_empty());
}

#[tokio::test]
async fn list_filters_orders_and_pages_stably() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path()).await;
    let mut config = config(dir.path());
    config.scheduler = SingleNodeSchedulerConfig::new(10, SandboxResources::from_mib(20, 8192));
    drop(h.backend);
    h.backend = open_with(config, &h.driver, &h.clock).await;
    for (i, id) in ["a1", "a2", "a3", "a4", "a5"].iter().enumerate() {
        let mut metadata = BTreeMap::new();
        metadata.insert(
            "team".to_owned(),
            if i % 2 == 0 { "red" } else { "blue" }.to_owned(),
        );
        let template = if i == 4 { "other" } else { "base" };
        let request = SingleNodeCreateRequest::new(template, SandboxResources::from_mib(1, 256))
            .with_sandbox_id(SandboxId::parse(id).unwrap())
            .with_metadata(metadata);
        h.backend.create(request).await.unwrap();
        h.clock.advance_ms(1_000);
    }
    h.backend.pause("a2").await.unwrap();

    let ids = |page: &crate::ListPage| -> Vec<String> {
        page.sandboxes
            .iter()
            .map(|s| s.sandbox_id().to_owned())
            .collect()
    };
    let all = h.backend.list(&ListQuery::default()).unwrap();
    assert_eq!(ids(&all), ["a1", "a2", "a3", "a4", "a5"]);
    assert_eq!(all.next_token, None);
    let paused = ListQuery {
        states: vec![SandboxState::Paused],
        ..ListQuery::default()
    };
    assert_eq!(ids(&h.backend.list(&paused).unwrap()), ["a2"]);
    let red = ListQuery {
        metadata: [("team".to_owned(), "red".to_owned())].into(),
        ..ListQuery::default()
    };
    assert_eq!(ids(&h.backend.list(&red).unwrap()), ["a1", "a3", "a5"]);
    let other = ListQuery {
        template_id: Some("other".to_owned()),
        ..ListQuery::default()
    };
    assert_eq!(ids(&h.backend.list(&other).unwrap()), ["a5"]);

    // Pages stay stable while sandboxes come and go between them.
    let mut query = ListQuery {
        order: ListOrder::Descending,
        limit: Some(2),
        ..ListQuery::default()
    };
    let first = h.backend.list(&query).unwrap();
    assert_eq!(ids(&first), ["a5", "a4"]);
    h.backend.delete("a5").await.unwrap();
    h.backend.create(request("a6")).await.unwrap();
    query.next_token = first.next_token;
    let second = h.backend.list(&query).unwrap();
    assert_eq!(ids(&second), ["a3", "a2"]);
    query.next_token = second.next_token;
    let third = h.backend.list(&query).unwrap();
    assert_eq!(ids(&third), ["a1"]);
    assert_eq!(third.next_token, None);

    query.next_token = Some("garbage".to_owned());
    assert!(matches!(
        h.backend.list(&query),
        Err(Error::InvalidRequest(_))
    ));
    query.next_token = None;
    query.limit = Some(0);
    assert!(matches!(
        h.backend.list(&query),
        Err(Error::InvalidRequest(_))
    ));
}

#[tokio::test]
async fn snapshots_are_taken_restored_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let snapshot = h.backend.snapshot("one", Some("snap-1")).await.unwrap();
    assert_eq!(snapshot.source_sandbox_id, "one");
    assert_eq!(snapshot.names, ["snap-1"]);
    let taken = h.backend.snapshot("one", Some("snap-1")).await.unwrap_err();
    assert!(matches!(taken, Error::Conflict(_)), "{taken}");
    let bad = h.backend.snapshot("one", Some("../x")).await.unwrap_err();
    assert!(matches!(bad, Error::InvalidRequest(_)));
    let unnamed = h.backend.snapshot("one", None).await.unwrap();
    assert!(unnamed.snapshot_id.starts_with("one-"));
    assert!(matches!(
        h.backend.snapshot("nope", None).await,
        Err(Error::SandboxNotFound(_))
    ));

    let restored = h.backend.restore("snap-1", request("two")).await.unwrap();
    assert_eq!(restored.state(), SandboxState::Running);
    assert!(matches!(
        h.backend.restore("nope", request("three")).await,
        Err(Error::SnapshotNotFound(_))
    ));
    assert_eq!(h.backend.snapshots(Some("one")).len(), 2);
    h.backend.delete_snapshot("snap-1").await.unwrap();
    assert!(matches!(
        h.backend.delete_snapshot("snap-1").await,
        Err(Error::SnapshotNotFound(_))
    ));
    assert_eq!(h.driver.snapshot_ids(), [unnamed.snapshot_id]);
    assert_consistent(&h);
}

#[tokio::test]
async fn a_restart_re_adopts_live_sandboxes_and_reclaims_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("running")).await.unwrap();
    h.backend.create(request("paused")).await.unwrap();
    h.backend.pause("paused").await.unwrap();
    h.backend
        .create(request("expiring").with_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    let Harness {
        backend,
        driver,
        clock,
    } = h;
    drop(backend);

    // While no daemon runs: one sandbox dies, one deadline passes, and a create was cut
    // short half-way (its record says Creating, the driver holds a leftover).
    driver.vanish("running");
    clock.advance_ms(5_000);
    {
        let state = StateStore::open(dir.path()).unwrap();
        let mut half = state.get_active("paused").unwrap();
        half.sandbox_id = "halfmade".to_owned();
        half.state = SandboxState::Creating;
        state.insert_active(half).unwrap();
    }
    driver.insert_live("halfmade");

    let backend = open(dir.path(), &driver, &clock).await;
    let h = Harness {
        backend,
        driver,
        clock,
    };
    let report = h.backend.startup_reconciliation();
    assert_eq!(
        report.adopted,
        ["expiring", "paused"],
        "adopted, then reaped"
    );
    assert_eq!(report.reclaimed, ["halfmade"]);
    assert_eq!(report.vanished, ["running"]);
    assert!(report.failed.is_empty());
    assert!(matches!(
        h.backend.get("running"),
        Err(Error::SandboxNotFound(_))
    ));
    assert!(
        h.backend.get("expiring").is_err(),
        "expired while down: killed through the driver"
    );
    assert!(h.backend.get("halfmade").is_err(), "half-made: reclaimed");
    assert_eq!(
        h.backend.get("paused").unwrap().state(),
        SandboxState::Paused
    );
    assert!(
        h.backend.ports().target("paused", 49983).is_ok(),
        "routes re-registered"
    );
    assert_eq!(h.driver.live(), ["paused"]);
    assert_consistent(&h);
    h.backend.resume("paused", None).await.unwrap();
    assert_consistent(&h);
}

#[tokio::test]
async fn a_failed_adoption_keeps_a_failed_record_holding_its_reservation() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let Harness {
        backend,
        driver,
        clock,
    } = h;
    drop(backend);
    driver.fail(FakeOp::Adopt, 1);
    let backend = open(dir.path(), &driver, &clock).await;
    assert_eq!(backend.get("one").unwrap().state(), SandboxState::Failed);
    assert!(backend.scheduler().is_admitted("one"));
    backend.delete("one").await.unwrap();
    assert!(driver.live().is_empty());
}

#[tokio::test]
async fn a_second_backend_on_the_same_state_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let second = SingleNodeBackend::builder(config(dir.path()), Arc::new(h.driver.clone()))
        .build()
        .await
        .unwrap_err();
    assert!(second.to_string().contains("in use"), "{second}");
}

#[tokio::test]
async fn an_invalid_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_log_events_per_sandbox = 0;
    let error = SingleNodeBackend::builder(config, Arc::new(FakeDriver::new()))
        .build()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("max_log_events_per_sandbox"));
}

#[tokio::test]
async fn per_sandbox_locks_do_not_outlive_their_sandboxes() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let lock_entries = || h.backend.shared.sandbox_locks.lock().unwrap().len();
    h.backend.create(request("one")).await.unwrap();
    h.backend.pause("one").await.unwrap();
    assert_eq!(lock_entries(), 1, "a live sandbox keeps its lock");
    h.backend.delete("one").await.unwrap();
    h.backend.pause("nope").await.unwrap_err();
    h.driver.fail(FakeOp::Create, 1);
    h.backend.create(request("two")).await.unwrap_err();
    assert_eq!(lock_entries(), 0);
}

#[tokio::test]
async fn failed_commits_roll_back_pause_resume_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    let durable = h.backend.state().durable().clone();

    durable.set_query_only(true);
    let error = h.backend.pause("one").await.unwrap_err();
    assert!(
        matches!(error, Error::StatePersistenceFailed { .. }),
        "{error}"
    );
    assert!(!h.driver.is_paused("one"), "the freeze was undone");
    let error = h.backend.snapshot("one", Some("s")).await.unwrap_err();
    assert!(
        matches!(error, Error::StatePersistenceFailed { .. }),
        "{error}"
    );
    assert!(
        h.driver.snapshot_ids().is_empty(),
        "the artifacts were removed"
    );
    durable.set_query_only(false);

    h.backend.pause("one").await.unwrap();
    durable.set_query_only(true);
    h.backend.resume("one", None).await.unwrap_err();
    assert!(h.driver.is_paused("one"), "the thaw was undone");
    durable.set_query_only(false);
    assert_eq!(h.backend.get("one").unwrap().state(), SandboxState::Paused);
    assert_consistent(&h);
}

#[tokio::test]
async fn a_create_whose_commit_fails_tears_down_and_leaves_a_record_for_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let durable = h.backend.state().durable().clone();
    // Commits fail from before the create: nothing at all may remain.
    durable.set_query_only(true);
    h.backend.create(request("early")).await.unwrap_err();
    durable.set_query_only(false);
    assert!(h.backend.get("early").is_err());
    assert_consistent(&h);

    // Commits fail after the driver built it: it is torn down; the `Creating` record that
    // could not be removed keeps its reservation, and a restart reclaims it.
    let gate = h.driver.gate(FakeOp::Create, 1);
    let backend = h.backend.clone();
    let create = tokio::spawn(async move { backend.create(request("late")).await });
    // Inside the driver: the `Creating` record is written.
    gate.held(1).await;
    durable.set_query_only(true);
    gate.release(1);
    let error = create.await.unwrap().unwrap_err();
    assert!(
        matches!(error, Error::StatePersistenceFailed { .. }),
        "{error}"
    );
    assert!(
        h.driver.live().is_empty(),
        "the driver's sandbox was torn down"
    );
    assert!(h.backend.scheduler().is_admitted("late"));
    durable.set_query_only(false);
    let Harness {
        backend,
        driver,
        clock,
    } = h;
    drop((backend, durable));
    let backend = open(dir.path(), &driver, &clock).await;
    assert!(backend.get("late").is_err(), "reclaimed at restart");
    assert_eq!(backend.scheduler().admitted_len(), 0);
}

#[tokio::test]
async fn a_create_the_caller_stops_waiting_for_still_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    let gate = h.driver.gate(FakeOp::Create, 1);
    // The caller gives up (drops its future) while the driver is building the sandbox.
    tokio::select! {
        finished = h.backend.create(request("late")) => {
            panic!("the create should still have been running: {finished:?}")
        }
        () = gate.held(1) => {}
    }
    gate.release(1);
    // It runs to its end anyway: a Running sandbox, not a Creating record and a leak.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.backend.get("late").map(|s| s.state()).ok() != Some(SandboxState::Running) {
        assert!(
            std::time::Instant::now() < deadline,
            "the create never finished"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.driver.live(), ["late"]);
    assert_consistent(&h);
}

#[tokio::test]
async fn oom_kills_are_logged_once_each_in_the_sandboxs_log() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness(dir.path()).await;
    h.backend.create(request("one")).await.unwrap();
    h.backend.create(request("two")).await.unwrap();
    assert!(h.backend.check_oom_kills().await.is_empty());

    h.driver.set_oom_kills("one", 2);
    assert_eq!(h.backend.check_oom_kills().await, [("one".to_owned(), 2)]);
    // Seen already: not logged again.
    assert!(h.backend.check_oom_kills().await.is_empty());
    h.driver.set_oom_kills("one", 3);
    assert_eq!(h.backend.check_oom_kills().await, [("one".to_owned(), 1)]);
    assert_eq!(h.backend.oom_kills_total(), 3);

    let warnings: Vec<String> = h
        .backend
        .sandbox_logs("one", None, 100)
        .unwrap()
        .into_iter()
        .filter(|event| event.level == crate::LogLevel::Warn)
        .map(|event| event.message)
        .collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[1]
            .contains("killed 3 processes of this sandbox so far, at its memory limit of 512 MiB"),
        "{warnings:?}"
    );
    let two = h.backend.sandbox_logs("two", None, 100).unwrap();
    assert!(
        two.iter().all(|event| event.level != crate::LogLevel::Warn),
        "{two:?}"
    );
    assert_consistent(&h);
}

/// A catalog with one template, `py` (tag `default`), whose id is `tpl-py`.
#[derive(Debug)]
struct OneTemplate;

impl crate::TemplateSource for OneTemplate {
    fn resolve(&self, reference: &str) -> crate::Result<crate::TemplateImage> {
        assert_ne!(reference, "base", "base is never looked up");
        if reference != "py" {
            return Err(Error::TemplateNotFound(format!(
                "template '{reference}' not found"
            )));
        }
        Ok(crate::TemplateImage {
            template_id: "tpl-py".into(),
            name: "py".into(),
            build_id: "b1".into(),
            layers: vec!["/layers/one".into()],
            env: vec![],
            user: Some("user".into()),
            workdir: None,
            start_cmd: None,
            ready_cmd: None,
            keep_warm: true,
            on_base: false,
        })
    }
}

#[tokio::test]
async fn template_names_resolve_in_the_source_and_an_unknown_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let driver = FakeDriver::new();
    let clock = ManualClock::new(T0);
    let backend = SingleNodeBackend::builder(config(dir.path()), Arc::new(driver.clone()))
        .disk_guard(DiskPressureGuard::with_probe(
            dir.path().to_owned(),
            0,
            0,
            Arc::new(StatvfsDiskProbe),
        ))
        .clock(Arc::new(clock.clone()))
        .templates(Arc::new(OneTemplate))
        .build()
        .await
        .unwrap();
    let h = Harness {
        backend,
        driver,
        clock,
    };
    let from = |template: &str, id: &str| {
        SingleNodeCreateRequest::new(template, SandboxResources::from_mib(2, 512))
            .with_sandbox_id(SandboxId::parse(id).unwrap())
    };
    let made = h.backend.create(from("py", "one")).await.unwrap();
    assert_eq!(
        made.template_id(),
        "tpl-py",
        "recorded by the template's id"
    );
    let base = h.backend.create(from("base", "two")).await.unwrap();
    assert_eq!(base.template_id(), "base");

    let error = h.backend.create(from("nope", "three")).await.unwrap_err();
    assert!(matches!(error, Error::TemplateNotFound(_)), "{error:?}");
    assert_eq!(error.kind(), crate::ErrorKind::NotFound);
    assert_eq!(error.to_string(), "template 'nope' not found");
    assert_eq!(
        h.driver.creates(),
        2,
        "the driver never saw the unknown one"
    );
    assert_eq!(h.backend.state().load_active().len(), 2);
    assert_consistent(&h);
}
