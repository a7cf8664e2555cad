//! Talking to a sandbox's envd in raw HTTP/1.1 from the Linux tests (no client crate: the
//! bytes are the point).

#![allow(dead_code, unreachable_pub)]

/// A `process.Process/Start` request running `sh -c script`, as one Connect streaming
/// envelope, with the access token if there is one.
pub fn start_request(token: Option<&str>, script: &str) -> Vec<u8> {
    let body = serde_json::json!({ "process": { "cmd": "/bin/sh", "args": ["-c", script] }, "stdin": false });
    let payload = body.to_string().into_bytes();
    let mut envelope = vec![0_u8];
    envelope.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    envelope.extend_from_slice(&payload);
    let token = token
        .map(|t| format!("X-Access-Token: {t}\r\n"))
        .unwrap_or_default();
    let mut request = format!(
        "POST /process.Process/Start HTTP/1.1\r\nHost: envd\r\n{token}Content-Type: application/connect+json\r\nConnect-Protocol-Version: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        envelope.len()
    )
    .into_bytes();
    request.extend_from_slice(&envelope);
    request
}

/// The stdout and exit code in a Start response (the JSON events are read as text, which is
/// enough for these tests). Panics when the stream has no `end` event.
pub fn parse_start_response(response: &str) -> (String, i32) {
    let mut stdout = Vec::new();
    for part in response.split("\"stdout\":\"").skip(1) {
        stdout.extend(base64_decode(part.split('"').next().unwrap()));
    }
    assert!(response.contains("\"end\""), "no end event: {response}");
    let exit_code = response.split("\"exitCode\":").nth(1).map_or(0, |rest| {
        rest.trim_start()
            .split(|c: char| c != '-' && !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    });
    (String::from_utf8_lossy(&stdout).into_owned(), exit_code)
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' | b'-' => 62,
        _ => 63,
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
    digits
        .chunks(4)
        .flat_map(|chunk| {
            let shift = 6 * (4 - chunk.len());
            let bits = chunk
                .iter()
                .fold(0_u32, |acc, d| (acc << 6) | u32::from(*d))
                << shift;
            bits.to_be_bytes()[1..chunk.len()].to_vec()
        })
        .collect()
}

/// `Authorization` for envd's user selection: `Basic base64("name:")`.
pub fn basic_user(user: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = format!("{user}:").into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0_u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `sh -c script` through a sandbox's envd as `user` (`None`: the sandbox's default user);
/// returns stdout and the exit code.
pub fn run_as(
    address: std::net::SocketAddr,
    token: &str,
    user: Option<&str>,
    script: &str,
) -> (String, i32) {
    use std::io::{Read, Write};
    let mut request = start_request(Some(token), script);
    if let Some(user) = user {
        let header = format!("Authorization: Basic {}\r\n", basic_user(user));
        // After the request line.
        let at = request.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
        request.splice(at..at, header.into_bytes());
    }
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(&request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    parse_start_response(&String::from_utf8_lossy(&response))
}

/// Real sandboxes for a test: a state directory, a driver configuration with a slot pool
/// instance (namespace directory) and an address range of the test's own, so parallel test
/// binaries keep their slots apart (an overlapping range would fail at start).
pub struct Harness {
    /// The state directory (templates, sandboxes, the database, the views).
    pub state: tempfile::TempDir,
    /// The driver's configuration.
    pub config: firkin_linux::driver::NamespaceConfig,
}

/// The envd binary the tests put in sandboxes.
pub fn envd_binary() -> std::path::PathBuf {
    std::env::var_os("FIRKIN_ENVD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/firkin-envd")
        })
}

/// A harness, or `None` (after saying why) where real sandboxes cannot be made: not root,
/// no nftables, no envd built.
pub fn harness(test: &str, range: &str, init_helper: &str) -> Option<Harness> {
    if !firkin_test_support::root_or_skip(test) {
        return None;
    }
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        firkin_test_support::skip(test, "needs nftables (nft)");
        return None;
    }
    let envd = envd_binary();
    if !envd.exists() {
        firkin_test_support::skip(test, &format!("{} not built", envd.display()));
        return None;
    }
    let state = tempfile::tempdir().unwrap();
    let config = driver_config(state.path(), range, init_helper);
    Some(Harness { state, config })
}

/// The driver configuration of a test's sandboxes under `state`, with its own address range.
pub fn driver_config(
    state: &std::path::Path,
    range: &str,
    init_helper: &str,
) -> firkin_linux::driver::NamespaceConfig {
    let mut config = firkin_linux::driver::NamespaceConfig::new(state, envd_binary(), init_helper);
    config.net.range = range.parse().unwrap();
    config.net.netns_dir = state.join("netns");
    config.net.pool_size = 2;
    config
}

/// A backend over a fresh driver and the durable state in `<state>/db` (what a daemon
/// starting over this state directory builds); no disk floors (tests share disks).
pub async fn backend_at(
    state: &std::path::Path,
    config: firkin_linux::driver::NamespaceConfig,
) -> firkin_single_node::SingleNodeBackend {
    let store = firkin_single_node::StateStore::open(state.join("db")).unwrap();
    let driver = firkin_linux::driver::NamespaceDriver::for_state(config, &store)
        .await
        .unwrap();
    firkin_single_node::SingleNodeBackend::builder(
        firkin_single_node::SingleNodeConfig::new(state.join("db")),
        std::sync::Arc::new(driver),
    )
    .state(store)
    .disk_guard(firkin_single_node::DiskPressureGuard::with_probe(
        state,
        0,
        0,
        std::sync::Arc::new(firkin_single_node::StatvfsDiskProbe),
    ))
    .build()
    .await
    .unwrap()
}

impl Harness {
    /// A backend over a fresh driver and this harness's durable state.
    pub async fn backend(&self) -> firkin_single_node::SingleNodeBackend {
        backend_at(self.state.path(), self.config.clone()).await
    }

    /// After the backend is shut down (which tears down the warm sandboxes) and dropped:
    /// nothing of the sandboxes named `ids`, with PID 1s `pids`, is left: processes, cgroups,
    /// directories (no sandbox directory at all), mounts under the state directory, network
    /// slots (the pool's spare slots are reclaimed first, as the next daemon would), disk
    /// images and their loop devices.
    pub async fn assert_nothing_left(&self, ids: &[String], pids: &[u32]) {
        for pid in pids {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.contains("envd"));
            assert!(!alive, "sandbox PID 1 {pid} still runs");
        }
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        let cgroups = layout.firkin_cgroups().unwrap();
        for id in ids {
            assert!(!cgroups.contains(id), "cgroup of {id} left behind");
            assert!(
                !self.state.path().join("sandboxes").join(id).exists(),
                "directory of {id} left behind"
            );
        }
        let dirs: Vec<_> = std::fs::read_dir(self.state.path().join("sandboxes"))
            .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(dirs.is_empty(), "sandbox directories left behind: {dirs:?}");
        firkin_linux::net::reclaim_leftovers(&self.config.net, &[])
            .await
            .unwrap();
        let net = firkin_linux::net::find_leftovers(&self.config.net, &[]).unwrap();
        assert!(net.is_empty(), "network slots left behind: {net:?}");
        let state = self.state.path().display().to_string();
        // The reclaim also unmounted the pool's namespace directory (a bind mount of itself).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&state)).collect();
        assert!(left.is_empty(), "mounts left behind: {left:#?}");
        // The blank image every sandbox disk copies stays for the next daemon.
        let images: Vec<_> = std::fs::read_dir(self.state.path().join("disks"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name())
                    .filter(|name| name != ".blank.img")
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            images.is_empty(),
            "sandbox disk images left behind: {images:?}"
        );
        // A loop device clears itself once the last mount namespace holding its file system
        // (a killed sandbox's) is gone, which may be a moment after the delete.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = loop_devices_under(self.state.path());
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "loop devices left attached: {left:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// The loop devices whose backing file is under `dir`.
pub fn loop_devices_under(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_dir("/sys/block")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let backing =
                        std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
                    backing
                        .starts_with(&dir)
                        .then(|| entry.file_name().to_string_lossy().into_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for Harness {
    /// A failed test leaves nothing running either: its sandboxes' cgroups are killed, the
    /// mounts under its state directory detached, and the network slots reclaimed.
    fn drop(&mut self) {
        let sandboxes = self.state.path().join("sandboxes");
        if let Ok(layout) = firkin_linux::cgroup::CgroupLayout::detect() {
            for name in layout.firkin_cgroups().unwrap_or_default() {
                if sandboxes.join(&name).exists() {
                    let _ = firkin_linux::cgroup::SandboxCgroup::reclaim(&layout, &name);
                }
            }
        }
        let state = self.state.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| point.starts_with(&state))
            .collect();
        // Deepest first.
        points.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in points {
            let _ = rustix::mount::unmount(point, rustix::mount::UnmountFlags::DETACH);
        }
        let net = self.config.net.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime
                .block_on(firkin_linux::net::reclaim_leftovers(&net, &[]))
                .ok()
        })
        .join();
    }
}

/// Host pid of a sandbox's PID 1, from the runtime handle the driver stored.
pub fn host_pid1(sandbox: &firkin_single_node::SandboxSession) -> u32 {
    let handle = sandbox
        .record()
        .runtime_handle
        .as_ref()
        .expect("no runtime handle");
    let value: serde_json::Value = serde_json::from_str(&handle.0).unwrap();
    u32::try_from(value["pid1"].as_u64().expect("no pid1 in the handle")).unwrap()
}

/// A `base` sandbox a test created, and what reaching and checking it takes.
pub struct Created {
    pub id: String,
    /// envd's address on the host.
    pub envd: std::net::SocketAddr,
    /// envd's access token.
    pub token: String,
    /// The host pid of its PID 1.
    pub pid1: u32,
    pub session: firkin_single_node::SandboxSession,
}

/// Create a `base` sandbox with `vcpus` and `mib` of memory on `backend`.
pub async fn create_base(
    backend: &firkin_single_node::SingleNodeBackend,
    vcpus: u32,
    mib: u64,
) -> Created {
    let session = backend
        .create(firkin_single_node::SingleNodeCreateRequest::new(
            "base",
            firkin_single_node::SandboxResources::from_mib(vcpus, mib),
        ))
        .await
        .expect("create a base sandbox");
    let id = session.sandbox_id().to_owned();
    Created {
        envd: backend.ports().target(&id, 49983).unwrap(),
        token: session.record().envd_access_token.clone().unwrap(),
        pid1: host_pid1(&session),
        id,
        session,
    }
}
