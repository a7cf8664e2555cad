//! A build and an upload under the daemon's disk floor are refused before anything is
//! written, with the guard's reason, and the build stays waiting (it may be started again
//! once there is room); first, the layers no template uses are pruned, and those a ready build
//! uses are kept. Needs root: the image store gives its directories to the sandboxes' group.

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use firkin_build::{BuildError, BuildStart, Builder};
    use firkin_image::catalog::BuildStatus;
    use firkin_image::{IdShift, PullOptions, Templates, UnpackOptions};
    use firkin_single_node::testing::FakeDriver;
    use firkin_single_node::{
        DiskPressureGuard, DiskProbe, DiskSpace, SingleNodeBackend, SingleNodeConfig,
    };

    /// A disk with `available_bytes` free.
    #[derive(Debug)]
    struct Disk(u64);

    impl DiskProbe for Disk {
        fn measure(&self, _path: &Path) -> firkin_single_node::Result<DiskSpace> {
            Ok(DiskSpace {
                available_bytes: self.0,
                available_inodes: 1 << 20,
            })
        }
    }

    #[tokio::test]
    async fn a_build_and_an_upload_under_the_disk_floor_are_refused_and_write_nothing() {
        if !firkin_test_support::root_or_skip("build disk floor test") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ids = IdShift {
            host_start: 100_000,
            count: 65_536,
        };
        let templates =
            Arc::new(Templates::open(&dir.path().join("images"), UnpackOptions::new(ids)).unwrap());
        let floor = 1 << 30;
        let backend = SingleNodeBackend::builder(
            SingleNodeConfig::new(dir.path()),
            Arc::new(FakeDriver::new()),
        )
        .disk_guard(DiskPressureGuard::with_probe(
            dir.path(),
            floor,
            0,
            Arc::new(Disk(floor - 1)),
        ))
        .build()
        .await
        .unwrap();
        let uploads = dir.path().join("images/uploads");
        let builder = Builder::new(
            Arc::clone(&templates),
            backend,
            uploads.clone(),
            PullOptions::default(),
            None,
        );
        // A layer a ready build uses, and one nothing uses.
        let layer = |name: &str| {
            let mut tar = tar::Builder::new(Vec::new());
            let mut header = tar::Header::new_gnu();
            header.set_size(1);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, &b"x"[..]).unwrap();
            templates
                .layers
                .unpack(
                    std::io::Cursor::new(tar.into_inner().unwrap()),
                    Default::default(),
                )
                .unwrap()
        };
        let (kept, orphan) = (layer("kept"), layer("orphan"));
        let ready = templates.catalog.request_build("ready", &[]).unwrap();
        templates
            .catalog
            .start_build(&ready.template_id, &ready.build_id)
            .unwrap();
        templates
            .catalog
            .finish_build(
                &ready.build_id,
                Ok(firkin_image::catalog::ImageRecord {
                    layers: vec![kept.diff_id],
                    config: firkin_image::ImageConfig::default(),
                    start_cmd: None,
                    ready_cmd: None,
                    user: None,
                    workdir: None,
                    on_base: false,
                }),
            )
            .unwrap();

        let request = templates.catalog.request_build("app", &[]).unwrap();
        let start = BuildStart {
            from_image: Some("127.0.0.1:1/none:1".into()),
            ..BuildStart::default()
        };
        let refused = builder
            .start(&request.template_id, &request.build_id, start)
            .unwrap_err();
        assert!(
            matches!(&refused, BuildError::DiskFull(why) if why.contains("template build refused")
                && why.contains("below minimum free disk")),
            "{refused:?}"
        );
        let state = templates
            .catalog
            .build_state(&request.template_id, &request.build_id, 0, 10)
            .unwrap();
        assert_eq!(state.status, BuildStatus::Waiting, "nothing started");
        assert!(!orphan.path.exists(), "the unused layer was pruned first");
        assert!(kept.path.is_dir(), "the ready build's layer stays");

        let hash = "a".repeat(64);
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"not written"));
        let refused = builder
            .save_upload(&request.template_id, &hash, body)
            .await
            .unwrap_err();
        assert!(matches!(refused, BuildError::DiskFull(_)), "{refused:?}");
        assert!(!uploads.exists(), "no upload directory was made");
    }
}
