//! `firkin-image`: the image and template store's bottom layer.
//!
//! An OCI image is a stack of layers, each a tar archive (plain, gzip or zstd) of the files it
//! adds, changes or deletes. This crate unpacks a layer into a directory that overlayfs can
//! use as a lower layer, and keeps unpacked layers in a store addressed by their content
//! (the digest of the uncompressed tar, the image config's `diff_id`), so that templates
//! sharing a base share its layers on disk.
//!
//! Unpacking treats the archive as hostile ([`unpack`]): no entry may write outside the layer
//! directory, through a symlink or a `..`, or by a hard link to a file outside it; device
//! nodes are skipped; ownership is moved into the sandboxes' id range; the archive's digests
//! are checked before the layer becomes visible, and a layer is visible whole or not at all
//! ([`LayerStore`]).
//!
//! Images come from a registry ([`pull`]), an OCI image layout directory ([`import_layout`])
//! or a `docker save` archive ([`import_docker_archive`]). Template metadata and builds come
//! on top of this: [`Templates`] keeps both and resolves names for the backend (it is a
//! [`firkin_single_node::TemplateSource`]); `firkin-linux` only mounts the directories it is
//! handed.

pub mod catalog;
pub mod digest;
mod docker_archive;
mod error;
pub mod export;
mod image;
pub mod layout;
pub mod progress;
pub mod provision;
pub mod pull;
mod source;
pub mod store;
pub mod templates;
pub mod unpack;

pub use catalog::Catalog;
pub use digest::Digest;
pub use docker_archive::import_docker_archive;
pub use error::UnpackError;
pub use image::{Image, ImageConfig, ImportError};
pub use layout::import_layout;
pub use progress::{ProgressFn, PullProgress};
pub use pull::{Credentials, PullError, PullOptions, pull};
pub use store::{Expected, LayerStore, StoredLayer};
pub use templates::{TemplateError, Templates};
pub use unpack::{IdShift, UnpackOptions, UnpackReport};
