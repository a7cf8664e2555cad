//! A sandbox's writes (the overlay upper of its root) as a layer archive: the inverse of
//! [`crate::unpack`]. Builds keep each step's writes this way, and the archive goes back
//! through the store's unpacker, so a step's layer is checked like any pulled one.
//!
//! - Overlay whiteouts (0:0 character devices) become `.wh.<name>` entries, the opaque xattr
//!   (`user.overlay.opaque` or `trusted.overlay.opaque`) a `.wh..wh..opq` entry;
//! - ownership is shifted back out of the sandboxes' id range;
//! - other device nodes and sockets are left out, as the unpacker would skip them;
//! - the files the driver writes into every sandbox (`skip`, e.g. `etc/hosts`) are left out.
//!
//! The walk never follows a symbolic link and stays on the upper's file system.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::IdShift;

/// The overlay's opaque-directory xattrs, as the unpacker writes them.
const OPAQUE_XATTRS: [&str; 2] = ["user.overlay.opaque", "trusted.overlay.opaque"];

/// Writes the upper directory `upper` as an uncompressed tar to `out`, leaving out the paths
/// in `skip` (relative, e.g. `etc/hosts`); returns how many entries it wrote.
///
/// # Errors
///
/// Reading the directory or writing the archive failed.
pub fn upper_to_tar(
    upper: &Path,
    ids: IdShift,
    skip: &[&str],
    out: impl Write,
) -> std::io::Result<usize> {
    uppers_to_tar(&[(upper.to_owned(), PathBuf::new())], ids, skip, out)
}

/// Writes several uppers as one layer: each `(dir, at)` is the upper of what the sandbox
/// mounted at `at` (`""` for its root, `usr` for a `/usr` overlay of its own); an upper at
/// `at` that holds nothing is left out. `skip` names paths of the whole layer.
///
/// # Errors
///
/// As [`upper_to_tar`].
pub fn uppers_to_tar(
    parts: &[(PathBuf, PathBuf)],
    ids: IdShift,
    skip: &[&str],
    out: impl Write,
) -> std::io::Result<usize> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut count = 0;
    for (upper, at) in parts {
        if !at.as_os_str().is_empty() {
            if std::fs::read_dir(upper)?.next().is_none() {
                continue;
            }
            let meta = std::fs::symlink_metadata(upper)?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(meta.mode() & 0o7777);
            header.set_uid(u64::from(unshift(ids, meta.uid())));
            header.set_gid(u64::from(unshift(ids, meta.gid())));
            tar.append_data(&mut header, at, std::io::empty())?;
        }
        count += walk(&mut tar, upper, at, ids, skip)?;
    }
    tar.finish()?;
    Ok(count)
}

/// Appends what is under `upper` to `tar`, named below `at`; how many entries.
fn walk(
    tar: &mut tar::Builder<impl Write>,
    upper: &Path,
    at: &Path,
    ids: IdShift,
    skip: &[&str],
) -> std::io::Result<usize> {
    let device = std::fs::symlink_metadata(upper)?.dev();
    let mut count = 0;
    let mut pending: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let dir = upper.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let path = relative.join(entry.file_name());
            let named = at.join(&path);
            if skip.iter().any(|s| Path::new(s) == named) {
                continue;
            }
            let meta = entry.metadata()?;
            let kind = meta.file_type();
            let mut header = tar::Header::new_gnu();
            header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0));
            header.set_uid(u64::from(unshift(ids, meta.uid())));
            header.set_gid(u64::from(unshift(ids, meta.gid())));
            header.set_mode(meta.mode() & 0o7777);
            if kind.is_char_device() && meta.rdev() == 0 {
                let name = format!(".wh.{}", entry.file_name().to_string_lossy());
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(0);
                tar.append_data(&mut header, at.join(&relative).join(name), std::io::empty())?;
            } else if kind.is_dir() {
                if meta.dev() != device {
                    continue;
                }
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                tar.append_data(&mut header, &named, std::io::empty())?;
                if is_opaque(&upper.join(&path)) {
                    let mut marker = tar::Header::new_gnu();
                    marker.set_entry_type(tar::EntryType::Regular);
                    marker.set_size(0);
                    marker.set_mode(0o644);
                    tar.append_data(&mut marker, named.join(".wh..wh..opq"), std::io::empty())?;
                }
                pending.push(path);
            } else if kind.is_symlink() {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                let target = std::fs::read_link(upper.join(&path))?;
                tar.append_link(&mut header, &named, target)?;
            } else if kind.is_file() {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(meta.len());
                let file = std::fs::File::open(upper.join(&path))?;
                tar.append_data(&mut header, &named, file)?;
            } else if kind.is_fifo() {
                header.set_entry_type(tar::EntryType::Fifo);
                header.set_size(0);
                tar.append_data(&mut header, &named, std::io::empty())?;
            } else {
                // Sockets and device nodes: nothing a layer may carry.
                continue;
            }
            count += 1;
        }
    }
    Ok(count)
}

/// The id inside the sandbox of host id `id` (ids outside the range become `nobody`).
pub(crate) fn unshift(ids: IdShift, id: u32) -> u32 {
    id.checked_sub(ids.host_start)
        .filter(|inside| *inside < ids.count)
        .unwrap_or(IdShift::NOBODY)
}

/// Whether the overlay directory `dir` is opaque (hides what lower layers have there).
pub(crate) fn is_opaque(dir: &Path) -> bool {
    OPAQUE_XATTRS.iter().any(|name| {
        let mut value = [0_u8; 4];
        rustix::fs::lgetxattr(dir, *name, &mut value).is_ok_and(|len| value[..len] == *b"y")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_back_into_the_sandbox_range() {
        let ids = IdShift {
            host_start: 100_000,
            count: 65_536,
        };
        assert_eq!(unshift(ids, 100_000), 0);
        assert_eq!(unshift(ids, 101_000), 1000);
        assert_eq!(
            unshift(ids, 0),
            IdShift::NOBODY,
            "host root is nobody inside"
        );
        assert_eq!(unshift(ids, 165_536), IdShift::NOBODY);
    }
}
