//! The sandbox's own limits and use, from its cgroup, for `GET /metrics`.
//!
//! In a sandbox, `/sys/fs/cgroup` shows the sandbox's own cgroup at the root of each
//! hierarchy (the init helper binds it there): cgroup v2 at `/sys/fs/cgroup` (a pure v2 host)
//! or `/sys/fs/cgroup/unified` (a hybrid one), v1 controllers at `/sys/fs/cgroup/<name>`.
//! A limit is taken from v2 where its file is there, else from v1. Outside a sandbox the
//! same files are the host's root cgroup, which has no limits: the machine's numbers apply.

use std::path::{Path, PathBuf};

/// What the cgroup says; `None` where it sets nothing or the file is not there.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CgroupUsage {
    /// The memory limit, bytes.
    pub memory_limit: Option<u64>,
    /// Memory in use less the inactive page cache (what could be dropped at once), bytes.
    pub memory_used: Option<u64>,
    /// The CPU limit in CPUs (quota / period).
    pub cpu_limit: Option<f64>,
    /// CPU time used so far, microseconds.
    pub cpu_usage_usec: Option<u64>,
}

/// The files under `root` (normally `/sys/fs/cgroup`).
#[must_use]
pub fn read(root: &Path) -> CgroupUsage {
    let v2 = [root.to_owned(), root.join("unified")]
        .into_iter()
        .find(|dir| dir.join("cgroup.controllers").exists());
    let v2_file = |name: &str| v2.as_ref().and_then(|dir| text(&dir.join(name)));
    let v1_file = |controller: &str, name: &str| text(&root.join(controller).join(name));

    let memory_limit = v2_file("memory.max")
        .map(|max| max.parse().ok())
        .or_else(|| {
            // v1 says "no limit" with a huge number (a page-rounded i64::MAX).
            v1_file("memory", "memory.limit_in_bytes")
                .map(|limit| limit.parse::<u64>().ok().filter(|&l| l < 1 << 62))
        })
        .flatten();
    let memory_used = match v2_file("memory.current") {
        Some(current) => current.parse::<u64>().ok().map(|current| {
            current.saturating_sub(stat_field(v2_file("memory.stat"), "inactive_file"))
        }),
        None => v1_file("memory", "memory.usage_in_bytes")
            .and_then(|usage| usage.parse::<u64>().ok())
            .map(|usage| {
                let stat = v1_file("memory", "memory.stat");
                usage.saturating_sub(stat_field(stat, "total_inactive_file"))
            }),
    };
    let cpu_limit = match v2_file("cpu.max") {
        Some(max) => {
            let mut fields = max.split_ascii_whitespace();
            match (fields.next(), fields.next()) {
                (Some(quota), Some(period)) => ratio(quota.parse().ok(), period.parse().ok()),
                _ => None,
            }
        }
        None => ratio(
            v1_file("cpu", "cpu.cfs_quota_us").and_then(|q| q.parse().ok()),
            v1_file("cpu", "cpu.cfs_period_us").and_then(|p| p.parse().ok()),
        ),
    };
    let cpu_usage_usec = match v2_file("cpu.stat") {
        Some(stat) => Some(stat_field(Some(stat), "usage_usec")),
        None => v1_file("cpuacct", "cpuacct.usage")
            .and_then(|ns| ns.parse::<u64>().ok())
            .map(|ns| ns / 1000),
    };
    CgroupUsage {
        memory_limit,
        memory_used,
        cpu_limit,
        cpu_usage_usec,
    }
}

/// `quota / period` CPUs; none for "max", -1 (v1's "no limit") or a zero period.
fn ratio(quota: Option<i64>, period: Option<i64>) -> Option<f64> {
    match (quota, period) {
        #[allow(clippy::cast_precision_loss)]
        (Some(quota), Some(period)) if quota > 0 && period > 0 => {
            Some(quota as f64 / period as f64)
        }
        _ => None,
    }
}

fn text(path: &PathBuf) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// The value of `name` in a `key value` per line file (0 when absent).
fn stat_field(stat: Option<String>, name: &str) -> u64 {
    stat.as_deref()
        .and_then(|stat| {
            stat.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
    }

    #[test]
    fn cgroup_v2_limits_and_use() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("memory.max", "268435456\n"),
                ("memory.current", "10000\n"),
                ("memory.stat", "anon 6000\ninactive_file 4000\n"),
                ("cpu.max", "150000 100000\n"),
                ("cpu.stat", "usage_usec 777\nuser_usec 700\n"),
            ],
        );
        assert_eq!(
            read(root.path()),
            CgroupUsage {
                memory_limit: Some(256 << 20),
                memory_used: Some(6000),
                cpu_limit: Some(1.5),
                cpu_usage_usec: Some(777),
            }
        );
        write(
            root.path(),
            &[("memory.max", "max\n"), ("cpu.max", "max 100000\n")],
        );
        let usage = read(root.path());
        assert_eq!((usage.memory_limit, usage.cpu_limit), (None, None));
    }

    #[test]
    fn cgroup_v1_limits_and_use_with_an_empty_unified_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &[
                // A hybrid host: v2 mounted, the controllers on v1.
                ("unified/cgroup.controllers", ""),
                ("memory/memory.limit_in_bytes", "268435456\n"),
                ("memory/memory.usage_in_bytes", "10000\n"),
                (
                    "memory/memory.stat",
                    "cache 5000\ntotal_inactive_file 3000\n",
                ),
                ("cpu/cpu.cfs_quota_us", "100000\n"),
                ("cpu/cpu.cfs_period_us", "100000\n"),
                ("cpuacct/cpuacct.usage", "5000000\n"),
            ],
        );
        assert_eq!(
            read(root.path()),
            CgroupUsage {
                memory_limit: Some(256 << 20),
                memory_used: Some(7000),
                cpu_limit: Some(1.0),
                cpu_usage_usec: Some(5000),
            }
        );
        write(
            root.path(),
            &[
                ("memory/memory.limit_in_bytes", "9223372036854771712\n"),
                ("cpu/cpu.cfs_quota_us", "-1\n"),
            ],
        );
        let usage = read(root.path());
        assert_eq!((usage.memory_limit, usage.cpu_limit), (None, None));
    }

    #[test]
    fn no_cgroup_files_no_numbers() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read(root.path()), CgroupUsage::default());
    }
}
