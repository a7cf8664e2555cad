//! The durable store: one SQLite database (WAL, one writer) under the state root.
//!
//! Every mutation is one transaction on one connection, so concurrent writers never lose each
//! other's updates and a killed process leaves either the whole mutation or none of it. Records
//! are stored as JSON beside their key, so fields can be added with serde defaults. Logs are
//! rows keyed by `(sandbox_id, seq)`: an append inserts one row and drops at most one, whatever
//! the retained size.
//!
//! Durability: `synchronous = NORMAL` in WAL mode survives any process crash; a power loss can
//! lose the last commits before the next checkpoint, never corrupt the file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::error::{Error, Result};
use crate::model::{LogEvent, LogLevel, SnapshotRecord};
use crate::state::ActiveSessionRecord;

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS active_sessions (
    sandbox_id TEXT PRIMARY KEY NOT NULL,
    record     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id TEXT PRIMARY KEY NOT NULL,
    record      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS logs (
    sandbox_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    ts_unix_ms INTEGER NOT NULL,
    level      TEXT NOT NULL,
    source     TEXT NOT NULL,
    message    TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, seq)
) WITHOUT ROWID;
";

/// The SQLite-backed durable store. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct DurableStateStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    connection: Mutex<Connection>,
    root: Option<PathBuf>,
    /// Held for the store's life: a second process opening the same root fails at once
    /// instead of interleaving writes with ours.
    _lock: Option<File>,
}

/// Everything in a store, loaded at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    /// Active session records.
    pub active: Vec<ActiveSessionRecord>,
    /// Snapshot records.
    pub snapshots: Vec<SnapshotRecord>,
}

impl DurableStateStore {
    /// Database file name inside the root.
    pub const DB_FILE: &'static str = "state.db";
    /// Lock file name inside the root.
    pub const LOCK_FILE: &'static str = "state.lock";

    /// Open (creating if needed) the store under the directory `root`.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the directory cannot be created, another process
    /// holds the store, or the database is corrupt, not firkin's, or from a newer firkin. A
    /// bad database is never modified.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        private_dir(root).map_err(|error| {
            Error::persistence(format!("create state directory {}", root.display()), error)
        })?;
        let lock = lock_root(root)?;
        let db_path = root.join(Self::DB_FILE);
        // Tokens live in this file: 0600 from its first byte (SQLite then creates its -wal
        // and -shm with the same mode). An existing file is only opened, not changed.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&db_path)
            .map_err(|error| {
                Error::persistence(
                    format!("create state database {}", db_path.display()),
                    error,
                )
            })?;
        let connection = Connection::open(&db_path).map_err(|error| {
            Error::persistence(format!("open state database {}", db_path.display()), error)
        })?;
        let store = Self::prepare(
            connection,
            Some(root.to_owned()),
            Some(lock),
            &db_path.display().to_string(),
        )?;
        // A database from an older firkin may be more open (and its -wal with it). Done only
        // once the file is known to be ours.
        for suffix in ["", "-wal", "-shm"] {
            let path = root.join(format!("{}{suffix}", Self::DB_FILE));
            match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Error::persistence(
                        format!("restrict {}", path.display()),
                        error,
                    ));
                }
            }
        }
        Ok(store)
    }

    /// The active records of the store under `root`, read without taking the store (a
    /// running daemon holds it): a snapshot of what its last committed transaction left.
    /// An absent store has none.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the database cannot be read.
    pub fn read_active(root: impl AsRef<Path>) -> Result<Vec<ActiveSessionRecord>> {
        let db_path = root.as_ref().join(Self::DB_FILE);
        if !db_path.exists() {
            return Ok(Vec::new());
        }
        let connection = Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| {
            Error::persistence(format!("open state database {}", db_path.display()), error)
        })?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|error| Error::persistence("state database busy timeout", error))?;
        load_json_rows(
            &connection,
            "SELECT record FROM active_sessions ORDER BY sandbox_id",
        )
    }

    /// A store that lives in memory only (for embedding without persistence, and tests).
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] if SQLite cannot allocate it.
    pub fn open_in_memory() -> Result<Self> {
        let connection = Connection::open_in_memory()?;
        Self::prepare(connection, None, None, ":memory:")
    }

    fn prepare(
        connection: Connection,
        root: Option<PathBuf>,
        lock: Option<File>,
        label: &str,
    ) -> Result<Self> {
        let unusable = |error: rusqlite::Error| {
            Error::persistence(
                format!(
                    "state database {label} is unusable (corrupt, or not a firkin database); \
                     move it aside to start with empty state, or restore a backup"
                ),
                error,
            )
        };
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(unusable)?;
        if version > SCHEMA_VERSION {
            return Err(Error::persistence_msg(format!(
                "state database {label} has schema version {version}, newer than this firkin's \
                 {SCHEMA_VERSION}; run a newer firkin"
            )));
        }
        let check: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(unusable)?;
        if check != "ok" {
            return Err(Error::persistence_msg(format!(
                "state database {label} failed its integrity check ({check}); move it aside to \
                 start with empty state, or restore a backup"
            )));
        }
        // Whatever its user_version says (other programs use 1 too), a database holding tables
        // that are not ours is not ours: refuse it before changing anything.
        let foreign: i64 = connection
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name NOT IN \
                 ('active_sessions', 'snapshots', 'logs') AND name NOT LIKE 'sqlite_%'",
                [],
                |row| row.get(0),
            )
            .map_err(unusable)?;
        if foreign > 0 {
            return Err(Error::persistence_msg(format!(
                "{label} is an SQLite database but not firkin's state; point the state \
                 directory elsewhere"
            )));
        }
        // The state directory's lock already keeps every other process out, so SQLite's own
        // file locking is pure cost: exclusive mode takes the locks once and keeps the WAL
        // index in heap memory (about 5 µs less per commit, measured by the state bench).
        connection
            .execute_batch(
                "PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            )
            .map_err(unusable)?;
        connection.execute_batch(SCHEMA).map_err(unusable)?;
        connection
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(unusable)?;
        Ok(Self {
            inner: Arc::new(Inner {
                connection: Mutex::new(connection),
                root,
                _lock: lock,
            }),
        })
    }

    /// The state root, or `None` for an in-memory store.
    #[must_use]
    pub fn root(&self) -> Option<&Path> {
        self.inner.root.as_deref()
    }

    /// Directory of snapshot artifacts this store manages: `<root>/snapshot-artifacts`.
    #[must_use]
    pub fn snapshot_artifacts_dir(&self) -> Option<PathBuf> {
        self.root().map(|root| root.join("snapshot-artifacts"))
    }

    /// Everything in the store.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] on a read or decode failure.
    pub fn load(&self) -> Result<StoredState> {
        let connection = self.connection();
        Ok(StoredState {
            active: load_json_rows(
                &connection,
                "SELECT record FROM active_sessions ORDER BY sandbox_id",
            )?,
            snapshots: load_json_rows(
                &connection,
                "SELECT record FROM snapshots ORDER BY snapshot_id",
            )?,
        })
    }

    /// Insert or replace one active record.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails (nothing is changed then).
    pub fn upsert_active(&self, record: &ActiveSessionRecord) -> Result<()> {
        let json = to_json(record)?;
        self.connection()
            .prepare_cached(
                "INSERT OR REPLACE INTO active_sessions (sandbox_id, record) VALUES (?1, ?2)",
            )?
            .execute(params![record.sandbox_id, json])?;
        Ok(())
    }

    /// Delete one active record and its logs in one transaction. Deleting a missing record is
    /// not an error.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails.
    pub fn remove_active(&self, sandbox_id: &str) -> Result<()> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction.execute(
            "DELETE FROM active_sessions WHERE sandbox_id = ?1",
            [sandbox_id],
        )?;
        transaction.execute("DELETE FROM logs WHERE sandbox_id = ?1", [sandbox_id])?;
        transaction.commit()?;
        Ok(())
    }

    /// Insert or replace one snapshot record.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails.
    pub fn upsert_snapshot(&self, record: &SnapshotRecord) -> Result<()> {
        let json = to_json(record)?;
        self.connection()
            .prepare_cached(
                "INSERT OR REPLACE INTO snapshots (snapshot_id, record) VALUES (?1, ?2)",
            )?
            .execute(params![record.snapshot_id, json])?;
        Ok(())
    }

    /// Delete one snapshot record (missing is not an error).
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails.
    pub fn remove_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.connection().execute(
            "DELETE FROM snapshots WHERE snapshot_id = ?1",
            [snapshot_id],
        )?;
        Ok(())
    }

    /// Append `event` to `sandbox_id`'s log, keeping at most `keep` events, in one transaction.
    /// Returns the event's sequence number.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails (nothing is changed then).
    pub fn append_log(&self, sandbox_id: &str, event: &LogEvent, keep: u32) -> Result<u64> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let seq = {
            let last: i64 = transaction
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE sandbox_id = ?1")?
                .query_row([sandbox_id], |row| row.get(0))?;
            let seq = last + 1;
            transaction
                .prepare_cached(
                    "INSERT INTO logs (sandbox_id, seq, ts_unix_ms, level, source, message) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    sandbox_id,
                    seq,
                    event.timestamp_unix_ms,
                    event.level.as_str(),
                    event.source,
                    event.message
                ])?;
            // Sequence numbers are contiguous, so this range holds at most one row once the
            // bound is reached: the append stays O(1) whatever is retained.
            transaction
                .prepare_cached("DELETE FROM logs WHERE sandbox_id = ?1 AND seq <= ?2")?
                .execute(params![sandbox_id, seq - i64::from(keep)])?;
            seq
        };
        transaction.commit()?;
        Ok(u64::try_from(seq).unwrap_or(0))
    }

    /// Up to `limit` events of `sandbox_id` with `seq >= from_seq`, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] on a read failure.
    pub fn logs_from(
        &self,
        sandbox_id: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(
            "SELECT seq, ts_unix_ms, level, source, message FROM logs \
             WHERE sandbox_id = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![sandbox_id, clamp_i64(from_seq), clamp_i64(limit)],
            log_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Up to `limit` events of `sandbox_id` with `seq < before_seq`, newest first.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] on a read failure.
    pub fn logs_before(
        &self,
        sandbox_id: &str,
        before_seq: u64,
        limit: usize,
    ) -> Result<Vec<LogEvent>> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(
            "SELECT seq, ts_unix_ms, level, source, message FROM logs \
             WHERE sandbox_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(
            params![sandbox_id, clamp_i64(before_seq), clamp_i64(limit)],
            log_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Number of events retained for `sandbox_id`.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] on a read failure.
    pub fn log_len(&self, sandbox_id: &str) -> Result<usize> {
        let count: i64 = self.connection().query_row(
            "SELECT count(*) FROM logs WHERE sandbox_id = ?1",
            [sandbox_id],
            |row| row.get(0),
        )?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// Delete all of `sandbox_id`'s logs.
    ///
    /// # Errors
    ///
    /// [`Error::StatePersistenceFailed`] when the write fails.
    pub fn remove_logs(&self, sandbox_id: &str) -> Result<()> {
        self.connection()
            .execute("DELETE FROM logs WHERE sandbox_id = ?1", [sandbox_id])?;
        Ok(())
    }

    /// Write many records and logs in one transaction: all land or none do.
    ///
    /// Fails without change if any active or snapshot id, or any sandbox's log, already exists.
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] naming the first existing id; [`Error::StatePersistenceFailed`] on
    /// a write failure.
    pub fn import(
        &self,
        state: &StoredState,
        logs: &[(String, Vec<LogEvent>)],
        keep: u32,
    ) -> Result<()> {
        let mut connection = self.connection();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for record in &state.active {
            let exists: Option<i64> = transaction
                .query_row(
                    "SELECT 1 FROM active_sessions WHERE sandbox_id = ?1",
                    [&record.sandbox_id],
                    |row| row.get(0),
                )
                .optional()?;
            if exists.is_some() {
                return Err(Error::Conflict(format!(
                    "sandbox {} is already in the state database; nothing was imported",
                    record.sandbox_id
                )));
            }
            transaction.execute(
                "INSERT INTO active_sessions (sandbox_id, record) VALUES (?1, ?2)",
                params![record.sandbox_id, to_json(record)?],
            )?;
        }
        for record in &state.snapshots {
            let inserted = transaction.execute(
                "INSERT OR IGNORE INTO snapshots (snapshot_id, record) VALUES (?1, ?2)",
                params![record.snapshot_id, to_json(record)?],
            )?;
            if inserted == 0 {
                return Err(Error::Conflict(format!(
                    "snapshot {} is already in the state database; nothing was imported",
                    record.snapshot_id
                )));
            }
        }
        for (sandbox_id, events) in logs {
            let last: i64 = transaction.query_row(
                "SELECT COALESCE(MAX(seq), 0) FROM logs WHERE sandbox_id = ?1",
                [sandbox_id],
                |row| row.get(0),
            )?;
            // Appending an imported history after a live one would interleave two logs (and
            // importing the same directory twice would double it).
            if last > 0 {
                return Err(Error::Conflict(format!(
                    "sandbox {sandbox_id} already has logs in the state database; nothing was \
                     imported"
                )));
            }
            let skip = events.len().saturating_sub(keep as usize);
            for (offset, event) in events.iter().skip(skip).enumerate() {
                transaction.execute(
                    "INSERT INTO logs (sandbox_id, seq, ts_unix_ms, level, source, message) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        sandbox_id,
                        1 + clamp_i64(offset),
                        event.timestamp_unix_ms,
                        event.level.as_str(),
                        event.source,
                        event.message
                    ],
                )?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Make every later write fail (or work again), to test the rollback of failed commits.
    #[cfg(test)]
    pub(crate) fn set_query_only(&self, on: bool) {
        self.connection()
            .pragma_update(None, "query_only", on)
            .expect("query_only is a connection setting");
    }

    fn connection(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection cannot leave SQLite half-written: an open
        // transaction is rolled back when its guard drops. So a poisoned lock is still usable.
        self.inner
            .connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Create `dir` (0700 when new) and take read and write away from group and others: it
/// holds the tokens' database. Search is left as it is: the state directory of `firkin
/// serve` is also the driver's, whose sandboxes must pass through it (see the driver).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o066 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & !0o066))?;
    }
    Ok(())
}

/// How long a held state lock is waited for before the directory counts as in use.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn lock_root(root: &Path) -> Result<File> {
    let path = root.join(DurableStateStore::LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|error| Error::persistence(format!("open {}", path.display()), error))?;
    // A killed daemon's lock can outlive it for a moment: a child it forked holds the lock's
    // file until that child execs (the descriptor is close-on-exec), and a sandbox launch
    // spends milliseconds between fork and exec (joining cgroups). So a held lock gets a
    // short grace before it counts as another daemon's.
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    let locked = loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other,
        }
    };
    locked.map_err(|errno| {
        Error::persistence(
            format!(
                "state directory {} is in use by another firkin process; stop it or use \
                     another state directory",
                root.display()
            ),
            std::io::Error::from(errno),
        )
    })?;
    Ok(file)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|error| Error::persistence("encode state record", error))
}

fn load_json_rows<T: serde::de::DeserializeOwned>(
    connection: &Connection,
    sql: &str,
) -> Result<Vec<T>> {
    let mut statement = connection.prepare(sql)?;
    let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
    rows.map(|row| {
        let json = row?;
        serde_json::from_str(&json)
            .map_err(|error| Error::persistence(format!("decode state record {json:.200}"), error))
    })
    .collect()
}

fn log_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogEvent> {
    Ok(LogEvent {
        seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        timestamp_unix_ms: row.get(1)?,
        level: LogLevel::parse(&row.get::<_, String>(2)?),
        source: row.get(3)?,
        message: row.get(4)?,
    })
}

fn clamp_i64<T: TryInto<i64>>(value: T) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
