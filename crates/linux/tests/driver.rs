//! The Linux driver under the real backend: create a `base` sandbox (cgroup, slot, template,
//! envd as PID 1), run commands in it with its env vars and default user, pause and resume
//! it, delete it, and leave nothing behind. Needs root, nftables and a built envd; skips
//! with a message otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common;
    use std::net::SocketAddr;
    use std::path::Path;

    use firkin_single_node::{SandboxResources, SandboxState, SingleNodeCreateRequest};

    /// `sh -c script` through envd's Start as the default user; returns stdout.
    fn run(address: SocketAddr, token: &str, script: &str) -> String {
        common::run_as(address, token, None, script).0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_run_pause_delete_and_nothing_leaks() {
        let Some(harness) = common::harness(
            "driver test",
            "10.201.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        let state = &harness.state;
        // Leftovers of a daemon that died half-way: a sandbox cgroup and a sandbox directory.
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        let orphan = format!("orphan-{}", std::process::id());
        firkin_linux::cgroup::SandboxCgroup::create(
            &layout,
            &orphan,
            &firkin_linux::cgroup::CgroupLimits::default(),
        )
        .unwrap();
        std::fs::create_dir_all(state.path().join("sandboxes").join(&orphan).join("upper"))
            .unwrap();
        // A sandbox cgroup of another daemon (no directory in this state) must be left alone.
        let foreign = format!("foreign-{}", std::process::id());
        let foreign_cgroup = firkin_linux::cgroup::SandboxCgroup::create(
            &layout,
            &foreign,
            &firkin_linux::cgroup::CgroupLimits::default(),
        )
        .unwrap();
        let backend = harness.backend().await;
        assert!(
            !layout.firkin_cgroups().unwrap().contains(&orphan),
            "leftover cgroup not reclaimed"
        );
        let foreign_survived = layout.firkin_cgroups().unwrap().contains(&foreign);
        foreign_cgroup.remove().unwrap();
        assert!(
            foreign_survived,
            "another daemon's sandbox cgroup was reclaimed"
        );
        assert!(
            !state.path().join("sandboxes").join(&orphan).exists(),
            "leftover dir not removed"
        );

        let started = std::time::Instant::now();
        let sandbox = backend
            .create(
                SingleNodeCreateRequest::new("base", SandboxResources::from_mib(1, 256))
                    .with_env("GREETING", "hello from firkin"),
            )
            .await
            .unwrap();
        eprintln!("create -> envd answering: {:?}", started.elapsed());
        let id = sandbox.sandbox_id().to_owned();
        let pid1 = common::host_pid1(&sandbox);
        let token = sandbox.record().envd_access_token.clone().unwrap();
        let address = backend.ports().target(&id, 49983).unwrap();
        let out = run(address, &token, "echo $GREETING; whoami; hostname; pwd");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["hello from firkin", "user", id.as_str(), "/home/user"],
            "{out}"
        );

        // sudo works for `user` (the host's /usr is idmapped: its setuid root binaries are
        // root's inside), and root's writes to /usr go to the sandbox's own upper layer.
        if Path::new("/usr/bin/sudo").exists() {
            let probe = format!("/usr/firkin-driver-test-{id}");
            let out = run(
                address,
                &token,
                &format!(
                    "sudo -n id -u; sudo -n touch {probe} && echo wrote; touch /usr/x 2>/dev/null || echo denied"
                ),
            );
            assert_eq!(
                out.lines().collect::<Vec<_>>(),
                ["0", "wrote", "denied"],
                "{out}"
            );
            assert!(
                !Path::new(&probe).exists(),
                "a sandbox wrote the host's /usr"
            );
        } else {
            eprintln!("no /usr/bin/sudo on this host: sudo not checked");
        }

        backend.pause(&id).await.unwrap();
        assert_eq!(backend.get(&id).unwrap().state(), SandboxState::Paused);
        backend.resume(&id, None).await.unwrap();
        assert_eq!(run(address, &token, "echo back").trim(), "back");

        backend.delete(&id).await.unwrap();
        assert!(
            std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(200))
                .is_err()
        );
        drop(backend);
        harness.assert_nothing_left(&[id], &[pid1]).await;
    }
}
