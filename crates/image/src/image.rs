//! What every import gives back ([`Image`]), why one fails ([`ImportError`]), and the check
//! that every way in (a layout, a `docker save` archive, a registry) runs on a manifest's
//! layers before it unpacks any.

use oci_spec::image::ImageConfiguration;

use crate::store::{Expected, StoredLayer};
use crate::{Digest, UnpackError};

/// What a sandbox of the image starts with, from its config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    /// `NAME=value` entries.
    pub env: Vec<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// The user (a name, `uid`, or `uid:gid`).
    pub user: Option<String>,
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// The command.
    pub cmd: Vec<String>,
}

/// An imported image: its layers are in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The digest of the manifest chosen.
    pub manifest: Digest,
    /// What its config says to start with.
    pub config: ImageConfig,
    /// Its layers, bottom first.
    pub layers: Vec<StoredLayer>,
}

/// Why an image was not imported. Layers already in the store stay (they are whole and
/// verified, and shared); nothing else is written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The source (a layout directory, an archive, a reference) is not an image, or a
    /// document of it is malformed.
    #[error("{}: {problem}", dir.display())]
    Layout {
        /// The layout directory, archive or reference.
        dir: std::path::PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A blob is missing, too large, or not what its descriptor says.
    #[error("blob {digest}: {problem}")]
    Blob {
        /// The blob's digest as the descriptor gives it.
        digest: String,
        /// What is wrong.
        problem: String,
    },
    /// No image of the layout matches what was asked.
    #[error("no image {wanted}; it has: {found}")]
    NotFound {
        /// The reference or platform asked for.
        wanted: String,
        /// What the layout offers.
        found: String,
    },
    /// A layer could not be unpacked.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
}

/// The checks a manifest's layers pass before any is unpacked: as many as the config has
/// `diff_id`s, each a layer (a tar, plain or compressed), each digest well-formed. The layers
/// are given as (media type, digest); the result is what the store must find for each, in
/// order. `source` names the image in errors.
pub(crate) fn plan_layers(
    layers: &[(String, String)],
    diff_ids: &[String],
    source: &str,
) -> Result<Vec<Expected>, ImportError> {
    let problem = |problem: String| ImportError::Layout {
        dir: source.into(),
        problem,
    };
    if diff_ids.len() != layers.len() {
        return Err(problem(format!(
            "the manifest has {} layers but the config {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    layers
        .iter()
        .zip(diff_ids)
        .map(|((media_type, digest), diff_id)| {
            if !is_layer(media_type) {
                return Err(ImportError::Blob {
                    digest: digest.chars().take(100).collect(),
                    problem: format!("has media type {media_type}, which is not a layer"),
                });
            }
            let parse = |text: &str, what: &str| {
                text.parse::<Digest>()
                    .map_err(|e| problem(format!("{what} {e}")))
            };
            Ok(Expected {
                digest: Some(parse(digest, "a layer's digest")?),
                diff_id: Some(parse(diff_id, "the config's diff_id")?),
            })
        })
        .collect()
}

/// Whether `media_type` is a layer: a tar, plain or compressed (the compression is read off
/// the bytes), OCI's or Docker's.
fn is_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

pub(crate) fn image_config(config: &ImageConfiguration) -> ImageConfig {
    let Some(c) = config.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().filter(|d| !d.is_empty()),
        user: c.user().clone().filter(|u| !u.is_empty()),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
    }
}
