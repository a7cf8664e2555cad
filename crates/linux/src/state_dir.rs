//! Who may enter the driver's state directory.
//!
//! It holds every sandbox's files (the overlay uppers), the tokens' database, the API key and
//! the TLS keys: no other host user may read any of it. But a sandbox's root, the shifted,
//! unprivileged host id `id_shift`, mounts its overlays from under it (the template's rootfs,
//! the sandbox's upper and work directories, the idmapped views), so it must be able to
//! search the way there. Hence:
//!
//! - the state directory: `0711` (anyone may pass through, no one else may list it);
//! - `sandboxes/`, `templates/`, `views/`, `images/` (the image store's layers):
//!   `root:<id_shift>` `0710` (the sandboxes' group may pass through, others nothing);
//! - every other entry at the top: a directory `0700`, a file `0600` (group and other
//!   permissions removed), so that whatever else lands there is private too. The daemon's
//!   `tls/` directory opens itself again (`0711`, for its public CA certificate).
//!
//! Applied at every driver start, so a state directory from an older firkin is fixed too.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

/// The directories sandbox root must pass through to reach its mounts.
pub const SANDBOX_SEARCHABLE: [&str; 4] = ["sandboxes", "templates", "views", "images"];

/// Make `state_dir` and its top-level entries as the [module docs](self) say, creating the
/// directory and the [`SANDBOX_SEARCHABLE`] ones if missing.
///
/// # Errors
///
/// An I/O error naming the path when one cannot be created, chowned or chmoded.
pub fn restrict(state_dir: &Path, id_shift: u32) -> std::io::Result<()> {
    let context = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |error: std::io::Error| std::io::Error::new(error.kind(), format!("{what}: {error}"))
    };
    std::fs::create_dir_all(state_dir).map_err(context("create", state_dir))?;
    set_mode(state_dir, 0o711).map_err(context("chmod 0711", state_dir))?;
    for name in SANDBOX_SEARCHABLE {
        let dir = state_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(context("create", &dir))?;
        if std::fs::metadata(&dir)
            .map_err(context("stat", &dir))?
            .gid()
            != id_shift
        {
            std::os::unix::fs::chown(&dir, None, Some(id_shift))
                .map_err(context(&format!("chgrp {id_shift}"), &dir))?;
        }
        set_mode(&dir, 0o710).map_err(context("chmod 0710", &dir))?;
    }
    for entry in std::fs::read_dir(state_dir).map_err(context("list", state_dir))? {
        let entry = entry.map_err(context("list", state_dir))?;
        let name = entry.file_name();
        if SANDBOX_SEARCHABLE.iter().any(|dir| name == *dir) {
            continue;
        }
        let path = entry.path();
        let meta = entry.metadata().map_err(context("stat", &path))?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            set_mode(&path, mode & 0o7700).map_err(context("chmod go-rwx", &path))?;
        }
    }
    Ok(())
}

/// Set the permission bits of `path` to `mode` (keeping none of the old), unless they are.
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn the_top_level_is_private_and_the_sandboxes_way_searchable() {
        let parent = tempfile::tempdir().unwrap();
        let state = parent.path().join("state");
        std::fs::create_dir_all(state.join("netns")).unwrap();
        std::fs::create_dir_all(state.join("sandboxes/abc/upper")).unwrap();
        std::fs::write(state.join("api-key"), "k").unwrap();
        std::fs::set_permissions(
            state.join("api-key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(state.join("netns"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Our own gid as the "shift" (chgrp to it needs no privilege).
        let gid = rustix::process::getegid().as_raw();
        restrict(&state, gid).unwrap();
        assert_eq!(mode(&state), 0o711);
        for name in SANDBOX_SEARCHABLE {
            let dir = state.join(name);
            assert_eq!(mode(&dir), 0o710, "{name}");
            assert_eq!(std::fs::metadata(&dir).unwrap().gid(), gid, "{name}");
        }
        assert_eq!(mode(&state.join("api-key")), 0o600);
        assert_eq!(mode(&state.join("netns")), 0o700);
        // Below the top, nothing is touched (it is out of others' reach already).
        assert_eq!(mode(&state.join("sandboxes/abc")) & 0o777, 0o755 & !umask());
    }

    fn umask() -> u32 {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::create_dir(&probe).unwrap();
        0o777 & !mode(&probe)
    }
}
