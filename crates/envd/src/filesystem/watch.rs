//! Directory watches on inotify, with E2B's event semantics (those of the fsnotify library
//! E2B's envd uses): a created or moved-in entry is `CREATE`, a write `WRITE`, an attribute
//! change (mode, owner, times) `CHMOD`, a deletion `REMOVE`, a move away `RENAME`. Event
//! names are relative to the watched directory (`sub/file.txt`); the watched directory
//! itself is `.`.
//!
//! A recursive watch covers every subdirectory, including ones created or moved in later.
//! A directory created while watching is scanned when its watch is added, and what is
//! already in it is reported as created, so that nothing created in the moment before the
//! watch existed goes unseen (something created just after may be reported twice).
//! Symlinked directories are not followed below the watched directory.
//!
//! Each watch owns one inotify instance; dropping the watch closes it. The watch ends (the
//! stream of events finishes) when the watched directory itself is deleted.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use connectrpc::ConnectError;
use futures::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::as_user;
use crate::filesystem::ops::{io_error, not_found};
use crate::proto::filesystem::EventType;
use crate::users::User;

/// What happened to an entry, as E2B's `EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Created, or moved into the watched tree.
    Create,
    /// Written to.
    Write,
    /// Deleted.
    Remove,
    /// Moved away (out of its place; a move within the tree is `Rename` then `Create`).
    Rename,
    /// Mode, owner or times changed.
    Chmod,
}

impl Change {
    /// The wire enum.
    #[must_use]
    pub fn wire(self) -> EventType {
        match self {
            Self::Create => EventType::EVENT_TYPE_CREATE,
            Self::Write => EventType::EVENT_TYPE_WRITE,
            Self::Remove => EventType::EVENT_TYPE_REMOVE,
            Self::Rename => EventType::EVENT_TYPE_RENAME,
            Self::Chmod => EventType::EVENT_TYPE_CHMOD,
        }
    }

    /// Whether the entry is expected to still be there, so that its `EntryInfo` may be sent.
    #[must_use]
    pub fn has_entry(self) -> bool {
        matches!(self, Self::Create | Self::Write | Self::Chmod)
    }
}

/// The change an inotify event stands for; `None` for bookkeeping events.
#[must_use]
pub fn change_of(mask: EventMask) -> Option<Change> {
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        Some(Change::Create)
    } else if mask.contains(EventMask::MODIFY) {
        Some(Change::Write)
    } else if mask.contains(EventMask::ATTRIB) {
        Some(Change::Chmod)
    } else if mask.intersects(EventMask::DELETE | EventMask::DELETE_SELF) {
        Some(Change::Remove)
    } else if mask.intersects(EventMask::MOVED_FROM | EventMask::MOVE_SELF) {
        Some(Change::Rename)
    } else {
        None
    }
}

/// One change under a watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The path relative to the watched directory, as clients get it.
    pub name: String,
    /// The absolute path.
    pub path: PathBuf,
    /// What happened.
    pub change: Change,
}

impl ChangeEvent {
    fn new(root: &Path, relative: &Path, change: Change) -> Self {
        Self {
            name: relative_name(relative),
            path: root.join(relative),
            change,
        }
    }
}

/// A path relative to the watched directory as an event name: `.` for the directory itself.
#[must_use]
pub fn relative_name(relative: &Path) -> String {
    if relative.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        relative.to_string_lossy().into_owned()
    }
}

/// What every watch listens for.
const EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::MODIFY)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVE_SELF);

/// Super-block magic numbers of network file systems (NFS, CIFS, SMB, SMB2, FUSE), on which
/// inotify misses remote changes; E2B's envd refuses them unless `allowNetworkMounts`.
const NETWORK_MAGICS: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

/// The directories one inotify instance watches, by watch descriptor number.
struct Tree {
    watches: Watches,
    root: PathBuf,
    dirs: HashMap<i32, Watched>,
    root_id: i32,
    /// Whether the per-user watch limit was hit (warned about once).
    full: bool,
    /// Who watches: directories that appear later are listed and watched as this user,
    /// never as root (who could watch, and so reveal, what the user may not read).
    user: User,
}

struct Watched {
    wd: WatchDescriptor,
    /// Relative to the root; empty for the root.
    relative: PathBuf,
}

impl Tree {
    /// Watch the directory `relative` and, with `recursive`, every real directory below it.
    /// With `created`, what is found below is reported as created. Subdirectories that cannot
    /// be watched are skipped; only watching `relative` itself can fail.
    fn add_tree(
        &mut self,
        relative: &Path,
        recursive: bool,
        created: Option<&mut Vec<ChangeEvent>>,
    ) -> io::Result<()> {
        self.add_one(relative)?;
        if !recursive {
            return Ok(());
        }
        let mut created = created;
        let mut pending = vec![relative.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let Ok(children) = fs::read_dir(self.root.join(&dir)) else {
                continue;
            };
            for child in children.flatten() {
                let child_relative = dir.join(child.file_name());
                if let Some(created) = created.as_deref_mut() {
                    created.push(ChangeEvent::new(
                        &self.root,
                        &child_relative,
                        Change::Create,
                    ));
                }
                // `DirEntry::file_type` does not follow symlinks.
                if !child.file_type().is_ok_and(|kind| kind.is_dir()) {
                    continue;
                }
                match self.add_one(&child_relative) {
                    Ok(()) => pending.push(child_relative),
                    Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                        if !self.full {
                            self.full = true;
                            tracing::warn!(
                                root = %self.root.display(),
                                "inotify watch limit reached: some subdirectories are not watched"
                            );
                        }
                    }
                    Err(error) => tracing::debug!(
                        path = %self.root.join(&child_relative).display(),
                        %error,
                        "not watching subdirectory"
                    ),
                }
            }
        }
        Ok(())
    }

    fn add_one(&mut self, relative: &Path) -> io::Result<()> {
        let mut mask = EVENTS | WatchMask::ONLYDIR;
        if !relative.as_os_str().is_empty() {
            mask |= WatchMask::DONT_FOLLOW;
        }
        let wd = self.watches.add(self.root.join(relative), mask)?;
        self.dirs.insert(
            wd.get_watch_descriptor_id(),
            Watched {
                wd,
                relative: relative.to_path_buf(),
            },
        );
        Ok(())
    }

    /// Stop watching `relative` and everything below it (it moved away).
    fn forget_tree(&mut self, relative: &Path) {
        let gone: Vec<i32> = self
            .dirs
            .iter()
            .filter(|(id, watched)| **id != self.root_id && watched.relative.starts_with(relative))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(watched) = self.dirs.remove(&id) {
                // It may be gone already; its IN_IGNORED is dropped as unknown.
                let _ = self.watches.remove(watched.wd);
            }
        }
    }
}

/// A directory watch whose inotify instance exists but is not yet read. Made with the
/// requesting user's credentials (the kernel checks read access to each directory).
pub struct Setup {
    inotify: Inotify,
    tree: Tree,
    recursive: bool,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("root", &self.tree.root)
            .field("recursive", &self.recursive)
            .finish_non_exhaustive()
    }
}

impl Setup {
    /// Start watching the directory `root` (blocking).
    ///
    /// # Errors
    ///
    /// `not_found` when it does not exist, `invalid_argument` when it is not a directory or
    /// is on a network mount (unless `allow_network_mounts`), `resource_exhausted` when the
    /// inotify limits are reached, `permission_denied`.
    pub fn open(
        root: &Path,
        recursive: bool,
        allow_network_mounts: bool,
        user: &User,
    ) -> Result<Self, ConnectError> {
        let metadata = fs::metadata(root).map_err(|error| match error.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => not_found(root),
            _ => io_error("cannot watch", root, &error),
        })?;
        if !metadata.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "path '{}' is not a directory",
                root.display()
            )));
        }
        if !allow_network_mounts && is_network_mount(root) {
            return Err(ConnectError::invalid_argument(format!(
                "cannot watch path on network filesystem: '{}'",
                root.display()
            )));
        }
        let inotify = Inotify::init().map_err(|error| match error.raw_os_error() {
            Some(libc::EMFILE) => ConnectError::resource_exhausted(format!(
                "cannot watch '{}': too many watches (inotify instance limit reached)",
                root.display()
            )),
            _ => io_error("cannot watch", root, &error),
        })?;
        let mut tree = Tree {
            watches: inotify.watches(),
            root: root.to_path_buf(),
            dirs: HashMap::new(),
            root_id: -1,
            full: false,
            user: user.clone(),
        };
        tree.add_tree(Path::new(""), recursive, None)
            .map_err(|error| io_error("cannot watch", root, &error))?;
        tree.root_id = tree
            .dirs
            .iter()
            .find(|(_, watched)| watched.relative.as_os_str().is_empty())
            .map_or(-1, |(id, _)| *id);
        Ok(Self {
            inotify,
            tree,
            recursive,
        })
    }

    /// Start reading events (on the current tokio runtime).
    ///
    /// # Errors
    ///
    /// When the inotify descriptor cannot be registered with the runtime.
    pub fn start(self) -> io::Result<DirWatch> {
        let stream = self.inotify.into_event_stream(vec![0_u8; 16 * 1024])?;
        Ok(DirWatch {
            stream,
            tree: self.tree,
            recursive: self.recursive,
            ended: false,
        })
    }
}

fn is_network_mount(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|stats| {
        #[allow(clippy::cast_lossless, clippy::unnecessary_cast)]
        let magic = stats.f_type as i64;
        NETWORK_MAGICS.contains(&magic)
    })
}

/// A running directory watch.
pub struct DirWatch {
    stream: EventStream<Vec<u8>>,
    tree: Tree,
    recursive: bool,
    ended: bool,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("root", &self.tree.root)
            .field("recursive", &self.recursive)
            .field("watched_dirs", &self.tree.dirs.len())
            .finish_non_exhaustive()
    }
}

impl DirWatch {
    /// The watched directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.tree.root
    }

    /// The changes behind the next inotify event (often one, none for bookkeeping events,
    /// more when a new directory already had contents). `None` once the watched directory
    /// is gone.
    pub async fn next(&mut self) -> Option<io::Result<Vec<ChangeEvent>>> {
        if self.ended {
            return None;
        }
        match self.stream.next().await? {
            Ok(event) => Some(Ok(self.handle(
                event.wd.get_watch_descriptor_id(),
                event.mask,
                event.name.as_deref(),
            ))),
            Err(error) => Some(Err(error)),
        }
    }

    fn handle(
        &mut self,
        id: i32,
        mask: EventMask,
        name: Option<&std::ffi::OsStr>,
    ) -> Vec<ChangeEvent> {
        if mask.contains(EventMask::Q_OVERFLOW) {
            tracing::warn!(root = %self.tree.root.display(), "inotify queue overflow: file events were lost");
            return Vec::new();
        }
        let Some(watched) = self.tree.dirs.get(&id) else {
            return Vec::new();
        };
        if mask.contains(EventMask::IGNORED) {
            self.tree.dirs.remove(&id);
            if id == self.tree.root_id {
                self.ended = true;
            }
            return Vec::new();
        }
        // A watched subdirectory's own deletion or move is reported by its parent's watch.
        if name.is_none() && id != self.tree.root_id {
            return Vec::new();
        }
        let relative = match name {
            Some(name) => watched.relative.join(name),
            None => watched.relative.clone(),
        };
        let Some(change) = change_of(mask) else {
            return Vec::new();
        };
        let mut events = vec![ChangeEvent::new(&self.tree.root, &relative, change)];
        if self.recursive && name.is_some() && mask.contains(EventMask::ISDIR) {
            let user = self.tree.user.clone();
            let tree = &mut self.tree;
            let added = if mask.contains(EventMask::CREATE) {
                let events = &mut events;
                as_user::run_scoped(&user, || tree.add_tree(&relative, true, Some(events)))
            } else if mask.contains(EventMask::MOVED_TO) {
                as_user::run_scoped(&user, || tree.add_tree(&relative, true, None))
            } else {
                if mask.contains(EventMask::MOVED_FROM) {
                    self.tree.forget_tree(&relative);
                }
                Ok(())
            };
            if let Err(error) = added {
                tracing::debug!(path = %self.tree.root.join(&relative).display(), %error, "not watching new subdirectory");
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn inotify_events_map_to_e2b_changes() {
        assert_eq!(change_of(EventMask::CREATE), Some(Change::Create));
        assert_eq!(
            change_of(EventMask::CREATE | EventMask::ISDIR),
            Some(Change::Create)
        );
        assert_eq!(change_of(EventMask::MOVED_TO), Some(Change::Create));
        assert_eq!(change_of(EventMask::MODIFY), Some(Change::Write));
        assert_eq!(change_of(EventMask::ATTRIB), Some(Change::Chmod));
        assert_eq!(change_of(EventMask::DELETE), Some(Change::Remove));
        assert_eq!(change_of(EventMask::DELETE_SELF), Some(Change::Remove));
        assert_eq!(change_of(EventMask::MOVED_FROM), Some(Change::Rename));
        assert_eq!(change_of(EventMask::MOVE_SELF), Some(Change::Rename));
        assert_eq!(change_of(EventMask::IGNORED), None);
        assert_eq!(change_of(EventMask::OPEN), None);
        assert_eq!(Change::Chmod.wire(), EventType::EVENT_TYPE_CHMOD);
        assert!(Change::Write.has_entry() && !Change::Remove.has_entry());
        assert!(!Change::Rename.has_entry());
    }

    #[test]
    fn names_are_relative_to_the_watched_directory() {
        assert_eq!(relative_name(Path::new("")), ".");
        assert_eq!(relative_name(Path::new("a.txt")), "a.txt");
        assert_eq!(relative_name(Path::new("sub/a.txt")), "sub/a.txt");
        let event = ChangeEvent::new(Path::new("/w"), Path::new("sub/a"), Change::Write);
        assert_eq!(event.path, PathBuf::from("/w/sub/a"));
        assert_eq!(event.name, "sub/a");
    }

    /// Collect events until `want` returns true for the collection (or give up after 5 s).
    async fn collect_until(
        watch: &mut DirWatch,
        want: impl Fn(&[(String, Change)]) -> bool,
    ) -> Vec<(String, Change)> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !want(&seen) {
            match tokio::time::timeout_at(deadline, watch.next()).await {
                Ok(Some(Ok(batch))) => {
                    seen.extend(batch.into_iter().map(|event| (event.name, event.change)));
                }
                Ok(Some(Err(error))) => panic!("watch failed: {error}"),
                Ok(None) | Err(_) => break,
            }
        }
        seen
    }

    #[tokio::test]
    async fn a_flat_watch_reports_changes_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        fs::create_dir(root.join("sub")).unwrap();
        let mut watch = Setup::open(&root, false, false, &envd_user())
            .unwrap()
            .start()
            .unwrap();
        fs::write(root.join("a.txt"), b"x").unwrap();
        fs::rename(root.join("a.txt"), root.join("b.txt")).unwrap();
        fs::remove_file(root.join("b.txt")).unwrap();
        // Not recursive: nothing inside sub is seen.
        fs::write(root.join("sub/inner"), b"x").unwrap();
        fs::create_dir(root.join("last")).unwrap();
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("last".to_owned(), Change::Create))
        })
        .await;
        assert_eq!(
            seen,
            [
                ("a.txt".to_owned(), Change::Create),
                ("a.txt".to_owned(), Change::Write),
                ("a.txt".to_owned(), Change::Rename),
                ("b.txt".to_owned(), Change::Create),
                ("b.txt".to_owned(), Change::Remove),
                ("last".to_owned(), Change::Create),
            ]
        );
    }

    /// The user envd runs as (so nothing switches).
    fn envd_user() -> User {
        crate::as_user::tests::someone(rustix::process::geteuid().as_raw())
    }

    #[tokio::test]
    async fn directories_moved_in_are_watched_as_the_user_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let nobody = crate::as_user::tests::someone(65_534);
        if !crate::as_user::needs_switch(&nobody) {
            return firkin_test_support::skip(
                "watch-as-user test",
                "needs root (there is no other identity)",
            );
        }
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().join("watched");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        for name in ["public", "private"] {
            fs::create_dir_all(dir.path().join(name).join("inner")).unwrap();
        }
        // root's own: the user may not read it.
        fs::set_permissions(
            dir.path().join("private"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let mut watch = Setup::open(&root, true, false, &nobody)
            .unwrap()
            .start()
            .unwrap();
        for name in ["public", "private"] {
            fs::rename(dir.path().join(name), root.join(name)).unwrap();
        }
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("private".to_owned(), Change::Create))
        })
        .await;
        assert!(
            seen.contains(&("public".to_owned(), Change::Create)),
            "{seen:?}"
        );
        // Events come in order: once the marker is seen, anything before it was too.
        fs::write(root.join("public/inner/visible"), b"x").unwrap();
        fs::write(root.join("private/inner/secret"), b"x").unwrap();
        fs::write(root.join("marker"), b"x").unwrap();
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("marker".to_owned(), Change::Create))
        })
        .await;
        assert!(
            seen.contains(&("public/inner/visible".to_owned(), Change::Create)),
            "{seen:?}"
        );
        assert!(
            !seen.iter().any(|(name, _)| name.contains("secret")),
            "a directory the user may not read was watched for it: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_recursive_watch_follows_new_directories_and_ends_with_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("watched");
        fs::create_dir_all(root.join("old/deeper")).unwrap();
        let mut watch = Setup::open(&root, true, false, &envd_user())
            .unwrap()
            .start()
            .unwrap();
        fs::write(root.join("old/deeper/f"), b"x").unwrap();
        // Created before the watch reads the parent's event: found by the scan.
        fs::create_dir_all(root.join("new/inner")).unwrap();
        fs::write(root.join("new/inner/g"), b"x").unwrap();
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("new/inner/g".to_owned(), Change::Create))
        })
        .await;
        assert!(
            seen.contains(&("old/deeper/f".to_owned(), Change::Create)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("old/deeper/f".to_owned(), Change::Write)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("new".to_owned(), Change::Create)),
            "{seen:?}"
        );
        assert!(
            seen.contains(&("new/inner".to_owned(), Change::Create)),
            "{seen:?}"
        );
        // ...and watched from then on.
        fs::write(root.join("new/inner/g"), b"y").unwrap();
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("new/inner/g".to_owned(), Change::Write))
        })
        .await;
        assert!(
            seen.contains(&("new/inner/g".to_owned(), Change::Write)),
            "{seen:?}"
        );

        // A directory moved out is no longer watched.
        fs::rename(root.join("new"), dir.path().join("outside")).unwrap();
        fs::write(dir.path().join("outside/inner/h"), b"x").unwrap();
        fs::write(root.join("marker"), b"x").unwrap();
        let seen = collect_until(&mut watch, |seen| {
            seen.contains(&("marker".to_owned(), Change::Create))
        })
        .await;
        assert!(
            seen.contains(&("new".to_owned(), Change::Rename)),
            "{seen:?}"
        );
        assert!(!seen.iter().any(|(name, _)| name.contains("h")), "{seen:?}");

        fs::remove_dir_all(&root).unwrap();
        let seen = collect_until(&mut watch, |_| false).await;
        assert!(seen.contains(&(".".to_owned(), Change::Remove)), "{seen:?}");
        assert!(
            watch.next().await.is_none(),
            "the watch ends with its directory"
        );
    }

    #[test]
    fn watching_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        let code = |path: &Path| {
            Setup::open(path, false, false, &envd_user())
                .unwrap_err()
                .code
        };
        assert_eq!(
            code(&dir.path().join("missing")),
            connectrpc::ErrorCode::NotFound
        );
        assert_eq!(code(&file), connectrpc::ErrorCode::InvalidArgument);
    }
}
