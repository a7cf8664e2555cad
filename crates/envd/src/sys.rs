//! The raw system calls envd needs that safe crates do not wrap for use between `fork` and
//! `exec`. Every raw call envd makes is in this file; a wrapper that is sound only under a
//! condition its caller must uphold is an `unsafe fn` whose `# Safety` section states it.
#![allow(unsafe_code)]

use std::io;

use crate::process::OomScoreAdj;
use crate::users::User;

/// Identity, terminal and OOM settings applied in the child between `fork` and `exec`.
#[derive(Clone, Debug)]
pub struct ChildSetup {
    /// Switch to this user's uid, gid and groups (`None`: keep envd's).
    pub identity: Option<(u32, u32, Vec<libc::gid_t>)>,
    /// Start a new session and make the child's stdin (a PTY's slave side) its controlling
    /// terminal. Only the child's own stdin: any other fd number could be closed and reused
    /// by the time the child runs.
    pub stdin_is_controlling_tty: bool,
    /// The `oom_score_adj` to give the child instead of the one it inherits from envd.
    pub oom_score_adj: OomScoreAdj,
}

impl ChildSetup {
    /// Run the command as `user` (only possible, and only needed, when envd's uid differs).
    #[must_use]
    pub fn for_user(user: &User) -> Self {
        let current = rustix::process::geteuid().as_raw();
        let identity = (current != user.uid).then(|| {
            let groups = std::iter::once(user.gid)
                .chain(user.groups.iter().copied())
                .collect();
            (user.uid, user.gid, groups)
        });
        Self {
            identity,
            stdin_is_controlling_tty: false,
            oom_score_adj: OomScoreAdj::NEUTRAL,
        }
    }

    /// Install this setup as `command`'s pre-exec hook.
    pub fn install(self, command: &mut tokio::process::Command) {
        // Formatted here, before the fork: the child only copies it out.
        let (oom_text, oom_len) = self.oom_score_adj.to_ascii();
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe functions may be called. It calls only open, write, close,
        // setsid, ioctl (on the child's stdin), setgroups, setgid and setuid (all
        // async-signal-safe system calls),
        // reads data captured by value before the fork (the oom_score_adj already formatted
        // into a fixed buffer) and a static path (no allocation, no locks), and reports
        // failure through `io::Error::last_os_error`, which only reads errno.
        unsafe {
            command.pre_exec(move || {
                // `get`: no panicking path in the child (the length is at most 5 anyway).
                self.apply_in_child(oom_text.get(..oom_len).unwrap_or_default())
            });
        }
    }

    /// Runs in the forked child: see the SAFETY note in [`ChildSetup::install`].
    /// `oom_score_adj` is [`ChildSetup::oom_score_adj`] in decimal.
    fn apply_in_child(&self, oom_score_adj: &[u8]) -> io::Result<()> {
        // First, while still envd's identity: after a uid change the process is not dumpable
        // until it execs, and its /proc files belong to root.
        set_oom_score_adj(oom_score_adj);
        if self.stdin_is_controlling_tty {
            // SAFETY: plain system calls; fd 0 is the child's own stdin, set up by `Command`
            // before this hook runs.
            unsafe {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if let Some((uid, gid, groups)) = &self.identity {
            // SAFETY: `groups` is a live Vec owned by the closure; its pointer and length are
            // valid for the call. Order matters: groups and gid need the privileges that
            // setuid drops.
            unsafe {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// In a forked child: replace the `oom_score_adj` inherited from envd with `text` (decimal,
/// `--child-oom-score-adj`), so that a command that fills the sandbox's memory is the OOM
/// killer's choice rather than envd. The driver either lowers envd's to -999 and has its
/// commands go back to the neutral 0, or, where it cannot lower envd's (no
/// `CAP_SYS_RESOURCE`), leaves envd at 0 and has the commands go up (to 500). Raising needs
/// no privilege, nor does lowering down to the minimum a privileged writer set (0 unless one
/// did); a command may later lower itself down to that minimum too, so it can at best tie
/// with an envd at 0, never undercut it. Best effort: where there is no `/proc` or the write
/// is refused (envd run outside a sandbox and asked for less than its minimum), the command
/// starts with envd's value, as any child would.
///
/// Async-signal-safe: open, write and close on a static path, nothing allocated.
fn set_oom_score_adj(text: &[u8]) {
    // SAFETY: plain system calls on a static NUL-terminated path and a buffer that is valid
    // for `text.len()` bytes; the fd is our own and closed once.
    unsafe {
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            let _ = libc::write(fd, text.as_ptr().cast(), text.len());
            libc::close(fd);
        }
    }
}

/// Which side of a [`fork_before_threads`] this is.
#[derive(Debug)]
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(u32),
    /// The new process.
    Child,
}

/// `fork(2)`, before the process has started any thread.
///
/// # Safety
///
/// The calling process must have exactly one thread (no runtime, no thread started yet):
/// the child gets a copy of the caller's thread only, so a lock held by any other thread at
/// the fork would stay locked forever in the child, which goes on to run any code.
///
/// The contract is the caller's to keep, so a call outside `unsafe` does not compile:
///
/// ```compile_fail,E0133
/// let _ = firkin_envd::sys::fork_before_threads();
/// ```
///
/// # Errors
///
/// When the kernel refuses (no memory, process limit).
pub unsafe fn fork_before_threads() -> io::Result<Forked> {
    // SAFETY: the caller guarantees a single thread (see above), so no lock can be held by a
    // thread that does not exist in the child.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid.unsigned_abs())),
    }
}

/// The set of every signal.
fn full_set() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the set it is given; a zeroed sigset_t is valid input.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        set
    }
}

/// Block (`true`) or unblock every signal for this thread (and threads it starts later).
///
/// # Errors
///
/// Never in practice (`sigprocmask` fails only for invalid arguments).
pub fn block_all_signals(block: bool) -> io::Result<()> {
    let set = full_set();
    let how = if block {
        libc::SIG_BLOCK
    } else {
        libc::SIG_UNBLOCK
    };
    // SAFETY: `set` is an initialised sigset_t on our stack; the old set is not requested.
    if unsafe { libc::pthread_sigmask(how, &set, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Wait for any (blocked) signal and return its number.
///
/// # Errors
///
/// When interrupted in an unexpected way.
pub fn wait_for_signal() -> io::Result<i32> {
    let set = full_set();
    loop {
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal >= 0 {
            return Ok(signal);
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// Take ownership of `fd`, a descriptor this process inherited for one purpose (the access
/// token's pipe, `--access-token-fd`).
///
/// # Errors
///
/// `InvalidInput` for a negative number; `EBADF` when `fd` is not open.
///
/// # Safety
///
/// Nothing else in this process may own `fd` or ever close it: call this once per inherited
/// number, at startup, before anything else could have opened the same number (the returned
/// owner closes it when dropped).
pub unsafe fn take_inherited_fd(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd as _, OwnedFd};
    if fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{fd} is not a file descriptor"),
        ));
    }
    // SAFETY: `fd` is non-negative and only borrowed for this one call; fcntl(F_GETFD) on a
    // closed number fails with EBADF, which is the check.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) })?;
    // SAFETY: the number is open (checked above) and the caller promises that nothing else
    // owns or will close it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
