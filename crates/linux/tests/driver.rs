//! The Linux driver under the real backend: create a `base` sandbox (cgroup, slot, template,
//! envd as PID 1), run commands in it with its env vars and default user, pause and resume
//! it, delete it, and leave nothing behind. Needs root, nftables and a built envd; skips
//! with a message otherwise. The same for a sandbox handed out from the warm pool.

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
        let Some(mut harness) = common::harness(
            "driver test",
            "10.201.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        // Every create starts its sandbox here (the warm path has a test of its own).
        harness.config.warm_pool = 0;
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
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&[id], &[pid1]).await;
    }

    /// Reads a limit file of the sandbox's cgroup (v1: in the controller's directory).
    fn limit(handle: &serde_json::Value, v1: (&str, &str), v2: &str) -> String {
        let paths = &handle["cgroup"]["paths"];
        let path = match paths.get("unified") {
            Some(dir) => Path::new(dir.as_str().unwrap()).join(v2),
            None => Path::new(paths[v1.0].as_str().unwrap()).join(v1.1),
        };
        std::fs::read_to_string(&path).unwrap().trim().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_warm_sandbox_becomes_the_requested_one() {
        let Some(mut harness) = common::harness(
            "warm pool test",
            "10.209.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.warm_pool = 2;
        // The default egress is allowed: the sandbox asks for none, so its slot changes.
        harness.config.net.default_internet_access = true;
        let store = firkin_single_node::StateStore::open(harness.state.path().join("db")).unwrap();
        let driver = std::sync::Arc::new(
            firkin_linux::driver::NamespaceDriver::for_state(harness.config.clone(), &store)
                .await
                .unwrap(),
        );
        assert!(
            driver.wait_warm(std::time::Duration::from_secs(10)).await,
            "the warm pool did not fill"
        );
        let backend = firkin_single_node::SingleNodeBackend::builder(
            firkin_single_node::SingleNodeConfig::new(harness.state.path().join("db")),
            driver.clone(),
        )
        .state(store)
        .disk_guard(firkin_single_node::DiskPressureGuard::with_probe(
            harness.state.path(),
            0,
            0,
            std::sync::Arc::new(firkin_single_node::StatvfsDiskProbe),
        ))
        .build()
        .await
        .unwrap();

        let sandbox = backend
            .create(
                SingleNodeCreateRequest::new("base", SandboxResources::from_mib(1, 192))
                    .with_env("GREETING", "warm hello")
                    .with_internet_access(false),
            )
            .await
            .unwrap();
        let id = sandbox.sandbox_id().to_owned();
        let pid1 = common::host_pid1(&sandbox);
        let handle: serde_json::Value =
            serde_json::from_str(&sandbox.record().runtime_handle.as_ref().unwrap().0).unwrap();
        assert!(
            handle["dir"].as_str().unwrap().contains("/sandboxes/warm-"),
            "not handed out from the warm pool: {handle}"
        );
        assert_eq!(
            driver.sandbox_path(&id),
            Path::new(handle["dir"].as_str().unwrap())
        );
        let token = sandbox.record().envd_access_token.clone().unwrap();
        let address = backend.ports().target(&id, 49983).unwrap();
        let out = run(
            address,
            &token,
            "echo $GREETING; whoami; hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; uname -n",
        );
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                "warm hello",
                "user",
                id.as_str(),
                id.as_str(),
                "1",
                id.as_str()
            ],
            "{out}"
        );
        // The hostname was set from inside the sandbox's UTS namespace: no thread of this
        // process (the driver's) stayed there.
        let own = std::fs::read_link("/proc/self/ns/uts").unwrap();
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            if let Ok(uts) = std::fs::read_link(task.path().join("ns/uts")) {
                assert_eq!(
                    uts,
                    own,
                    "thread {:?} is in another UTS namespace",
                    task.file_name()
                );
            }
        }
        // The request's limits, not the pool's.
        assert_eq!(
            limit(&handle, ("memory", "memory.limit_in_bytes"), "memory.max"),
            (192_u64 << 20).to_string()
        );
        let cpu = limit(&handle, ("cpu", "cpu.cfs_quota_us"), "cpu.max");
        assert!(cpu == "100000" || cpu == "100000 100000", "cpu limit {cpu}");
        assert_eq!(handle["slot"]["internet_access"], false, "{handle}");
        // The phases say which path was taken.
        let phases = backend.create_phases();
        assert!(phases.contains_key("claim"), "{:?}", phases.keys());
        assert!(!phases.contains_key("launch"), "{:?}", phases.keys());

        // The pool refills behind the create.
        assert!(driver.wait_warm(std::time::Duration::from_secs(10)).await);
        backend.delete(&id).await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(driver.warm_ready(), 0, "shutdown left warm sandboxes");
        drop(backend);
        drop(driver);
        harness.assert_nothing_left(&[id], &[pid1]).await;
    }

    /// The harness's driver, over a state store in its state directory.
    async fn open_driver(
        harness: &common::Harness,
    ) -> (
        std::sync::Arc<firkin_linux::driver::NamespaceDriver>,
        firkin_single_node::StateStore,
    ) {
        let store = firkin_single_node::StateStore::open(harness.state.path().join("db")).unwrap();
        let driver =
            firkin_linux::driver::NamespaceDriver::for_state(harness.config.clone(), &store)
                .await
                .unwrap();
        (std::sync::Arc::new(driver), store)
    }

    /// A backend over `driver` and its `store`.
    async fn backend_over(
        harness: &common::Harness,
        driver: &std::sync::Arc<firkin_linux::driver::NamespaceDriver>,
        store: firkin_single_node::StateStore,
    ) -> firkin_single_node::SingleNodeBackend {
        firkin_single_node::SingleNodeBackend::builder(
            firkin_single_node::SingleNodeConfig::new(harness.state.path().join("db")),
            driver.clone(),
        )
        .state(store)
        .build()
        .await
        .unwrap()
    }

    /// Whether `done` holds within 20 s, asked every 50 ms.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..400 {
            if done() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }

    /// A burst that finds the pool empty grows it (up to its ceiling), so that the next
    /// burst is handed out warm; with no burst for `warm_pool_idle` it shrinks back to its
    /// floor, tearing the surplus down.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_warm_pool_follows_bursts_and_shrinks_back() {
        let Some(mut harness) = common::harness(
            "warm pool burst test",
            "10.213.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.warm_pool = 1;
        harness.config.warm_pool_max = 4;
        harness.config.warm_pool_idle = std::time::Duration::from_secs(1);
        let (driver, store) = open_driver(&harness).await;
        assert!(driver.wait_warm(std::time::Duration::from_secs(10)).await);
        let backend = backend_over(&harness, &driver, store).await;
        let burst = || async {
            let creates = (0..4).map(|_| {
                backend.create(SingleNodeCreateRequest::new(
                    "base",
                    SandboxResources::from_mib(1, 128),
                ))
            });
            futures::future::join_all(creates)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect::<Vec<_>>()
        };
        let warm_dirs = |sandboxes: &[firkin_single_node::SandboxSession]| {
            sandboxes
                .iter()
                .filter(|sandbox| {
                    sandbox
                        .record()
                        .runtime_handle
                        .as_ref()
                        .unwrap()
                        .0
                        .contains("/sandboxes/warm-")
                })
                .count()
        };
        let ready_within = |n: usize| {
            let driver = driver.clone();
            eventually(move || {
                let pools = firkin_single_node::RuntimeDriver::pools(driver.as_ref());
                pools.warm_ready == n && pools.warm_target == n
            })
        };

        // One warm, three found the pool empty: the target grows to the ceiling of 4.
        let first = burst().await;
        assert!(warm_dirs(&first) <= 1, "more warm than the floor");
        assert!(
            ready_within(4).await,
            "the pool did not grow: {:?}",
            firkin_single_node::RuntimeDriver::pools(driver.as_ref())
        );
        // The next burst is handed out warm, all of it.
        let second = burst().await;
        assert_eq!(warm_dirs(&second), 4, "the second burst was not warm");
        // Idle: back to the floor, the surplus torn down.
        assert!(
            ready_within(1).await,
            "the pool did not shrink: {:?}",
            firkin_single_node::RuntimeDriver::pools(driver.as_ref())
        );

        let mut ids = Vec::new();
        let mut pids = Vec::new();
        for sandbox in first.iter().chain(&second) {
            ids.push(sandbox.sandbox_id().to_owned());
            pids.push(common::host_pid1(sandbox));
        }
        for id in &ids {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        drop(driver);
        harness.assert_nothing_left(&ids, &pids).await;
    }

    /// With the warm pool off, a create takes a directory prepared ahead (its disk mounted):
    /// the sandbox gets its own host name there, its cgroup is named as the directory, and a
    /// new one is prepared behind it; shutdown removes what is prepared.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cold_create_takes_a_prepared_directory() {
        let Some(mut harness) = common::harness(
            "prepared directories test",
            "10.214.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.warm_pool = 0;
        harness.config.prepared_dirs = 1;
        harness.config.disk_size_mb = 64;
        let (driver, store) = open_driver(&harness).await;
        let prepared_within = |n: usize| {
            let driver = driver.clone();
            eventually(move || driver.prepared_ready() == n)
        };
        assert!(prepared_within(1).await, "no directory was prepared");
        let backend = backend_over(&harness, &driver, store).await;
        let sandbox = backend
            .create(SingleNodeCreateRequest::new(
                "base",
                SandboxResources::from_mib(1, 128),
            ))
            .await
            .unwrap();
        let id = sandbox.sandbox_id().to_owned();
        let pid1 = common::host_pid1(&sandbox);
        let handle: serde_json::Value =
            serde_json::from_str(&sandbox.record().runtime_handle.as_ref().unwrap().0).unwrap();
        let dir = handle["dir"].as_str().unwrap();
        assert!(
            dir.contains("/sandboxes/prep-"),
            "not a prepared directory: {handle}"
        );
        assert_eq!(
            handle["cgroup"]["name"].as_str(),
            Path::new(dir).file_name().and_then(|n| n.to_str()),
            "{handle}"
        );
        let token = sandbox.record().envd_access_token.clone().unwrap();
        let address = backend.ports().target(&id, 49983).unwrap();
        let out = run(
            address,
            &token,
            "hostname; cat /etc/hostname; grep -c \"$(hostname)\" /etc/hosts; df -m / | tail -1",
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..3], [id.as_str(), id.as_str(), "1"], "{out}");
        // Its own disk of 64 MiB, as a directory made on the create's path would have.
        let size_mib: u64 = lines[3].split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!((50..=64).contains(&size_mib), "{out}");
        assert!(
            prepared_within(1).await,
            "no directory was prepared behind the create"
        );

        backend.delete(&id).await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(
            driver.prepared_ready(),
            0,
            "shutdown left prepared directories"
        );
        drop(backend);
        drop(driver);
        harness.assert_nothing_left(&[id], &[pid1]).await;
    }

    /// A host short of memory (here: a floor no host reaches) gets no warm sandbox started:
    /// the pool waits instead of adding to the pressure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_warm_pool_starts_nothing_while_memory_is_short() {
        let Some(mut harness) = common::harness(
            "warm pool pressure test",
            "10.215.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.warm_pool = 2;
        harness.config.warm_pool_min_available_memory = u64::MAX;
        let (driver, _store) = open_driver(&harness).await;
        assert!(
            !driver
                .wait_warm(std::time::Duration::from_millis(1500))
                .await,
            "the pool filled under pressure"
        );
        assert_eq!(driver.warm_ready(), 0);
        firkin_single_node::RuntimeDriver::shutdown(driver.as_ref())
            .await
            .unwrap();
        drop(driver);
        harness.assert_nothing_left(&[], &[]).await;
    }
}
