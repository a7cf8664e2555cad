//! The init helper's side of a launch (see the [module docs](super)). Runs in
//! `firkin-sandbox-init`, a fresh single-threaded process started by the driver as host root.
// Forking, and adopting the pipes on stdin and stdout: sound only under the contract
// `main_from_env` states.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::{CapabilitySet, LinkNameSpaceType, UnshareFlags};

use crate::sandbox::InitSpec;
use crate::sandbox::cgroup_view::CgroupBind;
use crate::sys::{self, Forked};

/// Run the helper: read the spec from the environment and the driver's pipes from stdin and
/// stdout, build the sandbox, and never return on success (the helper exits after the fork;
/// PID 1 becomes envd).
///
/// # Safety
///
/// Call it first thing in `main` of a process the driver started as the init helper:
/// - the process must have exactly one thread (it forks, and the child runs on);
/// - its stdin and stdout must be the driver's go and status pipes, used by nothing else in
///   the process: the helper takes them over, and points both streams at `/dev/null` for
///   what it starts.
///
/// The contract is the caller's to keep, so a call outside `unsafe` does not compile:
///
/// ```compile_fail,E0133
/// firkin_linux::sandbox::init::main_from_env();
/// ```
pub unsafe fn main_from_env() -> ! {
    let (mut status, go) = match take_pipes() {
        Ok(pipes) => pipes,
        Err(error) => {
            eprintln!("firkin-sandbox-init: no status and go pipes: {error}");
            std::process::exit(2);
        }
    };
    // SAFETY: the caller guarantees a single thread.
    let error = match unsafe { run(&mut status, go) } {
        Ok(never) => match never {},
        Err(error) => error,
    };
    let _ = report(
        &mut status,
        &format!("err {}", error.to_string().replace('\n', " ")),
    );
    std::process::exit(1);
}

enum Never {}

/// One status line in one write: PID 1 and envd share the pipe once PID 1 exists, and a pipe
/// keeps a write of up to 4 KiB whole, where `writeln!` may split a line between writes.
fn report(status: &mut File, line: &str) -> io::Result<()> {
    status.write_all(format!("{line}\n").as_bytes())
}

/// The status pipe (stdout) and the go pipe (stdin), moved off the standard streams, which
/// then read and write `/dev/null`, as envd's do.
fn take_pipes() -> io::Result<(File, BufReader<File>)> {
    let status = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 3)?;
    let go = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdin(), 3)?;
    let null = File::options().read(true).write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    rustix::stdio::dup2_stdout(&null)?;
    Ok((File::from(status), BufReader::new(File::from(go))))
}

/// Join the sandbox's cgroups ("0" is the writing process) before any namespace exists, so
/// that the cgroup namespace's root is the sandbox's cgroup; then leave the daemon's session,
/// so that terminal signals to the daemon do not reach the sandbox.
fn join_cgroups_and_leave_session() -> io::Result<()> {
    let procs: Vec<PathBuf> = serde_json::from_str(
        &std::env::var(InitSpec::ENV_CGROUP_PROCS)
            .map_err(|_| io::Error::other("no cgroups named"))?,
    )
    .map_err(|error| io::Error::other(format!("bad cgroup list: {error}")))?;
    for path in &procs {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut file| file.write_all(b"0"))
            .map_err(context(format!("join {}", path.display())))?;
    }
    rustix::process::setsid().map_err(|e| context("setsid")(e.into()))?;
    Ok(())
}

/// Waits for the driver's go line (`go`, then envd's access token if any; see
/// `spawn::go_line`); returns a pipe holding the token, for envd to read to its end.
fn wait_for_go(go: &mut BufReader<File>) -> io::Result<Option<OwnedFd>> {
    let mut line = String::new();
    if go.read_line(&mut line)? == 0 {
        return Err(io::Error::other(
            "the driver went away before writing the id maps",
        ));
    }
    let token = match line.trim_end_matches('\n').split_once(' ') {
        None if line == "go\n" => return Ok(None),
        Some(("go", token)) if !token.is_empty() => token,
        _ => return Err(io::Error::other("bad go line from the driver")),
    };
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    // A token fits the pipe's buffer (64 KiB): the write never waits for a reader.
    File::from(write).write_all(token.as_bytes())?;
    Ok(Some(read))
}

fn context(what: impl Into<String>) -> impl FnOnce(io::Error) -> io::Error {
    let what = what.into();
    move |error| io::Error::new(error.kind(), format!("{what}: {error}"))
}

/// The helper's steps (see the module docs).
///
/// # Safety
///
/// As [`main_from_env`]: one thread only; call it once.
unsafe fn run(status: &mut File, mut go: BufReader<File>) -> io::Result<Never> {
    let spec: InitSpec = serde_json::from_str(
        &std::env::var(InitSpec::ENV_SPEC).map_err(|_| io::Error::other("no spec"))?,
    )
    .map_err(|error| io::Error::other(format!("bad spec: {error}")))?;
    join_cgroups_and_leave_session()?;

    // 1. The network namespace, while still host root in the initial user namespace.
    match &spec.netns {
        Some(path) => {
            let netns = File::open(path).map_err(context(format!("open {}", path.display())))?;
            rustix::thread::move_into_link_name_space(
                netns.as_fd_ref(),
                Some(LinkNameSpaceType::Network),
            )
            .map_err(|e| context("join the slot's network namespace")(e.into()))?;
        }
        None => {
            sys::unshare(UnshareFlags::NEWNET).map_err(context("unshare the network namespace"))?;
            // Now, while host root: the namespace belongs to the initial user namespace, so
            // the sandbox's root will have no CAP_NET_ADMIN in it.
            sys::loopback_up().map_err(context("bring lo up"))?;
        }
    }

    // The sandbox's cgroups (joined before the exec), while /proc/self/cgroup still names
    // them: PID 1 shows them at the roots of /sys/fs/cgroup.
    let read = |path: &str| std::fs::read_to_string(path).map_err(context(format!("read {path}")));
    let cgroup_binds = crate::sandbox::cgroup_view::binds(
        &read("/proc/self/cgroup")?,
        &read("/proc/self/mountinfo")?,
    );

    // 2. The other namespaces; the driver writes the id maps from outside.
    sys::unshare(
        UnshareFlags::NEWUSER
            | UnshareFlags::NEWNS
            | UnshareFlags::NEWUTS
            | UnshareFlags::NEWIPC
            | UnshareFlags::NEWCGROUP,
    )
    .map_err(context("unshare the sandbox namespaces"))?;
    report(status, "maps")?;
    let token = wait_for_go(&mut go)?;

    // 3. Root of the new user namespace: without this the helper keeps an unmapped identity
    //    and files it creates belong to host root.
    rustix::thread::set_thread_res_gid(Some(gid0()), Some(gid0()), Some(gid0()))
        .map_err(|e| context("setresgid(0)")(e.into()))?;
    rustix::thread::set_thread_groups(&[]).map_err(|e| context("setgroups")(e.into()))?;
    rustix::thread::set_thread_res_uid(Some(uid0()), Some(uid0()), Some(uid0()))
        .map_err(|e| context("setresuid(0)")(e.into()))?;
    rustix::system::sethostname(spec.hostname.as_bytes())
        .map_err(|e| context("sethostname")(e.into()))?;
    mount_root(&spec)?;

    // 4. The PID namespace applies to children: fork once, report PID 1, and leave.
    sys::unshare(UnshareFlags::NEWPID).map_err(context("unshare the PID namespace"))?;
    // SAFETY: the caller guarantees a single thread, and nothing above started one.
    match unsafe { sys::fork_single_threaded() }.map_err(context("fork PID 1"))? {
        Forked::Parent(pid) => {
            report(status, &format!("pid {pid}"))?;
            std::process::exit(0);
        }
        Forked::Child => become_pid1(&spec, &cgroup_binds, token, status),
    }
}

trait AsFdRef {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_>;
}

impl AsFdRef for File {
    fn as_fd_ref(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(self)
    }
}

fn uid0() -> rustix::process::Uid {
    rustix::process::Uid::ROOT
}

fn gid0() -> rustix::process::Gid {
    rustix::process::Gid::ROOT
}

fn mount_err(what: String) -> impl FnOnce(rustix::io::Errno) -> io::Error {
    move |errno| io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The overlay root and the read-only host layers, in this mount namespace only.
fn mount_root(spec: &InitSpec) -> io::Result<()> {
    // Nothing mounted here may propagate back to the host.
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::REC | MountPropagationFlags::PRIVATE,
    )
    .map_err(mount_err("make / private".into()))?;
    let lower = spec
        .lower_dirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    mount_overlay(&lower, &spec.upper_dir, &spec.work_dir, &spec.root_dir)?;
    for layer in &spec.layers {
        let target = inside(&spec.root_dir, &layer.target);
        match &layer.overlay {
            Some((upper, work)) => {
                let lower = layer
                    .extra_lowers
                    .iter()
                    .chain(std::iter::once(&layer.source))
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":");
                mount_overlay(&lower, upper, work, &target)?;
            }
            None => {
                rustix::mount::mount_bind_recursive(&layer.source, &target).map_err(mount_err(
                    format!("bind {} at {}", layer.source.display(), target.display()),
                ))?;
                rustix::mount::mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "")
                    .map_err(mount_err(format!("make {} read-only", target.display())))?;
            }
        }
    }
    Ok(())
}

fn mount_overlay(lower: &str, upper: &Path, work: &Path, target: &Path) -> io::Result<()> {
    // `userxattr`: an overlay mounted inside a user namespace keeps its metadata in user.*
    // xattrs (without it, deleting a lower directory fails with EIO).
    let options = format!(
        "lowerdir={lower},upperdir={},workdir={},userxattr",
        upper.display(),
        work.display()
    );
    let options = std::ffi::CString::new(options).map_err(io::Error::other)?;
    rustix::mount::mount(
        "overlay",
        target,
        "overlay",
        MountFlags::empty(),
        options.as_c_str(),
    )
    .map_err(mount_err(format!(
        "mount an overlay at {}",
        target.display()
    )))
}

/// PID 1: the kernel file systems, `/dev`, envd, `pivot_root`, exec. Failures go to the
/// status pipe (the driver waits there for envd's `ready`) and to stderr.
fn become_pid1(
    spec: &InitSpec,
    cgroup_binds: &[CgroupBind],
    token: Option<OwnedFd>,
    status: &mut File,
) -> ! {
    let error = match pid1_setup(spec, cgroup_binds, token, status) {
        Ok(never) => match never {},
        Err(error) => error,
    };
    eprintln!("firkin-sandbox-init: PID 1: {error}");
    let _ = report(
        status,
        &format!("err PID 1: {}", error.to_string().replace('\n', " ")),
    );
    std::process::exit(1);
}

fn pid1_setup(
    spec: &InitSpec,
    cgroup_binds: &[CgroupBind],
    token: Option<OwnedFd>,
    status: &File,
) -> io::Result<Never> {
    let root = &spec.root_dir;
    let at = |path: &str| inside(root, Path::new(path));
    let nosuid_nodev_noexec = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    ensure_dir(&at("/proc"))?;
    rustix::mount::mount("proc", at("/proc"), "proc", nosuid_nodev_noexec, None)
        .map_err(mount_err("mount /proc".into()))?;
    // sysfs cannot be mounted from a user namespace that does not own the network
    // namespace: bind the host's, read-only.
    ensure_dir(&at("/sys"))?;
    rustix::mount::mount_bind_recursive("/sys", at("/sys"))
        .map_err(mount_err("bind /sys".into()))?;
    rustix::mount::mount_remount(at("/sys"), MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(mount_err("make /sys read-only".into()))?;
    for bind in cgroup_binds {
        let target = inside(root, &bind.mount_point);
        let source = inside(&target, &bind.cgroup);
        rustix::mount::mount_bind(&source, &target).map_err(mount_err(format!(
            "bind the sandbox's cgroup {} at {}",
            bind.cgroup.display(),
            bind.mount_point.display()
        )))?;
        rustix::mount::mount_remount(&target, MountFlags::BIND | MountFlags::RDONLY, "").map_err(
            mount_err(format!("make {} read-only", bind.mount_point.display())),
        )?;
    }
    mount_dev(root)?;
    ensure_dir(&at("/run"))?;
    rustix::mount::mount(
        "tmpfs",
        at("/run"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=755",
    )
    .map_err(mount_err("mount /run".into()))?;
    let envd = at(InitSpec::ENVD_PATH);
    ensure_dir(envd.parent().unwrap_or(root))?;
    File::create(&envd)?;
    rustix::mount::mount_bind(&spec.envd_binary, &envd).map_err(mount_err("bind envd".into()))?;
    rustix::mount::mount_remount(&envd, MountFlags::BIND | MountFlags::RDONLY, "")
        .map_err(mount_err("make envd read-only".into()))?;

    std::env::set_current_dir(root)?;
    drop_capabilities()?;
    rustix::process::pivot_root(".", ".").map_err(mount_err("pivot_root".into()))?;
    // The old root is stacked under the new one: detach it.
    rustix::mount::unmount(".", UnmountFlags::DETACH)
        .map_err(mount_err("detach the old root".into()))?;
    std::env::set_current_dir("/")?;
    if spec.no_new_privs {
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| context("set no_new_privs")(e.into()))?;
    }
    // Last, after the mounts it forbids: the filter holds for PID 1 and everything after it.
    let profile = crate::seccomp::default_profile().map_err(io::Error::other)?;
    for program in &profile {
        sys::install_seccomp(program).map_err(context("install the seccomp profile"))?;
    }

    // The token's pipe stays open across the exec; envd reads it and closes it before
    // anything else.
    let token_fd = match &token {
        Some(fd) => {
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                .map_err(|e| context("pass envd its token")(e.into()))?;
            Some(["--access-token-fd".to_owned(), fd.as_raw_fd().to_string()])
        }
        None => None,
    };
    // envd says `ready` on the status pipe once it serves, and closes it.
    rustix::io::fcntl_setfd(status, rustix::io::FdFlags::empty())
        .map_err(|e| context("pass envd the status pipe")(e.into()))?;
    let ready_fd = ["--ready-fd".to_owned(), status.as_raw_fd().to_string()];
    let error = std::process::Command::new(InitSpec::ENVD_PATH)
        .args(&spec.envd_args)
        .args(token_fd.iter().flatten())
        .args(ready_fd)
        .env_clear()
        .envs(spec.envd_env.iter().map(|(k, v)| (k, v)))
        .exec();
    Err(context(format!("exec {}", InitSpec::ENVD_PATH))(error))
}

/// What root inside a sandbox keeps: the container-default set (as Docker's and runc's
/// defaults). Everything else (mounting, raw I/O, tracing, module loading, network admin,
/// time, ...) leaves the bounding set, so no process in the sandbox can ever hold it.
fn kept_capabilities() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FOWNER
        | CapabilitySet::FSETID
        | CapabilitySet::KILL
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::NET_RAW
        | CapabilitySet::SYS_CHROOT
        | CapabilitySet::MKNOD
        | CapabilitySet::AUDIT_WRITE
        | CapabilitySet::SETFCAP
}

fn drop_capabilities() -> io::Result<()> {
    let kept = kept_capabilities();
    for capability in CapabilitySet::all()
        .iter()
        .filter(|cap| !kept.contains(*cap))
    {
        match rustix::thread::remove_capability_from_bounding_set(capability) {
            // A capability this kernel does not know is not held either.
            Ok(()) | Err(rustix::io::Errno::INVAL) => {}
            Err(errno) => {
                return Err(mount_err(format!(
                    "drop {capability:?} from the bounding set"
                ))(errno));
            }
        }
    }
    Ok(())
}

fn ensure_dir(path: &Path) -> io::Result<()> {
    std::fs::create_dir_all(path).map_err(context(format!("create {}", path.display())))
}

/// A minimal `/dev`: the host's harmless character devices bound in, a private `devpts`,
/// `/dev/shm`, and the usual links.
fn mount_dev(root: &Path) -> io::Result<()> {
    let dev = inside(root, Path::new("/dev"));
    ensure_dir(&dev)?;
    rustix::mount::mount(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"mode=755,size=65536k",
    )
    .map_err(mount_err("mount /dev".into()))?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        File::create(&target)?;
        rustix::mount::mount_bind(Path::new("/dev").join(name), &target)
            .map_err(mount_err(format!("bind /dev/{name}")))?;
    }
    ensure_dir(&dev.join("pts"))?;
    rustix::mount::mount(
        "devpts",
        dev.join("pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"newinstance,ptmxmode=0666,mode=620",
    )
    .map_err(mount_err("mount /dev/pts".into()))?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx"))?;
    ensure_dir(&dev.join("shm"))?;
    rustix::mount::mount(
        "tmpfs",
        dev.join("shm"),
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=1777",
    )
    .map_err(mount_err("mount /dev/shm".into()))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))?;
    }
    Ok(())
}
