//! E2B file metadata: `user.e2b.<key>` extended attributes (set by `X-Metadata-<key>` on
//! upload, returned in `EntryInfo.metadata`).

use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Prefix of the extended attributes that carry E2B metadata.
pub const XATTR_PREFIX: &str = "user.e2b.";

/// Every `user.e2b.*` attribute of `path` (not following a final symlink), prefix removed.
/// A file system without extended attributes has no metadata.
///
/// # Errors
///
/// When the attributes exist but cannot be read.
pub fn read(path: &Path) -> io::Result<HashMap<String, String>> {
    let mut names = Vec::with_capacity(256);
    match rustix::fs::llistxattr(path, spare(&mut names)) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::NODATA) => return Ok(HashMap::new()),
        Err(rustix::io::Errno::RANGE) => {
            let needed = rustix::fs::llistxattr_query(path)?;
            names = Vec::with_capacity(needed);
            rustix::fs::llistxattr(path, spare(&mut names))?;
        }
        Err(errno) => return Err(errno.into()),
    }
    let mut metadata = HashMap::new();
    for name in names
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        let Some(key) = name.strip_prefix(XATTR_PREFIX) else {
            continue;
        };
        let mut value = Vec::with_capacity(1024);
        match rustix::fs::lgetxattr(path, name, spare(&mut value)) {
            Ok(_) => {}
            Err(rustix::io::Errno::RANGE) => {
                let needed = rustix::fs::lgetxattr_query(path, name)?;
                value = Vec::with_capacity(needed);
                rustix::fs::lgetxattr(path, name, spare(&mut value))?;
            }
            // Removed between the listing and the read: it is not there.
            Err(rustix::io::Errno::NODATA) => continue,
            Err(errno) => return Err(errno.into()),
        }
        metadata.insert(key.to_owned(), String::from_utf8_lossy(&value).into_owned());
    }
    Ok(metadata)
}

/// Set `user.e2b.<key>` = `value` on the open file `file`: on that file, whatever its path
/// names by now (the path may have been swapped for a symlink since it was opened).
///
/// # Errors
///
/// When the file system refuses extended attributes (`ENOTSUP`) or the key is invalid.
pub fn write_fd(file: impl std::os::fd::AsFd, key: &str, value: &str) -> io::Result<()> {
    let name = format!("{XATTR_PREFIX}{key}");
    rustix::fs::fsetxattr(
        file,
        name.as_str(),
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// The spare capacity of `buffer` as rustix's output buffer (filled and length set by it).
fn spare(buffer: &mut Vec<u8>) -> rustix::buffer::SpareCapacity<'_, u8> {
    rustix::buffer::spare_capacity(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_or_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let open = std::fs::File::open(&file).unwrap();
        match write_fd(&open, "owner", "ada") {
            Ok(()) => {
                write_fd(&open, "big", &"v".repeat(3000)).unwrap();
                let metadata = read(&file).unwrap();
                assert_eq!(metadata.get("owner").map(String::as_str), Some("ada"));
                assert_eq!(metadata.get("big").map(String::len), Some(3000));
            }
            Err(error) => assert_eq!(error.raw_os_error(), Some(libc::EOPNOTSUPP), "{error}"),
        }
        assert!(read(&dir.path().join("missing")).is_err());
    }
}
