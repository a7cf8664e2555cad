//! `COPY`: the step's layer is made on the host from the uploaded archive, without a sandbox.
//! The result is what E2B's copy script leaves (contract §2.4): the source is the upload's
//! path with the glob cut off; a file goes to `dest` (or into it when `dest` ends with `/`), a
//! directory's contents are merged into `dest`; everything copied belongs to the owner and
//! takes the mode when one is given; missing parent directories are made as root would.
//!
//! The layer goes through the store's unpacker like a pulled one: a hostile upload (`..`,
//! absolute names, links out) is refused there.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use firkin_image::IdShift;
use firkin_image::provision::{attributes, find_group, find_user};

use crate::BuildError;

/// What a `COPY` step needs to know of the build.
#[derive(Debug)]
pub(crate) struct CopyInto<'a> {
    /// The image so far, bottom first.
    pub layers: &'a [PathBuf],
    /// How the store shifted their ids.
    pub ids: IdShift,
    /// The build's current user (the default owner).
    pub user: &'a str,
    /// The build's working directory, if one was set.
    pub workdir: Option<&'a str>,
}

/// The layer (an uncompressed tar) of `COPY source dest` from the upload `archive` (tar or
/// gzip'd tar).
///
/// # Errors
///
/// [`BuildError::Step`]: the source is not in the upload, the owner does not exist, or the
/// upload is not an archive.
pub(crate) fn copy_layer(
    archive: &Path,
    source: &str,
    dest: &str,
    owner: Option<&str>,
    mode: Option<u32>,
    into: &CopyInto<'_>,
) -> Result<Vec<u8>, BuildError> {
    let fail = |why: String| BuildError::Step(format!("COPY {source} {dest}: {why}"));
    let (uid, gid) = owner_ids(owner.unwrap_or(into.user), into).map_err(fail)?;
    let prefix = glob_base(source);
    let members = read_members(archive).map_err(|e| fail(format!("the upload: {e}")))?;
    let source_is_file = !prefix.as_os_str().is_empty()
        && members
            .iter()
            .any(|m| m.path == prefix && !matches!(m.kind, Kind::Dir));
    let home = find_user(into.layers, into.user).map_or_else(|| "/".to_owned(), |u| u.home);
    let base = into.workdir.unwrap_or(&home);
    let dest_path = normalize(&Path::new(base).join(dest));
    let mut out = Layer::new(into);
    if source_is_file {
        let target = if dest.ends_with('/') {
            dest_path.join(prefix.file_name().unwrap_or_default())
        } else {
            dest_path
        };
        out.parents(&target);
        for member in members.iter().filter(|m| m.path == prefix) {
            out.member(&target, member, (uid, gid), mode);
        }
    } else {
        let under: Vec<&Member> = members
            .iter()
            .filter(|m| m.path.starts_with(&prefix) && m.path != prefix)
            .collect();
        if under.is_empty() {
            return Err(fail(format!(
                "nothing in the upload matches {:?}",
                prefix.display()
            )));
        }
        out.parents(&dest_path);
        out.dir(&dest_path, mode.unwrap_or(0o755), (uid, gid));
        for member in under {
            let rest = member.path.strip_prefix(&prefix).unwrap_or(&member.path);
            out.member(&dest_path.join(rest), member, (uid, gid), mode);
        }
    }
    Ok(out.finish())
}

/// `folder/*` → `folder`, `app` → `app`, `**/*.py` → `` (the whole context).
fn glob_base(source: &str) -> PathBuf {
    Path::new(source.trim_start_matches("./"))
        .components()
        .take_while(|c| {
            !c.as_os_str()
                .to_string_lossy()
                .contains(['*', '?', '[', '{'])
        })
        .collect()
}

/// `path` with `.` and `..` resolved lexically (never above `/`), made relative to `/`.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

fn owner_ids(owner: &str, into: &CopyInto<'_>) -> Result<(u32, u32), String> {
    let (user, group) = owner
        .split_once(':')
        .map_or((owner, None), |(u, g)| (u, Some(g)));
    let found =
        find_user(into.layers, user).ok_or_else(|| format!("no user '{user}' in the image"))?;
    let gid = match group {
        Some(group) => find_group(into.layers, group)
            .ok_or_else(|| format!("no group '{group}' in the image"))?,
        None => found.gid,
    };
    Ok((found.uid, gid))
}

#[derive(Debug)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(PathBuf),
}

#[derive(Debug)]
struct Member {
    path: PathBuf,
    mode: u32,
    kind: Kind,
}

/// The upload's files, dirs and symlinks (others are left out), names made relative.
fn read_members(archive: &Path) -> std::io::Result<Vec<Member>> {
    let mut file = std::fs::File::open(archive)?;
    let mut magic = [0_u8; 2];
    let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive)?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Archive::new(reader);
    let mut members = Vec::new();
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = normalize(&entry.path()?);
        if path.as_os_str().is_empty() {
            continue;
        }
        let mode = entry.header().mode()? & 0o7777;
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink(
                entry
                    .link_name()?
                    .map(std::borrow::Cow::into_owned)
                    .unwrap_or_default(),
            ),
            kind if kind.is_file() => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes)?;
                Kind::File(bytes)
            }
            _ => continue,
        };
        members.push(Member { path, mode, kind });
    }
    Ok(members)
}

/// The layer's tar, parents first.
struct Layer<'a> {
    tar: tar::Builder<Vec<u8>>,
    into: &'a CopyInto<'a>,
    written: std::collections::HashSet<PathBuf>,
}

impl<'a> Layer<'a> {
    fn new(into: &'a CopyInto<'a>) -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
            into,
            written: std::collections::HashSet::new(),
        }
    }

    /// Every ancestor of `path`: as the image has it, or a new `root` 0755 directory.
    fn parents(&mut self, path: &Path) {
        let ancestors: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|a| !a.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .collect();
        for dir in ancestors.into_iter().rev() {
            let (mode, uid, gid) =
                attributes(self.into.layers, self.into.ids, &dir.to_string_lossy())
                    .unwrap_or((0o755, 0, 0));
            self.dir(&dir, mode, (uid, gid));
        }
    }

    fn dir(&mut self, path: &Path, mode: u32, owner: (u32, u32)) {
        self.append(path, mode, owner, tar::EntryType::Directory, &[], None);
    }

    fn member(&mut self, path: &Path, member: &Member, owner: (u32, u32), mode: Option<u32>) {
        let mode = mode.unwrap_or(member.mode);
        match &member.kind {
            Kind::Dir => self.dir(path, mode, owner),
            Kind::File(bytes) => {
                self.append(path, mode, owner, tar::EntryType::Regular, bytes, None);
            }
            Kind::Symlink(target) => {
                self.append(
                    path,
                    0o777,
                    owner,
                    tar::EntryType::Symlink,
                    &[],
                    Some(target),
                );
            }
        }
    }

    fn append(
        &mut self,
        path: &Path,
        mode: u32,
        (uid, gid): (u32, u32),
        kind: tar::EntryType,
        bytes: &[u8],
        link: Option<&Path>,
    ) {
        // A directory named twice (a parent and a member) is written once.
        if kind == tar::EntryType::Directory && !self.written.insert(path.to_path_buf()) {
            return;
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(gid));
        header.set_size(bytes.len() as u64);
        header.set_mtime(0);
        let result = match link {
            Some(target) => self.tar.append_link(&mut header, path, target),
            None => self.tar.append_data(&mut header, path, bytes),
        };
        // Writing to a Vec fails only for a name tar cannot hold; such a member is left out.
        if let Err(error) = result {
            tracing::warn!(path = %path.display(), %error, "COPY: a member was left out");
        }
    }

    fn finish(self) -> Vec<u8> {
        self.tar.into_inner().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glob_is_cut_off_the_source() {
        assert_eq!(glob_base("folder/*"), Path::new("folder"));
        assert_eq!(glob_base("./app"), Path::new("app"));
        assert_eq!(glob_base("**/*.py"), Path::new(""));
        assert_eq!(glob_base("a/b/c?.txt"), Path::new("a/b"));
    }

    #[test]
    fn paths_never_climb_above_the_root() {
        assert_eq!(normalize(Path::new("/app/../../etc/x")), Path::new("etc/x"));
        assert_eq!(
            normalize(Path::new("/home/user/./f")),
            Path::new("home/user/f")
        );
    }
}
