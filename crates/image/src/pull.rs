//! Pulling an image from an OCI or Docker registry, with the maintained `oci-client` crate
//! doing the distribution protocol (token and basic auth, manifest lists narrowed to this
//! host's platform, Docker v2 and OCI manifests, digests checked).
//!
//! References read as Docker reads them: `python:3.12` is `docker.io/library/python:3.12`.
//! Each layer the store lacks is downloaded to a file in the store's `tmp/`, then unpacked
//! from it off the async workers, checked against the manifest's digest and the config's
//! `diff_id`; layers the store has are not downloaded. Registries named in
//! [`PullOptions::insecure_registries`] are spoken to over plain HTTP (a registry on
//! loopback); every other over HTTPS.

use std::sync::Arc;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use oci_spec::image::ImageConfiguration;

use crate::Digest;
use crate::image::{Image, ImportError, image_config, plan_layers};
use crate::progress::{Counting, ProgressFn, PullProgress};
use crate::store::LayerStore;

/// Credentials for a registry.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    /// None (public images; Docker Hub's anonymous token is fetched as needed).
    #[default]
    Anonymous,
    /// A user name and password (or access token used as one).
    Basic {
        /// The user.
        username: String,
        /// The password or token.
        password: String,
    },
    /// A bearer token, sent as it is.
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Anonymous => f.write_str("Anonymous"),
            Self::Basic { username, .. } => write!(f, "Basic({username}, ..)"),
            Self::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// How to pull.
#[derive(Clone, Debug, Default)]
pub struct PullOptions {
    /// The credentials for the image's registry.
    pub credentials: Credentials,
    /// Registries (`host:port` as in the reference) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Told of the pull's progress, when given.
    pub progress: Option<ProgressFn>,
}

/// Why a pull failed. Layers already stored stay (whole, verified, shared).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The reference cannot be read.
    #[error("{reference:?} is not an image reference: {problem}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// Why.
        problem: String,
    },
    /// The registry refused, failed or answered something that is not an image.
    #[error("registry: {0}")]
    Registry(String),
    /// The image's documents or a layer are not acceptable, or a layer did not unpack.
    #[error(transparent)]
    Import(#[from] ImportError),
}

/// Pulls `reference` into `store` (see the module docs).
///
/// # Errors
///
/// [`PullError`].
pub async fn pull(
    reference: &str,
    store: Arc<LayerStore>,
    options: &PullOptions,
) -> Result<Image, PullError> {
    let parsed: Reference =
        reference
            .parse()
            .map_err(|e: oci_client::ParseError| PullError::BadReference {
                reference: reference.chars().take(200).collect(),
                problem: e.to_string(),
            })?;
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(options.insecure_registries.clone()),
        // A registry that stops answering fails the pull instead of hanging it.
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(120)),
        ..ClientConfig::default()
    });
    let auth = match &options.credentials {
        Credentials::Anonymous => RegistryAuth::Anonymous,
        Credentials::Basic { username, password } => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Credentials::Bearer(token) => RegistryAuth::Bearer(token.clone()),
    };
    let registry = |e: oci_client::errors::OciDistributionError| PullError::Registry(e.to_string());
    let (manifest, manifest_digest, config_text) = client
        .pull_manifest_and_config(&parsed, &auth)
        .await
        .map_err(registry)?;
    let bad = |problem: String| {
        PullError::Import(ImportError::Layout {
            dir: reference.into(),
            problem,
        })
    };
    let config = ImageConfiguration::from_reader(config_text.as_bytes())
        .map_err(|e| bad(format!("the image config: {e}")))?;
    let described: Vec<(String, String)> = manifest
        .layers
        .iter()
        .map(|d| (d.media_type.clone(), d.digest.clone()))
        .collect();
    // Every descriptor is checked before anything is downloaded.
    let expected = plan_layers(&described, config.rootfs().diff_ids(), reference)?;
    let plan: Vec<_> = manifest.layers.iter().zip(expected).collect();
    let missing: Vec<_> = plan
        .iter()
        .filter(|(_, expected)| expected.diff_id.and_then(|id| store.get(&id)).is_none())
        .collect();
    let progress = options.progress.as_ref();
    ProgressFn::report(
        progress,
        PullProgress::Planned {
            layers: missing.len(),
            bytes: missing
                .iter()
                .map(|(d, _)| u64::try_from(d.size).unwrap_or(0))
                .sum(),
        },
    );
    let mut layers = Vec::with_capacity(plan.len());
    for (descriptor, expected) in plan {
        if let Some(layer) = expected.diff_id.and_then(|id| store.get(&id)) {
            layers.push(layer);
            continue;
        }
        let download = store.download_path();
        let file = tokio::fs::File::create(&download)
            .await
            .map_err(|e| bad(format!("create {}: {e}", download.display())))?;
        let counting = Counting {
            inner: file,
            progress: options.progress.clone(),
        };
        let pulled = client.pull_blob(&parsed, descriptor, counting).await;
        let unpacked = match pulled {
            Ok(()) => {
                let store = Arc::clone(&store);
                let path = download.clone();
                tokio::task::spawn_blocking(move || {
                    let blob = std::fs::File::open(&path)
                        .map_err(|e| crate::UnpackError::io("open", &path)(e))?;
                    store.unpack(blob, expected)
                })
                .await
                .map_err(|e| bad(format!("the unpack task: {e}")))
                .and_then(|unpacked| unpacked.map_err(|e| PullError::Import(e.into())))
            }
            Err(error) => Err(registry(error)),
        };
        let _ = tokio::fs::remove_file(&download).await;
        layers.push(unpacked?);
        ProgressFn::report(progress, PullProgress::Stored);
    }
    Ok(Image {
        manifest: manifest_digest
            .parse::<Digest>()
            .map_err(|e| bad(format!("the manifest's digest {e}")))?,
        config: image_config(&config),
        layers,
    })
}
