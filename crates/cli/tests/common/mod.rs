//! What the command-line tests share: the static envd, a free port, and a `firkin serve`
//! started and waited for.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The static envd sandboxes run (`FIRKIN_ENVD_BIN`, else what `scripts/build-envd` built).
pub fn envd() -> PathBuf {
    std::env::var_os("FIRKIN_ENVD_BIN").map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/x86_64-unknown-linux-gnu/envd/firkin-envd")
        },
        PathBuf::from,
    )
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `firkin serve` over `state` on `port` with `extra` flags and no API key in its
/// environment (it generates one into the state directory), returned once it printed its
/// export lines; its output is drained from then on (it must never write into a closed pipe).
pub fn serve(state: &Path, port: u16, extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_firkin"))
        .arg("serve")
        .arg("--state-dir")
        .arg(state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--envd-bin")
        .arg(envd())
        .args(extra)
        .env_remove("FIRKIN_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.starts_with("export E2B_API_URL="));
    assert!(ready, "the daemon did not start");
    std::thread::spawn(move || lines.for_each(drop));
    child
}
