//! `firkin template import|ls|rm|prune`, run as the built binary on a `docker save` archive
//! the test makes with `tar`: the template is listed ready with its tag and its layer owned by
//! the sandboxes' root; an import of an image the archive lacks fails with a `firkin:`
//! message and leaves a failed build; removing the template and pruning frees its layer.
//! Needs root (layers are owned by the sandboxes' id range).

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::{Command, Output};

    use serde_json::Value;

    fn firkin(state: &Path, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_firkin"))
            .args(args)
            .arg("--state-dir")
            .arg(state)
            .env_remove("FIRKIN_STATE_DIR")
            .output()
            .expect("run firkin")
    }

    fn json(output: &Output) -> Value {
        assert!(
            output.status.success(),
            "firkin failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// A `docker save` archive of one layer holding `hello.txt`; returns the layer's digest.
    fn docker_archive(dir: &Path) -> String {
        let files = dir.join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("hello.txt"), "hello\n").unwrap();
        let parts = dir.join("parts");
        std::fs::create_dir_all(parts.join("aa")).unwrap();
        let layer = parts.join("aa/layer.tar");
        let tar = |args: &[&str], cwd: &Path| {
            let status = Command::new("tar")
                .args(args)
                .current_dir(cwd)
                .status()
                .unwrap();
            assert!(status.success(), "tar {args:?}");
        };
        tar(&["-cf", layer.to_str().unwrap(), "."], &files);
        let digest = firkin_image::Digest::of(&std::fs::read(&layer).unwrap()).to_string();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Env": ["A=1"], "WorkingDir": "/srv", "Cmd": ["sh"] },
            "rootfs": { "type": "layers", "diff_ids": [digest] },
        });
        std::fs::write(parts.join("config.json"), config.to_string()).unwrap();
        let manifest = serde_json::json!([{ "Config": "config.json", "RepoTags": ["demo:1"], "Layers": ["aa/layer.tar"] }]);
        std::fs::write(parts.join("manifest.json"), manifest.to_string()).unwrap();
        tar(
            &[
                "-cf",
                dir.join("demo.tar").to_str().unwrap(),
                "aa",
                "config.json",
                "manifest.json",
            ],
            &parts,
        );
        digest
    }

    #[test]
    fn an_imported_template_is_listed_removed_and_its_layer_pruned() {
        if !firkin_test_support::root_or_skip("template cli test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let digest = docker_archive(dir.path());
        let archive = dir.path().join("demo.tar");
        let archive = archive.to_str().unwrap();

        let made = json(&firkin(
            &state,
            &[
                "--json", "template", "import", archive, "--name", "demo:v1", "--tag", "stable",
            ],
        ));
        assert_eq!(made["name"], "demo");
        let layers = made["layers"].as_array().unwrap().clone();
        assert_eq!(layers.len(), 2, "the image's layer and the system layer");
        assert_eq!(layers[0], digest);
        assert_eq!(made["workdir"], "/srv");
        let images = std::fs::metadata(state.join("images")).unwrap();
        assert_eq!(
            (images.mode() & 0o777, images.gid()),
            (0o710, 100_000),
            "the image store: only the sandboxes' root may pass through"
        );
        let db = std::fs::metadata(state.join("images/templates.db")).unwrap();
        assert_eq!(db.mode() & 0o777, 0o600);
        let layer = state
            .join("images/layers/sha256")
            .join(digest.trim_start_matches("sha256:"));
        assert_eq!(
            std::fs::metadata(layer.join("hello.txt")).unwrap().uid(),
            100_000,
            "the sandboxes' root"
        );

        let listed = json(&firkin(&state, &["--json", "template", "ls"]));
        assert_eq!(listed[0]["name"], "demo");
        assert_eq!(listed[0]["buildStatus"], "ready");
        assert_eq!(listed[0]["tags"], serde_json::json!(["stable", "v1"]));

        let tagged = json(&firkin(
            &state,
            &["--json", "template", "tag", "demo:v1", "prod"],
        ));
        assert_eq!(tagged["tags"], serde_json::json!(["prod"]));
        let listed = json(&firkin(&state, &["--json", "template", "ls"]));
        assert_eq!(
            listed[0]["tags"],
            serde_json::json!(["prod", "stable", "v1"])
        );
        json(&firkin(
            &state,
            &["--json", "template", "tag", "demo", "prod", "--remove"],
        ));
        let bad = firkin(&state, &["template", "tag", "demo:v1", "Not Valid!"]);
        assert!(!bad.status.success(), "a malformed tag is refused");

        let failed = firkin(
            &state,
            &[
                "template", "import", archive, "--name", "demo:v2", "--image", "nope:1",
            ],
        );
        assert!(!failed.status.success());
        let message = String::from_utf8_lossy(&failed.stderr);
        assert!(
            message.starts_with("firkin: import")
                && message.contains("no image tagged \"nope:1\"; it has: demo:1"),
            "{message}"
        );
        let listed = json(&firkin(&state, &["--json", "template", "ls"]));
        assert_eq!(
            listed[0]["buildStatus"], "error",
            "the failed build is recorded"
        );
        assert_eq!(
            listed[0]["tags"],
            serde_json::json!(["stable", "v1"]),
            "and takes no tag"
        );

        let pruned = json(&firkin(&state, &["--json", "template", "prune"]));
        assert_eq!(
            pruned["removedLayers"],
            serde_json::json!([]),
            "the layer is in use"
        );
        json(&firkin(&state, &["--json", "template", "rm", "demo"]));
        let pruned = json(&firkin(&state, &["--json", "template", "prune"]));
        let mut removed = pruned["removedLayers"].as_array().unwrap().clone();
        let mut expected = layers.clone();
        removed.sort_by_key(ToString::to_string);
        expected.sort_by_key(ToString::to_string);
        assert_eq!(removed, expected);
        assert!(!layer.exists());
        assert_eq!(
            json(&firkin(&state, &["--json", "template", "ls"])),
            serde_json::json!([])
        );
    }
}
