//! Real cgroup tests: they create sandbox cgroups on this host, so they need root and skip
//! with a printed reason otherwise. Every test removes its cgroup on the way out, failed or
//! not (a guard), and names it `test-<pid>-<n>`.

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::thread::sleep;
    use std::time::{Duration, Instant};

    use firkin_linux::cgroup::{
        CgroupError, CgroupHandle, CgroupLayout, CgroupLimits, CgroupVersion, SandboxCgroup,
    };

    static NEXT: AtomicUsize = AtomicUsize::new(0);

    fn unique_name() -> String {
        format!(
            "test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// The layout, or `None` (after saying why) where these tests cannot run.
    fn layout_or_skip(test: &str) -> Option<CgroupLayout> {
        if !firkin_test_support::root_or_skip(test) {
            return None;
        }
        match CgroupLayout::detect() {
            Ok(layout) => Some(layout),
            Err(e) => {
                firkin_test_support::skip(test, &format!("no usable cgroup hierarchy: {e}"));
                None
            }
        }
    }

    /// Kills the children and reclaims the cgroup when the test ends, however it ends.
    struct Guard {
        layout: CgroupLayout,
        name: String,
        children: Vec<Child>,
    }

    impl Guard {
        fn new(layout: &CgroupLayout) -> Self {
            Self {
                layout: layout.clone(),
                name: unique_name(),
                children: Vec::new(),
            }
        }

        fn create(&self, limits: &CgroupLimits) -> SandboxCgroup {
            SandboxCgroup::create(&self.layout, &self.name, limits).expect("create cgroup")
        }

        /// Starts `script` under `sh`, held on stdin until it is in `cg`, then released.
        fn spawn_in(&mut self, cg: &SandboxCgroup, script: &str) -> u32 {
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(format!("read _go; {script}"))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh");
            let pid = child.id();
            cg.add_process(pid).expect("add process");
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(b"go\n").expect("release the child");
            self.children.push(child);
            pid
        }

        /// Waits for the last spawned child (at most `timeout`).
        fn wait_last(&mut self, timeout: Duration) -> std::process::ExitStatus {
            let child = self.children.last_mut().expect("a child");
            let deadline = Instant::now() + timeout;
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    return status;
                }
                assert!(
                    Instant::now() < deadline,
                    "child did not finish within {timeout:?}"
                );
                sleep(Duration::from_millis(10));
            }
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for child in &mut self.children {
                let _ = child.kill();
            }
            if let Err(e) = SandboxCgroup::reclaim(&self.layout, &self.name) {
                eprintln!("cleanup of {} failed: {e}", self.name);
            }
            for child in &mut self.children {
                let _ = child.wait();
            }
        }
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_owned()
    }

    /// (state letter, utime + stime) from `/proc/<pid>/stat`.
    fn proc_state(pid: u32) -> (char, u64) {
        let stat = read(Path::new(&format!("/proc/{pid}/stat")));
        let after = &stat[stat.rfind(')').expect("comm ends with )") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        let state = fields[0].chars().next().expect("state");
        // Fields 14 and 15 of the line; `after` starts at field 3.
        let ticks =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        (state, ticks)
    }

    #[test]
    fn create_applies_limits_and_refuses_duplicates() {
        let Some(layout) = layout_or_skip("create_applies_limits") else {
            return;
        };
        eprintln!("{}", layout.describe());
        let guard = Guard::new(&layout);
        let limits = CgroupLimits {
            cpu_millis: Some(500),
            memory_bytes: Some(64 << 20),
            pids_max: Some(20),
        };
        let cg = guard.create(&limits);
        let paths = &cg.handle().paths;
        for dir in paths.values() {
            assert!(dir.is_dir(), "{} missing", dir.display());
            assert!(
                dir.ends_with(format!("firkin/{}", guard.name)),
                "{}",
                dir.display()
            );
        }
        match layout.version() {
            CgroupVersion::V1 => {
                assert_eq!(read(&paths["cpu"].join("cpu.cfs_period_us")), "100000");
                assert_eq!(read(&paths["cpu"].join("cpu.cfs_quota_us")), "50000");
                assert_eq!(
                    read(&paths["memory"].join("memory.limit_in_bytes")),
                    "67108864"
                );
                let memsw = paths["memory"].join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    assert_eq!(read(&memsw), "67108864");
                }
                assert_eq!(read(&paths["pids"].join("pids.max")), "20");
                assert_eq!(read(&paths["freezer"].join("freezer.state")), "THAWED");
            }
            CgroupVersion::V2 => {
                let dir = &paths["unified"];
                assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
                assert_eq!(read(&dir.join("memory.max")), "67108864");
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    assert_eq!(read(&swap), "0");
                }
                assert_eq!(read(&dir.join("pids.max")), "20");
            }
        }
        assert!(layout.firkin_cgroups().expect("list").contains(&guard.name));

        // A second create of the same name fails and leaves the first intact.
        let again = SandboxCgroup::create(&layout, &guard.name, &limits);
        assert!(
            matches!(again, Err(CgroupError::AlreadyExists { .. })),
            "{again:?}"
        );
        assert!(paths.values().all(|d| d.is_dir()));

        for bad in ["", "Upper", "a/b", "..", "x_y"] {
            let r = SandboxCgroup::create(&layout, bad, &limits);
            assert!(
                matches!(r, Err(CgroupError::InvalidName { .. })),
                "{bad:?}: {r:?}"
            );
        }
        let r = SandboxCgroup::create(
            &layout,
            &unique_name(),
            &CgroupLimits {
                cpu_millis: Some(1),
                ..limits
            },
        );
        assert!(matches!(r, Err(CgroupError::InvalidLimit { .. })), "{r:?}");
    }

    #[test]
    fn processes_join_and_are_measured() {
        let Some(layout) = layout_or_skip("processes_join") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits::default());
        let pid = guard.spawn_in(&cg, "exec sleep 100");
        assert_eq!(cg.pids().expect("pids"), [pid]);
        for procs in cg.procs_paths() {
            assert!(
                read(&procs).lines().any(|l| l == pid.to_string()),
                "{} lacks {pid}",
                procs.display()
            );
        }
        cg.memory_usage_bytes().expect("memory usage");
        cg.cpu_usage_usec().expect("cpu usage");
        assert_eq!(cg.oom_kills().expect("oom kills"), Some(0));
    }

    #[test]
    fn freeze_stops_and_thaw_resumes() {
        let Some(layout) = layout_or_skip("freeze_stops") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits::default());
        let pid = guard.spawn_in(&cg, "while :; do :; done");
        sleep(Duration::from_millis(50));
        assert!(!cg.is_frozen().expect("state"));

        cg.freeze().expect("freeze");
        assert!(cg.is_frozen().expect("state"));
        let (state, before) = proc_state(pid);
        sleep(Duration::from_millis(200));
        let (state_later, after) = proc_state(pid);
        eprintln!(
            "frozen busy loop: /proc state {state} then {state_later}, cpu ticks {before} -> {after}"
        );
        assert_ne!(state_later, 'R', "a frozen process must not be running");
        assert_eq!(before, after, "a frozen process used CPU");
        cg.freeze().expect("freezing twice is fine");

        cg.thaw().expect("thaw");
        assert!(!cg.is_frozen().expect("state"));
        sleep(Duration::from_millis(200));
        let (state, resumed) = proc_state(pid);
        eprintln!("thawed busy loop: /proc state {state}, cpu ticks {after} -> {resumed}");
        assert!(resumed > after, "a thawed busy loop did not run again");
    }

    #[test]
    fn memory_hog_is_oom_killed_inside() {
        let Some(layout) = layout_or_skip("memory_hog") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits {
            memory_bytes: Some(64 << 20),
            ..Default::default()
        });
        // A neighbour in a cgroup of its own, without limits, running before the hog starts.
        let mut neighbour = Guard::new(&layout);
        let quiet = neighbour.create(&CgroupLimits::default());
        neighbour.spawn_in(&quiet, "exec sleep 600");
        // `tail` keeps the whole newline-free input in memory: 600 MiB against a 64 MiB limit.
        guard.spawn_in(&cg, "head -c 600M /dev/zero | tail > /dev/null");
        let status = guard.wait_last(Duration::from_secs(60));
        // sh reports a pipeline whose last command died of SIGKILL as 128 + 9.
        assert_eq!(
            status.code(),
            Some(137),
            "the hog was not SIGKILLed: {status:?}"
        );
        let kills = cg
            .oom_kills()
            .expect("read the OOM kill counter")
            .expect("the kernel counts OOM kills (Linux 4.13 and later)");
        assert!(kills >= 1, "the hog died, but not by the OOM killer");
        // The kill stayed inside the limited cgroup: the neighbour still runs.
        let sleeper = neighbour.children.last_mut().expect("the neighbour");
        assert_eq!(
            sleeper.try_wait().expect("try_wait"),
            None,
            "the OOM kill reached a process outside the limited cgroup"
        );
    }

    #[test]
    fn pids_max_stops_a_fork_loop() {
        let Some(layout) = layout_or_skip("pids_max") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits {
            pids_max: Some(20),
            ..Default::default()
        });
        guard.spawn_in(
            &cg,
            "i=0; while [ $i -lt 60 ]; do sleep 30 & i=$((i+1)); done; sleep 30",
        );
        let pids_dir = match layout.version() {
            CgroupVersion::V1 => cg.handle().paths["pids"].clone(),
            CgroupVersion::V2 => cg.handle().paths["unified"].clone(),
        };
        let events = pids_dir.join("pids.events");
        let mut most = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            most = most.max(cg.pids().expect("pids").len());
            let refused = read(&events)
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .map(|v| v.parse::<u64>().expect("count"));
            if refused.is_some_and(|r| r > 0) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no fork was refused: {}",
                read(&events)
            );
            sleep(Duration::from_millis(10));
        }
        sleep(Duration::from_millis(100));
        most = most.max(cg.pids().expect("pids").len());
        let current: u64 = read(&pids_dir.join("pids.current"))
            .parse()
            .expect("pids.current");
        eprintln!(
            "fork loop: at most {most} processes seen, pids.current {current}, {}",
            read(&events)
        );
        assert!(
            most <= 20 && current <= 20,
            "more than 20 processes: {most} / {current}"
        );
        assert!(most >= 10, "the loop barely started: {most}");
        cg.kill().expect("kill");
        assert!(cg.pids().expect("pids").is_empty());
    }

    #[test]
    fn kill_empties_and_remove_leaves_nothing() {
        let Some(layout) = layout_or_skip("kill_and_remove") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits {
            cpu_millis: Some(200),
            memory_bytes: Some(128 << 20),
            pids_max: Some(64),
        });
        guard.spawn_in(&cg, "sleep 100 & sleep 100 & (sleep 100 & wait) & wait");
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.pids().expect("pids").len() < 5 {
            assert!(
                Instant::now() < deadline,
                "children did not start: {:?}",
                cg.pids()
            );
            sleep(Duration::from_millis(5));
        }
        // Killing a frozen sandbox works too.
        cg.freeze().expect("freeze");
        cg.kill().expect("kill");
        assert!(cg.pids().expect("pids").is_empty());

        cg.remove().expect("remove");
        for (controller, dir) in &cg.handle().paths {
            assert!(!dir.exists(), "{controller}: {} left behind", dir.display());
        }
        cg.remove().expect("remove twice");
        assert!(!layout.firkin_cgroups().expect("list").contains(&guard.name));
    }

    #[test]
    fn open_readopts_after_drop_and_reclaim_removes_leftovers() {
        let Some(layout) = layout_or_skip("open_readopts") else {
            return;
        };
        let mut guard = Guard::new(&layout);
        let cg = guard.create(&CgroupLimits {
            pids_max: Some(10),
            ..Default::default()
        });
        let pid = guard.spawn_in(&cg, "exec sleep 100");
        let saved = serde_json::to_string(cg.handle()).expect("serialize handle");
        drop(cg);

        let handle: CgroupHandle = serde_json::from_str(&saved).expect("parse handle");
        let cg = SandboxCgroup::open(handle.clone()).expect("open");
        assert_eq!(cg.pids().expect("pids"), [pid]);
        cg.freeze().expect("freeze");
        cg.thaw().expect("thaw");

        // A handle that points elsewhere is refused.
        let mut forged = handle.clone();
        for p in forged.paths.values_mut() {
            *p = p
                .parent()
                .and_then(Path::parent)
                .expect("own dir")
                .to_owned();
        }
        assert!(matches!(
            SandboxCgroup::open(forged),
            Err(CgroupError::InvalidHandle { .. })
        ));

        drop(cg);
        assert!(layout.firkin_cgroups().expect("list").contains(&guard.name));
        SandboxCgroup::reclaim(&layout, &guard.name).expect("reclaim");
        assert!(!layout.firkin_cgroups().expect("list").contains(&guard.name));
        assert!(matches!(
            SandboxCgroup::open(handle),
            Err(CgroupError::NotFound { .. })
        ));
    }

    /// Not a benchmark: medians of the cgroup verbs on this host, printed for the report.
    #[test]
    fn timings() {
        let Some(layout) = layout_or_skip("timings") else {
            return;
        };
        const N: usize = 30;
        let limits = CgroupLimits {
            cpu_millis: Some(1000),
            memory_bytes: Some(256 << 20),
            pids_max: Some(128),
        };
        let (mut create, mut freeze, mut thaw, mut teardown) = (vec![], vec![], vec![], vec![]);
        for _ in 0..N {
            let mut guard = Guard::new(&layout);
            let t = Instant::now();
            let cg = guard.create(&limits);
            create.push(t.elapsed());
            guard.spawn_in(&cg, "sleep 100 & sleep 100 & sleep 100 & sleep 100 & wait");
            while cg.pids().expect("pids").len() < 5 {
                sleep(Duration::from_micros(200));
            }
            let t = Instant::now();
            cg.freeze().expect("freeze");
            freeze.push(t.elapsed());
            let t = Instant::now();
            cg.thaw().expect("thaw");
            thaw.push(t.elapsed());
            let t = Instant::now();
            cg.kill().expect("kill");
            cg.remove().expect("remove");
            teardown.push(t.elapsed());
        }
        let show = |what: &str, v: &mut Vec<Duration>| {
            v.sort();
            eprintln!(
                "{what}: median {:?}, p95 {:?}, max {:?} (n={N}, {:?})",
                v[N / 2],
                v[N * 95 / 100],
                v[N - 1],
                layout.version()
            );
        };
        show("create + limits", &mut create);
        show("freeze (5 procs)", &mut freeze);
        show("thaw (5 procs)", &mut thaw);
        show("kill + remove (5 procs)", &mut teardown);
    }
}
