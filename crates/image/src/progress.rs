//! What a pull reports as it goes, for a progress bar: the plan, the bytes as they arrive,
//! each layer as it lands in the store.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// One step of a pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullProgress {
    /// The manifest is read: this many layers to download (the store has the others), this
    /// many bytes in all.
    Planned {
        /// Layers to download.
        layers: usize,
        /// Their size, as the manifest gives it.
        bytes: u64,
    },
    /// Bytes of a layer arrived.
    Downloaded(u64),
    /// A layer is in the store (downloaded, checked and unpacked).
    Stored,
}

/// Where a pull reports its [`PullProgress`].
#[derive(Clone)]
pub struct ProgressFn(pub Arc<dyn Fn(PullProgress) + Send + Sync>);

impl std::fmt::Debug for ProgressFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressFn(..)")
    }
}

impl ProgressFn {
    pub(crate) fn report(progress: Option<&Self>, event: PullProgress) {
        if let Some(progress) = progress {
            (progress.0)(event);
        }
    }
}

/// A writer that reports what goes through it as [`PullProgress::Downloaded`].
pub(crate) struct Counting<W> {
    pub(crate) inner: W,
    pub(crate) progress: Option<ProgressFn>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            ProgressFn::report(self.progress.as_ref(), PullProgress::Downloaded(*n as u64));
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
