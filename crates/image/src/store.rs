//! The content-addressed layer store: `<root>/layers/sha256/<hex of the diff_id>/`, one
//! unpacked layer per directory, shared by every template whose image has that layer.
//!
//! A layer is unpacked into `<root>/tmp/<unique>`, its digests are checked, the file system is
//! synced, and only then is the directory renamed into `layers/`: a layer there is whole and
//! verified, and a half-unpacked one (an error, a crash) is never visible. `tmp/` is emptied
//! when the store is opened, so a crash leaves nothing behind for long.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};

use crate::Digest;
use crate::error::UnpackError;
use crate::unpack::{UnpackOptions, UnpackReport, unpack};

/// The store (see the module docs).
#[derive(Debug)]
pub struct LayerStore {
    root: PathBuf,
    options: UnpackOptions,
}

/// A layer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLayer {
    /// The digest of its uncompressed tar: its name in the store.
    pub diff_id: Digest,
    /// Its directory, an overlay lower layer.
    pub path: PathBuf,
    /// What unpacking it found; `None` when it was in the store already.
    pub report: Option<UnpackReport>,
}

/// What the caller knows of a layer before unpacking it; each given digest is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expected {
    /// The digest of the stream as given (a manifest's layer `digest`).
    pub digest: Option<Digest>,
    /// The digest of the uncompressed tar (the config's `diff_id`).
    pub diff_id: Option<Digest>,
}

impl LayerStore {
    /// Opens (making it if needed) the store at `root`, which unpacks with `options`, and
    /// removes what a crashed unpack left in `tmp/`.
    ///
    /// # Errors
    ///
    /// The directories cannot be made or cleared.
    pub fn open(root: impl Into<PathBuf>, options: UnpackOptions) -> Result<Self, UnpackError> {
        let store = Self {
            root: root.into(),
            options,
        };
        for dir in [store.layers_dir(), store.tmp_dir()] {
            std::fs::create_dir_all(&dir).map_err(UnpackError::io("create", &dir))?;
        }
        // The sandboxes' root mounts layers from here: it may pass through, not list.
        let sandbox_root = store.options.ids.host_start;
        for dir in [store.root.join("layers"), store.layers_dir()] {
            searchable_by_sandboxes(&dir, sandbox_root)?;
        }
        let tmp = store.tmp_dir();
        let entries = std::fs::read_dir(&tmp).map_err(UnpackError::io("list", &tmp))?;
        for entry in entries.flatten() {
            let path = entry.path();
            // The daemon and the command line share the store: what a live process is
            // unpacking is not left over.
            if owner_alive(&entry.file_name().to_string_lossy()) {
                continue;
            }
            tracing::warn!(path = %path.display(), "removing a half-unpacked layer or download");
            if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
            .map_err(UnpackError::io("remove", &path))?;
        }
        Ok(store)
    }

    /// A file name in the store's scratch directory (on the layers' file system, emptied of
    /// dead processes' files when a store is opened) for `kind` of work.
    #[must_use]
    pub fn scratch_path(&self, kind: &str) -> PathBuf {
        self.tmp_path(kind)
    }

    /// How the store shifts the ids of what it unpacks.
    #[must_use]
    pub fn ids(&self) -> crate::IdShift {
        self.options.ids
    }

    /// Where the layer `diff_id` lives (whether or not it is there).
    #[must_use]
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }

    /// The layer `diff_id`, if the store has it.
    #[must_use]
    pub fn get(&self, diff_id: &Digest) -> Option<StoredLayer> {
        let path = self.layer_path(diff_id);
        path.is_dir().then_some(StoredLayer {
            diff_id: *diff_id,
            path,
            report: None,
        })
    }

    /// Unpacks the layer archive `blob` into the store, checking the digests in `expected`.
    /// When the store already has the layer (`expected.diff_id` names one it has), nothing is
    /// read.
    ///
    /// # Errors
    ///
    /// [`UnpackError`]; the store is then as it was.
    pub fn unpack(&self, blob: impl Read, expected: Expected) -> Result<StoredLayer, UnpackError> {
        if let Some(layer) = expected.diff_id.as_ref().and_then(|id| self.get(id)) {
            return Ok(layer);
        }
        let tmp = TempDir::new(self.tmp_path("unpack"))?;
        let report = unpack(blob, &tmp.path, &self.options)?;
        for (which, expected, actual) in [
            ("digest", expected.digest, report.digest),
            ("diff_id", expected.diff_id, report.diff_id),
        ] {
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(UnpackError::DigestMismatch {
                    which,
                    expected,
                    actual,
                });
            }
        }
        sync_file_system(&tmp.path)?;
        let path = self.layer_path(&report.diff_id);
        match std::fs::rename(&tmp.path, &path) {
            Ok(()) => tmp.keep(),
            // Unpacked meanwhile by another caller: theirs stays, ours goes (the guard).
            Err(_) if path.is_dir() => {}
            Err(error) => return Err(UnpackError::io("move the layer to", &path)(error)),
        }
        sync_file_system(&self.layers_dir())?;
        Ok(StoredLayer {
            diff_id: report.diff_id,
            path,
            report: Some(report),
        })
    }

    /// Removes every layer not in `keep` (the layers some template uses, from
    /// [`crate::Catalog::layers_in_use`]); returns the digests removed. A layer is first
    /// renamed into `tmp/`, so a crash half-way leaves no half-removed layer visible.
    ///
    /// The caller makes sure no unpack or build that will want a removed layer runs meanwhile.
    ///
    /// # Errors
    ///
    /// The store cannot be listed, or a layer cannot be moved or removed.
    pub fn prune(
        &self,
        keep: &std::collections::HashSet<Digest>,
    ) -> Result<Vec<Digest>, UnpackError> {
        let layers = self.layers_dir();
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(&layers).map_err(UnpackError::io("list", &layers))? {
            let entry = entry.map_err(UnpackError::io("list", &layers))?;
            let Ok(digest) =
                format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>()
            else {
                continue;
            };
            if keep.contains(&digest) {
                continue;
            }
            let doomed = self.tmp_path("pruned");
            std::fs::rename(entry.path(), &doomed)
                .map_err(UnpackError::io("move out", entry.path()))?;
            std::fs::remove_dir_all(&doomed).map_err(UnpackError::io("remove", &doomed))?;
            removed.push(digest);
        }
        Ok(removed)
    }

    /// A fresh path in `tmp/` for a layer being downloaded (removed by the caller, or at the
    /// next open after a crash).
    pub(crate) fn download_path(&self) -> PathBuf {
        self.tmp_path("download")
    }

    /// A path in `tmp/` no one else uses: `<kind>-<pid>-<n>`.
    fn tmp_path(&self, kind: &str) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir().join(format!(
            "{kind}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// Flushes the file system holding `path` (the layer's files, then the rename).
fn sync_file_system(path: &Path) -> Result<(), UnpackError> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(rustix::fs::syncfs)
    .map_err(|e| UnpackError::io("sync", path)(e.into()))
}

/// A directory of `tmp/` that is removed when dropped, unless kept.
/// Whether the scratch entry `name` (`<kind>-<pid>-<n>`) belongs to a live process other
/// than this one.
fn owner_alive(name: &str) -> bool {
    let pid = name
        .rsplit('-')
        .nth(1)
        .and_then(|pid| pid.parse::<u32>().ok());
    pid.is_some_and(|pid| pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
}

/// Makes `dir` `root:<gid>` `0710`: the sandboxes' root (whose host group is `gid`) may pass
/// through it to the layers it mounts, and no one else may enter.
pub(crate) fn searchable_by_sandboxes(dir: &Path, gid: u32) -> Result<(), UnpackError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::os::unix::fs::chown(dir, None, Some(gid))
        .map_err(UnpackError::io("chgrp to the sandboxes' root group", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))
        .map_err(UnpackError::io("chmod 0710", dir))
}

struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(path: PathBuf) -> Result<Self, UnpackError> {
        std::fs::create_dir(&path).map_err(UnpackError::io("create", &path))?;
        Ok(Self { path, keep: false })
    }

    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep
            && let Err(error) = std::fs::remove_dir_all(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove a half-unpacked layer");
        }
    }
}
