//! Importing an image from an OCI image layout directory: what `skopeo copy … oci:<dir>`,
//! `umoci`, `buildah push … oci:<dir>`, `podman save --format oci-dir` and BuildKit's
//! `--output type=oci` (untarred) write.
//!
//! `index.json` names the images; one is chosen by its `org.opencontainers.image.ref.name`
//! (or the only one). A multi-platform index is narrowed to this host's platform. Every blob
//! read (index, manifest, config, layer) is checked against its descriptor's digest and size,
//! and JSON blobs are refused beyond a few MiB. Layers go into the [`LayerStore`], checked
//! against both the manifest's digest and the config's `diff_id`.

use std::io::Read;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::Digest;
use crate::image::{Image, ImportError, image_config, plan_layers};
use crate::store::LayerStore;

/// The most a manifest or an index may weigh: real ones are a few KiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The most an image config may weigh: real ones are tens of KiB (their history included).
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// The annotation that names an image of a layout.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Imports the image `reference` (its `org.opencontainers.image.ref.name`; `None`: the
/// layout's only image) from the OCI image layout `dir` into `store`.
///
/// # Errors
///
/// [`ImportError`].
pub fn import_layout(
    dir: &Path,
    reference: Option<&str>,
    store: &LayerStore,
) -> Result<Image, ImportError> {
    let layout = Layout { dir };
    layout.check_marker()?;
    let index = layout.index_json()?;
    let chosen = choose_by_name(index.manifests(), reference)?;
    let manifest_descriptor = layout.narrow_to_platform(chosen)?;
    let manifest: ImageManifest = layout.json(&manifest_descriptor, MAX_MANIFEST_BYTES, |r| {
        ImageManifest::from_reader(r).map_err(|e| e.to_string())
    })?;
    let config: ImageConfiguration = layout.json(manifest.config(), MAX_CONFIG_BYTES, |r| {
        ImageConfiguration::from_reader(r).map_err(|e| e.to_string())
    })?;
    let described: Vec<(String, String)> = manifest
        .layers()
        .iter()
        .map(|d| (d.media_type().to_string(), d.digest().to_string()))
        .collect();
    let expected = plan_layers(
        &described,
        config.rootfs().diff_ids(),
        &dir.display().to_string(),
    )?;
    let plan = manifest.layers().iter().zip(expected);
    let mut layers = Vec::with_capacity(manifest.layers().len());
    for (descriptor, expected) in plan {
        let stored = expected.diff_id.and_then(|id| store.get(&id));
        layers.push(match stored {
            Some(layer) => layer,
            None => store.unpack(layout.open_blob(descriptor)?, expected)?,
        });
    }
    Ok(Image {
        manifest: descriptor_digest(&manifest_descriptor)?,
        config: image_config(&config),
        layers,
    })
}

/// This host's platform in OCI's words (`GOARCH` names).
#[must_use]
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

struct Layout<'a> {
    dir: &'a Path,
}

impl Layout<'_> {
    fn problem(&self, problem: impl Into<String>) -> ImportError {
        ImportError::Layout {
            dir: self.dir.to_owned(),
            problem: problem.into(),
        }
    }

    fn check_marker(&self) -> Result<(), ImportError> {
        let marker = std::fs::read_to_string(self.dir.join("oci-layout")).map_err(|e| {
            self.problem(format!("no oci-layout file ({e}): not an OCI image layout"))
        })?;
        let version: serde_json::Value = serde_json::from_str(&marker)
            .map_err(|e| self.problem(format!("oci-layout is not JSON: {e}")))?;
        match version["imageLayoutVersion"].as_str() {
            Some("1.0.0") => Ok(()),
            other => Err(self.problem(format!("unsupported imageLayoutVersion {other:?}"))),
        }
    }

    fn index_json(&self) -> Result<ImageIndex, ImportError> {
        let path = self.dir.join("index.json");
        let file =
            std::fs::File::open(&path).map_err(|e| self.problem(format!("index.json: {e}")))?;
        ImageIndex::from_reader(file.take(MAX_MANIFEST_BYTES))
            .map_err(|e| self.problem(format!("index.json: {e}")))
    }

    /// The manifest for this host under `descriptor`: itself, or the one of a nested index
    /// whose platform is this host's.
    fn narrow_to_platform(&self, descriptor: &Descriptor) -> Result<Descriptor, ImportError> {
        if !is_index(descriptor.media_type()) {
            return Ok(descriptor.clone());
        }
        let index: ImageIndex = self.json(descriptor, MAX_MANIFEST_BYTES, |r| {
            ImageIndex::from_reader(r).map_err(|e| e.to_string())
        })?;
        let arch = host_architecture();
        let offered: Vec<String> = index
            .manifests()
            .iter()
            .map(|m| {
                m.platform().as_ref().map_or_else(
                    || "(no platform)".to_owned(),
                    |p| format!("{}/{}", p.os(), p.architecture()),
                )
            })
            .collect();
        index
            .manifests()
            .iter()
            .find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    p.os().to_string() == "linux" && p.architecture().to_string() == arch
                })
            })
            .cloned()
            .ok_or_else(|| ImportError::NotFound {
                wanted: format!("for linux/{arch}"),
                found: offered.join(", "),
            })
    }

    /// The blob of `descriptor`, opened after checking its name and size (its digest is
    /// checked as it is read: by the store for layers, by [`Layout::json`] for documents).
    fn open_blob(&self, descriptor: &Descriptor) -> Result<std::fs::File, ImportError> {
        let digest = descriptor_digest(descriptor)?;
        let path = self.dir.join("blobs/sha256").join(digest.hex());
        let blob_error = |problem: String| ImportError::Blob {
            digest: digest.to_string(),
            problem,
        };
        let file = std::fs::File::open(&path)
            .map_err(|e| blob_error(format!("{}: {e}", path.display())))?;
        let size = file
            .metadata()
            .map_err(|e| blob_error(e.to_string()))?
            .len();
        if size != descriptor.size() {
            return Err(blob_error(format!(
                "is {size} bytes, its descriptor says {}",
                descriptor.size()
            )));
        }
        Ok(file)
    }

    /// A JSON document blob, checked against its descriptor and `limit`, parsed by `parse`.
    fn json<T>(
        &self,
        descriptor: &Descriptor,
        limit: u64,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<T, ImportError> {
        let digest = descriptor_digest(descriptor)?;
        let blob_error = |problem: String| ImportError::Blob {
            digest: digest.to_string(),
            problem,
        };
        if descriptor.size() > limit {
            return Err(blob_error(format!(
                "is {} bytes, more than the {limit} a document may be",
                descriptor.size()
            )));
        }
        let mut bytes = Vec::new();
        self.open_blob(descriptor)?
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| blob_error(e.to_string()))?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(blob_error(format!("its content hashes to {actual}")));
        }
        parse(&bytes).map_err(|e| blob_error(format!("malformed: {e}")))
    }
}

/// The descriptor of `index` whose ref name is `reference`, or its only one.
fn choose_by_name<'a>(
    manifests: &'a [Descriptor],
    reference: Option<&str>,
) -> Result<&'a Descriptor, ImportError> {
    let name = |d: &Descriptor| {
        d.annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME))
            .cloned()
    };
    let names = || {
        let names: Vec<String> = manifests
            .iter()
            .map(|d| name(d).unwrap_or_else(|| "(unnamed)".into()))
            .collect();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    match reference {
        Some(reference) => manifests
            .iter()
            .find(|d| name(d).as_deref() == Some(reference))
            .ok_or_else(|| ImportError::NotFound {
                wanted: format!("named {reference:?}"),
                found: names(),
            }),
        None if manifests.len() == 1 => Ok(&manifests[0]),
        None => Err(ImportError::NotFound {
            wanted: "without a name (the layout has not exactly one)".to_owned(),
            found: names(),
        }),
    }
}

fn is_index(media_type: &MediaType) -> bool {
    matches!(media_type, MediaType::ImageIndex)
        || media_type.to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

fn descriptor_digest(descriptor: &Descriptor) -> Result<Digest, ImportError> {
    let text = descriptor.digest().to_string();
    text.parse()
        .map_err(|e: crate::digest::BadDigest| ImportError::Blob {
            digest: text.chars().take(100).collect(),
            problem: e.to_string(),
        })
}
