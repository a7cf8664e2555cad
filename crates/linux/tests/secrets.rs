//! Where a sandbox's envd access token is not: on no command line of the host, and nowhere in
//! `/proc` that a process inside the sandbox can read, as `user` or as root (the driver hands
//! it to envd in a pipe, which envd reads and closes). Needs root, nftables and a built envd;
//! skips with a message otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common::{self, run_as};

    /// Everything of every process's `/proc` entry that `sh` inside can read and that could
    /// carry a secret: command lines, environments, and whatever its open descriptors yield
    /// without blocking (a pipe the token was left in would).
    const DUMP_PROC: &str = r#"
for p in /proc/[0-9]*; do
  cat "$p/cmdline" "$p/environ" 2>/dev/null
  for f in "$p"/fd/*; do timeout 1 cat "$f" 2>/dev/null; done
done
echo dumped-as-$(id -un)
"#;

    /// The command lines of every host process, NUL-separated.
    fn host_command_lines() -> Vec<(String, String)> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter_map(|entry| {
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                Some((
                    entry.file_name().to_string_lossy().into_owned(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " "),
                ))
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_envd_token_is_on_no_command_line_and_unreadable_inside() {
        let Some(mut harness) = common::harness(
            "secrets test",
            "10.215.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        // One cold sandbox and one from the warm pool: both start through the same launch.
        harness.config.warm_pool = 1;
        let backend = harness.backend().await;
        let mut ids = Vec::new();
        let mut pids = Vec::new();
        for _ in 0..2 {
            let common::Created {
                id,
                envd: address,
                token,
                pid1,
                ..
            } = common::create_base(&backend, 1, 256).await;

            for (pid, cmdline) in host_command_lines() {
                assert!(
                    !cmdline.contains(&token),
                    "host process {pid} shows the envd token: {cmdline}"
                );
            }
            let environ = std::fs::read(format!("/proc/{pid1}/environ")).unwrap();
            assert!(
                !String::from_utf8_lossy(&environ).contains(&token),
                "envd's environment holds its token"
            );
            for user in ["user", "root"] {
                let (dump, code) = run_as(address, &token, Some(user), DUMP_PROC);
                assert_eq!(code, 0, "{dump}");
                assert!(dump.contains(&format!("dumped-as-{user}")), "{dump}");
                assert!(
                    !dump.contains(&token),
                    "{user} inside the sandbox read the envd token from /proc"
                );
            }
            ids.push(id);
            pids.push(pid1);
        }
        for id in &ids {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&ids, &pids).await;
    }
}
