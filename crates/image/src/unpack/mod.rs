//! Unpacking one layer archive into a directory overlayfs can use as a lower layer.
//!
//! - The stream is a tar archive, plain or compressed with gzip or zstd (told apart by their
//!   magic bytes, so media types that lie do not matter).
//! - Paths are made relative to the layer; `..` is refused (see `entry_path`), and nothing is
//!   written through a symbolic link (see `write`).
//! - Whiteouts (`.wh.<name>`) become overlay whiteouts (a 0:0 character device); opaque
//!   markers (`.wh..wh..opq`) become the overlay's opaque xattr on their directory.
//! - Hard links must point at an earlier entry of the same layer.
//! - Device nodes are skipped (a sandbox has its own minimal `/dev`); FIFOs are kept.
//! - Ownership is shifted into the sandboxes' id range ([`IdShift`]); ids beyond it become
//!   `nobody` (65534) and are counted.
//! - Of the extended attributes in PAX headers only `user.*` are kept: `trusted.*` and
//!   `security.*` would mean something to the host or to overlayfs itself.
//! - File modification times are kept; directories' are not.
//!
//! Both digests of the stream are computed on the way: of the bytes as given (the
//! manifest's layer `digest`) and of the uncompressed tar (the config's `diff_id`).

mod entry_path;
mod write;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use tar::EntryType;

use crate::digest::{Digest, HashingReader};
use crate::error::UnpackError;
use entry_path::{Meaning, link_target, meaning};
use write::{LayerWriter, Owner, WriteError};

/// How archive ids map onto host ids: archive id `n < count` is host id `host_start + n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdShift {
    /// The host id of the sandbox's root.
    pub host_start: u32,
    /// How many ids the sandboxes have.
    pub count: u32,
}

impl IdShift {
    /// The id the kernel gives a sandbox's `nobody`, for archive ids beyond the range.
    pub const NOBODY: u32 = 65_534;

    /// The host id of archive id `id`.
    #[must_use]
    pub fn host(self, id: u32) -> u32 {
        let inside = if id < self.count {
            id
        } else {
            Self::NOBODY.min(self.count.saturating_sub(1))
        };
        self.host_start.saturating_add(inside)
    }
}

/// How to unpack.
#[derive(Clone, Copy, Debug)]
pub struct UnpackOptions {
    /// Where ownership goes.
    pub ids: IdShift,
    /// At most this many entries per layer (a layer of millions of empty files costs the
    /// host inodes and time long before bytes).
    pub max_entries: usize,
}

impl UnpackOptions {
    /// The default entry limit: far above real images (a full Debian with Python and Node
    /// has about 30,000 entries per layer), far below what exhausts a file system's inodes.
    pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

    /// Defaults, with ownership shifted by `ids`.
    #[must_use]
    pub fn new(ids: IdShift) -> Self {
        Self {
            ids,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What an unpack found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnpackReport {
    /// The digest of the stream as given (a registry's layer digest).
    pub digest: Digest,
    /// Its length.
    pub compressed_bytes: u64,
    /// The digest of the uncompressed tar (the image config's `diff_id`).
    pub diff_id: Digest,
    /// Its length.
    pub tar_bytes: u64,
    /// Entries read.
    pub entries: usize,
    /// Device nodes skipped.
    pub skipped_devices: usize,
    /// Extended attributes not kept (not `user.*`).
    pub ignored_xattrs: usize,
    /// Entries whose owner was outside the id range and became `nobody`.
    pub remapped_ids: usize,
}

/// Unpacks the layer archive `blob` into the existing, empty directory `dir` (see the module
/// docs). On error `dir` holds whatever was written so far: the caller removes it
/// ([`crate::LayerStore`] does).
///
/// # Errors
///
/// [`UnpackError`]: not an archive, a refused entry, too many entries, or I/O.
pub fn unpack(
    blob: impl Read,
    dir: &Path,
    options: &UnpackOptions,
) -> Result<UnpackReport, UnpackError> {
    let root = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::io("open the layer directory", dir)(e.into()))?;
    let mut writer = LayerWriter::new(root, options.ids);
    let mut counts = Counts::default();
    let mut blob = HashingReader::new(blob);
    let (diff_id, tar_bytes) = {
        let mut tar_stream = HashingReader::new(decompressed(BufReader::new(&mut blob))?);
        let mut archive = tar::Archive::new(&mut tar_stream);
        for entry in archive.entries().map_err(UnpackError::Archive)? {
            let entry = entry.map_err(UnpackError::Archive)?;
            counts.entries += 1;
            if counts.entries > options.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: options.max_entries,
                });
            }
            write_entry(&mut writer, entry, &mut counts)?;
        }
        // The archive ends at its end-of-archive blocks; the hash takes what follows too.
        archive.into_inner();
        tar_stream.finish().map_err(UnpackError::Archive)?
    };
    let (digest, compressed_bytes) = blob.finish().map_err(UnpackError::Archive)?;
    Ok(UnpackReport {
        digest,
        compressed_bytes,
        diff_id,
        tar_bytes,
        entries: counts.entries,
        skipped_devices: counts.skipped_devices,
        ignored_xattrs: counts.ignored_xattrs,
        remapped_ids: writer.remapped_ids,
    })
}

#[derive(Default)]
struct Counts {
    entries: usize,
    skipped_devices: usize,
    ignored_xattrs: usize,
}

/// The tar stream inside `input`: gzip and zstd by their magic bytes, else as it is.
fn decompressed<'a>(
    mut input: BufReader<impl Read + 'a>,
) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let head = input.fill_buf().map_err(UnpackError::Archive)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(input).map_err(UnpackError::Archive)?)
    } else {
        Box::new(input)
    })
}

fn write_entry<R: Read>(
    writer: &mut LayerWriter,
    mut entry: tar::Entry<'_, R>,
    counts: &mut Counts,
) -> Result<(), UnpackError> {
    let path = entry.path().map_err(UnpackError::Archive)?.into_owned();
    let shown = path.display().to_string();
    let bad_path = |problem| UnpackError::BadPath {
        path: shown.clone(),
        problem,
    };
    let refused = |error: WriteError| match error {
        WriteError::Refused(problem) => UnpackError::Refused {
            path: shown.clone(),
            problem,
        },
        WriteError::Io(source) => UnpackError::Io {
            what: "write the entry",
            path: path.clone(),
            source,
        },
    };
    let header = entry.header();
    let kind = header.entry_type();
    let owner = Owner {
        uid: header
            .uid()
            .ok()
            .and_then(|id| u32::try_from(id).ok())
            .unwrap_or(u32::MAX),
        gid: header
            .gid()
            .ok()
            .and_then(|id| u32::try_from(id).ok())
            .unwrap_or(u32::MAX),
        mode: header.mode().map_err(UnpackError::Archive)?,
    };
    let mtime = header.mtime().unwrap_or(0);
    let entry_path = match meaning(&path).map_err(bad_path)? {
        Meaning::Root => return Ok(()),
        Meaning::Whiteout(target) => {
            let parent = writer.dir(&target.parents).map_err(refused)?;
            return writer.whiteout(&parent, &target.name).map_err(refused);
        }
        Meaning::Opaque(dir) => {
            let last = writer.dir(&dir).map_err(refused)?;
            let readable = rustix::fs::openat(
                &last,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| refused(WriteError::Io(e.into())))?;
            return writer.opaque(&readable).map_err(refused);
        }
        Meaning::Plain(entry_path) => entry_path,
    };
    let xattrs = user_xattrs(&mut entry, counts).map_err(UnpackError::Archive)?;
    let parent = writer.dir(&entry_path.parents).map_err(refused)?;
    let name = entry_path.name.as_os_str();
    match kind {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let file = writer
                .file(&parent, name, owner, mtime, &mut entry)
                .map_err(refused)?;
            set_xattrs(&file, &xattrs).map_err(refused)?;
        }
        EntryType::Directory => {
            let dir = writer.directory(&parent, name, owner).map_err(refused)?;
            set_xattrs(&dir, &xattrs).map_err(refused)?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Archive)?
                .ok_or_else(|| bad_path("is a symbolic link without a target"))?;
            writer
                .symlink(&parent, name, target.as_os_str(), owner)
                .map_err(refused)?;
        }
        EntryType::Link => {
            let target = entry
                .link_name()
                .map_err(UnpackError::Archive)?
                .ok_or_else(|| bad_path("is a hard link without a target"))?;
            let target = link_target(&target).map_err(bad_path)?;
            let target_name = target.file_name().unwrap_or_default().to_owned();
            let target_parents: Vec<_> = target
                .parent()
                .map(|p| p.iter().map(ToOwned::to_owned).collect())
                .unwrap_or_default();
            let target_parent = writer.dir(&target_parents).map_err(refused)?;
            writer
                .hard_link(&parent, name, &target_parent, &target_name)
                .map_err(refused)?;
        }
        EntryType::Fifo => writer.fifo(&parent, name, owner).map_err(refused)?,
        EntryType::Char | EntryType::Block => counts.skipped_devices += 1,
        other => {
            return Err(UnpackError::Refused {
                path: shown,
                problem: format!("has the unsupported tar entry type {other:?}"),
            });
        }
    }
    Ok(())
}

/// The entry's `user.*` extended attributes from its PAX header; the others are counted.
fn user_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    counts: &mut Counts,
) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut kept = Vec::new();
    let Some(extensions) = entry.pax_extensions()? else {
        return Ok(kept);
    };
    for extension in extensions {
        let extension = extension?;
        let Some(name) = extension
            .key()
            .ok()
            .and_then(|k| k.strip_prefix("SCHILY.xattr."))
        else {
            continue;
        };
        if name.starts_with("user.") {
            kept.push((name.to_owned(), extension.value_bytes().to_owned()));
        } else {
            counts.ignored_xattrs += 1;
        }
    }
    Ok(kept)
}

fn set_xattrs(fd: &impl rustix::fd::AsFd, xattrs: &[(String, Vec<u8>)]) -> Result<(), WriteError> {
    for (name, value) in xattrs {
        rustix::fs::fsetxattr(fd, name.as_str(), value, rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}
