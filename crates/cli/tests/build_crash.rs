//! A template build interrupted by a daemon crash: the daemon is SIGKILLed while a build's
//! `RUN` step runs in its build sandbox; the next daemon over the same state marks the build
//! failed (with the reason), deletes the build sandbox it re-adopted, takes no tag for it, and
//! leaves no half-made layer in the image store. Needs root, the static envd
//! (`scripts/build-envd`) and Debian's static busybox (scripts/setup installs both).

mod common;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    use super::common::{self, envd};

    use serde_json::{Value, json};

    /// The daemon; killed (SIGTERM, then waited for) on drop.
    struct Daemon {
        child: Child,
        url: String,
    }

    impl Drop for Daemon {
        fn drop(&mut self) {
            if self.child.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status();
                let _ = self.child.wait();
            }
        }
    }

    fn start_daemon(state: &Path, port: u16) -> Daemon {
        let child = common::serve(
            state,
            port,
            &[
                "--warm-pool",
                "0",
                "--warm-pool-per-template",
                "0",
                "--slot-range",
                "10.217.0.0/16",
                "--disk-size-mb",
                "0",
            ],
        );
        Daemon {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    fn call(daemon: &Daemon, key: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let request = ureq::request(method, &format!("{}{path}", daemon.url)).set("X-API-KEY", key);
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        }
        .unwrap_or_else(|error| panic!("{method} {path}: {error}"));
        let text = response.into_string().unwrap();
        if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// A `docker save` archive of busybox with `sh`, `sleep` and a `/bin/bash` that hands
    /// over to `sh` (the builder runs steps with bash, as E2B's does).
    fn busybox_archive(dir: &Path) -> PathBuf {
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        for applet in ["sh", "sleep", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(root.join("bin/bash"), "#!/bin/sh\nexec /bin/sh \"$@\"\n").unwrap();
        std::fs::set_permissions(
            root.join("bin/bash"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program)
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{program}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        run(
            "tar",
            &["--numeric-owner", "-cf", "layer.tar", "-C", "root", "."],
        );
        let digest = run("sha256sum", &["layer.tar"]);
        let digest = digest.split_whitespace().next().unwrap();
        let config = json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{digest}")] },
        });
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let manifest =
            json!([{ "Config": "config.json", "RepoTags": ["busy:1"], "Layers": ["layer.tar"] }]);
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        run(
            "tar",
            &[
                "-cf",
                "image.tar",
                "manifest.json",
                "config.json",
                "layer.tar",
            ],
        );
        dir.join("image.tar")
    }

    #[test]
    fn a_build_cut_short_by_a_daemon_crash_is_failed_and_cleaned_up_by_the_next_daemon() {
        let test = "build crash test";
        if !firkin_test_support::root_or_skip(test) {
            return;
        }
        for (needed, why) in [
            (envd(), "the static envd (scripts/build-envd)"),
            (
                PathBuf::from("/bin/busybox"),
                "busybox-static (scripts/setup)",
            ),
        ] {
            if !needed.exists() {
                return firkin_test_support::skip(test, &format!("needs {why}"));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let archive = busybox_archive(dir.path());
        let port = common::free_port();
        let mut daemon = start_daemon(&state, port);
        let key = std::fs::read_to_string(state.join("api-key")).unwrap();
        let key = key.trim();
        let imported = Command::new(env!("CARGO_BIN_EXE_firkin"))
            .arg("template")
            .arg("--state-dir")
            .arg(&state)
            .arg("import")
            .arg(&archive)
            .args(["--name", "busy:v1"])
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "{}",
            String::from_utf8_lossy(&imported.stderr)
        );

        let request = call(
            &daemon,
            key,
            "POST",
            "/v3/templates",
            Some(json!({"name": "crashy"})),
        );
        let (template, build) = (
            request["templateID"].as_str().unwrap().to_owned(),
            request["buildID"].as_str().unwrap().to_owned(),
        );
        call(
            &daemon,
            key,
            "POST",
            &format!("/v2/templates/{template}/builds/{build}"),
            Some(json!({
                "fromTemplate": "busy:v1",
                "steps": [{"type": "RUN", "args": ["echo started; sleep 60"], "force": false}],
            })),
        );
        // The step runs once its output is in the build's log.
        let status = |daemon: &Daemon| {
            call(
                daemon,
                key,
                "GET",
                &format!("/templates/{template}/builds/{build}/status"),
                None,
            )
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = status(&daemon);
            let logged = now["logEntries"].as_array().unwrap();
            if logged.iter().any(|e| e["message"] == "started") {
                break;
            }
            assert_eq!(now["status"], "building", "{now}");
            assert!(Instant::now() < deadline, "the step did not start: {now}");
            std::thread::sleep(Duration::from_millis(50));
        }

        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        let daemon = start_daemon(&state, port);
        let after = status(&daemon);
        assert_eq!(after["status"], "error", "{after}");
        assert_eq!(
            after["reason"]["message"],
            "the daemon stopped during the build"
        );
        let sandboxes = call(&daemon, key, "GET", "/v2/sandboxes", None);
        assert_eq!(sandboxes, json!([]), "the build sandbox was deleted");
        let tags = call(&daemon, key, "GET", "/templates/crashy/tags", None);
        assert_eq!(tags, json!([]), "a failed build takes no tag");
        let scratch: Vec<_> = std::fs::read_dir(state.join("images/tmp"))
            .unwrap()
            .collect();
        assert!(scratch.is_empty(), "no half-made layer: {scratch:?}");
        // The build sandbox's directory goes in the background, soon.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(state.join("sandboxes"))
            .unwrap()
            .next()
            .is_some()
        {
            assert!(Instant::now() < deadline, "a sandbox directory was left");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
