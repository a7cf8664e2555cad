//! Persistent network namespaces: created by `unshare(CLONE_NEWNET)` on a dedicated thread
//! and kept alive by a bind mount of that thread's `/proc/thread-self/ns/net` onto a file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::mount::{MountPropagationFlags, UnmountFlags};

use super::NetError;

/// `statfs` magic of `nsfs`, the filesystem namespace files live on.
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Serializes the one-time set-up of the namespace directory inside this process.
static DIR_SETUP: Mutex<()> = Mutex::new(());

/// Makes `dir` exist and be a shared mount point, as `ip netns` does for `/run/netns`: a
/// sandbox's mount namespace copies every namespace bind mount, and with shared propagation
/// our later unmount reaches those copies too (the namespace is not kept alive by them).
pub(crate) fn ensure_dir(dir: &Path) -> Result<(), NetError> {
    // A poisoned lock only means another set-up panicked; the steps below are idempotent.
    let _guard = DIR_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(dir).map_err(|source| NetError::NetnsDir {
        path: dir.to_owned(),
        step: "create",
        source,
    })?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(dir, shared) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::INVAL) => {} // not a mount point yet
        Err(e) => return Err(dir_err(dir, "make shared", e)),
    }
    rustix::mount::mount_bind(dir, dir).map_err(|e| dir_err(dir, "bind onto itself", e))?;
    rustix::mount::mount_change(dir, shared).map_err(|e| dir_err(dir, "make shared", e))
}

fn dir_err(dir: &Path, step: &'static str, e: rustix::io::Errno) -> NetError {
    NetError::NetnsDir {
        path: dir.to_owned(),
        step,
        source: e.into(),
    }
}

/// Moves the *calling thread* into a new network namespace and pins it at `path`.
///
/// The caller must be a thread that runs nothing else afterwards but the slot's set-up (see
/// [`super::slot`]): the thread stays in the new namespace until it exits.
pub(crate) fn create_on_this_thread(path: &Path) -> Result<(), NetError> {
    let err = |step: &'static str, source: io::Error| NetError::Netns {
        path: path.to_owned(),
        step,
        source,
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| err("create the mount point file", e))?;
    let pinned = unshare_net()
        .map_err(|e| err("unshare(CLONE_NEWNET)", e.into()))
        .and_then(|()| {
            rustix::mount::mount_bind("/proc/thread-self/ns/net", path)
                .map_err(|e| err("bind-mount /proc/thread-self/ns/net", e.into()))
        });
    if pinned.is_err() {
        let _ = fs::remove_file(path);
    }
    pinned
}

/// `unshare(CLONE_NEWNET)` for the calling thread.
///
/// Why unsafe: rustix marks `unshare` unsafe because `CLONE_FILES` would split the file
/// descriptor table between threads. There is no safe way to create a network namespace
/// in-process; spawning `unshare(1)` would cost a fork and exec per slot.
#[allow(unsafe_code)]
fn unshare_net() -> rustix::io::Result<()> {
    // SAFETY: the only flag is `NEWNET`, which changes the calling thread's network namespace
    // and nothing else; `FILES`, the flag rustix's safety contract is about, is not passed,
    // so no thread can observe descriptors from an unshared table.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
}

/// Unmounts and removes a namespace file; a missing file or mount counts as success.
pub(crate) fn remove(path: &Path) -> Result<(), NetError> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => {
            return Err(NetError::Netns {
                path: path.to_owned(),
                step: "unmount",
                source: e.into(),
            });
        }
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetError::Netns {
            path: path.to_owned(),
            step: "remove",
            source,
        }),
    }
}

/// Opens a pinned namespace, checking it is still a namespace (not a bare file left behind).
pub(crate) fn open(path: &Path) -> Result<OwnedFd, NetError> {
    let err = |step: &'static str, source: io::Error| NetError::Netns {
        path: path.to_owned(),
        step,
        source,
    };
    let file = File::open(path).map_err(|e| err("open", e))?;
    let fs = rustix::fs::fstatfs(&file).map_err(|e| err("statfs", e.into()))?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if fs.f_type as i64 != NSFS_MAGIC {
        return Err(err(
            "check it is a namespace",
            io::Error::other("not an nsfs file: the bind mount is gone"),
        ));
    }
    Ok(file.into())
}

/// The namespace files (`slot-<n>`) currently in `dir`.
pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>, NetError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetError::NetnsDir {
                path: dir.to_owned(),
                step: "list",
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(super::NETNS_PREFIX)
        {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
