//! cgroup v2: one directory in the unified hierarchy, controllers delegated from above.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    CPU_PERIOD_USEC, CgroupError, CgroupHandle, CgroupLayout, CgroupLimits, DAEMON_LEAF,
    LimitWrite, V2_CONTROLLERS, apply, fs, roll_back,
};

/// Creates `<own>/firkin/<name>` with the controllers delegated to it and writes the limits.
pub(super) fn create(
    layout: &CgroupLayout,
    handle: &CgroupHandle,
    limits: &CgroupLimits,
) -> Result<(), CgroupError> {
    let dir = handle
        .paths
        .get("unified")
        .ok_or_else(|| CgroupError::InvalidHandle {
            path: PathBuf::from("<no unified path>"),
            name: handle.name.clone(),
        })?;
    let (Some(firkin), Some(own)) = (dir.parent(), dir.parent().and_then(Path::parent)) else {
        return Err(CgroupError::InvalidHandle {
            path: dir.clone(),
            name: handle.name.clone(),
        });
    };
    let offered = layout.v2_controllers();
    let enable: Vec<&str> = V2_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| offered.iter().any(|o| o == c))
        .collect();
    let needed = [
        (limits.cpu_millis.is_some(), "cpu"),
        (limits.memory_bytes.is_some(), "memory"),
        (limits.pids_max.is_some(), "pids"),
    ];
    if let Some((_, controller)) = needed.iter().find(|(n, c)| *n && !enable.contains(c)) {
        return Err(CgroupError::ControllerUnavailable {
            path: own.to_owned(),
            controller: (*controller).to_owned(),
        });
    }
    enable_controllers(own, &enable, true)?;
    fs::mkdir(firkin)?;
    enable_controllers(firkin, &enable, false)?;
    if !fs::mkdir(dir)? {
        return Err(CgroupError::AlreadyExists { path: dir.clone() });
    }
    apply(handle, &plan(limits)).map_err(|e| roll_back(std::slice::from_ref(dir), e))
}

/// Makes sure `dir/cgroup.subtree_control` holds `enable`. If the kernel refuses because `dir`
/// holds processes (the "no internal processes" rule) and `may_evacuate`, moves them into
/// [`DAEMON_LEAF`] first.
fn enable_controllers(dir: &Path, enable: &[&str], may_evacuate: bool) -> Result<(), CgroupError> {
    if enable.is_empty() {
        return Ok(());
    }
    let path = dir.join("cgroup.subtree_control");
    let current = fs::read(&path)?;
    let missing: Vec<String> = enable
        .iter()
        .filter(|c| !current.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let data = missing.join(" ");
    match fs::write(&path, &data) {
        Err(e) if may_evacuate && e.raw_os_error() == Some(libc::EBUSY) => {
            evacuate(dir)?;
            fs::write(&path, &data)
        }
        other => other,
    }
}

/// Moves every process of `dir` into `dir/firkin-daemon`, so `dir` may delegate controllers.
fn evacuate(dir: &Path) -> Result<(), CgroupError> {
    let leaf = dir.join(DAEMON_LEAF);
    fs::mkdir(&leaf)?;
    let target = leaf.join("cgroup.procs");
    for pid in fs::read_procs(&dir.join("cgroup.procs"))? {
        match fs::write(&target, &pid.to_string()) {
            // Exited meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            other => other?,
        }
    }
    Ok(())
}

/// The v2 limit files for `limits`.
pub(super) fn plan(limits: &CgroupLimits) -> Vec<LimitWrite> {
    let mut plan = Vec::new();
    let mut push = |file, value: String, optional| {
        plan.push(LimitWrite {
            controller: "unified",
            file,
            value,
            optional,
        });
    };
    if let Some(quota) = limits.cpu_quota_usec() {
        push("cpu.max", format!("{quota} {CPU_PERIOD_USEC}"), false);
    }
    if let Some(bytes) = limits.memory_bytes {
        push("memory.max", bytes.to_string(), false);
        // Absent when the kernel has no swap accounting: then there is no swap to limit.
        push("memory.swap.max", "0".to_owned(), true);
    }
    if let Some(max) = limits.pids_max {
        push("pids.max", max.to_string(), false);
    }
    plan
}

/// Writes `cgroup.freeze` and waits until `cgroup.events` reports `frozen` accordingly.
pub(super) fn set_frozen(dir: &Path, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let path = dir.join("cgroup.freeze");
    fs::write(&path, if frozen { "1" } else { "0" })?;
    if fs::wait_until(timeout, || Ok(is_frozen(dir)? == frozen))? {
        return Ok(());
    }
    if frozen {
        let _ = fs::write(&path, "0");
    }
    Err(CgroupError::Timeout {
        path: dir.join("cgroup.events"),
        state: if frozen { "frozen" } else { "thawed" },
        timeout,
    })
}

/// Whether `cgroup.events` says `frozen 1`.
pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    let path = dir.join("cgroup.events");
    Ok(fs::keyed(&path, &fs::read(&path)?, "frozen")? == Some(1))
}

/// Writes `cgroup.kill`; `Ok(false)` when the kernel is older than 5.14 and lacks it.
pub(super) fn kill(dir: &Path) -> Result<bool, CgroupError> {
    let path = dir.join("cgroup.kill");
    if !path.exists() {
        return Ok(false);
    }
    fs::write(&path, "1")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::SandboxCgroup;

    #[test]
    fn plan_writes_every_limit() {
        let limits = CgroupLimits {
            cpu_millis: Some(1500),
            memory_bytes: Some(64 << 20),
            pids_max: Some(20),
        };
        let got: Vec<(&str, String, bool)> = plan(&limits)
            .into_iter()
            .map(|w| (w.file, w.value, w.optional))
            .collect();
        assert_eq!(
            got,
            [
                ("cpu.max", "150000 100000".to_owned(), false),
                ("memory.max", "67108864".to_owned(), false),
                ("memory.swap.max", "0".to_owned(), true),
                ("pids.max", "20".to_owned(), false),
            ]
        );
    }

    #[test]
    fn delegation_enables_only_missing_controllers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ctl = tmp.path().join("cgroup.subtree_control");
        std::fs::write(&ctl, "cpu\n").expect("write");
        enable_controllers(tmp.path(), &["cpu", "memory", "pids"], false).expect("enable");
        // A regular file keeps the last write: only the missing two were asked for.
        assert_eq!(
            std::fs::read_to_string(&ctl).expect("read"),
            "+memory +pids"
        );
        std::fs::write(&ctl, "cpu memory pids\n").expect("write");
        enable_controllers(tmp.path(), &["cpu", "memory", "pids"], false).expect("nothing to do");
        assert_eq!(
            std::fs::read_to_string(&ctl).expect("read"),
            "cpu memory pids\n"
        );
    }

    /// The v2 freeze, kill and remove paths on the real unified hierarchy. On a hybrid host
    /// it offers no controllers, which these verbs do not need (limits stay unset).
    #[test]
    fn real_v2_freeze_kill_remove_without_controllers() {
        if !firkin_test_support::root_or_skip("real_v2_freeze_kill_remove") {
            return;
        }
        let detected = CgroupLayout::detect().ok();
        let hybrid = detected
            .as_ref()
            .is_some_and(|l| l.version() == crate::cgroup::CgroupVersion::V1);
        let Some(layout) = detected.and_then(CgroupLayout::force_v2) else {
            firkin_test_support::skip(
                "real_v2_freeze_kill_remove",
                "no cgroup v2 hierarchy holds this process",
            );
            return;
        };
        let name = format!("unit-v2-{}", std::process::id());
        let cg = match SandboxCgroup::create(&layout, &name, &CgroupLimits::default()) {
            Ok(cg) => cg,
            Err(e) => {
                firkin_test_support::skip(
                    "real_v2_freeze_kill_remove",
                    &format!("cannot create a v2 cgroup here: {e}"),
                );
                return;
            }
        };
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .expect("spawn sleep");
        let result = (|| -> Result<(), CgroupError> {
            cg.add_process(child.id())?;
            assert_eq!(cg.pids()?, [child.id()]);
            cg.freeze()?;
            assert!(cg.is_frozen()?);
            cg.thaw()?;
            assert!(!cg.is_frozen()?);
            // cgroup.kill reaches frozen tasks too.
            cg.freeze()?;
            cg.kill()?;
            assert!(cg.pids()?.is_empty());
            cg.remove()?;
            cg.remove()
        })();
        let _ = child.kill();
        let _ = child.wait();
        let _ = cg.remove();
        result.expect("v2 verbs");
        assert!(!cg.dirs()[0].exists());
        // Nothing else uses the unified `firkin` directory on a hybrid host: do not leave it.
        if let Some(parent) = cg.dirs()[0].parent().filter(|_| hybrid) {
            let _ = std::fs::remove_dir(parent);
        }
    }
}
