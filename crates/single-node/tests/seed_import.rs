//! Import of a seed-format state directory (`active.json`, `snapshots.json`, `logs.json`) with
//! [`firkin_single_node::import_seed_dir`]: every field converted and still there after a
//! reopen, logs trimmed to the bound keeping the newest, missing files treated as empty, and
//! all-or-nothing behaviour for bad files, bad ids and repeated imports.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;

    use firkin_single_node::{
        ActiveSessionRecord, Error, ImportSummary, LogEvent, LogLevel, LogStore, SandboxResources,
        SandboxState, SnapshotRecord, StateStore, StoredState, TemplateMetadata, TimeoutAction,
        import_seed_dir,
    };
    use serde_json::{Value, json};

    const BOUND: u32 = 1_000;

    fn seed_active() -> Value {
        json!([
            {
                "sandbox_id": "sbx-one",
                "template_id": "base",
                "client_id": "client-1",
                "envd_access_token": "tok-1",
                "started_at_unix_seconds": 1_700_000_000,
                "end_at_unix_seconds": 1_700_000_300,
                "resources": { "vcpus": 2, "memory_bytes": 536_870_912 },
                "runtime_attached": true
            },
            {
                "sandbox_id": "sbx-two",
                "template_id": "python",
                "client_id": "client-2",
                "envd_access_token": null,
                "started_at_unix_seconds": 1_700_000_100,
                "end_at_unix_seconds": 1_700_003_700,
                "resources": { "vcpus": 1, "memory_bytes": 268_435_456 },
                "runtime_attached": false
            }
        ])
    }

    fn seed_snapshots() -> Value {
        json!([
            {
                "snapshot_id": "snap-a",
                "source_sandbox_id": "sbx-one",
                "names": ["nightly", "v1"],
                "location": "/var/lib/seed/snap-a.img",
                "staging_dir": "/var/lib/seed/staging/snap-a",
                "machine_identifier": [1, 2, 3, 255],
                "network_macs": ["02:00:00:00:00:01", "02:00:00:00:00:02"],
                "template_metadata": {
                    "envs": { "LANG": "C.UTF-8" },
                    "start_cmd": "python -m http.server",
                    "ready_cmd": "curl -f localhost:8000"
                }
            },
            {
                "snapshot_id": "snap_b.v2",
                "source_sandbox_id": "sbx-two",
                "names": [],
                "location": null,
                "staging_dir": null,
                "machine_identifier": null,
                "network_macs": null,
                "template_metadata": { "envs": {} }
            }
        ])
    }

    fn seed_logs() -> Value {
        json!({
            "sbx-one": [
                { "timestamp_unix_seconds": 1_700_000_001, "message": "booted", "source": "runtime" },
                { "timestamp_unix_seconds": 1_700_000_002, "message": "envd ready", "source": "envd" }
            ],
            "sbx-two": [
                { "timestamp_unix_seconds": 1_700_000_101, "message": "created", "source": "single-node" }
            ]
        })
    }

    fn write_json(dir: &Path, name: &str, value: &Value) {
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(value).unwrap()).unwrap();
    }

    /// A seed directory with all three files.
    fn full_seed(dir: &Path) {
        write_json(dir, "active.json", &seed_active());
        write_json(dir, "snapshots.json", &seed_snapshots());
        write_json(dir, "logs.json", &seed_logs());
    }

    fn expected_active() -> Vec<ActiveSessionRecord> {
        let base = |id: &str, template: &str, client: &str| ActiveSessionRecord {
            sandbox_id: id.to_owned(),
            template_id: template.to_owned(),
            client_id: client.to_owned(),
            envd_access_token: None,
            traffic_access_token: None,
            envd_version: None,
            state: SandboxState::Running,
            started_at_unix_ms: 0,
            end_at_unix_ms: 0,
            resources: SandboxResources::default(),
            metadata: BTreeMap::new(),
            on_timeout: TimeoutAction::Kill,
            auto_resume: false,
            allow_internet_access: true,
            runtime_attached: false,
            runtime_handle: None,
        };
        vec![
            ActiveSessionRecord {
                envd_access_token: Some("tok-1".to_owned()),
                started_at_unix_ms: 1_700_000_000_000,
                end_at_unix_ms: 1_700_000_300_000,
                resources: SandboxResources::new(2, 536_870_912),
                runtime_attached: true,
                ..base("sbx-one", "base", "client-1")
            },
            ActiveSessionRecord {
                started_at_unix_ms: 1_700_000_100_000,
                end_at_unix_ms: 1_700_003_700_000,
                resources: SandboxResources::new(1, 268_435_456),
                ..base("sbx-two", "python", "client-2")
            },
        ]
    }

    fn log(seq: u64, seconds: i64, source: &str, message: &str) -> LogEvent {
        LogEvent {
            seq,
            timestamp_unix_ms: seconds * 1000,
            level: LogLevel::Info,
            source: source.to_owned(),
            message: message.to_owned(),
        }
    }

    /// Everything a test can see in a store, for before/after comparisons.
    #[derive(Debug, PartialEq)]
    struct Contents {
        stored: StoredState,
        logs: BTreeMap<String, Vec<LogEvent>>,
    }

    /// Every sandbox id any seed in this file uses.
    const ALL_IDS: [&str; 6] = [
        "sbx-one",
        "sbx-two",
        "sbx-prior",
        "sbx-orphan",
        "sbx-new",
        "sbx-extra",
    ];

    fn contents(state: &StateStore) -> Contents {
        let logs = LogStore::new(state.durable().clone(), BOUND);
        Contents {
            stored: state.durable().load().unwrap(),
            logs: ALL_IDS
                .iter()
                .map(|id| ((*id).to_owned(), logs.entries(id, None, 100_000).unwrap()))
                .filter(|(_, events)| !events.is_empty())
                .collect(),
        }
    }

    #[test]
    fn a_full_seed_is_converted_field_by_field_and_survives_a_reopen() {
        let seed = tempfile::tempdir().unwrap();
        full_seed(seed.path());
        let state_dir = tempfile::tempdir().unwrap();
        {
            let state = StateStore::open(state_dir.path()).unwrap();
            let summary = import_seed_dir(seed.path(), &state, BOUND).unwrap();
            assert_eq!(
                summary,
                ImportSummary {
                    active: 2,
                    snapshots: 2,
                    log_events: 3
                }
            );
        }
        let state = StateStore::open(state_dir.path()).unwrap();

        assert_eq!(state.load_active(), expected_active());
        for record in state.load_active() {
            assert_eq!(record.state, SandboxState::Running);
        }

        let snapshots: HashMap<String, SnapshotRecord> = state
            .load_snapshots()
            .into_iter()
            .map(|s| (s.snapshot_id.clone(), s))
            .collect();
        assert_eq!(snapshots.len(), 2);
        let a = &snapshots["snap-a"];
        assert_eq!(a.source_sandbox_id, "sbx-one");
        assert_eq!(a.names, ["nightly", "v1"]);
        assert_eq!(a.location.as_deref(), Some("/var/lib/seed/snap-a.img"));
        assert_eq!(
            a.template_metadata,
            TemplateMetadata {
                envs: HashMap::from([("LANG".to_owned(), "C.UTF-8".to_owned())]),
                start_cmd: Some("python -m http.server".to_owned()),
                ready_cmd: Some("curl -f localhost:8000".to_owned()),
            }
        );
        // The seed's Apple restore data survives whole inside the opaque runtime data.
        let runtime_data: Value =
            serde_json::from_str(a.runtime_data.as_deref().expect("runtime data")).unwrap();
        assert_eq!(
            runtime_data,
            json!({ "seed": {
                "staging_dir": "/var/lib/seed/staging/snap-a",
                "machine_identifier": [1, 2, 3, 255],
                "network_macs": ["02:00:00:00:00:01", "02:00:00:00:00:02"],
            }})
        );
        let b = &snapshots["snap_b.v2"];
        assert_eq!(b.source_sandbox_id, "sbx-two");
        assert!(b.names.is_empty() && b.location.is_none());
        assert!(b.template_metadata.is_empty());
        let runtime_data: Value =
            serde_json::from_str(b.runtime_data.as_deref().expect("runtime data")).unwrap();
        assert_eq!(
            runtime_data,
            json!({ "seed": {
                "staging_dir": null, "machine_identifier": null, "network_macs": null,
            }})
        );

        let logs = LogStore::new(state.durable().clone(), BOUND);
        assert_eq!(
            logs.entries("sbx-one", None, 100).unwrap(),
            [
                log(1, 1_700_000_001, "runtime", "booted"),
                log(2, 1_700_000_002, "envd", "envd ready"),
            ]
        );
        assert_eq!(
            logs.entries("sbx-two", None, 100).unwrap(),
            [log(1, 1_700_000_101, "single-node", "created")]
        );
        // Imported logs continue with the next seq.
        assert_eq!(logs.record("sbx-one", "after import").unwrap(), 3);
    }

    #[test]
    fn logs_are_trimmed_to_the_bound_keeping_the_newest() {
        let seed = tempfile::tempdir().unwrap();
        let events: Vec<Value> = (1..=5)
            .map(|i| {
                json!({ "timestamp_unix_seconds": 100 + i, "message": format!("m{i}"), "source": "runtime" })
            })
            .collect();
        write_json(
            seed.path(),
            "logs.json",
            &json!({ "sbx-one": events, "sbx-two": events[..2] }),
        );
        let state_dir = tempfile::tempdir().unwrap();
        {
            let state = StateStore::open(state_dir.path()).unwrap();
            let summary = import_seed_dir(seed.path(), &state, 3).unwrap();
            assert_eq!(summary.log_events, 3 + 2);
        }
        let state = StateStore::open(state_dir.path()).unwrap();
        let logs = LogStore::new(state.durable().clone(), 3);
        assert_eq!(
            logs.entries("sbx-one", None, 100).unwrap(),
            [
                log(1, 103, "runtime", "m3"),
                log(2, 104, "runtime", "m4"),
                log(3, 105, "runtime", "m5"),
            ]
        );
        assert_eq!(logs.len("sbx-two").unwrap(), 2);
    }

    #[test]
    fn missing_files_count_as_empty() {
        let state_dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(state_dir.path()).unwrap();

        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            import_seed_dir(empty.path(), &state, BOUND).unwrap(),
            ImportSummary::default()
        );
        assert_eq!(contents(&state).stored, StoredState::default());

        let snapshots_only = tempfile::tempdir().unwrap();
        write_json(snapshots_only.path(), "snapshots.json", &seed_snapshots());
        assert_eq!(
            import_seed_dir(snapshots_only.path(), &state, BOUND).unwrap(),
            ImportSummary {
                active: 0,
                snapshots: 2,
                log_events: 0
            }
        );
        let after = contents(&state);
        assert!(after.stored.active.is_empty() && after.logs.is_empty());
        assert_eq!(after.stored.snapshots.len(), 2);

        let active_only = tempfile::tempdir().unwrap();
        write_json(active_only.path(), "active.json", &seed_active());
        let summary = import_seed_dir(active_only.path(), &state, BOUND).unwrap();
        assert_eq!((summary.active, summary.log_events), (2, 0));
        assert_eq!(contents(&state).stored.active, expected_active());
    }

    /// A store that already holds something, so "nothing imported" is checked against real
    /// content.
    fn store_with_prior_content(dir: &Path) -> StateStore {
        let state = StateStore::open(dir).unwrap();
        let prior = tempfile::tempdir().unwrap();
        let mut active = seed_active();
        active[0]["sandbox_id"] = json!("sbx-prior");
        active.as_array_mut().unwrap().truncate(1);
        write_json(prior.path(), "active.json", &active);
        write_json(
            prior.path(),
            "logs.json",
            &json!({ "sbx-prior": [{ "timestamp_unix_seconds": 1, "message": "old", "source": "runtime" }] }),
        );
        import_seed_dir(prior.path(), &state, BOUND).unwrap();
        state
    }

    /// Valid text of each file, and three ways to break each.
    fn corruptions(file: &str) -> Vec<(&'static str, String)> {
        let valid = match file {
            "active.json" => seed_active(),
            "snapshots.json" => seed_snapshots(),
            _ => seed_logs(),
        };
        let text = serde_json::to_string_pretty(&valid).unwrap();
        let mut wrong_type = valid.clone();
        let mut unknown = valid.clone();
        match file {
            "active.json" => {
                wrong_type[0]["started_at_unix_seconds"] = json!("yesterday");
                unknown[1]["color"] = json!("red");
            }
            "snapshots.json" => {
                wrong_type[1]["names"] = json!("nightly");
                unknown[0]["compression"] = json!("zstd");
            }
            _ => {
                wrong_type["sbx-one"][1]["message"] = json!(42);
                unknown["sbx-two"][0]["level"] = json!("info");
            }
        }
        vec![
            ("truncated", text[..text.len() / 2].to_owned()),
            ("wrong type", wrong_type.to_string()),
            ("unknown field", unknown.to_string()),
        ]
    }

    #[test]
    fn a_bad_file_is_named_and_nothing_is_imported() {
        let state_dir = tempfile::tempdir().unwrap();
        let state = store_with_prior_content(state_dir.path());
        let before = contents(&state);
        assert_eq!(before.stored.active.len(), 1);

        for file in ["active.json", "snapshots.json", "logs.json"] {
            for (how, text) in corruptions(file) {
                // The other two files are valid and full of new records.
                let seed = tempfile::tempdir().unwrap();
                full_seed(seed.path());
                let path = seed.path().join(file);
                std::fs::write(&path, &text).unwrap();

                let error = import_seed_dir(seed.path(), &state, BOUND).unwrap_err();
                assert!(
                    matches!(error, Error::InvalidRequest(_)),
                    "{file} {how}: {error:?}"
                );
                let message = error.to_string();
                assert!(
                    message.contains(&path.display().to_string()),
                    "{file} {how}: names the file: {message}"
                );
                assert!(
                    message.contains("nothing was imported"),
                    "{file} {how}: {message}"
                );
                assert_eq!(
                    contents(&state),
                    before,
                    "{file} {how}: the store is unchanged"
                );
            }
        }
        drop(state);
        let reopened = StateStore::open(state_dir.path()).unwrap();
        assert_eq!(contents(&reopened), before, "unchanged on disk too");
    }

    #[test]
    fn a_sandbox_id_firkin_cannot_serve_is_refused_and_nothing_is_imported() {
        let state_dir = tempfile::tempdir().unwrap();
        let state = store_with_prior_content(state_dir.path());
        let before = contents(&state);

        // In active.json, beside a valid record.
        let seed = tempfile::tempdir().unwrap();
        full_seed(seed.path());
        let mut active = seed_active();
        active[1]["sandbox_id"] = json!("sbx_avz_1");
        write_json(seed.path(), "active.json", &active);
        let error = import_seed_dir(seed.path(), &state, BOUND).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
        let message = error.to_string();
        for part in ["active.json", "sbx_avz_1", "DNS", "nothing was imported"] {
            assert!(message.contains(part), "mentions {part:?}: {message}");
        }
        assert_eq!(contents(&state), before);

        // As a key of logs.json.
        let seed = tempfile::tempdir().unwrap();
        full_seed(seed.path());
        let mut logs = seed_logs();
        let events = logs["sbx-two"].clone();
        logs.as_object_mut()
            .unwrap()
            .insert("sbx_avz_1".to_owned(), events);
        write_json(seed.path(), "logs.json", &logs);
        let error = import_seed_dir(seed.path(), &state, BOUND).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
        let message = error.to_string();
        for part in ["logs.json", "sbx_avz_1", "DNS"] {
            assert!(message.contains(part), "mentions {part:?}: {message}");
        }
        assert_eq!(contents(&state), before);

        // A snapshot id that is not a single path component.
        let seed = tempfile::tempdir().unwrap();
        full_seed(seed.path());
        let mut snapshots = seed_snapshots();
        snapshots[1]["snapshot_id"] = json!("../escape");
        write_json(seed.path(), "snapshots.json", &snapshots);
        let error = import_seed_dir(seed.path(), &state, BOUND).unwrap_err();
        assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
        assert!(error.to_string().contains("../escape"), "{error}");
        assert_eq!(contents(&state), before);
    }

    #[test]
    fn importing_the_same_directory_twice_is_a_conflict_and_duplicates_nothing() {
        let seed = tempfile::tempdir().unwrap();
        full_seed(seed.path());
        let state_dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(state_dir.path()).unwrap();
        import_seed_dir(seed.path(), &state, BOUND).unwrap();
        let once = contents(&state);

        let error = import_seed_dir(seed.path(), &state, BOUND).unwrap_err();
        assert!(matches!(error, Error::Conflict(_)), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("sbx-one") && message.contains("nothing was imported"),
            "{message}"
        );
        assert_eq!(contents(&state), once);

        // A seed holding only snapshots clashes on the snapshot id.
        let snapshots_only = tempfile::tempdir().unwrap();
        write_json(snapshots_only.path(), "snapshots.json", &seed_snapshots());
        let error = import_seed_dir(snapshots_only.path(), &state, BOUND).unwrap_err();
        assert!(matches!(error, Error::Conflict(_)), "{error:?}");
        assert!(error.to_string().contains("snap-a"), "{error}");
        assert_eq!(contents(&state), once);

        drop(state);
        assert_eq!(contents(&StateStore::open(state_dir.path()).unwrap()), once);
    }

    /// A seed directory may hold logs of a sandbox that has no active record (here there is no
    /// active.json at all, which the import accepts as empty). Importing it twice must not
    /// double the logs.
    #[test]
    fn importing_logs_without_an_active_record_twice_duplicates_nothing() {
        let seed = tempfile::tempdir().unwrap();
        write_json(
            seed.path(),
            "logs.json",
            &json!({ "sbx-orphan": [
                { "timestamp_unix_seconds": 1, "message": "first", "source": "runtime" },
                { "timestamp_unix_seconds": 2, "message": "second", "source": "runtime" }
            ]}),
        );
        let state_dir = tempfile::tempdir().unwrap();
        let state = StateStore::open(state_dir.path()).unwrap();
        import_seed_dir(seed.path(), &state, BOUND).unwrap();
        let once = contents(&state);
        assert_eq!(once.logs["sbx-orphan"].len(), 2);

        let second = import_seed_dir(seed.path(), &state, BOUND);
        let messages: Vec<String> = contents(&state).logs["sbx-orphan"]
            .iter()
            .map(|event| format!("{} {}", event.seq, event.message))
            .collect();
        assert!(
            matches!(second, Err(Error::Conflict(_))),
            "the second import must be refused as a conflict; it returned {second:?} and the \
             log is now {messages:?}"
        );
        assert_eq!(contents(&state), once);
    }
}
