//! The raw system calls the sandbox launcher needs that are `unsafe` to call in general. A
//! wrapper that is sound whatever its caller does is a safe `fn`; one that is sound only
//! under a condition its caller must uphold is an `unsafe fn` whose `# Safety` section
//! states it.
#![allow(unsafe_code)]

use std::io;

use rustix::thread::UnshareFlags;

/// `unshare(flags)`.
///
/// Sound for every flag but `CLONE_FILES` (whose fd-table split other threads could observe);
/// this wrapper refuses that one.
///
/// # Errors
///
/// The kernel's refusal.
pub fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::other(
            "unshare(CLONE_FILES) is not supported here",
        ));
    }
    // SAFETY: without CLONE_FILES no file descriptor table is split, which is the hazard
    // `unshare_unsafe` documents.
    unsafe { rustix::thread::unshare_unsafe(flags)? };
    Ok(())
}

/// Which side of [`fork_single_threaded`] this is.
#[derive(Debug)]
pub enum Forked {
    /// The original process; the child has this pid.
    Parent(i32),
    /// The new process.
    Child,
}

/// `fork(2)`, for a process that has only one thread (the sandbox init helper): the child
/// then holds no lock another thread could own.
///
/// # Safety
///
/// The calling process must have exactly one thread: the child gets a copy of the caller's
/// thread only, so a lock (the allocator's, stdio's, ...) held by any other thread at the
/// fork would stay locked forever in the child, and the child could go on to run any code.
///
/// The contract is the caller's to keep, so a call outside `unsafe` does not compile:
///
/// ```compile_fail,E0133
/// let _ = firkin_linux::sys::fork_single_threaded();
/// ```
///
/// # Errors
///
/// When the kernel refuses.
pub unsafe fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees this process has one thread (see above), so the child's
    // copy of the address space holds no lock of a thread that does not exist in it.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Bring the loopback interface of the current network namespace up.
///
/// # Errors
///
/// When the socket or the ioctl fails.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2); the fd is closed below on every path.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `request` is a zeroed ifreq with a NUL-terminated name, valid for both ioctls.
    let result = unsafe {
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        if libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) < 0 {
            Err(io::Error::last_os_error())
        } else {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    };
    // SAFETY: closing the fd this function opened.
    unsafe { libc::close(socket) };
    result
}

/// Install `program` as a seccomp filter on the calling thread (and the processes it execs),
/// without setting `no_new_privs`: the caller must hold `CAP_SYS_ADMIN` in its user
/// namespace (PID 1 of a sandbox does).
///
/// # Errors
///
/// When the kernel rejects the program or the caller lacks the capability.
pub fn install_seccomp(program: &[seccompiler::sock_filter]) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::other("seccomp program too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut().cast::<libc::sock_filter>(),
    };
    // SAFETY: seccompiler's `sock_filter` is `#[repr(C)]` with the kernel's layout (u16, u8,
    // u8, u32), identical to libc's; `fprog` points at `program`, which outlives the call;
    // the kernel copies the program before returning.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fork a child that moves into a new, empty user namespace and then waits: the caller
/// writes its id maps, opens `/proc/<pid>/ns/user`, and closes `go` to let it exit. The
/// child signals readiness by writing one byte to `ready`. Returns the child's pid.
///
/// Sound from a multi-threaded process: the child makes only raw system calls (unshare,
/// write, read, _exit), which are async-signal-safe, and never returns into Rust code.
///
/// # Errors
///
/// When the kernel refuses the fork.
pub fn fork_user_namespace_holder(
    ready: std::os::fd::BorrowedFd<'_>,
    go: std::os::fd::BorrowedFd<'_>,
) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let (ready, go) = (ready.as_raw_fd(), go.as_raw_fd());
    // SAFETY: see above; the child touches only the two fds, a stack byte, and exits with
    // `_exit`, so no destructor, lock or allocator of the parent's threads is involved.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        // SAFETY: in the child, only async-signal-safe raw system calls on the two fds and a
        // stack byte, then `_exit`.
        0 => unsafe {
            let status = if libc::unshare(libc::CLONE_NEWUSER) == 0
                && libc::write(ready, c"u".as_ptr().cast(), 1) == 1
            {
                let mut byte = 0_u8;
                // Blocks until the parent writes (the child's own copy of the write end
                // keeps EOF from ever coming).
                libc::read(go, (&raw mut byte).cast(), 1);
                0
            } else {
                1
            };
            libc::_exit(status)
        },
        pid => Ok(pid),
    }
}

/// `mount_setattr(mount, "", AT_EMPTY_PATH | AT_RECURSIVE)` setting `MOUNT_ATTR_IDMAP` with
/// the user namespace `userns` (plus `MOUNT_ATTR_RDONLY` when `read_only`) on the detached
/// mount tree `mount` (from `open_tree(OPEN_TREE_CLONE)`).
///
/// # Errors
///
/// When the kernel refuses (no idmapped mount support for the file system, not root...).
pub fn mount_setattr_idmap(
    mount: std::os::fd::BorrowedFd<'_>,
    userns: std::os::fd::BorrowedFd<'_>,
    read_only: bool,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut attr_set = libc::MOUNT_ATTR_IDMAP;
    if read_only {
        attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let attr = libc::mount_attr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: u64::try_from(userns.as_raw_fd()).map_err(io::Error::other)?,
    };
    // SAFETY: `attr` is a valid `struct mount_attr` (VER0 layout) that outlives the call, its
    // size is passed alongside, and the path is a NUL-terminated empty string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Undoes `/proc/<pid>/mountinfo`'s octal escapes in one field (`\040` is a space, `\134` a
/// backslash); the bytes of the path or option it names.
#[must_use]
pub fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            let v = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// `binary` in `PATH` or, where `PATH` lacks them (a daemon started with a user's `PATH`), in
/// the usual system directories.
pub(crate) fn find_in_path(binary: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|p| p.is_file())
}
