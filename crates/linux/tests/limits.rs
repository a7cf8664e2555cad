//! Resource limits of real sandboxes: a memory hog is OOM-killed inside its sandbox, a fork
//! bomb stops at the PID limit, and meanwhile the sandbox's envd, a neighbour sandbox and the
//! host keep working. envd is the OOM killer's last choice: lowered to -999 with its commands
//! at 0, or, where the driver lacks `CAP_SYS_RESOURCE`, left at the driver's value with its
//! commands raised to 500. Needs root, nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common::{self, run_as};

    use firkin_linux::sandbox::spawn::{
        ENVD_OOM_SCORE_ADJ, OomProtection, UNPROTECTED_CHILD_OOM_SCORE_ADJ, envd_oom_protection,
    };

    const PIDS_MAX: u64 = 64;

    /// `oom_score_adj` of a host process, from the host.
    fn oom_score_adj(pid: u32) -> i32 {
        let text = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
            .unwrap_or_else(|error| panic!("oom_score_adj of {pid}: {error}"));
        text.trim()
            .parse()
            .unwrap_or_else(|error| panic!("oom_score_adj of {pid}: {text:?}: {error}"))
    }

    /// State and parent's pid of a host process (`None`: it is gone).
    fn state_and_parent(pid: u32) -> Option<(char, u32)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the parenthesised command name: state, then the parent's pid.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?.chars().next()?;
        Some((state, fields.next()?.parse().ok()?))
    }

    /// Whether `pid` runs (is neither gone nor a zombie).
    fn runs(pid: u32) -> bool {
        state_and_parent(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
    }

    /// Host pids of the processes whose parent is `pid`.
    fn children(pid: u32) -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|child| state_and_parent(*child).is_some_and(|(_, parent)| parent == pid))
            .collect()
    }

    /// Forks sleeping children until the kernel refuses; prints how many and the errno.
    const FORK_BOMB: &str = r#"python3 -c '
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print(n, e.errno)
'"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_hog_and_fork_bomb_stay_inside_their_sandbox() {
        let Some(mut harness) = common::harness(
            "limits test",
            "10.205.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        if !std::path::Path::new("/usr/bin/python3").exists() {
            firkin_test_support::skip("limits test", "the host has no python3 for the sandbox");
            return;
        }
        harness.config.pids_max = PIDS_MAX;
        let backend = harness.backend().await;
        let mut sandboxes = Vec::new();
        for _ in 0..2 {
            let made = common::create_base(&backend, 1, 64).await;
            sandboxes.push((made.id, made.envd, made.token, made.session));
        }
        let (hog_id, hog, hog_token, _) = &sandboxes[0];
        let (_, neighbour, neighbour_token, _) = &sandboxes[1];
        let sh = |envd, token: &str, script: &str| run_as(envd, token, None, script).0;

        // envd (PID 1 and the server it forked) is the OOM killer's last choice. With
        // CAP_SYS_RESOURCE the driver lowers it to -999 and envd starts what it runs, as the
        // default user or as root, at the neutral 0. Without, the driver cannot lower envd's
        // value (it inherits ours) and has envd raise its commands above it instead.
        let protected = rustix::thread::capabilities(None)
            .unwrap()
            .effective
            .contains(rustix::thread::CapabilitySet::SYS_RESOURCE);
        let ours = oom_score_adj(std::process::id());
        let (envd_expected, command_expected) = if protected {
            assert_eq!(envd_oom_protection(), OomProtection::EnvdLowered);
            (ENVD_OOM_SCORE_ADJ, 0)
        } else {
            assert_eq!(envd_oom_protection(), OomProtection::ChildrenRaised);
            eprintln!(
                "limits test: no CAP_SYS_RESOURCE: expecting envd at ours ({ours}), its \
                 commands at {UNPROTECTED_CHILD_OOM_SCORE_ADJ}"
            );
            assert!(
                ours < UNPROTECTED_CHILD_OOM_SCORE_ADJ,
                "this test runs at oom_score_adj {ours}: envd would not be below its commands"
            );
            (ours, UNPROTECTED_CHILD_OOM_SCORE_ADJ)
        };
        let mut envds = Vec::new();
        for (id, envd, token, sandbox) in &sandboxes {
            let pid1 = common::host_pid1(sandbox);
            assert_eq!(oom_score_adj(pid1), envd_expected, "{id}: PID 1 {pid1}");
            let servers = children(pid1);
            assert!(
                !servers.is_empty(),
                "{id}: PID 1 {pid1} has no server child"
            );
            for &server in &servers {
                assert_eq!(
                    oom_score_adj(server),
                    envd_expected,
                    "{id}: envd server {server}"
                );
            }
            let script = "cat /proc/self/oom_score_adj";
            let out = sh(*envd, token, script);
            assert_eq!(
                out.trim().parse::<i32>().ok(),
                Some(command_expected),
                "{id}: a command: {out:?}"
            );
            let (out, _) = run_as(*envd, token, Some("root"), script);
            assert_eq!(
                out.trim().parse::<i32>().ok(),
                Some(command_expected),
                "{id}: a command as root: {out:?}"
            );
            envds.push((id.clone(), pid1, servers));
        }

        // 512 MiB written into a 64 MiB sandbox: the kernel kills the writer, not envd.
        let out = sh(
            *hog,
            hog_token,
            "python3 -c 'x = bytearray(512 << 20); x[::4096] = b\"y\" * len(x[::4096])'; echo rc=$?",
        );
        assert_eq!(
            out.trim(),
            "rc=137",
            "{hog_id}: the hog was not SIGKILLed: {out}"
        );
        // The same envd processes, not a restarted or half-dead envd, answer afterwards.
        for (id, pid1, servers) in &envds {
            assert!(runs(*pid1), "{id}: PID 1 {pid1} did not survive the hog");
            for &server in servers {
                assert!(
                    runs(server)
                        && state_and_parent(server).map(|(_, parent)| parent) == Some(*pid1),
                    "{id}: envd server {server} did not survive the hog"
                );
            }
        }
        assert_eq!(sh(*hog, hog_token, "echo alive").trim(), "alive");
        assert_eq!(sh(*neighbour, neighbour_token, "echo fine").trim(), "fine");
        // Not silently: the hog's log says the kernel killed one of its processes, and the
        // neighbour's says nothing of the kind.
        let fresh = backend.check_oom_kills().await;
        assert!(
            matches!(fresh.as_slice(), [(id, n)] if id == hog_id && *n >= 1),
            "{fresh:?}"
        );
        let logged = backend.sandbox_logs(hog_id, None, 100).unwrap();
        assert!(
            logged.iter().any(
                |event| event.message.contains("out of memory: the kernel killed")
                    && event.message.contains("memory limit of 64 MiB")
            ),
            "{logged:?}"
        );

        // The fork bomb: refused (EAGAIN) before the PID limit; envd's own processes count.
        let out = sh(*hog, hog_token, FORK_BOMB);
        let mut fields = out.split_whitespace();
        let forked: u64 = fields
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or(u64::MAX);
        assert!(forked < PIDS_MAX, "{hog_id} forked {forked}: {out}");
        assert!(
            forked > PIDS_MAX / 2,
            "{hog_id} stopped early at {forked}: {out}"
        );
        assert_eq!(fields.next(), Some("11"), "not EAGAIN: {out}");
        // The neighbour and the host still start processes while the bomb's children live.
        assert_eq!(sh(*neighbour, neighbour_token, "echo fine").trim(), "fine");
        assert!(
            std::process::Command::new("true")
                .status()
                .unwrap()
                .success()
        );

        let host_pids: Vec<u32> = sandboxes
            .iter()
            .map(|(.., sandbox)| common::host_pid1(sandbox))
            .collect();
        let ids: Vec<String> = sandboxes.iter().map(|(id, ..)| id.clone()).collect();
        for id in &ids {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&ids, &host_pids).await;
    }
}
