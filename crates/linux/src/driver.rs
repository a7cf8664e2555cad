//! `NamespaceDriver`: the `RuntimeDriver` that makes each sandbox a set of namespaces with an
//! overlay root over its template (`base`, or the layers of a template from an image, see
//! `start`), a cgroup, a network slot and envd as PID 1.
//!
//! Create, in order (each step undone if a later one fails): the sandbox's directory on a
//! disk of its own (see [`crate::disk`]) with its overlay upper and work directories, its own
//! `/etc/hosts` and `/etc/hostname`, its cgroup with the
//! requested limits, a slot from the pool, the launch (see [`crate::sandbox`]), then the wait
//! until envd says it serves (on the launch's status pipe), and the env vars pushed through
//! `/init`. Most creates skip all but the last step: they hand out a sandbox of the warm pool
//! (see [`crate::warm`]), started ahead in the same way, after writing the request's limits,
//! hostname and egress into it; with the pool empty, a create starts its own.
//!
//! Delete kills the cgroup, releases the slot, unmounts the disk and removes the directories
//! and the disk's image; it is idempotent.
//! The runtime handle (PID 1 and its start time, cgroup, slot, directory) is what a new
//! daemon re-adopts; whatever else carries firkin's names in its state directory (cgroups,
//! sandbox directories, warm sandboxes, slots) is reclaimed when the driver starts.
//!
//! The host's `/usr` reaches sandboxes through an idmapped view made once when the driver
//! starts (see [`crate::idmap`]): host root's files appear owned by the sandbox's root, so
//! setuid `sudo` works for `user`, and each sandbox writes to `/usr` through its own overlay
//! upper, never to the host's. Where the kernel or file system has no idmapped mounts, `/usr`
//! is bound read-only instead (files then appear as `nobody` and `sudo` does not work).
//!
//! Not yet: snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use firkin_single_node::{
    BASE_TEMPLATE, Error, PortRegistry, Result, RuntimeCreatedSandbox, RuntimeDriver,
    RuntimeHandle, RuntimeMetrics, RuntimePools, SingleNodeCreateRequest, StateStore,
    TemplateImage,
};

use crate::cgroup::{CgroupHandle, CgroupLayout, CgroupLimits, SandboxCgroup};
use crate::disk::Disks;
use crate::envd_probe;
use crate::idmap::{self, IdmappedMount};
use crate::net::{NetConfig, Slot, SlotPool};
use crate::prepared::PreparedDirs;
use crate::rootfs::{BaseTemplate, HostFacts, MountSpec, mounts_for};
use crate::sandbox::spawn::{IdMap, launch};
use crate::sandbox::{InitSpec, LayerMount};
use crate::template_pools::TemplatePools;
use crate::warm::WarmPool;

/// envd's port inside every sandbox.
pub const ENVD_PORT: u16 = 49983;

/// Settings of the driver.
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    /// Where templates and sandbox directories live.
    pub state_dir: PathBuf,
    /// The envd binary bound into every sandbox (static, see `scripts/build-envd`).
    pub envd_binary: PathBuf,
    /// The `firkin-sandbox-init` helper.
    pub init_helper: PathBuf,
    /// Host id of sandbox root (sandbox ids 0..65536 map from here).
    pub id_shift: u32,
    /// Network slots.
    pub net: NetConfig,
    /// How long a new sandbox's envd gets to answer.
    pub ready_timeout: Duration,
    /// PIDs a sandbox may hold.
    pub pids_max: u64,
    /// Whether sandboxes of `base` run with `no_new_privs` (then `sudo` does not work).
    pub no_new_privs: bool,
    /// How many sandboxes are kept started ahead at least, so that a create only hands one
    /// out (see [`crate::warm`]); 0 makes every create start its sandbox.
    pub warm_pool: usize,
    /// How many the pool may grow to while creates find it empty (bursts); below
    /// `warm_pool`, it is `warm_pool`.
    pub warm_pool_max: usize,
    /// How long the pool stays above `warm_pool` with no create finding it empty before it
    /// shrinks back, one sandbox per such period (at most every 5 s).
    pub warm_pool_idle: Duration,
    /// How many sandboxes each template from an image keeps started ahead (its pool's
    /// floor; it grows with demand up to `warm_pool_max`, as `base`'s); 0: none.
    pub warm_pool_per_template: usize,
    /// The same for the templates named here (by name), instead; 0 keeps none of that
    /// template.
    pub warm_pool_of: HashMap<String, usize>,
    /// How many templates from images keep a warm pool at once (the most recently used).
    pub warm_templates: usize,
    /// Sandbox directories, disks mounted, made ahead for creates that find the warm pool
    /// empty (see [`crate::prepared`]); only with per-sandbox disks.
    pub prepared_dirs: usize,
    /// The warm pool starts no sandbox while the host's `MemAvailable` is below this many
    /// bytes (0: no check); the daemon passes its admission floor, so the pool never adds to
    /// a pressure under which creates are refused.
    pub warm_pool_min_available_memory: u64,
    /// The disk each sandbox gets, MiB (see [`crate::disk`]); 0: no limit, sandboxes write
    /// to the state file system until it is full.
    pub disk_size_mb: u64,
}

/// The default ceiling of the warm pool: enough for a burst of a few dozen creates to be
/// handed out warm once the pool has seen one, about 1.3 MiB and a network slot each while
/// they wait, given back a minute after the last burst (`warm_pool_idle`).
pub const DEFAULT_WARM_POOL_MAX: usize = 32;

/// The default disk of a sandbox, MiB: 10 GiB, more than E2B's base sandboxes get (a few
/// GiB), so that what ran there fits here; the images are sparse, so it costs the host only
/// what a sandbox writes.
pub const DEFAULT_DISK_SIZE_MB: u64 = 10 * 1024;

impl NamespaceConfig {
    /// Defaults for state under `state_dir` (network namespaces in `<state_dir>/netns`), with
    /// the given binaries.
    #[must_use]
    pub fn new(
        state_dir: impl Into<PathBuf>,
        envd_binary: impl Into<PathBuf>,
        init_helper: impl Into<PathBuf>,
    ) -> Self {
        let state_dir: PathBuf = state_dir.into();
        // The slots' namespace files live with the state: another state directory is another
        // slot pool instance (its own veth names and nftables table).
        let net = NetConfig {
            netns_dir: std::path::absolute(&state_dir)
                .unwrap_or_else(|_| state_dir.clone())
                .join("netns"),
            ..NetConfig::default()
        };
        Self {
            state_dir,
            envd_binary: envd_binary.into(),
            init_helper: init_helper.into(),
            id_shift: 100_000,
            net,
            ready_timeout: Duration::from_secs(10),
            pids_max: 4096,
            no_new_privs: false,
            warm_pool: 2,
            warm_pool_max: DEFAULT_WARM_POOL_MAX,
            warm_pool_idle: Duration::from_secs(60),
            warm_pool_per_template: 1,
            warm_pool_of: HashMap::new(),
            warm_templates: 4,
            prepared_dirs: 2,
            warm_pool_min_available_memory: 0,
            disk_size_mb: DEFAULT_DISK_SIZE_MB,
        }
    }
}

/// What a new daemon needs to find a sandbox again.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Handle {
    pid1: u32,
    start_time: u64,
    cgroup: CgroupHandle,
    slot: Slot,
    dir: PathBuf,
}

/// A sandbox whose envd answers, not yet handed to the backend.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) handle: Handle,
    token: String,
    phases: Vec<(&'static str, Duration)>,
}

/// The Linux namespaces driver.
#[derive(Debug)]
pub struct NamespaceDriver {
    core: Arc<Core>,
    warm: WarmPool,
    template_pools: TemplatePools,
    prepared: PreparedDirs,
    live: Mutex<HashMap<String, Handle>>,
}

/// What starting and tearing down a sandbox needs, shared with the warm pool's filler.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: NamespaceConfig,
    layout: CgroupLayout,
    slots: SlotPool,
    template: BaseTemplate,
    /// The sandboxes' disks: each sandbox directory is one when there is a limit.
    disks: Disks,
    /// The host directories mounted over the template's root, each with its idmapped view
    /// (`None` where idmapping is not available).
    host_layers: Vec<(MountSpec, Option<IdmappedMount>)>,
    /// Directory removals still running in the background.
    removals: Arc<AtomicUsize>,
    /// `/etc/resolv.conf` of sandboxes from images (the host's nameservers, as `base` has).
    resolv_conf: String,
}

fn launch_failed(what: impl std::fmt::Display) -> Error {
    Error::RuntimeLaunchFailed(what.to_string())
}

impl NamespaceDriver {
    /// A driver: builds (or reuses) the `base` template, detects cgroups and starts the slot
    /// pool, keeping the slots of `surviving` sandboxes (their stored handles) and reclaiming
    /// every other slot of its own pool instance, then starts filling the warm pool.
    ///
    /// # Errors
    ///
    /// When the template, cgroups or network cannot be set up.
    pub async fn new(config: NamespaceConfig, surviving: &[RuntimeHandle]) -> Result<Self> {
        // The disk size first: a bad one changes nothing.
        let disks = Disks::new(&config.state_dir, config.disk_size_mb)
            .map_err(|error| Error::InvalidRequest(error.to_string()))?;
        private_but_searchable_by_sandboxes(&config.state_dir, config.id_shift)?;
        let host = HostFacts::read().map_err(launch_failed)?;
        let template = BaseTemplate::build(
            &config.state_dir.join("templates/base"),
            &host,
            config.id_shift,
        )
        .map_err(launch_failed)?;
        let host_layers = host_layers(&config, &template);
        let layout = CgroupLayout::detect().map_err(launch_failed)?;
        let surviving: Vec<Handle> = surviving
            .iter()
            .filter_map(|handle| serde_json::from_str::<Handle>(&handle.0).ok())
            .collect();
        reclaim_leftovers(&config, &layout, &disks, &surviving)?;
        let keep: Vec<Slot> = surviving.iter().map(|handle| handle.slot.clone()).collect();
        let slots = SlotPool::start(config.net.clone(), &keep)
            .await
            .map_err(launch_failed)?;
        let (warm_floor, warm_ceiling) = (config.warm_pool, config.warm_pool_max);
        let (template_floor, warm_templates, floors) = (
            config.warm_pool_per_template,
            config.warm_templates,
            config.warm_pool_of.clone(),
        );
        // Without disks a directory is made in well under a millisecond: nothing to gain.
        let prepared_dirs = if disks.size_bytes().is_some() {
            config.prepared_dirs
        } else {
            0
        };
        let core = Arc::new(Core {
            config,
            layout,
            slots,
            template,
            disks,
            host_layers,
            removals: Arc::new(AtomicUsize::new(0)),
            resolv_conf: crate::rootfs::resolv_conf(&host),
        });
        Ok(Self {
            warm: WarmPool::start(Arc::clone(&core), None, warm_floor, warm_ceiling),
            template_pools: TemplatePools::new(
                Arc::clone(&core),
                template_floor,
                floors,
                warm_ceiling,
                warm_templates,
            ),
            prepared: PreparedDirs::start(Arc::clone(&core), prepared_dirs),
            core,
            live: Mutex::new(HashMap::new()),
        })
    }

    /// A driver for a daemon whose durable state is `state`: it keeps the sandboxes that
    /// state's records own (to be re-adopted when the backend is built over the same state)
    /// and reclaims every other firkin sandbox it finds.
    ///
    /// # Errors
    ///
    /// As [`NamespaceDriver::new`].
    pub async fn for_state(config: NamespaceConfig, state: &StateStore) -> Result<Self> {
        let handles: Vec<RuntimeHandle> = state
            .load_active()
            .into_iter()
            .filter_map(|record| record.runtime_handle)
            .collect();
        Self::new(config, &handles).await
    }

    /// How many sandbox directories are prepared ahead now (see [`crate::prepared`]).
    #[must_use]
    pub fn prepared_ready(&self) -> usize {
        self.prepared.ready()
    }

    /// How many warm sandboxes are ready to be handed out now.
    #[must_use]
    pub fn warm_ready(&self) -> usize {
        self.warm.ready()
    }

    /// Waits until the warm pool holds `config.warm_pool` sandboxes or `timeout` passes;
    /// returns whether it is full (benchmarks and tests start from a known state).
    pub async fn wait_warm(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.warm.ready() < self.core.config.warm_pool {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }
}

impl Core {
    /// The sandbox directory of `name` on its own disk, with its overlay directories;
    /// nothing is left if a step fails.
    pub(crate) fn prepare_dirs(&self, name: &str) -> std::result::Result<PathBuf, String> {
        let dir = self.config.state_dir.join("sandboxes").join(name);
        self.disks.attach(&dir).map_err(|error| error.to_string())?;
        self.fill_dir(&dir).map_err(|error| {
            self.discard_dir(&dir);
            format!("prepare {}: {error}", dir.display())
        })?;
        Ok(dir)
    }

    /// Removes a sandbox directory no process uses (a start that failed), disk and all.
    pub(crate) fn discard_dir(&self, dir: &Path) {
        if let Err(error) = self.disks.detach(dir) {
            tracing::warn!(%error, "discarding a sandbox disk failed");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    fn fill_dir(&self, dir: &Path) -> std::io::Result<()> {
        let shift = self.config.id_shift;
        for sub in ["upper/etc", "work", "root"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        for (upper, work) in self.layers(dir).iter().filter_map(|l| l.overlay.as_ref()) {
            for path in [upper, work] {
                std::fs::create_dir_all(path)?;
                std::os::unix::fs::lchown(path, Some(shift), Some(shift))?;
            }
        }
        for path in ["upper", "upper/etc", "work"] {
            std::os::unix::fs::lchown(dir.join(path), Some(shift), Some(shift))?;
        }
        Ok(())
    }

    /// The sandbox's `/etc/hosts` and `/etc/hostname` for the host name `name`, in the upper
    /// of its directory `dir`, owned by its root; and `/etc/resolv.conf` for a sandbox from
    /// an image (`base` has the host's in its template).
    fn write_identity(&self, name: &str, dir: &Path, from_image: bool) -> std::io::Result<()> {
        let shift = self.config.id_shift;
        let resolv_conf = from_image.then(|| ("upper/etc/resolv.conf", self.resolv_conf.clone()));
        for (path, text) in [
            ("upper/etc/hosts", crate::rootfs::hosts_file(name)),
            ("upper/etc/hostname", crate::rootfs::hostname_file(name)),
        ]
        .into_iter()
        .chain(resolv_conf)
        {
            std::fs::write(dir.join(path), text)?;
            std::os::unix::fs::lchown(dir.join(path), Some(shift), Some(shift))?;
        }
        Ok(())
    }

    /// The host layers of the sandbox whose directory is `dir`.
    fn layers(&self, dir: &Path) -> Vec<LayerMount> {
        self.host_layers
            .iter()
            .map(|(spec, view)| {
                let name = layer_name(&spec.target);
                LayerMount {
                    source: view
                        .as_ref()
                        .map_or_else(|| spec.source.clone(), |view| view.path().to_owned()),
                    target: spec.target.clone(),
                    overlay: (spec.overlay && view.is_some()).then(|| {
                        (
                            dir.join("layers").join(&name).join("upper"),
                            dir.join("layers").join(&name).join("work"),
                        )
                    }),
                    extra_lowers: Vec::new(),
                }
            })
            .collect()
    }

    /// A whole new sandbox with the host name `name`, returned once its envd answers (and,
    /// for a template with one, its ready command succeeded). Its root is `image` when
    /// given, else `base`. Its directory is `prepared` (see [`crate::prepared`]) when given,
    /// else one made now named `name`; its cgroup is named as its directory. Whatever was
    /// made is undone if a step fails, `prepared` included.
    pub(crate) async fn start(
        self: &Arc<Self>,
        name: &str,
        prepared: Option<PathBuf>,
        limits: &CgroupLimits,
        internet_access: bool,
        image: Option<&TemplateImage>,
    ) -> Result<Started> {
        // File system and cgroup work off the async workers: the warm pool's filler runs
        // this beside the daemon's requests.
        let core = Arc::clone(self);
        let (owned_name, owned_limits) = (name.to_owned(), *limits);
        let from_image = image.is_some();
        let (dir, cgroup, mut phases) = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let dir = match prepared {
                Some(dir) => dir,
                None => core.prepare_dirs(&owned_name).map_err(launch_failed)?,
            };
            if let Err(error) = core.write_identity(&owned_name, &dir, from_image) {
                core.discard_dir(&dir);
                return Err(launch_failed(format!("prepare {}: {error}", dir.display())));
            }
            let dirs = began.elapsed();
            let cgroup_name = dir
                .file_name()
                .map_or_else(|| owned_name.clone(), |n| n.to_string_lossy().into_owned());
            match SandboxCgroup::create(&core.layout, &cgroup_name, &owned_limits) {
                Ok(cgroup) => Ok((
                    dir,
                    cgroup,
                    vec![("dirs", dirs), ("cgroup", began.elapsed() - dirs)],
                )),
                Err(error) => {
                    core.discard_dir(&dir);
                    Err(launch_failed(error))
                }
            }
        })
        .await
        .map_err(launch_failed)??;
        let step = Instant::now();
        let slot = match self.slots.take(internet_access).await {
            Ok(slot) => slot,
            Err(error) => {
                let _ = cgroup.remove();
                self.discard_dir(&dir);
                return Err(launch_failed(error));
            }
        };
        let token = random_token();
        // envd's commands rank above envd itself for the OOM killer (see
        // `sandbox::spawn::envd_oom_protection`).
        let child_oom_score_adj = crate::sandbox::spawn::envd_oom_protection()
            .child_oom_score_adj()
            .to_string();
        // `base`: its generated layer under the host's /usr; an image: its layers alone; a
        // template built on `base`: its layers over `base`'s, and what they have under a
        // host layer's target (`usr/`) stacked into that layer's overlay.
        let (lower_dirs, layers) = match image {
            Some(image) if image.on_base => {
                let mut lowers: Vec<PathBuf> = image.layers.iter().rev().cloned().collect();
                lowers.push(self.template.rootfs());
                let mut layers = self.layers(&dir);
                for layer in layers.iter_mut().filter(|l| l.overlay.is_some()) {
                    let inside = layer.target.strip_prefix("/").unwrap_or(&layer.target);
                    layer.extra_lowers = image
                        .layers
                        .iter()
                        .rev()
                        .map(|l| l.join(inside))
                        .filter(|l| l.is_dir())
                        .collect();
                }
                (lowers, layers)
            }
            Some(image) => (image.layers.iter().rev().cloned().collect(), vec![]),
            None => (vec![self.template.rootfs()], self.layers(&dir)),
        };
        let spec = InitSpec {
            hostname: name.to_owned(),
            netns: Some(slot.netns_path.clone()),
            lower_dirs,
            upper_dir: dir.join("upper"),
            work_dir: dir.join("work"),
            root_dir: dir.join("root"),
            layers,
            no_new_privs: self.config.no_new_privs,
            envd_binary: self.config.envd_binary.clone(),
            envd_args: envd_args(&child_oom_score_adj, image),
            envd_env: vec![],
            envd_access_token: Some(crate::sandbox::EnvdAccessToken(token.clone())),
        };
        let helper = self.config.init_helper.clone();
        let ids = IdMap {
            host_start: self.config.id_shift,
            count: 65_536,
        };
        let procs = cgroup.procs_paths();
        let timeout = match image {
            Some(image) if image.ready_cmd.is_some() => {
                self.config.ready_timeout.max(TEMPLATE_READY_TIMEOUT)
            }
            _ => self.config.ready_timeout,
        };
        phases.push(("slot", step.elapsed()));
        let launched = tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let launched = launch(&helper, &spec, ids, &procs).map_err(launch_failed)?;
            let launch_time = began.elapsed();
            let pid1 = launched.pid1;
            launched
                .wait_until_serving(timeout)
                .map_err(launch_failed)?;
            Ok((
                pid1,
                launch_time,
                began.elapsed().saturating_sub(launch_time),
            ))
        })
        .await
        .map_err(launch_failed)
        .and_then(|launched| launched);
        let (pid1, launch_time, ready) = match launched {
            Ok(launched) => launched,
            Err(error) => {
                let _ = cgroup.remove();
                let _ = self.slots.release(slot).await;
                self.discard_dir(&dir);
                return Err(error);
            }
        };
        // launch: the helper until PID 1 exists; envd_ready: until envd answers.
        phases.push(("launch", launch_time));
        phases.push(("envd_ready", ready));
        Ok(Started {
            handle: Handle {
                pid1,
                start_time: start_time(pid1).unwrap_or_default(),
                cgroup: cgroup.handle().clone(),
                slot,
                dir,
            },
            token,
            phases,
        })
    }

    /// Makes the warm sandbox `warm` the sandbox `id`: the request's limits, hostname and
    /// egress, and envd still answering. On failure it is torn down.
    async fn claim(
        &self,
        mut warm: Started,
        id: &str,
        limits: &CgroupLimits,
        internet_access: bool,
    ) -> Result<Started> {
        let began = Instant::now();
        let handle = warm.handle.clone();
        let hostname = id.to_owned();
        let limits = *limits;
        let identity = tokio::task::spawn_blocking(move || {
            SandboxCgroup::open(handle.cgroup.clone())
                .and_then(|cgroup| cgroup.set_limits(&limits))
                .map_err(launch_failed)?;
            crate::sandbox::identity::set_hostname(handle.pid1, &hostname)
                .map_err(|error| launch_failed(format!("set the hostname: {error}")))
        })
        .await
        .map_err(launch_failed)
        .and_then(|set| set);
        let egress = match identity {
            Ok(()) if warm.handle.slot.internet_access != internet_access => warm
                .handle
                .slot
                .set_internet_access(internet_access)
                .await
                .map_err(launch_failed),
            other => other,
        };
        let claimed = began.elapsed();
        let address = SocketAddr::new(warm.handle.slot.sandbox_ip.into(), ENVD_PORT);
        let answering = match egress {
            Ok(()) => tokio::task::spawn_blocking(move || envd_probe::is_healthy(address))
                .await
                .unwrap_or(false),
            Err(error) => {
                let _ = self.teardown(&warm.handle).await;
                return Err(error);
            }
        };
        if !answering {
            let _ = self.teardown(&warm.handle).await;
            return Err(launch_failed("the warm sandbox's envd stopped answering"));
        }
        warm.phases = vec![
            ("claim", claimed),
            ("envd_ready", began.elapsed() - claimed),
        ];
        Ok(warm)
    }

    /// Kills the sandbox (its cgroup), releases its slot, and frees its disk and removes its
    /// directory in the background (see [`Core::remove_dir_in_background`]).
    pub(crate) async fn teardown(&self, handle: &Handle) -> Result<()> {
        let cgroup = handle.cgroup.clone();
        tokio::task::spawn_blocking(move || match SandboxCgroup::open(cgroup) {
            Ok(cgroup) => cgroup.remove(),
            // Gone already.
            Err(_) => Ok(()),
        })
        .await
        .map_err(launch_failed)?
        .map_err(launch_failed)?;
        self.slots
            .release(handle.slot.clone())
            .await
            .map_err(launch_failed)?;
        self.remove_dir_in_background(&handle.dir);
        Ok(())
    }

    /// Unmounts a dead sandbox's disk, removes its image and its directory, on a blocking
    /// thread: the unmount syncs and frees the disk (~25 ms of a 10 GiB image, unloaded),
    /// removing the image file ~20 ms more, and removing the layers of even an idle sandbox
    /// without a disk took ~3 ms, a third of a delete. The directory keeps its name meanwhile
    /// (a mount point cannot be renamed; ids are not reused). A daemon that dies first leaves
    /// it to the next one's reclaim, as any directory no sandbox owns.
    fn remove_dir_in_background(&self, dir: &Path) {
        if !dir.exists() {
            return;
        }
        let (disks, dir) = (self.disks.clone(), dir.to_owned());
        let removals = Arc::clone(&self.removals);
        removals.fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            if let Err(error) = disks.detach(&dir) {
                tracing::warn!(%error, dir = %dir.display(), "freeing a deleted sandbox's disk failed");
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(%error, dir = %dir.display(), "removing a deleted sandbox's directory failed");
                }
            }
            removals.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Waits until every background directory removal has finished.
    async fn settle_removals(&self) {
        while self.removals.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// See [`crate::state_dir`] for who may enter the state directory. Every ancestor must let
/// others search it, for sandbox root to reach its mounts (an ancestor that does not is an
/// error to fix by hand).
fn private_but_searchable_by_sandboxes(state_dir: &Path, shift: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    crate::state_dir::restrict(state_dir, shift).map_err(launch_failed)?;
    let absolute = std::fs::canonicalize(state_dir)
        .map_err(|e| launch_failed(format!("resolve {}: {e}", state_dir.display())))?;
    for ancestor in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor).map_or(0o755, |m| m.permissions().mode());
        if mode & 0o001 == 0 {
            return Err(Error::InvalidRequest(format!(
                "sandboxes cannot reach the state directory {}: {} is not searchable by others (mode {:o}); chmod o+x it or choose another state directory",
                state_dir.display(),
                ancestor.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// How long a template's ready command gets, at least, before a create fails.
pub const TEMPLATE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// envd's command line: its port, its commands' OOM score, and the template's defaults
/// (`base`: user `user`; an image: its user, working directory, environment, start and
/// ready commands).
fn envd_args(child_oom_score_adj: &str, image: Option<&TemplateImage>) -> Vec<String> {
    let mut args: Vec<String> = ["--listen", "0.0.0.0:49983", "--child-oom-score-adj"]
        .map(String::from)
        .to_vec();
    args.push(child_oom_score_adj.to_owned());
    let user = image.and_then(|image| image.user.clone());
    args.extend([
        "--default-user".to_owned(),
        user.unwrap_or_else(|| "user".to_owned()),
    ]);
    let Some(image) = image else {
        return args;
    };
    let flags = [
        ("--workdir", &image.workdir),
        ("--start-cmd", &image.start_cmd),
        ("--ready-cmd", &image.ready_cmd),
    ];
    for (flag, value) in flags {
        if let Some(value) = value {
            args.extend([flag.to_owned(), value.clone()]);
        }
    }
    for (key, value) in &image.env {
        args.extend(["--env".to_owned(), format!("{key}={value}")]);
    }
    args
}

/// `/usr` → `usr`, `/lib64` → `lib64`.
fn layer_name(target: &Path) -> String {
    target
        .to_string_lossy()
        .trim_start_matches('/')
        .replace('/', "-")
}

/// The template's host layers, each with an idmapped view under `<state>/views/base/` where
/// the kernel allows (once per driver; sandboxes' mount namespaces keep their own copies).
fn host_layers(
    config: &NamespaceConfig,
    template: &BaseTemplate,
) -> Vec<(MountSpec, Option<IdmappedMount>)> {
    let ids = IdMap {
        host_start: config.id_shift,
        count: 65_536,
    };
    let userns = match idmap::user_namespace(ids) {
        Ok(userns) => Some(userns),
        Err(error) => {
            tracing::warn!(%error, "no user namespace for idmapped mounts: sudo will not work in sandboxes");
            None
        }
    };
    mounts_for(template.dir())
        .into_iter()
        .map(|spec| {
            let view = userns.as_ref().and_then(|userns| {
                let at = config
                    .state_dir
                    .join("views/base")
                    .join(layer_name(&spec.target));
                IdmappedMount::create(&spec.source, &at, userns)
                    .inspect_err(|error| {
                        tracing::warn!(%error, source = %spec.source.display(),
                            "no idmapped view: the sandboxes get it read-only, as nobody's files");
                    })
                    .ok()
            });
            (spec, view)
        })
        .collect()
}

/// Remove every sandbox cgroup, sandbox directory and disk of this state directory that no
/// surviving sandbox owns: what a daemon killed half-way through a create or delete left
/// behind. A cgroup counts as this state's when its sandbox directory is here (create makes
/// the directory before the cgroup, delete removes it after), so the sandboxes of a daemon
/// with another state directory are left alone. (Slots are reclaimed by the pool.)
fn reclaim_leftovers(
    config: &NamespaceConfig,
    layout: &CgroupLayout,
    disks: &Disks,
    surviving: &[Handle],
) -> Result<()> {
    let owned = |name: &str| surviving.iter().any(|handle| handle.cgroup.name == name);
    let ours = |name: &str| config.state_dir.join("sandboxes").join(name).exists();
    for name in layout.firkin_cgroups().map_err(launch_failed)? {
        if ours(&name) && !owned(&name) {
            tracing::warn!(cgroup = %name, "reclaiming a leftover sandbox cgroup");
            SandboxCgroup::reclaim(layout, &name).map_err(launch_failed)?;
        }
    }
    let sandboxes = config.state_dir.join("sandboxes");
    let entries = std::fs::read_dir(&sandboxes).into_iter().flatten();
    for entry in entries.flatten() {
        let path = entry.path();
        if !surviving.iter().any(|handle| handle.dir == path) {
            tracing::warn!(dir = %path.display(), "removing a leftover sandbox directory");
            disks.detach(&path).map_err(launch_failed)?;
            std::fs::remove_dir_all(&path)
                .map_err(|error| launch_failed(format!("remove {}: {error}", path.display())))?;
        }
    }
    let kept: Vec<PathBuf> = surviving.iter().map(|handle| handle.dir.clone()).collect();
    disks.remove_orphans(&kept).map_err(launch_failed)
}

/// Bytes the sandbox's own layers under `dir` take: what its disk has in use when it has one
/// (`own_disk`: one `statvfs`), else the files' allocated blocks, walked without following
/// links or crossing into other file systems.
fn disk_usage(dir: &Path, own_disk: bool) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    if own_disk && let Ok(stat) = rustix::fs::statvfs(dir) {
        return stat
            .f_blocks
            .saturating_sub(stat.f_bfree)
            .saturating_mul(stat.f_frsize);
    }
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut total = 0;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.dev() != root.dev() {
                continue;
            }
            total += meta.blocks() * 512;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    total
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat): with the pid,
/// it names one process for good, whatever pids get reused.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split(' ')
        .nth(19)?
        .parse()
        .ok()
}

fn random_token() -> String {
    firkin_single_node::SandboxId::generate().to_string()
}

/// Hands the sandbox's environment variables to its envd (`/init`).
async fn push_env(started: &Started, env: &HashMap<String, String>) -> Result<()> {
    let body = serde_json::json!({ "envVars": env }).to_string();
    let request = format!(
        "POST /init HTTP/1.1\r\nHost: envd\r\nX-Access-Token: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        started.token,
        body.len()
    );
    let address = SocketAddr::new(started.handle.slot.sandbox_ip.into(), ENVD_PORT);
    let status = tokio::task::spawn_blocking(move || envd_probe::request(address, &request))
        .await
        .map_err(launch_failed)?;
    if status == Some(204) {
        Ok(())
    } else {
        Err(launch_failed("envd refused the sandbox's environment"))
    }
}

#[async_trait]
impl RuntimeDriver for NamespaceDriver {
    fn name(&self) -> &str {
        "linux-namespaces"
    }

    async fn create(
        &self,
        request: &SingleNodeCreateRequest,
        ports: &PortRegistry,
    ) -> Result<RuntimeCreatedSandbox> {
        let id = request.sandbox_id().as_str().to_owned();
        let image = request.image();
        if image.is_none() && request.template_id() != BASE_TEMPLATE {
            return Err(Error::TemplateNotFound(format!(
                "template '{}' not found",
                request.template_id()
            )));
        }
        let resources = request.resources();
        let limits = CgroupLimits {
            cpu_millis: Some(u64::from(resources.vcpus) * 1000),
            memory_bytes: Some(resources.memory_bytes),
            pids_max: Some(self.core.config.pids_max),
        };
        let internet = request.allow_internet_access();
        // `base`'s pool, or the template's own.
        let template_pool = image.and_then(|image| self.template_pools.pool(image));
        let pool = match (&template_pool, image) {
            (Some(pool), _) => Some(pool.as_ref()),
            (None, None) => Some(&self.warm),
            (None, Some(_)) => None,
        };
        let warm = match pool.and_then(WarmPool::take) {
            Some(warm) => self
                .core
                .claim(warm, &id, &limits, internet)
                .await
                .inspect_err(|error| {
                    tracing::warn!(%error, "a warm sandbox could not be handed out; starting one");
                })
                .ok(),
            None => None,
        };
        let started = match warm {
            Some(started) => Ok(started),
            None => {
                let prepared = self.prepared.take();
                self.core
                    .start(&id, prepared, &limits, internet, image)
                    .await
            }
        };
        if let Some(pool) = pool {
            pool.refill();
        }
        let mut started = started?;
        if !request.env().is_empty() {
            let began = Instant::now();
            if let Err(error) = push_env(&started, request.env()).await {
                let _ = self.core.teardown(&started.handle).await;
                return Err(error);
            }
            started.phases.push(("env", began.elapsed()));
        }
        let Started {
            handle,
            token,
            phases,
        } = started;
        let runtime_handle = RuntimeHandle(serde_json::to_string(&handle).map_err(launch_failed)?);
        ports.route_all_ports(&id, handle.slot.sandbox_ip.into());
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, handle);
        Ok(RuntimeCreatedSandbox {
            client_id: "firkin-linux".to_owned(),
            envd_access_token: Some(token),
            traffic_access_token: None,
            envd_version: None,
            runtime_handle: Some(runtime_handle),
            phases,
        })
    }

    async fn delete(&self, sandbox_id: &str, handle: Option<&RuntimeHandle>) -> Result<()> {
        let known = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(sandbox_id);
        let handle = match known.or_else(|| handle.and_then(|h| serde_json::from_str(&h.0).ok())) {
            Some(handle) => handle,
            // Nothing was ever made, or it is already gone: deleting is done.
            None => return Ok(()),
        };
        self.core.teardown(&handle).await
    }

    async fn adopt(
        &self,
        sandbox_id: &str,
        handle: Option<&RuntimeHandle>,
        ports: &PortRegistry,
    ) -> Result<bool> {
        let Some(handle) = handle.and_then(|h| serde_json::from_str::<Handle>(&h.0).ok()) else {
            return Ok(false);
        };
        let alive = start_time(handle.pid1) == Some(handle.start_time)
            && SandboxCgroup::open(handle.cgroup.clone()).is_ok();
        if !alive {
            // Whatever is left of it goes.
            self.core.teardown(&handle).await?;
            return Ok(false);
        }
        ports.route_all_ports(sandbox_id, handle.slot.sandbox_ip.into());
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(sandbox_id.to_owned(), handle);
        Ok(true)
    }

    async fn pause(&self, sandbox_id: &str) -> Result<()> {
        self.with_cgroup(sandbox_id, |cgroup| cgroup.freeze().map_err(launch_failed))
            .await
    }

    async fn shutdown(&self) -> Result<()> {
        // The warm sandboxes first: their slots go back before the slot pool closes.
        let warm = self
            .warm
            .shutdown()
            .await
            .and(self.template_pools.shutdown().await);
        self.prepared.shutdown().await;
        let slots = self.core.slots.shutdown().await.map_err(launch_failed);
        self.core.settle_removals().await;
        warm.and(slots)
    }

    fn writes_dirs(&self, sandbox_id: &str) -> Vec<(PathBuf, PathBuf)> {
        let Some(handle) = self.live_handle(sandbox_id) else {
            return Vec::new();
        };
        // The root's upper, and the upper of each host layer it may write through.
        let mut dirs = vec![(handle.dir.join("upper"), PathBuf::new())];
        for layer in self.core.layers(&handle.dir) {
            if let Some((upper, _)) = layer.overlay
                && upper.is_dir()
            {
                let inside = layer.target.strip_prefix("/").unwrap_or(&layer.target);
                dirs.push((upper, inside.to_owned()));
            }
        }
        dirs
    }

    fn pools(&self) -> RuntimePools {
        let (template_warm_ready, template_warm_target) = self.template_pools.sizes();
        RuntimePools {
            warm_ready: self.warm.ready(),
            warm_target: self.warm.target(),
            template_warm_ready,
            template_warm_target,
            spare_slots: self.core.slots.ready(),
        }
    }

    async fn metrics(&self, sandbox_id: &str) -> Result<RuntimeMetrics> {
        let id = sandbox_id.to_owned();
        let dir = self.sandbox_path(sandbox_id);
        let own_disk = self.core.disks.size_bytes().is_some();
        self.with_cgroup(sandbox_id, move |cgroup| {
            let measure = |error| Error::RuntimeCommandFailed(format!("metrics of {id}: {error}"));
            Ok(RuntimeMetrics {
                cpu_usage_usec: cgroup.cpu_usage_usec().map_err(measure)?,
                memory_used_bytes: cgroup.memory_usage_bytes().map_err(measure)?,
                memory_cache_bytes: cgroup.memory_cache_bytes().map_err(measure)?,
                disk_used_bytes: disk_usage(&dir, own_disk),
            })
        })
        .await
    }

    async fn resume(&self, sandbox_id: &str) -> Result<()> {
        self.with_cgroup(sandbox_id, |cgroup| cgroup.thaw().map_err(launch_failed))
            .await
    }

    async fn oom_kills(&self, sandbox_id: &str) -> Result<Option<u64>> {
        self.with_cgroup(sandbox_id, |cgroup| {
            cgroup.oom_kills().map_err(launch_failed)
        })
        .await
    }
}

impl NamespaceDriver {
    fn live_handle(&self, sandbox_id: &str) -> Option<Handle> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(sandbox_id)
            .cloned()
    }

    /// Runs `work` on a live sandbox's cgroup on a blocking thread: cgroup files are plain
    /// file I/O, and a freeze polls until the kernel reports it done.
    async fn with_cgroup<T: Send + 'static>(
        &self,
        sandbox_id: &str,
        work: impl FnOnce(SandboxCgroup) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let handle = self
            .live_handle(sandbox_id)
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))?;
        tokio::task::spawn_blocking(move || {
            work(SandboxCgroup::open(handle.cgroup).map_err(launch_failed)?)
        })
        .await
        .map_err(launch_failed)?
    }

    /// The directory holding a live sandbox's overlay layers (named after the sandbox, or
    /// after the warm sandbox it was handed out as); where it would be for an unknown id.
    #[must_use]
    pub fn sandbox_path(&self, sandbox_id: &str) -> PathBuf {
        self.live_handle(sandbox_id).map_or_else(
            || {
                self.core
                    .config
                    .state_dir
                    .join("sandboxes")
                    .join(sandbox_id)
            },
            |handle| handle.dir,
        )
    }

    /// Where the state lives.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.core.config.state_dir
    }
}
