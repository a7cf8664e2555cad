//! `EntryInfo`: what envd reports about one file system entry.
//!
//! Symlinks follow newer E2B envd: the entry is the link itself (its name, path, size,
//! owner, group, modification time and `l` permission string, from `lstat`), `isSymlink` is
//! set, `type` and `mode` are those of what the link finally points to, and `symlinkTarget`
//! is that target's absolute, fully resolved path. A link whose target does not exist (or
//! loops) has no target type to report: its `type` is `FILE_TYPE_SYMLINK`, its `mode` the
//! link's own bits, and `symlinkTarget` the link's text made absolute (relative to the
//! link's directory). Entries that are neither files, directories nor symlinks (devices,
//! sockets, FIFOs) have `FILE_TYPE_UNSPECIFIED`, which E2B's SDK leaves out of listings.

use std::collections::HashMap;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use buffa::{EnumValue, MessageField};
use buffa_types::google::protobuf::Timestamp;

use crate::proto::filesystem::{EntryInfo, FileType};

/// User and group names by id, read from a sandbox's `/etc/passwd` and `/etc/group`.
///
/// envd is a static binary and does not use NSS; ids without a name are reported as
/// numbers, as E2B's envd does.
#[derive(Clone, Debug, Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The names in `etc` (normally `/etc`). Missing or unreadable files give no names.
    #[must_use]
    pub fn load(etc: &Path) -> Self {
        let read = |file: &str| fs::read_to_string(etc.join(file)).unwrap_or_default();
        Self {
            users: parse_id_names(&read("passwd")),
            groups: parse_id_names(&read("group")),
        }
    }

    /// The names of the root file system's accounts.
    #[must_use]
    pub fn system() -> Self {
        Self::load(Path::new("/etc"))
    }

    /// The name of user `uid`, or the number.
    #[must_use]
    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    /// The name of group `gid`, or the number.
    #[must_use]
    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// `name:x:id:...` lines (passwd and group share the first three fields); the first entry
/// of an id wins, as with `getpwuid`.
fn parse_id_names(file: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in file.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        if let Ok(id) = id.trim().parse::<u32>() {
            names.entry(id).or_insert_with(|| name.to_owned());
        }
    }
    names
}

/// The entry at `path` (not following a final symlink; see the module docs).
///
/// # Errors
///
/// When `path` cannot be `lstat`ed (`NotFound` when it does not exist).
pub fn entry_info(path: &Path, names: &Names) -> io::Result<EntryInfo> {
    let link = fs::symlink_metadata(path)?;
    Ok(entry_from_metadata(path, &link, names))
}

/// The entry at `path` whose `lstat` is `link`.
#[must_use]
pub fn entry_from_metadata(path: &Path, link: &Metadata, names: &Names) -> EntryInfo {
    let (file_type, mode, symlink_target) = if link.file_type().is_symlink() {
        match resolve_link(path) {
            Some((target, metadata)) => (
                kind(&metadata),
                metadata.mode() & 0o777,
                Some(target.to_string_lossy().into_owned()),
            ),
            None => (
                FileType::FILE_TYPE_SYMLINK,
                link.mode() & 0o777,
                fs::read_link(path).ok().map(|text| {
                    absolute_link_text(path, &text)
                        .to_string_lossy()
                        .into_owned()
                }),
            ),
        }
    } else {
        (kind(link), link.mode() & 0o777, None)
    };
    let metadata = crate::metadata::read(path).unwrap_or_else(|error| {
        tracing::debug!(path = %path.display(), %error, "cannot read file metadata");
        HashMap::new()
    });
    EntryInfo {
        name: path.file_name().map_or_else(
            || path.to_string_lossy().into_owned(),
            |name| name.to_string_lossy().into_owned(),
        ),
        r#type: EnumValue::from(file_type),
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(link.size()).unwrap_or(i64::MAX),
        mode,
        permissions: permission_string(link.mode()),
        owner: names.user(link.uid()),
        group: names.group(link.gid()),
        modified_time: MessageField::some(Timestamp {
            seconds: link.mtime(),
            nanos: i32::try_from(link.mtime_nsec()).unwrap_or(0),
            ..Default::default()
        }),
        symlink_target,
        metadata: metadata.into_iter().collect(),
        is_symlink: link.file_type().is_symlink(),
        ..Default::default()
    }
}

/// What the symlink at `path` finally points to, and its metadata; `None` when it dangles or
/// loops.
fn resolve_link(path: &Path) -> Option<(PathBuf, Metadata)> {
    let target = fs::canonicalize(path).ok()?;
    let metadata = fs::metadata(&target).ok()?;
    Some((target, metadata))
}

/// The text of the link at `path` as an absolute path, folded lexically.
fn absolute_link_text(path: &Path, text: &Path) -> PathBuf {
    let joined = match path.parent() {
        Some(parent) if text.is_relative() => parent.join(text),
        _ => text.to_path_buf(),
    };
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The wire type of an entry that is not a symlink (or of a symlink's target).
fn kind(metadata: &Metadata) -> FileType {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        FileType::FILE_TYPE_FILE
    } else if file_type.is_dir() {
        FileType::FILE_TYPE_DIRECTORY
    } else if file_type.is_symlink() {
        FileType::FILE_TYPE_SYMLINK
    } else {
        FileType::FILE_TYPE_UNSPECIFIED
    }
}

/// `ls -l`'s ten-character mode string for `st_mode`: the type (`-dlcbps`), then read, write
/// and execute for owner, group and others, with `s`/`S` for set-uid and set-gid and `t`/`T`
/// for the sticky bit.
#[must_use]
pub fn permission_string(st_mode: u32) -> String {
    let type_char = match st_mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |mask: u32, on: char| if st_mode & mask != 0 { on } else { '-' };
    let exec = |mask: u32, special: u32, set: char, unset: char| match (
        st_mode & mask != 0,
        st_mode & special != 0,
    ) {
        (true, true) => set,
        (false, true) => unset,
        (true, false) => 'x',
        (false, false) => '-',
    };
    [
        type_char,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn permission_strings_are_ls_style() {
        assert_eq!(permission_string(libc::S_IFREG | 0o644), "-rw-r--r--");
        assert_eq!(permission_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(permission_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
        assert_eq!(permission_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(permission_string(libc::S_IFDIR | 0o1770), "drwxrwx--T");
        assert_eq!(permission_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(permission_string(libc::S_IFREG | 0o2644), "-rw-r-Sr--");
        assert_eq!(permission_string(libc::S_IFCHR | 0o666), "crw-rw-rw-");
        assert_eq!(permission_string(libc::S_IFIFO | 0o600), "prw-------");
        assert_eq!(permission_string(libc::S_IFSOCK | 0o755), "srwxr-xr-x");
        assert_eq!(permission_string(0), "----------");
    }

    #[test]
    fn names_come_from_passwd_and_group_with_numbers_as_fallback() {
        let etc = tempfile::tempdir().unwrap();
        fs::write(
            etc.path().join("passwd"),
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n\
             alias:x:1000:1000::/:/bin/sh\nbroken\n",
        )
        .unwrap();
        fs::write(etc.path().join("group"), "root:x:0:\nstaff:x:50:user\n").unwrap();
        let names = Names::load(etc.path());
        assert_eq!(names.user(0), "root");
        assert_eq!(names.user(1000), "user");
        assert_eq!(names.user(4242), "4242");
        assert_eq!(names.group(50), "staff");
        assert_eq!(names.group(1000), "1000");
        let empty = Names::load(&etc.path().join("missing"));
        assert_eq!(empty.user(0), "0");
    }

    #[test]
    fn files_directories_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let file = root.join("file.txt");
        fs::write(&file, b"hello").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let sub = root.join("sub");
        fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink("file.txt", root.join("link")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("dirlink")).unwrap();
        std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
        let names = Names::default();

        let entry = entry_info(&file, &names).unwrap();
        assert_eq!(entry.name, "file.txt");
        assert_eq!(entry.path, file.to_str().unwrap());
        assert_eq!(entry.r#type.as_known(), Some(FileType::FILE_TYPE_FILE));
        assert_eq!((entry.size, entry.mode), (5, 0o640));
        assert_eq!(entry.permissions, "-rw-r-----");
        assert!(!entry.is_symlink && entry.symlink_target.is_none());
        assert!(entry.modified_time.as_option().unwrap().seconds > 0);

        let entry = entry_info(&sub, &names).unwrap();
        assert_eq!(entry.r#type.as_known(), Some(FileType::FILE_TYPE_DIRECTORY));
        assert!(entry.permissions.starts_with('d'));

        let entry = entry_info(&root.join("link"), &names).unwrap();
        assert_eq!(entry.name, "link");
        assert_eq!(entry.r#type.as_known(), Some(FileType::FILE_TYPE_FILE));
        assert!(entry.is_symlink);
        assert_eq!(entry.symlink_target.as_deref(), file.to_str());
        assert_eq!(entry.mode, 0o640);
        assert!(entry.permissions.starts_with('l'));

        let entry = entry_info(&root.join("dirlink"), &names).unwrap();
        assert_eq!(entry.r#type.as_known(), Some(FileType::FILE_TYPE_DIRECTORY));
        assert_eq!(entry.symlink_target.as_deref(), sub.to_str());

        let entry = entry_info(&root.join("dangling"), &names).unwrap();
        assert_eq!(entry.r#type.as_known(), Some(FileType::FILE_TYPE_SYMLINK));
        assert!(entry.is_symlink);
        assert_eq!(
            entry.symlink_target.as_deref(),
            root.join("nowhere").to_str()
        );

        let missing = entry_info(&root.join("missing"), &names).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn link_text_is_made_absolute() {
        let link = Path::new("/a/b/link");
        assert_eq!(
            absolute_link_text(link, Path::new("../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            absolute_link_text(link, Path::new("/x/y")),
            PathBuf::from("/x/y")
        );
    }
}
