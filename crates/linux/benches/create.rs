//! Sandbox create and delete with the Linux driver, measured on this machine as root, against
//! `runc` in the same run:
//!
//! - **firkin**: `NamespaceDriver::create` (through `RuntimeDriver::create`, with a
//!   `PortRegistry`) of a `base` sandbox, which returns once envd answers `GET /health`; then
//!   `delete`, timed on its own. Two drivers side by side: one without a warm pool (every
//!   create starts its sandbox) and one with the daemon's default warm pool of 2 (a create
//!   hands out a sandbox started ahead; the pool refills while the other rows run), plus that
//!   driver in bursts of 10 creates in a row, where the pool drains;
//! - **baseline**, interleaved call by call: `runc run -d` of an OCI bundle whose root is the
//!   same `base` template root filesystem, with the host's `/usr` bound read-only, running the
//!   same static envd (bound read-only at the same place, `/run/firkin/envd` on a `/run`
//!   tmpfs) until it answers `GET /health` with 204 (host networking, envd on a loopback
//!   port: the cheapest set-up for runc), then `runc delete -f`; and `runc run` of `/bin/true`
//!   to its exit (the bare engine cost). Skipped with a `SKIP` line when `runc` is missing
//!   (Debian package `runc`; `scripts/bench-runc-setup` installs it);
//! - **a template from an image**: the same create and delete of a sandbox whose root is a
//!   small image's layers (Debian's static busybox with its applets, plus the system layer
//!   every template from an image gets) instead of `base`, on both drivers (the warm one keeps
//!   one such sandbox ahead, as `firkin serve`'s default `warm-pool-per-template`);
//! - **idle memory**: `FIRKIN_BENCH_IDLE` (default 100) sandboxes created one after another
//!   and left idle for 2 s: the increase of host memory in use (`MemTotal - MemAvailable`),
//!   the sum of their cgroups' memory usage and of their processes' PSS, per sandbox; the
//!   create latency of the first 10 against the last 10; then they are all deleted;
//! - **phases**: the driver's create and delete redone step by step with the same building
//!   blocks (template, idmapped `/usr` view, limits, helper, envd), each step timed, to show
//!   where the time goes; plus envd alone and one process joining a sandbox cgroup.
//!
//! Run with `cargo bench -p firkin-linux --bench create` as root, with nftables. n is
//! `FIRKIN_BENCH_SAMPLES` (default 200) after 5 untimed warm-up rounds. envd is
//! `FIRKIN_ENVD_BIN`, else the static binary `scripts/build-envd` builds (and prints). The
//! init helper is this crate's `firkin-sandbox-init`, built by cargo with the bench.
//! `FIRKIN_BENCH_NO_RUNC=1` leaves the baseline out. `FIRKIN_BENCH_DISK_SIZE_MB` sets the
//! sandboxes' disk (default the driver's, 10 GiB; 0: no disk of their own, as before disks). `cargo test --benches` runs it as a
//! quick smoke run (3 samples, 3 idle sandboxes).
//!
//! Isolation from other firkin users of the host: the bench moves itself into a cgroup of its
//! own (`<own cgroup>/firkin-bench-<pid>` in each hierarchy the driver uses), so the
//! driver's start-up reclaim of leftover sandbox cgroups sees only this bench's, and it uses
//! the slot ranges `10.203.0.0/17` and `10.203.128.0/17` and temporary state directories,
//! whose namespace directories make each slot pool an instance of its own (other pools on the
//! host keep their slots; a pool already using those ranges makes the bench fail at start). Everything it made is
//! deleted at the end, on errors too, and checked: sandboxes, cgroups, slots, mounts and runc
//! containers. Results: `docs/BENCHMARKS.md`.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use firkin_linux::cgroup::{CgroupLayout, SandboxCgroup};
use firkin_linux::driver::{NamespaceConfig, NamespaceDriver};
use firkin_linux::envd_probe::{READY_POLL, wait_until_healthy};
use firkin_single_node::{
    PortRegistry, RuntimeDriver, SandboxResources, SingleNodeCreateRequest, TemplateImage,
};
use futures::FutureExt;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Untimed rounds before the interleaved measurement.
const WARMUP: usize = 5;
/// The slot ranges of this bench's two drivers (the driver test uses 10.201, the net tests
/// 10.200 and 10.208).
const COLD_RANGE: &str = "10.203.0.0/17";
const WARM_RANGE: &str = "10.203.128.0/17";
/// The warm driver's pool, as `firkin serve`'s default.
const WARM_POOL: usize = 2;
/// Creates in a row in the burst rows.
const BURST: usize = 10;
/// Where the sandbox's first process, envd, is bound (as `InitSpec::ENVD_PATH`).
const ENVD_PATH: &str = "/run/firkin/envd";
/// The same limits as a sandbox of `SandboxResources::from_mib(1, 256)`.
const MEMORY_BYTES: u64 = 256 << 20;
const PIDS_MAX: u64 = 4096;

fn main() -> BenchResult {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) this is a smoke run.
    let bench = std::env::args().any(|arg| arg == "--bench");
    let samples = env_usize("FIRKIN_BENCH_SAMPLES", if bench { 200 } else { 3 });
    let idle = env_usize("FIRKIN_BENCH_IDLE", if bench { 100 } else { 3 });
    if !rustix::process::geteuid().is_root() {
        println!("SKIP create bench: needs root");
        return Ok(());
    }
    if Command::new("nft").arg("--version").output().is_err() {
        println!("SKIP create bench: needs nftables (nft)");
        return Ok(());
    }
    let envd = envd_binary()?;
    let helper = PathBuf::from(env!("CARGO_BIN_EXE_firkin-sandbox-init"));
    let cgroup = BenchCgroup::enter()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(run(Settings {
        samples,
        idle,
        envd,
        helper,
    }));
    drop(runtime);
    let left = cgroup.leave();
    outcome?;
    left
}

struct Settings {
    samples: usize,
    idle: usize,
    envd: PathBuf,
    helper: PathBuf,
}

/// What is alive and must be deleted whatever happens.
#[derive(Default)]
struct Live {
    sandboxes: Mutex<Vec<String>>,
    runc: Mutex<Vec<String>>,
    /// Cgroups of the phase rounds (not the driver's).
    cgroups: Mutex<Vec<String>>,
}

impl Live {
    fn add_sandbox(&self, id: &str) {
        lock(&self.sandboxes).push(id.to_owned());
    }

    fn remove_sandbox(&self, id: &str) {
        lock(&self.sandboxes).retain(|live| live != id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn run(settings: Settings) -> BenchResult {
    let state = tempfile::tempdir()?;
    let mut config = NamespaceConfig::new(state.path(), &settings.envd, &settings.helper);
    config.net.range = COLD_RANGE.parse()?;
    config.net.pool_size = 4;
    // Every create of this driver starts its sandbox (the path a burst falls back to).
    config.warm_pool = 0;
    config.warm_pool_per_template = 0;
    let warm_state = tempfile::tempdir()?;
    let mut warm_config = NamespaceConfig::new(warm_state.path(), &settings.envd, &settings.helper);
    warm_config.net.range = WARM_RANGE.parse()?;
    warm_config.net.pool_size = 4;
    warm_config.warm_pool = WARM_POOL;
    if let Some(size_mb) = std::env::var("FIRKIN_BENCH_DISK_SIZE_MB")
        .ok()
        .and_then(|size| size.parse().ok())
    {
        config.disk_size_mb = size_mb;
        warm_config.disk_size_mb = size_mb;
    }
    println!(
        "sandbox disks: {} MiB (0: none; FIRKIN_BENCH_DISK_SIZE_MB)",
        config.disk_size_mb
    );
    let runc = if std::env::var_os("FIRKIN_BENCH_NO_RUNC").is_some() {
        println!("SKIP runc baseline: FIRKIN_BENCH_NO_RUNC is set");
        None
    } else {
        Runc::find(state.path())
    };
    let driver = NamespaceDriver::new(config.clone(), &[]).await?;
    let warm = NamespaceDriver::new(warm_config.clone(), &[]).await?;
    let live = Live::default();
    let warm_live = Live::default();
    // A panic in the measurement must not skip the clean-up below.
    let measured = std::panic::AssertUnwindSafe(measure(
        Drivers {
            cold: &driver,
            warm: &warm,
            warm_live: &warm_live,
        },
        runc.as_ref(),
        &settings,
        &live,
    ))
    .catch_unwind()
    .await;
    // The warm driver first: its warm sandboxes are cgroups the other's check would count.
    let warm_cleanup = clean_up(warm, &warm_config, None, &warm_live).await;
    let cleanup = clean_up(driver, &config, runc.as_ref(), &live)
        .await
        .and(warm_cleanup);
    drop((state, warm_state));
    match measured {
        Ok(result) => result.and(cleanup),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The two drivers measured side by side: one without a warm pool, one with.
#[derive(Clone, Copy)]
struct Drivers<'a> {
    cold: &'a NamespaceDriver,
    warm: &'a NamespaceDriver,
    warm_live: &'a Live,
}

async fn measure(
    drivers: Drivers<'_>,
    runc: Option<&Runc>,
    settings: &Settings,
    live: &Live,
) -> BenchResult {
    let driver = drivers.cold;
    let started = Instant::now();
    // Before anything runs: the load average then is the host's, not the bench's.
    let machine = machine_line();
    let ports = PortRegistry::new();
    let layout = CgroupLayout::detect()?;
    let template_rootfs = driver.state_dir().join("templates/base/rootfs");
    let bundles = match runc {
        Some(runc) => Some(runc.bundles(&template_rootfs, &settings.envd)?),
        None if std::env::var_os("FIRKIN_BENCH_NO_RUNC").is_some() => None,
        None => {
            println!(
                "SKIP runc baseline: no runc binary (apt-get install runc, or \
                 scripts/bench-runc-setup); measuring firkin only"
            );
            None
        }
    };
    // Let the pools fill before the first create.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if !drivers.warm.wait_warm(Duration::from_secs(30)).await {
        return Err("the warm pool did not fill within 30 s".into());
    }

    let images = bench_image(driver.state_dir())?;
    let warm_images = bench_image(drivers.warm.state_dir())?;
    let n = settings.samples;
    let mut template_create = Vec::with_capacity(n);
    let mut warm_template_create = Vec::with_capacity(n);
    let mut create = Vec::with_capacity(n);
    let mut delete = Vec::with_capacity(n);
    let mut warm_create = Vec::with_capacity(n);
    let mut warm_delete = Vec::with_capacity(n);
    let mut cold_phases = Phases::new();
    let mut warm_phases = Phases::new();
    let mut runc_envd = Vec::with_capacity(n);
    let mut runc_delete = Vec::with_capacity(n);
    let mut runc_true = Vec::with_capacity(n);
    // Interleaved, so the shared host's noise falls on every row alike.
    for i in 0..WARMUP + n {
        let timed = i >= WARMUP;
        let (made, removed) =
            create_and_delete(driver, &ports, live, &mut cold_phases, None).await?;
        let (warm_made, warm_removed) = create_and_delete(
            drivers.warm,
            &ports,
            drivers.warm_live,
            &mut warm_phases,
            None,
        )
        .await?;
        let (template_made, _) =
            create_and_delete(driver, &ports, live, &mut Phases::new(), Some(&images)).await?;
        let (warm_template_made, _) = create_and_delete(
            drivers.warm,
            &ports,
            drivers.warm_live,
            &mut Phases::new(),
            Some(&warm_images),
        )
        .await?;
        if let (Some(runc), Some(bundles)) = (runc, &bundles) {
            let (up, down) = runc.envd_round(bundles, i, live)?;
            let bare = runc.true_round(bundles, i)?;
            if timed {
                runc_envd.push(up);
                runc_delete.push(down);
                runc_true.push(bare);
            }
        }
        if timed {
            template_create.push(template_made);
            warm_template_create.push(warm_template_made);
            create.push(made);
            delete.push(removed);
            warm_create.push(warm_made);
            warm_delete.push(warm_removed);
        }
    }
    let mut rows = vec![
        Row::new("firkin: create -> envd /health 204", create),
        Row::new("firkin: delete", delete),
    ];
    let mut warm_rows = vec![
        Row::new(
            format!("firkin warm pool {WARM_POOL}: create -> 204"),
            warm_create,
        ),
        Row::new(format!("firkin warm pool {WARM_POOL}: delete"), warm_delete),
    ];
    for (phases, which) in [(cold_phases, "cold"), (warm_phases, "warm")] {
        for (name, samples) in phases {
            warm_rows.push(Row::new(format!("  {which} create, phase {name}"), samples));
        }
    }
    warm_rows.push(Row::new(
        "firkin: create from a template (busybox image) -> 204",
        template_create,
    ));
    warm_rows.push(Row::new(
        "firkin warm pool: create from a template -> 204",
        warm_template_create,
    ));
    let burst = burst_creates(drivers.warm, &ports, drivers.warm_live, n).await?;
    warm_rows.push(Row::new(
        format!("firkin warm pool {WARM_POOL}: bursts of {BURST}"),
        burst,
    ));
    if runc.is_some() {
        rows.push(Row::new("runc: run -d envd -> /health 204", runc_envd));
        rows.push(Row::new("runc: delete -f (envd)", runc_delete));
        rows.push(Row::new("runc: run /bin/true -> exit", runc_true));
    }

    let idle = idle_sandboxes(driver, &ports, &layout, settings.idle, live, None).await?;
    let idle_template =
        idle_sandboxes(driver, &ports, &layout, settings.idle, live, Some(&images)).await?;
    rows.push(Row::new(
        format!("firkin: create, 0..{} live", settings.idle),
        idle.creates.clone(),
    ));
    rows.push(Row::new(
        format!("firkin: delete, {}..1 live", settings.idle),
        idle.deletes.clone(),
    ));

    let phase_rounds = settings.samples.min(100);
    let phase_rows = phases(driver, settings, &layout, phase_rounds, live)?;

    println!("{machine}");
    println!(
        "envd {}; slot pools of 4; runc {}",
        settings.envd.display(),
        runc.map_or_else(|| "absent".to_owned(), |runc| runc.version.clone())
    );
    println!(
        "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "operation", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for row in rows
        .iter()
        .take(2)
        .chain(&warm_rows)
        .chain(rows.iter().skip(2))
    {
        row.print();
    }
    if runc.is_some() {
        println!(
            "runc envd p50 / firkin create p50: {:.2}x cold, {:.2}x warm; runc /bin/true p50 / \
             firkin create p50: {:.2}x cold",
            rows[2].p(0.50).as_secs_f64() / rows[0].p(0.50).as_secs_f64(),
            rows[2].p(0.50).as_secs_f64() / warm_rows[0].p(0.50).as_secs_f64(),
            rows[4].p(0.50).as_secs_f64() / rows[0].p(0.50).as_secs_f64(),
        );
    }
    idle.print("base");
    idle_template.print("template from an image");
    println!(
        "\nphases of a create and delete, redone step by step with the driver's building \
         blocks (its template, /usr views, limits and helper; a netns of the bench's own, no slot):"
    );
    println!(
        "{:<40} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "phase", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for row in &phase_rows {
        row.print();
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "total bench time {:.1} s; load average at the end {}",
        started.elapsed().as_secs_f64(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// `BURST` creates one right after another (the warm pool drains after its first few), then
/// their deletes, until `n` creates are timed.
async fn burst_creates(
    driver: &NamespaceDriver,
    ports: &PortRegistry,
    live: &Live,
    n: usize,
) -> BenchResult<Vec<Duration>> {
    let mut creates = Vec::with_capacity(n);
    while creates.len() < n {
        // Each burst starts with a full pool, as after a quiet spell.
        driver.wait_warm(Duration::from_secs(30)).await;
        let mut ids = Vec::with_capacity(BURST);
        for _ in 0..BURST.min(n - creates.len()) {
            let (id, took) = create_timed(driver, ports, live, None).await?;
            creates.push(took);
            ids.push(id);
        }
        for id in &ids {
            driver.delete(id, None).await?;
            ports.remove_sandbox(id);
            live.remove_sandbox(id);
        }
    }
    Ok(creates)
}

/// One create, recorded as live (for the clean-up) until the caller deletes it: its id and
/// how long it took.
async fn create_timed(
    driver: &NamespaceDriver,
    ports: &PortRegistry,
    live: &Live,
    image: Option<&TemplateImage>,
) -> BenchResult<(String, Duration)> {
    let request = match image {
        Some(image) => request().with_image(image.clone()),
        None => request(),
    };
    let id = request.sandbox_id().as_str().to_owned();
    live.add_sandbox(&id);
    let started = Instant::now();
    driver.create(&request, ports).await?;
    Ok((id, started.elapsed()))
}

/// A template from a small image in the driver's image store under `state_dir`: one layer of
/// Debian's static busybox and its applets, and the system layer.
fn bench_image(state_dir: &Path) -> BenchResult<TemplateImage> {
    let ids = firkin_image::IdShift {
        host_start: 100_000,
        count: 65_536,
    };
    let templates = firkin_image::Templates::open(
        &state_dir.join("images"),
        firkin_image::UnpackOptions::new(ids),
    )?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        match link {
            Some(target) => tar.append_link(&mut header, path, target),
            None => tar.append_data(&mut header, path, data),
        }
    };
    for dir in ["bin", "etc"] {
        add(dir, tar::EntryType::Directory, &[], None)?;
    }
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        &std::fs::read("/bin/busybox")?,
        None,
    )?;
    add("bin/sh", tar::EntryType::Symlink, &[], Some("busybox"))?;
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        b"root:x:0:0:root:/root:/bin/sh\n",
        None,
    )?;
    let image = templates
        .layers
        .unpack(std::io::Cursor::new(tar.into_inner()?), Default::default())?;
    let system = firkin_image::provision::system_layer(std::slice::from_ref(&image.path), ids);
    let system = templates
        .layers
        .unpack(std::io::Cursor::new(system), Default::default())?;
    Ok(TemplateImage {
        template_id: "bench-busybox".into(),
        name: "bench-busybox".into(),
        build_id: "bench".into(),
        layers: vec![image.path, system.path],
        env: vec![],
        user: Some("user".into()),
        workdir: None,
        start_cmd: None,
        ready_cmd: None,
        keep_warm: true,
        on_base: false,
    })
}

fn request() -> SingleNodeCreateRequest {
    SingleNodeCreateRequest::new("base", SandboxResources::from_mib(1, 256))
}

/// The phases a driver reported for its creates, by name.
type Phases = std::collections::BTreeMap<&'static str, Vec<Duration>>;

/// One firkin create (until envd answers) and delete; returns their times and adds the
/// create's phases to `phases`.
async fn create_and_delete(
    driver: &NamespaceDriver,
    ports: &PortRegistry,
    live: &Live,
    phases: &mut Phases,
    image: Option<&TemplateImage>,
) -> BenchResult<(Duration, Duration)> {
    let request = match image {
        Some(image) => request().with_image(image.clone()),
        None => request(),
    };
    let id = request.sandbox_id().as_str().to_owned();
    live.add_sandbox(&id);
    let started = Instant::now();
    let created = driver.create(&request, ports).await?;
    let made = started.elapsed();
    for (name, took) in created.phases {
        phases.entry(name).or_default().push(took);
    }
    let started = Instant::now();
    driver.delete(&id, None).await?;
    let removed = started.elapsed();
    ports.remove_sandbox(&id);
    live.remove_sandbox(&id);
    Ok((made, removed))
}

struct Idle {
    count: usize,
    creates: Vec<Duration>,
    deletes: Vec<Duration>,
    host_used_before: u64,
    host_used_after: u64,
    cgroup_bytes: u64,
    pss_kib: u64,
    /// Process name → how many, over all idle sandboxes.
    processes: std::collections::BTreeMap<String, usize>,
}

/// `count` sandboxes made one after another, left idle for 2 s, measured, deleted.
async fn idle_sandboxes(
    driver: &NamespaceDriver,
    ports: &PortRegistry,
    layout: &CgroupLayout,
    count: usize,
    live: &Live,
    image: Option<&TemplateImage>,
) -> BenchResult<Idle> {
    // The last deletes' background veth removals and the pool's refill settle first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let host_used_before = host_used_bytes()?;
    let mut ids = Vec::with_capacity(count);
    let mut creates = Vec::with_capacity(count);
    for _ in 0..count {
        let (id, took) = create_timed(driver, ports, live, image).await?;
        creates.push(took);
        ids.push(id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let host_used_after = host_used_bytes()?;
    let mut cgroup_bytes = 0;
    let mut pss_kib = 0;
    let mut processes = std::collections::BTreeMap::new();
    for id in &ids {
        // A sandbox's cgroup is named as its directory (its id, or the pool name of a warm
        // sandbox or a prepared directory).
        let dir = driver.sandbox_path(id);
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or(id);
        let cgroup = SandboxCgroup::open(layout.handle_for(name)?)?;
        cgroup_bytes += cgroup.memory_usage_bytes()?;
        for pid in cgroup.pids()? {
            pss_kib += pss_kib_of(pid);
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            *processes.entry(name.trim().to_owned()).or_insert(0) += 1;
        }
    }
    let mut deletes = Vec::with_capacity(count);
    for id in &ids {
        let started = Instant::now();
        driver.delete(id, None).await?;
        deletes.push(started.elapsed());
        ports.remove_sandbox(id);
        live.remove_sandbox(id);
    }
    Ok(Idle {
        count,
        creates,
        deletes,
        host_used_before,
        host_used_after,
        cgroup_bytes,
        pss_kib,
        processes,
    })
}

impl Idle {
    fn print(&self, what: &str) {
        let per = |bytes: f64| bytes / self.count as f64 / f64::from(1 << 20);
        // Signed: other tenants of the host move it too, either way.
        let host = self.host_used_after as i64 - self.host_used_before as i64;
        println!(
            "idle, {} sandboxes of {what} after 2 s: host MemTotal-MemAvailable {:+.1} MiB = {:.2} MiB per \
             sandbox; cgroup memory usage {:.2} MiB per sandbox; PSS {:.2} MiB per sandbox \
             (processes: {:?})",
            self.count,
            host as f64 / f64::from(1 << 20),
            per(host as f64),
            per(self.cgroup_bytes as f64),
            per((self.pss_kib << 10) as f64),
            self.processes
        );
        let k = self.count.min(10);
        let first = Row::new("first", self.creates[..k].to_vec());
        let last = Row::new("last", self.creates[self.count - k..].to_vec());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "create latency, first {k} vs last {k} of {}: median {:.3} vs {:.3} ms, max {:.3} vs \
             {:.3} ms",
            self.count,
            ms(first.p(0.50)),
            ms(last.p(0.50)),
            ms(first.p(1.0)),
            ms(last.p(1.0))
        );
    }
}

/// A network namespace held by a `sleep` of its own (killed when the bench exits: its parent
/// death signal), with `lo` up: where the phase rounds' sandboxes and probes meet.
struct Netns {
    holder: std::process::Child,
}

impl Netns {
    fn start() -> BenchResult<Self> {
        let holder = Command::new("setpriv")
            .args([
                "--pdeathsig",
                "KILL",
                "--",
                "unshare",
                "--net",
                "--",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .spawn()?;
        let netns = Self { holder };
        let ours = std::fs::read_link("/proc/self/ns/net")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(netns.path())? == ours {
            if Instant::now() > deadline {
                return Err("unshare --net did not make a namespace within 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let status = Command::new("nsenter")
            .arg(format!("--net={}", netns.path().display()))
            .args(["ip", "link", "set", "lo", "up"])
            .status()?;
        if !status.success() {
            return Err(format!("ip link set lo up: {status}").into());
        }
        Ok(netns)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.holder.id()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// The driver's create and delete redone step by step with the same building blocks (its
/// template, its idmapped host views, the same limits, helper, envd and arguments), each step
/// timed: directories, cgroup, launch (the helper until it reports PID 1), envd answering
/// `/health` (polled every 2 ms as the driver does, and every 0.1 ms, in alternate rounds),
/// then the cgroup's kill and removal and the directories' removal. What it leaves out is the
/// slot (taken from the pool in microseconds; released in delete), so the sandboxes share one
/// namespace of the bench's. Also envd alone, started on the host in that namespace.
fn phases(
    driver: &NamespaceDriver,
    settings: &Settings,
    layout: &CgroupLayout,
    rounds: usize,
    live: &Live,
) -> BenchResult<Vec<Row>> {
    let netns = Netns::start()?;
    let state = driver.state_dir();
    let template = state.join("templates/base");
    let mounted = mounts_under(&state.display().to_string())?;
    let layer_specs = firkin_linux::rootfs::mounts_for(&template);
    let names = [
        "dirs",
        "cgroup create",
        "launch (helper -> PID 1 reported)",
        "envd serving, its ready line (driver's)",
        "envd answering, 0.2 ms poll of /health",
        "create, sum of the steps",
        "cgroup kill (v1: freeze, SIGKILL, thaw)",
        "cgroup rmdir",
        "remove directories",
        "delete, sum of the steps",
        "envd alone: spawn -> /health, 0.1 ms",
        "cgroup attach of a process (procs writes)",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); names.len()];
    let netns_path = netns.path();
    let limits = firkin_linux::cgroup::CgroupLimits {
        cpu_millis: Some(1000),
        memory_bytes: Some(MEMORY_BYTES),
        pids_max: Some(PIDS_MAX),
    };
    let round = |k: usize, samples: &mut Vec<Vec<Duration>>| -> BenchResult {
        let name = format!("phase-{k}");
        let dir = state.join("phases").join(&name);
        let shift = 100_000;
        let layers: Vec<firkin_linux::sandbox::LayerMount> = layer_specs
            .iter()
            .map(|spec| {
                let layer = spec
                    .target
                    .to_string_lossy()
                    .trim_start_matches('/')
                    .replace('/', "-");
                let view = state.join("views/base").join(&layer);
                let idmapped = mounted.iter().any(|at| Path::new(at) == view);
                firkin_linux::sandbox::LayerMount {
                    source: if idmapped { view } else { spec.source.clone() },
                    target: spec.target.clone(),
                    overlay: (spec.overlay && idmapped).then(|| {
                        (
                            dir.join("layers").join(&layer).join("upper"),
                            dir.join("layers").join(&layer).join("work"),
                        )
                    }),
                    extra_lowers: Vec::new(),
                }
            })
            .collect();
        let started = Instant::now();
        for sub in ["upper/etc", "work", "root"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for (upper, work) in layers.iter().filter_map(|l| l.overlay.as_ref()) {
            for path in [upper, work] {
                std::fs::create_dir_all(path)?;
                std::os::unix::fs::lchown(path, Some(shift), Some(shift))?;
            }
        }
        std::fs::write(
            dir.join("upper/etc/hosts"),
            firkin_linux::rootfs::hosts_file(&name),
        )?;
        std::fs::write(
            dir.join("upper/etc/hostname"),
            firkin_linux::rootfs::hostname_file(&name),
        )?;
        for path in [
            "upper",
            "upper/etc",
            "upper/etc/hosts",
            "upper/etc/hostname",
            "work",
        ] {
            std::os::unix::fs::lchown(dir.join(path), Some(shift), Some(shift))?;
        }
        let dirs = started.elapsed();
        let started = Instant::now();
        lock(&live.cgroups).push(name.clone());
        let cgroup = SandboxCgroup::create(layout, &name, &limits)?;
        let made = started.elapsed();
        let spec = firkin_linux::sandbox::InitSpec {
            hostname: name.clone(),
            netns: Some(netns_path.clone()),
            lower_dirs: vec![template.join("rootfs")],
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            root_dir: dir.join("root"),
            layers,
            envd_binary: settings.envd.clone(),
            envd_args: ["--listen", "0.0.0.0:49983", "--default-user", "user"]
                .map(String::from)
                .to_vec(),
            envd_env: vec![],
            envd_access_token: Some(firkin_linux::sandbox::EnvdAccessToken(random_token())),
            // As the driver's default for `base`.
            no_new_privs: false,
        };
        let ids = firkin_linux::sandbox::spawn::IdMap {
            host_start: shift,
            count: 65_536,
        };
        let started = Instant::now();
        let handle = firkin_linux::sandbox::spawn::launch(
            &settings.helper,
            &spec,
            ids,
            &cgroup.procs_paths(),
        )?;
        let launched = started.elapsed();
        let started = Instant::now();
        // Every other round the way the driver did before envd's ready line: poll /health.
        if k.is_multiple_of(2) {
            handle.wait_until_serving(Duration::from_secs(10))?;
        } else {
            drop(handle);
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, 49983));
            if !wait_until_healthy(address, Duration::from_secs(10), READY_POLL) {
                return Err(format!("envd of {name} did not answer within 10 s").into());
            }
        }
        let answered = started.elapsed();
        let started = Instant::now();
        cgroup.kill()?;
        let killed = started.elapsed();
        let started = Instant::now();
        cgroup.remove()?;
        lock(&live.cgroups).retain(|live| *live != name);
        let removed = started.elapsed();
        let started = Instant::now();
        std::fs::remove_dir_all(&dir)?;
        let rmdir = started.elapsed();

        let started = Instant::now();
        let mut alone = Command::new(&settings.envd)
            .args(["--listen", "127.0.0.1:49984"])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let up = wait_until_healthy(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 49984)),
            Duration::from_secs(10),
            Duration::from_micros(100),
        );
        let alone_up = started.elapsed();
        let _ = alone.kill();
        let _ = alone.wait();
        if !up {
            return Err("envd alone did not answer within 10 s".into());
        }

        let wait = if k.is_multiple_of(2) { 3 } else { 4 };
        let steps = [
            (0, dirs),
            (1, made),
            (2, launched),
            (wait, answered),
            (5, dirs + made + launched + answered),
            (6, killed),
            (7, removed),
            (8, rmdir),
            (9, killed + removed + rmdir),
            (10, alone_up),
        ];
        if k >= WARMUP {
            for (i, sample) in steps {
                samples[i].push(sample);
            }
        }
        Ok(())
    };
    // Every step on one thread that lives in the namespace: the probes connect there.
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> BenchResult {
                let file = File::open(&netns_path)?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&file),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                for k in 0..WARMUP + rounds {
                    round(k, &mut samples)?;
                }
                Ok(())
            })
            .join()
            .map_err(|_| "the phase thread panicked")?
    })?;
    // What the helper does first (in `pre_exec`, before its exec): join the sandbox's
    // cgroups. Here a `sleep` joins a fresh one, 20 ms after the last cgroup change, as
    // creates come.
    for k in 0..WARMUP + rounds {
        let name = format!("attach-{k}");
        lock(&live.cgroups).push(name.clone());
        let cgroup = SandboxCgroup::create(layout, &name, &limits)?;
        let mut child = Command::new("sleep")
            .arg("10")
            .stdin(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        let joined = cgroup.add_process(child.id());
        let took = started.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        joined?;
        cgroup.remove()?;
        lock(&live.cgroups).retain(|live| *live != name);
        if k >= WARMUP {
            samples[11].push(took);
        }
    }
    drop(netns);
    Ok(names
        .into_iter()
        .zip(samples)
        .map(|(name, samples)| Row::new(name, samples))
        .collect())
}

fn random_token() -> String {
    firkin_single_node::SandboxId::generate().to_string()
}

/// Deletes whatever is still alive, drops the driver, reclaims the pool's spare slots and
/// checks that nothing is left.
async fn clean_up(
    driver: NamespaceDriver,
    config: &NamespaceConfig,
    runc: Option<&Runc>,
    live: &Live,
) -> BenchResult {
    let mut problems = Vec::new();
    let sandboxes: Vec<String> = lock(&live.sandboxes).drain(..).collect();
    for id in &sandboxes {
        if let Err(error) = driver.delete(id, None).await {
            problems.push(format!("delete {id}: {error}"));
        }
    }
    // Its warm sandboxes and spare slots go (as when the daemon stops).
    if let Err(error) = driver.shutdown().await {
        problems.push(format!("driver shutdown: {error}"));
    }
    let layout = CgroupLayout::detect()?;
    for name in lock(&live.cgroups).drain(..) {
        if let Err(error) = SandboxCgroup::reclaim(&layout, &name) {
            problems.push(format!("remove cgroup {name}: {error}"));
        }
    }
    if let Some(runc) = runc {
        let containers: Vec<String> = lock(&live.runc).drain(..).collect();
        for id in &containers {
            if let Err(error) = runc.delete(id) {
                problems.push(format!("runc delete {id}: {error}"));
            }
        }
        match runc.list() {
            Ok(left) if left.is_empty() => {}
            Ok(left) => problems.push(format!("runc containers left: {left:?}")),
            Err(error) => problems.push(format!("runc list: {error}")),
        }
    }
    let sandbox_dirs = std::fs::read_dir(driver.state_dir().join("sandboxes"))
        .map(|entries| entries.count())
        .unwrap_or(0);
    if sandbox_dirs > 0 {
        problems.push(format!("{sandbox_dirs} sandbox directories left"));
    }
    drop(driver);
    // The pool's own spare slots go with it, as do its table and its namespace directory's
    // mount.
    if let Err(error) = firkin_linux::net::reclaim_leftovers(&config.net, &[]).await {
        problems.push(format!("reclaim slots: {error}"));
    }
    match firkin_linux::net::find_leftovers(&config.net, &[]) {
        Ok(left) if left.is_empty() => {}
        Ok(left) => problems.push(format!("slots left: {left:?}")),
        Err(error) => problems.push(format!("find slots: {error}")),
    }
    let cgroups = layout.firkin_cgroups()?;
    if !cgroups.is_empty() {
        problems.push(format!("sandbox cgroups left: {cgroups:?}"));
    }
    layout.prune_firkin_dirs()?;
    let state = config.state_dir.display().to_string();
    let mounts = mounts_under(&state)?;
    if !mounts.is_empty() {
        problems.push(format!("mounts left: {mounts:?}"));
    }
    if problems.is_empty() {
        println!(
            "leak check: nothing left (sandboxes, cgroups, slots, mounts, runc containers); \
             {} deleted at clean-up",
            sandboxes.len()
        );
        Ok(())
    } else {
        Err(format!("clean-up: {}", problems.join("; ")).into())
    }
}

/// Mount points at or below `path` (as /proc/self/mountinfo spells them).
fn mounts_under(path: &str) -> BenchResult<Vec<String>> {
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|at| at.starts_with(path))
        .map(str::to_owned)
        .collect())
}

/// The runc baseline: its binary, its state root and its bundles.
struct Runc {
    root: PathBuf,
    dir: PathBuf,
    version: String,
    log: PathBuf,
}

/// An envd bundle and a `/bin/true` bundle over the same root filesystem.
struct Bundles {
    envd: PathBuf,
    bare: PathBuf,
    envd_config: serde_json::Value,
}

impl Runc {
    fn find(state: &Path) -> Option<Self> {
        let output = Command::new("runc").arg("--version").output().ok()?;
        if !output.status.success() {
            return None;
        }
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("runc version ")
            .to_owned();
        Some(Self {
            root: state.join("runc-state"),
            dir: state.join("runc"),
            version,
            log: state.join("runc/containers.log"),
        })
    }

    fn command(&self) -> Command {
        let mut command = Command::new("runc");
        command.arg("--root").arg(&self.root);
        command
    }

    /// The output (or error) of `runc <args>`, stdio from /dev/null and to the log.
    fn call(&self, args: &[&str]) -> BenchResult {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let status = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()?;
        if status.success() {
            Ok(())
        } else {
            let mut text = String::new();
            File::open(&self.log)?.read_to_string(&mut text)?;
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            Err(format!("runc {args:?}: {status}; log: {tail:?}").into())
        }
    }

    /// `runc spec`, then the edits: the template's root (read-only, as runc's default), the
    /// host's /usr bound read-only, a /run tmpfs with envd bound read-only in it, host
    /// networking, no terminal, and the sandbox's limits (memory, CPU, PIDs).
    fn bundles(&self, rootfs: &Path, envd: &Path) -> BenchResult<Bundles> {
        std::fs::create_dir_all(&self.dir)?;
        let spec_dir = self.dir.join("spec");
        std::fs::create_dir_all(&spec_dir)?;
        let status = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&spec_dir)
            .status()?;
        if !status.success() {
            return Err(format!("runc spec: {status}").into());
        }
        let mut config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(spec_dir.join("config.json"))?)?;
        config["root"] = serde_json::json!({ "path": rootfs, "readonly": true });
        config["process"]["terminal"] = false.into();
        config["process"]["cwd"] = "/".into();
        let mounts = config["mounts"]
            .as_array_mut()
            .ok_or("runc spec: no mounts")?;
        mounts.push(serde_json::json!({
            "destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["rbind", "ro", "nosuid", "nodev"]
        }));
        mounts.push(serde_json::json!({
            "destination": "/run", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755"]
        }));
        mounts.push(serde_json::json!({
            "destination": ENVD_PATH, "type": "bind", "source": envd,
            "options": ["bind", "ro"]
        }));
        let linux = &mut config["linux"];
        let namespaces = linux["namespaces"]
            .as_array_mut()
            .ok_or("runc spec: no namespaces")?;
        namespaces.retain(|ns| ns["type"] != "network");
        linux["resources"]["memory"] =
            serde_json::json!({ "limit": MEMORY_BYTES, "swap": MEMORY_BYTES });
        linux["resources"]["cpu"] = serde_json::json!({ "quota": 100_000, "period": 100_000 });
        linux["resources"]["pids"] = serde_json::json!({ "limit": PIDS_MAX });

        let bare = self.dir.join("true");
        std::fs::create_dir_all(&bare)?;
        let mut bare_config = config.clone();
        bare_config["process"]["args"] = serde_json::json!(["/bin/true"]);
        std::fs::write(bare.join("config.json"), serde_json::to_vec(&bare_config)?)?;
        let envd_dir = self.dir.join("envd");
        std::fs::create_dir_all(&envd_dir)?;
        Ok(Bundles {
            envd: envd_dir,
            bare,
            envd_config: config,
        })
    }

    /// `runc run -d` of envd until it answers /health, then `runc delete -f`.
    fn envd_round(
        &self,
        bundles: &Bundles,
        round: usize,
        live: &Live,
    ) -> BenchResult<(Duration, Duration)> {
        // A fresh loopback port each round (untimed), so no old connection is in the way.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut config = bundles.envd_config.clone();
        config["process"]["args"] = serde_json::json!([
            ENVD_PATH,
            "--listen",
            format!("127.0.0.1:{port}"),
            // No token: runc cannot hand envd the pipe firkin's launch does, and reading
            // one is not what this comparison measures.
            "--default-user",
            "user"
        ]);
        std::fs::write(
            bundles.envd.join("config.json"),
            serde_json::to_vec(&config)?,
        )?;
        let id = format!("firkin-bench-envd-{round}");
        let bundle = bundles.envd.to_str().ok_or("bundle path is not UTF-8")?;
        lock(&live.runc).push(id.clone());
        let started = Instant::now();
        self.call(&["run", "-d", "--bundle", bundle, &id])?;
        if !wait_until_healthy(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(10),
            READY_POLL,
        ) {
            return Err(format!("envd in runc container {id} did not answer within 10 s").into());
        }
        let up = started.elapsed();
        let started = Instant::now();
        self.delete(&id)?;
        let down = started.elapsed();
        lock(&live.runc).retain(|live| *live != id);
        Ok((up, down))
    }

    /// `runc run` of `/bin/true` to its exit (runc removes the container after it).
    fn true_round(&self, bundles: &Bundles, round: usize) -> BenchResult<Duration> {
        let id = format!("firkin-bench-true-{round}");
        let bundle = bundles.bare.to_str().ok_or("bundle path is not UTF-8")?;
        let started = Instant::now();
        self.call(&["run", "--bundle", bundle, &id])?;
        Ok(started.elapsed())
    }

    fn delete(&self, id: &str) -> BenchResult {
        self.call(&["delete", "-f", id])
    }

    fn list(&self) -> BenchResult<Vec<String>> {
        let output = self.command().args(["list", "-q"]).output()?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

/// The bench's own cgroup: `<own>/firkin-bench-<pid>` in each hierarchy the driver uses. The
/// driver puts sandbox cgroups below the cgroup of the process that runs it and, when it
/// starts, reclaims every sandbox cgroup it finds there: in a cgroup of its own, the bench
/// neither reclaims another firkin process's sandboxes nor has its own reclaimed.
struct BenchCgroup {
    /// (the directory the bench came from, the bench's own).
    moved: Vec<(PathBuf, PathBuf)>,
}

/// The leaf the driver moves processes into on cgroup v2 (`cgroup::DAEMON_LEAF`).
const DAEMON_LEAF: &str = firkin_linux::cgroup::DAEMON_LEAF;

impl BenchCgroup {
    fn enter() -> BenchResult<Self> {
        let layout = CgroupLayout::detect()?;
        let pid = std::process::id();
        let owns: BTreeSet<PathBuf> = layout.own_dirs().into_values().collect();
        let mut cgroup = Self { moved: Vec::new() };
        for own in owns {
            remove_stale_bench_cgroups(&own);
            let dir = own.join(format!("firkin-bench-{pid}"));
            std::fs::create_dir(&dir)
                .map_err(|error| format!("create {}: {error}", dir.display()))?;
            if let Err(error) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                let _ = std::fs::remove_dir(&dir);
                return Err(format!("move into {}: {error}", dir.display()).into());
            }
            cgroup.moved.push((own, dir));
        }
        Ok(cgroup)
    }

    /// Moves the bench back where it came from and removes its cgroups.
    fn leave(mut self) -> BenchResult {
        let pid = std::process::id().to_string();
        let mut problems = Vec::new();
        for (own, dir) in self.moved.drain(..).rev() {
            let back = std::fs::write(own.join("cgroup.procs"), &pid)
                .or_else(|_| std::fs::write(own.join(DAEMON_LEAF).join("cgroup.procs"), &pid));
            if let Err(error) = back {
                problems.push(format!("move back to {}: {error}", own.display()));
                continue;
            }
            for sub in [
                dir.join(firkin_linux::cgroup::FIRKIN_DIR),
                dir.join(DAEMON_LEAF),
            ] {
                let _ = std::fs::remove_dir(sub);
            }
            if let Err(error) = std::fs::remove_dir(&dir) {
                problems.push(format!("remove {}: {error}", dir.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; ").into())
        }
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        if !self.moved.is_empty() {
            let moved = Self {
                moved: std::mem::take(&mut self.moved),
            };
            if let Err(error) = moved.leave() {
                eprintln!("leaving the bench cgroup: {error}");
            }
        }
    }
}

/// Empty `firkin-bench-<pid>` cgroups of bench runs that died (their pid is gone).
fn remove_stale_bench_cgroups(own: &Path) {
    let Ok(entries) = std::fs::read_dir(own) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("firkin-bench-") else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        let dir = entry.path();
        for sub in [
            dir.join(firkin_linux::cgroup::FIRKIN_DIR),
            dir.join(DAEMON_LEAF),
        ] {
            let _ = std::fs::remove_dir(sub);
        }
        if std::fs::remove_dir(&dir).is_err() {
            eprintln!(
                "warning: {} is left from a bench run that died and is not empty",
                dir.display()
            );
        }
    }
}

/// `FIRKIN_ENVD_BIN`, else the static envd that `scripts/build-envd` builds.
fn envd_binary() -> BenchResult<PathBuf> {
    if let Some(path) = std::env::var_os("FIRKIN_ENVD_BIN") {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-envd");
    let output = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("run {}: {error}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed: {}", script.display(), output.status).into());
    }
    let path = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    if !Path::new(&path).is_file() {
        return Err(format!("{} printed {path:?}, not a file", script.display()).into());
    }
    Ok(PathBuf::from(path))
}

/// `MemTotal - MemAvailable` from /proc/meminfo, in bytes.
fn host_used_bytes() -> BenchResult<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> BenchResult<u64> {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib << 10)
            .ok_or_else(|| format!("/proc/meminfo has no {name}").into())
    };
    Ok(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?))
}

/// A process's proportional set size (its private pages, plus its share of shared ones).
fn pss_kib_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Pss:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn machine_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cgroups = CgroupLayout::detect().map_or_else(
        |_| "cgroups ?".to_owned(),
        |layout| format!("cgroup {:?}", layout.version()),
    );
    format!(
        "machine: {cpus} CPUs, kernel {}, {cgroups}, load average at the start {}; a shared \
         host, so compare rows of one run, not runs",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The timings of one operation, sorted.
struct Row {
    name: String,
    samples: Vec<Duration>,
}

impl Row {
    fn new(name: impl Into<String>, mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        Self {
            name: name.into(),
            samples,
        }
    }

    /// Nearest-rank percentile `q` in `0.0..=1.0`.
    fn p(&self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.samples.len() as f64).ceil() as usize;
        self.samples[rank.clamp(1, self.samples.len()) - 1]
    }

    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "{:<40} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            self.name,
            self.samples.len(),
            ms(self.p(0.50)),
            ms(self.p(0.95)),
            ms(self.p(0.99)),
            ms(self.p(1.0)),
        );
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
        .max(1)
}
