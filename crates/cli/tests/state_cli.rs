//! `firkin state import` and `firkin state show`, run as the built binary: a seed directory is
//! imported and shown back (text and JSON), and failures (a bad seed, a repeated import, a
//! state directory held by another process) exit non-zero with a `firkin:` message on stderr
//! and leave the state as it was.

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::{Command, Output};

    use serde_json::{Value, json};

    /// Run `firkin` with `args`, isolated from the caller's environment.
    fn firkin(home: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(args)
            .env_remove("FIRKIN_STATE_DIR")
            .env_remove("FIRKIN_LOG")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home)
            .output()
            .expect("run firkin")
    }

    fn stdout(output: &Output) -> String {
        String::from_utf8(output.stdout.clone()).unwrap()
    }

    fn stderr(output: &Output) -> String {
        String::from_utf8(output.stderr.clone()).unwrap()
    }

    fn assert_success(output: &Output) {
        assert!(
            output.status.success(),
            "firkin failed ({}): stdout {:?} stderr {:?}",
            output.status,
            stdout(output),
            stderr(output)
        );
    }

    /// The command failed with one `firkin: ...` message on stderr; returns that message.
    fn assert_failure(output: &Output) -> String {
        let message = stderr(output);
        assert!(
            !output.status.success(),
            "firkin should have failed: stdout {:?} stderr {message:?}",
            stdout(output)
        );
        assert!(
            message.starts_with("firkin: "),
            "stderr starts with `firkin: `: {message:?}"
        );
        message
    }

    fn write_seed(dir: &Path) {
        let active = json!([
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
        ]);
        let snapshots = json!([{
            "snapshot_id": "snap-a",
            "source_sandbox_id": "sbx-one",
            "names": ["nightly"],
            "location": "/var/lib/seed/snap-a.img",
            "staging_dir": "/var/lib/seed/staging",
            "machine_identifier": [1, 2, 3],
            "network_macs": ["02:00:00:00:00:01"],
            "template_metadata": { "envs": {} }
        }]);
        let logs = json!({
            "sbx-one": [
                { "timestamp_unix_seconds": 1_700_000_001, "message": "booted", "source": "runtime" },
                { "timestamp_unix_seconds": 1_700_000_002, "message": "ready", "source": "envd" }
            ],
            "sbx-two": [
                { "timestamp_unix_seconds": 1_700_000_101, "message": "created", "source": "runtime" }
            ]
        });
        for (name, value) in [
            ("active.json", active),
            ("snapshots.json", snapshots),
            ("logs.json", logs),
        ] {
            std::fs::write(dir.join(name), serde_json::to_vec_pretty(&value).unwrap()).unwrap();
        }
    }

    fn show_json(home: &Path, state_dir: &Path) -> Value {
        let output = firkin(
            home,
            &[
                "state",
                "--state-dir",
                state_dir.to_str().unwrap(),
                "show",
                "--json",
            ],
        );
        assert_success(&output);
        serde_json::from_str(stdout(&output).trim()).expect("show --json prints one JSON value")
    }

    fn empty_state(state_dir: &Path) -> Value {
        json!({ "stateDir": state_dir, "sandboxes": [], "snapshots": [] })
    }

    #[test]
    fn import_then_show_lists_what_the_seed_held() {
        let home = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        write_seed(seed.path());
        let state_dir = home.path().join("state");
        let state = state_dir.to_str().unwrap();

        let output = firkin(
            home.path(),
            &[
                "state",
                "--state-dir",
                state,
                "import",
                seed.path().to_str().unwrap(),
            ],
        );
        assert_success(&output);
        assert_eq!(
            stdout(&output).trim(),
            format!("imported 2 sandboxes, 1 snapshots and 3 log events into {state}")
        );

        assert_eq!(
            show_json(home.path(), &state_dir),
            json!({
                "stateDir": state,
                "sandboxes": [
                    {
                        "sandboxID": "sbx-one",
                        "templateID": "base",
                        "state": "running",
                        "startedAtUnixMs": 1_700_000_000_000_i64,
                        "endAtUnixMs": 1_700_000_300_000_i64,
                        "logEvents": 2
                    },
                    {
                        "sandboxID": "sbx-two",
                        "templateID": "python",
                        "state": "running",
                        "startedAtUnixMs": 1_700_000_100_000_i64,
                        "endAtUnixMs": 1_700_003_700_000_i64,
                        "logEvents": 1
                    }
                ],
                "snapshots": ["snap-a"]
            })
        );

        let text = firkin(home.path(), &["state", "--state-dir", state, "show"]);
        assert_success(&text);
        let text = stdout(&text);
        assert!(
            text.contains(&format!("state directory: {state}")),
            "{text}"
        );
        assert!(
            text.contains("sandboxes: 2") && text.contains("snapshots: 1"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("sbx-one") && l.contains("running") && l.contains("logs 2")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("snap-a") && l.contains("from sbx-one")),
            "{text}"
        );
    }

    #[test]
    fn import_json_summary_and_state_dir_after_the_subcommand_or_from_the_environment() {
        let home = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        write_seed(seed.path());
        let state_dir = home.path().join("state");
        let state = state_dir.to_str().unwrap();

        // `--state-dir` is global to `state`, so it may follow the subcommand.
        let output = firkin(
            home.path(),
            &[
                "state",
                "import",
                seed.path().to_str().unwrap(),
                "--json",
                "--state-dir",
                state,
            ],
        );
        assert_success(&output);
        let summary: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(
            summary,
            json!({ "active": 2, "snapshots": 1, "logEvents": 3 })
        );

        let from_env = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(["state", "show", "--json"])
            .env("FIRKIN_STATE_DIR", &state_dir)
            .env("HOME", home.path())
            .output()
            .unwrap();
        assert_success(&from_env);
        let shown: Value = serde_json::from_str(stdout(&from_env).trim()).unwrap();
        assert_eq!(shown["stateDir"], json!(state));
        assert_eq!(shown["sandboxes"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_bad_seed_fails_with_a_message_and_imports_nothing() {
        let home = tempfile::tempdir().unwrap();
        let state_dir = home.path().join("state");
        let state = state_dir.to_str().unwrap();

        // Into an empty state directory: every file valid except the last one read.
        let seed = tempfile::tempdir().unwrap();
        write_seed(seed.path());
        std::fs::write(seed.path().join("logs.json"), b"{\"sbx-one\": [").unwrap();
        let seed_path = seed.path().to_str().unwrap();
        let output = firkin(
            home.path(),
            &["state", "--state-dir", state, "import", seed_path],
        );
        let message = assert_failure(&output);
        assert!(
            message.contains("logs.json"),
            "names the bad file: {message}"
        );
        assert!(message.contains("nothing was imported"), "{message}");
        assert!(stdout(&output).is_empty(), "{:?}", stdout(&output));
        assert!(
            !state_dir.exists(),
            "a bad seed must leave no state directory behind"
        );
        assert_eq!(show_json(home.path(), &state_dir), empty_state(&state_dir));

        // Into a state directory with content, an id firkin cannot serve.
        let good = tempfile::tempdir().unwrap();
        write_seed(good.path());
        assert_success(&firkin(
            home.path(),
            &[
                "state",
                "--state-dir",
                state,
                "import",
                good.path().to_str().unwrap(),
            ],
        ));
        let before = show_json(home.path(), &state_dir);
        let bad_id = tempfile::tempdir().unwrap();
        std::fs::write(
            bad_id.path().join("active.json"),
            br#"[{"sandbox_id": "sbx_avz_1", "template_id": "base", "client_id": "c",
                 "envd_access_token": null, "started_at_unix_seconds": 1,
                 "end_at_unix_seconds": 2, "resources": {"vcpus": 1, "memory_bytes": 1},
                 "runtime_attached": false}]"#,
        )
        .unwrap();
        let output = firkin(
            home.path(),
            &[
                "state",
                "--state-dir",
                state,
                "import",
                bad_id.path().to_str().unwrap(),
            ],
        );
        let message = assert_failure(&output);
        assert!(message.contains("sbx_avz_1"), "{message}");
        assert_eq!(show_json(home.path(), &state_dir), before);
    }

    #[test]
    fn importing_the_same_seed_twice_fails_and_duplicates_nothing() {
        let home = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        write_seed(seed.path());
        let state_dir = home.path().join("state");
        let args = [
            "state",
            "--state-dir",
            state_dir.to_str().unwrap(),
            "import",
            seed.path().to_str().unwrap(),
        ];
        assert_success(&firkin(home.path(), &args));
        let once = show_json(home.path(), &state_dir);

        let message = assert_failure(&firkin(home.path(), &args));
        assert!(
            message.contains("already in the state database"),
            "{message}"
        );
        assert_eq!(show_json(home.path(), &state_dir), once);
    }

    #[test]
    fn a_state_directory_in_use_is_refused() {
        let home = tempfile::tempdir().unwrap();
        let seed = tempfile::tempdir().unwrap();
        write_seed(seed.path());
        let state_dir = home.path().join("state");
        let state = state_dir.to_str().unwrap();

        let holder = firkin_single_node::StateStore::open(&state_dir).unwrap();
        for args in [
            vec!["state", "--state-dir", state, "show"],
            vec![
                "state",
                "--state-dir",
                state,
                "import",
                seed.path().to_str().unwrap(),
            ],
        ] {
            let message = assert_failure(&firkin(home.path(), &args));
            assert!(
                message.contains("in use by another firkin process"),
                "{args:?}: {message}"
            );
        }
        assert!(holder.load_active().is_empty(), "nothing was imported");
        drop(holder);
        assert_eq!(show_json(home.path(), &state_dir), empty_state(&state_dir));
    }
}
