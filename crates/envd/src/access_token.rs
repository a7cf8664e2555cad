//! Where envd's access token comes from: a file descriptor it inherits (`--access-token-fd`),
//! never its command line or environment.
//!
//! A command line is world-readable (`ps`, `/proc/<pid>/cmdline`, also inside the sandbox),
//! and an environment stays readable in `/proc/<pid>/environ` for the process's whole life
//! (removing a variable does not erase the copy the kernel shows). A pipe is read once and
//! closed: afterwards the token exists only in envd's memory. The driver writes the token
//! into a pipe, closes its end, and lets envd inherit the other.

use std::io::Read as _;
use std::os::fd::RawFd;

/// The longest token accepted (the driver's are 32 characters).
const MAX_LEN: usize = 4096;

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AccessTokenError {
    /// The descriptor is not open or could not be read.
    #[error("read the access token from fd {fd}")]
    Read {
        /// The descriptor.
        fd: RawFd,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// What was read is no usable token.
    #[error("the access token from fd {fd} {problem}")]
    Invalid {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Read the token from `fd` to its end (one trailing newline is dropped), then close `fd`
/// (stdin, stdout or stderr is pointed at `/dev/null` instead, so that the number is not
/// reused by the next file opened). Call early, before any thread or child exists: children
/// must not inherit the descriptor.
///
/// # Errors
///
/// [`AccessTokenError`] when `fd` is not open or holds no printable token of at most
/// 4096 bytes.
///
/// # Safety
///
/// `fd` must be this process's to take: nothing else owns it or will close it (see
/// [`crate::sys::take_inherited_fd`]); it is closed here.
#[allow(unsafe_code)]
pub unsafe fn read_from_fd(fd: RawFd) -> Result<String, AccessTokenError> {
    let read_error = |source| AccessTokenError::Read { fd, source };
    // SAFETY: the caller gives this function the number to own.
    let owned = unsafe { crate::sys::take_inherited_fd(fd) }.map_err(read_error)?;
    let file = std::fs::File::from(owned);
    let mut bytes = Vec::new();
    let read = file
        .take(MAX_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error);
    if fd <= 2 {
        reopen_as_dev_null(fd).map_err(read_error)?;
    }
    read?;
    parse(&bytes).map_err(|problem| AccessTokenError::Invalid { fd, problem })
}

fn parse(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > MAX_LEN {
        return Err("is longer than 4096 bytes");
    }
    let bytes = bytes
        .strip_suffix(b"\n")
        .map_or(bytes, |b| b.strip_suffix(b"\r").unwrap_or(b));
    if bytes.is_empty() {
        return Err("is empty");
    }
    // It is compared with an HTTP header value: visible ASCII only.
    if !bytes.iter().all(u8::is_ascii_graphic) {
        return Err("has characters other than visible ASCII");
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn reopen_as_dev_null(fd: RawFd) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    match fd {
        0 => rustix::stdio::dup2_stdin(&null)?,
        1 => rustix::stdio::dup2_stdout(&null)?,
        _ => rustix::stdio::dup2_stderr(&null)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_visible_ascii_with_at_most_one_trailing_newline() {
        assert_eq!(parse(b"abc123").as_deref(), Ok("abc123"));
        assert_eq!(parse(b"abc123\n").as_deref(), Ok("abc123"));
        assert_eq!(parse(b"abc123\r\n").as_deref(), Ok("abc123"));
        assert_eq!(parse(b""), Err("is empty"));
        assert_eq!(parse(b"\n"), Err("is empty"));
        assert!(parse(b"abc\n\n").is_err());
        assert!(parse(b"a b").is_err());
        assert!(parse("tökén".as_bytes()).is_err());
        assert!(parse(&[b'a'; MAX_LEN + 1]).is_err());
        assert!(parse(&[b'a'; MAX_LEN]).is_ok());
    }

    #[test]
    fn the_token_is_read_from_a_pipe() {
        use std::io::Write as _;
        use std::os::fd::IntoRawFd as _;
        let (read, write) = std::io::pipe().unwrap();
        let mut write = write;
        write.write_all(b"secret-token\n").unwrap();
        drop(write);
        let fd = read.into_raw_fd();
        // Whether it was closed is not checked here: other tests' threads may reuse the
        // number at once (the sandbox tests check envd's /proc/<pid>/fd).
        // SAFETY: `into_raw_fd` gave up the only owner of the number.
        #[allow(unsafe_code)]
        let token = unsafe { read_from_fd(fd) };
        assert_eq!(token.unwrap(), "secret-token");
    }

    #[test]
    fn a_closed_descriptor_is_a_clear_error() {
        // SAFETY: nothing owns that number (nothing has it open).
        #[allow(unsafe_code)]
        let error = unsafe { read_from_fd(1_000_000) }.unwrap_err();
        assert!(error.to_string().contains("fd 1000000"), "{error}");
    }
}
