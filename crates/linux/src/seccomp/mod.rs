//! The default seccomp profile of a sandbox.
//!
//! Three filters, installed by PID 1 before it execs envd, so that every process of the
//! sandbox (envd, its server half, and everything they start) inherits all three; a
//! process cannot remove a filter, only add its own.
//!
//! 1. The ABI guard ([`abi`]): any call through the i386 entry (`int 0x80`) or the x32 ABI
//!    kills the process (`SECCOMP_RET_KILL_PROCESS`), so the deny-list below, written in
//!    native call numbers, cannot be walked around by switching ABI.
//! 2. The deny-list, EPERM: allow by default, refuse what an agent's code never needs and
//!    what widens the kernel's attack surface: module loading, kexec, mounting and the new
//!    mount API, swap, reboot, clock changes, keyrings, BPF, perf, userfaultfd, file
//!    handles, raw port I/O, and new namespaces (`unshare`, `setns`, and `clone` with any
//!    namespace flag).
//! 3. ENOSYS for calls a program is expected to probe and fall back from: `clone3`, because
//!    its flags live in memory a filter cannot read (libc then falls back to `clone`, which
//!    is filtered), and io_uring (`io_uring_setup`, `io_uring_enter`, `io_uring_register`),
//!    a large and often-exploited kernel surface that bypasses the per-call filtering above
//!    (its operations are not system calls). ENOSYS rather than EPERM because "this kernel
//!    has no io_uring" is the answer libuv (Node.js), liburing users and Rust runtimes
//!    already handle by falling back to epoll and threads; EPERM reads as a configuration
//!    error to some of them. gVisor answers the same.
//!
//! `ptrace` stays allowed so debuggers work on the sandbox's own processes (the capability
//! bounding set already denies tracing anything else).
//!
//! The filters are installed without `no_new_privs` (root of the sandbox's user namespace
//! may), so `sudo` keeps working; a template can ask for `no_new_privs` as well.

mod abi;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the profile could not be built.
#[derive(Debug, thiserror::Error)]
#[error("build the seccomp profile")]
pub struct SeccompError(#[source] seccompiler::BackendError);

/// Syscalls refused outright.
const REFUSED: &[libc::c_long] = &[
    libc::SYS_acct,
    libc::SYS_add_key,
    libc::SYS_bpf,
    libc::SYS_clock_adjtime,
    libc::SYS_clock_settime,
    libc::SYS_settimeofday,
    libc::SYS_delete_module,
    libc::SYS_finit_module,
    libc::SYS_init_module,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_kexec_file_load,
    libc::SYS_kexec_load,
    libc::SYS_keyctl,
    libc::SYS_request_key,
    libc::SYS_lookup_dcookie,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_pivot_root,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_nfsservctl,
    libc::SYS_perf_event_open,
    libc::SYS_quotactl,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_syslog,
    libc::SYS_sysfs,
    libc::SYS__sysctl,
    libc::SYS_uselib,
    libc::SYS_userfaultfd,
    libc::SYS_ustat,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_vhangup,
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Syscalls answered ENOSYS: see the module docs.
const NOT_IMPLEMENTED: &[libc::c_long] = &[
    libc::SYS_clone3,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

/// The profile as BPF programs (the ABI guard, the EPERM deny-list, the ENOSYS list), to be
/// installed in order.
///
/// # Errors
///
/// Only if a rule is malformed (a bug: the tests build it).
pub fn default_profile() -> Result<Vec<BpfProgram>, SeccompError> {
    let mut refused: BTreeMap<i64, Vec<SeccompRule>> = REFUSED
        .iter()
        .map(|syscall| (*syscall, Vec::new()))
        .collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = u64::from(flag.unsigned_abs());
            SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .and_then(|condition| SeccompRule::new(vec![condition]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(SeccompError)?;
    refused.insert(libc::SYS_clone, clone_rules);
    let eperm = SeccompFilter::new(
        refused,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM.unsigned_abs()),
        arch(),
    )
    .map_err(SeccompError)?;
    let enosys = SeccompFilter::new(
        NOT_IMPLEMENTED
            .iter()
            .map(|syscall| (*syscall, Vec::new()))
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        arch(),
    )
    .map_err(SeccompError)?;
    let mut programs = vec![abi::guard()];
    for filter in [eperm, enosys] {
        programs.push(BpfProgram::try_from(filter).map_err(SeccompError)?);
    }
    Ok(programs)
}
