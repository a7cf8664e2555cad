//! envd's `GET /metrics` in a real sandbox reports the sandbox's own limits (its cgroup's),
//! not the host's: a sandbox of 1 CPU and 256 MiB says so, and a warm sandbox claimed with
//! other limits says those. Needs root, nftables and a built envd; skips otherwise.

mod common;

#[cfg(test)]
mod tests {
    use super::common;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    /// envd's `/metrics`, straight from the sandbox (not through the daemon).
    fn metrics(address: SocketAddr, token: &str) -> serde_json::Value {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: envd\r\nX-Access-Token: {token}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_report_the_sandboxes_limits() {
        let Some(mut harness) = common::harness(
            "metrics test",
            "10.218.0.0/16",
            env!("CARGO_BIN_EXE_firkin-sandbox-init"),
        ) else {
            return;
        };
        // The second create gets the warm sandbox, started before its limits were known.
        harness.config.warm_pool = 1;
        let backend = harness.backend().await;
        let mut ids = Vec::new();
        let mut pids = Vec::new();
        for (cpus, mib) in [(1, 256), (2, 192)] {
            let common::Created {
                id,
                envd: address,
                token,
                session: sandbox,
                ..
            } = common::create_base(&backend, cpus, mib).await;
            let host_cpus = std::thread::available_parallelism().unwrap().get() as u64;
            let reported = metrics(address, &token);
            assert_eq!(reported["mem_total"], mib << 20, "{reported}");
            assert_eq!(reported["mem_total_mib"], mib, "{reported}");
            assert_eq!(
                reported["cpu_count"],
                u64::from(cpus).min(host_cpus),
                "{reported}"
            );
            let used = reported["mem_used"].as_u64().unwrap();
            assert!(used > 0 && used < mib << 20, "{reported}");
            let busy = reported["cpu_used_pct"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&busy), "{reported}");
            assert!(reported["disk_total"].as_u64().unwrap() > 0, "{reported}");
            pids.push(common::host_pid1(&sandbox));
            ids.push(id);
        }
        for id in &ids {
            backend.delete(id).await.unwrap();
        }
        backend.shutdown().await.unwrap();
        drop(backend);
        harness.assert_nothing_left(&ids, &pids).await;
    }
}
