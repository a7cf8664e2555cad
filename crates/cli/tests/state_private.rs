//! Nothing under a real daemon's state directory is readable by another host user: the
//! unprivileged account `user` lists no directory and reads no file there (API key, state
//! database, a sandbox's files), on the first run and after the daemon is SIGKILLed and
//! started again over the same state. Needs root, the static envd (`scripts/build-envd`),
//! the host account `user` (scripts/setup) and `runuser`; skips with a message otherwise.

mod common;

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::common::{self, envd};

    const OTHER_USER: &str = "user";

    fn skip_reason() -> Option<String> {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        if uid.ok() != Some(0) {
            return Some("needs root".into());
        }
        if !envd().exists() {
            return Some(format!(
                "{} not built (scripts/build-envd)",
                envd().display()
            ));
        }
        let has_user = Command::new("id")
            .arg(OTHER_USER)
            .output()
            .is_ok_and(|out| out.status.success());
        if !has_user {
            return Some(format!("no host account {OTHER_USER:?} (scripts/setup)"));
        }
        if Command::new("runuser").arg("--help").output().is_err() {
            return Some("no runuser".into());
        }
        None
    }

    /// A running daemon; on drop (a failed test too) it is stopped after its sandboxes
    /// are killed, so that nothing outlives the test.
    struct Daemon<'a> {
        child: Child,
        state: &'a Path,
        port: u16,
    }

    impl Drop for Daemon<'_> {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            let url = format!("http://127.0.0.1:{}", self.port);
            let sandbox = |args: &[&str]| {
                Command::new(env!("CARGO_BIN_EXE_firkin"))
                    .arg("sandbox")
                    .args(args)
                    .env("FIRKIN_URL", &url)
                    .env("FIRKIN_STATE_DIR", self.state)
                    .output()
            };
            if let Ok(listed) = sandbox(&["ls"]) {
                for line in String::from_utf8_lossy(&listed.stdout).lines().skip(1) {
                    if let Some(id) = line.split_whitespace().next() {
                        let _ = sandbox(&["kill", id]);
                    }
                }
            }
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }

    /// A daemon over `state`, returned once it listens.
    fn start_daemon(state: &Path, port: u16) -> Daemon<'_> {
        let child = common::serve(
            state,
            port,
            &["--warm-pool", "0", "--slot-range", "10.216.0.0/16"],
        );
        Daemon { child, state, port }
    }

    fn firkin(state: &Path, port: u16, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("sandbox")
            .args(args)
            .env("FIRKIN_URL", format!("http://127.0.0.1:{port}"))
            .env("FIRKIN_STATE_DIR", state)
            .env_remove("FIRKIN_API_KEY")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "firkin sandbox {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every directory and file under `dir` (not following symlinks; a mount point, such as
    /// an idmapped view of the host's /usr, is listed but not entered).
    fn walk(dir: &Path, mounts: &[PathBuf], found: &mut Vec<PathBuf>) {
        found.push(dir.to_owned());
        if mounts.iter().any(|mount| mount == dir) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                continue;
            };
            if meta.is_dir() {
                walk(&entry.path(), mounts, found);
            } else if meta.is_file() {
                found.push(entry.path());
            }
        }
    }

    /// The mount points of this mount namespace (mountinfo's fifth field).
    fn mount_points() -> Vec<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(PathBuf::from))
            .collect()
    }

    /// As the other user: every path under `state` it could list or read.
    fn readable_by_other_user(state: &Path) -> Vec<String> {
        let mut paths = Vec::new();
        walk(state, &mount_points(), &mut paths);
        let mut shell = Command::new("runuser")
            .args(["-u", OTHER_USER, "--", "sh", "-c"])
            .arg(
                r#"while IFS= read -r p; do
                  if [ -d "$p" ]; then ls "$p" >/dev/null 2>&1 && echo "listed $p"
                  else cat "$p" >/dev/null 2>&1 && echo "read $p"; fi
                done; exit 0"#,
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = shell.stdin.take().unwrap();
        for path in &paths {
            writeln!(stdin, "{}", path.display()).unwrap();
        }
        drop(stdin);
        let out = shell.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(paths.len() > 5, "too little to check: {paths:?}");
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn another_host_user_reads_nothing_of_the_state_before_and_after_a_crash() {
        if let Some(reason) = skip_reason() {
            return firkin_test_support::skip("state privacy test", &reason);
        }
        let state = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let mut daemon = start_daemon(state.path(), port);
        let id = firkin(state.path(), port, &["create"]).trim().to_owned();
        firkin(
            state.path(),
            port,
            &[
                "exec",
                &id,
                "--",
                "sh",
                "-c",
                "echo top-secret > ~/secret.txt",
            ],
        );
        // The sandbox's directory bears its id, or the name of the warm sandbox it was
        // handed out as.
        let secret = std::fs::read_dir(state.path().join("sandboxes"))
            .unwrap()
            .map(|entry| entry.unwrap().path().join("upper/home/user/secret.txt"))
            .find(|path| path.exists());
        assert!(secret.is_some(), "the sandbox's file is not where expected");
        for file in ["api-key", "state.db"] {
            assert!(state.path().join(file).exists(), "no {file}");
        }
        assert_eq!(readable_by_other_user(state.path()), Vec::<String>::new());

        // SIGKILL: nothing is tidied up on the way out; the next start must still keep
        // everything private (and the sandbox running).
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        let mut daemon = start_daemon(state.path(), port);
        assert_eq!(
            firkin(
                state.path(),
                port,
                &["exec", &id, "--", "cat", "secret.txt"]
            ),
            "top-secret\n"
        );
        assert_eq!(readable_by_other_user(state.path()), Vec::<String>::new());

        firkin(state.path(), port, &["kill", &id]);
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.child.id().to_string()])
            .status();
        assert!(daemon.child.wait().unwrap().success());
        assert!(
            !state.path().join("sandboxes").join(&id).exists(),
            "the sandbox's directory was left behind"
        );
    }
}
