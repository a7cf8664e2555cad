//! Bounded per-sandbox logs with stable cursors.

use crate::error::Result;
use crate::model::LogEvent;
use crate::state::DurableStateStore;

/// Per-sandbox log of at most `max_entries` events (the oldest are dropped), stored in the
/// durable store. Each event gets a sequence number that never changes and is never reused
/// for that sandbox, so a cursor stays valid while events are appended and dropped.
#[derive(Clone, Debug)]
pub struct LogStore {
    durable: DurableStateStore,
    max_entries: u32,
}

impl LogStore {
    /// Events kept per sandbox unless configured otherwise.
    pub const DEFAULT_MAX_ENTRIES_PER_SANDBOX: u32 = 1_000;

    /// A log store over `durable` keeping `max_entries` events per sandbox (at least 1).
    #[must_use]
    pub fn new(durable: DurableStateStore, max_entries: u32) -> Self {
        Self {
            durable,
            max_entries: max_entries.max(1),
        }
    }

    /// Events kept per sandbox.
    #[must_use]
    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    /// Append an info message from `single-node`; returns its sequence number.
    ///
    /// # Errors
    ///
    /// A persistence failure; nothing is appended then.
    pub fn record(&self, sandbox_id: &str, message: impl Into<String>) -> Result<u64> {
        self.record_event(sandbox_id, &LogEvent::new(message))
    }

    /// Append `event` (its `seq` is ignored and assigned); returns its sequence number.
    ///
    /// # Errors
    ///
    /// A persistence failure; nothing is appended then.
    pub fn record_event(&self, sandbox_id: &str, event: &LogEvent) -> Result<u64> {
        self.durable.append_log(sandbox_id, event, self.max_entries)
    }

    /// Up to `limit` events with sequence number `>= cursor` (all retained events when
    /// `cursor` is `None`), oldest first. A cursor older than the retained window starts at
    /// the oldest retained event; an unknown sandbox has no events.
    ///
    /// # Errors
    ///
    /// A persistence failure.
    pub fn entries(
        &self,
        sandbox_id: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        self.durable
            .logs_from(sandbox_id, cursor.unwrap_or(0), limit)
    }

    /// Up to `limit` events with sequence number `< cursor` (the newest when `None`), newest
    /// first: for reading a log backwards.
    ///
    /// # Errors
    ///
    /// A persistence failure.
    pub fn entries_before(
        &self,
        sandbox_id: &str,
        cursor: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        self.durable
            .logs_before(sandbox_id, cursor.unwrap_or(u64::MAX), limit)
    }

    /// Number of retained events.
    ///
    /// # Errors
    ///
    /// A persistence failure.
    pub fn len(&self, sandbox_id: &str) -> Result<usize> {
        self.durable.log_len(sandbox_id)
    }

    /// Drop all of a sandbox's events.
    ///
    /// # Errors
    ///
    /// A persistence failure.
    pub fn remove_sandbox(&self, sandbox_id: &str) -> Result<()> {
        self.durable.remove_logs(sandbox_id)
    }
}
