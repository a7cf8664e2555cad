//! PID 1 of a sandbox.
//!
//! The first process of a PID namespace inherits every orphan and must reap it, and it is
//! the one the kernel sends termination signals to. Reaping with `waitpid(-1)` would steal
//! the exit statuses of the commands envd supervises, so envd splits in two before starting
//! any thread: PID 1 stays a tiny single-threaded reaper and signal forwarder, and its child
//! serves the envd protocol and supervises commands (reaping only its own children). When the
//! server exits, PID 1 stops everything else and exits with the server's status; the kernel
//! then tears the namespace down.

use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitOptions};

use crate::sys::{self, Forked};

/// How long the rest of the sandbox gets to exit after `SIGTERM` before `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Become PID 1's reaper in the parent; return in the child, which goes on to serve.
///
/// # Safety
///
/// The process must have exactly one thread: call this before starting any runtime or
/// thread (it forks, and the child goes on to run the server).
///
/// The contract is the caller's to keep, so a call outside `unsafe` does not compile:
///
/// ```compile_fail,E0133
/// let _ = firkin_envd::init::split_off_server();
/// ```
///
/// # Errors
///
/// When the fork fails.
#[allow(unsafe_code)]
pub unsafe fn split_off_server() -> std::io::Result<()> {
    // Signals are blocked across the fork so that none is lost between it and the parent's
    // wait loop; the child unblocks them before it starts its runtime.
    sys::block_all_signals(true)?;
    // SAFETY: the caller guarantees a single thread, and blocking signals started none.
    match unsafe { sys::fork_before_threads() }? {
        Forked::Child => sys::block_all_signals(false),
        Forked::Parent(server) => {
            // PID 1 keeps no file open: a pipe it held (the driver's readiness pipe) would
            // not end when the server does.
            // SAFETY: plain system call on numbers; nothing in this process uses them after
            // the fork (it only waits for signals from here on).
            unsafe { libc::close_range(3, u32::MAX, 0) };
            std::process::exit(reap_and_forward(server))
        }
    }
}

/// The PID 1 loop: reap every child, forward termination signals to the server, and when the
/// server is gone stop the rest and return its exit code.
fn reap_and_forward(server: u32) -> i32 {
    let server_pid = Pid::from_raw(server as i32).expect("fork returned a positive pid");
    loop {
        let signal = match sys::wait_for_signal() {
            Ok(signal) => signal,
            Err(error) => {
                eprintln!("firkin-envd init: waiting for signals failed: {error}");
                continue;
            }
        };
        if signal == libc::SIGCHLD {
            if let Some(code) = reap(Some(server_pid)) {
                stop_everything();
                return code;
            }
        } else if matches!(
            signal,
            libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
        ) && let Some(forward) = Signal::from_named_raw(signal)
        {
            let _ = rustix::process::kill_process(server_pid, forward);
        }
    }
}

/// Reap every exited child; the server's exit code if it was among them.
fn reap(server: Option<Pid>) -> Option<i32> {
    let mut server_code = None;
    while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
        if Some(pid) == server {
            server_code = Some(
                status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|signal| 128 + signal))
                    .unwrap_or(1),
            );
        }
    }
    server_code
}

/// Ask every remaining process to stop, then kill what is left.
fn stop_everything() {
    // Every process but us, found in /proc (this namespace's, as PID 1 sees it).
    signal_all(Signal::TERM);
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        reap(None);
        if !any_other_process() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(Signal::KILL);
    reap(None);
}

fn other_pids() -> Vec<Pid> {
    let me = rustix::process::getpid();
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter_map(Pid::from_raw)
                .filter(|pid| *pid != me)
                .collect()
        })
        .unwrap_or_default()
}

fn signal_all(signal: Signal) {
    for pid in other_pids() {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn any_other_process() -> bool {
    !other_pids().is_empty()
}
