//! Why a layer was not unpacked. Whatever the error, nothing of the layer is left behind.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// An error from [`crate::unpack`] or [`crate::LayerStore`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnpackError {
    /// The stream is not a tar archive (plain, gzip or zstd), or is cut short.
    #[error("the layer is not a readable tar archive")]
    Archive(#[source] io::Error),
    /// An entry's path leaves the layer (`..`) or is not valid.
    #[error("entry {path:?}: {problem}")]
    BadPath {
        /// The path as the archive gives it.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An entry would be written through a symbolic link, or over something it may not
    /// replace.
    #[error("entry {path:?}: {problem}")]
    Refused {
        /// The entry's path.
        path: String,
        /// Why.
        problem: String,
    },
    /// The archive has more entries than [`crate::UnpackOptions::max_entries`].
    #[error("the layer has more than {limit} entries")]
    TooManyEntries {
        /// The limit.
        limit: usize,
    },
    /// The archive's digest is not the one expected.
    #[error("the layer's {which} is {actual}, not the expected {expected}")]
    DigestMismatch {
        /// `digest` (of the blob as stored) or `diff_id` (of the uncompressed tar).
        which: &'static str,
        /// What was expected.
        expected: Digest,
        /// What the archive hashed to.
        actual: Digest,
    },
    /// Writing an entry, or the store, failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
