//! The ABI guard: a small hand-written BPF program, installed as its own filter, that kills
//! the process for any system call not made through the native 64-bit ABI.
//!
//! A seccomp filter matches system call *numbers*, and those are per ABI: the same number
//! names another call under i386, and x32 calls are the x86-64 numbers with
//! `__X32_SYSCALL_BIT` (`0x4000_0000`) set. A deny-list keyed on x86-64 numbers therefore
//! says nothing about the other two entries into the kernel:
//!
//! - **i386** (`int 0x80`, or `sysenter`/`syscall` from 32-bit code) reports a foreign
//!   `AUDIT_ARCH` (`AUDIT_ARCH_I386`). seccompiler already starts every program it builds
//!   with this arch check (kill on mismatch); this guard repeats it so that it holds on its
//!   own, whatever a future seccompiler emits.
//! - **x32** reports `AUDIT_ARCH_X86_64` like native calls, only the number differs; an x32
//!   `unshare` (`0x4000_0000 | 272`) would pass seccompiler's rules untouched on a kernel
//!   built with `CONFIG_X86_X32_ABI`. seccompiler does not check the bit; this guard does.
//!   Number `-1` (all bits set) is let through: debuggers and tracers set it to skip a call
//!   (the kernel answers ENOSYS), as libseccomp's x32 check also allows.
//!
//! The action is `SECCOMP_RET_KILL_PROCESS`: nothing an agent runs has a reason to switch
//! ABI, and a killed process (SIGSYS) is easier to notice than an error code. Every filter
//! of the profile is evaluated on every call and the kernel takes the most severe answer,
//! so this guard decides before any rule of the deny-list could allow the call.

use seccompiler::{BpfProgram, sock_filter};

/// `struct seccomp_data` offsets (`linux/seccomp.h`): the call number, then the arch.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

/// `AUDIT_ARCH_*` (`linux/audit.h`): `EM_*` | `__AUDIT_ARCH_64BIT` | `__AUDIT_ARCH_LE`.
pub(super) const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_AARCH64`.
pub(super) const AUDIT_ARCH_AARCH64: u32 = 183 | 0x8000_0000 | 0x4000_0000;
/// `AUDIT_ARCH_I386`: `EM_386` | `__AUDIT_ARCH_LE` (what `int 0x80` reports).
#[cfg(test)]
pub(super) const AUDIT_ARCH_I386: u32 = 3 | 0x4000_0000;

/// `__X32_SYSCALL_BIT` (`asm/unistd.h`).
pub(super) const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// The architecture this binary was built for, as the kernel reports it.
pub(super) const NATIVE_ARCH: u32 = if cfg!(target_arch = "aarch64") {
    AUDIT_ARCH_AARCH64
} else {
    AUDIT_ARCH_X86_64
};

// Classic BPF opcodes (`linux/bpf_common.h`; libc has the parts as `u32`, `sock_filter`
// wants `u16`).
/// `BPF_LD | BPF_W | BPF_ABS` (`BPF_LD` and `BPF_W` are 0).
const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x05 | 0x10;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const JSET_K: u16 = 0x05 | 0x40;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The guard for this build's architecture (see the module docs).
pub(super) fn guard() -> BpfProgram {
    let kill = stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS);
    let allow = stmt(RET_K, libc::SECCOMP_RET_ALLOW);
    let mut program = vec![
        stmt(LD_W_ABS, DATA_ARCH),
        // Native: skip the kill.
        jump(JEQ_K, NATIVE_ARCH, 1, 0),
        kill.clone(),
    ];
    if NATIVE_ARCH == AUDIT_ARCH_X86_64 {
        program.extend([
            stmt(LD_W_ABS, DATA_NR),
            // -1: allow (jump over the bit test and the kill).
            jump(JEQ_K, u32::MAX, 2, 0),
            // x32 bit set: fall through to the kill; clear: jump to the allow.
            jump(JSET_K, X32_SYSCALL_BIT, 0, 1),
            kill,
        ]);
    }
    program.push(allow);
    program
}
