//! Pseudo-terminals for `pty.create`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;

/// A freshly opened terminal pair.
#[derive(Debug)]
pub(super) struct PtyPair {
    /// The side envd keeps.
    pub(super) master: OwnedFd,
    /// The side the process gets as stdin, stdout, stderr and controlling terminal.
    pub(super) slave: OwnedFd,
}

/// Open a terminal pair of `cols` × `rows`.
///
/// # Errors
///
/// When the kernel has no PTYs to give.
pub(super) fn open(cols: u16, rows: u16) -> io::Result<PtyPair> {
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // TIOCGPTPEER opens the peer of *this* master, with no path lookup (no race with /dev/pts).
    let slave = rustix::pty::ioctl_tiocgptpeer(&master, OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    resize(&master, cols, rows)?;
    Ok(PtyPair { master, slave })
}

/// Set the terminal size seen by the process (it gets `SIGWINCH`).
///
/// # Errors
///
/// When the fd is not a terminal.
pub(super) fn resize(master: impl AsFd, cols: u16, rows: u16) -> io::Result<()> {
    rustix::termios::tcsetwinsize(
        master,
        Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    Ok(())
}

/// Non-blocking async reads and writes on a PTY master.
#[derive(Debug)]
pub(super) struct AsyncPty {
    fd: AsyncFd<OwnedFd>,
}

impl AsyncPty {
    /// Wrap `master` (made non-blocking).
    ///
    /// # Errors
    ///
    /// When the fd cannot be registered with the reactor.
    pub(super) fn new(master: OwnedFd) -> io::Result<Self> {
        rustix::io::ioctl_fionbio(&master, true)?;
        // `new` is deprecated because a borrowed fd could be closed under the reactor; here
        // the reactor owns the `OwnedFd`, so nothing else can close it.
        #[allow(deprecated)]
        let fd = AsyncFd::new(master)?;
        Ok(Self { fd })
    }

    /// The raw fd, for resizing.
    #[must_use]
    pub(super) fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

impl AsyncPty {
    /// Read some output; `Ok(0)` once every process holding the slave side has exited.
    ///
    /// # Errors
    ///
    /// Read errors other than the end of the terminal.
    pub(super) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|inner| {
                rustix::io::read(inner.get_ref(), &mut *buf).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => return Ok(n),
                // The slave side is closed: that is the terminal's end of output.
                Ok(Err(error)) if error.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
    }

    /// Write all of `data` (keyboard input to the process).
    ///
    /// # Errors
    ///
    /// Write errors.
    pub(super) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard
                .try_io(|inner| rustix::io::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}
