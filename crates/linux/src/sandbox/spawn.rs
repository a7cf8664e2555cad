//! The driver's side of a launch (see the [module docs](super)).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
#[derive(Debug)]
pub struct Launched {
    /// Host pid of the sandbox's PID 1 (envd).
    pub pid1: u32,
    /// The status pipe, on which envd says `ready` (see [`Launched::wait_until_serving`]).
    status: BufReader<File>,
    /// envd said `ready` before the helper reported PID 1 (it may, as they share the pipe).
    ready: bool,
}

impl Launched {
    /// Waits at most `timeout` until envd accepts connections: it writes `ready` on the
    /// status pipe once its listener is bound (`--ready-fd`), so nothing polls it, and a
    /// PID 1 or envd that fails ends the pipe, or reports why, at once instead of at the
    /// timeout.
    ///
    /// # Errors
    ///
    /// [`LaunchError::Setup`] with PID 1's report, envd's exit, or the timeout.
    pub fn wait_until_serving(mut self, timeout: Duration) -> Result<(), LaunchError> {
        if self.ready {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        if self.status.buffer().is_empty() && !self.readable_before(deadline)? {
            return Err(LaunchError::Setup(format!(
                "envd did not serve within {timeout:?}"
            )));
        }
        let mut line = String::new();
        if self
            .status
            .read_line(&mut line)
            .map_err(io_error("read envd's readiness"))?
            == 0
        {
            return Err(LaunchError::Setup(
                "envd exited before it served (see the daemon's log)".to_owned(),
            ));
        }
        match line.trim_end() {
            "ready" => Ok(()),
            other => Err(LaunchError::Setup(
                other.strip_prefix("err ").unwrap_or(other).to_owned(),
            )),
        }
    }

    /// Whether the status pipe has something to read (a line or its end) before `deadline`.
    fn readable_before(&self, deadline: Instant) -> Result<bool, LaunchError> {
        use rustix::event::{PollFd, PollFlags, poll};
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let timeout =
                rustix::time::Timespec::try_from(left).unwrap_or(rustix::time::Timespec {
                    tv_sec: i64::MAX,
                    tv_nsec: 0,
                });
            let mut fds = [PollFd::new(self.status.get_ref(), PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Ok(_) => return Ok(true),
                Err(errno) => return Err(io_error("wait for envd")(errno.into())),
            }
        }
    }
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

/// Start a sandbox described by `spec` with the helper at `helper`, mapping ids by `ids`;
/// the helper first joins the cgroups whose `cgroup.procs` files are given (so every process
/// of the sandbox, and its cgroup namespace, starts inside them). Blocking: call it from a
/// blocking thread. Returns once PID 1 exists (envd then starts serving on its own), with an
/// `oom_score_adj` of [`ENVD_OOM_SCORE_ADJ`] (written into the helper before it forks PID 1)
/// where the driver has `CAP_SYS_RESOURCE`, else with the driver's: see
/// [`envd_oom_protection`] for what envd must then be told.
///
/// The helper's stdout is the status pipe and its stdin the go pipe, and it does the rest
/// itself (joining the cgroups, leaving the daemon's session): with nothing to run between
/// fork and exec, std starts it with `posix_spawn` (a vfork, ~0.3 ms) instead of a fork of
/// the daemon, whose page tables cost ~4 ms to copy on a paravirtualised host.
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
    let encode = |what: &str, value: Result<String, serde_json::Error>| {
        value.map_err(|e| io_error(format!("encode the {what}"))(std::io::Error::other(e)))
    };
    let json = encode("spec", serde_json::to_string(spec))?;
    let cgroups = encode("cgroups", serde_json::to_string(cgroup_procs))?;
    let (status_read, status_write) = pipe().map_err(io_error("create the status pipe"))?;
    let (go_read, go_write) = pipe().map_err(io_error("create the go pipe"))?;
    let mut command = Command::new(helper);
    command
        .env_clear()
        .env(InitSpec::ENV_SPEC, json)
        .env(InitSpec::ENV_CGROUP_PROCS, cgroups)
        .stdin(go_read)
        .stdout(status_write)
        .stderr(Stdio::inherit());
    let spawned = command.spawn();
    // Our copies of the helper's ends: the status pipe must end when the helper does.
    drop(command);
    let mut child = spawned.map_err(|source| LaunchError::Spawn {
        helper: helper.to_owned(),
        source,
    })?;
    let token = spec
        .envd_access_token
        .as_ref()
        .map(|token| token.0.as_str());
    let outcome = converse(child.id(), ids, status_read, go_write, token);
    // The helper exits right after reporting PID 1 (or failing): reap it.
    let _ = child.wait();
    outcome
}

/// The go line the driver writes once the id maps are written: `go`, then envd's access
/// token when there is one (the helper hands it to envd in a pipe of its own).
fn go_line(token: Option<&str>) -> String {
    match token {
        Some(token) => format!("go {token}\n"),
        None => "go\n".to_owned(),
    }
}

/// Read the helper's status lines, write the maps when it asks, return PID 1 (with the
/// status pipe, which PID 1 and then envd keep).
fn converse(
    helper_pid: u32,
    ids: IdMap,
    status: OwnedFd,
    go: OwnedFd,
    token: Option<&str>,
) -> Result<Launched, LaunchError> {
    let mut status = BufReader::new(File::from(status));
    let mut go = File::from(go);
    let mut ready = false;
    loop {
        let mut line = String::new();
        if status
            .read_line(&mut line)
            .map_err(io_error("read the helper's status"))?
            == 0
        {
            return Err(LaunchError::Setup(
                "the helper exited without reporting".to_owned(),
            ));
        }
        let line = line.trim_end_matches('\n');
        if line == "maps" {
            write_maps(helper_pid, ids)?;
            protect_from_oom(helper_pid)?;
            go.write_all(go_line(token).as_bytes())
                .map_err(io_error("signal the helper"))?;
        } else if let Some(pid) = line.strip_prefix("pid ") {
            let pid1 = pid.parse().map_err(|_| {
                LaunchError::Setup(format!("the helper reported a bad pid {pid:?}"))
            })?;
            return Ok(Launched {
                pid1,
                status,
                ready,
            });
        } else if line == "ready" {
            ready = true;
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

/// The `oom_score_adj` of a sandbox's envd: the OOM killer of the sandbox's memory cgroup
/// picks its victim by `oom_score`, and envd must not be the one chosen while a command is
/// left to kill (envd starts every command at
/// [`OomProtection::child_oom_score_adj`], 0 here). Not -1000 (never killed): an envd that
/// leaked memory would then leave the cgroup with nothing to kill and wedge it.
pub const ENVD_OOM_SCORE_ADJ: i32 = -999;

/// The `oom_score_adj` of the commands a sandbox's envd starts where the driver cannot
/// lower envd's own (no `CAP_SYS_RESOURCE`): envd then keeps the driver's value (normally
/// 0), and its commands are raised above it instead, which needs no privilege, so that the
/// OOM killer still picks a command before envd. A command cannot undercut envd: it may
/// lower itself again, but not below the `oom_score_adj_min` it inherited (0 unless a
/// privileged writer set one), so at best it ties. Halfway up rather than 1000, so that a
/// command can still raise itself (or what it starts) above its siblings as the likelier
/// victim.
pub const UNPROTECTED_CHILD_OOM_SCORE_ADJ: i32 = 500;

// Values that `/proc/<pid>/oom_score_adj` and envd's flag take (-1000..=1000), with envd
// below its commands either way.
const _: () = assert!(ENVD_OOM_SCORE_ADJ > -1000 && ENVD_OOM_SCORE_ADJ < 0);
const _: () =
    assert!(UNPROTECTED_CHILD_OOM_SCORE_ADJ > 0 && UNPROTECTED_CHILD_OOM_SCORE_ADJ < 1000);

/// How a sandbox's envd is kept from being its memory cgroup's OOM victim, which depends on
/// the driver's privileges ([`envd_oom_protection`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomProtection {
    /// The driver has `CAP_SYS_RESOURCE`: envd is lowered to [`ENVD_OOM_SCORE_ADJ`], and the
    /// commands it starts go back to the neutral 0.
    EnvdLowered,
    /// It has not: envd keeps the driver's `oom_score_adj`, and the commands it starts are
    /// raised to [`UNPROTECTED_CHILD_OOM_SCORE_ADJ`].
    ChildrenRaised,
}

impl OomProtection {
    /// envd's `oom_score_adj`, when the driver sets it (`None`: envd has the driver's).
    #[must_use]
    pub const fn envd_oom_score_adj(self) -> Option<i32> {
        match self {
            Self::EnvdLowered => Some(ENVD_OOM_SCORE_ADJ),
            Self::ChildrenRaised => None,
        }
    }

    /// The `oom_score_adj` of the commands envd starts: what the driver passes envd as
    /// `--child-oom-score-adj`.
    #[must_use]
    pub const fn child_oom_score_adj(self) -> i32 {
        match self {
            Self::EnvdLowered => 0,
            Self::ChildrenRaised => UNPROTECTED_CHILD_OOM_SCORE_ADJ,
        }
    }
}

/// This driver's [`OomProtection`]: whether it may lower an `oom_score_adj`
/// (`CAP_SYS_RESOURCE` is effective), checked once per process (the driver's capabilities
/// do not change while it runs). The first call without the capability says so, once.
#[must_use]
pub fn envd_oom_protection() -> OomProtection {
    static PROTECTION: std::sync::OnceLock<OomProtection> = std::sync::OnceLock::new();
    *PROTECTION.get_or_init(|| {
        if may_lower_oom_score_adj() {
            return OomProtection::EnvdLowered;
        }
        let own: Option<i32> = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|own| own.trim().parse().ok());
        let own_text = own.map_or_else(|| "unknown".to_owned(), |own| own.to_string());
        tracing::warn!(
            "no CAP_SYS_RESOURCE: sandboxes' envd cannot be lowered below the driver's \
             oom_score_adj ({own_text}); the commands it starts are raised to \
             {UNPROTECTED_CHILD_OOM_SCORE_ADJ} instead, so the OOM killer still picks them first"
        );
        if own.is_some_and(|own| own >= UNPROTECTED_CHILD_OOM_SCORE_ADJ) {
            tracing::warn!(
                "the driver's oom_score_adj ({own_text}) is not below \
                 {UNPROTECTED_CHILD_OOM_SCORE_ADJ}: envd, which inherits it, may be chosen by \
                 the OOM killer before its commands"
            );
        }
        OomProtection::ChildrenRaised
    })
}

/// Give the helper [`ENVD_OOM_SCORE_ADJ`] while it waits for the go byte, before it forks
/// PID 1: PID 1 inherits the value at that fork and keeps it across the exec of envd, and so
/// does the server envd forks off first thing. Written later, once PID 1 is reported, it
/// would race with that fork (PID 1 runs on meanwhile) and could miss the server, the large
/// process of the two. Host root writes it (with `CAP_SYS_RESOURCE`, which lowering needs),
/// so the kernel lowers `oom_score_adj_min` to the same value; both are inherited, and a
/// sandbox process can therefore go back down to -999 on its own, never below.
///
/// A failed write fails the launch (a vanished helper, `ENOENT`, included): an unprotected
/// envd would run on but be the cgroup's likely OOM victim. A driver without
/// `CAP_SYS_RESOURCE` (a container or VM that keeps it from root) cannot lower the value at
/// all: it writes nothing, and envd raises its commands instead
/// ([`OomProtection::ChildrenRaised`]).
fn protect_from_oom(pid: u32) -> Result<(), LaunchError> {
    let Some(value) = envd_oom_protection().envd_oom_score_adj() else {
        return Ok(());
    };
    let path = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&path, value.to_string()).map_err(io_error(format!(
        "protect envd from the OOM killer: write {path}"
    )))
}

/// The daemon's own `oom_score_adj`: never the OOM killer's choice, so that a host short of
/// memory loses a sandbox's process rather than the process that keeps every sandbox's
/// state. Sandboxes do not inherit it: [`launch`] writes envd's value into the helper
/// before it starts PID 1, which also raises the floor (`oom_score_adj_min`) their
/// processes could lower themselves to.
pub const DAEMON_OOM_SCORE_ADJ: i32 = -1000;

/// Put the calling process out of the OOM killer's reach ([`DAEMON_OOM_SCORE_ADJ`]), for a
/// daemon; an embedder decides for its own process. `Ok(false)` without `CAP_SYS_RESOURCE`
/// (nothing is written: sandboxes then protect envd by raising its commands instead).
///
/// # Errors
///
/// The write to `/proc/self/oom_score_adj`.
pub fn protect_daemon_from_oom() -> std::io::Result<bool> {
    if envd_oom_protection() != OomProtection::EnvdLowered {
        return Ok(false);
    }
    std::fs::write("/proc/self/oom_score_adj", DAEMON_OOM_SCORE_ADJ.to_string())?;
    Ok(true)
}

/// Whether this thread may lower an `oom_score_adj` (`CAP_SYS_RESOURCE` is effective).
fn may_lower_oom_score_adj() -> bool {
    rustix::thread::capabilities(None).is_ok_and(|sets| {
        sets.effective
            .contains(rustix::thread::CapabilitySet::SYS_RESOURCE)
    })
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the driver makes of `written` on the status pipe, the helper then gone.
    fn launched_from(written: &str) -> Result<Launched, LaunchError> {
        let (status_read, status_write) = pipe().unwrap();
        let (_go_read, go_write) = pipe().unwrap();
        File::from(status_write)
            .write_all(written.as_bytes())
            .unwrap();
        let ids = IdMap {
            host_start: 100_000,
            count: 65_536,
        };
        converse(0, ids, status_read, go_write, None)
    }

    fn serving(written: &str) -> Result<(), String> {
        let launched = launched_from(written).map_err(|e| e.to_string())?;
        assert_eq!(launched.pid1, 42);
        launched
            .wait_until_serving(Duration::from_secs(5))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn envd_is_serving_once_it_says_ready_before_or_after_pid_1_is_reported() {
        assert_eq!(serving("pid 42\nready\n"), Ok(()));
        // PID 1 and envd share the pipe with the helper: envd may be first.
        assert_eq!(serving("ready\npid 42\n"), Ok(()));
    }

    #[test]
    fn a_pid_1_that_fails_or_dies_fails_the_wait_at_once_with_its_reason() {
        assert_eq!(
            serving("pid 42\nerr PID 1: mount /proc: EPERM\n"),
            Err("sandbox setup failed: PID 1: mount /proc: EPERM".to_owned())
        );
        let ended = serving("pid 42\n").unwrap_err();
        assert!(ended.contains("exited before it served"), "{ended}");
        let helper = launched_from("err unshare the sandbox namespaces: EPERM\n").unwrap_err();
        assert_eq!(
            helper.to_string(),
            "sandbox setup failed: unshare the sandbox namespaces: EPERM"
        );
    }

    #[test]
    fn the_go_line_carries_the_token_when_there_is_one() {
        assert_eq!(go_line(Some("abc")), "go abc\n");
        assert_eq!(go_line(None), "go\n");
    }

    #[test]
    fn oom_protection_follows_cap_sys_resource_and_is_cached() {
        let protection = envd_oom_protection();
        assert_eq!(envd_oom_protection(), protection, "cached");
        let expected = if may_lower_oom_score_adj() {
            OomProtection::EnvdLowered
        } else {
            OomProtection::ChildrenRaised
        };
        assert_eq!(protection, expected);
        assert_eq!(
            OomProtection::EnvdLowered.envd_oom_score_adj(),
            Some(ENVD_OOM_SCORE_ADJ)
        );
        assert_eq!(OomProtection::EnvdLowered.child_oom_score_adj(), 0);
        assert_eq!(OomProtection::ChildrenRaised.envd_oom_score_adj(), None);
        assert_eq!(
            OomProtection::ChildrenRaised.child_oom_score_adj(),
            UNPROTECTED_CHILD_OOM_SCORE_ADJ
        );
    }
}
