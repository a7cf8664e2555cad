//! Sandboxes outlive the daemon. A child process (this test binary, re-run as the "daemon")
//! creates a running sandbox, a paused one, and a half-made one (the driver built it, no
//! record was committed), then is SIGKILLed. A new backend over the same state re-adopts the
//! first two (commands work, the paused one resumes) and reclaims the third. Needs root,
//! nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common::{self, run_as};
    use std::io::{BufRead, BufReader};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use firkin_single_node::{
        PortRegistry, SandboxResources, SandboxState, SingleNodeCreateRequest,
    };

    const RANGE: &str = "10.206.0.0/16";
    const CHILD_STATE: &str = "FIRKIN_RESTART_TEST_STATE";

    fn request() -> SingleNodeCreateRequest {
        SingleNodeCreateRequest::new("base", SandboxResources::from_mib(1, 128))
    }

    /// The daemon that gets killed: runs only when the parent test starts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restart_daemon_child() {
        let Some(state) = std::env::var_os(CHILD_STATE).map(PathBuf::from) else {
            return;
        };
        let config =
            common::driver_config(&state, RANGE, env!("CARGO_BIN_EXE_firkin-sandbox-init"));
        let backend = common::backend_at(&state, config).await;
        let running = backend.create(request()).await.unwrap();
        let paused = backend.create(request()).await.unwrap();
        backend.pause(paused.sandbox_id()).await.unwrap();
        // Built by the driver, never recorded: what a daemon killed inside create leaves.
        let half = request();
        let made = backend
            .driver()
            .create(&half, &PortRegistry::default())
            .await
            .unwrap();
        let handle: serde_json::Value =
            serde_json::from_str(&made.runtime_handle.unwrap().0).unwrap();
        // Its cgroup and directory name: the id, or the warm sandbox's it was handed out as.
        let half_name = handle["cgroup"]["name"].as_str().unwrap();
        println!(
            "READY {} {} {half_name} {} {} {}",
            running.sandbox_id(),
            paused.sandbox_id(),
            common::host_pid1(&running),
            common::host_pid1(&paused),
            handle["pid1"],
        );
        // Wait for the SIGKILL.
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sandboxes_survive_a_killed_daemon_and_are_readopted() {
        if std::env::var_os(CHILD_STATE).is_some() {
            return;
        }
        let Some(harness) = common::harness(
            "restart test",
            RANGE,
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::restart_daemon_child", "--nocapture"])
            .env(CHILD_STATE, harness.state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let ready = stdout
            .lines()
            .map_while(Result::ok)
            .find(|line| line.starts_with("READY "));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let ready = ready.expect("the daemon child died before it was ready");
        let fields: Vec<&str> = ready.split_whitespace().skip(1).collect();
        let [running, paused, half, pids @ ..] = fields.as_slice() else {
            panic!("bad READY line: {ready}");
        };
        let pids: Vec<u32> = pids.iter().map(|pid| pid.parse().unwrap()).collect();
        let (running, paused, half) = (*running, *paused, *half);

        // The new daemon.
        let backend = harness.backend().await;
        let report = backend.startup_reconciliation();
        let mut adopted = report.adopted.clone();
        adopted.sort();
        let mut expected = vec![running.to_owned(), paused.to_owned()];
        expected.sort();
        assert_eq!(adopted, expected, "{report:?}");
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        assert!(
            !layout.firkin_cgroups().unwrap().contains(&half.to_owned()),
            "the half-made sandbox's cgroup was not reclaimed"
        );
        assert!(
            !harness.state.path().join("sandboxes").join(half).exists(),
            "the half-made sandbox's directory was not reclaimed"
        );
        assert!(
            std::fs::read_to_string(format!("/proc/{}/cmdline", pids[2]))
                .map_or(true, |cmd| !cmd.contains("envd")),
            "the half-made sandbox's envd still runs"
        );

        let sh = |id: &str, script: &str| {
            let session = backend.get(id).unwrap();
            let token = session.record().envd_access_token.clone().unwrap();
            let envd = backend.ports().target(id, 49983).unwrap();
            run_as(envd, &token, None, script).0
        };
        assert_eq!(backend.get(running).unwrap().state(), SandboxState::Running);
        assert_eq!(sh(running, "echo still here").trim(), "still here");
        // Its disk stayed mounted while no daemon ran: `/` is still its own disk.
        let size = sh(running, "df -B1M --output=size / | tail -1");
        assert!(
            size.trim()
                .parse::<u64>()
                .is_ok_and(|mib| mib <= firkin_linux::driver::DEFAULT_DISK_SIZE_MB),
            "df / in the re-adopted sandbox: {size:?}"
        );
        assert_eq!(backend.get(paused).unwrap().state(), SandboxState::Paused);
        backend.resume(paused, None).await.unwrap();
        assert_eq!(sh(paused, "echo resumed").trim(), "resumed");

        for id in [running, paused] {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        let ids = [running, paused, half].map(str::to_owned);
        harness.assert_nothing_left(&ids, &pids).await;
    }
}
