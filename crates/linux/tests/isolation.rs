//! Twenty real sandboxes created at once, each checked from inside: its own processes,
//! files and hostname only; template layers not writable; the host and the other sandboxes
//! unreachable; root inside unable to mount, load modules or see host devices. Then all
//! deleted, and nothing left. Needs root, nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common::{self, run_as};
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};

    use firkin_single_node::{SandboxResources, SingleNodeCreateRequest};

    const SANDBOXES: usize = 20;

    struct Probe {
        id: String,
        token: String,
        envd: SocketAddr,
    }

    impl Probe {
        fn sh(&self, script: &str) -> String {
            self.sh_as(None, script)
        }

        fn sh_as(&self, user: Option<&str>, script: &str) -> String {
            run_as(self.envd, &self.token, user, script).0
        }

        /// `yes` when a TCP connection to `host:port` from inside succeeds within a second.
        fn reaches(&self, host: Ipv4Addr, port: u16) -> bool {
            let out = self.sh(&format!(
                "timeout 1 bash -c 'echo > /dev/tcp/{host}/{port}' 2>/dev/null && echo yes || echo no"
            ));
            out.trim() == "yes"
        }
    }

    /// The host's own IPv4 addresses other than loopback and firkin's slot gateways.
    fn host_addresses() -> Vec<Ipv4Addr> {
        let out = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.lines()
            .filter(|line| !line.contains(" lo ") && !line.contains(": fk"))
            .filter_map(|line| {
                line.split_whitespace()
                    .nth(3)?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn twenty_sandboxes_are_isolated_from_each_other_and_the_host() {
        let Some(harness) = common::harness(
            "isolation test",
            "10.204.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        // A host service on every address of the host: no sandbox may reach it.
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let host_port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();

        let backend = harness.backend().await;
        let creates = (0..SANDBOXES).map(|_| {
            backend.create(SingleNodeCreateRequest::new(
                "base",
                SandboxResources::from_mib(1, 128),
            ))
        });
        let created = futures::future::join_all(creates).await;
        let sandboxes: Vec<_> = created
            .into_iter()
            .map(|result| result.expect("create"))
            .collect();
        let probes: Vec<Probe> = sandboxes
            .iter()
            .map(|sandbox| {
                let id = sandbox.sandbox_id().to_owned();
                Probe {
                    envd: backend.ports().target(&id, 49983).unwrap(),
                    token: sandbox.record().envd_access_token.clone().unwrap(),
                    id,
                }
            })
            .collect();
        for probe in &probes {
            probe.sh(&format!("echo mine > /tmp/mark-{}", probe.id));
        }
        let host_addrs = host_addresses();
        let template_etc = harness.state.path().join("templates/base/rootfs/etc");
        std::thread::scope(|scope| {
            for (i, probe) in probes.iter().enumerate() {
                let neighbour = &probes[(i + 1) % probes.len()];
                let host_addrs = &host_addrs;
                let template_etc = &template_etc;
                scope.spawn(move || {
                    let id = &probe.id;
                    assert_eq!(probe.sh("hostname").trim(), id);
                    // Only its own processes: envd, the shell, and what the shell runs.
                    let pids = probe.sh("ls /proc | grep -c '^[0-9]'");
                    let count: u32 = pids.trim().parse().unwrap();
                    assert!(count < 10, "{id} sees {count} processes");
                    assert_eq!(probe.sh("cat /proc/1/comm").trim(), "envd");
                    // Only its own files.
                    assert_eq!(probe.sh("ls /tmp").trim(), format!("mark-{id}"));
                    // The template's layers: user cannot write them; root's writes stay in
                    // the sandbox's upper directory.
                    assert_eq!(
                        probe.sh("touch /etc/probe 2>/dev/null && echo wrote || echo denied").trim(),
                        "denied"
                    );
                    assert_eq!(
                        probe
                            .sh_as(Some("root"), &format!("echo {id} > /etc/probe && cat /etc/probe"))
                            .trim(),
                        id.as_str()
                    );
                    assert!(!template_etc.join("probe").exists(), "root wrote the template");
                    // The host (its slot gateway, its own addresses) and the neighbour.
                    let gateway = match probe.envd.ip() {
                        std::net::IpAddr::V4(ip) => Ipv4Addr::from(u32::from(ip) - 1),
                        std::net::IpAddr::V6(_) => unreachable!("slots are IPv4"),
                    };
                    // The probe itself works: a sandbox reaches its own envd.
                    let std::net::IpAddr::V4(own) = probe.envd.ip() else {
                        unreachable!("slots are IPv4")
                    };
                    assert!(probe.reaches(own, 49983), "{id} cannot reach its own envd");
                    assert!(!probe.reaches(gateway, host_port), "{id} reached the host via its gateway");
                    for addr in host_addrs {
                        assert!(!probe.reaches(*addr, host_port), "{id} reached the host at {addr}");
                    }
                    assert!(!probe.reaches(Ipv4Addr::LOCALHOST, host_port), "{id} reached host loopback");
                    let std::net::IpAddr::V4(other) = neighbour.envd.ip() else {
                        unreachable!("slots are IPv4")
                    };
                    assert!(!probe.reaches(other, 49983), "{id} reached {}", neighbour.id);
                    // Root inside: no mounts, no modules, no host devices.
                    let out = probe.sh_as(
                        Some("root"),
                        "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo refused",
                    );
                    assert_eq!(out.trim(), "refused", "{id}: root mounted a file system");
                    #[cfg(target_arch = "x86_64")]
                    {
                        // finit_module(-1, "", 0): EPERM (1) when module loading is denied,
                        // EBADF (9) if it got as far as looking at the file.
                        let out = probe.sh_as(
                            Some("root"),
                            "python3 -c 'import ctypes; l=ctypes.CDLL(None, use_errno=True); l.syscall(313, -1, b\"\", 0); print(ctypes.get_errno())'",
                        );
                        if std::path::Path::new("/usr/bin/python3").exists() {
                            assert_eq!(out.trim(), "1", "{id}: finit_module was not denied");
                        }
                    }
                    let devices = probe.sh_as(Some("root"), "find /dev -type b | wc -l; ls /dev");
                    let mut lines = devices.lines();
                    assert_eq!(lines.next(), Some("0"), "{id} sees block devices: {devices}");
                    let names: Vec<&str> = lines.collect();
                    for host_only in ["kvm", "mem", "kmsg", "vda", "sda", "nvme0"] {
                        assert!(!names.contains(&host_only), "{id} sees /dev/{host_only}");
                    }
                });
            }
        });
        // Nothing ever connected to the host service.
        let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(accepted, 0, "a sandbox reached the host service");

        let host_pids: Vec<u32> = sandboxes.iter().map(common::host_pid1).collect();
        let ids: Vec<String> = probes.iter().map(|p| p.id.clone()).collect();
        let deletes = ids.iter().map(|id| backend.delete(id));
        for result in futures::future::join_all(deletes).await {
            result.expect("delete");
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&ids, &host_pids).await;
    }
}
