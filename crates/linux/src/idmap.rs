//! Idmapped mounts: a host directory shown with the sandboxes' id map applied, so files owned
//! by host root appear owned by the sandbox's root (and setuid `sudo` works for `user`), and
//! the sandbox root's writes through an overlay above it land as its shifted host id.
//!
//! One such mount per template directory and id range, made when the driver starts (2–4 ms)
//! and shared read-only by every sandbox: each sandbox's mount namespace is a copy of the
//! host's, so the init helper finds it there and stacks its overlay on it. Removing it from
//! the host (on drop) leaves the copies of running sandboxes intact.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags, UnmountFlags};

use crate::sandbox::spawn::IdMap;
use crate::sys;

/// A user namespace carrying `ids` and nothing else: a handle for `MOUNT_ATTR_IDMAP`.
///
/// # Errors
///
/// When the kernel refuses a user namespace, or its maps cannot be written (needs root).
pub fn user_namespace(ids: IdMap) -> io::Result<OwnedFd> {
    let (ready_read, ready_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (go_read, go_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let pid = sys::fork_user_namespace_holder(ready_write.as_fd(), go_read.as_fd())?;
    drop((ready_write, go_read));
    let result = (|| {
        let mut byte = [0_u8; 1];
        if File::from(ready_read).read(&mut byte)? != 1 {
            return Err(io::Error::other(
                "the helper process could not make a user namespace",
            ));
        }
        let line = format!("0 {} {}\n", ids.host_start, ids.count);
        for map in ["uid_map", "gid_map"] {
            std::fs::write(format!("/proc/{pid}/{map}"), &line)
                .map_err(|e| io::Error::new(e.kind(), format!("write {map}: {e}")))?;
        }
        Ok(OwnedFd::from(File::open(format!("/proc/{pid}/ns/user"))?))
    })();
    // A byte lets the holder exit (not EOF: the forked child holds a copy of the write
    // end); the namespace lives on through our fd.
    let _ = rustix::io::write(&go_write, b"x");
    drop(go_write);
    let _ = rustix::process::waitpid(
        rustix::process::Pid::from_raw(pid),
        rustix::process::WaitOptions::empty(),
    );
    result
}

/// An idmapped, read-only view of a host directory, attached at a path of the host; detached
/// again on drop.
#[derive(Debug)]
pub struct IdmappedMount {
    target: PathBuf,
}

impl IdmappedMount {
    /// Show `source` at `target` (created if missing) through `userns`'s id map, read-only.
    /// Whatever an earlier daemon left mounted at `target` is detached first.
    ///
    /// # Errors
    ///
    /// When the file system of `source` does not support idmapped mounts, or the caller is
    /// not root.
    pub fn create(source: &Path, target: &Path, userns: &OwnedFd) -> io::Result<Self> {
        let fail = |what: &str| {
            let what = format!("{what} ({} at {})", source.display(), target.display());
            move |errno: rustix::io::Errno| {
                io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
            }
        };
        std::fs::create_dir_all(target)?;
        detach_all(target);
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            source,
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        )
        .map_err(fail("open_tree"))?;
        sys::mount_setattr_idmap(tree.as_fd(), userns.as_fd(), true).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("idmap {} (mount_setattr): {e}", source.display()),
            )
        })?;
        rustix::mount::move_mount(
            tree.as_fd(),
            c"",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(fail("move_mount"))?;
        Ok(Self {
            target: target.to_owned(),
        })
    }

    /// Where the view is attached.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for IdmappedMount {
    fn drop(&mut self) {
        detach_all(&self.target);
    }
}

/// Detach every mount stacked at `path` (none is fine).
fn detach_all(path: &Path) {
    // Bounded: a path has a finite stack of mounts; EINVAL once it is not a mount point.
    for _ in 0..64 {
        if rustix::mount::unmount(path, UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_root_files_appear_as_the_shifted_id() {
        if !firkin_test_support::root_or_skip("idmap test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("file"), "x").unwrap();
        let userns = user_namespace(IdMap {
            host_start: 100_000,
            count: 65_536,
        })
        .unwrap();
        let target = dir.path().join("view");
        let mount = IdmappedMount::create(&source, &target, &userns).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        // Host root (0) is sandbox root, which the view shows as host 100000.
        assert_eq!(
            std::fs::metadata(target.join("file")).unwrap().uid(),
            100_000
        );
        assert!(
            std::fs::write(target.join("new"), "y").is_err(),
            "view is writable"
        );
        drop(mount);
        assert!(
            !target.join("file").exists(),
            "view still attached after drop"
        );
    }
}
