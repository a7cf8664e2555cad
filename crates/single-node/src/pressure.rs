//! Live memory pressure: what the host really has left, as opposed to what sandboxes may use.
//!
//! A sandbox's memory limit is a cap, and most sandboxes idle far below it, so admission
//! overcommits caps ([`crate::SingleNodeSchedulerConfig`]) and relies on this reading to stop
//! admitting when the host is really short: `MemAvailable` (what the kernel can hand out
//! without swapping) and, where the kernel has PSI, the share of time in which every
//! non-idle task stalled on memory (`/proc/pressure/memory`, `full avg10`). The source is a
//! trait so that tests can drive admission with readings of their own.

use std::fmt;
use std::path::PathBuf;

/// One reading of the host's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PressureReading {
    /// `MemTotal`, bytes.
    pub memory_total_bytes: u64,
    /// `MemAvailable`, bytes.
    pub memory_available_bytes: u64,
    /// PSI `full avg10` of memory: percent of the last 10 s in which all non-idle tasks
    /// stalled on memory. `None` on kernels without PSI.
    pub memory_full_avg10: Option<f64>,
}

/// Where admission reads the host's memory pressure from.
pub trait PressureSource: Send + Sync + fmt::Debug + 'static {
    /// The host's memory now.
    ///
    /// # Errors
    ///
    /// A description of why nothing could be read; admission then goes on without a
    /// reading (a host that hides `/proc/meminfo` is not refused everything).
    fn read(&self) -> Result<PressureReading, String>;
}

/// The real host: `/proc/meminfo` and `/proc/pressure/memory`.
#[derive(Clone, Debug)]
pub struct HostPressure {
    meminfo: PathBuf,
    psi: PathBuf,
}

impl HostPressure {
    /// Reads this host's `/proc`.
    #[must_use]
    pub fn new() -> Self {
        Self {
            meminfo: PathBuf::from("/proc/meminfo"),
            psi: PathBuf::from("/proc/pressure/memory"),
        }
    }
}

impl Default for HostPressure {
    fn default() -> Self {
        Self::new()
    }
}

impl PressureSource for HostPressure {
    fn read(&self) -> Result<PressureReading, String> {
        let meminfo = std::fs::read_to_string(&self.meminfo)
            .map_err(|error| format!("read {}: {error}", self.meminfo.display()))?;
        let (total, available) = parse_meminfo(&meminfo)
            .ok_or_else(|| format!("{} has no MemTotal/MemAvailable", self.meminfo.display()))?;
        // PSI is absent on kernels built without it or booted with psi=0: no reading then.
        let full_avg10 = std::fs::read_to_string(&self.psi)
            .ok()
            .and_then(|text| parse_psi_full_avg10(&text));
        Ok(PressureReading {
            memory_total_bytes: total,
            memory_available_bytes: available,
            memory_full_avg10: full_avg10,
        })
    }
}

/// A source that always reads the same, for tests and for hosts where pressure is managed
/// elsewhere. Its reading can be changed while it is shared.
#[derive(Debug, Default)]
pub struct FixedPressure {
    reading: std::sync::Mutex<PressureReading>,
}

impl FixedPressure {
    /// Always `reading`, until [`FixedPressure::set`].
    #[must_use]
    pub fn new(reading: PressureReading) -> Self {
        Self {
            reading: std::sync::Mutex::new(reading),
        }
    }

    /// Read `reading` from now on.
    pub fn set(&self, reading: PressureReading) {
        *self
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = reading;
    }
}

impl PressureSource for FixedPressure {
    fn read(&self) -> Result<PressureReading, String> {
        Ok(*self
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// `MemTotal` and `MemAvailable` of a `/proc/meminfo`, in bytes.
pub(crate) fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// `avg10` of the `full` line of a `/proc/pressure/*` file.
fn parse_psi_full_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|line| line.starts_with("full "))?;
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("avg10="))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_psi_are_parsed() {
        let meminfo =
            "MemTotal:       24568148 kB\nMemFree:        1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(meminfo),
            Some((24_568_148 * 1024, 20_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        let psi = "some avg10=1.50 avg60=0.00 avg300=0.00 total=21178\nfull avg10=12.25 avg60=0.00 avg300=0.00 total=12162\n";
        assert_eq!(parse_psi_full_avg10(psi), Some(12.25));
        assert_eq!(parse_psi_full_avg10("some avg10=1.0\n"), None);
    }

    #[test]
    fn this_host_can_be_read() {
        let reading = HostPressure::new().read().unwrap();
        assert!(reading.memory_total_bytes > 0);
        assert!(reading.memory_available_bytes <= reading.memory_total_bytes);
    }
}
