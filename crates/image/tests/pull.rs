//! Pulling from a real registry: Debian's `docker-registry` (the CNCF distribution registry)
//! started by the test on loopback with its own storage; the test pushes its image with
//! `oci-client` (a gzip and a zstd layer) and pulls it back through `firkin_image::pull` into
//! a store. Also an unknown
//! tag, a bad reference, and a "registry" that answers garbage, each leaving nothing. Needs
//! root (unpacking shifts ownership) and `docker-registry` (scripts/setup installs it).

mod common;

#[cfg(test)]
mod tests {
    use super::common::{gzip, layers_in, store, tar_of};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use firkin_image::{Digest, PullError, PullOptions, pull};
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth;
    use serde_json::json;

    /// A registry on 127.0.0.1 with its storage in a temporary directory, stopped on drop.
    struct Registry {
        child: Child,
        address: String,
        _storage: tempfile::TempDir,
    }

    impl Registry {
        fn start(test: &str) -> Option<Self> {
            Self::start_with(test, None)
        }

        /// A registry that asks for the users of the htpasswd file `users` (bcrypt hashes),
        /// or for nothing.
        fn start_with(test: &str, users: Option<&str>) -> Option<Self> {
            if !firkin_test_support::root_or_skip(test) {
                return None;
            }
            if Command::new("docker-registry")
                .arg("--version")
                .output()
                .is_err()
            {
                firkin_test_support::skip(
                    test,
                    "needs docker-registry (scripts/setup installs it)",
                );
                return None;
            }
            let storage = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let address = format!("127.0.0.1:{port}");
            let config = storage.path().join("config.yml");
            let mut text = format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                storage.path().join("data").display()
            );
            if let Some(users) = users {
                let path = storage.path().join("htpasswd");
                std::fs::write(&path, users).unwrap();
                text.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: firkin-test\n    path: {}\n",
                    path.display()
                ));
            }
            std::fs::write(&config, text).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let registry = Self {
                child,
                address,
                _storage: storage,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while !registry.answers() {
                assert!(
                    Instant::now() < deadline,
                    "the registry did not start within 20 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(registry)
        }

        fn answers(&self) -> bool {
            let Ok(mut stream) = TcpStream::connect(&self.address) else {
                return false;
            };
            let request = format!(
                "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.address
            );
            let mut response = String::new();
            stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && (response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.1 401"))
        }

        /// A client that speaks plain HTTP to this registry (the tests push with it).
        fn client(&self) -> oci_client::Client {
            oci_client::Client::new(ClientConfig {
                protocol: ClientProtocol::HttpsExcept(vec![self.address.clone()]),
                ..ClientConfig::default()
            })
        }

        fn options(&self) -> PullOptions {
            PullOptions {
                insecure_registries: vec![self.address.clone()],
                ..PullOptions::default()
            }
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_image_pushed_to_a_local_registry_pulls_into_the_store() {
        let Some(registry) = Registry::start("pull test") else {
            return;
        };
        let base_tar = tar_of(&[("etc/os-release", b"ID=test\n")]);
        let base_gz = gzip(&base_tar);
        let app_tar = tar_of(&[("srv/app.py", b"print('hi')\n")]);
        // The second layer in zstd, as newer builders push them.
        let app_zst = zstd::stream::encode_all(app_tar.as_slice(), 3).unwrap();
        let config = json!({
            "architecture": firkin_image::layout::host_architecture(), "os": "linux",
            "config": { "Env": ["LANG=C.UTF-8"], "WorkingDir": "/srv", "User": "user", "Cmd": ["python3"] },
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&base_tar).to_string(), Digest::of(&app_tar).to_string()] },
        });
        let reference = format!("{}/test/app:v1", registry.address);
        let client = registry.client();
        let layer = |bytes: &[u8], media_type: &str| {
            ImageLayer::new(bytes.to_vec(), media_type.into(), None)
        };
        client
            .push(
                &reference.parse().unwrap(),
                &[
                    layer(&base_gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
                    layer(&app_zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
                ],
                Config::new(
                    config.to_string().into_bytes(),
                    "application/vnd.oci.image.config.v1+json".into(),
                    None,
                ),
                &RegistryAuth::Anonymous,
                None,
            )
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(dir.path()));
        let events = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&events);
        let options = PullOptions {
            progress: Some(firkin_image::ProgressFn(Arc::new(move |event| {
                seen.lock().unwrap().push(event);
            }))),
            ..registry.options()
        };
        let image = pull(&reference, Arc::clone(&store), &options)
            .await
            .unwrap();
        let events = std::mem::take(&mut *events.lock().unwrap());
        let sizes = (base_gz.len() + app_zst.len()) as u64;
        assert_eq!(
            events[0],
            firkin_image::PullProgress::Planned {
                layers: 2,
                bytes: sizes
            }
        );
        let downloaded: u64 = events
            .iter()
            .filter_map(|e| match e {
                firkin_image::PullProgress::Downloaded(n) => Some(*n),
                _ => None,
            })
            .sum();
        assert_eq!(downloaded, sizes, "every byte of the layers is reported");
        assert_eq!(
            events
                .iter()
                .filter(|e| **e == firkin_image::PullProgress::Stored)
                .count(),
            2
        );
        let diff_ids: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
        assert_eq!(diff_ids, [Digest::of(&base_tar), Digest::of(&app_tar)]);
        assert_eq!(
            image.layers[0].report.as_ref().unwrap().digest,
            Digest::of(&base_gz)
        );
        assert_eq!(
            image.layers[1].report.as_ref().unwrap().digest,
            Digest::of(&app_zst)
        );
        assert!(image.layers[1].path.join("srv/app.py").is_file());
        assert_eq!(image.config.user.as_deref(), Some("user"));
        assert_eq!(image.config.cmd, ["python3"]);
        // Pulled again: the manifest is fetched, the layers are not.
        let again = pull(&reference, Arc::clone(&store), &registry.options())
            .await
            .unwrap();
        assert!(again.layers.iter().all(|l| l.report.is_none()));
        assert_eq!(again.manifest, image.manifest);
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .unwrap()
                .count(),
            0,
            "downloads are removed"
        );

        let missing = format!("{}/test/app:v2", registry.address);
        let error = pull(&missing, Arc::clone(&store), &registry.options())
            .await
            .unwrap_err();
        assert!(matches!(error, PullError::Registry(_)), "{error}");
        let error = pull("Not A Reference::", Arc::clone(&store), &registry.options())
            .await
            .unwrap_err();
        assert!(matches!(error, PullError::BadReference { .. }), "{error}");
    }

    /// Pushes a one-layer image for `architecture` as `<repository>:<architecture>`; its
    /// manifest's (digest, size).
    async fn push_for(
        client: &oci_client::Client,
        registry: &Registry,
        architecture: &str,
        layer_tar: &[u8],
    ) -> (String, usize) {
        let config = json!({
            "architecture": architecture, "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(layer_tar).to_string()] },
        });
        let reference: oci_client::Reference =
            format!("{}/test/multi:{architecture}", registry.address)
                .parse()
                .unwrap();
        client
            .push(
                &reference,
                &[ImageLayer::new(
                    gzip(layer_tar),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    None,
                )],
                Config::new(
                    config.to_string().into_bytes(),
                    "application/vnd.oci.image.config.v1+json".into(),
                    None,
                ),
                &RegistryAuth::Anonymous,
                None,
            )
            .await
            .unwrap();
        let (bytes, digest) = client
            .pull_manifest_raw(
                &reference,
                &RegistryAuth::Anonymous,
                &["application/vnd.oci.image.manifest.v1+json"],
            )
            .await
            .unwrap();
        (digest, bytes.len())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_platform_index_pulls_this_hosts_image() {
        let Some(registry) = Registry::start("pull test") else {
            return;
        };
        let client = registry.client();
        let host = firkin_image::layout::host_architecture();
        let other = if host == "arm64" { "amd64" } else { "arm64" };
        let ours_tar = tar_of(&[("etc/arch", host.as_bytes())]);
        let theirs_tar = tar_of(&[("etc/arch", other.as_bytes())]);
        // The other platform's image first in the index: the pull must choose, not take the
        // first.
        let theirs = push_for(&client, &registry, other, &theirs_tar).await;
        let ours = push_for(&client, &registry, host, &ours_tar).await;
        let entry = |(digest, size): &(String, usize), architecture: &str| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest, "size": size,
                "platform": { "architecture": architecture, "os": "linux" },
            })
        };
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [entry(&theirs, other), entry(&ours, host)],
        });
        let reference = format!("{}/test/multi:latest", registry.address);
        client
            .push_manifest_raw(
                &reference.parse().unwrap(),
                index.to_string().into_bytes(),
                "application/vnd.oci.image.index.v1+json".parse().unwrap(),
            )
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let image = pull(&reference, Arc::new(store(dir.path())), &registry.options())
            .await
            .unwrap();
        assert_eq!(image.manifest.to_string(), ours.0, "this host's manifest");
        assert_eq!(
            std::fs::read_to_string(image.layers[0].path.join("etc/arch")).unwrap(),
            host
        );
        assert_eq!(
            layers_in(dir.path()),
            1,
            "the other platform's layer is not fetched"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_docker_v2_manifest_pulls_as_an_oci_one_does() {
        let Some(registry) = Registry::start("pull test") else {
            return;
        };
        let client = registry.client();
        let layer_tar = tar_of(&[("etc/from-docker", b"v2\n")]);
        let layer = gzip(&layer_tar);
        let config = json!({
            "architecture": firkin_image::layout::host_architecture(), "os": "linux",
            "config": { "Env": ["FROM=docker"] },
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&layer_tar).to_string()] },
        })
        .to_string()
        .into_bytes();
        let reference: oci_client::Reference = format!("{}/test/docker:v2", registry.address)
            .parse()
            .unwrap();
        for blob in [&layer, &config] {
            client
                .push_blob(&reference, blob.clone(), &Digest::of(blob).to_string())
                .await
                .unwrap();
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": config.len(), "digest": Digest::of(&config).to_string(),
            },
            "layers": [{
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": layer.len(), "digest": Digest::of(&layer).to_string(),
            }],
        });
        client
            .push_manifest_raw(
                &reference,
                manifest.to_string().into_bytes(),
                "application/vnd.docker.distribution.manifest.v2+json"
                    .parse()
                    .unwrap(),
            )
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let image = pull(
            &reference.to_string(),
            Arc::new(store(dir.path())),
            &registry.options(),
        )
        .await
        .unwrap();
        assert_eq!(image.layers[0].diff_id, Digest::of(&layer_tar));
        assert!(image.layers[0].path.join("etc/from-docker").is_file());
        assert_eq!(image.config.env, ["FROM=docker"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_that_asks_for_a_password_gets_it_and_refuses_without() {
        // alice / secret, bcrypt at cost 4 (the registry takes only bcrypt).
        let users = "alice:$2b$04$kxGbW..E8tetJj4X0Os8kuBQwCUUqDrfwBHsiCcwAHqI51aQLWaEK\n";
        let Some(registry) = Registry::start_with("pull test", Some(users)) else {
            return;
        };
        let layer_tar = tar_of(&[("etc/secret-image", b"yes\n")]);
        let config = json!({
            "architecture": firkin_image::layout::host_architecture(), "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [Digest::of(&layer_tar).to_string()] },
        });
        let reference = format!("{}/private/app:v1", registry.address);
        let client = registry.client();
        client
            .push(
                &reference.parse().unwrap(),
                &[ImageLayer::new(
                    gzip(&layer_tar),
                    "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    None,
                )],
                Config::new(
                    config.to_string().into_bytes(),
                    "application/vnd.oci.image.config.v1+json".into(),
                    None,
                ),
                &RegistryAuth::Basic("alice".into(), "secret".into()),
                None,
            )
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(dir.path()));
        for credentials in [
            firkin_image::Credentials::Anonymous,
            firkin_image::Credentials::Basic {
                username: "alice".into(),
                password: "wrong".into(),
            },
        ] {
            let error = pull(
                &reference,
                Arc::clone(&store),
                &PullOptions {
                    credentials,
                    ..registry.options()
                },
            )
            .await
            .unwrap_err();
            assert!(matches!(error, PullError::Registry(_)), "{error}");
        }
        assert_eq!(
            layers_in(dir.path()),
            0,
            "nothing stored without the password"
        );
        let image = pull(
            &reference,
            Arc::clone(&store),
            &PullOptions {
                credentials: firkin_image::Credentials::Basic {
                    username: "alice".into(),
                    password: "secret".into(),
                },
                ..registry.options()
            },
        )
        .await
        .unwrap();
        assert!(image.layers[0].path.join("etc/secret-image").is_file());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_registry_that_answers_garbage_is_an_error_and_stores_nothing() {
        if !firkin_test_support::root_or_skip("pull test") {
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut request = [0_u8; 4096];
                let _ = stream.read(&mut request);
                let body = "{\"schemaVersion\": \"garbage\", \"layers\": 7}";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let options = PullOptions {
            insecure_registries: vec![address.clone()],
            ..PullOptions::default()
        };
        let error = pull(
            &format!("{address}/x/y:z"),
            Arc::new(store(dir.path())),
            &options,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, PullError::Registry(_)), "{error}");
        assert_eq!(layers_in(dir.path()), 0);
    }
}
