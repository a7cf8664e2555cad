//! Creating entries beneath a layer's root, never through a symbolic link: every directory
//! on the way is opened one component at a time with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`
//! (`openat2`), and the entry itself is created in that directory by name, without following
//! a link at its own name either. A crafted archive that plants `a -> /etc` and then writes
//! `a/passwd` is refused, not followed.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps, XattrFlags, chownat, fchmod, fchown,
    fsetxattr, futimens, linkat, mkdirat, mknodat, openat, openat2, statat, symlinkat, unlinkat,
};
use rustix::io::Errno;

use super::IdShift;

/// Resolution that stays below the directory and follows no link.
const STRICT: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

/// The overlay xattrs that make a directory opaque: `trusted.*` for overlays mounted by host
/// root, `user.*` for those mounted in a user namespace with `userxattr`, as sandboxes do.
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// Why an entry could not be written: refused (a link on the way, a directory in the way)
/// or a plain I/O failure.
#[derive(Debug)]
pub(crate) enum WriteError {
    Refused(String),
    Io(io::Error),
}

impl From<io::Error> for WriteError {
    fn from(error: io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<Errno> for WriteError {
    fn from(errno: Errno) -> Self {
        Self::Io(errno.into())
    }
}

type Result<T> = std::result::Result<T, WriteError>;

/// Ownership and mode of an entry, as the archive gives them (ids not yet shifted).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Owner {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mode: u32,
}

/// A layer directory being filled.
#[derive(Debug)]
pub(crate) struct LayerWriter {
    root: OwnedFd,
    ids: IdShift,
    /// Entries whose ids were outside the range and became `nobody`.
    pub(crate) remapped_ids: usize,
}

impl LayerWriter {
    /// Writes below the directory `root` (opened `O_PATH`), shifting ids by `ids`.
    pub(crate) fn new(root: OwnedFd, ids: IdShift) -> Self {
        Self {
            root,
            ids,
            remapped_ids: 0,
        }
    }

    /// The directory `parents` (relative to the root), made as needed (`0755`, owned by the
    /// sandbox's root), opened `O_PATH`.
    pub(crate) fn dir(&self, parents: &[std::ffi::OsString]) -> Result<OwnedFd> {
        let mut current = rustix::io::fcntl_dupfd_cloexec(&self.root, 3)?;
        for part in parents {
            current = match open_dir(&current, part, OFlags::PATH) {
                Err(WriteError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    mkdirat(&current, part.as_os_str(), Mode::from_raw_mode(0o755))?;
                    chownat(
                        &current,
                        part.as_os_str(),
                        Some(self.uid(0)),
                        Some(self.gid(0)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                    open_dir(&current, part, OFlags::PATH)?
                }
                other => other?,
            };
        }
        Ok(current)
    }

    /// A directory entry: made, or kept when one is there, then given `owner`.
    pub(crate) fn directory(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        owner: Owner,
    ) -> Result<OwnedFd> {
        match kind_at(parent, name)? {
            None => mkdirat(parent, name, Mode::from_raw_mode(0o700))?,
            Some(FileType::Directory) => {}
            Some(_) => remove_and(parent, name, |parent| {
                mkdirat(parent, name, Mode::from_raw_mode(0o700)).map_err(WriteError::from)
            })?,
        }
        let dir = open_dir(parent, name, OFlags::RDONLY)?;
        self.own(&dir, owner)?;
        Ok(dir)
    }

    /// A regular file with the bytes of `data`; returns it open, for xattrs.
    pub(crate) fn file(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        owner: Owner,
        mtime: u64,
        data: &mut dyn Read,
    ) -> Result<File> {
        self.clear(parent, name)?;
        let fd = openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = File::from(fd);
        io::copy(data, &mut file)?;
        self.own(&file, owner)?;
        let time = rustix::fs::Timespec {
            tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        futimens(
            &file,
            &Timestamps {
                last_access: time,
                last_modification: time,
            },
        )?;
        Ok(file)
    }

    /// A symbolic link to `target` (kept as written: it is resolved inside the sandbox).
    pub(crate) fn symlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        target: &OsStr,
        owner: Owner,
    ) -> Result<()> {
        self.clear(parent, name)?;
        symlinkat(target, parent, name)?;
        self.own_at(parent, name, owner)
    }

    /// A hard link to the earlier entry `target_parent/target_name` of this layer.
    pub(crate) fn hard_link(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        target_parent: &OwnedFd,
        target_name: &OsStr,
    ) -> Result<()> {
        match kind_at(target_parent, target_name)? {
            None => {
                return Err(WriteError::Refused(
                    "links to an entry the layer does not have".into(),
                ));
            }
            Some(FileType::Directory) => {
                return Err(WriteError::Refused("links to a directory".into()));
            }
            Some(_) => {}
        }
        self.clear(parent, name)?;
        linkat(target_parent, target_name, parent, name, AtFlags::empty())?;
        Ok(())
    }

    /// A named pipe.
    pub(crate) fn fifo(&mut self, parent: &OwnedFd, name: &OsStr, owner: Owner) -> Result<()> {
        self.clear(parent, name)?;
        mknodat(parent, name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
        self.own_at(parent, name, owner)?;
        rustix::fs::chmodat(parent, name, mode(owner), AtFlags::empty())?;
        Ok(())
    }

    /// An overlay whiteout for `name`: a character device 0:0, which hides `name` of every
    /// layer below.
    pub(crate) fn whiteout(&mut self, parent: &OwnedFd, name: &OsStr) -> Result<()> {
        self.clear(parent, name)?;
        mknodat(parent, name, FileType::CharacterDevice, Mode::empty(), 0)?;
        Ok(())
    }

    /// Marks the directory `dir` (opened for reading) opaque.
    pub(crate) fn opaque(&mut self, dir: &OwnedFd) -> Result<()> {
        for name in OPAQUE_XATTRS {
            fsetxattr(dir, name, b"y", XattrFlags::empty())?;
        }
        Ok(())
    }

    /// An entry that is about to be written goes first (a later entry replaces an earlier
    /// one); a directory is not replaced by something else.
    fn clear(&self, parent: &OwnedFd, name: &OsStr) -> Result<()> {
        match kind_at(parent, name)? {
            None => Ok(()),
            Some(FileType::Directory) => Err(WriteError::Refused(
                "would replace a directory of the same layer".into(),
            )),
            Some(_) => Ok(unlinkat(parent, name, AtFlags::empty())?),
        }
    }

    fn own(&mut self, fd: &impl AsFd, owner: Owner) -> Result<()> {
        let (uid, gid) = self.shifted(owner);
        fchown(fd, Some(uid), Some(gid))?;
        // After the chown, which clears set-id bits.
        fchmod(fd, mode(owner))?;
        Ok(())
    }

    fn own_at(&mut self, parent: &OwnedFd, name: &OsStr, owner: Owner) -> Result<()> {
        let (uid, gid) = self.shifted(owner);
        chownat(
            parent,
            name,
            Some(uid),
            Some(gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
        Ok(())
    }

    fn shifted(&mut self, owner: Owner) -> (rustix::fs::Uid, rustix::fs::Gid) {
        if owner.uid >= self.ids.count || owner.gid >= self.ids.count {
            self.remapped_ids += 1;
        }
        (self.uid(owner.uid), self.gid(owner.gid))
    }

    fn uid(&self, id: u32) -> rustix::fs::Uid {
        rustix::fs::Uid::from_raw(self.ids.host(id))
    }

    fn gid(&self, id: u32) -> rustix::fs::Gid {
        rustix::fs::Gid::from_raw(self.ids.host(id))
    }
}

fn mode(owner: Owner) -> Mode {
    Mode::from_raw_mode(owner.mode & 0o7777)
}

/// Opens the directory `name` in `parent`, refusing a link there.
fn open_dir(parent: &OwnedFd, name: &OsStr, how: OFlags) -> Result<OwnedFd> {
    openat2(
        parent,
        name,
        how | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        STRICT,
    )
    .map_err(|errno| match errno {
        Errno::LOOP => WriteError::Refused(format!(
            "goes through the symbolic link {:?} of the layer",
            name
        )),
        Errno::NOTDIR => {
            WriteError::Refused(format!("goes through {name:?}, which is not a directory"))
        }
        errno => WriteError::Io(errno.into()),
    })
}

/// What `name` in `parent` is, without following a link (`None`: nothing).
fn kind_at(parent: &OwnedFd, name: &OsStr) -> Result<Option<FileType>> {
    match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// Removes the non-directory `name` and runs `then`.
fn remove_and(
    parent: &OwnedFd,
    name: &OsStr,
    then: impl FnOnce(&OwnedFd) -> Result<()>,
) -> Result<()> {
    unlinkat(parent, name, AtFlags::empty())?;
    then(parent)
}
