//! The disk limit of real sandboxes: a sandbox fills its own disk and no more (`dd` gets
//! "No space left on device", `df /` shows the disk's size, an upload past it is answered 507
//! and leaves no partial file), while a neighbour sandbox, the state database and the host
//! keep writing; afterwards no mount, image or loop device is left. Needs root, nftables and
//! a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    use super::common::{self, run_as};

    use firkin_single_node::{ListQuery, SandboxResources, SingleNodeCreateRequest};

    const DISK_MB: u64 = 64;

    /// `POST /files` of `size` zero bytes to `path` as the default user; the status code
    /// and the answer's body.
    fn upload(envd: SocketAddr, token: &str, path: &str, size: usize) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(envd).unwrap();
        let head = format!(
            "POST /files?path={path} HTTP/1.1\r\nHost: envd\r\nX-Access-Token: {token}\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let chunk = vec![0_u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len());
            // envd may answer and close before the whole body is sent.
            if stream.write_all(&chunk[..n]).is_err() {
                break;
            }
            left -= n;
        }
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response);
        let response = String::from_utf8_lossy(&response).into_owned();
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status in {response:?}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sandbox_fills_its_own_disk_and_no_more() {
        let Some(mut harness) = common::harness(
            "disk test",
            "10.213.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.disk_size_mb = DISK_MB;
        // One warm sandbox, so that both a handed-out and a cold-started sandbox are tried.
        harness.config.warm_pool = 1;
        let backend = harness.backend().await;
        let mut sandboxes = Vec::new();
        for _ in 0..2 {
            let made = common::create_base(&backend, 1, 256).await;
            sandboxes.push((made.id, made.envd, made.token, made.pid1));
        }
        let sh = |envd, token: &str, script: &str| run_as(envd, token, None, script).0;

        for (id, envd, token, _) in &sandboxes {
            // `df /` shows the sandbox's disk (less ext4's own tables), not the host's.
            let size = sh(*envd, token, "df -B1M --output=size / | tail -1");
            let size: u64 = size
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{id}: df: {size:?}"));
            assert!(
                (DISK_MB * 3 / 4..=DISK_MB).contains(&size),
                "{id}: df / shows {size} MiB, not its {DISK_MB} MiB disk"
            );
        }

        let (full_id, full, full_token, _) = &sandboxes[0];
        let (neighbour_id, neighbour, neighbour_token, _) = &sandboxes[1];
        let out = sh(
            *full,
            full_token,
            "dd if=/dev/zero of=$HOME/fill bs=1M count=100 2>&1; echo rc=$?",
        );
        assert!(
            out.contains("No space left on device") && out.trim_end().ends_with("rc=1"),
            "{full_id}: 100 MiB written to a {DISK_MB} MiB disk: {out}"
        );
        // The neighbour, the state database and the host write on.
        let out = sh(
            *neighbour,
            neighbour_token,
            "dd if=/dev/zero of=$HOME/fits bs=1M count=20 2>&1; echo rc=$?",
        );
        assert!(out.trim_end().ends_with("rc=0"), "{neighbour_id}: {out}");
        // The driver's metrics count what the sandbox wrote on its disk.
        let used = backend
            .metrics(neighbour_id)
            .await
            .unwrap()
            .1
            .disk_used_bytes;
        assert!(
            ((20 << 20)..(DISK_MB << 20)).contains(&used),
            "{neighbour_id}: {used} bytes used after writing 20 MiB"
        );
        let beside_db = harness.state.path().join("host-write");
        std::fs::write(&beside_db, vec![1_u8; 1 << 20]).unwrap();
        std::fs::remove_file(&beside_db).unwrap();
        assert_eq!(
            backend.list(&ListQuery::default()).unwrap().sandboxes.len(),
            2,
            "the state database still answers"
        );

        // An upload past the disk: 507 with E2B's error JSON, and no partial file.
        sh(*full, full_token, "rm -f $HOME/fill");
        let (status, body) = upload(*full, full_token, "/home/user/upload.bin", 96 << 20);
        assert_eq!(status, 507, "{full_id}: {body}");
        let error: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|error| {
            panic!("{full_id}: the 507 body is not JSON ({error}): {body:?}")
        });
        assert_eq!(error["code"], 507, "{body}");
        assert!(error["message"].is_string(), "{body}");
        let out = sh(
            *full,
            full_token,
            "ls /home/user/upload.bin 2>&1; echo rc=$?",
        );
        assert!(
            out.trim_end().ends_with("rc=2"),
            "a partial upload is left: {out}"
        );
        // The space is back: a smaller upload fits.
        let (status, body) = upload(*full, full_token, "/home/user/small.bin", 8 << 20);
        assert_eq!(status, 200, "{full_id}: {body}");

        let pids: Vec<u32> = sandboxes.iter().map(|(.., pid)| *pid).collect();
        let ids: Vec<String> = sandboxes.iter().map(|(id, ..)| id.clone()).collect();
        for id in &ids {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        // Nothing is left: mounts, images, loop devices (see `assert_nothing_left`).
        harness.assert_nothing_left(&ids, &pids).await;
    }

    /// After a reboot the images are still there, their mounts and sandboxes gone: the next
    /// daemon finds the sandbox dead and removes its image with the rest of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_sandboxs_disk_goes_after_a_reboot() {
        let Some(mut harness) = common::harness(
            "disk reboot test",
            "10.214.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        harness.config.disk_size_mb = DISK_MB;
        harness.config.warm_pool = 0;
        let backend = harness.backend().await;
        let sandbox = backend
            .create(SingleNodeCreateRequest::new(
                "base",
                SandboxResources::from_mib(1, 128),
            ))
            .await
            .unwrap();
        let id = sandbox.sandbox_id().to_owned();
        let pid = common::host_pid1(&sandbox);
        // The daemon goes without a word (its slots stay, as after a SIGKILL).
        drop(backend);
        // The "reboot": the sandbox's processes and its disk's mount are gone.
        let layout = firkin_linux::cgroup::CgroupLayout::detect().unwrap();
        firkin_linux::cgroup::SandboxCgroup::reclaim(&layout, &id).unwrap();
        let dir = harness.state.path().join("sandboxes").join(&id);
        rustix::mount::unmount(&dir, rustix::mount::UnmountFlags::DETACH).unwrap();
        let image = harness.state.path().join("disks").join(format!("{id}.img"));
        assert!(
            image.exists(),
            "the image of {id} is not at {}",
            image.display()
        );

        let backend = harness.backend().await;
        let report = backend.startup_reconciliation();
        assert!(report.adopted.is_empty(), "{report:?}");
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&[id], &[pid]).await;
    }
}
