//! `GET /metrics`: the sandbox's CPU, memory and disk use, in E2B envd's JSON.
//!
//! `/` is the sandbox's own root, so its disk numbers are the sandbox's. `/proc/stat` and
//! `/proc/meminfo` are the host's, though: where the sandbox's cgroup sets a memory or CPU
//! limit, the numbers come from the cgroup instead ([`super::cgroup`]): the limit as the total
//! (never above the machine's), its use, and CPU busy as a share of the CPUs it may use.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::cgroup::{self, CgroupUsage};

use axum::Json;
use serde::Serialize;

use super::{HttpError, unix_now};

/// What `GET /metrics` answers (the field names of E2B's envd).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Unix seconds.
    pub ts: i64,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// CPU busy since the previous request (the first: over 100 ms), percent of all CPUs,
    /// two decimals.
    pub cpu_used_pct: f32,
    /// Memory, MiB (deprecated by E2B, still sent).
    pub mem_total_mib: u64,
    /// Memory in use, MiB (deprecated by E2B, still sent).
    pub mem_used_mib: u64,
    /// Memory, bytes.
    pub mem_total: u64,
    /// Memory in use (not free, buffers or cache), bytes.
    pub mem_used: u64,
    /// Disk of `/` in use (total less what unprivileged users can still get), bytes.
    pub disk_used: u64,
    /// Disk of `/`, bytes.
    pub disk_total: u64,
}

/// CPU time counters from `/proc/stat`: (busy, total) in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

/// One reading of the CPU counters: the host's, and the cgroup's with its time.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    host: CpuTimes,
    cgroup_usec: Option<u64>,
    at: Instant,
}

static LAST_CPU: Mutex<Option<CpuSample>> = Mutex::new(None);

/// Where the sandbox's cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// `GET /metrics`.
///
/// # Errors
///
/// 500 when `/proc` or `/` cannot be read.
pub async fn get_metrics() -> Result<Json<Metrics>, HttpError> {
    metrics_from(Path::new(CGROUP_ROOT)).await.map(Json)
}

/// The metrics, with the cgroup hierarchies under `cgroup_root`.
async fn metrics_from(cgroup_root: &Path) -> Result<Metrics, HttpError> {
    // The CPU counters with the cgroup's whole reading (limits and use), read once.
    let sample = || -> Result<(CpuSample, u32, CgroupUsage), HttpError> {
        let (host, count) = read_cpu()?;
        let usage = cgroup::read(cgroup_root);
        Ok((
            CpuSample {
                host,
                cgroup_usec: usage.cpu_usage_usec,
                at: Instant::now(),
            },
            count,
            usage,
        ))
    };
    let previous = *LAST_CPU
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = match previous {
        Some(previous) => previous,
        None => {
            let first = sample()?.0;
            tokio::time::sleep(Duration::from_millis(100)).await;
            first
        }
    };
    let (now, host_cpus, usage) = sample()?;
    *LAST_CPU
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|error| HttpError::internal(format!("cannot read /proc/meminfo: {error}")))?;
    let (mem_total, mem_used) = sandbox_memory(memory(&meminfo), &usage);
    let (cpu_count, cpu_used_pct) = sandbox_cpu(host_cpus, &usage, previous, now);
    let disk = rustix::fs::statvfs("/")
        .map_err(|error| HttpError::internal(format!("cannot statvfs /: {error}")))?;
    let disk_total = disk.f_blocks.saturating_mul(disk.f_frsize);
    let disk_free = disk.f_bavail.saturating_mul(disk.f_frsize);
    Ok(Metrics {
        ts: unix_now(),
        cpu_count,
        cpu_used_pct,
        mem_total_mib: mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        mem_total,
        mem_used,
        disk_used: disk_total.saturating_sub(disk_free),
        disk_total,
    })
}

/// (total, used) memory: the cgroup's limit (at most the machine's memory) and use where it
/// has a limit, else the machine's `host` numbers.
fn sandbox_memory(host: (u64, u64), usage: &CgroupUsage) -> (u64, u64) {
    match (usage.memory_limit, usage.memory_used) {
        (Some(limit), Some(used)) => {
            let total = limit.min(host.0);
            (total, used.min(total))
        }
        _ => host,
    }
}

/// (CPUs, busy percent of them): the cgroup's quota in whole CPUs (rounded up, at most the
/// machine's) and its CPU time over the wall time between the samples, where it has a
/// quota; else the machine's.
fn sandbox_cpu(
    host_cpus: u32,
    usage: &CgroupUsage,
    before: CpuSample,
    after: CpuSample,
) -> (u32, f32) {
    let Some(limit) = usage.cpu_limit else {
        return (host_cpus, busy_percent(before.host, after.host));
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let cpus = (limit.ceil() as u32).clamp(1, host_cpus.max(1));
    let (Some(used_before), Some(used_after)) = (before.cgroup_usec, after.cgroup_usec) else {
        return (cpus, busy_percent(before.host, after.host));
    };
    let wall = after.at.duration_since(before.at).as_micros();
    if wall == 0 {
        return (cpus, 0.0);
    }
    #[allow(clippy::cast_precision_loss)]
    let share =
        used_after.saturating_sub(used_before) as f64 / (wall as f64 * limit.min(f64::from(cpus)));
    #[allow(clippy::cast_possible_truncation)]
    let percent = ((share * 100.0).min(100.0) * 100.0).round() as f32 / 100.0;
    (cpus, percent)
}

fn read_cpu() -> Result<(CpuTimes, u32), HttpError> {
    let stat = std::fs::read_to_string("/proc/stat")
        .map_err(|error| HttpError::internal(format!("cannot read /proc/stat: {error}")))?;
    cpu_times(&stat).ok_or_else(|| HttpError::internal("cannot parse /proc/stat"))
}

/// The aggregate `cpu` line's counters and the number of `cpuN` lines.
fn cpu_times(stat: &str) -> Option<(CpuTimes, u32)> {
    let mut times = None;
    let mut count = 0_u32;
    for line in stat.lines() {
        let mut fields = line.split_ascii_whitespace();
        match fields.next() {
            Some("cpu") => {
                // user nice system idle iowait irq softirq steal (guest time is in user).
                let values: Vec<u64> = fields.take(8).filter_map(|v| v.parse().ok()).collect();
                if values.len() < 4 {
                    return None;
                }
                let total: u64 = values.iter().sum();
                let idle = values[3] + values.get(4).copied().unwrap_or(0);
                times = Some(CpuTimes {
                    busy: total - idle,
                    total,
                });
            }
            Some(name) if name.starts_with("cpu") => count += 1,
            _ => {}
        }
    }
    let count = if count == 0 {
        std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1))
    } else {
        count
    };
    times.map(|times| (times, count))
}

fn busy_percent(before: CpuTimes, after: CpuTimes) -> f32 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    let busy = after.busy.saturating_sub(before.busy);
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    let percent = (busy as f64 / total as f64 * 100.0 * 100.0).round() / 100.0;
    #[allow(clippy::cast_possible_truncation)]
    let percent = percent as f32;
    percent
}

/// (total, used) bytes from `/proc/meminfo`: used is total less free, buffers, page cache
/// and reclaimable slab (gopsutil's `Used`, which E2B's envd reports).
fn memory(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_ascii_whitespace().next()?.parse::<u64>().ok()
            })
            .unwrap_or(0)
            * 1024
    };
    let total = field("MemTotal");
    let used = total
        .saturating_sub(field("MemFree"))
        .saturating_sub(field("Buffers"))
        .saturating_sub(field("Cached"))
        .saturating_sub(field("SReclaimable"));
    (total, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n\
                    cpu1 50 0 25 400 25 0 0 0 0 0\nintr 1 2 3\n";
        let (times, count) = cpu_times(stat).unwrap();
        assert_eq!(count, 2);
        assert_eq!(
            times,
            CpuTimes {
                busy: 150,
                total: 1000
            }
        );
        let later = CpuTimes {
            busy: 200,
            total: 1200,
        };
        assert!((busy_percent(times, later) - 25.0).abs() < f32::EPSILON);
        assert!(busy_percent(times, times).abs() < f32::EPSILON);
        assert_eq!(cpu_times("intr 1\n"), None);
    }

    #[test]
    fn parses_meminfo() {
        let meminfo = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n\
                       Buffers:          50 kB\nCached:          200 kB\nSwapCached: 7 kB\n\
                       SReclaimable:     50 kB\n";
        assert_eq!(memory(meminfo), (1_024_000, 600 * 1024));
    }

    #[test]
    fn a_cgroup_limit_is_the_total_and_its_use_the_use() {
        let host = (8 << 30, 3 << 30);
        let limited = CgroupUsage {
            memory_limit: Some(256 << 20),
            memory_used: Some(100 << 20),
            cpu_limit: Some(1.5),
            cpu_usage_usec: None,
        };
        assert_eq!(sandbox_memory(host, &limited), (256 << 20, 100 << 20));
        assert_eq!(sandbox_memory(host, &CgroupUsage::default()), host);
        // A limit above the machine's memory is the machine's.
        let huge = CgroupUsage {
            memory_limit: Some(64 << 30),
            ..limited
        };
        assert_eq!(sandbox_memory(host, &huge), (8 << 30, 100 << 20));

        let at = Instant::now();
        let sample = |usec, offset_ms| CpuSample {
            host: CpuTimes::default(),
            cgroup_usec: Some(usec),
            at: at + Duration::from_millis(offset_ms),
        };
        // 1.5 CPUs → 2; 75 ms of CPU in 100 ms of 1.5 CPUs is 50 %.
        let (cpus, busy) = sandbox_cpu(8, &limited, sample(0, 0), sample(75_000, 100));
        assert_eq!(cpus, 2);
        assert!((busy - 50.0).abs() < 0.01, "{busy}");
        assert_eq!(
            sandbox_cpu(8, &CgroupUsage::default(), sample(0, 0), sample(1, 100)).0,
            8
        );
    }

    #[tokio::test]
    async fn reads_this_machine() {
        let Json(metrics) = get_metrics().await.unwrap();
        assert!(metrics.cpu_count >= 1);
        assert!(metrics.mem_total > metrics.mem_used);
        assert!(metrics.disk_total >= metrics.disk_used);
        assert!((0.0..=100.0).contains(&metrics.cpu_used_pct));
        let json = serde_json::to_value(&metrics).unwrap();
        for key in [
            "ts",
            "cpu_count",
            "cpu_used_pct",
            "mem_total",
            "mem_used",
            "disk_used",
            "disk_total",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}
