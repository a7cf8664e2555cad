//! The catalog as the backend's [`TemplateSource`]: a name resolves to the layer directories
//! of its ready build and the defaults its sandboxes start with.

use firkin_single_node::{Error, TemplateImage, TemplateSource};

use crate::Templates;
use crate::catalog::CatalogError;

impl TemplateSource for Templates {
    fn resolve(&self, reference: &str) -> firkin_single_node::Result<TemplateImage> {
        let resolved = self
            .catalog
            .resolve(reference)
            .map_err(|error| match error {
                CatalogError::NotFound(message) => Error::TemplateNotFound(message),
                CatalogError::BadName(bad) => Error::InvalidRequest(bad.to_string()),
                other => Error::StatePersistenceFailed {
                    message: format!("resolve the template {reference:?}"),
                    source: Some(Box::new(other)),
                },
            })?;
        let image = resolved.image;
        let layers: Vec<_> = image
            .layers
            .iter()
            .map(|diff_id| self.layers.layer_path(diff_id))
            .collect();
        if let Some(missing) = layers.iter().find(|path| !path.is_dir()) {
            return Err(Error::RuntimeLaunchFailed(format!(
                "template '{}' (build {}) lacks its layer {}: the store lost it; pull or build the template again",
                resolved.name,
                resolved.build_id,
                missing.display()
            )));
        }
        Ok(TemplateImage {
            template_id: resolved.template_id,
            name: resolved.name,
            build_id: resolved.build_id,
            layers,
            env: image
                .config
                .env
                .iter()
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            user: image.user,
            workdir: image.workdir,
            start_cmd: image.start_cmd,
            ready_cmd: image.ready_cmd,
            on_base: image.on_base,
            keep_warm: true,
        })
    }
}
