//! Sandboxes: the launch protocol between the driver and the init helper, and what runs
//! inside before envd.
//!
//! ## Launch design
//!
//! The driver never sets a sandbox up inside a forked copy of its own multithreaded process
//! (where only async-signal-safe calls are allowed). It starts the small single-threaded
//! helper `firkin-sandbox-init` with the sandbox's [`InitSpec`] in its environment, the
//! status pipe (helper → driver) as its stdout and the go pipe (driver → helper) as its
//! stdin. With nothing to do between fork and exec, std starts it with `posix_spawn` (a
//! vfork): a fork of the daemon would copy its page tables, ~4 ms on a paravirtualised host.
//! The helper does the work in order:
//!
//! 0. take the pipes off stdin and stdout (which then are `/dev/null`), join the sandbox's
//!    cgroups, and leave the daemon's session;
//! 1. join the slot's network namespace (or make a fresh one);
//! 2. unshare the user, mount, UTS, IPC and cgroup namespaces; the driver, outside, writes
//!    the id maps (sandbox root → an unprivileged host range) — the helper says `maps` on the
//!    status pipe and waits for the go line (`go`, and envd's access token, which the
//!    helper hands envd in a pipe of its own) on the go pipe; before it, the driver sets the helper's
//!    `oom_score_adj` to -999 for envd to inherit (without `CAP_SYS_RESOURCE` it cannot, and
//!    envd instead starts its commands at 500, not 0: `--child-oom-score-adj`);
//! 3. become root of the new user namespace, mount the overlay root filesystem and the
//!    read-only host layers;
//! 4. unshare the PID namespace and fork: the child is PID 1 of the sandbox; the helper
//!    reports its host pid (`pid <n>`) and exits;
//! 5. PID 1 mounts `/proc`, `/sys` (read-only, with the sandbox's own cgroups at the roots of
//!    `/sys/fs/cgroup`: [`cgroup_view`]), a minimal `/dev`, `/run`, binds envd,
//!    `pivot_root`s into the new root and execs envd, which serves on port 49983 and, once
//!    it accepts connections, writes `ready` on the status pipe it inherited
//!    (`--ready-fd`) and closes it: [`spawn::Launched::wait_until_serving`].
//!
//! Any failure is reported as `err <message>` on the status pipe (by PID 1 too), or ends it.

pub mod cgroup_view;
pub mod identity;
pub mod init;
pub mod spawn;
pub mod spec;

pub use spec::{EnvdAccessToken, InitSpec, LayerMount};
