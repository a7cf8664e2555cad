//! The profile run through a small classic-BPF interpreter, as the kernel would run it on a
//! call: every filter evaluated, the most severe answer taken. (The sandbox tests in
//! `tests/seccomp.rs` check the same from inside a real sandbox.)

use super::abi::{AUDIT_ARCH_I386, NATIVE_ARCH, X32_SYSCALL_BIT};
use super::*;

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM.unsigned_abs();
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS.unsigned_abs();

/// A `struct seccomp_data`: number, arch, instruction pointer, six arguments.
struct Call {
    nr: u32,
    arch: u32,
    args: [u64; 6],
}

impl Call {
    fn native(nr: libc::c_long) -> Self {
        Self::raw(u32::try_from(nr).unwrap(), NATIVE_ARCH, 0)
    }

    fn raw(nr: u32, arch: u32, arg0: u64) -> Self {
        Self {
            nr,
            arch,
            args: [arg0, 0, 0, 0, 0, 0],
        }
    }

    fn with_arg0(nr: libc::c_long, arg0: u64) -> Self {
        Self::raw(u32::try_from(nr).unwrap(), NATIVE_ARCH, arg0)
    }

    /// The 32-bit word at `offset` of the structure (little-endian, as on x86-64 and arm64).
    fn word(&self, offset: u32) -> u32 {
        match offset {
            0 => self.nr,
            4 => self.arch,
            8..=15 => 0,
            16..=63 => {
                let arg = self.args[(offset as usize - 16) / 8];
                if offset.is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("load beyond seccomp_data at {offset}"),
        }
    }
}

/// One filter's answer to `call`; panics on an instruction the kernel would reject.
fn run(program: &[seccompiler::sock_filter], call: &Call) -> u32 {
    let (mut acc, mut pc) = (0_u32, 0_usize);
    loop {
        let insn = &program[pc];
        pc += 1;
        let (jt, jf) = (usize::from(insn.jt), usize::from(insn.jf));
        let mut branch = |taken: bool| pc += if taken { jt } else { jf };
        match insn.code {
            0x20 => acc = call.word(insn.k),
            0x54 => acc &= insn.k,
            0x05 => pc += insn.k as usize,
            0x15 => branch(acc == insn.k),
            0x25 => branch(acc > insn.k),
            0x35 => branch(acc >= insn.k),
            0x45 => branch(acc & insn.k != 0),
            0x06 => return insn.k,
            code => panic!("unexpected BPF opcode {code:#x}"),
        }
    }
}

/// The profile's answer: the most severe action (the kernel compares the action part as a
/// signed number); on a tie the most recently installed filter's data.
fn verdict(call: &Call) -> u32 {
    let programs = default_profile().unwrap();
    programs
        .iter()
        .map(|program| run(program, call))
        .rev()
        .min_by_key(|ret| (ret & libc::SECCOMP_RET_ACTION_FULL) as i32)
        .unwrap()
}

#[test]
fn ordinary_calls_are_allowed() {
    for nr in [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_openat,
        libc::SYS_execve,
        libc::SYS_wait4,
        libc::SYS_ptrace,
        libc::SYS_socket,
        libc::SYS_epoll_create1,
        libc::SYS_io_submit,
        libc::SYS_seccomp,
    ] {
        assert_eq!(verdict(&Call::native(nr)), ALLOW, "syscall {nr}");
    }
}

#[test]
fn the_deny_list_answers_eperm() {
    for nr in REFUSED {
        assert_eq!(verdict(&Call::native(*nr)), EPERM, "syscall {nr}");
    }
    for nr in [
        libc::SYS_mount,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_keyctl,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
    ] {
        assert_eq!(verdict(&Call::native(nr)), EPERM, "syscall {nr}");
    }
}

#[test]
fn clone_is_refused_only_with_a_namespace_flag() {
    let fork = u64::try_from(libc::SIGCHLD).unwrap();
    let thread = [
        libc::CLONE_VM,
        libc::CLONE_FS,
        libc::CLONE_FILES,
        libc::CLONE_SIGHAND,
        libc::CLONE_THREAD,
        libc::CLONE_SYSVSEM,
        libc::CLONE_SETTLS,
        libc::CLONE_PARENT_SETTID,
        libc::CLONE_CHILD_CLEARTID,
    ]
    .iter()
    .fold(0_u64, |flags, flag| flags | u64::from(flag.unsigned_abs()));
    for flags in [fork, thread, fork | (0xffff_ffff << 32)] {
        let call = Call::with_arg0(libc::SYS_clone, flags);
        assert_eq!(verdict(&call), ALLOW, "clone({flags:#x})");
    }
    for flag in NAMESPACE_FLAGS {
        let flag = u64::from(flag.unsigned_abs());
        for flags in [flag, flag | fork, flag | thread] {
            let call = Call::with_arg0(libc::SYS_clone, flags);
            assert_eq!(verdict(&call), EPERM, "clone({flags:#x})");
        }
    }
}

#[test]
fn clone3_and_io_uring_answer_enosys() {
    for nr in [
        libc::SYS_clone3,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        assert_eq!(verdict(&Call::native(nr)), ENOSYS, "syscall {nr}");
    }
}

#[test]
fn the_i386_entry_kills_the_process() {
    // i386 numbers: 1 exit, 20 getpid, 310 unshare; 0 and a high one for good measure.
    for nr in [0, 1, 20, 310, 0x4000_0000] {
        let call = Call::raw(nr, AUDIT_ARCH_I386, 0);
        assert_eq!(verdict(&call), KILL_PROCESS, "i386 syscall {nr}");
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn x32_calls_kill_the_process() {
    for nr in [
        libc::SYS_read,
        libc::SYS_getpid,
        libc::SYS_unshare,
        libc::SYS_io_uring_setup,
        // x32-only entries start at 512.
        512,
    ] {
        let nr = X32_SYSCALL_BIT | u32::try_from(nr).unwrap();
        assert_eq!(
            verdict(&Call::raw(nr, NATIVE_ARCH, 0)),
            KILL_PROCESS,
            "x32 {nr:#x}"
        );
    }
}

#[test]
fn the_skipped_call_of_a_tracer_is_not_killed() {
    // A tracer sets the number to -1 to skip a call; the kernel answers ENOSYS itself.
    assert_eq!(verdict(&Call::raw(u32::MAX, NATIVE_ARCH, 0)), ALLOW);
}
