//! What the catalog stores and answers.

use super::BadName;
use crate::{Digest, ImageConfig};

/// What a ready build made: what a sandbox of it mounts and starts with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The layers (their `diff_id`s, names in the layer store), bottom first.
    pub layers: Vec<Digest>,
    /// Env, working directory, user, entrypoint and command.
    pub config: ImageConfig,
    /// Started in the background when a sandbox of the template starts.
    pub start_cmd: Option<String>,
    /// Polled until it succeeds before the sandbox is handed out.
    pub ready_cmd: Option<String>,
    /// The build's final user: envd's default user in its sandboxes (`user` unless a step
    /// set another; E2B ignores the image's own `USER`).
    #[serde(default)]
    pub user: Option<String>,
    /// The build's final working directory: envd's default (`None`: the user's home).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Whether the layers go on the built-in `base` (see
    /// [`firkin_single_node::TemplateImage::on_base`]).
    #[serde(default)]
    pub on_base: bool,
}

/// A build's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// Requested, not started.
    Waiting,
    /// Running.
    Building,
    /// Done; its image can be used.
    Ready,
    /// Failed (its reason says why).
    Error,
}

impl BuildStatus {
    /// The word E2B's status route uses.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Building => "building",
            Self::Ready => "ready",
            Self::Error => "error",
        }
    }

    pub(super) fn parse(text: &str) -> Self {
        match text {
            "waiting" => Self::Waiting,
            "building" => Self::Building,
            "ready" => Self::Ready,
            _ => Self::Error,
        }
    }
}

/// One line of a build's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When, milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text.
    pub message: String,
    /// The step it belongs to, if any.
    pub step: Option<String>,
}

/// A requested build (E2B's `TemplateRequestResponseV3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// The template's id (new, or the existing one of that name).
    pub template_id: String,
    /// The new build's id (a UUID).
    pub build_id: String,
    /// The template's name.
    pub name: String,
    /// The tags the build takes when it is ready.
    pub tags: Vec<String>,
}

/// A build as the status route shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildState {
    /// Its state.
    pub status: BuildStatus,
    /// Log lines from the offset asked for.
    pub logs: Vec<LogEntry>,
    /// Why it failed.
    pub reason: Option<String>,
}

/// A template resolved for a sandbox: a ready build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTemplate {
    /// The template's id.
    pub template_id: String,
    /// Its name.
    pub name: String,
    /// The build.
    pub build_id: String,
    /// What it made.
    pub image: ImageRecord,
}

/// One template as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSummary {
    /// Its id.
    pub template_id: String,
    /// Its name.
    pub name: String,
    /// Its newest build and that build's state.
    pub latest_build: Option<(String, BuildStatus)>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Why a catalog call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A name or tag breaks E2B's rules (400).
    #[error(transparent)]
    BadName(#[from] BadName),
    /// No such template, build or tag (404); the message is E2B's.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the build's state (400: "build is not in waiting state").
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("template catalog")]
    Db(#[from] rusqlite::Error),
    /// A stored image record cannot be read.
    #[error("template catalog: a stored image is unreadable")]
    Corrupt(#[from] serde_json::Error),
}
