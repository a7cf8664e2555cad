//! Unpacking real layer archives into a real store as root: owners shifted, whiteouts that a
//! real overlay mount honours, both compressions, and hostile archives (escapes through `..`,
//! symbolic links and hard links, too many entries, wrong digests, garbage), each refused with
//! nothing left behind. Needs root (ownership, device nodes, `trusted.*` xattrs, mounts).

mod common;

#[cfg(test)]
mod tests {
    use super::common::{SHIFT, gzip};
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::Path;

    use firkin_image::{Digest, Expected, LayerStore, UnpackError, UnpackOptions};

    /// One archive entry, written byte for byte as given (no path checks: the point).
    enum Entry<'a> {
        File(&'a str, &'a [u8], u32),
        Owned(&'a str, u32, u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Char(&'a str),
        Fifo(&'a str),
        Xattr(&'a str, &'a str),
    }

    fn header(kind: tar::EntryType, path: &str, size: u64, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header
    }

    fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let (mut header, data): (tar::Header, Vec<u8>) = match entry {
                Entry::File(path, data, mode) => (
                    header(tar::EntryType::Regular, path, data.len() as u64, *mode),
                    data.to_vec(),
                ),
                Entry::Owned(path, uid, gid) => {
                    let mut h = header(tar::EntryType::Regular, path, 0, 0o644);
                    h.set_uid((*uid).into());
                    h.set_gid((*gid).into());
                    (h, vec![])
                }
                Entry::Dir(path) => (header(tar::EntryType::Directory, path, 0, 0o755), vec![]),
                Entry::Symlink(path, target) | Entry::HardLink(path, target) => {
                    let kind = if matches!(entry, Entry::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    let mut h = header(kind, path, 0, 0o777);
                    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
                    (h, vec![])
                }
                Entry::Char(path) => (header(tar::EntryType::Char, path, 0, 0o666), vec![]),
                Entry::Fifo(path) => (header(tar::EntryType::Fifo, path, 0, 0o640), vec![]),
                Entry::Xattr(key, value) => {
                    let record = pax_record(&format!("SCHILY.xattr.{key}"), value);
                    (
                        header(tar::EntryType::XHeader, "pax", record.len() as u64, 0o644),
                        record,
                    )
                }
            };
            header.set_cksum();
            builder.append(&header, data.as_slice()).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// `<length> <key>=<value>\n`, the length counting itself.
    fn pax_record(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut length = body.len() + 1;
        while length.to_string().len() + body.len() != length {
            length += 1;
        }
        format!("{length}{body}").into_bytes()
    }

    fn zstd(bytes: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(bytes, 3).unwrap()
    }

    /// A store in a temporary directory, or `None` without root.
    fn store(test: &str) -> Option<(tempfile::TempDir, LayerStore)> {
        if !firkin_test_support::root_or_skip(test) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = LayerStore::open(dir.path().join("store"), UnpackOptions::new(SHIFT)).unwrap();
        Some((dir, store))
    }

    /// Nothing of a failed unpack is left: no layer, nothing in `tmp/`.
    fn assert_nothing_left(dir: &Path) {
        for sub in ["store/layers/sha256", "store/tmp"] {
            let left: Vec<_> = std::fs::read_dir(dir.join(sub))
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "left in {sub}: {left:?}");
        }
    }

    #[test]
    fn a_layer_keeps_its_files_links_and_modes_with_owners_in_the_sandbox_range() {
        let Some((_dir, store)) = store("unpack test") else {
            return;
        };
        let tar = archive(&[
            Entry::Dir("./"),
            Entry::Dir("usr/bin"),
            // A PAX header applies to the entry after it.
            Entry::Xattr("user.origin", "firkin"),
            Entry::File("usr/bin/tool", b"#!/bin/sh\necho hi\n", 0o4755),
            Entry::Xattr("trusted.overlay.opaque", "y"),
            Entry::File("etc/os-release", b"ID=test\n", 0o644),
            Entry::File("etc/hidden", b"", 0o600),
            Entry::Symlink("bin", "usr/bin"),
            Entry::HardLink("usr/bin/tool2", "usr/bin/tool"),
            Entry::Owned("home/user/.profile", 1000, 1000),
            Entry::Owned("opt/odd", 200_000, 0),
            Entry::Char("dev/null"),
            Entry::Fifo("run/pipe"),
        ]);
        let layer = store
            .unpack(
                tar.as_slice(),
                Expected {
                    digest: Some(Digest::of(&tar)),
                    diff_id: Some(Digest::of(&tar)),
                },
            )
            .unwrap();
        let report = layer.report.clone().unwrap();
        assert_eq!(
            (
                report.entries,
                report.skipped_devices,
                report.ignored_xattrs,
                report.remapped_ids
            ),
            (11, 1, 1, 1)
        );
        assert_eq!(layer.path, store.layer_path(&Digest::of(&tar)));
        let root = &layer.path;

        let tool = std::fs::metadata(root.join("usr/bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755, "set-uid kept");
        assert_eq!((tool.uid(), tool.gid()), (300_000, 300_000));
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::read(root.join("usr/bin/tool2")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            tool.ino(),
            std::fs::metadata(root.join("usr/bin/tool2")).unwrap().ino(),
            "a hard link"
        );
        assert_eq!(
            std::fs::read_link(root.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        let profile = std::fs::metadata(root.join("home/user/.profile")).unwrap();
        assert_eq!((profile.uid(), profile.gid()), (301_000, 301_000));
        assert_eq!(
            std::fs::metadata(root.join("opt/odd")).unwrap().uid(),
            300_000 + 65_534,
            "out of range: nobody"
        );
        assert_eq!(
            std::fs::metadata(root.join("usr")).unwrap().uid(),
            300_000,
            "made parents are the sandbox root's"
        );
        assert!(!root.join("dev/null").exists(), "device nodes are skipped");
        assert!(
            std::fs::metadata(root.join("run/pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(
            xattr(&root.join("usr/bin/tool"), "user.origin").as_deref(),
            Some(&b"firkin"[..])
        );
        assert_eq!(
            xattr(&root.join("etc/os-release"), "trusted.overlay.opaque"),
            None,
            "trusted.* not taken from archives"
        );
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut value = vec![0_u8; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut value).ok()?;
        value.truncate(n);
        Some(value)
    }

    #[test]
    fn gzip_and_zstd_layers_are_the_same_layer() {
        let Some((_dir, store)) = store("unpack test") else {
            return;
        };
        let tar = archive(&[Entry::File("hello", b"hello\n", 0o644)]);
        let gz = store
            .unpack(gzip(&tar).as_slice(), Expected::default())
            .unwrap();
        let report = gz.report.unwrap();
        assert_eq!(report.digest, Digest::of(&gzip(&tar)));
        assert_eq!(report.diff_id, Digest::of(&tar));
        // Already in the store: found by its diff_id, the stream never read.
        let again = store
            .unpack(
                Unreadable,
                Expected {
                    digest: None,
                    diff_id: Some(Digest::of(&tar)),
                },
            )
            .unwrap();
        assert_eq!((again.path, again.report), (gz.path.clone(), None));
        // The same tar in zstd unpacks to the same layer (a race-free rename onto it).
        let zst = store
            .unpack(zstd(&tar).as_slice(), Expected::default())
            .unwrap();
        assert_eq!(zst.path, gz.path);
        assert_eq!(std::fs::read(zst.path.join("hello")).unwrap(), b"hello\n");
    }

    struct Unreadable;

    impl Read for Unreadable {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("a stored layer was read again");
        }
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers_under_a_real_overlay() {
        let Some((dir, store)) = store("unpack test") else {
            return;
        };
        let lower = store
            .unpack(
                archive(&[
                    Entry::File("etc/motd", b"old\n", 0o644),
                    Entry::File("etc/keep", b"keep\n", 0o644),
                    Entry::File("var/cache/a", b"a\n", 0o644),
                ])
                .as_slice(),
                Expected::default(),
            )
            .unwrap();
        let upper = store
            .unpack(
                archive(&[
                    Entry::File("etc/.wh.motd", b"", 0o644),
                    Entry::Dir("var/cache"),
                    Entry::File("var/cache/.wh..wh..opq", b"", 0o644),
                    Entry::File("var/cache/b", b"b\n", 0o644),
                ])
                .as_slice(),
                Expected::default(),
            )
            .unwrap();
        let whiteout = std::fs::symlink_metadata(upper.path.join("etc/motd")).unwrap();
        assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
        assert_eq!(
            xattr(&upper.path.join("var/cache"), "user.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );

        let merged = dir.path().join("merged");
        std::fs::create_dir(&merged).unwrap();
        let options = std::ffi::CString::new(format!(
            "lowerdir={}:{}",
            upper.path.display(),
            lower.path.display()
        ))
        .unwrap();
        rustix::mount::mount(
            "overlay",
            &merged,
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            options.as_c_str(),
        )
        .unwrap();
        let seen = |path: &str| merged.join(path).exists();
        let (motd, keep, a, b) = (
            seen("etc/motd"),
            seen("etc/keep"),
            seen("var/cache/a"),
            seen("var/cache/b"),
        );
        rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH).unwrap();
        assert_eq!(
            (motd, keep, a, b),
            (false, true, false, true),
            "(motd, keep, cache/a, cache/b) in the merged view"
        );
    }

    #[test]
    fn entries_that_would_leave_the_layer_are_refused_and_leave_nothing() {
        let Some((dir, store)) = store("unpack test") else {
            return;
        };
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let outside_text = outside.display().to_string();
        let attacks: Vec<(&str, Vec<Entry<'_>>)> = vec![
            (
                "a parent component",
                vec![Entry::File("../evil", b"x", 0o644)],
            ),
            (
                "a parent component deeper down",
                vec![Entry::Dir("a"), Entry::File("a/../../evil", b"x", 0o644)],
            ),
            (
                "a symlink to outside, then a file through it",
                vec![
                    Entry::Symlink("a", &outside_text),
                    Entry::File("a/evil", b"x", 0o644),
                ],
            ),
            (
                "a symlink to `..`, then a file through it",
                vec![
                    Entry::Symlink("up", ".."),
                    Entry::File("up/evil", b"x", 0o644),
                ],
            ),
            (
                "a symlink to a directory of the layer, then a file through it",
                vec![
                    Entry::Dir("real"),
                    Entry::Symlink("alias", "real"),
                    Entry::File("alias/evil", b"x", 0o644),
                ],
            ),
            (
                "a hard link to outside",
                vec![Entry::HardLink("evil", "../../../etc/passwd")],
            ),
            (
                "a hard link through a symlink",
                vec![
                    Entry::Symlink("etc", "/etc"),
                    Entry::HardLink("evil", "etc/passwd"),
                ],
            ),
            (
                "a hard link to nothing",
                vec![Entry::HardLink("evil", "missing")],
            ),
            (
                "a whiteout through a symlink",
                vec![
                    Entry::Symlink("a", &outside_text),
                    Entry::File("a/.wh.victim", b"", 0o644),
                ],
            ),
            (
                "a file over a directory",
                vec![Entry::Dir("d"), Entry::File("d", b"x", 0o644)],
            ),
        ];
        for (attack, entries) in attacks {
            let error = store
                .unpack(archive(&entries).as_slice(), Expected::default())
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    UnpackError::BadPath { .. } | UnpackError::Refused { .. }
                ),
                "{attack}: {error}"
            );
            assert_nothing_left(dir.path());
            let escaped: Vec<_> = std::fs::read_dir(&outside)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(escaped.is_empty(), "{attack} wrote {escaped:?}");
            assert!(
                !dir.path().join("evil").exists() && !dir.path().join("store/evil").exists(),
                "{attack}"
            );
        }
    }

    #[test]
    fn too_many_entries_wrong_digests_and_garbage_change_nothing() {
        let Some((dir, _)) = store("unpack test") else {
            return;
        };
        let mut options = UnpackOptions::new(SHIFT);
        options.max_entries = 10;
        let store = LayerStore::open(dir.path().join("store"), options).unwrap();
        let names: Vec<String> = (0..11).map(|i| format!("f{i}")).collect();
        let many: Vec<Entry<'_>> = names
            .iter()
            .map(|name| Entry::File(name, b"", 0o644))
            .collect();
        let error = store
            .unpack(archive(&many).as_slice(), Expected::default())
            .unwrap_err();
        assert!(
            matches!(error, UnpackError::TooManyEntries { limit: 10 }),
            "{error}"
        );
        assert_nothing_left(dir.path());

        let tar = archive(&[Entry::File("a", b"a", 0o644)]);
        let wrong = Digest::of(b"something else");
        for expected in [
            Expected {
                digest: Some(wrong),
                diff_id: None,
            },
            Expected {
                digest: None,
                diff_id: Some(wrong),
            },
        ] {
            let error = store.unpack(gzip(&tar).as_slice(), expected).unwrap_err();
            assert!(
                matches!(error, UnpackError::DigestMismatch { .. }),
                "{error}"
            );
            assert_nothing_left(dir.path());
        }

        let mut cut = gzip(&tar);
        cut.truncate(cut.len() / 2);
        let garbage: Vec<u8> = (0..4096_u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for (what, bytes) in [("truncated gzip", cut), ("garbage", garbage)] {
            let error = store
                .unpack(bytes.as_slice(), Expected::default())
                .unwrap_err();
            assert!(matches!(error, UnpackError::Archive(_)), "{what}: {error}");
            assert_nothing_left(dir.path());
        }
    }

    #[test]
    fn opening_the_store_removes_what_a_crashed_unpack_left() {
        let Some((dir, store)) = store("unpack test") else {
            return;
        };
        drop(store);
        let half = dir.path().join("store/tmp/12345-0/usr");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("partial"), b"x").unwrap();
        LayerStore::open(dir.path().join("store"), UnpackOptions::new(SHIFT)).unwrap();
        assert_nothing_left(dir.path());
    }

    #[test]
    fn a_prune_removes_the_layers_no_template_keeps() {
        let Some((dir, store)) = store("unpack test") else {
            return;
        };
        let kept = store
            .unpack(
                archive(&[Entry::File("kept", b"k", 0o644)]).as_slice(),
                Expected::default(),
            )
            .unwrap();
        let dropped = store
            .unpack(
                archive(&[Entry::File("dropped", b"d", 0o644)]).as_slice(),
                Expected::default(),
            )
            .unwrap();
        let removed = store.prune(&[kept.diff_id].into_iter().collect()).unwrap();
        assert_eq!(removed, [dropped.diff_id]);
        assert!(store.get(&dropped.diff_id).is_none());
        assert!(kept.path.join("kept").is_file());
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0
        );
        assert!(
            store
                .prune(&[kept.diff_id].into_iter().collect())
                .unwrap()
                .is_empty()
        );
    }
}
