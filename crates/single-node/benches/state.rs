//! Throughput and latency of firkin-single-node's durable state with 64 sandboxes × 1,000
//! retained log events: log append (at steady state, so each append also drops the oldest
//! event), a record mutation (a deadline change), a record create + delete pair and a log page
//! read. Every operation is timed on its own; the table gives p50/p95/p99/max per operation.
//!
//! In the same run, for comparison on the same (shared, noisy) machine: the seed's log store,
//! which rewrites one pretty-printed JSON file of every sandbox's log on each append; and log
//! appends to three stores retaining 64 × 100, 1,000 and 10,000 events, taking turns call by
//! call, to show that an append does not grow with what is retained.
//!
//! Run with `cargo bench -p firkin-single-node`. `FIRKIN_BENCH_SAMPLES` sets the samples per
//! store operation (default 10,000), `FIRKIN_BENCH_BASELINE_SAMPLES` the seed's (default 100).
//! `cargo test --benches` runs it as a quick smoke test (100 and 3 samples). The database
//! lives in a temporary directory under `TMPDIR`. Results: `docs/BENCHMARKS.md`.

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use firkin_single_node::{
    ActiveSessionRecord, DurableStateStore, LogEvent, LogLevel, LogStore, RuntimeHandle,
    SandboxResources, SandboxState, StateStore, StoredState, TimeoutAction,
};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

const SANDBOXES: usize = 64;
const RETAINED: u32 = 1_000;
const PAGE: usize = 100;
/// Untimed iterations before each measurement (caches, prepared statements, WAL growth).
const WARMUP: usize = 200;

fn main() -> BenchResult {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`, an unoptimized
    // build) this is a smoke run with few samples. Other arguments are ignored.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let samples = env_usize("FIRKIN_BENCH_SAMPLES", if bench { 10_000 } else { 100 });
    let baseline_samples = env_usize("FIRKIN_BENCH_BASELINE_SAMPLES", if bench { 100 } else { 3 });
    let started = Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cpus} CPUs, kernel {}; a shared host, so compare rows of one run, not runs",
        kernel.trim()
    );
    println!(
        "state: {SANDBOXES} sandboxes x {RETAINED} retained log events, SQLite WAL, \
         synchronous=NORMAL\n"
    );
    let ids: Vec<String> = (0..SANDBOXES)
        .map(|k| format!("bench{k:02}sandbox0000000"))
        .collect();
    let mut table = Vec::new();

    let dir = tempfile::tempdir()?;
    let state = StateStore::open(dir.path())?;
    let logs = LogStore::new(state.durable().clone(), RETAINED);
    fill_logs(state.durable(), &ids, RETAINED)?;
    for (k, id) in ids.iter().enumerate() {
        state.insert_active(record(id, k))?;
    }

    table.push(measure("log append (durable)", samples, |i| {
        logs.record_event(&ids[i % SANDBOXES], &event(i))?;
        Ok(())
    })?);
    table.push(measure("update_active (deadline)", samples, |i| {
        state.update_active(&ids[i % SANDBOXES], |record| {
            record.end_at_unix_ms += 1;
            Ok(())
        })?;
        Ok(())
    })?);
    table.push(measure("insert_active + remove_active", samples, |i| {
        let id = format!("fresh{i:015}");
        state.insert_active(record(&id, i))?;
        black_box(state.remove_active(&id)?);
        Ok(())
    })?);
    let newest = ids
        .iter()
        .map(|id| Ok(logs.entries_before(id, None, 1)?[0].seq))
        .collect::<BenchResult<Vec<u64>>>()?;
    table.push(measure("log read, page of 100", samples, |i| {
        let k = i % SANDBOXES;
        // A page that lies wholly inside the retained window [newest - 999, newest].
        let cursor = newest[k] - u64::from(RETAINED) + 1 + (i as u64 * 37) % 901;
        let page = logs.entries(&ids[k], Some(cursor), PAGE)?;
        if page.len() != PAGE {
            return Err(format!("page of {} events, expected {PAGE}", page.len()).into());
        }
        black_box(page);
        Ok(())
    })?);
    drop((logs, state)); // closing checkpoints the WAL into state.db
    let db_bytes = file_len(&dir.path().join(DurableStateStore::DB_FILE));
    drop(dir);

    let mut seed = SeedLogStore::create(&ids)?;
    let baseline = measure("seed: JSON rewrite append", baseline_samples, |i| {
        seed.append(&ids[i % SANDBOXES], &event(i))
    })?;
    let seed_bytes = file_len(&seed.dir.path().join("logs.json"));
    drop(seed);

    // The O(1) check: three stores that differ only in what they retain, taking turns append
    // by append so that the machine's noise falls on all three alike.
    let mut stores = Vec::new();
    for retained in [100, RETAINED, 10_000] {
        let dir = tempfile::tempdir()?;
        let durable = DurableStateStore::open(dir.path())?;
        fill_logs(&durable, &ids, retained)?;
        stores.push((LogStore::new(durable, retained), dir));
    }
    let appends = stores
        .iter()
        .map(|(logs, _)| {
            let name = format!("log append, {SANDBOXES} x {} retained", logs.max_entries());
            let op: Op<'_> = Box::new(|i| {
                logs.record_event(&ids[i % SANDBOXES], &event(i))?;
                Ok(())
            });
            (name, op)
        })
        .collect();
    let scaling = measure_interleaved(appends, samples)?;
    drop(stores);

    let ratio = baseline.p(0.50).as_secs_f64() / table[0].p(0.50).as_secs_f64();
    table.push(baseline);
    print_table(&table);
    println!(
        "state.db {:.1} MB; seed logs.json {:.1} MB",
        mb(db_bytes),
        mb(seed_bytes)
    );
    println!("seed JSON-rewrite append p50 / durable log append p50: {ratio:.0}x\n");
    print_table(&scaling);
    let p50s: Vec<f64> = scaling
        .iter()
        .map(|row| row.p(0.50).as_secs_f64())
        .collect();
    println!(
        "append p50 with {SANDBOXES} x 10,000 retained / with {SANDBOXES} x 100: {:.2}",
        p50s[2] / p50s[0]
    );
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The timings of one operation, sorted.
struct Row {
    name: String,
    samples: Vec<Duration>,
}

impl Row {
    /// Nearest-rank percentile `q` in `0.0..=1.0`.
    fn p(&self, q: f64) -> Duration {
        let rank = (q * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }
}

/// A timed operation: called with the iteration number.
type Op<'a> = Box<dyn FnMut(usize) -> BenchResult + 'a>;

/// Run `op(i)` for a warm-up then `n` timed iterations, timing each call on its own. A sample
/// includes building the operation's input (an event or record: a few small allocations).
fn measure(name: &str, n: usize, op: impl FnMut(usize) -> BenchResult) -> BenchResult<Row> {
    let mut rows = measure_interleaved(vec![(name.to_owned(), Box::new(op))], n)?;
    Ok(rows.remove(0))
}

/// As [`measure`] for several operations that take turns, call by call.
fn measure_interleaved(ops: Vec<(String, Op<'_>)>, n: usize) -> BenchResult<Vec<Row>> {
    let warmup = WARMUP.min(n);
    let (names, mut ops): (Vec<String>, Vec<Op<'_>>) = ops.into_iter().unzip();
    let mut samples = vec![Vec::with_capacity(n); ops.len()];
    for i in 0..warmup + n {
        for (op, samples) in ops.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            op(i)?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
    }
    Ok(names
        .into_iter()
        .zip(samples)
        .map(|(name, mut samples)| {
            samples.sort_unstable();
            Row { name, samples }
        })
        .collect())
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<34} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9}",
        "operation", "n", "p50", "p95", "p99", "max", "ops/s"
    );
    for row in rows {
        let total: Duration = row.samples.iter().sum();
        println!(
            "{:<34} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9.0}",
            row.name,
            row.samples.len(),
            fmt_duration(row.p(0.50)),
            fmt_duration(row.p(0.95)),
            fmt_duration(row.p(0.99)),
            fmt_duration(row.p(1.0)),
            row.samples.len() as f64 / total.as_secs_f64()
        );
    }
}

fn fmt_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1_000.0)
    }
}

/// Give every sandbox `retained` events, one transaction per sandbox.
fn fill_logs(durable: &DurableStateStore, ids: &[String], retained: u32) -> BenchResult {
    for id in ids {
        let events: Vec<LogEvent> = (0..retained as usize).map(event).collect();
        durable.import(&StoredState::default(), &[(id.clone(), events)], retained)?;
    }
    Ok(())
}

/// A log line of about 100 bytes, like a driver's or envd's.
fn event(i: usize) -> LogEvent {
    LogEvent {
        seq: 0,
        timestamp_unix_ms: 1_760_000_000_000 + i as i64,
        level: if i.is_multiple_of(10) {
            LogLevel::Warn
        } else {
            LogLevel::Info
        },
        source: "envd".to_owned(),
        message: format!(
            "process {:>6} exited with status 0 after {:>5} ms; stdout 4096 bytes, \
             stderr 0 bytes, cwd /home/user",
            10_000 + i % 90_000,
            i % 100_000
        ),
    }
}

fn record(id: &str, i: usize) -> ActiveSessionRecord {
    let started = 1_760_000_000_000 + i as i64;
    ActiveSessionRecord {
        sandbox_id: id.to_owned(),
        template_id: "base".to_owned(),
        client_id: "firkin-node-1".to_owned(),
        envd_access_token: Some(format!("{i:032x}")),
        traffic_access_token: Some(format!("{:032x}", i + 1)),
        envd_version: Some("0.2.0".to_owned()),
        state: SandboxState::Running,
        started_at_unix_ms: started,
        end_at_unix_ms: started + 300_000,
        resources: SandboxResources::from_mib(2, 512),
        metadata: BTreeMap::from([
            ("owner".to_owned(), "bench".to_owned()),
            ("purpose".to_owned(), "state benchmark".to_owned()),
        ]),
        on_timeout: TimeoutAction::Kill,
        auto_resume: false,
        allow_internet_access: true,
        runtime_attached: true,
        runtime_handle: Some(RuntimeHandle(format!(
            "cgroup=/firkin/{id};pid={}",
            4_000 + i
        ))),
    }
}

/// The seed's log store, in its shape: every sandbox's events in one map, written as pretty
/// JSON to `logs.json.tmp` and renamed over `logs.json` on every append. No fsync: the seed
/// has none, and the durable store's `synchronous = NORMAL` has none per commit either.
struct SeedLogStore {
    dir: tempfile::TempDir,
    logs: HashMap<String, Vec<SeedLogEvent>>,
}

#[derive(serde::Serialize)]
struct SeedLogEvent {
    timestamp_unix_seconds: i64,
    message: String,
    source: String,
}

impl SeedLogStore {
    fn create(ids: &[String]) -> BenchResult<Self> {
        let logs = ids
            .iter()
            .map(|id| {
                let events = (0..RETAINED as usize)
                    .map(|i| seed_event(&event(i)))
                    .collect();
                (id.clone(), events)
            })
            .collect();
        let store = Self {
            dir: tempfile::tempdir()?,
            logs,
        };
        store.write()?;
        Ok(store)
    }

    fn append(&mut self, sandbox_id: &str, event: &LogEvent) -> BenchResult {
        let events = self.logs.entry(sandbox_id.to_owned()).or_default();
        events.push(seed_event(event));
        if events.len() > RETAINED as usize {
            events.remove(0);
        }
        self.write()
    }

    fn write(&self) -> BenchResult {
        let tmp = self.dir.path().join("logs.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.logs)?)?;
        std::fs::rename(&tmp, self.dir.path().join("logs.json"))?;
        Ok(())
    }
}

fn seed_event(event: &LogEvent) -> SeedLogEvent {
    SeedLogEvent {
        timestamp_unix_seconds: event.timestamp_unix_ms / 1_000,
        message: event.message.clone(),
        source: event.source.clone(),
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |metadata| metadata.len())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}
