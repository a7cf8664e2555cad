//! The driver's side of a launch (see the [module docs](super)).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sandbox::InitSpec;

/// Sandbox ids 0..`count` appear on the host as `host_start`..`host_start + count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    /// Host id of the sandbox's root.
    pub host_start: u32,
    /// How many ids are mapped.
    pub count: u32,
}

/// A started sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launched {
    /// Host pid of the sandbox's PID 1 (envd).
    pub pid1: u32,
}

/// Why a launch failed.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The helper could not be started.
    #[error("start {helper}")]
    Spawn {
        /// The helper binary.
        helper: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the helper, or writing its id maps, failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The helper reported a failure.
    #[error("sandbox setup failed: {0}")]
    Setup(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// Start a sandbox described by `spec` with the helper at `helper`, mapping ids by `ids`,
/// first joining the cgroups whose `cgroup.procs` files are given (so every process of the
/// sandbox, and its cgroup namespace, starts inside them). Blocking: call it from a blocking
/// thread. Returns once PID 1 exists (envd then starts serving on its own).
///
/// # Errors
///
/// [`LaunchError`] naming the step; the helper's own report for failures inside.
pub fn launch(
    helper: &Path,
    spec: &InitSpec,
    ids: IdMap,
    cgroup_procs: &[PathBuf],
) -> Result<Launched, LaunchError> {
    let json = serde_json::to_string(spec)
        .map_err(|e| io_error("encode the spec")(std::io::Error::other(e)))?;
    let (status_read, status_write) = pipe().map_err(io_error("create the status pipe"))?;
    let (go_read, go_write) = pipe().map_err(io_error("create the go pipe"))?;
    let cgroups = cgroup_procs
        .iter()
        .map(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io_error(format!("open {}", path.display())))
        })
        .collect::<Result<Vec<File>, _>>()?;

    let mut command = Command::new(helper);
    command
        .env_clear()
        .env(InitSpec::ENV_SPEC, json)
        .env(
            InitSpec::ENV_STATUS_FD,
            status_write.as_raw_fd().to_string(),
        )
        .env(InitSpec::ENV_GO_FD, go_read.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let inherited = [status_write.as_raw_fd(), go_read.as_raw_fd()];
    let cgroup_fds: Vec<i32> = cgroups.iter().map(AsRawFd::as_raw_fd).collect();
    pre_exec(&mut command, inherited, cgroup_fds);
    let mut child = command.spawn().map_err(|source| LaunchError::Spawn {
        helper: helper.to_owned(),
        source,
    })?;
    drop((status_write, go_read, cgroups));

    let outcome = converse(child.id(), ids, status_read, go_write);
    // The helper exits right after reporting PID 1 (or failing): reap it.
    let _ = child.wait();
    outcome
}

/// Read the helper's status lines, write the maps when it asks, return PID 1.
fn converse(
    helper_pid: u32,
    ids: IdMap,
    status: OwnedFd,
    go: OwnedFd,
) -> Result<Launched, LaunchError> {
    let mut lines = BufReader::new(File::from(status)).lines();
    let mut go = File::from(go);
    loop {
        let line = lines
            .next()
            .ok_or_else(|| LaunchError::Setup("the helper exited without reporting".to_owned()))?
            .map_err(io_error("read the helper's status"))?;
        if line == "maps" {
            write_maps(helper_pid, ids)?;
            go.write_all(b"1").map_err(io_error("signal the helper"))?;
        } else if let Some(pid) = line.strip_prefix("pid ") {
            let pid1 = pid.parse().map_err(|_| {
                LaunchError::Setup(format!("the helper reported a bad pid {pid:?}"))
            })?;
            return Ok(Launched { pid1 });
        } else if let Some(message) = line.strip_prefix("err ") {
            return Err(LaunchError::Setup(message.to_owned()));
        } else {
            return Err(LaunchError::Setup(format!(
                "unexpected helper status {line:?}"
            )));
        }
    }
}

/// The helper's user namespace: sandbox 0.. → host `ids.host_start`.., for users and groups.
/// Written by a privileged process of the parent namespace, so `setgroups` stays allowed
/// inside (sudo and su need it).
fn write_maps(pid: u32, ids: IdMap) -> Result<(), LaunchError> {
    let line = format!("0 {} {}\n", ids.host_start, ids.count);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, &line).map_err(io_error(format!("write {path}")))?;
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

#[allow(unsafe_code)]
fn pre_exec(command: &mut Command, inherited: [i32; 2], cgroup_fds: Vec<i32>) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed. It only makes system calls (fcntl, write, setsid) on fds and data
    // captured before the fork, allocates nothing, takes no lock, and reports errors through
    // errno.
    unsafe {
        command.pre_exec(move || {
            for fd in inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Join the sandbox's cgroups ("0" means the writing process) before any
            // namespace exists, so the cgroup namespace's root is the sandbox's cgroup.
            for fd in &cgroup_fds {
                if libc::write(*fd, c"0".as_ptr().cast(), 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Out of the daemon's session: terminal signals to the daemon do not reach it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
