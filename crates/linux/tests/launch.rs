//! A real sandbox launch through `firkin-sandbox-init`: user, mount, PID, network, UTS, IPC
//! and cgroup namespaces, an overlay root over a tiny template plus the host's read-only
//! `/usr`, envd as PID 1 answering `/health` inside its own network namespace; killing PID 1
//! takes everything down and leaves no mount on the host. Needs root; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common;
    use std::io::{Read, Write};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use firkin_linux::sandbox::InitSpec;
    use firkin_linux::sandbox::spawn::{IdMap, launch};

    const SHIFT: u32 = 200_000;

    fn chown_tree(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(path).unwrap() {
                chown_tree(&entry.unwrap().path(), uid, gid);
            }
        }
    }

    /// A minimal template: generated /etc, merged-usr links, mount points.
    fn template(dir: &Path) {
        for sub in [
            "etc",
            "usr",
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "root",
            "home/user",
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        for link in ["bin", "lib", "lib64", "sbin"] {
            if Path::new("/").join(link).exists() {
                symlink(format!("usr/{link}"), dir.join(link)).unwrap();
            }
        }
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
        chown_tree(dir, SHIFT, SHIFT);
        chown_tree(&dir.join("home/user"), SHIFT + 1000, SHIFT + 1000);
    }

    /// An HTTP request from inside `pid`'s network namespace.
    fn get_inside(pid: u32, path: &str) -> Option<String> {
        let path = path.to_owned();
        std::thread::spawn(move || {
            let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&netns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .ok()?;
            let mut stream = std::net::TcpStream::connect_timeout(
                &"127.0.0.1:49983".parse().unwrap(),
                Duration::from_millis(200),
            )
            .ok()?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: envd\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).ok()?;
            Some(response)
        })
        .join()
        .unwrap()
    }

    /// Run `script` with `/bin/sh -c` through envd's Start inside `pid`'s network namespace;
    /// returns (stdout, exit code).
    fn run_inside(pid: u32, script: &str) -> (String, i32) {
        let request = common::start_request(None, script);
        let response = std::thread::spawn(move || {
            let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&netns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let mut stream = std::net::TcpStream::connect("127.0.0.1:49983").unwrap();
            stream.write_all(&request).unwrap();
            let mut response = Vec::new();
            stream.read_to_end(&mut response).unwrap();
            String::from_utf8_lossy(&response).into_owned()
        })
        .join()
        .unwrap();
        common::parse_start_response(&response)
    }

    /// Kills a sandbox (PID 1, then its whole cgroup) when dropped, so a failing assertion
    /// leaks nothing.
    struct KillOnDrop(u32, firkin_linux::cgroup::CgroupHandle);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if let Ok(cgroup) = firkin_linux::cgroup::SandboxCgroup::open(self.1.clone()) {
                let _ = cgroup.remove();
            }
        }
    }

    fn envd_binary() -> PathBuf {
        std::env::var_os("FIRKIN_ENVD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/firkin-envd")
            })
    }

    /// A sandbox of the tiny template under `base` (made here) with `envd` as its PID 1.
    fn sandbox_spec(base: &Path, envd: PathBuf) -> InitSpec {
        let (lower, upper, work, root) = (
            base.join("lower"),
            base.join("upper"),
            base.join("work"),
            base.join("root"),
        );
        template(&lower);
        for dir in [&upper, &work, &root] {
            std::fs::create_dir(dir).unwrap();
        }
        chown_tree(&upper, SHIFT, SHIFT);
        chown_tree(&work, SHIFT, SHIFT);
        InitSpec {
            hostname: "sbx-launch-test".to_owned(),
            netns: None,
            lower_dirs: vec![lower],
            upper_dir: upper,
            work_dir: work,
            root_dir: root,
            layers: vec![firkin_linux::sandbox::LayerMount {
                source: PathBuf::from("/usr"),
                target: PathBuf::from("/usr"),
                overlay: None,
                extra_lowers: Vec::new(),
            }],
            envd_binary: envd,
            envd_args: ["--listen", "0.0.0.0:49983", "--default-user", "root"]
                .map(String::from)
                .to_vec(),
            envd_env: vec![],
            envd_access_token: None,
            no_new_privs: true,
        }
    }

    #[test]
    fn a_sandbox_serves_envd_as_pid1_and_dies_whole() {
        if !firkin_test_support::root_or_skip("launch test") {
            return;
        }
        let envd = envd_binary();
        if !envd.exists() {
            firkin_test_support::skip(
                "launch test",
                &format!("{} not built (scripts/build-envd)", envd.display()),
            );
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let spec = sandbox_spec(base.path(), envd);
        let (upper, root) = (spec.upper_dir.clone(), spec.root_dir.clone());
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        let name = format!("launch-test-{}", std::process::id());
        let limits = firkin_linux::cgroup::CgroupLimits {
            cpu_millis: Some(1000),
            memory_bytes: Some(256 << 20),
            pids_max: Some(256),
        };
        let cgroup = firkin_linux::cgroup::SandboxCgroup::create(&layout, &name, &limits).unwrap();
        let started = Instant::now();
        let launched = launch(
            Path::new(env!("CARGO_BIN_EXE_firkin-sandbox-init")),
            &spec,
            IdMap {
                host_start: SHIFT,
                count: 65_536,
            },
            &cgroup.procs_paths(),
        );
        let launched = launched.unwrap_or_else(|error| {
            cgroup.remove().unwrap();
            panic!("launch: {error}")
        });
        let pid1 = launched.pid1;
        // Whatever happens below, the sandbox goes with the test.
        let _reaper = KillOnDrop(pid1, cgroup.handle().clone());
        // Once envd says it serves, /health answers at the first try.
        launched
            .wait_until_serving(Duration::from_secs(10))
            .unwrap();
        let health = get_inside(pid1, "/health").expect("envd said ready but does not answer");
        eprintln!("launch -> envd answering: {:?}", started.elapsed());
        assert!(health.starts_with("HTTP/1.1 204"), "{health}");

        // Every process of the sandbox is in its cgroup, and the cgroup namespace's root is it.
        assert!(
            cgroup.pids().unwrap().contains(&pid1),
            "PID 1 is not in the sandbox cgroup"
        );
        // (Read from inside: cgroup paths are shown relative to the reader's namespace.)
        let (inner_view, _) = run_inside(pid1, "cat /proc/self/cgroup");
        assert!(
            !inner_view.contains("firkin"),
            "the sandbox sees host cgroup paths: {inner_view}"
        );
        // PID 1 of its own PID namespace, root mapped to the shifted range, own hostname.
        let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");
        // Root inside keeps only the container-default capabilities: no CAP_SYS_ADMIN (bit 21),
        // so it cannot mount; no CAP_SYS_MODULE (16), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19).
        let bounding = status.lines().find(|l| l.starts_with("CapBnd:")).unwrap();
        let bounding =
            u64::from_str_radix(bounding.split_whitespace().nth(1).unwrap(), 16).unwrap();
        for forbidden in [21, 16, 12, 19] {
            assert_eq!(
                bounding & (1 << forbidden),
                0,
                "capability {forbidden} kept: {bounding:x}"
            );
        }
        assert_ne!(bounding & (1 << 0), 0, "CAP_CHOWN must stay");
        // The spec asked for no_new_privs (the driver's test checks `base`, where it is off).
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["NoNewPrivs:", "1"]),
            "no_new_privs not set"
        );
        let uid_map = std::fs::read_to_string(format!("/proc/{pid1}/uid_map")).unwrap();
        assert_eq!(
            uid_map.split_whitespace().collect::<Vec<_>>(),
            ["0", &SHIFT.to_string(), "65536"]
        );
        let hostname = std::process::Command::new("nsenter")
            .args(["-t", &pid1.to_string(), "-u", "hostname"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&hostname.stdout).trim(),
            "sbx-launch-test"
        );
        // From inside: pid 1 is envd, the hostname is the sandbox's, root is root, writes land
        // in the upper layer, /usr refuses writes, and the seccomp profile refuses mounts and
        // new namespaces.
        let (out, code) = run_inside(
            pid1,
            "hostname; id -u; cat /proc/1/comm; echo hi > /root/f; touch /usr/x 2>/dev/null || echo usr-ro",
        );
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["sbx-launch-test", "0", "envd", "usr-ro"],
            "{out}"
        );
        let (out, _) = run_inside(
            pid1,
            "mount -t tmpfs x /tmp 2>&1; echo mount=$?; unshare -U true 2>&1; echo unshare=$?; ls /proc | grep -c '^[0-9]'",
        );
        assert!(out.contains("mount=") && !out.contains("mount=0"), "{out}");
        assert!(
            out.contains("unshare=") && !out.contains("unshare=0"),
            "{out}"
        );
        // The root is the overlay: the template is visible, /usr is the host's and read-only.
        let sandbox_root = PathBuf::from(format!("/proc/{pid1}/root"));
        assert!(sandbox_root.join("etc/passwd").exists());
        assert!(sandbox_root.join("usr/bin").exists());
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid1}/mountinfo")).unwrap();
        let usr = mountinfo
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/usr"))
            .expect("/usr mounted");
        assert!(
            usr.split_whitespace()
                .nth(5)
                .unwrap()
                .split(',')
                .any(|o| o == "ro"),
            "{usr}"
        );
        // Nothing of the sandbox is mounted in the host's namespace.
        let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !host_mounts.contains(root.to_str().unwrap()),
            "sandbox mounts leaked to the host"
        );

        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid1 as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid1}")).exists() {
            // PID 1 is not our child once the helper exited: the host's init reaps it.
            assert!(Instant::now() < deadline, "PID 1 survived SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            std::fs::read_to_string(upper.join("root/f")).unwrap(),
            "hi\n",
            "writes land in the upper dir"
        );
        drop(base);
    }

    /// A PID 1 whose envd dies before serving is reported at once, with the pipe's end, not
    /// after the whole timeout.
    #[test]
    fn an_envd_that_dies_before_serving_fails_the_launch_at_once() {
        if !firkin_test_support::root_or_skip("launch test") {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        // `false` as envd: it exits 1 at once, without a word on the status pipe.
        let spec = sandbox_spec(base.path(), PathBuf::from("/bin/false"));
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        let name = format!("launch-dies-{}", std::process::id());
        let cgroup = firkin_linux::cgroup::SandboxCgroup::create(
            &layout,
            &name,
            &firkin_linux::cgroup::CgroupLimits::default(),
        )
        .unwrap();
        let ids = IdMap {
            host_start: SHIFT,
            count: 65_536,
        };
        let helper = Path::new(env!("CARGO_BIN_EXE_firkin-sandbox-init"));
        let launched = launch(helper, &spec, ids, &cgroup.procs_paths());
        let started = Instant::now();
        let outcome = launched.map(|launched| {
            let _reaper = KillOnDrop(launched.pid1, cgroup.handle().clone());
            launched.wait_until_serving(Duration::from_secs(60))
        });
        let waited = started.elapsed();
        let _ = cgroup.kill();
        let _ = cgroup.remove();
        let error = outcome.unwrap().unwrap_err().to_string();
        assert!(
            error.contains("exited before it served"),
            "unexpected error: {error}"
        );
        assert!(
            waited < Duration::from_secs(30),
            "the failure waited {waited:?} of the 60 s timeout"
        );
        let host_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!host_mounts.contains(base.path().to_str().unwrap()));
    }
}
