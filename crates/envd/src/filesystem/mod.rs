//! `filesystem.Filesystem`: stat, list, make, move, remove, and inotify watchers.
//!
//! Every request acts as its user (`Authorization: Basic`, else the default user), with
//! that user's rights: the work runs on a thread that has taken the user's uid, gid and
//! groups (see [`crate::as_user`]), so the kernel applies every permission rule, and
//! what is created belongs to the user. Paths resolve against the user's home.

pub mod entry;
pub mod ops;
pub mod service;
pub mod watch;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use connectrpc::ConnectError;

use crate::filesystem::entry::Names;
use crate::filesystem::watch::{ChangeEvent, DirWatch};
use crate::proto::filesystem::FilesystemEvent;

/// Events a polled watcher keeps until they are fetched; beyond this the oldest are dropped,
/// so a watcher nobody polls (or removes) cannot grow without bound.
pub const MAX_QUEUED_EVENTS: usize = 10_000;

/// File watchers created with `CreateWatcher`, polled with `GetWatcherEvents` (the sync
/// Python SDK's way of watching) and ended with `RemoveWatcher`.
#[derive(Debug, Default)]
pub struct Watchers {
    watchers: Mutex<HashMap<String, Arc<Polled>>>,
}

/// One polled watcher: a task reading its watch into a bounded queue.
#[derive(Debug)]
struct Polled {
    queue: Arc<Mutex<Queue>>,
    task: tokio::task::AbortHandle,
}

impl Drop for Polled {
    fn drop(&mut self) {
        // Ending the task drops the watch and so closes its inotify descriptor.
        self.task.abort();
    }
}

#[derive(Debug, Default)]
struct Queue {
    events: VecDeque<FilesystemEvent>,
    /// Events dropped since the last fetch.
    dropped: u64,
    /// Why the watch failed, if it did.
    failed: Option<String>,
}

impl Queue {
    fn push(&mut self, event: FilesystemEvent, id: &str) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
            if self.dropped == 0 {
                tracing::warn!(
                    watcher = id,
                    limit = MAX_QUEUED_EVENTS,
                    "watcher events are not being fetched: dropping the oldest"
                );
            }
            self.dropped += 1;
        }
        self.events.push_back(event);
    }
}

impl Watchers {
    /// Keep `watch` under a new random id and collect its events until it is removed.
    ///
    /// # Errors
    ///
    /// When no random id can be made.
    pub fn insert(&self, watch: DirWatch, include_entry: bool) -> Result<String, ConnectError> {
        let id = new_watcher_id()?;
        let queue = Arc::new(Mutex::new(Queue::default()));
        let task = tokio::spawn(collect(
            watch,
            include_entry,
            Arc::clone(&queue),
            id.clone(),
        ));
        let polled = Arc::new(Polled {
            queue,
            task: task.abort_handle(),
        });
        self.lock().insert(id.clone(), polled);
        Ok(id)
    }

    /// The events since the last call.
    ///
    /// # Errors
    ///
    /// `not_found` for an unknown id; `internal` when the watch failed.
    pub fn drain(&self, id: &str) -> Result<Vec<FilesystemEvent>, ConnectError> {
        let polled = self.get(id)?;
        let mut queue = polled.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.dropped > 0 {
            tracing::warn!(
                watcher = id,
                dropped = queue.dropped,
                "watcher events were dropped"
            );
            queue.dropped = 0;
        }
        if let Some(failure) = queue.failed.as_ref().filter(|_| queue.events.is_empty()) {
            return Err(ConnectError::internal(format!(
                "watcher {id} failed: {failure}"
            )));
        }
        Ok(queue.events.drain(..).collect())
    }

    /// Stop and forget watcher `id`.
    ///
    /// # Errors
    ///
    /// `not_found` for an unknown id.
    pub fn remove(&self, id: &str) -> Result<(), ConnectError> {
        self.lock()
            .remove(id)
            .map(drop)
            .ok_or_else(|| unknown_watcher(id))
    }

    /// How many watchers exist.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get(&self, id: &str) -> Result<Arc<Polled>, ConnectError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| unknown_watcher(id))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Polled>>> {
        self.watchers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn unknown_watcher(id: &str) -> ConnectError {
    ConnectError::not_found(format!("watcher with id {id} not found"))
}

/// `w` and 128 random bits in hex: ids cannot be guessed.
fn new_watcher_id() -> Result<String, ConnectError> {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| ConnectError::internal(format!("cannot make a watcher id: {error}")))?;
    let mut id = String::with_capacity(33);
    id.push('w');
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    Ok(id)
}

async fn collect(mut watch: DirWatch, include_entry: bool, queue: Arc<Mutex<Queue>>, id: String) {
    while let Some(batch) = watch.next().await {
        match batch {
            Ok(batch) => {
                let events = to_wire(batch, include_entry);
                let mut queue = queue.lock().unwrap_or_else(PoisonError::into_inner);
                for event in events {
                    queue.push(event, &id);
                }
            }
            Err(error) => {
                tracing::warn!(watcher = id, %error, "watcher failed");
                queue.lock().unwrap_or_else(PoisonError::into_inner).failed =
                    Some(error.to_string());
                return;
            }
        }
    }
}

/// Changes as wire events; with `include_entry`, those whose entry should still be there
/// carry its `EntryInfo` (best effort: none when it is gone already).
#[must_use]
pub fn to_wire(batch: Vec<ChangeEvent>, include_entry: bool) -> Vec<FilesystemEvent> {
    let names =
        (include_entry && batch.iter().any(|event| event.change.has_entry())).then(Names::system);
    batch
        .into_iter()
        .map(|event| {
            let entry = names
                .as_ref()
                .filter(|_| event.change.has_entry())
                .and_then(|names| entry::entry_info(&event.path, names).ok());
            FilesystemEvent {
                name: event.name,
                r#type: buffa::EnumValue::from(event.change.wire()),
                entry: entry.map_or_else(buffa::MessageField::none, buffa::MessageField::some),
                ..Default::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_ids_are_random_and_unknown_ids_are_not_found() {
        let a = new_watcher_id().unwrap();
        let b = new_watcher_id().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 33);
        assert!(a.starts_with('w'));
        let watchers = Watchers::default();
        assert_eq!(
            watchers.drain("nope").unwrap_err().code,
            connectrpc::ErrorCode::NotFound
        );
        assert_eq!(
            watchers.remove("nope").unwrap_err().code,
            connectrpc::ErrorCode::NotFound
        );
    }

    #[test]
    fn a_queue_keeps_only_the_newest_events() {
        let mut queue = Queue::default();
        for i in 0..MAX_QUEUED_EVENTS + 5 {
            queue.push(
                FilesystemEvent {
                    name: i.to_string(),
                    ..Default::default()
                },
                "w",
            );
        }
        assert_eq!(queue.events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(queue.dropped, 5);
        assert_eq!(queue.events.front().map(|e| e.name.as_str()), Some("5"));
    }

    #[tokio::test]
    async fn a_polled_watcher_collects_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let user = crate::as_user::tests::someone(rustix::process::geteuid().as_raw());
        let watch = watch::Setup::open(dir.path(), false, false, &user)
            .unwrap()
            .start()
            .unwrap();
        let watchers = Watchers::default();
        let id = watchers.insert(watch, true).unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let mut events = Vec::new();
        for _ in 0..100 {
            events.extend(watchers.drain(&id).unwrap());
            if events.len() >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let kinds: Vec<_> = events
            .iter()
            .map(|event| (event.name.as_str(), event.r#type.as_known()))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    "f",
                    Some(crate::proto::filesystem::EventType::EVENT_TYPE_CREATE)
                ),
                (
                    "f",
                    Some(crate::proto::filesystem::EventType::EVENT_TYPE_WRITE)
                ),
            ]
        );
        assert_eq!(events[1].entry.as_option().map(|entry| entry.size), Some(1));
        assert!(watchers.drain(&id).unwrap().is_empty());
        watchers.remove(&id).unwrap();
        assert!(watchers.is_empty());
        assert_eq!(
            watchers.drain(&id).unwrap_err().code,
            connectrpc::ErrorCode::NotFound
        );
    }
}
