//! Resource limits of real sandboxes: a memory hog is OOM-killed inside its sandbox, a fork
//! bomb stops at the PID limit, and meanwhile the sandbox's envd, a neighbour sandbox and the
//! host keep working. Needs root, nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common::{self, run_as};

    use firkin_single_node::{SandboxResources, SingleNodeCreateRequest};

    const PIDS_MAX: u64 = 64;

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
            eprintln!("SKIP limits test: the host has no python3 for the sandbox to run");
            return;
        }
        harness.config.pids_max = PIDS_MAX;
        let backend = harness.backend().await;
        let mut sandboxes = Vec::new();
        for _ in 0..2 {
            let sandbox = backend
                .create(SingleNodeCreateRequest::new(
                    "base",
                    SandboxResources::from_mib(1, 64),
                ))
                .await
                .unwrap();
            let id = sandbox.sandbox_id().to_owned();
            let envd = backend.ports().target(&id, 49983).unwrap();
            let token = sandbox.record().envd_access_token.clone().unwrap();
            sandboxes.push((id, envd, token, sandbox));
        }
        let (hog_id, hog, hog_token, _) = &sandboxes[0];
        let (_, neighbour, neighbour_token, _) = &sandboxes[1];
        let sh = |envd, token: &str, script: &str| run_as(envd, token, None, script).0;

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
        assert_eq!(sh(*hog, hog_token, "echo alive").trim(), "alive");
        assert_eq!(sh(*neighbour, neighbour_token, "echo fine").trim(), "fine");

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
        drop(backend);
        harness.assert_nothing_left(&ids, &host_pids).await;
    }
}
