//! Sandbox disks: what bounds the bytes a sandbox can write.
//!
//! Each sandbox's directory (`<state>/sandboxes/<name>`, its overlay uppers and work
//! directories) is the mount point of a file system of its own: a sparse ext4 image
//! `<state>/disks/<name>.img` of the configured size, loop-mounted. A write past it fails
//! with `ENOSPC` inside the sandbox, `df /` there shows the size (overlay reports its upper's
//! file system), and other sandboxes, the state database and the host write on.
//!
//! Why an image per sandbox and not project quotas on one file system: this had to hold on
//! the state file system as it is, and ext4 without the `project` feature or mounted without
//! `prjquota` cannot get quotas while mounted; nor could quotas be moved into one shared
//! image here, since the kernels firkin meets are built without XFS quota or the generic
//! quota format (`CONFIG_XFS_QUOTA`, `CONFIG_QFMT_V2`; the kernel firkin was first built on,
//! 6.18, has neither). Loop
//! devices and ext4 are everywhere. Quotas would also answer `EDQUOT` on ext4, where E2B
//! sandboxes answer `ENOSPC`.
//!
//! `mkfs.ext4` runs once per driver start, into a blank image (`disks/.blank.img`); each
//! sandbox's image is a copy of it: a reflink where the state file system has them (xfs,
//! btrfs), else a copy of its few MiB of data that keeps the rest a hole. The copy takes
//! about 1 ms where running `mkfs.ext4` per sandbox took about 30 (more under load). The
//! image is then mounted with system calls ([`crate::loop_device`]: a free loop device from
//! `/dev/loop-control`, `LOOP_CONFIGURE`, `mount(2)`) where `mount -o loop` added processes
//! and device scans (12 ms off a cold create's median, docs/BENCHMARKS.md); a kernel older
//! than 5.8 falls back to the command. What is left is mostly the kernel's own
//! `LOOP_CONFIGURE` (2–20 ms here, timed around the call; why it varies so was not pinned
//! down) and `mount(2)` (1–3 ms). The warm pool pays all of it ahead. The image is made without a journal (a
//! sandbox does not outlive a host crash), no reserved blocks, and mounted with
//! `noinit_itable` so that ext4 does not zero its inode tables in the background: only what
//! the sandbox writes takes host space. The copies share the blank's file system UUID, which
//! ext4 does not mind. Deleting files inside gives no space back to the host until the sandbox
//! is deleted.
//!
//! The loop device is set to clear itself when its file system goes: unmounting
//! the sandbox directory after its processes are gone (their mount namespace held it too)
//! frees the device, and the image file is then removed; the driver does this off the
//! delete's path, with the directory's removal. A daemon that dies leaves the mounts
//! of live sandboxes in place for the next one to re-adopt; after a reboot they are gone and
//! the dead sandboxes' images are removed with the rest of them.
//!
//! Not covered: the host's own free space. Images are sparse, so the sizes of all sandboxes
//! may add up to more than the host has; the daemon's disk floor (`minimum_free_disk_bytes`)
//! refuses creates when the state file system runs low, and a sandbox that finds the host
//! full sees I/O errors.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::loop_device::LoopDevice;

/// The smallest disk a sandbox may get: below it the base image's first writes do not fit.
pub const MIN_SIZE_MB: u64 = 16;

/// What went wrong with a sandbox disk.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The configured size is below [`MIN_SIZE_MB`].
    #[error(
        "a sandbox disk of {0} MiB is too small: at least {MIN_SIZE_MB} MiB, or 0 for no limit"
    )]
    TooSmall(u64),
    /// This host cannot make sandbox disks.
    #[error(
        "sandbox disks are not available on this host: {0}; set the disk size to 0 for no limit"
    )]
    Unavailable(String),
    /// A file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// `mkfs.ext4` or `mount` failed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and standard error.
        output: String,
    },
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let what = what.into();
    move |source| DiskError::Io { what, source }
}

/// The formatted, empty image in the images' directory that every sandbox's image copies.
const BLANK: &str = ".blank.img";

/// Makes, mounts and removes the disks of one state directory's sandboxes.
#[derive(Clone, Debug)]
pub struct Disks {
    /// Where the images are: `<state>/disks`.
    images: PathBuf,
    /// Each sandbox's size in bytes with the tools that make its disk; `None`: no limit,
    /// sandbox directories are plain directories of the state file system.
    limit: Option<(u64, Tools)>,
}

/// `mkfs.ext4` and `mount`, found once.
#[derive(Clone, Debug)]
struct Tools {
    mkfs: PathBuf,
    mount: PathBuf,
}

impl Disks {
    /// Disks of `size_mb` MiB (0: no limit) for the sandboxes of `state_dir`.
    ///
    /// # Errors
    ///
    /// [`DiskError::TooSmall`], or [`DiskError::Unavailable`] naming what the host lacks
    /// (see [`mechanism`]).
    pub fn new(state_dir: &Path, size_mb: u64) -> Result<Self, DiskError> {
        let images = state_dir.join("disks");
        let Some(tools) = tools_for(size_mb)? else {
            return Ok(Self {
                images,
                limit: None,
            });
        };
        std::fs::create_dir_all(&images)
            .map_err(io_error(format!("create {}", images.display())))?;
        // Made again at every start (the size may have changed), whole before it is used.
        let fresh = images.join(".blank.img.new");
        let _ = std::fs::remove_file(&fresh);
        make_image(&tools.mkfs, &fresh, size_mb << 20)?;
        std::fs::rename(&fresh, images.join(BLANK))
            .map_err(io_error(format!("rename {}", fresh.display())))?;
        Ok(Self {
            images,
            limit: Some((size_mb << 20, tools)),
        })
    }

    /// Each sandbox's disk size in bytes, `None` for no limit.
    #[must_use]
    pub fn size_bytes(&self) -> Option<u64> {
        self.limit.as_ref().map(|(size, _)| *size)
    }

    /// The image behind the sandbox directory `dir`.
    fn image_of(&self, dir: &Path) -> PathBuf {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        self.images.join(format!("{name}.img"))
    }

    /// Makes the sandbox directory `dir` (empty), on a fresh disk of its own when there is a
    /// limit. On failure nothing is left.
    ///
    /// # Errors
    ///
    /// When the directory, the image's copy or the mount fails.
    pub fn attach(&self, dir: &Path) -> Result<(), DiskError> {
        std::fs::create_dir_all(dir).map_err(io_error(format!("create {}", dir.display())))?;
        let Some((size, tools)) = &self.limit else {
            return Ok(());
        };
        let image = self.image_of(dir);
        let blank = self.images.join(BLANK);
        let copied = copy_sparse(&blank, &image, *size).map_err(io_error(format!(
            "copy {} to {}",
            blank.display(),
            image.display()
        )));
        let made = copied.and_then(|()| mount_image(&tools.mount, &image, dir));
        if made.is_err() {
            let _ = std::fs::remove_file(&image);
            let _ = std::fs::remove_dir(dir);
        }
        made
    }

    /// Unmounts the disk of the sandbox directory `dir` (if it has one; lazily: a dying
    /// sandbox's mount namespace may hold it a moment longer) and removes its image, leaving
    /// `dir` a plain directory. Idempotent.
    ///
    /// # Errors
    ///
    /// When the unmount or the removal fails for another reason than its being done.
    pub fn detach(&self, dir: &Path) -> Result<(), DiskError> {
        match rustix::mount::unmount(dir, rustix::mount::UnmountFlags::DETACH) {
            // EINVAL: not a mount point; ENOENT: no directory.
            Ok(()) | Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => {}
            Err(errno) => {
                return Err(DiskError::Io {
                    what: format!("unmount {}", dir.display()),
                    source: errno.into(),
                });
            }
        }
        let image = self.image_of(dir);
        match std::fs::remove_file(&image) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(io_error(format!("remove {}", image.display()))(error))
            }
            _ => Ok(()),
        }
    }

    /// Removes every image whose sandbox directory is not among `keep` (what a daemon that
    /// died between making an image and mounting it, or between unmounting and removing,
    /// left behind).
    ///
    /// # Errors
    ///
    /// When an image cannot be removed.
    pub fn remove_orphans(&self, keep: &[PathBuf]) -> Result<(), DiskError> {
        let Ok(entries) = std::fs::read_dir(&self.images) else {
            return Ok(());
        };
        let mut kept: Vec<PathBuf> = keep.iter().map(|dir| self.image_of(dir)).collect();
        kept.push(self.images.join(BLANK));
        for path in entries.flatten().map(|entry| entry.path()) {
            if !kept.contains(&path) {
                tracing::warn!(image = %path.display(), "removing a leftover sandbox disk");
                std::fs::remove_file(&path)
                    .map_err(io_error(format!("remove {}", path.display())))?;
            }
        }
        Ok(())
    }
}

/// Mounts the ext4 `image` on `dir` through a loop device: with system calls
/// ([`LoopDevice`]), or with the `mount` command on a kernel without `LOOP_CONFIGURE`.
/// `nodev`, `nosuid`: what a sandbox leaves in its upper never acts as a device or a set-id
/// program for the host (the sandbox sees its files through overlay, whose own mount decides
/// for it).
fn mount_image(mount: &Path, image: &Path, dir: &Path) -> Result<(), DiskError> {
    use rustix::mount::MountFlags;
    let device = match LoopDevice::attach(image) {
        Ok(device) => device,
        Err(error) => {
            tracing::debug!(%error, "no loop device by system calls; using mount -o loop");
            return run(Command::new(mount)
                .args(["-t", "ext4", "-o", "loop,noinit_itable,nodev,nosuid"])
                .arg(image)
                .arg(dir));
        }
    };
    rustix::mount::mount(
        device.path(),
        dir,
        "ext4",
        MountFlags::NODEV | MountFlags::NOSUID,
        c"noinit_itable",
    )
    .map_err(|error| DiskError::Io {
        what: format!(
            "mount {} ({}) on {}",
            device.path().display(),
            image.display(),
            dir.display()
        ),
        source: error.into(),
    })
}

/// A copy of the image `from` (`size` bytes) at `to`, new: a reflink where the file system
/// can, else its data ranges copied in the kernel and its holes left holes.
fn copy_sparse(from: &Path, to: &Path, size: u64) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let source = std::fs::File::open(from)?;
    let target = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    if rustix::fs::ioctl_ficlone(&target, &source).is_ok() {
        return Ok(());
    }
    target.set_len(size)?;
    let mut offset = 0;
    loop {
        let data = match rustix::fs::seek(&source, SeekFrom::Data(offset)) {
            Ok(data) => data,
            // No data past `offset`.
            Err(rustix::io::Errno::NXIO) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let hole = rustix::fs::seek(&source, SeekFrom::Hole(data))?;
        let (mut read_at, mut write_at) = (data, data);
        while read_at < hole {
            let chunk = usize::try_from(hole - read_at).unwrap_or(usize::MAX);
            let copied = rustix::fs::copy_file_range(
                &source,
                Some(&mut read_at),
                &target,
                Some(&mut write_at),
                chunk,
            )?;
            if copied == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} ended while being copied", from.display()),
                ));
            }
        }
        offset = hole;
    }
}

/// A sparse file of `size` bytes at `path`, formatted ext4: no journal, no reserved blocks,
/// inode tables left to zero-on-read (the file is sparse), nothing discarded.
fn make_image(mkfs: &Path, path: &Path, size: u64) -> Result<(), DiskError> {
    let file =
        std::fs::File::create(path).map_err(io_error(format!("create {}", path.display())))?;
    file.set_len(size)
        .map_err(io_error(format!("size {}", path.display())))?;
    drop(file);
    run(Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "lazy_itable_init=1,nodiscard",
        ])
        .arg(path))
}

fn run(command: &mut Command) -> Result<(), DiskError> {
    let line = format!("{command:?}");
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_error(format!("run {line}")))?;
    if output.status.success() {
        return Ok(());
    }
    Err(DiskError::Command {
        command: line,
        output: format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    })
}

/// How this host bounds a sandbox's disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// A loop-mounted ext4 image per sandbox, made and mounted with these.
    Image {
        /// `mkfs.ext4`.
        mkfs: PathBuf,
        /// `mount`.
        mount: PathBuf,
    },
    /// None: why not.
    Unavailable(String),
}

/// Whether disks of `size_mb` MiB (0: no limit) can be made on this host, checked before
/// anything is made (what [`Disks::new`] checks first). Only reads.
///
/// # Errors
///
/// As [`Disks::new`]'s, without the I/O ones.
pub fn check_size(size_mb: u64) -> Result<(), DiskError> {
    tools_for(size_mb).map(drop)
}

/// The tools for disks of `size_mb`; `None` for no limit.
fn tools_for(size_mb: u64) -> Result<Option<Tools>, DiskError> {
    if size_mb == 0 {
        return Ok(None);
    }
    if size_mb < MIN_SIZE_MB {
        return Err(DiskError::TooSmall(size_mb));
    }
    match mechanism() {
        Mechanism::Image { mkfs, mount } => Ok(Some(Tools { mkfs, mount })),
        Mechanism::Unavailable(reason) => Err(DiskError::Unavailable(reason)),
    }
}

/// What [`Disks`] can use on this host: loop devices, ext4, `mkfs.ext4` and `mount`. Only
/// reads.
#[must_use]
pub fn mechanism() -> Mechanism {
    if !Path::new("/dev/loop-control").exists() {
        return Mechanism::Unavailable("no loop devices (/dev/loop-control)".to_owned());
    }
    let ext4 = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|list| list.split_whitespace().any(|fs| fs == "ext4"));
    if !ext4 {
        return Mechanism::Unavailable("the kernel has no ext4".to_owned());
    }
    let find = |tool: &str| {
        crate::sys::find_in_path(tool).ok_or_else(|| {
            Mechanism::Unavailable(format!("no {tool} in PATH (e2fsprogs, util-linux)"))
        })
    };
    match (find("mkfs.ext4"), find("mount")) {
        (Ok(mkfs), Ok(mount)) => Mechanism::Image { mkfs, mount },
        (Err(missing), _) | (_, Err(missing)) => missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disk_is_a_sparse_copy_of_its_own() {
        use std::os::unix::fs::MetadataExt as _;
        const TEST: &str = "each_disk_is_a_sparse_copy_of_its_own";
        if !firkin_test_support::root_or_skip(TEST) {
            return;
        }
        if let Mechanism::Unavailable(reason) = mechanism() {
            return firkin_test_support::skip(TEST, &reason);
        }
        let state = tempfile::tempdir().unwrap();
        let disks = Disks::new(state.path(), 1024).unwrap();
        let dirs = ["x", "y"].map(|name| state.path().join("sandboxes").join(name));
        for dir in &dirs {
            disks.attach(dir).unwrap();
            let image = std::fs::metadata(disks.image_of(dir)).unwrap();
            assert_eq!(image.len(), 1 << 30);
            // A GiB file system, a few MiB of it on the host.
            assert!(
                image.blocks() * 512 < 16 << 20,
                "{} bytes",
                image.blocks() * 512
            );
        }
        std::fs::write(dirs[0].join("mine"), "x").unwrap();
        assert!(
            !dirs[1].join("mine").exists(),
            "the copies share a file system"
        );
        for dir in &dirs {
            disks.detach(dir).unwrap();
        }
    }

    #[test]
    fn sizes_below_the_minimum_are_refused_and_zero_is_no_limit() {
        let state = tempfile::tempdir().unwrap();
        let error = Disks::new(state.path(), MIN_SIZE_MB - 1).unwrap_err();
        assert!(matches!(error, DiskError::TooSmall(_)), "{error}");
        assert!(error.to_string().contains("0 for no limit"), "{error}");
        assert!(
            !state.path().join("disks").exists(),
            "a refused size made something"
        );

        let disks = Disks::new(state.path(), 0).unwrap();
        assert_eq!(disks.size_bytes(), None);
        let dir = state.path().join("sandboxes/a");
        disks.attach(&dir).unwrap();
        assert!(dir.is_dir());
        disks.detach(&dir).unwrap();
        assert!(dir.is_dir(), "detach removes only the disk");
    }

    /// Whether `dir` is a mount point (its device differs from its parent's).
    fn is_mount_point(dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let dev = |path: &Path| std::fs::metadata(path).map(|meta| meta.dev()).ok();
        dev(dir) != dev(dir.parent().unwrap())
    }

    #[test]
    fn a_disk_holds_its_size_and_goes_without_a_trace() {
        const TEST: &str = "a_disk_holds_its_size_and_goes_without_a_trace";
        if !firkin_test_support::root_or_skip(TEST) {
            return;
        }
        if let Mechanism::Unavailable(reason) = mechanism() {
            return firkin_test_support::skip(TEST, &reason);
        }
        let state = tempfile::tempdir().unwrap();
        let disks = Disks::new(state.path(), 32).unwrap();
        assert_eq!(disks.size_bytes(), Some(32 << 20));
        let dir = state.path().join("sandboxes/a");
        disks.attach(&dir).unwrap();
        assert!(is_mount_point(&dir));
        let image = state.path().join("disks/a.img");
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 32 << 20);

        let stat = rustix::fs::statvfs(&dir).unwrap();
        let flags = rustix::fs::StatVfsMountFlags::NODEV | rustix::fs::StatVfsMountFlags::NOSUID;
        assert!(stat.f_flag.contains(flags), "{:?}", stat.f_flag);
        let total = stat.f_blocks * stat.f_frsize;
        assert!(
            ((24 << 20)..=(32 << 20)).contains(&total),
            "statfs shows {total} bytes"
        );
        let mut file = std::fs::File::create(dir.join("fill")).unwrap();
        let chunk = vec![7_u8; 1 << 20];
        let error = (0..64)
            .find_map(|_| std::io::Write::write_all(&mut file, &chunk).err())
            .expect("64 MiB fit on a 32 MiB disk");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        drop(file);

        disks.detach(&dir).unwrap();
        assert!(!is_mount_point(&dir), "still mounted");
        assert!(!image.exists(), "image left behind");
        assert!(!dir.join("fill").exists());
        // Detaching twice is fine; an orphaned image goes with the reclaim.
        disks.detach(&dir).unwrap();
        std::fs::write(state.path().join("disks/b.img"), b"").unwrap();
        disks.remove_orphans(std::slice::from_ref(&dir)).unwrap();
        assert!(!state.path().join("disks/b.img").exists());
        assert!(
            state.path().join("disks/.blank.img").exists(),
            "the blank stays"
        );
    }
}
