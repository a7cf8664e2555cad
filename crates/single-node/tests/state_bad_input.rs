//! The state store facing bad input: a corrupt database file, an SQLite database that is not
//! firkin's, a directory already held by another store, duplicate ids. Each is refused with an
//! error a user can act on, and the refused input is left exactly as it was. Also: the
//! in-memory store does everything the durable one does, without a directory.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use firkin_single_node::{
        ActiveSessionRecord, DurableStateStore, Error, ErrorKind, LogStore, SandboxResources,
        SandboxState, SnapshotRecord, StateStore, TemplateMetadata, TimeoutAction,
    };

    fn record(id: &str, end_at: i64) -> ActiveSessionRecord {
        ActiveSessionRecord {
            sandbox_id: id.to_owned(),
            template_id: "base".to_owned(),
            client_id: "client".to_owned(),
            envd_access_token: Some("secret".to_owned()),
            traffic_access_token: None,
            envd_version: Some("0.2.0".to_owned()),
            state: SandboxState::Running,
            started_at_unix_ms: 1_000,
            end_at_unix_ms: end_at,
            resources: SandboxResources::from_mib(2, 512),
            metadata: BTreeMap::from([("owner".to_owned(), "alice".to_owned())]),
            on_timeout: TimeoutAction::Pause,
            auto_resume: true,
            allow_internet_access: false,
            runtime_attached: true,
            runtime_handle: None,
        }
    }

    fn snapshot(id: &str, source: &str) -> SnapshotRecord {
        SnapshotRecord {
            snapshot_id: id.to_owned(),
            source_sandbox_id: source.to_owned(),
            template_id: "base".to_owned(),
            names: vec!["nightly".to_owned()],
            location: None,
            runtime_data: Some("opaque".to_owned()),
            resources: SandboxResources::from_mib(2, 512),
            created_at_unix_ms: 5,
            template_metadata: TemplateMetadata::default(),
        }
    }

    fn db_path(dir: &Path) -> PathBuf {
        dir.join(DurableStateStore::DB_FILE)
    }

    /// 4 KiB that are not SQLite: xorshift bytes, starting unlike SQLite's header.
    fn garbage() -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        bytes[..8].copy_from_slice(b"GARBAGE!");
        bytes
    }

    fn assert_persistence_failure(error: &Error) -> String {
        assert!(
            matches!(error, Error::StatePersistenceFailed { .. }),
            "expected StatePersistenceFailed, got {error:?}"
        );
        assert_eq!(error.kind(), ErrorKind::Internal);
        error.to_string()
    }

    #[test]
    fn a_corrupt_database_is_refused_with_advice_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_path(dir.path());
        let bytes = garbage();
        std::fs::write(&db, &bytes).unwrap();

        let error = StateStore::open(dir.path()).unwrap_err();
        let message = assert_persistence_failure(&error);
        assert!(
            message.contains(&db.display().to_string()),
            "names the file: {message}"
        );
        assert!(
            message.contains("unusable") && message.contains("corrupt"),
            "says what is wrong: {message}"
        );
        assert!(
            message.contains("move it aside") && message.contains("restore a backup"),
            "says what to do: {message}"
        );
        let cause = std::error::Error::source(&error).map(ToString::to_string);
        assert!(
            cause
                .as_deref()
                .is_some_and(|c| c.contains("not a database")),
            "keeps SQLite's cause: {cause:?}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "the bad file is byte-for-byte unchanged"
        );

        // The advice works, and the failed open released the directory lock.
        std::fs::rename(&db, dir.path().join("state.db.bad")).unwrap();
        let state = StateStore::open(dir.path()).expect("empty state once the file is moved");
        assert!(state.load_active().is_empty() && state.load_snapshots().is_empty());
        drop(state);
        assert_eq!(
            std::fs::read(dir.path().join("state.db.bad")).unwrap(),
            bytes
        );
    }

    /// Create `<dir>/state.db` as another program's SQLite database.
    fn foreign_database(dir: &Path, user_version: i64) -> Vec<u8> {
        let db = db_path(dir);
        {
            let connection = rusqlite::Connection::open(&db).unwrap();
            connection
                .execute_batch(
                    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
                     INSERT INTO users (name) VALUES ('alice'), ('bob');",
                )
                .unwrap();
            connection
                .pragma_update(None, "user_version", user_version)
                .unwrap();
        }
        std::fs::read(&db).unwrap()
    }

    /// Open must fail, and (after everything is closed) the foreign file must be unchanged
    /// and still the other program's.
    fn assert_foreign_refused(dir: &Path, bytes: &[u8]) -> String {
        let db = db_path(dir);
        let message = match StateStore::open(dir) {
            Ok(state) => {
                drop(state);
                let tables: Vec<String> = {
                    let connection = rusqlite::Connection::open(&db).unwrap();
                    let mut statement = connection
                        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                        .unwrap();
                    statement
                        .query_map([], |row| row.get(0))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap()
                };
                panic!(
                    "another program's database was opened as firkin state; its tables are \
                     now {tables:?}"
                );
            }
            Err(error) => assert_persistence_failure(&error),
        };
        assert!(
            message.contains(&db.display().to_string()),
            "names the file: {message}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "the foreign database is byte-for-byte unchanged"
        );
        let connection = rusqlite::Connection::open(&db).unwrap();
        let users: i64 = connection
            .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
            .unwrap();
        assert_eq!(users, 2);
        message
    }

    #[test]
    fn another_programs_sqlite_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = foreign_database(dir.path(), 0);
        let message = assert_foreign_refused(dir.path(), &bytes);
        assert!(
            message.contains("not firkin's state") && message.contains("state directory"),
            "says what it is and what to do: {message}"
        );
    }

    /// Many programs version their schema with `PRAGMA user_version`, starting at 1, which
    /// is also firkin's schema version. Such a database is still not firkin's.
    #[test]
    fn another_programs_sqlite_database_with_schema_version_1_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = foreign_database(dir.path(), 1);
        assert_foreign_refused(dir.path(), &bytes);
    }

    #[test]
    fn a_database_from_a_newer_firkin_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = foreign_database(dir.path(), 99);
        let message = assert_foreign_refused(dir.path(), &bytes);
        assert!(
            message.contains("schema version 99") && message.contains("newer firkin"),
            "{message}"
        );
    }

    #[test]
    fn a_second_open_of_a_directory_in_use_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateStore::open(dir.path()).unwrap();
        first.insert_active(record("held", 10)).unwrap();

        for error in [
            StateStore::open(dir.path()).unwrap_err(),
            DurableStateStore::open(dir.path()).unwrap_err(),
        ] {
            let message = assert_persistence_failure(&error);
            assert!(
                message.contains("in use by another firkin process"),
                "{message}"
            );
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
        }
        // The refused opens did not disturb the holder.
        first.insert_active(record("still-works", 10)).unwrap();
        assert_eq!(first.load_active().len(), 2);

        drop(first);
        let second = StateStore::open(dir.path()).expect("free once the first store is gone");
        let ids: Vec<String> = second
            .load_active()
            .into_iter()
            .map(|r| r.sandbox_id)
            .collect();
        assert_eq!(ids, ["held", "still-works"]);
    }

    #[test]
    fn an_in_memory_store_works_without_a_directory() {
        let state = StateStore::new().unwrap();
        assert!(state.durable().root().is_none());
        assert!(state.durable().snapshot_artifacts_dir().is_none());

        state.insert_active(record("mem", 10)).unwrap();
        assert_eq!(state.get_active("mem"), Some(record("mem", 10)));
        let paused = state.transition("mem", SandboxState::Paused).unwrap();
        assert_eq!(paused.state, SandboxState::Paused);
        let updated = state
            .update_active("mem", |r| {
                r.end_at_unix_ms = 99;
                Ok(())
            })
            .unwrap();
        assert_eq!(updated.end_at_unix_ms, 99);
        assert_eq!(state.get_active("mem").unwrap().end_at_unix_ms, 99);

        state.insert_snapshot(snapshot("snap", "mem")).unwrap();
        assert_eq!(state.get_snapshot("snap"), Some(snapshot("snap", "mem")));
        assert_eq!(
            state.reconcile_snapshot_artifacts().unwrap(),
            vec![snapshot("snap", "mem")],
            "no managed directory: nothing is dropped"
        );

        let logs = LogStore::new(state.durable().clone(), 2);
        for i in 1..=3 {
            assert_eq!(logs.record("mem", format!("m{i}")).unwrap(), i);
        }
        let kept: Vec<String> = logs
            .entries("mem", None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.message)
            .collect();
        assert_eq!(kept, ["m2", "m3"]);

        // The durable layer underneath holds the same records.
        let stored = state.durable().load().unwrap();
        assert_eq!(stored.active, state.load_active());
        assert_eq!(stored.snapshots, state.load_snapshots());

        assert_eq!(
            state.remove_active("mem").unwrap().map(|r| r.sandbox_id),
            Some("mem".to_owned())
        );
        assert_eq!(
            logs.len("mem").unwrap(),
            0,
            "removing a sandbox drops its logs"
        );
        assert!(state.get_active("mem").is_none());

        // Two in-memory stores are independent.
        let other = StateStore::new().unwrap();
        assert!(other.get_snapshot("snap").is_none());
        let via_durable =
            StateStore::with_durable(DurableStateStore::open_in_memory().unwrap()).unwrap();
        assert!(via_durable.load_active().is_empty());
    }

    #[test]
    fn inserting_a_duplicate_id_is_a_conflict_that_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let original = record("dup", 10);
        let original_snapshot = snapshot("snap", "dup");
        {
            let state = StateStore::open(dir.path()).unwrap();
            state.insert_active(original.clone()).unwrap();
            state.insert_snapshot(original_snapshot.clone()).unwrap();

            let mut clash = record("dup", 999);
            clash.state = SandboxState::Paused;
            clash.envd_access_token = Some("stolen".to_owned());
            let error = state.insert_active(clash).unwrap_err();
            assert!(matches!(error, Error::Conflict(_)), "{error:?}");
            assert_eq!(error.kind(), ErrorKind::Conflict);
            assert!(error.to_string().contains("dup"), "{error}");

            let error = state
                .insert_snapshot(snapshot("snap", "someone-else"))
                .unwrap_err();
            assert!(matches!(error, Error::Conflict(_)), "{error:?}");
            assert!(error.to_string().contains("snap"), "{error}");

            assert_eq!(state.load_active(), vec![original.clone()]);
            assert_eq!(state.load_snapshots(), vec![original_snapshot.clone()]);
            assert_eq!(
                state.durable().load().unwrap().active,
                vec![original.clone()]
            );
        }
        let reopened = StateStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load_active(), vec![original]);
        assert_eq!(reopened.load_snapshots(), vec![original_snapshot]);
    }
}
