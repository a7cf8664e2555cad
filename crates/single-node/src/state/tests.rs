//! State store rules: write-through, refusals that change nothing, reconciliation.

use std::collections::BTreeMap;

use crate::Error;
use crate::model::{SandboxResources, SandboxState, SnapshotRecord, TimeoutAction};
use crate::state::{ActiveSessionRecord, LogStore, StateStore};

fn record(id: &str, state: SandboxState, end_at: i64) -> ActiveSessionRecord {
    ActiveSessionRecord {
        sandbox_id: id.to_owned(),
        template_id: "base".to_owned(),
        client_id: "c".to_owned(),
        envd_access_token: Some("secret".to_owned()),
        traffic_access_token: None,
        envd_version: None,
        state,
        started_at_unix_ms: 0,
        end_at_unix_ms: end_at,
        resources: SandboxResources::from_mib(1, 256),
        metadata: BTreeMap::new(),
        on_timeout: TimeoutAction::Kill,
        auto_resume: false,
        allow_internet_access: true,
        runtime_attached: true,
        runtime_handle: None,
    }
}

fn snapshot(id: &str, location: Option<String>) -> SnapshotRecord {
    SnapshotRecord {
        snapshot_id: id.to_owned(),
        source_sandbox_id: "a".to_owned(),
        template_id: "base".to_owned(),
        names: vec![],
        location,
        runtime_data: None,
        resources: SandboxResources::default(),
        created_at_unix_ms: 0,
        template_metadata: crate::TemplateMetadata::default(),
    }
}

#[test]
fn mutations_write_through_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let state = StateStore::open(dir.path()).unwrap();
        state
            .insert_active(record("a", SandboxState::Running, 10))
            .unwrap();
        state
            .insert_active(record("b", SandboxState::Running, 10))
            .unwrap();
        state.transition("a", SandboxState::Paused).unwrap();
        state.remove_active("b").unwrap();
        state.insert_snapshot(snapshot("s", None)).unwrap();
    }
    let state = StateStore::open(dir.path()).unwrap();
    let active = state.load_active();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].state, SandboxState::Paused);
    assert_eq!(active[0].envd_access_token.as_deref(), Some("secret"));
    assert_eq!(state.load_snapshots().len(), 1);
}

#[test]
fn the_database_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    {
        let state = StateStore::open(&dir).unwrap();
        state
            .insert_active(record("a", SandboxState::Running, 10))
            .unwrap();
        // While the store is open (its -wal exists), with the umask every process has.
        for name in ["state.db", "state.db-wal", "state.db-shm"] {
            let path = dir.join(name);
            if path.exists() {
                let mode = mode(&path);
                assert_eq!(mode & 0o077, 0, "{name}: mode {mode:o}");
            }
        }
        assert!(dir.join("state.db-wal").exists(), "no -wal file to check");
        let dir_mode = mode(&dir);
        assert_eq!(dir_mode & 0o066, 0, "state directory: mode {dir_mode:o}");
    }
    // A state from an older firkin, left readable: restricted at the next open.
    std::fs::set_permissions(dir.join("state.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = StateStore::open(&dir).unwrap();
    assert_eq!(state.load_active().len(), 1);
    let db_mode = mode(&dir.join("state.db"));
    assert_eq!(db_mode & 0o077, 0, "state.db: mode {db_mode:o}");
    assert_eq!(mode(&dir) & 0o066, 0);
}

#[test]
fn refused_changes_change_nothing() {
    let state = StateStore::new().unwrap();
    state
        .insert_active(record("a", SandboxState::Running, 10))
        .unwrap();
    let duplicate = state
        .insert_active(record("a", SandboxState::Paused, 99))
        .unwrap_err();
    assert!(matches!(duplicate, Error::Conflict(_)));
    let refused = state
        .update_active("a", |r| {
            r.end_at_unix_ms = 1234;
            Err(Error::Conflict("no".to_owned()))
        })
        .unwrap_err();
    assert!(matches!(refused, Error::Conflict(_)));
    let illegal = state.transition("a", SandboxState::Creating).unwrap_err();
    assert!(matches!(illegal, Error::InvalidTransition { .. }));
    let renamed = state.update_active("a", |r| {
        r.sandbox_id = "b".to_owned();
        Ok(())
    });
    assert!(renamed.is_err());
    assert_eq!(
        state.load_active(),
        vec![record("a", SandboxState::Running, 10)]
    );
    assert!(matches!(
        state.update_active("zzz", |_| Ok(())),
        Err(Error::SandboxNotFound(_))
    ));
    assert_eq!(state.remove_active("zzz").unwrap(), None);
}

#[test]
fn reconcile_drops_due_running_records_and_keeps_paused_ones() {
    let state = StateStore::new().unwrap();
    state
        .insert_active(record("due", SandboxState::Running, 100))
        .unwrap();
    state
        .insert_active(record("later", SandboxState::Running, 101))
        .unwrap();
    state
        .insert_active(record("paused", SandboxState::Paused, 1))
        .unwrap();
    let survivors = state.reconcile_active_entries(100).unwrap();
    let ids: Vec<_> = survivors.iter().map(|r| r.sandbox_id.as_str()).collect();
    assert_eq!(ids, ["later", "paused"]);
    assert_eq!(state.load_active().len(), 2);
}

#[test]
fn reconcile_snapshot_artifacts_deletes_orphans_and_drops_vanished_records() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateStore::open(dir.path()).unwrap();
    let artifacts = state.durable().snapshot_artifacts_dir().unwrap();
    std::fs::create_dir_all(&artifacts).unwrap();
    let kept = artifacts.join("kept.snap");
    let orphan = artifacts.join("orphan.snap");
    std::fs::write(&kept, b"x").unwrap();
    std::fs::write(&orphan, b"x").unwrap();
    std::fs::create_dir(artifacts.join("a-directory")).unwrap();
    let elsewhere = dir.path().join("elsewhere.snap");
    let as_string = |p: &std::path::Path| Some(p.to_string_lossy().into_owned());
    state
        .insert_snapshot(snapshot("kept", as_string(&kept)))
        .unwrap();
    state
        .insert_snapshot(snapshot(
            "vanished",
            as_string(&artifacts.join("gone.snap")),
        ))
        .unwrap();
    state
        .insert_snapshot(snapshot("unmanaged", as_string(&elsewhere)))
        .unwrap();
    state
        .insert_snapshot(snapshot("no-location", None))
        .unwrap();

    let survivors = state.reconcile_snapshot_artifacts().unwrap();
    let ids: Vec<_> = survivors.iter().map(|s| s.snapshot_id.as_str()).collect();
    assert_eq!(ids, ["kept", "no-location", "unmanaged"]);
    assert!(kept.exists());
    assert!(!orphan.exists());
    assert!(
        artifacts.join("a-directory").exists(),
        "directories are left alone"
    );
    drop(state);
    assert_eq!(
        StateStore::open(dir.path()).unwrap().load_snapshots().len(),
        3
    );
}

#[test]
fn log_cursors_are_stable_sequence_numbers() {
    let state = StateStore::new().unwrap();
    let logs = LogStore::new(state.durable().clone(), 3);
    for i in 1..=5 {
        assert_eq!(logs.record("a", format!("m{i}")).unwrap(), i);
    }
    let retained = logs.entries("a", None, 100).unwrap();
    let seqs: Vec<u64> = retained.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    assert_eq!(logs.entries("a", Some(4), 100).unwrap()[0].message, "m4");
    let backwards: Vec<u64> = logs
        .entries_before("a", None, 2)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(backwards, [5, 4]);
    assert!(logs.entries("nobody", None, 10).unwrap().is_empty());
    logs.remove_sandbox("a").unwrap();
    assert_eq!(logs.len("a").unwrap(), 0);
}
