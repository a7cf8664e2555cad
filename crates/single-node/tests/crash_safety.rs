//! Crash safety of the durable state: a child process mutating the store in a loop is killed
//! with SIGKILL at random moments, several times over the same directory. After each kill the
//! store must reopen (open runs SQLite's `quick_check`) and hold exactly the mutations the
//! child reported as committed, plus at most the one it was in the middle of.
//!
//! The child is the test `tests::crash_child` of this same binary: it does nothing unless
//! `FIRKIN_CRASH_CHILD_DIR` is set. Mutation `n` is a pure function of `n`, so the parent can
//! rebuild the expected state from the child's `committed <n> <kind> <id>` lines alone.
//! `FIRKIN_CRASH_SEED` replays the kill delays of a failed run (the seed is printed).

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::thread::JoinHandle;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use firkin_single_node::{
        ActiveSessionRecord, LogStore, SandboxResources, SandboxState, SnapshotRecord, StateStore,
        TemplateMetadata, TimeoutAction,
    };

    const CHILD_DIR_ENV: &str = "FIRKIN_CRASH_CHILD_DIR";
    const CHILD_START_ENV: &str = "FIRKIN_CRASH_CHILD_START";
    const SEED_ENV: &str = "FIRKIN_CRASH_SEED";
    const CHILD_TEST: &str = "tests::crash_child";
    /// The log stream every log mutation appends to.
    const JOURNAL: &str = "journal";
    /// Large enough that the journal is never trimmed, so its seqs must be exactly 1..=len.
    const LOG_BOUND: u32 = 10_000_000;
    const ROUNDS: usize = 8;
    const MIN_DELAY_MS: u64 = 20;
    const MAX_DELAY_MS: u64 = 300;

    /// Mutation number `n`. Cycle `c = n / 5` inserts `r-c`, updates it, appends a log
    /// event, removes `r-(c-3)` (a record three cycles old, so a few records are alive at any
    /// time) and inserts snapshot `snap-c`.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Mutation {
        Insert { id: String, n: u64 },
        Update { id: String, n: u64 },
        Log { message: String },
        Remove { id: String },
        Snapshot { id: String, n: u64 },
    }

    fn record_id(cycle: u64) -> String {
        format!("r-{cycle}")
    }

    fn mutation(n: u64) -> Mutation {
        let cycle = n / 5;
        match n % 5 {
            0 => Mutation::Insert {
                id: record_id(cycle),
                n,
            },
            1 => Mutation::Update {
                id: record_id(cycle),
                n,
            },
            2 => Mutation::Log {
                message: format!("event {n}"),
            },
            3 => Mutation::Remove {
                // Before cycle 3 there is nothing that old: removing a missing id is a no-op.
                id: cycle
                    .checked_sub(3)
                    .map_or_else(|| "r-none".to_owned(), record_id),
            },
            _ => Mutation::Snapshot {
                id: format!("snap-{cycle}"),
                n,
            },
        }
    }

    /// `<kind> <id>` as the child prints it after `committed <n> `.
    fn describe(mutation: &Mutation) -> String {
        match mutation {
            Mutation::Insert { id, .. } => format!("insert {id}"),
            Mutation::Update { id, .. } => format!("update {id}"),
            Mutation::Log { message } => format!("log {JOURNAL} {message}"),
            Mutation::Remove { id } => format!("remove {id}"),
            Mutation::Snapshot { id, .. } => format!("snapshot {id}"),
        }
    }

    fn as_i64(n: u64) -> i64 {
        i64::try_from(n).expect("counter fits i64")
    }

    fn inserted_record(id: &str, n: u64) -> ActiveSessionRecord {
        ActiveSessionRecord {
            sandbox_id: id.to_owned(),
            template_id: "base".to_owned(),
            client_id: format!("client-{n}"),
            envd_access_token: Some(format!("token-{n}")),
            traffic_access_token: None,
            envd_version: None,
            state: SandboxState::Running,
            started_at_unix_ms: as_i64(n),
            end_at_unix_ms: as_i64(n),
            resources: SandboxResources::from_mib(1, 256),
            metadata: BTreeMap::from([("counter".to_owned(), n.to_string())]),
            on_timeout: TimeoutAction::Kill,
            auto_resume: false,
            allow_internet_access: true,
            runtime_attached: true,
            runtime_handle: None,
        }
    }

    /// What update `n` does to a record.
    fn apply_update(record: &mut ActiveSessionRecord, n: u64) {
        record.state = SandboxState::Paused;
        record.end_at_unix_ms = as_i64(n);
        record.metadata.insert("counter".to_owned(), n.to_string());
    }

    fn snapshot_record(id: &str, n: u64) -> SnapshotRecord {
        SnapshotRecord {
            snapshot_id: id.to_owned(),
            source_sandbox_id: record_id(n / 5),
            template_id: "base".to_owned(),
            names: vec![format!("name-{n}")],
            location: None,
            runtime_data: Some(format!("{{\"n\":{n}}}")),
            resources: SandboxResources::from_mib(1, 256),
            created_at_unix_ms: as_i64(n),
            template_metadata: TemplateMetadata::default(),
        }
    }

    /// The whole observable state: what the parent expects and what it reads back.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Model {
        active: BTreeMap<String, ActiveSessionRecord>,
        snapshots: BTreeMap<String, SnapshotRecord>,
        /// Journal messages; their seqs are checked to be 1..=len when read.
        journal: Vec<String>,
    }

    impl Model {
        fn apply(&mut self, n: u64) {
            match mutation(n) {
                Mutation::Insert { id, n } => {
                    let previous = self.active.insert(id.clone(), inserted_record(&id, n));
                    assert!(previous.is_none(), "model: {id} inserted twice");
                }
                Mutation::Update { id, n } => {
                    let record = self.active.get_mut(&id).expect("model: update of a record");
                    apply_update(record, n);
                }
                Mutation::Log { message } => self.journal.push(message),
                Mutation::Remove { id } => {
                    self.active.remove(&id);
                }
                Mutation::Snapshot { id, n } => {
                    self.snapshots.insert(id.clone(), snapshot_record(&id, n));
                }
            }
        }

        fn read(state: &StateStore) -> Self {
            let logs = LogStore::new(state.durable().clone(), LOG_BOUND);
            let events = logs.entries(JOURNAL, None, usize::MAX).unwrap();
            let seqs: Vec<u64> = events.iter().map(|event| event.seq).collect();
            let contiguous: Vec<u64> = (1..=u64::try_from(events.len()).unwrap()).collect();
            assert_eq!(seqs, contiguous, "journal seqs must be 1..=len, in order");
            Self {
                active: state
                    .load_active()
                    .into_iter()
                    .map(|record| (record.sandbox_id.clone(), record))
                    .collect(),
                snapshots: state
                    .load_snapshots()
                    .into_iter()
                    .map(|record| (record.snapshot_id.clone(), record))
                    .collect(),
                journal: events.into_iter().map(|event| event.message).collect(),
            }
        }

        /// A short account of how `self` (found) differs from `expected`.
        fn difference(&self, expected: &Self) -> String {
            let mut out = Vec::new();
            diff_maps("active", &self.active, &expected.active, &mut out);
            diff_maps("snapshot", &self.snapshots, &expected.snapshots, &mut out);
            if self.journal != expected.journal {
                let common = self
                    .journal
                    .iter()
                    .zip(&expected.journal)
                    .take_while(|(a, b)| a == b)
                    .count();
                out.push(format!(
                    "journal: found {} events, expected {}; first difference at index \
                     {common}: found {:?}, expected {:?}",
                    self.journal.len(),
                    expected.journal.len(),
                    self.journal.get(common),
                    expected.journal.get(common)
                ));
            }
            out.join("\n")
        }
    }

    fn diff_maps<T: PartialEq + std::fmt::Debug>(
        what: &str,
        found: &BTreeMap<String, T>,
        expected: &BTreeMap<String, T>,
        out: &mut Vec<String>,
    ) {
        for (id, value) in found {
            match expected.get(id) {
                None => out.push(format!(
                    "{what} {id} present but never committed: {value:?}"
                )),
                Some(want) if want != value => {
                    out.push(format!("{what} {id}: found {value:?}, expected {want:?}"));
                }
                Some(_) => {}
            }
        }
        for id in expected.keys().filter(|id| !found.contains_key(*id)) {
            out.push(format!("{what} {id} committed but missing"));
        }
    }

    /// The child: only active under `FIRKIN_CRASH_CHILD_DIR`; then it mutates forever, from
    /// mutation `FIRKIN_CRASH_CHILD_START`, until it is killed.
    #[test]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
            return;
        };
        let start: u64 = std::env::var(CHILD_START_ENV)
            .expect("FIRKIN_CRASH_CHILD_START is set with FIRKIN_CRASH_CHILD_DIR")
            .parse()
            .expect("FIRKIN_CRASH_CHILD_START is a number");
        let state = StateStore::open(&dir).expect("child: open the store");
        let logs = LogStore::new(state.durable().clone(), LOG_BOUND);
        // Written straight to the process's stdout (not through the test harness's capture);
        // one short line per write, so a kill never leaves half a line in the pipe.
        let mut stdout = std::io::stdout().lock();
        for n in start.. {
            let mutation = mutation(n);
            match &mutation {
                Mutation::Insert { id, n } => state.insert_active(inserted_record(id, *n)).unwrap(),
                Mutation::Update { id, n } => {
                    state
                        .update_active(id, |record| {
                            apply_update(record, *n);
                            Ok(())
                        })
                        .unwrap();
                }
                Mutation::Log { message } => {
                    logs.record(JOURNAL, message.as_str()).unwrap();
                }
                Mutation::Remove { id } => {
                    state.remove_active(id).unwrap();
                }
                Mutation::Snapshot { id, n } => {
                    state.insert_snapshot(snapshot_record(id, *n)).unwrap();
                }
            }
            let line = format!("committed {n} {}\n", describe(&mutation));
            stdout.write_all(line.as_bytes()).unwrap();
            stdout.flush().unwrap();
        }
    }

    /// Kills and reaps the child however the parent test ends.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            // Already dead and reaped is fine: both calls then fail harmlessly.
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// xorshift64, seeded from the clock (or `FIRKIN_CRASH_SEED`).
    struct XorShift(u64);

    impl XorShift {
        fn seeded() -> (Self, u64) {
            let seed = std::env::var(SEED_ENV).ok().map_or_else(
                || {
                    let nanos = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap()
                        .as_nanos();
                    u64::try_from(nanos % u128::from(u64::MAX)).unwrap()
                },
                |seed| seed.parse().expect("FIRKIN_CRASH_SEED is a number"),
            );
            (Self(seed | 1), seed)
        }

        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn between(&mut self, low: u64, high: u64) -> u64 {
            low + self.next() % (high - low + 1)
        }
    }

    fn read_lines(pipe: impl Read + Send + 'static) -> JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut lines = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                // Only whole lines: the child flushes each one after its mutation committed.
                if line.ends_with('\n') {
                    lines.push(line.trim_end().to_owned());
                }
                line.clear();
            }
            lines
        })
    }

    /// The `n`s of the child's `committed` lines, each checked against [`mutation`].
    fn committed(lines: &[String]) -> Vec<u64> {
        lines
            .iter()
            // libtest may print `test tests::crash_child ... ` before the first line.
            .filter_map(|line| line.find("committed ").map(|at| &line[at..]))
            .map(|line| {
                let rest = line.strip_prefix("committed ").unwrap();
                let (n, described) = rest
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("malformed line {line:?}"));
                let n: u64 = n
                    .parse()
                    .unwrap_or_else(|_| panic!("malformed line {line:?}"));
                assert_eq!(
                    described,
                    describe(&mutation(n)),
                    "the child did mutation {n} differently"
                );
                n
            })
            .collect()
    }

    /// One child run from mutation `start`, killed after `delay`. Returns the committed `n`s.
    fn run_child_until_killed(dir: &Path, start: u64, delay: Duration) -> Vec<u64> {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir)
            .env(CHILD_START_ENV, start.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let mut guard = ChildGuard(child);
        let stdout = read_lines(guard.0.stdout.take().unwrap());
        let stderr = read_lines(guard.0.stderr.take().unwrap());
        std::thread::sleep(delay);
        guard.0.kill().expect("SIGKILL the child");
        let status = guard.0.wait().expect("reap the child");
        let lines = stdout.join().unwrap();
        let errors = stderr.join().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "the child must still have been running when killed; it ended with {status}.\n\
             stdout tail: {:?}\nstderr: {}",
            lines.iter().rev().take(5).collect::<Vec<_>>(),
            errors.join("\n")
        );
        committed(&lines)
    }

    #[test]
    fn killed_writers_leave_a_consistent_store_with_every_committed_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rng, seed) = XorShift::seeded();
        eprintln!("crash_safety: {SEED_ENV}={seed}");
        // `expected` holds mutations 0..next: every committed one, plus an unreported one
        // that was found to have landed.
        let mut expected = Model::default();
        let mut next = 0_u64;
        let mut total_committed = 0_usize;
        for round in 0..ROUNDS {
            let delay = Duration::from_millis(rng.between(MIN_DELAY_MS, MAX_DELAY_MS));
            let committed = run_child_until_killed(dir.path(), next, delay);
            let reported: Vec<u64> = (next..).take(committed.len()).collect();
            assert_eq!(
                committed, reported,
                "round {round}: the child commits mutations in order, from {next}"
            );
            for &n in &committed {
                expected.apply(n);
            }
            next += u64::try_from(committed.len()).unwrap();
            total_committed += committed.len();

            let state = StateStore::open(dir.path()).unwrap_or_else(|error| {
                panic!("round {round}: the store does not reopen after SIGKILL: {error}")
            });
            let found = Model::read(&state);
            // The mutation the child was in when killed may or may not have landed.
            let mut with_unreported = expected.clone();
            with_unreported.apply(next);
            let unreported = if found == expected {
                // It did not land (or changed nothing); the next child does it again.
                "did not land"
            } else if found == with_unreported {
                expected = with_unreported;
                next += 1;
                "landed"
            } else {
                panic!(
                    "round {round} (seed {seed}, killed after {delay:?}, {} committed): the \
                     store differs from the committed mutations 0..{next} (with or without \
                     the unreported {:?}):\n{}",
                    committed.len(),
                    mutation(next),
                    found.difference(&expected)
                );
            };
            eprintln!(
                "crash_safety: round {round}: killed after {delay:?}, {} committed, {} \
                 sandboxes, {} snapshots, {} journal events; the unreported mutation \
                 {unreported}",
                committed.len(),
                found.active.len(),
                found.snapshots.len(),
                found.journal.len()
            );
            // Release the directory lock before the next child opens the store.
            drop(state);
        }
        assert!(
            total_committed >= 50,
            "the children committed only {total_committed} mutations in {ROUNDS} rounds: \
             the test exercised almost nothing"
        );
        assert!(
            !expected.active.is_empty() && !expected.journal.is_empty(),
            "every kind of mutation was exercised"
        );
    }
}
