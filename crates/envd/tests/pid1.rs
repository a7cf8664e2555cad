//! envd as PID 1 of a fresh PID namespace (`unshare --pid --fork --mount-proc`): it serves,
//! reaps the orphans its start command leaves, starts its commands with the
//! `--child-oom-score-adj` it was given, and on SIGTERM stops everything and exits 0.
//! Needs root (and util-linux's `unshare`); skips with a message otherwise.

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn health(port: u16) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// Children of `pid` and their states, from /proc.
    fn children(pid: u32) -> Vec<(u32, char)> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            // Fields after the parenthesised command name: state, ppid, ...
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next().unwrap().chars().next().unwrap();
            let ppid: u32 = fields.next().unwrap().parse().unwrap();
            if ppid == pid {
                found.push((child, state));
            }
        }
        found
    }

    #[test]
    fn pid1_reaps_orphans_and_stops_cleanly_on_sigterm() {
        if !firkin_test_support::root_or_skip("pid1 test") {
            return;
        }
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let mut unshare = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(env!("CARGO_BIN_EXE_firkin-envd"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--default-user",
                "root",
                "--child-oom-score-adj",
                "700",
            ])
            // Three orphans that exit at once, and one long-lived process to be stopped.
            .args([
                "--start-cmd",
                "for i in 1 2 3; do (sleep 0.1 &); done; sleep 600",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare from util-linux");
        let deadline = Instant::now() + Duration::from_secs(10);
        while health(port).is_none() {
            assert!(Instant::now() < deadline, "envd did not serve within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(health(port).unwrap().starts_with("HTTP/1.1 204"));

        let init = children(unshare.id())[0].0;
        // envd (PID 1 and its server) keeps ours; the start command, as any command, gets 700.
        let oom_score_adj = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .unwrap()
                .trim()
                .to_owned()
        };
        let ours = oom_score_adj(std::process::id());
        assert_ne!(ours, "700");
        assert_eq!(oom_score_adj(init), ours, "PID 1");
        // Not the start command's orphans, which PID 1 may have inherited by now.
        let envd = std::fs::canonicalize(env!("CARGO_BIN_EXE_firkin-envd")).unwrap();
        let servers: Vec<u32> = children(init)
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == envd)
            })
            .collect();
        let [server] = servers[..] else {
            panic!("PID 1 {init} has envd children {servers:?}, not one server");
        };
        assert_eq!(oom_score_adj(server), ours, "the server");
        let commands = children(server);
        assert!(!commands.is_empty(), "no start command under {server}");
        for (command, _) in commands {
            assert_eq!(oom_score_adj(command), "700", "start command {command}");
        }
        std::thread::sleep(Duration::from_millis(500));
        let zombies: Vec<_> = children(init)
            .into_iter()
            .filter(|(_, state)| *state == 'Z')
            .collect();
        assert!(zombies.is_empty(), "PID 1 left zombies: {zombies:?}");

        rustix::process::kill_process(
            rustix::process::Pid::from_raw(init as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = unshare.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = unshare.kill();
                panic!("envd as PID 1 did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "PID 1 exited with {status}");
        assert!(health(port).is_none(), "still serving after exit");
    }
}
