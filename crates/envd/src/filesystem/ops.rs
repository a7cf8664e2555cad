//! The blocking file operations behind the unary RPCs. Each runs with the requesting user's
//! credentials (see [`crate::as_user`]), so the kernel decides what the user may do.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use connectrpc::{ConnectError, ErrorCode};

use crate::filesystem::entry::{Names, entry_from_metadata, entry_info};
use crate::proto::filesystem::EntryInfo;

/// Mode of directories envd creates (before the umask), as E2B's envd.
pub const DIR_MODE: u32 = 0o755;

/// `Stat`: the entry at `path`.
///
/// # Errors
///
/// `not_found` when it does not exist (also when a parent is not a directory: that is how
/// `files.exists()` answers false), `permission_denied`, ...
pub fn stat(path: &Path, names: &Names) -> Result<EntryInfo, ConnectError> {
    entry_info(path, names).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOTDIR) => not_found(path),
        _ => io_error("cannot stat", path, &error),
    })
}

/// `ListDir`: the entries under the directory `path` (a symlink to a directory is followed),
/// `depth` levels deep (0 means 1), in name order, each directory followed by its contents.
/// Symlinked directories below `path` are listed but not entered. Entries that vanish while
/// listing are left out, and so are the contents of subdirectories the user cannot read.
///
/// # Errors
///
/// `not_found`, `invalid_argument` when `path` is not a directory, `permission_denied` when
/// it cannot be read.
pub fn list_dir(path: &Path, depth: u32, names: &Names) -> Result<Vec<EntryInfo>, ConnectError> {
    let metadata = fs::metadata(path).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOTDIR) => not_found(path),
        _ => io_error("cannot list", path, &error),
    })?;
    if !metadata.is_dir() {
        return Err(ConnectError::invalid_argument(format!(
            "path '{}' is not a directory",
            path.display()
        )));
    }
    let depth = usize::try_from(depth.max(1)).unwrap_or(usize::MAX);
    // Depth-first, each directory's children in name order right after it. Levels are an
    // explicit stack (no recursion, however deep the tree).
    let mut levels = vec![sorted_children(path).map_err(|e| io_error("cannot list", path, &e))?];
    let mut entries = Vec::new();
    while let Some(level) = levels.last_mut() {
        let Some(child) = level.pop() else {
            levels.pop();
            continue;
        };
        let metadata = match fs::symlink_metadata(&child) {
            Ok(metadata) => metadata,
            Err(error) => {
                tracing::debug!(path = %child.display(), %error, "skipping entry");
                continue;
            }
        };
        entries.push(entry_from_metadata(&child, &metadata, names));
        if levels.len() < depth && metadata.is_dir() {
            match sorted_children(&child) {
                Ok(children) => levels.push(children),
                Err(error) => {
                    tracing::debug!(path = %child.display(), %error, "not listing subdirectory");
                }
            }
        }
    }
    Ok(entries)
}

/// The paths in `dir`, last name first (so that popping gives name order).
fn sorted_children(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut children: Vec<_> = fs::read_dir(dir)?
        .filter_map(|child| match child {
            Ok(child) => Some(child.file_name()),
            Err(error) => {
                tracing::debug!(dir = %dir.display(), %error, "skipping unreadable entry");
                None
            }
        })
        .collect();
    children.sort_by(|a, b| b.as_encoded_bytes().cmp(a.as_encoded_bytes()));
    Ok(children.into_iter().map(|name| dir.join(name)).collect())
}

/// `MakeDir`: create the directory `path` and any missing parents (mode 0755 before the
/// umask, owned by whoever runs it: the requesting user).
///
/// # Errors
///
/// `already_exists` when it is already a directory (the SDK then answers false),
/// `invalid_argument` when it or a parent is something else, `permission_denied`, ...
pub fn make_dir(path: &Path, names: &Names) -> Result<EntryInfo, ConnectError> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => {
            return Err(ConnectError::already_exists(format!(
                "directory '{}' already exists",
                path.display()
            )));
        }
        Ok(_) => {
            return Err(ConnectError::invalid_argument(format!(
                "path '{}' already exists and is not a directory",
                path.display()
            )));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) if error.raw_os_error() == Some(libc::ENOTDIR) => {
            return Err(ConnectError::invalid_argument(format!(
                "cannot create directory '{}': a parent is not a directory",
                path.display()
            )));
        }
        Err(error) => return Err(io_error("cannot create directory", path, &error)),
    }
    create_dirs(path)?;
    stat(path, names)
}

fn create_dirs(path: &Path) -> Result<(), ConnectError> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ENOTDIR) => ConnectError::invalid_argument(format!(
                "cannot create directory '{}': a parent is not a directory",
                path.display()
            )),
            Some(libc::EEXIST) => ConnectError::invalid_argument(format!(
                "cannot create directory '{}': it or a parent exists and is not a directory",
                path.display()
            )),
            _ => io_error("cannot create directory", path, &error),
        })
}

/// `Move`: rename `source` to `destination`, creating the destination's missing parent
/// directories first (as E2B's envd does). An existing destination file (or empty
/// directory) is replaced, as with `rename(2)`.
///
/// # Errors
///
/// `not_found` for a missing source, `already_exists` when the destination is a non-empty
/// directory, `invalid_argument` for a file onto a directory (and the like),
/// `failed_precondition` across file systems, `permission_denied`, ...
pub fn rename(source: &Path, destination: &Path, names: &Names) -> Result<EntryInfo, ConnectError> {
    fs::symlink_metadata(source).map_err(|error| match error.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => {
            ConnectError::not_found(format!("source path '{}' does not exist", source.display()))
        }
        _ => io_error("cannot move", source, &error),
    })?;
    if let Some(parent) = destination.parent() {
        create_dirs(parent)?;
    }
    fs::rename(source, destination).map_err(|error| {
        let what = format!(
            "cannot move '{}' to '{}'",
            source.display(),
            destination.display()
        );
        match error.raw_os_error() {
            Some(libc::ENOENT) => ConnectError::not_found(format!(
                "source path '{}' does not exist",
                source.display()
            )),
            Some(libc::ENOTEMPTY | libc::EEXIST) => ConnectError::already_exists(format!(
                "{what}: the destination is a non-empty directory"
            )),
            Some(libc::EXDEV) => ConnectError::failed_precondition(format!(
                "{what}: they are on different file systems"
            )),
            _ => ConnectError::new(error_code(&error), format!("{what}: {}", describe(&error))),
        }
    })?;
    stat(destination, names)
}

/// `Remove`: delete the file, symlink (not its target) or directory tree at `path`. A path
/// that does not exist is removed already: E2B's envd answers success, and the SDK's own
/// tests remove missing paths expecting no error.
///
/// # Errors
///
/// `permission_denied` (part of a tree may be gone by then), `invalid_argument` for `/`, ...
pub fn remove(path: &Path) -> Result<(), ConnectError> {
    if path == Path::new("/") {
        return Err(ConnectError::invalid_argument("refusing to remove '/'"));
    }
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            return Ok(());
        }
        Err(error) => return Err(io_error("cannot remove", path, &error)),
    };
    let removed = if metadata.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("cannot remove", path, &error)),
    }
}

/// `path` does not exist, as `not_found`.
#[must_use]
pub fn not_found(path: &Path) -> ConnectError {
    ConnectError::not_found(format!("path '{}' does not exist", path.display()))
}

/// A failed operation `what` (e.g. "cannot remove") on `path`, with the Connect code that
/// fits the error.
#[must_use]
pub fn io_error(what: &str, path: &Path, error: &io::Error) -> ConnectError {
    if error.raw_os_error() == Some(libc::ENOENT) {
        return not_found(path);
    }
    ConnectError::new(
        error_code(error),
        format!("{what} '{}': {}", path.display(), describe(error)),
    )
}

/// The Connect code for a failed system call.
#[must_use]
pub fn error_code(error: &io::Error) -> ErrorCode {
    match error.raw_os_error() {
        Some(libc::ENOENT) => ErrorCode::NotFound,
        Some(libc::EACCES | libc::EPERM) => ErrorCode::PermissionDenied,
        Some(libc::EEXIST) => ErrorCode::AlreadyExists,
        Some(libc::ENOTDIR | libc::EISDIR | libc::EINVAL | libc::ELOOP | libc::ENAMETOOLONG) => {
            ErrorCode::InvalidArgument
        }
        Some(libc::ENOSPC | libc::EDQUOT | libc::EMFILE | libc::ENFILE) => {
            ErrorCode::ResourceExhausted
        }
        Some(libc::EROFS | libc::EBUSY | libc::EXDEV | libc::ENOTEMPTY) => {
            ErrorCode::FailedPrecondition
        }
        _ => ErrorCode::Internal,
    }
}

/// The error's text without Rust's " (os error N)" suffix.
fn describe(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) => text[..at].to_lowercase(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::filesystem::FileType;

    fn code(result: Result<impl std::fmt::Debug, ConnectError>) -> ErrorCode {
        result.unwrap_err().code
    }

    #[test]
    fn errors_get_connect_codes_and_name_the_path() {
        let path = Path::new("/x/y");
        let error = |errno| io_error("cannot remove", path, &io::Error::from_raw_os_error(errno));
        assert_eq!(error(libc::ENOENT).code, ErrorCode::NotFound);
        assert_eq!(
            error(libc::ENOENT).message.as_deref(),
            Some("path '/x/y' does not exist")
        );
        assert_eq!(error(libc::EACCES).code, ErrorCode::PermissionDenied);
        assert_eq!(
            error(libc::EACCES).message.as_deref(),
            Some("cannot remove '/x/y': permission denied")
        );
        assert_eq!(error(libc::EISDIR).code, ErrorCode::InvalidArgument);
        assert_eq!(error(libc::ENOSPC).code, ErrorCode::ResourceExhausted);
        assert_eq!(error(libc::EROFS).code, ErrorCode::FailedPrecondition);
        assert_eq!(error(libc::EIO).code, ErrorCode::Internal);
    }

    #[test]
    fn make_stat_move_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let names = Names::default();

        let nested = root.join("a/b/c");
        let made = make_dir(&nested, &names).unwrap();
        assert_eq!(made.r#type.as_known(), Some(FileType::FILE_TYPE_DIRECTORY));
        assert_eq!(made.path, nested.to_str().unwrap());
        assert_eq!(code(make_dir(&nested, &names)), ErrorCode::AlreadyExists);
        fs::write(root.join("a/file"), b"x").unwrap();
        assert_eq!(
            code(make_dir(&root.join("a/file"), &names)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(make_dir(&root.join("a/file/sub"), &names)),
            ErrorCode::InvalidArgument
        );

        assert_eq!(code(stat(&root.join("nope"), &names)), ErrorCode::NotFound);
        assert_eq!(
            code(stat(&root.join("a/file/sub"), &names)),
            ErrorCode::NotFound
        );

        let names_of = |entries: Vec<EntryInfo>| {
            entries
                .into_iter()
                .map(|entry| entry.path)
                .collect::<Vec<_>>()
        };
        let path = |rel: &str| root.join(rel).to_string_lossy().into_owned();
        assert_eq!(
            names_of(list_dir(&root.join("a"), 0, &names).unwrap()),
            [path("a/b"), path("a/file")]
        );
        assert_eq!(
            names_of(list_dir(&root.join("a"), 2, &names).unwrap()),
            [path("a/b"), path("a/b/c"), path("a/file")]
        );
        assert_eq!(
            code(list_dir(&root.join("a/file"), 1, &names)),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(list_dir(&root.join("zz"), 1, &names)),
            ErrorCode::NotFound
        );

        // A symlinked directory is listed, not entered.
        std::os::unix::fs::symlink(root.join("a/b"), root.join("a/link")).unwrap();
        let deep = list_dir(&root.join("a"), 5, &names).unwrap();
        assert_eq!(
            names_of(deep.clone()),
            [path("a/b"), path("a/b/c"), path("a/file"), path("a/link")]
        );
        assert!(deep[3].is_symlink);
        // Listing through a symlink reports paths under the link.
        assert_eq!(
            names_of(list_dir(&root.join("a/link"), 1, &names).unwrap()),
            [path("a/link/c")]
        );

        let moved = rename(&root.join("a/file"), &root.join("new/dir/file2"), &names).unwrap();
        assert_eq!(moved.path, path("new/dir/file2"));
        assert_eq!(moved.name, "file2");
        assert_eq!(
            code(rename(&root.join("a/file"), &root.join("x"), &names)),
            ErrorCode::NotFound
        );
        fs::write(root.join("a/b/c/inner"), b"x").unwrap();
        assert_eq!(
            code(rename(&root.join("new"), &root.join("a/b"), &names)),
            ErrorCode::AlreadyExists
        );

        remove(&root.join("a/link")).unwrap();
        assert!(root.join("a/b/c/inner").exists(), "the link's target stays");
        remove(&root.join("a")).unwrap();
        assert!(!root.join("a").exists());
        remove(&root.join("a")).unwrap();
        assert_eq!(code(remove(Path::new("/"))), ErrorCode::InvalidArgument);
    }
}
