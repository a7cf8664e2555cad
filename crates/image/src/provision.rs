//! The system layer every template from an image gets on top of the image's own layers, as
//! E2B's builder provisions one: the user `user` (uid 1000 when free) with its home, in the
//! `sudo` group and with a passwordless sudoers entry where the image has sudo, and the mount
//! points a sandbox needs. envd itself is not in it: the driver binds the host's static
//! `firkin-envd` into every sandbox.
//!
//! The layer is a tar made here from the files the image has (its `/etc/passwd`, `/etc/group`,
//! `/etc/shadow`, read through the layers as overlayfs would show them), unpacked into the
//! layer store like any other: content-addressed, verified, shared by templates whose images
//! agree on those files.

use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use crate::IdShift;

/// The user every template has.
pub const USER: &str = "user";
/// The uid (and gid) `user` gets when the image does not use it already.
pub const USER_ID: u32 = 1000;

/// The system layer for an image whose layers are `layers` (directories, bottom first), as
/// an uncompressed tar.
#[must_use]
pub fn system_layer(layers: &[PathBuf], ids: IdShift) -> Vec<u8> {
    let image = ImageView { layers, ids };
    let mut tar = Tar::default();
    for (dir, mode) in [
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("home", 0o755),
        ("etc", 0o755),
    ] {
        if !image.exists(dir) {
            tar.dir(dir, mode, 0, 0);
        }
    }
    let passwd = image.text("etc/passwd");
    if has_entry(&passwd, USER) {
        return tar.finish();
    }
    let group = image.text("etc/group");
    let uid = free_id(&passwd, 2);
    let gid = if id_taken(&group, 2, uid) {
        free_id(&group, 2)
    } else {
        uid
    };
    let shell = if image.exists("bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    tar.file(
        "etc/passwd",
        0o644,
        append_line(
            &passwd,
            &format!("{USER}:x:{uid}:{gid}::/home/{USER}:{shell}"),
        ),
    );
    tar.file(
        "etc/group",
        0o644,
        append_line(&join_sudo(&group), &format!("{USER}:x:{gid}:")),
    );
    if let Some(shadow) = image.read("etc/shadow") {
        let shadow = String::from_utf8_lossy(&shadow).into_owned();
        let line = format!("{USER}:*::0:99999:7:::");
        // /etc/shadow keeps its owner and mode (root, often group shadow, 0640).
        let (mode, gid) = image.mode_and_gid("etc/shadow").unwrap_or((0o640, 0));
        tar.entry(
            "etc/shadow",
            mode,
            0,
            gid,
            Some(append_line(&shadow, &line)),
        );
    }
    if image.exists("etc/sudoers.d") {
        tar.file_owned(
            "etc/sudoers.d/firkin-user",
            0o440,
            (0, 0),
            format!("{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n"),
        );
    }
    if !image.exists("home/user") {
        tar.dir(&format!("home/{USER}"), 0o750, uid, gid);
    }
    tar.finish()
}

/// A user of an image, as its `/etc/passwd` has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageUser {
    /// uid inside the sandbox.
    pub uid: u32,
    /// Primary gid inside the sandbox.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// The user `name` (or numeric uid) of the image whose layers are `layers` (bottom first).
#[must_use]
pub fn find_user(layers: &[PathBuf], name: &str) -> Option<ImageUser> {
    let passwd = ImageView {
        layers,
        ids: NO_SHIFT,
    }
    .text("etc/passwd");
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let matches = fields.first() == Some(&name) || fields.get(2) == Some(&name);
        (matches && fields.len() >= 6).then(|| ImageUser {
            uid: fields[2].parse().unwrap_or(0),
            gid: fields[3].parse().unwrap_or(0),
            home: fields[5].to_owned(),
        })
    })
}

/// The gid of the group `name` (or a numeric gid) of the image whose layers are `layers`.
#[must_use]
pub fn find_group(layers: &[PathBuf], name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let group = ImageView {
        layers,
        ids: NO_SHIFT,
    }
    .text("etc/group");
    group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name))
            .then(|| fields.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Mode bits, uid and gid (inside the sandbox) of `relative` in the image, if it shows it.
#[must_use]
pub fn attributes(layers: &[PathBuf], ids: IdShift, relative: &str) -> Option<(u32, u32, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(ImageView { layers, ids }.find(relative)?).ok()?;
    Some((
        meta.mode() & 0o7777,
        crate::export::unshift(ids, meta.uid()),
        crate::export::unshift(ids, meta.gid()),
    ))
}

/// Reading files needs no id shift.
const NO_SHIFT: IdShift = IdShift {
    host_start: 0,
    count: u32::MAX,
};

/// The image as overlayfs shows its layers: the topmost layer that has a path, or deletes it
/// (a whiteout, or an opaque directory above it), decides.
struct ImageView<'a> {
    layers: &'a [PathBuf],
    /// How the store shifted the layers' ids.
    ids: IdShift,
}

impl ImageView<'_> {
    /// The layer that shows `relative`, if one does.
    fn find(&self, relative: &str) -> Option<PathBuf> {
        for layer in self.layers.iter().rev() {
            let path = layer.join(relative);
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                let whiteout = meta.file_type().is_char_device() && meta_rdev(&meta) == 0;
                return (!whiteout).then_some(path);
            }
            let hidden_below = Path::new(relative)
                .ancestors()
                .skip(1)
                .filter(|parent| !parent.as_os_str().is_empty())
                .any(|parent| crate::export::is_opaque(&layer.join(parent)));
            if hidden_below {
                return None;
            }
        }
        None
    }

    fn exists(&self, relative: &str) -> bool {
        self.find(relative).is_some()
    }

    fn read(&self, relative: &str) -> Option<Vec<u8>> {
        std::fs::read(self.find(relative)?).ok()
    }

    fn text(&self, relative: &str) -> String {
        self.read(relative)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Mode bits and group inside the sandbox (the store shifted them on the host).
    fn mode_and_gid(&self, relative: &str) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(self.find(relative)?).ok()?;
        Some((
            meta.mode() & 0o7777,
            crate::export::unshift(self.ids, meta.gid()),
        ))
    }
}

fn meta_rdev(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::rdev(meta)
}

/// Whether the `name:`-keyed file `text` (passwd, group) has `name`.
fn has_entry(text: &str, name: &str) -> bool {
    text.lines()
        .any(|line| line.split(':').next() == Some(name))
}

fn id_taken(text: &str, field: usize, id: u32) -> bool {
    text.lines()
        .filter_map(|line| line.split(':').nth(field)?.parse::<u32>().ok())
        .any(|taken| taken == id)
}

/// [`USER_ID`] when no line of `text` has it in `field`, else the next free id above it.
fn free_id(text: &str, field: usize) -> u32 {
    (USER_ID..60_000)
        .find(|id| !id_taken(text, field, *id))
        .unwrap_or(USER_ID)
}

fn append_line(text: &str, line: &str) -> String {
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    out
}

/// `group` with `user` added to the `sudo` and `wheel` groups' members where they exist.
fn join_sudo(group: &str) -> String {
    let mut out = String::with_capacity(group.len() + 16);
    for line in group.lines() {
        let name = line.split(':').next().unwrap_or_default();
        if name == "sudo" || name == "wheel" {
            let members = line.rsplit(':').next().unwrap_or_default();
            let separator = if members.is_empty() { "" } else { "," };
            out.push_str(&format!("{line}{separator}{USER}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A deterministic tar: fixed times, numeric owners, no user or group names.
#[derive(Default)]
struct Tar {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl Tar {
    fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) {
        self.entry(path, mode, uid, gid, None);
    }

    fn file(&mut self, path: &str, mode: u32, text: String) {
        self.entry(path, mode, 0, 0, Some(text));
    }

    fn file_owned(&mut self, path: &str, mode: u32, (uid, gid): (u32, u32), text: String) {
        self.entry(path, mode, uid, gid, Some(text));
    }

    /// A directory when `content` is `None`, else a regular file.
    fn entry(&mut self, path: &str, mode: u32, uid: u32, gid: u32, content: Option<String>) {
        let builder = self
            .builder
            .get_or_insert_with(|| tar::Builder::new(Vec::new()));
        let mut header = tar::Header::new_ustar();
        header.set_mode(mode);
        header.set_uid(u64::from(uid));
        header.set_gid(u64::from(gid));
        header.set_mtime(0);
        header.set_entry_type(if content.is_some() {
            tar::EntryType::Regular
        } else {
            tar::EntryType::Directory
        });
        let bytes = content.unwrap_or_default();
        header.set_size(bytes.len() as u64);
        // Appending to a Vec cannot fail; a path the tar format refuses is a bug here.
        builder
            .append_data(&mut header, path, bytes.as_bytes())
            .expect("a system layer entry");
    }

    fn finish(self) -> Vec<u8> {
        self.builder
            .unwrap_or_else(|| tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_takes_1000_or_the_next_free_id() {
        assert_eq!(free_id("root:x:0:0::/root:/bin/sh\n", 2), 1000);
        assert_eq!(
            free_id(
                "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/bash\n",
                2
            ),
            1001
        );
    }

    #[test]
    fn user_joins_sudo_and_wheel() {
        assert_eq!(
            join_sudo("root:x:0:\nsudo:x:27:\nwheel:x:10:root\n"),
            "root:x:0:\nsudo:x:27:user\nwheel:x:10:root,user\n"
        );
    }

    /// The entries of `tar`: path → (mode, uid, gid, content; `None` for a directory).
    fn entries(tar: &[u8]) -> std::collections::BTreeMap<String, (u32, u64, u64, Option<String>)> {
        use std::io::Read as _;
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut text = String::new();
                entry.read_to_string(&mut text).unwrap();
                let content = header.entry_type().is_file().then_some(text);
                (
                    entry.path().unwrap().display().to_string(),
                    (
                        header.mode().unwrap(),
                        header.uid().unwrap(),
                        header.gid().unwrap(),
                        content,
                    ),
                )
            })
            .collect()
    }

    #[test]
    fn the_system_layer_adds_user_to_what_the_image_has_as_the_top_layer_shows_it() {
        let dir = tempfile::tempdir().unwrap();
        let (bottom, top) = (dir.path().join("bottom"), dir.path().join("top"));
        for layer in [&bottom, &top] {
            std::fs::create_dir_all(layer.join("etc/sudoers.d")).unwrap();
        }
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        // The top layer's passwd hides the bottom one's: node has uid 1000.
        std::fs::write(
            top.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh",
        )
        .unwrap();
        std::fs::write(top.join("etc/group"), "root:x:0:\nsudo:x:27:\n").unwrap();
        std::fs::create_dir_all(top.join("bin")).unwrap();
        std::fs::write(top.join("bin/bash"), "").unwrap();

        let layer = entries(&system_layer(&[bottom, top], NO_SHIFT));
        assert_eq!(
            layer["etc/passwd"].3.as_deref(),
            Some(
                "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n\
                 user:x:1001:1001::/home/user:/bin/bash\n"
            ),
            "uid 1000 is node's; the gid follows the uid where it is free, as useradd's does"
        );
        assert_eq!(
            layer["etc/group"].3.as_deref(),
            Some("root:x:0:\nsudo:x:27:user\nuser:x:1001:\n")
        );
        assert_eq!(
            layer["etc/sudoers.d/firkin-user"],
            (
                0o440,
                0,
                0,
                Some("user ALL=(ALL:ALL) NOPASSWD: ALL\n".to_owned())
            )
        );
        assert_eq!(layer["home/user"], (0o750, 1001, 1001, None));
        assert_eq!(layer["tmp"], (0o1777, 0, 0, None));
        assert!(!layer.contains_key("etc/shadow"), "the image has none");
        assert!(!layer.contains_key("etc"), "the image has /etc");
    }

    #[test]
    fn an_image_that_has_user_gets_only_its_missing_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::create_dir_all(layer.join("proc")).unwrap();
        std::fs::write(
            layer.join("etc/passwd"),
            "user:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        let layer = entries(&system_layer(&[layer], NO_SHIFT));
        let paths: Vec<&str> = layer.keys().map(String::as_str).collect();
        assert_eq!(paths, ["dev", "home", "run", "sys", "tmp"]);
    }

    #[test]
    fn a_line_is_appended_after_a_missing_newline() {
        assert_eq!(append_line("a", "b"), "a\nb\n");
        assert_eq!(append_line("", "b"), "b\n");
    }
}
