//! Network slots against the real kernel (root only; each test skips with a reason otherwise).
//!
//! NETWORK SAFETY: every packet here goes between this machine and namespaces these tests
//! made: loopback, slot veth addresses, the host's own addresses (one of them added by a
//! test on a veth of its own), a namespace `firkin-test-private` holding private addresses
//! the test assigns (10.123.77.1, 172.16.77.1, 192.168.77.1, 100.64.77.1) behind a veth it
//! makes, and one connection attempt to 169.254.169.254 that is made only after checking
//! that the ruleset rejects it in the host's forward hook.
//!
//! Most tests share one pool instance (the default namespace directory and range), so they
//! run one at a time (a process-wide lock), and each ends with a leak check. A guard
//! reclaims everything of its instance and restores `ip_forward` (and firkin's record of the
//! value it replaced) even when a test fails; another deletes the links and namespaces a
//! test made with `ip`.
//! Other firkin pools on the host (other test binaries, daemons) have instances of their
//! own and are left alone.

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::{Duration, Instant};

    use firkin_linux::driver::ENVD_PORT;
    use firkin_linux::net::{
        NetConfig, NetError, Slot, SlotPool, find_leftovers, forward, nft::table_name,
        reclaim_leftovers,
    };
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

    fn root_or_skip(test: &str) -> bool {
        firkin_test_support::root_or_skip(test)
    }

    fn nft_or_skip(test: &str) -> bool {
        let ok = Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            firkin_test_support::skip(test, "`nft` not installed (apt-get install nftables)");
        }
        ok
    }

    /// Reclaims every network object of a pool instance and restores `ip_forward` (and
    /// firkin's record of the value it replaced) when dropped, so a failing test leaves
    /// nothing behind.
    struct Cleanup {
        config: NetConfig,
        ip_forward: String,
        record: Option<String>,
    }

    impl Cleanup {
        fn new(config: &NetConfig) -> Self {
            Self {
                config: config.clone(),
                ip_forward: std::fs::read_to_string(IP_FORWARD).unwrap_or_else(|_| "0".into()),
                record: std::fs::read_to_string(forward::RECORD).ok(),
            }
        }
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let config = self.config.clone();
            // A runtime of its own, on a thread of its own: Drop may run inside the test's runtime.
            let reclaimed = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                rt.block_on(reclaim_leftovers(&config, &[]))
            })
            .join();
            match reclaimed {
                Ok(Ok(found)) if !found.is_empty() => {
                    eprintln!("cleanup guard reclaimed {found:?}")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("cleanup guard failed: {e}"),
                Err(_) => eprintln!("cleanup guard panicked"),
            }
            let _ = std::fs::write(IP_FORWARD, self.ip_forward.trim());
            let _ = match &self.record {
                Some(value) => std::fs::write(forward::RECORD, value),
                None => std::fs::remove_file(forward::RECORD),
            };
        }
    }

    /// The host-side veths of `config`'s instance, read from `/sys/class/net` by name.
    fn own_links(config: &NetConfig) -> Vec<String> {
        let prefix = config.instance_tag().host_if_prefix();
        let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        links.sort();
        links
    }

    /// The `inet` tables of the host.
    fn tables() -> Vec<String> {
        nft(&["list", "tables", "inet"])
            .lines()
            .filter_map(|l| l.strip_prefix("table inet "))
            .map(str::to_owned)
            .collect()
    }

    /// Whether `dir` is a mount point, per `/proc/self/mountinfo`.
    fn is_mount_point(dir: &Path) -> bool {
        let Ok(dir) = dir.canonicalize() else {
            return false;
        };
        let dir = dir.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(dir.as_str()))
    }

    /// Nothing of `config`'s instance but the slots `still_owned`: no other veths, slot
    /// namespace files or mounts; with nothing owned, no table and no mount of the namespace
    /// directory either, else a table without per-slot rules. Checked both through the
    /// library and independently of it.
    fn leak_check(config: &NetConfig, still_owned: &[Slot]) {
        let left = find_leftovers(config, still_owned).expect("list leftovers");
        assert!(left.is_empty(), "LEAK: {left:?}");
        let owned_ifs: Vec<&str> = still_owned.iter().map(|s| s.host_if.as_str()).collect();
        let links: Vec<String> = own_links(config)
            .into_iter()
            .filter(|n| !owned_ifs.contains(&n.as_str()))
            .collect();
        assert!(links.is_empty(), "LEAK: links {links:?}");
        let owned_paths: Vec<&PathBuf> = still_owned.iter().map(|s| &s.netns_path).collect();
        let files: Vec<PathBuf> = std::fs::read_dir(&config.netns_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        let stray: Vec<&PathBuf> = files.iter().filter(|p| !owned_paths.contains(p)).collect();
        assert!(stray.is_empty(), "LEAK: netns files {stray:?}");
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = config.netns_dir.to_string_lossy().into_owned();
        let mounts: Vec<&str> = mountinfo
            .lines()
            .filter(|l| l.contains(&format!("{dir}/slot-")))
            .filter(|l| {
                !owned_paths
                    .iter()
                    .any(|p| l.contains(&*p.to_string_lossy()))
            })
            .collect();
        assert!(mounts.is_empty(), "LEAK: mounts {mounts:?}");
        let table = table_name(config.instance_tag());
        if still_owned.is_empty() {
            assert!(!tables().contains(&table), "LEAK: table {table}");
            assert!(
                !is_mount_point(&config.netns_dir),
                "LEAK: the mount of {dir}"
            );
            return;
        }
        // The table's rules only name the instance's wildcard, never one slot.
        let prefix = config.instance_tag().host_if_prefix();
        let listing = nft(&["list", "table", "inet", &table]);
        for word in listing.split(|c: char| !c.is_ascii_alphanumeric()) {
            let per_slot = word.starts_with(&prefix) && word.len() > prefix.len();
            assert!(
                !per_slot,
                "LEAK: per-slot nft rule naming {word} in\n{listing}"
            );
        }
    }

    fn nft(args: &[&str]) -> String {
        let out = Command::new("nft").args(args).output().expect("run nft");
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The packet counter of the rule in `chain` of `table` whose text contains `comment`.
    fn counter(table: &str, chain: &str, comment: &str) -> u64 {
        let listing = nft(&["list", "chain", "inet", table, chain]);
        let rule = listing
            .lines()
            .find(|l| l.contains(comment))
            .unwrap_or_else(|| panic!("no rule {comment:?} in\n{listing}"));
        rule.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in {rule}"))
    }

    /// Runs `f` on a fresh thread that has first entered the network namespace at `netns`.
    fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = netns.to_owned();
        std::thread::spawn(move || {
            let fd = File::open(&netns).expect("open netns");
            move_into_link_name_space(fd.as_fd(), Some(LinkNameSpaceType::Network)).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    }

    /// A TCP server answering "hi from <name>" to every connection, on a thread.
    fn serve(listener: TcpListener, name: &'static str) -> SocketAddr {
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let _ = conn.write_all(format!("hi from {name}").as_bytes());
            }
        });
        addr
    }

    fn fetch(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        s.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// Connects from inside `slot`; returns the outcome and how long it took.
    fn connect_from(slot: &Slot, addr: SocketAddr) -> (std::io::Result<String>, Duration) {
        in_netns(&slot.netns_path, move || {
            let t = Instant::now();
            let r = fetch(addr);
            (r, t.elapsed())
        })
    }

    fn assert_blocked(slot: &Slot, addr: SocketAddr, what: &str) {
        let (r, took) = connect_from(slot, addr);
        assert!(
            r.is_err(),
            "{what} ({addr}) reachable from {}: {r:?}",
            slot.host_if
        );
        eprintln!("  {what} {addr}: blocked in {took:?} ({})", r.unwrap_err());
    }

    fn test_config(pool_size: usize) -> NetConfig {
        NetConfig {
            pool_size,
            ..NetConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn host_reaches_sandbox_and_sandbox_is_fenced() {
        if !root_or_skip("host_reaches_sandbox_and_sandbox_is_fenced") || !nft_or_skip("fence") {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(1);
        let _cleanup = Cleanup::new(&config);
        let table = table_name(config.instance_tag());
        let counter = |chain: &str, comment: &str| counter(&table, chain, comment);
        let pool = SlotPool::start(config.clone(), &[])
            .await
            .expect("start pool");
        let a = pool.take(true).await.expect("take a");
        let mut b = pool.take(false).await.expect("take b");
        assert_eq!(std::fs::read_to_string(IP_FORWARD).unwrap().trim(), "1");

        // The daemon's direction: host -> sandbox, any port.
        let a_srv = serve(
            in_netns(&a.netns_path, {
                let ip = a.sandbox_ip;
                move || TcpListener::bind((ip, 0)).unwrap()
            }),
            "a",
        );
        let b_srv = serve(
            in_netns(&b.netns_path, {
                let ip = b.sandbox_ip;
                move || TcpListener::bind((ip, 0)).unwrap()
            }),
            "b",
        );
        assert_eq!(fetch(a_srv).expect("host -> a"), "hi from a");
        assert_eq!(fetch(b_srv).expect("host -> b"), "hi from b");
        // Each end knows the other for good: a permanent neighbour entry on both sides, so
        // no ARP and nothing in the host's table for the kernel to count or collect.
        let neighbours = |netns: Option<&Path>, dev: &str| {
            let mut command = std::process::Command::new("nsenter");
            if let Some(netns) = netns {
                command.arg(format!("--net={}", netns.display()));
            }
            let out = command
                .args(["ip", "neigh", "show", "dev", dev])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        };
        for slot in [&a, &b] {
            let host_side = neighbours(None, &slot.host_if);
            assert!(
                host_side.contains(&format!("{} lladdr", slot.sandbox_ip))
                    && host_side.contains("PERMANENT"),
                "{}: {host_side}",
                slot.host_if
            );
            let inside = neighbours(Some(&slot.netns_path), "eth0");
            assert!(
                inside.contains(&format!("{} lladdr", slot.host_ip))
                    && inside.contains("PERMANENT"),
                "{}: {inside}",
                slot.host_if
            );
        }

        // Host services the sandbox must not reach.
        let lo = serve(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
            "host lo",
        );
        let gw_a = serve(TcpListener::bind((a.host_ip, 0)).unwrap(), "host gw a");
        let gw_b = serve(TcpListener::bind((b.host_ip, 0)).unwrap(), "host gw b");
        assert_eq!(fetch(lo).unwrap(), "hi from host lo");
        eprintln!("from {} (internet allowed):", a.host_if);
        assert_blocked(&a, lo, "host loopback service (the slot's own lo)");
        assert_blocked(
            &a,
            SocketAddr::new(a.host_ip.into(), lo.port()),
            "host lo port via gateway",
        );
        // Those two listeners exist, so a refusal can only come from the rules: check that
        // the "sandbox to host" and "slot range" counters moved.
        let to_host = counter("input", "sandbox to host");
        let to_range = counter("forward", "slot range");
        assert_blocked(&a, gw_a, "host service on the slot's gateway");
        assert_blocked(&a, gw_b, "host service on another slot's gateway");
        assert!(counter("input", "sandbox to host") >= to_host + 2);
        assert_blocked(&a, b_srv, "another slot's listener");
        assert!(counter("forward", "slot range") > to_range);
        let (r, took) = connect_from(&a, gw_a);
        assert!(
            r.is_err() && took < Duration::from_millis(500),
            "reject is fast: {took:?}"
        );

        // Link-local / metadata: check the rule first, then that an attempt fails fast (the
        // reject happens in the host's forward hook: nothing leaves the machine).
        let ruleset = nft(&["list", "chain", "inet", &table, "forward"]);
        let rule = ruleset
            .lines()
            .find(|l| l.contains("ip daddr 169.254.0.0/16"))
            .unwrap_or_else(|| panic!("no link-local rule in\n{ruleset}"));
        let own = format!("iifname \"{}*\"", config.instance_tag().host_if_prefix());
        assert!(
            rule.contains(&own) && rule.contains("goto refuse"),
            "{rule}"
        );
        let refuse = nft(&["list", "chain", "inet", &table, "refuse"]);
        assert!(refuse.contains("reject"), "{refuse}");
        let before = counter("forward", "link-local and metadata");
        let metadata = SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80));
        let (r, took) = connect_from(&a, metadata);
        assert!(
            r.is_err() && took < Duration::from_millis(500),
            "{r:?} after {took:?}"
        );
        let after = counter("forward", "link-local and metadata");
        assert!(
            after > before,
            "the attempt was rejected by the link-local rule"
        );
        eprintln!(
            "  metadata {metadata}: rejected by the forward rule in {took:?} ({})",
            r.unwrap_err()
        );

        // Egress switch: the host-side veth's link group, matched by one static rule.
        // nft prints the group in decimal.
        let egress = format!("iifgroup {}", firkin_linux::net::nft::EGRESS_GROUP);
        assert!(ruleset.contains(&egress), "{ruleset}");
        let group = |s: &Slot| {
            let path = format!("/sys/class/net/{}/netdev_group", s.host_if);
            std::fs::read_to_string(path)
                .unwrap()
                .trim()
                .parse::<u32>()
                .unwrap()
        };
        assert_eq!(group(&a), firkin_linux::net::nft::EGRESS_GROUP);
        assert_eq!(group(&b), 0);
        b.set_internet_access(true).await.expect("allow b");
        assert_eq!(group(&b), firkin_linux::net::nft::EGRESS_GROUP);
        b.set_internet_access(false).await.expect("block b");
        b.set_internet_access(false).await.expect("block b twice");
        assert_eq!(group(&b), 0);
        assert!(!b.internet_access);
        eprintln!("from {} (internet blocked):", b.host_if);
        assert_blocked(&b, gw_b, "host service on the slot's gateway");
        assert_blocked(&b, a_srv, "another slot's listener");

        // Release is idempotent.
        let a2 = a.clone();
        pool.release(a).await.expect("release a");
        pool.release(a2).await.expect("release a again");
        pool.release(b).await.expect("release b");
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pool_serves_concurrent_takes_and_measures() {
        if !root_or_skip("pool_serves_concurrent_takes_and_measures") || !nft_or_skip("pool") {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(4);
        let _cleanup = Cleanup::new(&config);
        let pool = std::sync::Arc::new(SlotPool::start(config.clone(), &[]).await.expect("start"));
        assert!(
            pool.wait_full(Duration::from_secs(10)).await,
            "pool did not fill"
        );

        let takes: Vec<_> = (0..4)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    let slot = pool.take(true).await.expect("take");
                    (slot, t.elapsed())
                })
            })
            .collect();
        let mut slots = Vec::new();
        let mut take_times = Vec::new();
        for t in takes {
            let (slot, took) = t.await.unwrap();
            take_times.push(took);
            slots.push(slot);
        }
        let mut indices: Vec<u32> = slots.iter().map(|s| s.index).collect();
        indices.sort();
        indices.dedup();
        assert_eq!(indices.len(), 4, "distinct slots: {slots:?}");
        for s in &slots {
            s.open_netns().expect("netns is pinned");
            let srv = serve(
                in_netns(&s.netns_path, {
                    let ip = s.sandbox_ip;
                    move || TcpListener::bind((ip, 0)).unwrap()
                }),
                "slot",
            );
            assert_eq!(fetch(srv).unwrap(), "hi from slot");
        }
        // Serialized state round-trips into an equal slot (what re-adoption stores).
        let json = serde_json::to_string(&slots[0]).unwrap();
        assert_eq!(serde_json::from_str::<Slot>(&json).unwrap(), slots[0]);

        let releases: Vec<_> = slots
            .into_iter()
            .map(|slot| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let t = Instant::now();
                    pool.release(slot).await.expect("release");
                    t.elapsed()
                })
            })
            .collect();
        let mut release_times = Vec::new();
        for r in releases {
            release_times.push(r.await.unwrap());
        }
        eprintln!("take from a warm pool (4 concurrent): {take_times:?}");
        eprintln!("release (4 concurrent, while the pool refills): {release_times:?}");
        let t = Instant::now();
        pool.settle().await;
        eprintln!("background veth deletions finished {:?} later", t.elapsed());
        let pool = std::sync::Arc::into_inner(pool).expect("no other owner");
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timings_and_reclaim_after_a_crash() {
        if !root_or_skip("timings_and_reclaim_after_a_crash") || !nft_or_skip("timings") {
            return;
        }
        let _serial = SERIAL.lock().await;
        const RUNS: usize = 20;

        // Prepare inline (pool_size 0: every take prepares) and tear down, one at a time.
        let config = test_config(0);
        let _cleanup = Cleanup::new(&config);
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let (mut prepare, mut release, mut full) = (Vec::new(), Vec::new(), Vec::new());
        for internet in [false, true] {
            for _ in 0..RUNS {
                let t = Instant::now();
                let slot = pool.take(internet).await.expect("take");
                prepare.push(t.elapsed());
                let t = Instant::now();
                pool.release(slot).await.expect("release");
                release.push(t.elapsed());
                pool.settle().await;
                full.push(t.elapsed());
            }
        }
        let med = |mut v: Vec<Duration>| {
            v.sort();
            (v[v.len() / 2], v[v.len() * 9 / 10])
        };
        eprintln!(
            "prepare one slot (inline take):        median/p90 {:?}",
            med(prepare)
        );
        eprintln!(
            "release (umount; veth deleted later):  median/p90 {:?}",
            med(release)
        );
        eprintln!(
            "release + background veth deletion:    median/p90 {:?}",
            med(full)
        );
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);

        // Warm pool: take when all slots are ready.
        let config = test_config(4);
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let mut warm = Vec::new();
        for _ in 0..5 {
            assert!(pool.wait_full(Duration::from_secs(10)).await);
            let t = Instant::now();
            let slot = pool.take(true).await.expect("take");
            warm.push(t.elapsed());
            pool.release(slot).await.expect("release");
        }
        eprintln!(
            "take from a warm pool:                 median/p90 {:?}",
            med(warm)
        );
        pool.settle().await;

        // A crashed daemon: drop the pool without shutdown, keep one slot as "still running".
        let kept = pool.take(false).await.expect("take");
        assert!(pool.wait_full(Duration::from_secs(10)).await);
        drop(pool);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let left = find_leftovers(&config, std::slice::from_ref(&kept)).unwrap();
        assert_eq!(
            left.links.len(),
            4,
            "the dropped pool's ready slots: {left:?}"
        );
        // The new daemon's pool stays empty here so the check sees only what reclaim left.
        let config = test_config(0);
        let pool = SlotPool::start(config.clone(), std::slice::from_ref(&kept))
            .await
            .expect("restart keeps one");
        leak_check(&config, std::slice::from_ref(&kept));
        let fresh = pool.take(false).await.expect("take after restart");
        assert_ne!(fresh.index, kept.index, "kept index stays reserved");
        kept.open_netns().expect("kept slot survives reclaim");
        pool.release(fresh).await.unwrap();
        pool.release(kept.clone()).await.unwrap();
        pool.release(kept)
            .await
            .expect("a second release is a no-op");
        pool.shutdown().await.unwrap();
        leak_check(&config, &[]);
    }

    /// A server inside `slot` on its sandbox address.
    fn serve_in(slot: &Slot, name: &'static str) -> SocketAddr {
        let ip = slot.sandbox_ip;
        serve(
            in_netns(&slot.netns_path, move || {
                TcpListener::bind((ip, 0)).unwrap()
            }),
            name,
        )
    }

    /// A pool instance of its own: a namespace directory under `dir`, the range `range`.
    fn instance_config(dir: &Path, range: &str) -> NetConfig {
        NetConfig {
            range: range.parse().unwrap(),
            pool_size: 1,
            netns_dir: dir.join("netns"),
            default_internet_access: false,
            egress_allow_private: Vec::new(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_pools_share_a_host_and_overlapping_ranges_are_refused() {
        if !root_or_skip("two_pools_share_a_host") || !nft_or_skip("two pools") {
            return;
        }
        let _serial = SERIAL.lock().await;
        // Declared before the guards, so the guards run first.
        let (dir_a, dir_b, dir_c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let config_a = instance_config(dir_a.path(), "10.208.0.0/24");
        let config_b = instance_config(dir_b.path(), "10.208.1.0/24");
        let _cleanup_a = Cleanup::new(&config_a);
        let _cleanup_b = Cleanup::new(&config_b);
        let (tag_a, tag_b) = (config_a.instance_tag(), config_b.instance_tag());
        assert_ne!(tag_a, tag_b);
        let (table_a, table_b) = (table_name(tag_a), table_name(tag_b));

        let pool_a = SlotPool::start(config_a.clone(), &[])
            .await
            .expect("start a");
        // With egress (so `ip_forward` is on and slot-to-slot traffic reaches the rules).
        let a = pool_a.take(true).await.expect("take a");
        assert!(pool_a.wait_full(Duration::from_secs(10)).await);
        assert!(a.host_if.starts_with(&format!("fk{tag_a}h")) && a.host_if.len() <= 15);
        let pool_b = SlotPool::start(config_b.clone(), &[])
            .await
            .expect("start b");
        let b = pool_b.take(false).await.expect("take b");
        assert!(pool_b.wait_full(Duration::from_secs(10)).await);
        // B's start reclaimed nothing of A: A's handed-out and ready slots are still there.
        let links_a = own_links(&config_a);
        assert_eq!(links_a.len(), 2, "{links_a:?}");
        assert!(links_a.contains(&a.host_if), "{links_a:?}");
        a.open_netns().expect("a's namespace survives b's start");
        assert_eq!(own_links(&config_b).len(), 2);
        let found = find_leftovers(&config_b, std::slice::from_ref(&b)).unwrap();
        assert_eq!(found.links.len(), 1, "only b's ready slot: {found:?}");
        assert!(
            found.links[0].starts_with(&format!("fk{tag_b}h")),
            "{found:?}"
        );
        let both = tables();
        assert!(
            both.contains(&table_a) && both.contains(&table_b),
            "{both:?}"
        );

        // Both pass traffic from the host; neither reaches the other's slots or gateways.
        let (a_srv, b_srv) = (serve_in(&a, "a"), serve_in(&b, "b"));
        assert_eq!(fetch(a_srv).expect("host -> a"), "hi from a");
        assert_eq!(fetch(b_srv).expect("host -> b"), "hi from b");
        let gw_a = serve(TcpListener::bind((a.host_ip, 0)).unwrap(), "host gw a");
        let gw_b = serve(TcpListener::bind((b.host_ip, 0)).unwrap(), "host gw b");
        // Whichever table sees the packet first rejects it (both hook in at one priority).
        let crossed = || {
            counter(&table_a, "forward", "to another pool's slot")
                + counter(&table_b, "forward", "from another pool's slot")
        };
        let before = crossed();
        assert_blocked(&a, b_srv, "the other pool's slot");
        assert!(crossed() > before, "rejected by a rule, not lost");
        let (r, took) = connect_from(&a, b_srv);
        assert!(
            r.is_err() && took < Duration::from_millis(500),
            "fast: {took:?}"
        );
        assert_blocked(&b, a_srv, "the other pool's slot");
        assert_blocked(&a, gw_b, "the other pool's gateway");
        assert_blocked(&b, gw_a, "the other pool's gateway");

        // A third pool whose range overlaps A's slots is refused, naming both, and makes nothing.
        let config_c = instance_config(dir_c.path(), "10.208.0.0/25");
        let err = SlotPool::start(config_c.clone(), &[])
            .await
            .expect_err("an overlapping range is refused");
        let msg = err.to_string();
        eprintln!("overlapping start: {msg}");
        match &err {
            NetError::RangeOverlap {
                range, interface, ..
            } => {
                assert_eq!(range, "10.208.0.0/25");
                assert!(
                    links_a.contains(interface),
                    "{interface} is one of {links_a:?}"
                );
            }
            other => panic!("not a RangeOverlap: {other:?}"),
        }
        assert!(
            msg.contains("10.208.0.0/25") && msg.contains(&format!("fk{tag_a}h")),
            "{msg}"
        );
        assert!(!tables().contains(&table_name(config_c.instance_tag())));
        assert!(!is_mount_point(&config_c.netns_dir));
        // Restarting on its own leftovers is no overlap (nor is the range of a kept slot).
        drop(pool_b);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let pool_b = SlotPool::start(config_b.clone(), std::slice::from_ref(&b))
            .await
            .expect("b restarts over its own slots");

        // A's daemon restarts with `a` still live: its shutdown keeps the table and mount for
        // `a`, its new start reclaims only A's spare slot.
        pool_a.shutdown().await.expect("shutdown a");
        assert!(matches!(
            pool_a.take(false).await,
            Err(NetError::PoolClosed { .. })
        ));
        assert_eq!(own_links(&config_a), vec![a.host_if.clone()]);
        assert!(tables().contains(&table_a));
        assert!(is_mount_point(&config_a.netns_dir));
        assert_eq!(
            fetch(a_srv).expect("a works across its daemon's shutdown"),
            "hi from a"
        );
        assert_blocked(&a, gw_a, "its gateway, after its daemon's shutdown");
        drop(pool_a);
        let pool_a = SlotPool::start(config_a.clone(), std::slice::from_ref(&a))
            .await
            .expect("a restarts");
        assert!(pool_a.wait_full(Duration::from_secs(10)).await);
        assert!(pool_b.wait_full(Duration::from_secs(10)).await);
        assert_eq!(own_links(&config_b).len(), 2, "A's start left B's slots");
        b.open_netns().expect("b's namespace survives a's restart");
        assert_eq!(
            fetch(b_srv).expect("host -> b after a's restart"),
            "hi from b"
        );

        // B goes: nothing of it is left, A keeps its table, slots and fence.
        pool_b.release(b).await.expect("release b");
        pool_b.shutdown().await.expect("shutdown b");
        leak_check(&config_b, &[]);
        assert!(tables().contains(&table_a));
        assert_eq!(own_links(&config_a).len(), 2);
        assert_eq!(
            fetch(a_srv).expect("host -> a after b's shutdown"),
            "hi from a"
        );
        assert_blocked(&a, gw_a, "its gateway, after the other pool's shutdown");

        pool_a.release(a).await.expect("release a");
        pool_a.shutdown().await.expect("shutdown a");
        leak_check(&config_a, &[]);
    }

    // The boundary between host users, sandboxes, the host and private networks.

    /// Runs a command, panicking with its stderr when it fails.
    fn run(args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Links and network namespaces a test made with `ip`, deleted when dropped (also
    /// before use, in case a failed run left them).
    struct TestNet {
        links: Vec<&'static str>,
        netns: Vec<&'static str>,
    }

    impl TestNet {
        fn new(links: Vec<&'static str>, netns: Vec<&'static str>) -> Self {
            let net = Self { links, netns };
            net.remove();
            net
        }

        fn remove(&self) {
            for link in &self.links {
                let _ = Command::new("ip").args(["link", "del", link]).output();
            }
            for netns in &self.netns {
                let _ = Command::new("ip").args(["netns", "del", netns]).output();
            }
        }
    }

    impl Drop for TestNet {
        fn drop(&mut self) {
            self.remove();
            for link in &self.links {
                assert!(
                    !Path::new("/sys/class/net").join(link).exists() || std::thread::panicking(),
                    "LEAK: test link {link}"
                );
            }
        }
    }

    /// The unprivileged account `user` (scripts/setup makes it) exists, or a skip.
    fn test_user_or_skip(test: &str) -> bool {
        let ok = Command::new("id")
            .args(["-u", "user"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            firkin_test_support::skip(test, "no account `user` (scripts/setup makes it)");
        }
        ok
    }

    /// How a TCP connect to `addr` by the unprivileged account `user` ended (exit status,
    /// stderr): bash's `/dev/tcp` under `timeout`, so a hang shows as status 124.
    fn connect_as_user(addr: SocketAddr) -> (Option<i32>, String) {
        connect_as_user_to(&addr.ip().to_string(), addr.port())
    }

    /// [`connect_as_user`] to a host as `getaddrinfo` takes it (`fe80::1%eth0`, say).
    fn connect_as_user_to(host: &str, port: u16) -> (Option<i32>, String) {
        let script = format!("exec 3<>/dev/tcp/{host}/{port}");
        let out = Command::new("runuser")
            .args(["-u", "user", "--", "timeout", "5", "bash", "-c", &script])
            .output()
            .expect("run runuser");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The usable (not tentative) IPv6 link-local address of `ifname` in the calling thread's
    /// network namespace, if it has one yet.
    fn link_local(ifname: &str) -> Option<Ipv6Addr> {
        const TENTATIVE: u32 = 0x40;
        let table = std::fs::read_to_string("/proc/thread-self/net/if_inet6").ok()?;
        table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = Ipv6Addr::from(u128::from_str_radix(fields.first()?, 16).ok()?);
            let flags = u32::from_str_radix(fields.get(4)?, 16).ok()?;
            (fields.get(5) == Some(&ifname)
                && addr.is_unicast_link_local()
                && flags & TENTATIVE == 0)
                .then_some(addr)
        })
    }

    /// The sandbox side's link-local address, once duplicate address detection has finished
    /// on both ends of `slot`'s veth (the kernel's condition, polled, at most 10 s).
    fn slot_link_local(slot: &Slot) -> Ipv6Addr {
        for _ in 0..200 {
            let inside = in_netns(&slot.netns_path, || link_local("eth0"));
            if let (Some(addr), Some(_)) = (inside, link_local(&slot.host_if)) {
                return addr;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no usable IPv6 link-local address on both ends of {}",
            slot.host_if
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn host_users_cannot_reach_a_slot_only_root_can() {
        const TEST: &str = "host_users_cannot_reach_a_slot_only_root_can";
        if !root_or_skip(TEST) || !nft_or_skip(TEST) || !test_user_or_skip(TEST) {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(0);
        let _cleanup = Cleanup::new(&config);
        let table = table_name(config.instance_tag());
        let pool = SlotPool::start(config.clone(), &[])
            .await
            .expect("start pool");
        let slot = pool.take(false).await.expect("take");
        let envd = serve(
            in_netns(&slot.netns_path, {
                let ip = slot.sandbox_ip;
                move || TcpListener::bind((ip, ENVD_PORT)).unwrap()
            }),
            "envd",
        );
        let other = serve_in(&slot, "a sandbox port");
        // Root, the daemon's path, connects to both.
        assert_eq!(fetch(envd).expect("root -> envd"), "hi from envd");
        assert_eq!(
            fetch(other).expect("root -> port"),
            "hi from a sandbox port"
        );
        // The account connects at all: a host listener answers it.
        let lo = serve(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap(),
            "host lo",
        );
        let (code, stderr) = connect_as_user(lo);
        assert_eq!(code, Some(0), "user -> host loopback: {stderr}");

        // The chains are rewritten at start, so the rule's counter starts at 0.
        for (addr, what) in [(envd, "envd"), (other, "another sandbox port")] {
            let (code, stderr) = connect_as_user(addr);
            eprintln!(
                "  user -> {what} {addr}: status {code:?}, {}",
                stderr.trim()
            );
            assert_ne!(code, Some(0), "user reached the sandbox's {what} at {addr}");
            assert_ne!(
                code,
                Some(124),
                "user's connect to {addr} hung, not refused"
            );
            assert!(stderr.contains("Connection refused"), "{addr}: {stderr}");
        }
        assert!(
            counter(&table, "output", "host user to a slot") >= 2,
            "refused by the output rule"
        );
        assert_eq!(fetch(envd).expect("root -> envd after"), "hi from envd");

        // IPv6 link-local, which every veth has (a sandbox port bound to `[::]`, reached
        // without knowing the slot range): refused on the way out too. (Root gets no answer
        // there either, its connect times out: `input` refuses the sandbox's neighbour
        // advertisements, which conntrack does not track.)
        let v6 = serve(
            in_netns(&slot.netns_path, || {
                TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap()
            }),
            "a sandbox port on [::]",
        );
        let sandbox_ll = slot_link_local(&slot);
        let before = counter(&table, "output", "host user to a slot");
        let (code, stderr) =
            connect_as_user_to(&format!("{sandbox_ll}%{}", slot.host_if), v6.port());
        eprintln!(
            "  user -> [{sandbox_ll}%{}]:{}: status {code:?}, {}",
            slot.host_if,
            v6.port(),
            stderr.trim()
        );
        assert_ne!(
            code,
            Some(0),
            "user reached the sandbox over IPv6 link-local"
        );
        assert_ne!(code, Some(124), "user's IPv6 connect hung, not refused");
        assert!(stderr.contains("Connection refused"), "{stderr}");
        assert!(counter(&table, "output", "host user to a slot") > before);

        pool.release(slot).await.expect("release");
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);
    }

    /// The private subnets of [`private_nets`], one per private range; `.1` is the far end.
    const PRIVATE_SUBNETS: [&str; 4] = ["10.123.77", "172.16.77", "192.168.77", "100.64.77"];

    /// A network namespace standing for the host's private networks: a veth pair whose far
    /// end holds `.1` of each of [`PRIVATE_SUBNETS`] (the host end `.2`, so the host routes
    /// there), and a listener in it; returns the guard and the listener's address on each.
    fn private_nets() -> (TestNet, Vec<SocketAddr>) {
        let (host_if, far_if, ns) = ("frktpriv0", "frktpriv1", "firkin-test-private");
        let net = TestNet::new(vec![host_if], vec![ns]);
        run(&["ip", "netns", "add", ns]);
        run(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", far_if, "netns", ns,
        ]);
        for subnet in PRIVATE_SUBNETS {
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{subnet}.2/24"),
                "dev",
                host_if,
            ]);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{subnet}.1/24"),
                "dev",
                far_if,
            ]);
        }
        run(&["ip", "link", "set", host_if, "up"]);
        run(&["ip", "-n", ns, "link", "set", far_if, "up"]);
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        let listener = in_netns(&Path::new("/run/netns").join(ns), || {
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap()
        });
        let port = serve(listener, "a private network").port();
        let addrs = PRIVATE_SUBNETS
            .iter()
            .map(|s| SocketAddr::new(format!("{s}.1").parse().unwrap(), port))
            .collect();
        (net, addrs)
    }

    fn assert_refused(slot: &Slot, addr: SocketAddr, what: &str) {
        let (r, _) = connect_from(slot, addr);
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                eprintln!("  {what} {addr}: refused")
            }
            other => panic!(
                "{what} {addr} from {}: {other:?}, not refused",
                slot.host_if
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_reach_private_ranges_only_when_opted_in() {
        const TEST: &str = "slots_reach_private_ranges_only_when_opted_in";
        if !root_or_skip(TEST) || !nft_or_skip(TEST) {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(0);
        let _cleanup = Cleanup::new(&config);
        let (_private, targets) = private_nets();
        let table = table_name(config.instance_tag());
        for addr in &targets {
            assert_eq!(
                fetch(*addr).expect("host -> private"),
                "hi from a private network"
            );
        }
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let a = pool.take(true).await.expect("take a");
        let b = pool.take(false).await.expect("take b");
        let b_srv = serve_in(&b, "b");
        let gw_a = serve(TcpListener::bind((a.host_ip, 0)).unwrap(), "host gw a");

        eprintln!("default (no opt-ins), from {} with egress:", a.host_if);
        for addr in &targets {
            assert_refused(&a, *addr, "private range");
        }
        // Refused by that rule (the chains are rewritten at start, counters from 0).
        assert!(counter(&table, "forward", "private ranges") >= targets.len() as u64);

        // The operator opts the ranges in (10/8 whole, covering every pool's slots too); a
        // restarted daemon rewrites the live slots' table.
        let opted_in = NetConfig {
            egress_allow_private: [
                "10.0.0.0/8",
                "172.16.77.0/24",
                "192.168.0.0/16",
                "100.64.0.0/10",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            ..config.clone()
        };
        let live = [a.clone(), b.clone()];
        pool.shutdown().await.expect("shutdown with live slots");
        drop(pool);
        let pool = SlotPool::start(opted_in, &live)
            .await
            .expect("restart opted in");
        eprintln!("opted in, from {}:", a.host_if);
        for addr in &targets {
            let (r, _) = connect_from(&a, *addr);
            assert_eq!(
                r.expect("opted-in range reachable"),
                "hi from a private network"
            );
        }
        assert_refused(&a, b_srv, "another slot (inside the opted-in 10/8)");
        assert_refused(&a, gw_a, "the host (its gateway)");
        assert_eq!(fetch(b_srv).expect("host -> b"), "hi from b");

        // Restarted without opt-ins: refused again.
        pool.shutdown().await.expect("shutdown with live slots");
        drop(pool);
        let pool = SlotPool::start(config.clone(), &live)
            .await
            .expect("restart");
        for addr in &targets {
            assert_refused(&a, *addr, "private range, opt-in withdrawn");
        }

        let [a, b] = live;
        pool.release(a).await.expect("release a");
        pool.release(b).await.expect("release b");
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);
    }

    /// Every address on the host's interfaces but IPv6 link-local (which needs a scope).
    fn host_addresses() -> Vec<IpAddr> {
        let out = Command::new("ip")
            .args(["-o", "addr", "show"])
            .output()
            .expect("ip addr");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace().skip_while(|w| !w.starts_with("inet"));
                words.nth(1)?.split('/').next()?.parse().ok()
            })
            .filter(|ip: &IpAddr| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_reach_none_of_the_hosts_addresses_nor_each_other() {
        const TEST: &str = "slots_reach_none_of_the_hosts_addresses_nor_each_other";
        if !root_or_skip(TEST) || !nft_or_skip(TEST) {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(0);
        let _cleanup = Cleanup::new(&config);
        let table = table_name(config.instance_tag());
        // One more host address, on an interface of the test's own (a veth pair in the host
        // namespace), outside every private range.
        let (extra_if, extra_peer) = ("frktaddr0", "frktaddr1");
        let _extra = TestNet::new(vec![extra_if], vec![]);
        run(&[
            "ip", "link", "add", extra_if, "type", "veth", "peer", "name", extra_peer,
        ]);
        run(&["ip", "addr", "add", "198.51.100.77/32", "dev", extra_if]);
        run(&["ip", "link", "set", extra_peer, "up"]);
        run(&["ip", "link", "set", extra_if, "up"]);
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let a = pool.take(true).await.expect("take a");
        let b = pool.take(true).await.expect("take b");
        let addresses = host_addresses();
        let extra: IpAddr = "198.51.100.77".parse().unwrap();
        assert!(addresses.contains(&extra), "{addresses:?}");
        assert!(addresses.contains(&IpAddr::V4(a.host_ip)), "{addresses:?}");
        // A listener on every host address, IPv4 and IPv6; the host reaches each.
        let v4 = serve(
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap(),
            "host",
        );
        let v6 = serve(
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, 0)).unwrap(),
            "host",
        );
        let targets: Vec<SocketAddr> = addresses
            .iter()
            .map(|ip| SocketAddr::new(*ip, if ip.is_ipv4() { v4.port() } else { v6.port() }))
            .collect();
        for addr in &targets {
            assert_eq!(fetch(*addr).expect("host -> itself"), "hi from host");
        }
        eprintln!("from {} (egress allowed):", a.host_if);
        for addr in &targets {
            match addr.ip() {
                // The host's IPv4 addresses: refused by the input rule.
                IpAddr::V4(ip) if !ip.is_loopback() => {
                    let before = counter(&table, "input", "sandbox to host");
                    assert_refused(&a, *addr, "host address");
                    assert!(counter(&table, "input", "sandbox to host") > before);
                }
                // Loopback is the slot's own; IPv6 has no route out of a slot.
                _ => assert_blocked(&a, *addr, "host address"),
            }
        }
        assert_refused(&a, serve_in(&b, "b"), "another slot");
        assert_refused(&b, serve_in(&a, "a"), "another slot");

        pool.release(a).await.expect("release a");
        pool.release(b).await.expect("release b");
        pool.shutdown().await.expect("shutdown");
        leak_check(&config, &[]);
    }

    fn ip_forward() -> String {
        std::fs::read_to_string(IP_FORWARD)
            .unwrap()
            .trim()
            .to_owned()
    }

    /// Whether a firkin veth of another instance (another daemon's live sandboxes) is on the host.
    fn foreign_firkin_veths(config: &NetConfig) -> Vec<String> {
        let own = config.instance_tag().host_if_prefix();
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("fk") && !n.starts_with(&own))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ip_forward_is_restored_only_when_firkin_turned_it_on() {
        const TEST: &str = "ip_forward_is_restored_only_when_firkin_turned_it_on";
        if !root_or_skip(TEST) || !nft_or_skip(TEST) {
            return;
        }
        let _serial = SERIAL.lock().await;
        let config = test_config(0);
        let _cleanup = Cleanup::new(&config);
        let foreign = foreign_firkin_veths(&config);

        // Off before: the first slot with egress turns it on; a shutdown with a live slot
        // leaves it on; the last shutdown puts it back.
        let _ = std::fs::remove_file(forward::RECORD);
        std::fs::write(IP_FORWARD, "0").unwrap();
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let offline = pool.take(false).await.expect("take without egress");
        assert_eq!(ip_forward(), "0", "a slot without egress changes nothing");
        let slot = pool.take(true).await.expect("take with egress");
        assert_eq!(ip_forward(), "1");
        pool.release(offline).await.expect("release");
        pool.shutdown().await.expect("shutdown with a live slot");
        assert_eq!(ip_forward(), "1", "a live sandbox keeps its egress");
        drop(pool);
        let pool = SlotPool::start(config.clone(), std::slice::from_ref(&slot))
            .await
            .expect("restart");
        pool.release(slot).await.expect("release");
        pool.shutdown().await.expect("shutdown");
        if foreign.is_empty() {
            assert_eq!(ip_forward(), "0", "restored after the last slot");
            assert!(!Path::new(forward::RECORD).exists());
        } else {
            eprintln!("  other firkin veths on the host ({foreign:?}): ip_forward must stay on");
            assert_eq!(ip_forward(), "1");
        }
        leak_check(&config, &[]);

        // On before: never touched.
        let _ = std::fs::remove_file(forward::RECORD);
        std::fs::write(IP_FORWARD, "1").unwrap();
        let pool = SlotPool::start(config.clone(), &[]).await.expect("start");
        let slot = pool.take(true).await.expect("take with egress");
        pool.release(slot).await.expect("release");
        pool.shutdown().await.expect("shutdown");
        assert_eq!(ip_forward(), "1", "a setting firkin found on stays on");
        assert!(!Path::new(forward::RECORD).exists());
        leak_check(&config, &[]);
    }
}
