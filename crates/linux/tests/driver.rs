//! The Linux driver under the real backend: create a `base` sandbox (cgroup, slot, template,
//! envd as PID 1), run commands in it with its env vars and default user, pause and resume
//! it, delete it, and leave nothing behind. Needs root, nftables and a built envd; skips
//! with a message otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use firkin_linux::driver::{NamespaceConfig, NamespaceDriver};
    use firkin_single_node::{
        SandboxResources, SandboxState, SingleNodeBackend, SingleNodeConfig,
        SingleNodeCreateRequest, StateStore,
    };

    fn envd_binary() -> PathBuf {
        std::env::var_os("FIRKIN_ENVD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/firkin-envd")
            })
    }

    /// `sh -c script` through envd's Start; returns stdout.
    fn run(address: SocketAddr, token: &str, script: &str) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream
            .write_all(&common::start_request(Some(token), script))
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        common::parse_start_response(&response).0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_run_pause_delete_and_nothing_leaks() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP driver test: needs root");
            return;
        }
        if std::process::Command::new("nft")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("SKIP driver test: needs nftables (nft)");
            return;
        }
        let envd = envd_binary();
        if !envd.exists() {
            eprintln!("SKIP driver test: {} not built", envd.display());
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let mut config = NamespaceConfig::new(
            state.path(),
            envd,
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        );
        // A range of its own, so the net tests' slots are not reclaimed by this pool.
        config.net.range = "10.201.0.0/16".parse().unwrap();
        config.net.netns_dir = state.path().join("netns");
        config.net.pool_size = 1;
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
        let driver = NamespaceDriver::new(config.clone(), &[]).await.unwrap();
        assert!(
            !layout.firkin_cgroups().unwrap().contains(&orphan),
            "leftover cgroup not reclaimed"
        );
        assert!(
            !state.path().join("sandboxes").join(&orphan).exists(),
            "leftover dir not removed"
        );
        let backend = SingleNodeBackend::builder(
            SingleNodeConfig::new(state.path().join("db")),
            Arc::new(driver),
        )
        .state(StateStore::new().unwrap())
        .disk_guard(firkin_single_node::DiskPressureGuard::with_probe(
            state.path(),
            0,
            0,
            Arc::new(firkin_single_node::StatvfsDiskProbe),
        ))
        .build()
        .await
        .unwrap();

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
        assert!(
            !state.path().join("sandboxes").join(&id).exists(),
            "sandbox directory left behind"
        );
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        assert!(
            !layout.firkin_cgroups().unwrap().contains(&id),
            "cgroup left behind"
        );
        drop(backend);
        // The pool's own spare slots go with it.
        let leftovers = firkin_linux::net::reclaim_leftovers(&config.net, &[])
            .await
            .unwrap();
        eprintln!("spare slots reclaimed at the end: {leftovers:?}");
        assert!(
            firkin_linux::net::find_leftovers(&config.net, &[])
                .unwrap()
                .is_empty()
        );
    }
}
