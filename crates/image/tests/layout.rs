//! Importing images from OCI image layout directories that the tests write themselves: the
//! layers land in the store in order with the config's env, workdir, user and command; a
//! multi-platform index gives this host's image; malformed layouts, tampered or oversized
//! blobs, wrong digests and wrong media types are refused, leaving no layer behind. Needs root
//! (unpacking shifts ownership).

mod common;

#[cfg(test)]
mod tests {
    use super::common::{gzip, layers_in, store, tar_of};
    use std::path::Path;

    use firkin_image::layout::host_architecture;
    use firkin_image::{Digest, ImportError, UnpackError, import_layout};
    use serde_json::{Value, json};

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// Writes `bytes` as a blob of the layout at `dir`; its descriptor.
    fn blob(dir: &Path, media_type: &str, bytes: &[u8]) -> Value {
        let digest = Digest::of(bytes);
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        json!({ "mediaType": media_type, "digest": digest.to_string(), "size": bytes.len() })
    }

    /// The parts of a two-layer image written into a layout, for tests to assemble or spoil.
    struct Parts {
        layers: [Vec<u8>; 2],
        layer_descriptors: [Value; 2],
        config: Value,
    }

    fn parts(dir: &Path) -> Parts {
        let base = tar_of(&[
            ("etc/os-release", b"ID=test\n"),
            ("usr/bin/tool", b"tool\n"),
        ]);
        let app = tar_of(&[("srv/app.py", b"print('hi')\n")]);
        let layer_descriptors = [
            blob(dir, LAYER_GZIP, &gzip(&base)),
            blob(
                dir,
                LAYER_ZSTD,
                &zstd::stream::encode_all(app.as_slice(), 3).unwrap(),
            ),
        ];
        let config = json!({
            "architecture": host_architecture(),
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
                "Entrypoint": ["/usr/bin/tini", "--"],
                "Cmd": ["python3", "app.py"],
            },
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&base).to_string(), Digest::of(&app).to_string()] },
        });
        Parts {
            layers: [base, app],
            layer_descriptors,
            config,
        }
    }

    fn manifest(dir: &Path, config: &Value, layers: &[Value]) -> Value {
        let config = blob(dir, CONFIG, config.to_string().as_bytes());
        let manifest = json!({ "schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers });
        blob(dir, MANIFEST, manifest.to_string().as_bytes())
    }

    fn write_index(dir: &Path, manifests: &[Value]) {
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests });
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    }

    fn named(mut descriptor: Value, name: &str) -> Value {
        descriptor["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
        descriptor
    }

    #[test]
    fn an_image_layout_imports_its_layers_in_order_with_its_config() {
        if !firkin_test_support::root_or_skip("layout test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let parts = parts(&layout);
        let manifest = manifest(&layout, &parts.config, &parts.layer_descriptors);
        write_index(
            &layout,
            &[
                named(manifest.clone(), "v1"),
                named(manifest.clone(), "latest"),
            ],
        );
        let store = store(dir.path());

        let image = import_layout(&layout, Some("v1"), &store).unwrap();
        assert_eq!(image.manifest.to_string(), manifest["digest"]);
        assert_eq!(
            image.config.env,
            ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"]
        );
        assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
        assert_eq!(image.config.user.as_deref(), Some("1000:1000"));
        assert_eq!(image.config.entrypoint, ["/usr/bin/tini", "--"]);
        assert_eq!(image.config.cmd, ["python3", "app.py"]);
        let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
        assert_eq!(
            diff_ids,
            [Digest::of(&parts.layers[0]), Digest::of(&parts.layers[1])],
            "bottom first"
        );
        assert!(image.layers[0].path.join("usr/bin/tool").is_file());
        assert!(image.layers[1].path.join("srv/app.py").is_file());

        // The same layers under another name: found in the store, not unpacked again.
        let again = import_layout(&layout, Some("latest"), &store).unwrap();
        assert!(again.layers.iter().all(|l| l.report.is_none()));
        assert_eq!(layers_in(dir.path()), 2);
    }

    #[test]
    fn a_multi_platform_index_gives_this_hosts_image_or_says_what_it_has() {
        if !firkin_test_support::root_or_skip("layout test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("layout");
        let parts = parts(&layout);
        let ours = manifest(&layout, &parts.config, &parts.layer_descriptors);
        let other_arch = if host_architecture() == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        // The other platform's manifest is never read: its blob does not even exist.
        let theirs = json!({ "mediaType": MANIFEST, "digest": Digest::of(b"elsewhere").to_string(), "size": 9,
            "platform": { "os": "linux", "architecture": other_arch } });
        let mut ours_with_platform = ours.clone();
        ours_with_platform["platform"] =
            json!({ "os": "linux", "architecture": host_architecture() });
        let multi = blob(
            &layout,
            INDEX,
            json!({ "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [theirs.clone(), ours_with_platform] })
            .to_string()
            .as_bytes(),
        );
        write_index(&layout, &[multi]);
        let image = import_layout(&layout, None, &store(dir.path())).unwrap();
        assert_eq!(image.manifest.to_string(), ours["digest"]);

        let only_theirs = blob(
            &layout,
            INDEX,
            json!({ "schemaVersion": 2, "mediaType": INDEX,
            "manifests": [theirs] })
            .to_string()
            .as_bytes(),
        );
        write_index(&layout, &[only_theirs]);
        let error = import_layout(&layout, None, &store(dir.path())).unwrap_err();
        assert!(matches!(error, ImportError::NotFound { .. }), "{error}");
        assert!(
            error.to_string().contains(&format!("linux/{other_arch}")),
            "{error}"
        );
    }

    #[test]
    fn bad_layouts_are_refused_and_leave_no_layer() {
        if !firkin_test_support::root_or_skip("layout test") {
            return;
        }
        type Spoil = fn(&Path, Parts) -> Option<&'static str>;
        let cases: Vec<(&str, Spoil, &str)> = vec![
            (
                "not a layout",
                |dir, _| {
                    std::fs::remove_file(dir.join("oci-layout")).unwrap();
                    None
                },
                "not an OCI image layout",
            ),
            (
                "an unknown name",
                |_, _| Some("v2"),
                "no image named \"v2\"",
            ),
            (
                "a tampered manifest",
                |dir, _| {
                    let index: Value =
                        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap())
                            .unwrap();
                    let digest: Digest = index["manifests"][0]["digest"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let path = dir.join("blobs/sha256").join(digest.hex());
                    let mut bytes = std::fs::read(&path).unwrap();
                    bytes[0] = b' ';
                    std::fs::write(path, bytes).unwrap();
                    None
                },
                "hashes to",
            ),
            (
                "a manifest too large",
                |dir, _| {
                    let index: Value =
                        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap())
                            .unwrap();
                    let mut descriptor = index["manifests"][0].clone();
                    descriptor["size"] = json!(5 << 20);
                    write_index(dir, &[named(descriptor, "v1")]);
                    None
                },
                "more than",
            ),
            (
                "fewer diff_ids than layers",
                |dir, mut parts| {
                    parts.config["rootfs"]["diff_ids"]
                        .as_array_mut()
                        .unwrap()
                        .pop();
                    let manifest = manifest(dir, &parts.config, &parts.layer_descriptors);
                    write_index(dir, &[named(manifest, "v1")]);
                    None
                },
                "2 layers but the config 1 diff_ids",
            ),
            (
                "a wrong diff_id",
                |dir, mut parts| {
                    parts.config["rootfs"]["diff_ids"][1] =
                        json!(Digest::of(b"not this").to_string());
                    let manifest = manifest(dir, &parts.config, &parts.layer_descriptors);
                    write_index(dir, &[named(manifest, "v1")]);
                    None
                },
                "diff_id is",
            ),
            (
                "a layer that is no layer",
                |dir, parts| {
                    let mut layers = parts.layer_descriptors.clone();
                    layers[1]["mediaType"] = json!(CONFIG);
                    let manifest = manifest(dir, &parts.config, &layers);
                    write_index(dir, &[named(manifest, "v1")]);
                    None
                },
                "not a layer",
            ),
            (
                "a missing layer blob",
                |dir, parts| {
                    let digest: Digest = parts.layer_descriptors[0]["digest"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    std::fs::remove_file(dir.join("blobs/sha256").join(digest.hex())).unwrap();
                    None
                },
                "No such file",
            ),
        ];
        for (case, spoil, message) in cases {
            let dir = tempfile::tempdir().unwrap();
            let layout = dir.path().join("layout");
            let parts = parts(&layout);
            let manifest = manifest(&layout, &parts.config, &parts.layer_descriptors);
            write_index(&layout, &[named(manifest, "v1")]);
            let reference = spoil(&layout, parts).unwrap_or("v1");
            let store = store(dir.path());
            let error = import_layout(&layout, Some(reference), &store).unwrap_err();
            assert!(error.to_string().contains(message), "{case}: {error}");
            if case == "a wrong diff_id" {
                assert!(
                    matches!(
                        error,
                        ImportError::Unpack(UnpackError::DigestMismatch { .. })
                    ),
                    "{case}: {error:?}"
                );
                // The first layer was whole and right: it stays, shared; the bad one is gone.
                assert_eq!(layers_in(dir.path()), 1, "{case}");
            } else {
                assert_eq!(layers_in(dir.path()), 0, "{case}");
            }
            assert_eq!(
                std::fs::read_dir(dir.path().join("store/tmp"))
                    .unwrap()
                    .count(),
                0,
                "{case}"
            );
        }
    }
}
