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
    // Only the driver (host root) opens the slots' namespace files: no one else lists them.
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).map_err(
        |source| NetError::NetnsDir {
            path: dir.to_owned(),
            step: "chmod 0700",
            source,
        },
    )?;
    let shared = MountPropagationFlags::SHARED | MountPropagationFlags::REC;
    match rustix::mount::mount_change(dir, shared) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::INVAL) => {} // not a mount point yet
        Err(e) => return Err(dir_err(dir, "make shared", e)),
    }
    rustix::mount::mount_bind(dir, dir).map_err(|e| dir_err(dir, "bind onto itself", e))?;
    rustix::mount::mount_change(dir, shared).map_err(|e| dir_err(dir, "make shared", e))
}

/// Undoes [`ensure_dir`] when it is safe: unmounts `dir` if it is a bind mount of itself
/// (what `ensure_dir` makes; a file system mounted there by someone else stays) holding no
/// mounts. Returns whether it unmounted.
///
/// The namespace files of slots are bind mounts *inside* this one: detaching it would detach
/// them too (a lazy unmount takes the whole subtree), and a sandbox that outlives the daemon
/// would lose its namespace file, which the next daemon needs to re-adopt and release the
/// slot. So with any mount left inside, nothing is done.
pub(crate) fn release_dir(dir: &Path) -> Result<bool, NetError> {
    let _guard = DIR_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let Some(dir) = canonical(dir)? else {
        return Ok(false);
    };
    match dir_mount(&read_mountinfo()?, &dir) {
        DirMount::SelfBind { inner: 0 } => {}
        DirMount::SelfBind { .. } | DirMount::Other | DirMount::None => return Ok(false),
    }
    match rustix::mount::unmount(&dir, UnmountFlags::DETACH) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) => Ok(false), // not a mount point after all
        Err(e) => Err(dir_err(&dir, "unmount", e)),
    }
}

/// `Some(canonical dir)` when `dir` is a self-bind mount as [`ensure_dir`] makes it.
pub(crate) fn self_bind(dir: &Path) -> Result<Option<PathBuf>, NetError> {
    let Some(dir) = canonical(dir)? else {
        return Ok(None);
    };
    Ok(matches!(
        dir_mount(&read_mountinfo()?, &dir),
        DirMount::SelfBind { .. }
    )
    .then_some(dir))
}

fn canonical(dir: &Path) -> Result<Option<PathBuf>, NetError> {
    match dir.canonicalize() {
        Ok(dir) => Ok(Some(dir)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::NetnsDir {
            path: dir.to_owned(),
            step: "resolve",
            source,
        }),
    }
}

fn read_mountinfo() -> Result<String, NetError> {
    fs::read_to_string("/proc/self/mountinfo").map_err(|source| NetError::NetnsDir {
        path: "/proc/self/mountinfo".into(),
        step: "read",
        source,
    })
}

/// What is mounted at a directory.
#[derive(Debug, PartialEq, Eq)]
enum DirMount {
    /// Not a mount point.
    None,
    /// A mount point, but not a bind mount of the directory onto itself.
    Other,
    /// A bind mount of the directory onto itself, with `inner` mounts below it.
    SelfBind { inner: usize },
}

/// One line of `/proc/self/mountinfo`: the fields this module reads.
struct MountEntry {
    id: u64,
    parent: u64,
    device: String,
    root: PathBuf,
    point: PathBuf,
}

fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            Some(MountEntry {
                id: f.next()?.parse().ok()?,
                parent: f.next()?.parse().ok()?,
                device: f.next()?.to_owned(),
                root: unescape(f.next()?),
                point: unescape(f.next()?),
            })
        })
        .collect()
}

/// One mountinfo field as a path.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    PathBuf::from(std::ffi::OsString::from_vec(
        crate::sys::unescape_mountinfo(field),
    ))
}

/// What is mounted at the canonical directory `dir`, per the mount table `mountinfo`.
/// A self-bind shows the parent's device and, as its root, the parent's root followed by the
/// directory's path inside the parent mount.
fn dir_mount(mountinfo: &str, dir: &Path) -> DirMount {
    let entries = parse_mountinfo(mountinfo);
    // The last mount listed at a point is the one on top.
    let Some(top) = entries.iter().rev().find(|e| e.point == dir) else {
        return DirMount::None;
    };
    let Some(parent) = entries.iter().find(|e| e.id == top.parent) else {
        return DirMount::Other;
    };
    let expected_root = match dir.strip_prefix(&parent.point) {
        Ok(rel) if rel.as_os_str().is_empty() => parent.root.clone(),
        Ok(rel) => parent.root.join(rel),
        Err(_) => return DirMount::Other,
    };
    if top.device != parent.device || top.root != expected_root {
        return DirMount::Other;
    }
    let inner = entries
        .iter()
        .filter(|e| e.point != dir && e.point.starts_with(dir))
        .count();
    DirMount::SelfBind { inner }
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

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
40 30 0:25 /firkin/netns /run/firkin/netns rw,nosuid shared:9 - tmpfs tmpfs rw
41 40 0:4 net:[4026532301] /run/firkin/netns/slot-0 rw shared:10 - nsfs nsfs rw
50 22 8:1 /tmp/a\\040b/netns /tmp/a\\040b/netns rw shared:11 - ext4 /dev/sda1 rw
60 22 0:40 / /srv/netns rw shared:12 - tmpfs tmpfs rw
70 22 8:1 /elsewhere /srv/other rw shared:13 - ext4 /dev/sda1 rw
";

    #[test]
    fn finds_self_binds_and_what_they_hold() {
        let at = |dir: &str| dir_mount(MOUNTINFO, Path::new(dir));
        // On a tmpfs mounted at /run: the root is the path inside it.
        assert_eq!(at("/run/firkin/netns"), DirMount::SelfBind { inner: 1 });
        // On the root file system, with an escaped space.
        assert_eq!(at("/tmp/a b/netns"), DirMount::SelfBind { inner: 0 });
        // A file system of its own, or a bind of another directory: not ours to unmount.
        assert_eq!(at("/srv/netns"), DirMount::Other);
        assert_eq!(at("/srv/other"), DirMount::Other);
        assert_eq!(at("/run/firkin"), DirMount::None);
    }
}
