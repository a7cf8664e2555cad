//! cgroups: v2 (unified) with a v1 fallback.
//!
//! Every sandbox gets one cgroup, `<daemon's own cgroup>/firkin/<name>`, in each hierarchy
//! firkin uses: the unified one on cgroup v2, or `cpu`, `cpuacct`, `memory`, `pids` and
//! `freezer` on cgroup v1. Limits (CPU, memory without swap, PIDs) are written at create;
//! the cgroup is how a sandbox is paused (freezer), measured, and killed as a whole.
//!
//! # Where sandbox cgroups live
//!
//! Always below the daemon's *own* cgroup, read per hierarchy from `/proc/self/cgroup`, never
//! at a hierarchy's root: that is correct delegation on any host (a systemd service with
//! `Delegate=yes` owns exactly its own subtree), and on hybrid hosts the v1 memory controller
//! refuses otherwise (see `LINUX-FINDINGS.md`).
//!
//! # cgroup v2 delegation
//!
//! v2 allows domain controllers (`cpu`, `memory`, `pids`) to be handed to children only by
//! a cgroup without processes of its own ("no internal processes"; the root is exempt). So:
//!
//! - `<own>/firkin` never holds processes; it enables the controllers for the sandboxes in
//!   its `cgroup.subtree_control`.
//! - `<own>` must enable them too. If the kernel refuses because the daemon's own cgroup
//!   holds processes (`EBUSY`), every process there moves into a leaf,
//!   `<own>/firkin-daemon` (what systemd's `DelegateSubgroup=` does), and the write is
//!   retried. Detection sees through that leaf, so a restarted daemon that starts inside it
//!   still finds `<own>/firkin`.
//! - Only controllers `<own>` offers (`cgroup.controllers`) are enabled; a limit that needs a
//!   missing one fails create with [`CgroupError::ControllerUnavailable`].
//!
//! # Killing
//!
//! v2 writes `cgroup.kill` (Linux 5.14+), which the kernel applies to every process atomically,
//! forks included. v1 has no such knob: [`SandboxCgroup::kill`] freezes the cgroup (so nothing
//! forks or exits while it is read), sends SIGKILL to every PID in `cgroup.procs`, thaws (the
//! frozen tasks then die), and repeats until the cgroup is empty or a deadline passes. Because
//! the set is frozen while it is signalled, a PID cannot be reused by an outside process
//! between reading and killing.
//!
//! # Freezing and CFS quotas
//!
//! With a CPU quota, freezing waits for throttled tasks to run (p95 25 ms, max 38 ms measured
//! on v1): callers that care about latency kill without freezing, or lift the quota first.

mod error;
mod fs;
mod layout;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::CgroupError;
pub use layout::CgroupLayout;

/// The directory below the daemon's own cgroup that holds every sandbox cgroup.
pub const FIRKIN_DIR: &str = "firkin";
/// On cgroup v2, the leaf the daemon's processes move into when its own cgroup must delegate.
pub const DAEMON_LEAF: &str = "firkin-daemon";
/// How long [`SandboxCgroup::freeze`] and [`SandboxCgroup::thaw`] wait by default.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`SandboxCgroup::kill`] keeps trying before reporting survivors.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `rmdir` is retried while the kernel still reports the cgroup busy.
const RMDIR_TIMEOUT: Duration = Duration::from_secs(1);

/// The controllers firkin needs on cgroup v2.
const V2_CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];
/// The v1 hierarchies firkin needs.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "freezer"];

/// Which cgroup version a layout or cgroup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    /// One hierarchy per controller (legacy or hybrid hosts).
    V1,
    /// The unified hierarchy.
    V2,
}

/// Resource limits of one sandbox; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupLimits {
    /// CPU time in thousandths of a CPU per wall time (1000 = one whole CPU); at least 10.
    pub cpu_millis: Option<u64>,
    /// Memory in bytes, swap excluded (the sandbox gets no swap); more than zero.
    pub memory_bytes: Option<u64>,
    /// Most processes and threads at once; at least 1.
    pub pids_max: Option<u64>,
}

/// The CFS period used for CPU limits, in microseconds (the kernel's default).
const CPU_PERIOD_USEC: u64 = 100_000;

impl CgroupLimits {
    /// Checks the values before anything is written.
    pub fn validate(&self) -> Result<(), CgroupError> {
        let bad = |field, value, reason| {
            Err(CgroupError::InvalidLimit {
                field,
                value,
                reason,
            })
        };
        if let Some(v) = self.cpu_millis {
            if v < 10 {
                return bad(
                    "cpu_millis",
                    v,
                    "below 10 (the kernel's 1 ms minimum quota)",
                );
            }
            if v.checked_mul(CPU_PERIOD_USEC / 1000)
                .is_none_or(|q| q > i64::MAX as u64 / 1000)
            {
                return bad("cpu_millis", v, "too large");
            }
        }
        if self.memory_bytes == Some(0) {
            return bad("memory_bytes", 0, "must be more than zero");
        }
        if self.pids_max == Some(0) {
            return bad("pids_max", 0, "must be at least 1");
        }
        Ok(())
    }

    /// The CFS quota per [`CPU_PERIOD_USEC`], in microseconds.
    fn cpu_quota_usec(&self) -> Option<u64> {
        self.cpu_millis.map(|m| m * (CPU_PERIOD_USEC / 1000))
    }
}

/// Everything needed to find a sandbox cgroup again, e.g. after a daemon restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupHandle {
    /// The cgroup version the paths belong to.
    pub version: CgroupVersion,
    /// The sandbox cgroup's name (the last component of every path).
    pub name: String,
    /// The cgroup directory per controller: v1 controller names, or `unified` on v2.
    pub paths: BTreeMap<String, PathBuf>,
}

/// A sandbox's cgroup: created with limits, or re-opened from a [`CgroupHandle`].
///
/// Dropping it changes nothing in the kernel: call [`SandboxCgroup::remove`].
#[derive(Debug)]
pub struct SandboxCgroup {
    handle: CgroupHandle,
}

/// Whether `name` is a valid sandbox cgroup name: 1 to 128 of `[a-z0-9-]`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl SandboxCgroup {
    /// Creates `<own cgroup>/firkin/<name>` in every hierarchy firkin uses and applies
    /// `limits`. On any failure, whatever this call created is removed again.
    ///
    /// ```no_run
    /// use firkin_linux::cgroup::{CgroupLayout, CgroupLimits, SandboxCgroup};
    /// let layout = CgroupLayout::detect()?;
    /// let limits = CgroupLimits { cpu_millis: Some(500), memory_bytes: Some(512 << 20), pids_max: Some(256) };
    /// let cg = SandboxCgroup::create(&layout, "sb-1", &limits)?;
    /// cg.add_process(std::process::id())?;
    /// # Ok::<(), firkin_linux::cgroup::CgroupError>(())
    /// ```
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, CgroupError> {
        limits.validate()?;
        let handle = layout.handle_for(name)?;
        match handle.version {
            CgroupVersion::V1 => v1::create(&handle, limits)?,
            CgroupVersion::V2 => v2::create(layout, &handle, limits)?,
        }
        Ok(Self { handle })
    }

    /// Writes `limits` into the existing cgroup (a cgroup made ahead of its sandbox gets its
    /// sandbox's limits when it is handed out). `None` leaves a resource as it is. Lowering
    /// memory below what the cgroup already uses fails with the kernel's error.
    pub fn set_limits(&self, limits: &CgroupLimits) -> Result<(), CgroupError> {
        limits.validate()?;
        let plan = match self.handle.version {
            CgroupVersion::V1 => v1::plan(limits),
            CgroupVersion::V2 => v2::plan(limits),
        };
        apply(&self.handle, &plan)
    }

    /// Re-opens an existing sandbox cgroup (re-adoption after a daemon restart).
    ///
    /// Refuses handles whose paths are not `<...>/firkin/<name>`, and fails with
    /// [`CgroupError::NotFound`] if any directory is gone.
    pub fn open(handle: CgroupHandle) -> Result<Self, CgroupError> {
        check_handle(&handle)?;
        if let Some(missing) = handle.paths.values().find(|p| !p.is_dir()) {
            return Err(CgroupError::NotFound {
                path: missing.clone(),
            });
        }
        Ok(Self { handle })
    }

    /// Kills and removes whatever is left of the sandbox cgroup `name` (a leftover listed by
    /// [`CgroupLayout::firkin_cgroups`], possibly half-created). Missing parts are fine.
    pub fn reclaim(layout: &CgroupLayout, name: &str) -> Result<(), CgroupError> {
        Self {
            handle: layout.handle_for(name)?,
        }
        .remove()
    }

    /// The handle to store for re-adoption.
    pub fn handle(&self) -> &CgroupHandle {
        &self.handle
    }

    /// The sandbox cgroup's name.
    pub fn name(&self) -> &str {
        &self.handle.name
    }

    /// The distinct cgroup directories of this sandbox.
    pub fn dirs(&self) -> Vec<&PathBuf> {
        fs::distinct(self.handle.paths.values())
    }

    /// The `cgroup.procs` files: a process joins the sandbox by having its PID written into
    /// each (a forked child may write its own, `0` meaning itself, before it execs).
    pub fn procs_paths(&self) -> Vec<PathBuf> {
        self.dirs()
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    /// Moves process `pid` (all its threads) into the sandbox cgroup in every hierarchy.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let data = pid.to_string();
        self.procs_paths()
            .iter()
            .try_for_each(|p| fs::write(p, &data))
    }

    /// The PIDs in the sandbox cgroup (the union over hierarchies), sorted.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = Vec::new();
        for p in self.procs_paths() {
            pids.extend(fs::read_procs(&p)?);
        }
        pids.sort_unstable();
        pids.dedup();
        Ok(pids)
    }

    /// Freezes every process, waiting up to [`FREEZE_TIMEOUT`] until the kernel reports the
    /// cgroup frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.freeze_within(FREEZE_TIMEOUT)
    }

    /// [`Self::freeze`] with a chosen timeout. On timeout the cgroup is thawed again, so it is
    /// never left half-frozen.
    pub fn freeze_within(&self, timeout: Duration) -> Result<(), CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => v1::set_frozen(self.dir("freezer"), true, timeout),
            CgroupVersion::V2 => v2::set_frozen(self.dir("unified"), true, timeout),
        }
    }

    /// Thaws the cgroup, waiting up to [`FREEZE_TIMEOUT`] until the kernel reports it thawed.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => v1::set_frozen(self.dir("freezer"), false, FREEZE_TIMEOUT),
            CgroupVersion::V2 => v2::set_frozen(self.dir("unified"), false, FREEZE_TIMEOUT),
        }
    }

    /// Whether the kernel reports the cgroup completely frozen.
    pub fn is_frozen(&self) -> Result<bool, CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => v1::is_frozen(self.dir("freezer")),
            CgroupVersion::V2 => v2::is_frozen(self.dir("unified")),
        }
    }

    /// Kills every process in the sandbox cgroup and waits until it is empty (at most
    /// [`KILL_TIMEOUT`]). A frozen cgroup is thawed on the way (v1) so its tasks can die.
    pub fn kill(&self) -> Result<(), CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => self.kill_by_signal(),
            CgroupVersion::V2 => {
                if v2::kill(self.dir("unified"))? {
                    self.wait_empty(KILL_TIMEOUT)
                } else {
                    // Before Linux 5.14 there is no cgroup.kill: do it the v1 way.
                    self.kill_by_signal()
                }
            }
        }
    }

    /// Kills what is left and removes the cgroup directory in every hierarchy. Removing a
    /// cgroup that is (partly) gone is success, so calling it twice is harmless.
    pub fn remove(&self) -> Result<(), CgroupError> {
        if self.dirs().iter().all(|d| !d.exists()) {
            return Ok(());
        }
        if !self.pids()?.is_empty() {
            self.kill()?;
        }
        self.dirs()
            .into_iter()
            .try_for_each(|d| fs::rmdir(d, RMDIR_TIMEOUT))
    }

    /// Memory in use by the sandbox, page cache included, in bytes.
    pub fn memory_usage_bytes(&self) -> Result<u64, CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => fs::read_u64(&self.dir("memory").join("memory.usage_in_bytes")),
            CgroupVersion::V2 => fs::read_u64(&self.dir("unified").join("memory.current")),
        }
    }

    /// Of [`SandboxCgroup::memory_usage_bytes`], the page cache (v1 `cache`, v2 `file` in
    /// `memory.stat`); 0 when the kernel does not say.
    pub fn memory_cache_bytes(&self) -> Result<u64, CgroupError> {
        let (path, key) = match self.handle.version {
            CgroupVersion::V1 => (self.dir("memory").join("memory.stat"), "cache"),
            CgroupVersion::V2 => (self.dir("unified").join("memory.stat"), "file"),
        };
        Ok(fs::read_keyed(&path, key)?.unwrap_or(0))
    }

    /// CPU time used by the sandbox so far, in microseconds.
    pub fn cpu_usage_usec(&self) -> Result<u64, CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => {
                Ok(fs::read_u64(&self.dir("cpuacct").join("cpuacct.usage"))? / 1000)
            }
            CgroupVersion::V2 => {
                let path = self.dir("unified").join("cpu.stat");
                fs::read_keyed(&path, "usage_usec")?.ok_or(CgroupError::Parse {
                    path,
                    content: "no usage_usec".to_owned(),
                })
            }
        }
    }

    /// How many processes the OOM killer has killed in the sandbox, if the kernel reports it
    /// (v2 `memory.events`, v1 `memory.oom_control` since Linux 4.13).
    pub fn oom_kills(&self) -> Result<Option<u64>, CgroupError> {
        match self.handle.version {
            CgroupVersion::V1 => {
                fs::read_keyed(&self.dir("memory").join("memory.oom_control"), "oom_kill")
            }
            CgroupVersion::V2 => {
                fs::read_keyed(&self.dir("unified").join("memory.events"), "oom_kill")
            }
        }
    }

    /// The directory for `controller`; handles are checked to hold every needed one.
    fn dir(&self, controller: &str) -> &Path {
        self.handle
            .paths
            .get(controller)
            .map_or(Path::new("/nonexistent"), PathBuf::as_path)
    }

    /// The v1 kill: freeze, SIGKILL every listed PID, thaw, until empty or the deadline.
    fn kill_by_signal(&self) -> Result<(), CgroupError> {
        let deadline = std::time::Instant::now() + KILL_TIMEOUT;
        loop {
            if self.pids()?.is_empty() {
                return Ok(());
            }
            // Best effort: a freeze that times out (CFS throttling) still thaws itself, and
            // killing unfrozen tasks works, only without the guarantee that none forks.
            let _ = self.freeze_within(Duration::from_millis(100));
            for pid in self.pids()? {
                fs::sigkill(pid, self.dirs()[0])?;
            }
            match self.thaw() {
                // A half-made leftover may lack its freezer directory: nothing to thaw.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                other => other?,
            }
            if self.wait_empty(Duration::from_millis(100)).is_ok() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return self.wait_empty(Duration::ZERO);
            }
        }
    }

    /// Waits until no process is left, or reports the survivors.
    fn wait_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        if fs::wait_until(timeout, || Ok(self.pids()?.is_empty()))? {
            return Ok(());
        }
        Err(CgroupError::KillIncomplete {
            path: self.dirs()[0].clone(),
            pids: self.pids()?,
        })
    }
}

/// Refuses handles that could make us kill or remove something that is not ours.
fn check_handle(handle: &CgroupHandle) -> Result<(), CgroupError> {
    if !is_valid_name(&handle.name) {
        return Err(CgroupError::InvalidName {
            name: handle.name.clone(),
        });
    }
    let needed: &[&str] = match handle.version {
        CgroupVersion::V1 => V1_CONTROLLERS,
        CgroupVersion::V2 => &["unified"],
    };
    for controller in needed {
        let Some(path) = handle.paths.get(*controller) else {
            return Err(CgroupError::InvalidHandle {
                path: PathBuf::from(format!("<no {controller} path>")),
                name: handle.name.clone(),
            });
        };
        let ours = path.is_absolute()
            && path.file_name().is_some_and(|n| n == handle.name.as_str())
            && path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == FIRKIN_DIR)
            && !path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if !ours {
            return Err(CgroupError::InvalidHandle {
                path: path.clone(),
                name: handle.name.clone(),
            });
        }
    }
    Ok(())
}

/// One limit file to write: a value as planned, before any side effect.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitWrite {
    /// The handle key of the directory (`memory`, `unified`, ...).
    controller: &'static str,
    /// The file in that directory.
    file: &'static str,
    /// The text to write.
    value: String,
    /// Written only if the kernel offers the file (swap accounting may be off).
    optional: bool,
}

/// Applies planned writes in order.
fn apply(handle: &CgroupHandle, plan: &[LimitWrite]) -> Result<(), CgroupError> {
    for w in plan {
        let Some(dir) = handle.paths.get(w.controller) else {
            continue;
        };
        let path = dir.join(w.file);
        if w.optional && !path.exists() {
            continue;
        }
        fs::write(&path, &w.value)?;
    }
    Ok(())
}

/// Removes the directories `create` made, newest first, after `cause`; keeps both errors.
fn roll_back(created: &[PathBuf], cause: CgroupError) -> CgroupError {
    let cleanup: Vec<CgroupError> = created
        .iter()
        .rev()
        .filter_map(|d| fs::rmdir(d, RMDIR_TIMEOUT).err())
        .collect();
    if cleanup.is_empty() {
        cause
    } else {
        CgroupError::Rollback {
            path: created.first().cloned().unwrap_or_default(),
            source: Box::new(cause),
            cleanup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "sb-1", "0", &"x".repeat(128)] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a_b",
            "a/b",
            "..",
            ".",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn limits_are_validated() {
        assert!(CgroupLimits::default().validate().is_ok());
        let l = CgroupLimits {
            cpu_millis: Some(9),
            ..Default::default()
        };
        assert!(matches!(
            l.validate(),
            Err(CgroupError::InvalidLimit {
                field: "cpu_millis",
                value: 9,
                ..
            })
        ));
        let l = CgroupLimits {
            cpu_millis: Some(u64::MAX),
            ..Default::default()
        };
        assert!(l.validate().is_err());
        let l = CgroupLimits {
            memory_bytes: Some(0),
            ..Default::default()
        };
        assert!(l.validate().is_err());
        let l = CgroupLimits {
            pids_max: Some(0),
            ..Default::default()
        };
        assert!(l.validate().is_err());
        let l = CgroupLimits {
            cpu_millis: Some(1500),
            memory_bytes: Some(1),
            pids_max: Some(1),
        };
        assert!(l.validate().is_ok());
        assert_eq!(l.cpu_quota_usec(), Some(150_000));
    }

    fn handle(version: CgroupVersion, keys: &[&str], name: &str, path: &str) -> CgroupHandle {
        CgroupHandle {
            version,
            name: name.to_owned(),
            paths: keys
                .iter()
                .map(|k| ((*k).to_owned(), PathBuf::from(path)))
                .collect(),
        }
    }

    #[test]
    fn handles_are_checked_before_use() {
        let good = handle(
            CgroupVersion::V2,
            &["unified"],
            "sb",
            "/sys/fs/cgroup/x/firkin/sb",
        );
        assert!(check_handle(&good).is_ok());
        let json = serde_json::to_string(&good).expect("serialize");
        assert_eq!(
            serde_json::from_str::<CgroupHandle>(&json).expect("parse"),
            good
        );
        assert!(json.contains("\"v2\""), "{json}");
        for (name, path) in [
            ("sb", "/sys/fs/cgroup/x/sb"),
            ("sb", "/sys/fs/cgroup/firkin/other"),
            ("sb", "relative/firkin/sb"),
            ("sb", "/a/../firkin/sb"),
            ("SB", "/firkin/SB"),
        ] {
            assert!(
                check_handle(&handle(CgroupVersion::V2, &["unified"], name, path)).is_err(),
                "{path}"
            );
        }
        // v1 needs all five hierarchies.
        assert!(
            check_handle(&handle(
                CgroupVersion::V1,
                &["memory"],
                "sb",
                "/m/firkin/sb"
            ))
            .is_err()
        );
        assert!(
            check_handle(&handle(
                CgroupVersion::V1,
                V1_CONTROLLERS,
                "sb",
                "/m/firkin/sb"
            ))
            .is_ok()
        );
    }

    /// A v1 layout over a fake tree of plain directories (no kernel files in them).
    fn fake_v1(root: &Path) -> CgroupLayout {
        let mountinfo: String = V1_CONTROLLERS
            .iter()
            .map(|c| format!("1 1 0:1 / /cg/{c} rw - cgroup cgroup rw,{c}\n"))
            .collect();
        let own: String = V1_CONTROLLERS
            .iter()
            .map(|c| format!("1:{c}:/daemon\n"))
            .collect();
        for c in V1_CONTROLLERS {
            std::fs::create_dir_all(root.join("cg").join(c).join("daemon")).expect("mkdir");
        }
        CgroupLayout::from_texts(&mountinfo, &own, root).expect("layout")
    }

    #[test]
    fn create_rolls_back_what_it_made() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = fake_v1(tmp.path());
        // Plain directories have no limit files: the first write fails, with its path.
        let limits = CgroupLimits {
            memory_bytes: Some(1 << 20),
            ..Default::default()
        };
        let err =
            SandboxCgroup::create(&layout, "sb", &limits).expect_err("no memory.limit_in_bytes");
        match &err {
            CgroupError::Write { path, data, .. } => {
                assert!(
                    path.ends_with("memory/daemon/firkin/sb/memory.limit_in_bytes"),
                    "{}",
                    path.display()
                );
                assert_eq!(data, "1048576");
            }
            other => panic!("unexpected {other:?}"),
        }
        let handle = layout.handle_for("sb").expect("handle");
        for dir in handle.paths.values() {
            assert!(!dir.exists(), "{} not rolled back", dir.display());
            assert!(
                dir.parent().expect("firkin dir").is_dir(),
                "the firkin dir stays"
            );
        }
        // Without limits nothing is written: create, list, refuse a duplicate, remove.
        let cg = SandboxCgroup::create(&layout, "sb", &CgroupLimits::default()).expect("create");
        assert_eq!(layout.firkin_cgroups().expect("list"), ["sb"]);
        assert!(matches!(
            SandboxCgroup::create(&layout, "sb", &CgroupLimits::default()),
            Err(CgroupError::AlreadyExists { .. })
        ));
        assert!(
            handle.paths.values().all(|d| d.is_dir()),
            "a refused duplicate removed nothing"
        );
        cg.remove().expect("remove");
        assert!(layout.firkin_cgroups().expect("list").is_empty());
        layout.prune_firkin_dirs().expect("prune");
        assert!(layout.firkin_dirs().iter().all(|d| !d.exists()));
    }

    #[test]
    fn open_of_a_missing_cgroup_is_not_found() {
        let tmp = tempfile::tempdir().expect("tmp");
        let path = tmp.path().join("firkin/sb");
        let h = handle(
            CgroupVersion::V2,
            &["unified"],
            "sb",
            path.to_str().expect("utf-8"),
        );
        assert!(matches!(
            SandboxCgroup::open(h.clone()),
            Err(CgroupError::NotFound { .. })
        ));
        std::fs::create_dir_all(&path).expect("mkdir");
        let cg = SandboxCgroup::open(h).expect("open");
        assert_eq!(cg.procs_paths(), vec![path.join("cgroup.procs")]);
        assert_eq!(cg.pids().expect("none"), Vec::<u32>::new());
        // A plain directory stands in for the cgroup: rmdir works, twice.
        cg.remove().expect("remove");
        assert!(!path.exists());
        cg.remove().expect("remove again");
    }
}
