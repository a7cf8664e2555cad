//! Importing images from `docker save` archives the tests write themselves: layers in the
//! manifest's order though the archive holds them in another (and `manifest.json` last, as
//! Docker writes it), a repeated layer stored as a link, and broken archives refused with
//! nothing left behind. Needs root (unpacking shifts ownership).

mod common;

#[cfg(test)]
mod tests {
    use super::common::{layers_in, store, tar_of};
    use std::path::Path;

    use firkin_image::{Digest, ImportError, import_docker_archive};
    use serde_json::json;

    /// A `docker save` archive at `path`: its members in the order given, plus symbolic links.
    fn write_archive(path: &Path, members: &[(&str, Vec<u8>)], links: &[(&str, &str)]) {
        let mut builder = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, bytes) in members {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, bytes.as_slice())
                .unwrap();
        }
        for (name, target) in links {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            builder.append_link(&mut header, name, target).unwrap();
        }
        builder.finish().unwrap();
    }

    struct Image {
        base: Vec<u8>,
        app: Vec<u8>,
        config: Vec<u8>,
    }

    fn image() -> Image {
        let base = tar_of(&[("etc/os-release", b"ID=test\n")]);
        let app = tar_of(&[("srv/app.py", b"print('hi')\n")]);
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Env": ["LANG=C.UTF-8"], "WorkingDir": "/srv", "Cmd": ["python3", "app.py"] },
            "rootfs": { "type": "layers", "diff_ids": [
                Digest::of(&base).to_string(), Digest::of(&app).to_string(), Digest::of(&base).to_string()
            ] },
        })
        .to_string()
        .into_bytes();
        Image { base, app, config }
    }

    fn manifest(layers: &[&str]) -> Vec<u8> {
        json!([{ "Config": "config.json", "RepoTags": ["app:1", "app:latest"], "Layers": layers }])
            .to_string()
            .into_bytes()
    }

    #[test]
    fn a_docker_save_archive_imports_its_layers_in_the_manifests_order() {
        if !firkin_test_support::root_or_skip("docker archive test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("image.tar");
        let image = image();
        write_archive(
            &archive,
            &[
                ("b2/layer.tar", image.app.clone()),
                ("./a1/layer.tar", image.base.clone()),
                ("config.json", image.config.clone()),
                (
                    "manifest.json",
                    manifest(&["a1/layer.tar", "b2/layer.tar", "c3/layer.tar"]),
                ),
            ],
            &[("c3/layer.tar", "../a1/layer.tar")],
        );
        let store = store(dir.path());
        let imported = import_docker_archive(&archive, Some("app:latest"), &store).unwrap();
        let diff_ids: Vec<Digest> = imported.layers.iter().map(|l| l.diff_id).collect();
        assert_eq!(
            diff_ids,
            [
                Digest::of(&image.base),
                Digest::of(&image.app),
                Digest::of(&image.base)
            ]
        );
        assert!(imported.layers[1].path.join("srv/app.py").is_file());
        assert_eq!(imported.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(imported.config.cmd, ["python3", "app.py"]);
        assert_eq!(layers_in(dir.path()), 2, "a repeated layer is stored once");
    }

    #[test]
    fn broken_archives_are_refused_and_leave_no_layer() {
        if !firkin_test_support::root_or_skip("docker archive test") {
            return;
        }
        let image = image();
        let layers = ["a1/layer.tar", "b2/layer.tar", "a1/layer.tar"];
        let whole = |extra: Vec<(&'static str, Vec<u8>)>| {
            let mut members = vec![
                ("a1/layer.tar", image.base.clone()),
                ("b2/layer.tar", image.app.clone()),
                ("config.json", image.config.clone()),
            ];
            members.extend(extra);
            members
        };
        // (case, the archive's members, the tag asked for, what the error says)
        type Case<'a> = (&'a str, Vec<(&'a str, Vec<u8>)>, Option<&'a str>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                "no manifest",
                whole(vec![]),
                None,
                "not a docker save archive",
            ),
            (
                "an unknown tag",
                whole(vec![("manifest.json", manifest(&layers))]),
                Some("app:2"),
                "app:1, app:latest",
            ),
            (
                "a missing layer",
                vec![
                    ("a1/layer.tar", image.base.clone()),
                    ("config.json", image.config.clone()),
                    ("manifest.json", manifest(&layers)),
                ],
                None,
                "the layer b2/layer.tar is not in the archive",
            ),
            (
                "layers swapped",
                whole(vec![(
                    "manifest.json",
                    manifest(&["b2/layer.tar", "a1/layer.tar", "a1/layer.tar"]),
                )]),
                None,
                "diff_id is",
            ),
            (
                "a manifest too large",
                whole(vec![("manifest.json", vec![b' '; (4 << 20) + 1])]),
                None,
                "more than",
            ),
            (
                "not JSON",
                whole(vec![("manifest.json", b"[{".to_vec())]),
                None,
                "manifest.json",
            ),
        ];
        for (case, members, tag, message) in cases {
            let dir = tempfile::tempdir().unwrap();
            let archive = dir.path().join("image.tar");
            write_archive(&archive, &members, &[]);
            let error = import_docker_archive(&archive, tag, &store(dir.path())).unwrap_err();
            assert!(error.to_string().contains(message), "{case}: {error}");
            if case == "layers swapped" {
                assert!(matches!(error, ImportError::Unpack(_)), "{case}: {error:?}");
            }
            assert_eq!(layers_in(dir.path()), 0, "{case}");
            assert_eq!(
                std::fs::read_dir(dir.path().join("store/tmp"))
                    .unwrap()
                    .count(),
                0,
                "{case}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.tar");
        std::fs::write(&garbage, vec![0x5a_u8; 10_000]).unwrap();
        let error = import_docker_archive(&garbage, None, &store(dir.path())).unwrap_err();
        assert!(error.to_string().contains("not a tar archive"), "{error}");
    }
}
