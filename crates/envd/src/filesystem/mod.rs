//! `filesystem.Filesystem`: stat, list, make, move, remove, and inotify watchers.

pub mod service;

/// File watchers created with `CreateWatcher`, polled with `GetWatcherEvents`.
#[derive(Debug, Default)]
pub struct Watchers {}
