//! cgroup v1: one directory per hierarchy (`cpu`, `cpuacct`, `memory`, `pids`, `freezer`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    CPU_PERIOD_USEC, CgroupError, CgroupHandle, CgroupLimits, LimitWrite, apply, fs, roll_back,
};

/// Creates the sandbox directory in every hierarchy and writes the limits; rolls back on error.
pub(super) fn create(handle: &CgroupHandle, limits: &CgroupLimits) -> Result<(), CgroupError> {
    let mut created = Vec::new();
    make(handle, limits, &mut created).map_err(|e| roll_back(&created, e))
}

fn make(
    handle: &CgroupHandle,
    limits: &CgroupLimits,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    for dir in fs::distinct(handle.paths.values()) {
        // The `firkin` parent is shared by every sandbox and never removed.
        if let Some(parent) = dir.parent() {
            fs::mkdir(parent)?;
        }
        if !fs::mkdir(dir)? {
            return Err(CgroupError::AlreadyExists { path: dir.clone() });
        }
        created.push(dir.clone());
    }
    apply(handle, &plan(limits))
}

/// The v1 limit files for `limits`, in the order they must be written.
pub(super) fn plan(limits: &CgroupLimits) -> Vec<LimitWrite> {
    let mut plan = Vec::new();
    let mut push = |controller, file, value: u64, optional| {
        plan.push(LimitWrite {
            controller,
            file,
            value: value.to_string(),
            optional,
        });
    };
    if let Some(quota) = limits.cpu_quota_usec() {
        push("cpu", "cpu.cfs_period_us", CPU_PERIOD_USEC, false);
        push("cpu", "cpu.cfs_quota_us", quota, false);
    }
    if let Some(bytes) = limits.memory_bytes {
        // memsw (memory + swap) may not be below the memory limit: write it second. Equal to
        // the memory limit means no swap. Absent when the kernel has swap accounting off.
        push("memory", "memory.limit_in_bytes", bytes, false);
        push("memory", "memory.memsw.limit_in_bytes", bytes, true);
    }
    if let Some(max) = limits.pids_max {
        push("pids", "pids.max", max, false);
    }
    plan
}

/// Writes `freezer.state` and waits until it reads back the wanted state.
pub(super) fn set_frozen(dir: &Path, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let path = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    fs::write(&path, want)?;
    // Reads FREEZING until every task has stopped.
    if fs::wait_until(timeout, || Ok(fs::read(&path)?.trim() == want))? {
        return Ok(());
    }
    if frozen {
        // Do not leave it half-frozen; the timeout is the error worth reporting.
        let _ = fs::write(&path, "THAWED");
    }
    Err(CgroupError::Timeout {
        path,
        state: want,
        timeout,
    })
}

/// Whether `freezer.state` reads `FROZEN` (`FREEZING` is not yet frozen).
pub(super) fn is_frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(fs::read(&dir.join("freezer.state"))?.trim() == "FROZEN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_writes_every_limit_in_order() {
        let limits = CgroupLimits {
            cpu_millis: Some(250),
            memory_bytes: Some(64 << 20),
            pids_max: Some(20),
        };
        let got: Vec<(&str, &str, String, bool)> = plan(&limits)
            .into_iter()
            .map(|w| (w.controller, w.file, w.value, w.optional))
            .collect();
        assert_eq!(
            got,
            [
                ("cpu", "cpu.cfs_period_us", "100000".to_owned(), false),
                ("cpu", "cpu.cfs_quota_us", "25000".to_owned(), false),
                (
                    "memory",
                    "memory.limit_in_bytes",
                    "67108864".to_owned(),
                    false
                ),
                (
                    "memory",
                    "memory.memsw.limit_in_bytes",
                    "67108864".to_owned(),
                    true
                ),
                ("pids", "pids.max", "20".to_owned(), false),
            ]
        );
        assert!(plan(&CgroupLimits::default()).is_empty());
    }
}
