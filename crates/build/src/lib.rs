//! `firkin-build`: template builds as E2B's Template SDK asks for them
//! (`E2B-CONTRACT-2.md` §2).
//!
//! A build starts from an image (pulled, with the system layer of [`firkin_image::provision`])
//! or from another template's final image, then runs its steps in order, each one a layer on
//! top of the last:
//!
//! - `RUN` starts a build sandbox from the layers so far (through the backend, like any
//!   sandbox, with internet access), runs `/bin/bash -l -c <cmd>` in it through its envd,
//!   streams the output into the build log, freezes it, and keeps what it wrote (its overlay
//!   upper, exported by [`firkin_image::export`]) as the step's layer;
//! - `COPY` makes its layer on the host from the upload ([`copy`]), without a sandbox;
//! - `WORKDIR` makes the directory when the image lacks it; `USER` creates the user when the
//!   image lacks it (a `RUN` of `useradd`); `ENV` only changes the build's environment.
//!
//! Every layer goes through the layer store's unpacker, so a step's layer is verified and
//! content-addressed like a pulled one. A step's key (its parent's key, the step, the build
//! context and its files' hash) maps to its layer in the catalog's build cache: an unchanged
//! step of a rebuild is not run again. The final user and working directory become the
//! template's defaults; the start and ready commands are checked once in a sandbox of the
//! result before the build is ready.

mod copy;
pub mod dockerfile;
mod engine;
mod envd;
mod held;
mod run;
mod shell;
pub mod spec;
mod uploads;

pub use dockerfile::{Dockerfile, Instruction};
pub use engine::Builder;
pub use run::BUILD_METADATA;
pub use spec::{BuildStart, Step};
pub use uploads::MAX_UPLOAD_BYTES;

/// Why a build request or a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such template or build (404).
    #[error("{0}")]
    NotFound(String),
    /// The build is not waiting (400 "build is not in waiting state").
    #[error("{0}")]
    NotWaiting(String),
    /// The disk is below the daemon's floor: nothing was written (507).
    #[error("{0}")]
    DiskFull(String),
    /// A step failed; the message is the build's `reason`.
    #[error("{0}")]
    Step(String),
    /// The catalog, the store or the backend failed.
    #[error("{0}")]
    Internal(String),
}

impl From<firkin_image::catalog::CatalogError> for BuildError {
    fn from(error: firkin_image::catalog::CatalogError) -> Self {
        use firkin_image::catalog::CatalogError;
        match error {
            CatalogError::NotFound(message) => Self::NotFound(message),
            CatalogError::BadName(bad) => Self::BadRequest(bad.to_string()),
            CatalogError::Conflict(message) => Self::NotWaiting(message),
            other => Self::Internal(other.to_string()),
        }
    }
}
