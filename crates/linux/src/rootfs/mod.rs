//! Root filesystems: templates (the built-in `base`) and per-sandbox overlays.
//!
//! `base` works on a fresh machine, offline: its lower layer is a small generated directory
//! (`/etc`, home directories, empty mount points, the merged-`/usr` links `/bin -> usr/bin` etc.)
//! built by [`BaseTemplate::build`] from [`HostFacts`], and the host's own `/usr` is mounted
//! read-only at `/usr` on top of it ([`mounts_for`]). No host `/etc` file reaches a sandbox
//! except the public ones in [`HOST_FILES`], `/etc/ssl/certs` and the `/etc/alternatives` links.
//!
//! What the driver does per sandbox:
//! 1. root overlay: `lowerdir=<template>/rootfs`, a private upper and work directory;
//! 2. before mounting it, write [`hosts_file`]`(id)` to `<upper>/etc/hosts` and
//!    [`hostname_file`]`(id)` to `<upper>/etc/hostname` (create `<upper>/etc` 0755, owned by the
//!    sandbox's root), so `sudo` can resolve the hostname;
//! 3. each [`MountSpec`] from [`mounts_for`], in order, after the root overlay; with an id shift,
//!    the lower must be an idmapped mount (see `LINUX-FINDINGS.md`, "sudo in base").

mod base;
mod host;
mod plan;

use std::path::{Path, PathBuf};

pub use base::{BaseTemplate, MARKER, TemplateError};
pub use host::{HOST_FILES, HostEntry, HostEntryKind, HostFacts, SSL_CERTS_DIR};
pub use plan::{
    BASE_PATH, BasePlan, Entry, EntryKind, FIRKIN_BIN, Origin, PLACEHOLDER_HOSTNAME, SHADOW_GID,
    USER_ID, hostname_file, hosts_file, resolv_conf,
};

/// A host directory the driver mounts into a sandbox built from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// The host directory.
    pub source: PathBuf,
    /// Where it goes inside the sandbox (absolute; the template has an empty directory there).
    pub target: PathBuf,
    /// Whether the host directory must stay unmodified: `true` means either a read-only bind or
    /// the read-only lower layer of an overlay with a private upper.
    pub read_only: bool,
    /// Whether the sandbox may write there through a private overlay upper (copy-up); the host
    /// directory itself is never written.
    pub overlay: bool,
    /// Whether the mount must be idmapped with the sandbox's id map when the ids are shifted, so
    /// host-root-owned files appear owned by the sandbox's root (setuid `sudo` needs that).
    pub idmap: bool,
}

/// What the driver mounts on top of the root overlay of a sandbox built from `template_dir` (a
/// directory made by [`BaseTemplate::build`]): the host's `/usr` at `/usr`, and, on a host
/// without merged `/usr`, its `/bin`, `/sbin`, `/lib*` where the template has directories
/// instead of links. Never the host's `/etc`.
pub fn mounts_for(template_dir: &Path) -> Vec<MountSpec> {
    let rootfs = template_dir.join("rootfs");
    let spec = |dir: &str, overlay: bool| MountSpec {
        source: PathBuf::from(dir),
        target: PathBuf::from(dir),
        read_only: true,
        overlay,
        idmap: true,
    };
    let mut mounts = vec![spec("/usr", true)];
    for dir in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let in_template = rootfs.join(dir.trim_start_matches('/'));
        let is_real_dir = std::fs::symlink_metadata(&in_template).is_ok_and(|m| m.is_dir());
        if is_real_dir && Path::new(dir).is_dir() {
            mounts.push(spec(dir, false));
        }
    }
    mounts
}

#[cfg(test)]
mod tests;
