//! Building the `base` template on disk from a [`BasePlan`]: atomically, idempotently, and safely
//! when several builders race.
//!
//! Layout of a built template directory `dir`:
//!
//! ```text
//! dir/.firkin-template   marker: format, plan fingerprint, id shift (written last)
//! dir/rootfs/            the lower layer: generated /etc, homes, mount points, /bin -> usr/bin
//! ```
//!
//! The marker sits beside `rootfs`, not in it, so sandboxes never see it.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, CWD, FlockOperation, Gid, RenameFlags, Uid};

use super::host::HostFacts;
use super::plan::{BasePlan, EntryKind};

/// Name of the marker file in a template directory.
pub const MARKER: &str = ".firkin-template";

/// Bump when the on-disk layout or the builder's semantics change.
const FORMAT: u32 = 1;

/// Errors building the `base` template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file system operation failed.
    #[error("building template at {path}: {op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `uid + id_shift` does not fit in 32 bits.
    #[error("id shift {shift} is too large for id {id}")]
    IdOverflow {
        /// The sandbox-side id.
        id: u32,
        /// The requested shift.
        shift: u32,
    },
    /// The template path has no parent or no file name.
    #[error("template path {0} must have a parent directory and a name")]
    BadPath(PathBuf),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> TemplateError {
    move |source| TemplateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A built `base` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseTemplate {
    dir: PathBuf,
    fingerprint: String,
    reused: bool,
}

impl BaseTemplate {
    /// Builds the template described by `host` into `dir`, or reuses the one already there when
    /// its marker matches (same plan, same id shift, same ownership).
    ///
    /// Every entry is chowned to its plan uid/gid plus `id_shift` (the host uid the sandbox's
    /// root maps to; 0 for unshifted). Ownership is applied only when running as root; otherwise
    /// the tree is owned by the caller, and a later build as root rebuilds it.
    ///
    /// The build happens in `<dir>.tmp-<unique>` and is renamed into place, under an exclusive
    /// `flock` on `<dir>.lock`: concurrent builders (threads or processes) serialise, the first
    /// builds and the others reuse. A template replaced because the plan changed is moved aside
    /// to `<dir>.old-<unique>` and left there: running sandboxes may still use it as their lower
    /// layer; remove such directories when no sandbox of the old template is left.
    ///
    /// # Errors
    /// On any file system failure, with the operation and path.
    pub fn build(dir: &Path, host: &HostFacts, id_shift: u32) -> Result<Self, TemplateError> {
        let plan = BasePlan::new(host);
        let chown = rustix::process::geteuid().is_root();
        let fingerprint = marker_text(&plan, id_shift, chown);
        let done = |reused| Self {
            dir: dir.to_owned(),
            fingerprint: fingerprint.clone(),
            reused,
        };
        if is_complete(dir, &fingerprint) {
            return Ok(done(true));
        }
        let (parent, name) = match (dir.parent(), dir.file_name()) {
            (Some(parent), Some(name)) => (parent, name.to_string_lossy().into_owned()),
            _ => return Err(TemplateError::BadPath(dir.to_owned())),
        };
        fs::create_dir_all(parent).map_err(io_err("create parent directory", parent))?;
        let lock_path = parent.join(format!("{name}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open lock", &lock_path))?;
        rustix::fs::flock(&lock, FlockOperation::LockExclusive)
            .map_err(|e| io_err("lock", &lock_path)(e.into()))?;
        // Another builder may have finished while we waited.
        if is_complete(dir, &fingerprint) {
            return Ok(done(true));
        }
        // Leftovers of builders that crashed: nobody else builds while we hold the lock.
        remove_stale_tmp(parent, &name);

        let tmp = parent.join(format!("{name}.tmp-{}", unique()));
        let result = build_into(&tmp, &plan, id_shift, chown, &fingerprint)
            .and_then(|()| swap_into_place(&tmp, dir, parent, &name));
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result?;
        Ok(done(false))
    }

    /// The template directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lower layer: the directory the sandbox's root overlay is built on.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The marker text identifying this build (format, plan fingerprint, id shift, ownership).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Whether an existing build was reused instead of building.
    pub fn reused(&self) -> bool {
        self.reused
    }
}

fn marker_text(plan: &BasePlan, id_shift: u32, chown: bool) -> String {
    format!(
        "template=base format={FORMAT} plan={:016x} id_shift={id_shift} owned={chown}\n",
        plan.fingerprint()
    )
}

fn is_complete(dir: &Path, fingerprint: &str) -> bool {
    fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m == fingerprint)
        && dir.join("rootfs").is_dir()
}

fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn remove_stale_tmp(parent: &Path, name: &str) {
    let prefix = format!("{name}.tmp-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::debug!(path = %entry.path().display(), "removing an unfinished template build");
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn build_into(
    tmp: &Path,
    plan: &BasePlan,
    id_shift: u32,
    chown: bool,
    fingerprint: &str,
) -> Result<(), TemplateError> {
    fs::create_dir(tmp).map_err(io_err("create build directory", tmp))?;
    fs::set_permissions(tmp, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", tmp))?;
    let root = tmp.join("rootfs");
    for entry in plan.entries() {
        let rel = entry.path.strip_prefix("/").unwrap_or(&entry.path);
        let path = if rel.as_os_str().is_empty() {
            root.clone()
        } else {
            root.join(rel)
        };
        match &entry.kind {
            EntryKind::Dir => fs::create_dir(&path).map_err(io_err("mkdir", &path))?,
            EntryKind::File(bytes) => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io_err("create", &path))?;
                file.write_all(bytes).map_err(io_err("write", &path))?;
            }
            EntryKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &path).map_err(io_err("symlink", &path))?;
            }
        }
        if chown {
            let shift = |id: u32| {
                id.checked_add(id_shift).ok_or(TemplateError::IdOverflow {
                    id,
                    shift: id_shift,
                })
            };
            let (uid, gid) = (shift(entry.uid)?, shift(entry.gid)?);
            rustix::fs::chownat(
                CWD,
                &path,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err("chown", &path)(e.into()))?;
        }
        // After chown, which may clear mode bits; the umask does not apply to chmod.
        if !matches!(entry.kind, EntryKind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode))
                .map_err(io_err("chmod", &path))?;
        }
    }
    // The marker last: a directory with a marker is complete.
    let marker = tmp.join(MARKER);
    fs::write(&marker, fingerprint).map_err(io_err("write marker", &marker))?;
    Ok(())
}

fn swap_into_place(tmp: &Path, dir: &Path, parent: &Path, name: &str) -> Result<(), TemplateError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return fs::rename(tmp, dir).map_err(io_err("rename into place", dir));
        }
        Err(e) => return Err(io_err("stat", dir)(e)),
        Ok(_) => {}
    }
    // Replace an outdated template atomically; keep the old tree (sandboxes may use it).
    let old = parent.join(format!("{name}.old-{}", unique()));
    match rustix::fs::renameat_with(CWD, tmp, CWD, dir, RenameFlags::EXCHANGE) {
        Ok(()) => fs::rename(tmp, &old).map_err(io_err("move old template aside", tmp))?,
        Err(_) => {
            // File systems without RENAME_EXCHANGE: two renames, briefly no template.
            fs::rename(dir, &old).map_err(io_err("move old template aside", dir))?;
            fs::rename(tmp, dir).map_err(io_err("rename into place", dir))?;
        }
    }
    tracing::info!(old = %old.display(), "base template rebuilt; the previous one was kept");
    Ok(())
}
