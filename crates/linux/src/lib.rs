//! firkin-linux: the Linux substrate of firkin.
//!
//! Every sandbox is a set of fresh Linux namespaces (user, mount, PID, network, UTS, IPC,
//! cgroup) with its own overlay root filesystem, cgroup limits and network slot, running
//! `firkin-envd` as PID 1. It implements `firkin-single-node`'s `RuntimeDriver`. It must not
//! own E2B concepts or HTTP: those belong to `firkin-e2b`.

pub mod cgroup;
pub mod disk;
pub mod doctor;
pub mod driver;
pub mod envd_probe;
pub mod idmap;
pub mod loop_device;
pub mod net;
pub mod prepared;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod state_dir;
pub mod sys;
mod template_pools;
pub mod warm;
