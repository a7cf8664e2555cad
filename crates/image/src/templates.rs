//! Templates made from images as they are: the catalog and the layer store together, under
//! one directory (`<state>/images`: `templates.db`, `layers/`, `tmp/`). A pull or an import is
//! a build with no steps: it is requested, started, logged and finished in the catalog like any
//! build, so the template it makes resolves by `name[:tag]`.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::{Catalog, CatalogError, ImageRecord, ResolvedTemplate};
use crate::pull::{PullError, PullOptions, pull};
use crate::{Digest, Expected, Image, ImportError, LayerStore, UnpackError, UnpackOptions};

/// The catalog and the layer store of one daemon.
#[derive(Debug)]
pub struct Templates {
    /// Templates, builds and tags.
    pub catalog: Catalog,
    /// Their layers.
    pub layers: Arc<LayerStore>,
}

/// Why a template operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The catalog refused or failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The layer store failed.
    #[error(transparent)]
    Store(#[from] UnpackError),
    /// The pull failed (the build is marked failed with this reason).
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The import failed (the build is marked failed with this reason).
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl Templates {
    /// Opens (making) the catalog and store under `dir`, unpacking with `options`.
    ///
    /// # Errors
    ///
    /// The directory, the database or the store cannot be opened.
    pub fn open(dir: &Path, options: UnpackOptions) -> Result<Self, TemplateError> {
        // As the rest of the state directory: build logs and names are the operator's, not
        // other host users'. Only the sandboxes' root may pass through, to the layers it
        // mounts.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(UnpackError::io("create", dir))?;
        crate::store::searchable_by_sandboxes(dir, options.ids.host_start)?;
        let db = dir.join("templates.db");
        let catalog = Catalog::open(&db)?;
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600))
            .map_err(UnpackError::io("chmod 0600", &db))?;
        Ok(Self {
            catalog,
            layers: Arc::new(LayerStore::open(dir, options)?),
        })
    }

    /// Pulls `reference` as the template `name` (default: the image's own name and tag, as
    /// [`default_name`] makes it) with the extra `tags`.
    ///
    /// # Errors
    ///
    /// [`TemplateError`]; a failed pull leaves a failed build in the catalog, with the reason.
    pub async fn pull(
        &self,
        reference: &str,
        name: Option<&str>,
        tags: &[String],
        options: &PullOptions,
    ) -> Result<ResolvedTemplate, TemplateError> {
        let name = name.map_or_else(|| default_name(reference), str::to_owned);
        let layers = Arc::clone(&self.layers);
        self.build(&name, tags, &format!("pulling {reference}"), async move {
            pull(reference, layers, options)
                .await
                .map_err(TemplateError::from)
        })
        .await
    }

    /// Imports the image `image` (a layout's ref name or an archive's tag; `None`: its only
    /// one) from the OCI image layout directory or `docker save` archive at `path` as the
    /// template `name` with the extra `tags`.
    ///
    /// # Errors
    ///
    /// As [`Templates::pull`].
    pub async fn import(
        &self,
        path: &Path,
        image: Option<&str>,
        name: &str,
        tags: &[String],
    ) -> Result<ResolvedTemplate, TemplateError> {
        let (path, image, layers) = (
            path.to_owned(),
            image.map(str::to_owned),
            Arc::clone(&self.layers),
        );
        self.build(
            name,
            tags,
            &format!("importing {}", path.display()),
            async move {
                tokio::task::spawn_blocking(move || import(&path, image.as_deref(), &layers))
                    .await
                    .map_err(task_failed)?
            },
        )
        .await
    }

    /// Pulls `reference` and adds the system layer, as a build from an image starts, without
    /// a build of its own in the catalog.
    ///
    /// # Errors
    ///
    /// The pull or the store failed.
    pub async fn pull_image(
        &self,
        reference: &str,
        options: &PullOptions,
    ) -> Result<ImageRecord, TemplateError> {
        let image = pull(reference, Arc::clone(&self.layers), options).await?;
        Ok(self.provision(image).await?.1)
    }

    /// Removes the layers no template keeps; returns their digests.
    ///
    /// # Errors
    ///
    /// The catalog or the store failed.
    pub fn prune(&self) -> Result<Vec<Digest>, TemplateError> {
        self.prune_keeping(&std::collections::HashSet::new())
    }

    /// Removes the layers no template keeps and that are not in `also` (the layers of builds
    /// still running); returns their digests.
    ///
    /// # Errors
    ///
    /// The catalog or the store failed.
    pub fn prune_keeping(
        &self,
        also: &std::collections::HashSet<Digest>,
    ) -> Result<Vec<Digest>, TemplateError> {
        let mut keep = self.catalog.layers_in_use()?;
        keep.extend(also);
        Ok(self.layers.prune(&keep)?)
    }

    /// A build with no steps: `make` brings the image in.
    async fn build(
        &self,
        name: &str,
        tags: &[String],
        what: &str,
        make: impl Future<Output = Result<Image, TemplateError>>,
    ) -> Result<ResolvedTemplate, TemplateError> {
        let request = self.catalog.request_build(name, tags)?;
        self.catalog
            .start_build(&request.template_id, &request.build_id)?;
        self.catalog.log(&request.build_id, "info", what, None)?;
        let made = match make.await {
            Ok(image) => self.provision(image).await,
            Err(error) => Err(error),
        };
        match made {
            Ok((manifest, record)) => {
                self.catalog.log(
                    &request.build_id,
                    "info",
                    &format!(
                        "{} layers (with the system layer), manifest {manifest}",
                        record.layers.len(),
                    ),
                    None,
                )?;
                self.catalog.finish_build(&request.build_id, Ok(record))?;
                Ok(self
                    .catalog
                    .resolve(&format!("{}:{}", request.name, request.build_id))?)
            }
            Err(error) => {
                let reason = error.to_string();
                self.catalog
                    .log(&request.build_id, "error", &reason, None)?;
                self.catalog.finish_build(&request.build_id, Err(reason))?;
                Err(error)
            }
        }
    }

    /// The template an image as it is makes: its layers and the system layer on top (see
    /// [`crate::provision`]), run as `user` in its home as E2B's are.
    async fn provision(&self, image: Image) -> Result<(Digest, ImageRecord), TemplateError> {
        let paths: Vec<PathBuf> = image.layers.iter().map(|l| l.path.clone()).collect();
        let store = Arc::clone(&self.layers);
        let system = tokio::task::spawn_blocking(move || {
            let tar = crate::provision::system_layer(&paths, store.ids());
            store.unpack(std::io::Cursor::new(tar), Expected::default())
        })
        .await
        .map_err(task_failed)??;
        let mut layers: Vec<Digest> = image.layers.iter().map(|l| l.diff_id).collect();
        layers.push(system.diff_id);
        Ok((
            image.manifest,
            ImageRecord {
                layers,
                config: image.config,
                start_cmd: None,
                ready_cmd: None,
                user: Some(crate::provision::USER.to_owned()),
                workdir: None,
                on_base: false,
            },
        ))
    }
}

/// A blocking task that panicked or was cancelled, as a store error.
fn task_failed(error: tokio::task::JoinError) -> TemplateError {
    TemplateError::Store(UnpackError::io("run a blocking task", PathBuf::new())(
        std::io::Error::other(error),
    ))
}

/// An OCI layout when `path` is a directory, else a `docker save` archive.
fn import(path: &Path, image: Option<&str>, layers: &LayerStore) -> Result<Image, TemplateError> {
    Ok(if path.is_dir() {
        crate::import_layout(path, image, layers)?
    } else {
        crate::import_docker_archive(path, image, layers)?
    })
}

/// The template name an image reference suggests: its last path component and its tag
/// (`docker.io/library/python:3.12` → `python:3.12`), with characters a name may not have
/// replaced by `-`. A digest reference gives the name alone.
#[must_use]
pub fn default_name(reference: &str) -> String {
    let reference = reference.split('@').next().unwrap_or(reference);
    let last = reference.rsplit('/').next().unwrap_or(reference);
    let (name, tag) = last
        .split_once(':')
        .map_or((last, None), |(n, t)| (n, Some(t)));
    let clean = |text: &str, extra: &[u8]| -> String {
        text.to_lowercase()
            .bytes()
            .map(|b| {
                if b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'_'
                    || extra.contains(&b)
                {
                    char::from(b)
                } else {
                    '-'
                }
            })
            .collect()
    };
    match tag {
        Some(tag) => format!("{}:{}", clean(name, b""), clean(tag, b".")),
        None => clean(name, b""),
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn an_image_reference_suggests_its_own_name_and_tag() {
        assert_eq!(default_name("python:3.12"), "python:3.12");
        assert_eq!(
            default_name("docker.io/library/Python:3.12-slim"),
            "python:3.12-slim"
        );
        assert_eq!(default_name("127.0.0.1:5000/test/app:v1"), "app:v1");
        assert_eq!(default_name("ghcr.io/org/my.app"), "my-app");
        assert_eq!(default_name("busybox@sha256:abc"), "busybox");
    }
}
