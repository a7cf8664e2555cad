//! Importing an image from a `docker save` (or `podman save`) archive.
//!
//! The archive is a tar holding `manifest.json` (`[{"Config": …, "RepoTags": […],
//! "Layers": […]}]`), the image config and one tar per layer, in any order (`docker save`
//! writes `manifest.json` last). So it is read more than once, seeking over the layers'
//! bytes: for `manifest.json` and the config (small documents, size-capped), for the list of
//! members (every layer must be there before any is unpacked), then to unpack each layer as it
//! comes, checked against the config's `diff_id` for its place. Nothing of the outer archive is written to disk but the
//! layers, through the [`LayerStore`].

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::Deserialize;

use crate::Digest;
use crate::image::{Image, ImportError, image_config};
use crate::layout::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::store::{Expected, LayerStore, StoredLayer};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

/// Imports the image `reference` (one of its `RepoTags`, e.g. `python:3.12`; `None`: the
/// archive's only image) from the `docker save` archive `archive` into `store`.
///
/// # Errors
///
/// [`ImportError`]: not such an archive, no such image, a document too large or malformed,
/// a layer missing, or one that does not unpack to its `diff_id`.
pub fn import_docker_archive(
    archive: &Path,
    reference: Option<&str>,
    store: &LayerStore,
) -> Result<Image, ImportError> {
    let problem = |problem: String| ImportError::Layout {
        dir: archive.to_owned(),
        problem,
    };
    let manifest_bytes = read_member(archive, "manifest.json", MAX_MANIFEST_BYTES)?
        .ok_or_else(|| problem("no manifest.json: not a docker save archive".to_owned()))?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| problem(format!("manifest.json: {e}")))?;
    let entry = choose(&entries, reference)?;
    let config_bytes = read_member(archive, &entry.config, MAX_CONFIG_BYTES)?
        .ok_or_else(|| problem(format!("the config {} is not in the archive", entry.config)))?;
    let config = ImageConfiguration::from_reader(config_bytes.as_slice())
        .map_err(|e| problem(format!("the config {}: {e}", entry.config)))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(problem(format!(
            "manifest.json lists {} layers but the config {} diff_ids",
            entry.layers.len(),
            diff_ids.len()
        )));
    }
    let diff_ids = diff_ids
        .iter()
        .map(|id| {
            id.parse::<Digest>()
                .map_err(|e| problem(format!("the config's diff_id {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let wanted: Vec<PathBuf> = entry.layers.iter().map(|p| member_path(p)).collect();
    // Every layer is there before any is unpacked: a broken archive changes nothing.
    let members = member_paths(archive)?;
    if let Some(missing) = entry
        .layers
        .iter()
        .find(|p| !members.contains(&member_path(p)))
    {
        return Err(problem(format!(
            "the layer {missing} is not in the archive"
        )));
    }
    let mut layers: Vec<Option<StoredLayer>> = diff_ids.iter().map(|id| store.get(id)).collect();
    if layers.iter().any(Option::is_none) {
        let file = std::fs::File::open(archive).map_err(|e| problem(e.to_string()))?;
        let mut outer = tar::Archive::new(file);
        for member in outer.entries().map_err(|e| problem(e.to_string()))? {
            let member = member.map_err(|e| problem(format!("not a tar archive: {e}")))?;
            // A repeated layer may be a symbolic link to the first copy: that one is read.
            if !member.header().entry_type().is_file() {
                continue;
            }
            let path = member.path().map_err(|e| problem(e.to_string()))?;
            let path = member_path(&path.to_string_lossy());
            let Some(place) = (0..wanted.len()).find(|&i| wanted[i] == path && layers[i].is_none())
            else {
                continue;
            };
            let expected = Expected {
                digest: None,
                diff_id: Some(diff_ids[place]),
            };
            let layer = store.unpack(member, expected)?;
            // The same layer may be listed more than once (an image that repeats one).
            for i in 0..wanted.len() {
                if diff_ids[i] == layer.diff_id && layers[i].is_none() {
                    layers[i] = Some(layer.clone());
                }
            }
        }
    }
    let layers = layers
        .into_iter()
        .zip(&entry.layers)
        .map(|(layer, path)| {
            layer.ok_or_else(|| problem(format!("the layer {path} is not in the archive")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Image {
        manifest: Digest::of(&manifest_bytes),
        config: image_config(&config),
        layers,
    })
}

/// The image of `entries` tagged `reference`, or the only one.
fn choose<'a>(
    entries: &'a [ManifestEntry],
    reference: Option<&str>,
) -> Result<&'a ManifestEntry, ImportError> {
    let found = || {
        let tags: Vec<&str> = entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().map(String::as_str))
            .collect();
        if tags.is_empty() {
            format!("{} untagged image(s)", entries.len())
        } else {
            tags.join(", ")
        }
    };
    match reference {
        Some(reference) => entries
            .iter()
            .find(|e| e.repo_tags.iter().any(|t| t == reference))
            .ok_or_else(|| ImportError::NotFound {
                wanted: format!("tagged {reference:?}"),
                found: found(),
            }),
        None if entries.len() == 1 => Ok(&entries[0]),
        None => Err(ImportError::NotFound {
            wanted: "without a tag (the archive has not exactly one)".to_owned(),
            found: found(),
        }),
    }
}

/// A member's path as written in `manifest.json` or in the tar, compared as normal components
/// (`./a/b` and `a/b` are one member).
fn member_path(path: &str) -> PathBuf {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => Some(part),
            _ => None,
        })
        .collect()
}

/// The paths of every member of the archive (read header by header, seeking over the data).
fn member_paths(archive: &Path) -> Result<std::collections::HashSet<PathBuf>, ImportError> {
    let problem = |problem: String| ImportError::Layout {
        dir: archive.to_owned(),
        problem,
    };
    let file = std::fs::File::open(archive).map_err(|e| problem(e.to_string()))?;
    let mut outer = tar::Archive::new(file);
    let mut paths = std::collections::HashSet::new();
    for member in outer
        .entries_with_seek()
        .map_err(|e| problem(e.to_string()))?
    {
        let member = member.map_err(|e| problem(format!("not a tar archive: {e}")))?;
        let path = member.path().map_err(|e| problem(e.to_string()))?;
        paths.insert(member_path(&path.to_string_lossy()));
    }
    Ok(paths)
}

/// The bytes of the member `name` (at most `limit`), or `None` when the archive has none.
fn read_member(archive: &Path, name: &str, limit: u64) -> Result<Option<Vec<u8>>, ImportError> {
    let problem = |problem: String| ImportError::Layout {
        dir: archive.to_owned(),
        problem,
    };
    let wanted = member_path(name);
    let file = std::fs::File::open(archive).map_err(|e| problem(e.to_string()))?;
    let mut outer = tar::Archive::new(file);
    for member in outer
        .entries_with_seek()
        .map_err(|e| problem(e.to_string()))?
    {
        let member = member.map_err(|e| problem(format!("not a tar archive: {e}")))?;
        if member_path(
            &member
                .path()
                .map_err(|e| problem(e.to_string()))?
                .to_string_lossy(),
        ) != wanted
        {
            continue;
        }
        if member.size() > limit {
            return Err(problem(format!(
                "{name} is {} bytes, more than the {limit} it may be",
                member.size()
            )));
        }
        let mut bytes = Vec::new();
        member
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| problem(e.to_string()))?;
        return Ok(Some(bytes));
    }
    Ok(None)
}
