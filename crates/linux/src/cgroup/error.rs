//! The cgroup module's error type: every variant names the file or directory and the data.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// An error from the cgroup module.
///
/// Messages describe this layer only; the cause (usually an [`io::Error`]) is the `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    /// Reading a cgroup (or `/proc`) file failed.
    #[error("read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing a cgroup file failed.
    #[error("write {data:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        data: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating a cgroup directory failed.
    #[error("create cgroup directory {path}")]
    Mkdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Removing a cgroup directory failed (after retries when busy).
    #[error("remove cgroup directory {path}")]
    Rmdir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Listing a cgroup directory failed.
    #[error("list cgroup directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file held something this module does not understand.
    #[error("unexpected content in {path}: {content:?}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The offending text (a line or the whole value).
        content: String,
    },
    /// A sandbox cgroup name outside `[a-z0-9-]{1,128}`.
    #[error("invalid sandbox cgroup name {name:?}: use 1 to 128 of a-z, 0-9 and '-'")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A limit the kernel would refuse or misread.
    #[error("invalid limit {field} = {value}: {reason}")]
    InvalidLimit {
        /// The field of `CgroupLimits`.
        field: &'static str,
        /// The value given.
        value: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Neither a cgroup v2 hierarchy with the needed controllers nor the v1 ones were found.
    #[error(
        "no usable cgroup hierarchy: cgroup v2 at {v2_dir:?} offers {v2_controllers:?}, \
         cgroup v1 lacks {v1_missing:?}"
    )]
    NoUsableHierarchy {
        /// This process's own cgroup v2 directory, if a cgroup2 mount holds it.
        v2_dir: Option<PathBuf>,
        /// The controllers that directory offers (`cgroup.controllers`).
        v2_controllers: Vec<String>,
        /// The v1 controllers not mounted (or not holding this process).
        v1_missing: Vec<String>,
    },
    /// A limit needs a controller the daemon's cgroup does not offer.
    #[error("controller {controller} is not available in {path}")]
    ControllerUnavailable {
        /// The daemon's own cgroup directory.
        path: PathBuf,
        /// The controller.
        controller: String,
    },
    /// `create` found the sandbox cgroup already there (a leftover: reclaim it first).
    #[error("cgroup {path} already exists")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },
    /// `open` did not find a directory of the handle.
    #[error("cgroup {path} does not exist")]
    NotFound {
        /// The directory.
        path: PathBuf,
    },
    /// A handle whose paths are not `<...>/firkin/<name>` (refused: we would kill and remove it).
    #[error("{path} is not a firkin sandbox cgroup named {name:?}")]
    InvalidHandle {
        /// The offending path.
        path: PathBuf,
        /// The name in the handle.
        name: String,
    },
    /// Freezing or thawing did not finish in time (a failed freeze is thawed again).
    #[error("cgroup {path} did not become {state} within {timeout:?}")]
    Timeout {
        /// The state file polled (`freezer.state` or `cgroup.events`).
        path: PathBuf,
        /// The state waited for.
        state: &'static str,
        /// How long we waited.
        timeout: Duration,
    },
    /// Processes survived `kill`.
    #[error("cgroup {path} still holds processes {pids:?} after kill")]
    KillIncomplete {
        /// The cgroup directory.
        path: PathBuf,
        /// The survivors.
        pids: Vec<u32>,
    },
    /// Sending SIGKILL failed for a reason other than the process being gone.
    #[error("send SIGKILL to process {pid} of {path}")]
    Signal {
        /// The cgroup directory the process was listed in.
        path: PathBuf,
        /// The process.
        pid: u32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `create` failed and its rollback failed too: both are kept.
    #[error("create cgroup {path} failed and rollback left {} error(s): {cleanup:?}", cleanup.len())]
    Rollback {
        /// The sandbox cgroup directory (first controller).
        path: PathBuf,
        /// Why create failed.
        #[source]
        source: Box<CgroupError>,
        /// What went wrong while undoing it.
        cleanup: Vec<CgroupError>,
    },
}

impl CgroupError {
    /// The OS error behind this error, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Read { source, .. }
            | Self::Write { source, .. }
            | Self::Mkdir { source, .. }
            | Self::Rmdir { source, .. }
            | Self::ReadDir { source, .. }
            | Self::Signal { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
