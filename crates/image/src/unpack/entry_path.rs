//! An archive entry's path, made relative to the layer's root and checked.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The prefix OCI and Docker give a whiteout: `.wh.<name>` deletes `<name>` of lower layers.
const WHITEOUT_PREFIX: &str = ".wh.";
/// The whiteout that makes its directory opaque: nothing below it from lower layers shows.
const OPAQUE: &str = ".wh..wh..opq";

/// A path inside the layer: one or more normal components, no `..`, no `/` at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EntryPath {
    /// The directories above the entry, outermost first.
    pub(crate) parents: Vec<OsString>,
    /// The entry's own name.
    pub(crate) name: OsString,
}

/// What an entry's name says it is, beyond its tar type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meaning {
    /// An ordinary entry.
    Plain(EntryPath),
    /// `.wh.<name>`: `<name>` is deleted (an overlay whiteout at that path).
    Whiteout(EntryPath),
    /// `.wh..wh..opq`: the directory of these `parents` hides lower layers' contents.
    Opaque(Vec<OsString>),
    /// The layer's root itself (`./`, `/`): nothing to create.
    Root,
}

/// Reads `path` as an archive gives it. Leading `/` and `.` components are dropped (archives
/// made by `tar -C dir .` and absolute ones land inside the layer alike); `..` is refused
/// wherever it is, as are NUL bytes and names a whiteout cannot carry.
pub(crate) fn meaning(path: &Path) -> Result<Meaning, &'static str> {
    if path.as_os_str().as_bytes().contains(&0) {
        return Err("contains a NUL byte");
    }
    let mut parts: Vec<OsString> = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => return Err("contains `..`, which would leave the layer"),
            Component::Normal(part) => parts.push(part.to_owned()),
            Component::Prefix(_) => return Err("is not a Unix path"),
        }
    }
    let Some(name) = parts.pop() else {
        return Ok(Meaning::Root);
    };
    if name == OsStr::new(OPAQUE) {
        return Ok(Meaning::Opaque(parts));
    }
    let bytes = name.as_bytes();
    if let Some(target) = bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if target.is_empty() || target.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err("is a whiteout of nothing, or of another whiteout");
        }
        return Ok(Meaning::Whiteout(EntryPath {
            parents: parts,
            name: OsStr::from_bytes(target).to_owned(),
        }));
    }
    Ok(Meaning::Plain(EntryPath {
        parents: parts,
        name,
    }))
}

impl EntryPath {
    /// The directories above the entry as one relative path (empty: the root).
    pub(crate) fn parent_path(&self) -> PathBuf {
        self.parents.iter().collect()
    }
}

/// A hard link's target, which must be an earlier entry of the same layer.
pub(crate) fn link_target(path: &Path) -> Result<PathBuf, &'static str> {
    match meaning(path)? {
        Meaning::Plain(entry) => Ok(entry.parent_path().join(entry.name)),
        Meaning::Root => Err("links to the layer's root"),
        Meaning::Whiteout(_) | Meaning::Opaque(_) => Err("links to a whiteout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(parents: &[&str], name: &str) -> Meaning {
        Meaning::Plain(EntryPath {
            parents: parents.iter().map(OsString::from).collect(),
            name: name.into(),
        })
    }

    #[test]
    fn paths_are_made_relative_to_the_layer() {
        assert_eq!(
            meaning(Path::new("usr/bin/env")),
            Ok(plain(&["usr", "bin"], "env"))
        );
        assert_eq!(
            meaning(Path::new("./etc/passwd")),
            Ok(plain(&["etc"], "passwd"))
        );
        assert_eq!(
            meaning(Path::new("/etc/./passwd")),
            Ok(plain(&["etc"], "passwd"))
        );
        assert_eq!(meaning(Path::new("./")), Ok(Meaning::Root));
        assert_eq!(meaning(Path::new("/")), Ok(Meaning::Root));
    }

    #[test]
    fn parent_components_are_refused_wherever_they_are() {
        for path in ["../etc/passwd", "a/../../b", "a/b/..", "/.."] {
            assert!(meaning(Path::new(path)).is_err(), "{path} accepted");
        }
        assert!(link_target(Path::new("../../etc/shadow")).is_err());
    }

    #[test]
    fn whiteouts_name_what_they_delete() {
        assert_eq!(
            meaning(Path::new("etc/.wh.motd")),
            Ok(Meaning::Whiteout(EntryPath {
                parents: vec!["etc".into()],
                name: "motd".into(),
            }))
        );
        assert_eq!(
            meaning(Path::new("var/cache/.wh..wh..opq")),
            Ok(Meaning::Opaque(vec!["var".into(), "cache".into()]))
        );
        assert!(meaning(Path::new("etc/.wh.")).is_err());
        assert!(meaning(Path::new("etc/.wh..wh.x")).is_err());
    }
}
