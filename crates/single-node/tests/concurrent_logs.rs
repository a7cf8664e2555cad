//! Log appends from many threads through one shared [`firkin_single_node::LogStore`] over a
//! durable store: nothing is lost or duplicated, sequence numbers stay contiguous per sandbox,
//! the bound is enforced, and cursors taken before trimming keep working. Everything is checked
//! again after the store is reopened from disk.

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use firkin_single_node::{LogEvent, LogStore, StateStore};

    const THREADS: usize = 8;
    const EVENTS_PER_THREAD: u64 = 100;

    fn open_logs(dir: &Path, bound: u32) -> (StateStore, LogStore) {
        let state = StateStore::open(dir).expect("open the durable store");
        let logs = LogStore::new(state.durable().clone(), bound);
        (state, logs)
    }

    fn own_sandbox(thread: usize) -> String {
        format!("sbx-{thread}")
    }

    fn message(thread: usize, index: u64) -> String {
        format!("thread {thread} event {index}")
    }

    fn seqs(events: &[LogEvent]) -> Vec<u64> {
        events.iter().map(|event| event.seq).collect()
    }

    /// Each sandbox holds exactly its thread's 100 events, seq 1..=100, in order.
    fn assert_one_sandbox_per_thread(logs: &LogStore) {
        for thread in 0..THREADS {
            let id = own_sandbox(thread);
            assert_eq!(logs.len(&id).unwrap(), 100, "{id}");
            let events = logs.entries(&id, None, 10_000).unwrap();
            assert_eq!(
                seqs(&events),
                (1..=EVENTS_PER_THREAD).collect::<Vec<_>>(),
                "{id}"
            );
            for (index, event) in (0..EVENTS_PER_THREAD).zip(&events) {
                assert_eq!(event.message, message(thread, index), "{id}");
                assert_eq!(event.source, "single-node");
            }
        }
        assert!(logs.entries("sbx-nobody", None, 10).unwrap().is_empty());
    }

    #[test]
    fn eight_threads_each_logging_to_their_own_sandbox_keep_all_800_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_state, logs) = open_logs(dir.path(), 1_000);
            std::thread::scope(|scope| {
                for thread in 0..THREADS {
                    let logs = logs.clone();
                    scope.spawn(move || {
                        let id = own_sandbox(thread);
                        for index in 0..EVENTS_PER_THREAD {
                            let seq = logs.record(&id, message(thread, index)).unwrap();
                            assert_eq!(seq, index + 1, "{id}: only this thread writes here");
                        }
                    });
                }
            });
            assert_one_sandbox_per_thread(&logs);
            // Both the LogStore and the StateStore (which holds the directory lock) drop here.
        }
        let (_state, logs) = open_logs(dir.path(), 1_000);
        assert_one_sandbox_per_thread(&logs);
    }

    /// 800 events in one sandbox: seq 1..=800 in order, every message once, and each thread's
    /// events in the order it wrote them.
    fn assert_shared_sandbox(logs: &LogStore, returned: &[Vec<u64>]) {
        let events = logs.entries("shared", None, 10_000).unwrap();
        assert_eq!(events.len(), 800);
        assert_eq!(logs.len("shared").unwrap(), 800);
        assert_eq!(seqs(&events), (1..=800).collect::<Vec<u64>>());
        let messages: HashSet<&str> = events.iter().map(|event| event.message.as_str()).collect();
        assert_eq!(messages.len(), 800, "no message twice");
        for (thread, returned) in returned.iter().enumerate() {
            for (index, seq) in (0..EVENTS_PER_THREAD).zip(returned) {
                let at = usize::try_from(*seq - 1).unwrap();
                assert_eq!(
                    events[at].message,
                    message(thread, index),
                    "the seq returned by record() is the event's seq"
                );
            }
        }
    }

    #[test]
    fn eight_threads_appending_to_one_sandbox_get_contiguous_unique_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let returned: Vec<Vec<u64>> = {
            let (_state, logs) = open_logs(dir.path(), 1_000);
            let returned: Vec<Vec<u64>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|thread| {
                        let logs = logs.clone();
                        scope.spawn(move || {
                            (0..EVENTS_PER_THREAD)
                                .map(|index| logs.record("shared", message(thread, index)).unwrap())
                                .collect::<Vec<u64>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().unwrap())
                    .collect()
            });
            let mut all: Vec<u64> = returned.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (1..=800).collect::<Vec<u64>>(), "returned seqs");
            for own in &returned {
                assert!(
                    own.windows(2).all(|pair| pair[0] < pair[1]),
                    "a thread's later event has a later seq: {own:?}"
                );
            }
            assert_shared_sandbox(&logs, &returned);
            returned
        };
        let (_state, logs) = open_logs(dir.path(), 1_000);
        assert_shared_sandbox(&logs, &returned);
    }

    #[test]
    fn the_bound_drops_the_oldest_and_old_cursors_still_work() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (_state, logs) = open_logs(dir.path(), 10);
            assert_eq!(logs.max_entries(), 10);
            let mut cursor = None;
            for index in 1..=25_u64 {
                let seq = logs.record("bounded", format!("m{index}")).unwrap();
                assert_eq!(seq, index);
                if index == 3 {
                    // A reader's cursor, taken while event 3 is still retained.
                    cursor = Some(seq);
                    assert_eq!(
                        logs.entries("bounded", cursor, 100).unwrap()[0].message,
                        "m3"
                    );
                }
                assert_eq!(
                    logs.len("bounded").unwrap(),
                    usize::try_from(index.min(10)).unwrap()
                );
            }
            assert_bounded(&logs, cursor);
        }
        let (_state, logs) = open_logs(dir.path(), 10);
        assert_bounded(&logs, Some(3));
        // Appending after a reopen continues the sequence; it never restarts or reuses.
        assert_eq!(logs.record("bounded", "m26").unwrap(), 26);
        assert_eq!(
            seqs(&logs.entries("bounded", None, 100).unwrap()),
            (17..=26).collect::<Vec<u64>>()
        );
    }

    fn assert_bounded(logs: &LogStore, old_cursor: Option<u64>) {
        assert_eq!(logs.len("bounded").unwrap(), 10);
        let retained = logs.entries("bounded", None, 100).unwrap();
        assert_eq!(seqs(&retained), (16..=25).collect::<Vec<u64>>());
        let messages: Vec<&str> = retained.iter().map(|e| e.message.as_str()).collect();
        let expected: Vec<String> = (16..=25).map(|i| format!("m{i}")).collect();
        assert_eq!(messages, expected);

        let from_old = logs.entries("bounded", old_cursor, 4).unwrap();
        assert_eq!(
            seqs(&from_old),
            [16, 17, 18, 19],
            "an expired cursor starts at the oldest retained event"
        );
        assert_eq!(from_old[0].message, "m16");
        assert_eq!(
            seqs(&logs.entries("bounded", Some(20), 100).unwrap()),
            (20..=25).collect::<Vec<u64>>()
        );
        assert!(logs.entries("bounded", Some(26), 100).unwrap().is_empty());
        assert_eq!(
            seqs(&logs.entries_before("bounded", Some(18), 100).unwrap()),
            [17, 16],
            "reading backwards stops at the oldest retained event"
        );
    }
}
