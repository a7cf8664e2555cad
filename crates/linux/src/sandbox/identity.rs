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
/// that root were `/`, never following a link out of it. The hostname is set by a short-lived
/// thread that joins the sandbox's UTS namespace (a thread may; the daemon's other threads
/// keep the host's).
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
    let uts = File::open(format!("/proc/{pid1}/ns/uts"))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                rustix::thread::move_into_link_name_space(
                    uts.as_fd(),
                    Some(LinkNameSpaceType::HostNameAndNISDomainName),
                )?;
                rustix::system::sethostname(hostname.as_bytes())
            })
            .join()
            .map_err(|_| io::Error::other("the hostname thread panicked"))?
            .map_err(io::Error::from)
    })
}
