//! Templates other than the driver's built-in `base`: what a sandbox's root is made of, as a
//! [`TemplateSource`] resolves a name to it.
//!
//! The backend asks its source (when it has one) for every template name except
//! [`BASE_TEMPLATE`], and hands the driver the [`TemplateImage`] with the create request: the
//! driver mounts directories it is given and knows nothing of registries or catalogs.

use std::path::PathBuf;

use crate::error::Result;

/// The template every driver has built in; never looked up in a [`TemplateSource`].
pub const BASE_TEMPLATE: &str = "base";

/// A template's root file system and the defaults its sandboxes start with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateImage {
    /// The template's id (what sandboxes record as their `templateID`).
    pub template_id: String,
    /// Its name (E2B's alias).
    pub name: String,
    /// The build whose result this is.
    pub build_id: String,
    /// The layers, bottom first (the image's own order): read-only directories stacked as
    /// overlay lower layers under each sandbox's private upper.
    pub layers: Vec<PathBuf>,
    /// Environment variables of every process in its sandboxes (the image's `ENV`); the
    /// create request's own win.
    pub env: Vec<(String, String)>,
    /// The user of requests that name none.
    pub user: Option<String>,
    /// The working directory of processes that name none.
    pub workdir: Option<String>,
    /// Started in the background when a sandbox starts.
    pub start_cmd: Option<String>,
    /// Run until it succeeds before a create answers (with a start command).
    pub ready_cmd: Option<String>,
    /// Whether its layers go on the driver's built-in `base` (a template built from
    /// `from_template("base")`): `base`'s own layer below them, the host's `/usr` above, with
    /// what the layers have under `usr/` stacked into that `/usr`.
    pub on_base: bool,
    /// Whether the driver may keep sandboxes of it started ahead: yes for a catalog's
    /// template, whose build never changes; no for a build's own sandboxes, whose layers
    /// change from step to step.
    pub keep_warm: bool,
}

/// Where template names are resolved (the daemon's template catalog).
pub trait TemplateSource: Send + Sync + std::fmt::Debug {
    /// The template `reference` (`name[:tag]`, a template id, or `name:<build id>`) names.
    ///
    /// # Errors
    ///
    /// [`crate::Error::TemplateNotFound`] with E2B's words when nothing ready has that name,
    /// [`crate::Error::InvalidRequest`] for a malformed one, or the catalog's failure.
    fn resolve(&self, reference: &str) -> Result<TemplateImage>;
}
