//! Renaming a running sandbox: what a warm sandbox (see [`crate::warm`]) gets when it is
//! handed out as a sandbox id. Only for a sandbox in which nothing but envd has run yet.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::AsFd as _;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::thread::LinkNameSpaceType;

/// Sets the hostname of the sandbox whose PID 1 is host pid `pid1` to `hostname`, with its
/// `/etc/hostname` and `/etc/hosts` to match.
///
/// The files are rewritten through the sandbox's own root (`/proc/<pid1>/root`), so the
/// write goes through its overlay as any write inside would; their paths are resolved as if
/// that root were `/`, never following a link out of it. The hostname is set by the calling
/// thread from inside the sandbox's UTS namespace, which it leaves again at once (call it
/// from a blocking thread, not an async worker).
///
/// # Errors
///
/// When PID 1 is gone, a file cannot be rewritten, or the namespace cannot be joined.
pub fn set_hostname(pid1: u32, hostname: &str) -> io::Result<()> {
    let root = File::open(format!("/proc/{pid1}/root"))?;
    for (path, text) in [
        ("etc/hostname", crate::rootfs::hostname_file(hostname)),
        ("etc/hosts", crate::rootfs::hosts_file(hostname)),
    ] {
        let fd = rustix::fs::openat2(
            &root,
            path,
            OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|errno| {
            io::Error::new(
                io::Error::from(errno).kind(),
                format!("open /{path}: {errno}"),
            )
        })?;
        File::from(fd).write_all(text.as_bytes())?;
    }
    // This thread joins the sandbox's UTS namespace for the one call and goes back: a
    // thread may, and no other thread of the daemon is affected. (A thread of its own for
    // it cost 0.2-1.7 ms to start and join on this kind of host.)
    let home = File::open("/proc/thread-self/ns/uts")?;
    let sandbox = File::open(format!("/proc/{pid1}/ns/uts"))?;
    let uts = Some(LinkNameSpaceType::HostNameAndNISDomainName);
    rustix::thread::move_into_link_name_space(sandbox.as_fd(), uts)?;
    let set = rustix::system::sethostname(hostname.as_bytes());
    // Back home even if sethostname failed; failing to go back would leave this thread in a
    // sandbox's namespace, which must never go unnoticed.
    rustix::thread::move_into_link_name_space(home.as_fd(), uts).map_err(|errno| {
        io::Error::other(format!("return to the daemon's UTS namespace: {errno}"))
    })?;
    set.map_err(io::Error::from)
}
