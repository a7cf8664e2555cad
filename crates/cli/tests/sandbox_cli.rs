//! `firkin serve` and the `firkin sandbox` client against it, as built binaries: create with
//! metadata and env, ls, exec (streamed output, the command's exit code), pause, resume,
//! logs, kill; a second kill and a wrong API key fail with a `firkin:` message. Needs root
//! and the static envd (`scripts/build-envd`); skips with a message otherwise.

mod common;

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Output, Stdio};

    use super::common::{self, envd};

    struct Daemon {
        child: Child,
        url: String,
        key: String,
        state: tempfile::TempDir,
    }

    impl Drop for Daemon {
        /// SIGTERM, as a user stops it: the daemon releases its spare network slots.
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }

    fn start_daemon() -> Option<Daemon> {
        if !firkin_test_support::root_or_skip("sandbox CLI test") {
            return None;
        }
        if !envd().exists() {
            firkin_test_support::skip(
                "sandbox CLI test",
                &format!("{} not built (scripts/build-envd)", envd().display()),
            );
            return None;
        }
        let state = tempfile::tempdir().unwrap();
        // A private state directory (as mkdtemp makes it): the daemon must still work.
        std::fs::set_permissions(
            state.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let port = common::free_port();
        // Settings from a file, under the flags: its listen address is overridden by --listen,
        // its API key and its sandbox limit are used.
        let config = state.path().join("firkin.toml");
        std::fs::write(
            &config,
            "listen = \"127.0.0.1:1\"\napi-key = \"key-from-the-file\"\nmax-sandboxes = 1\n",
        )
        .unwrap();
        // It holds the key: only its owner may read it.
        std::fs::set_permissions(
            &config,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(state.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--envd-bin")
            .arg(envd())
            .env_remove("FIRKIN_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok);
        let url = lines
            .by_ref()
            .find_map(|line| line.strip_prefix("export E2B_API_URL=").map(str::to_owned))
            .expect("the daemon printed no E2B_API_URL");
        // A key it was given, the daemon does not print; it names where it came from.
        let key_line = lines
            .find(|line| line.contains("E2B_API_KEY"))
            .expect("the daemon said nothing about E2B_API_KEY");
        assert!(!key_line.contains("key-from-the-file"), "{key_line}");
        assert!(key_line.contains("settings file"), "{key_line}");
        let key = "key-from-the-file".to_owned();
        assert_eq!(
            url,
            format!("http://127.0.0.1:{port}"),
            "the flag must win over the file"
        );
        Some(Daemon {
            child,
            url,
            key,
            state,
        })
    }

    fn firkin(daemon: &Daemon, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("sandbox")
            .args(args)
            .env("FIRKIN_URL", &daemon.url)
            .env("FIRKIN_STATE_DIR", daemon.state.path())
            .env("FIRKIN_API_KEY", &daemon.key)
            .output()
            .unwrap()
    }

    fn ok(output: &Output) -> String {
        assert!(
            output.status.success(),
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout.clone()).unwrap()
    }

    #[test]
    fn the_cli_drives_a_real_daemon() {
        let Some(daemon) = start_daemon() else {
            return;
        };
        let id = ok(&firkin(
            &daemon,
            &[
                "create",
                "--metadata",
                "team=cli",
                "--env",
                "GREETING=hi there",
            ],
        ))
        .trim()
        .to_owned();
        assert_eq!(id.len(), 20, "{id}");
        // The daemon keeps itself out of the OOM killer's reach where it may (with
        // CAP_SYS_RESOURCE); its sandboxes do not inherit that (the limits tests check what
        // they get). Without the capability it keeps the value it was started with, ours.
        let adj = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
        use firkin_linux::sandbox::spawn::{OomProtection, envd_oom_protection};
        let expected = match envd_oom_protection() {
            OomProtection::EnvdLowered => "-1000\n".to_owned(),
            OomProtection::ChildrenRaised => adj(std::process::id()),
        };
        assert_eq!(adj(daemon.child.id()), expected);
        // The file's `max-sandboxes = 1` holds: a second sandbox is refused, saying why, and
        // `firkin doctor` asks the daemon and tells.
        let refused = firkin(&daemon, &["create"]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("429") && stderr.contains("the limit of 1 sandboxes is reached"),
            "{stderr}"
        );
        let doctor = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(["doctor", "--url", &daemon.url])
            .output()
            .unwrap();
        let report = ok(&doctor);
        let line = report
            .lines()
            .find(|line| line.contains("daemon at"))
            .unwrap_or_else(|| panic!("no daemon line in:\n{report}"));
        assert!(
            line.contains("1 admitted (0 paused) of 1;")
                && line.contains("refused: max_sandboxes 1")
                && line.contains("last refusal: sandbox")
                && line.contains("(setting max-sandboxes)"),
            "{line}"
        );
        // With the daemon and a sandbox running, no command line shows the API key.
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&daemon.key),
                "process {:?} shows the API key",
                entry.file_name()
            );
        }
        let listed: serde_json::Value =
            serde_json::from_str(&ok(&firkin(&daemon, &["--json", "ls"]))).unwrap();
        assert_eq!(listed[0]["sandboxID"], id.as_str());
        assert_eq!(listed[0]["metadata"]["team"], "cli");

        let out = firkin(
            &daemon,
            &["exec", &id, "--", "sh", "-c", "echo $GREETING; exit 7"],
        );
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi there\n");
        assert_eq!(
            ok(&firkin(
                &daemon,
                &["exec", &id, "--user", "root", "--", "whoami"]
            )),
            "root\n"
        );

        ok(&firkin(&daemon, &["pause", &id]));
        assert!(ok(&firkin(&daemon, &["ls"])).contains("paused"));
        ok(&firkin(&daemon, &["resume", &id]));
        assert_eq!(
            ok(&firkin(&daemon, &["exec", &id, "--", "echo", "back"])),
            "back\n"
        );
        let logs = ok(&firkin(&daemon, &["logs", &id]));
        assert!(
            logs.contains("paused") && logs.contains("resumed"),
            "{logs}"
        );

        ok(&firkin(&daemon, &["kill", &id]));
        let again = firkin(&daemon, &["kill", &id]);
        assert!(!again.status.success());
        assert!(String::from_utf8_lossy(&again.stderr).contains("firkin: DELETE"));
        let wrong_key = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(["sandbox", "ls"])
            .env("FIRKIN_URL", &daemon.url)
            .env("FIRKIN_API_KEY", "wrong")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&wrong_key.stderr).contains("401"));
        // Nor does the client take a key on its command line.
        let on_argv = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(["sandbox", "ls", "--api-key", &daemon.key])
            .env("FIRKIN_URL", &daemon.url)
            .env_remove("FIRKIN_API_KEY")
            .output()
            .unwrap();
        assert!(!on_argv.status.success());
        let stderr = String::from_utf8_lossy(&on_argv.stderr);
        assert!(stderr.contains("--api-key is not accepted"), "{stderr}");
        assert_eq!(
            ok(&firkin(&daemon, &["ls"])).lines().count(),
            1,
            "only the header left"
        );
    }

    #[test]
    fn serve_refuses_an_api_key_on_its_command_line() {
        let state = tempfile::tempdir().unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("serve")
            .arg("--state-dir")
            .arg(state.path())
            .args(["--api-key", "visible-to-ps"])
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("--api-key is not accepted") && stderr.contains("FIRKIN_API_KEY"),
            "{stderr}"
        );
        assert!(
            std::fs::read_dir(state.path()).unwrap().next().is_none(),
            "a refused start wrote to the state directory"
        );
    }
}
