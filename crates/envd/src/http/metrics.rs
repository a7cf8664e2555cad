//! `GET /metrics`: the sandbox's CPU, memory and disk use, in E2B envd's JSON.
//!
//! Inside a sandbox `/proc` and `/` are the sandbox's own, so the machine-wide numbers are the
//! sandbox's (no cgroup is read).

use std::sync::Mutex;
use std::time::Duration;

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

static LAST_CPU: Mutex<Option<CpuTimes>> = Mutex::new(None);

/// `GET /metrics`.
///
/// # Errors
///
/// 500 when `/proc` or `/` cannot be read.
pub async fn get_metrics() -> Result<Json<Metrics>, HttpError> {
    let previous = *LAST_CPU
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let previous = match previous {
        Some(previous) => previous,
        None => {
            let first = read_cpu()?.0;
            tokio::time::sleep(Duration::from_millis(100)).await;
            first
        }
    };
    let (now, cpu_count) = read_cpu()?;
    *LAST_CPU
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|error| HttpError::internal(format!("cannot read /proc/meminfo: {error}")))?;
    let (mem_total, mem_used) = memory(&meminfo);
    let disk = rustix::fs::statvfs("/")
        .map_err(|error| HttpError::internal(format!("cannot statvfs /: {error}")))?;
    let disk_total = disk.f_blocks.saturating_mul(disk.f_frsize);
    let disk_free = disk.f_bavail.saturating_mul(disk.f_frsize);
    Ok(Json(Metrics {
        ts: unix_now(),
        cpu_count,
        cpu_used_pct: busy_percent(previous, now),
        mem_total_mib: mem_total / (1024 * 1024),
        mem_used_mib: mem_used / (1024 * 1024),
        mem_total,
        mem_used,
        disk_used: disk_total.saturating_sub(disk_free),
        disk_total,
    }))
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
