//! Per-phase timings of sandbox creates: a histogram per phase (the backend's own steps and
//! the ones its driver reports), recorded on every successful create and exposed for the
//! daemon's metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the buckets, seconds: from 0.5 ms to 10 s.
pub const PHASE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// One phase's histogram: cumulative bucket counts for [`PHASE_BUCKETS`], count and sum.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseHistogram {
    /// Observations at or below each bound of [`PHASE_BUCKETS`] (cumulative).
    pub buckets: [u64; PHASE_BUCKETS.len()],
    /// Observations in all.
    pub count: u64,
    /// Their sum, seconds.
    pub sum_seconds: f64,
}

impl PhaseHistogram {
    fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bucket, bound) in self.buckets.iter_mut().zip(PHASE_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// The histograms by phase name.
#[derive(Debug, Default)]
pub struct PhaseTimings {
    phases: Mutex<BTreeMap<String, PhaseHistogram>>,
}

impl PhaseTimings {
    /// Record the phases of one create.
    pub fn record<'a>(&self, phases: impl IntoIterator<Item = (&'a str, Duration)>) {
        let mut histograms = self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, elapsed) in phases {
            histograms
                .entry(name.to_owned())
                .or_default()
                .observe(elapsed);
        }
    }

    /// A copy of every histogram, by phase name.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<String, PhaseHistogram> {
        self.phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_count_in_every_bucket_at_or_above_them() {
        let timings = PhaseTimings::default();
        timings.record([
            ("launch", Duration::from_micros(1500)),
            ("total", Duration::from_millis(8)),
        ]);
        timings.record([("launch", Duration::from_millis(30))]);
        let snapshot = timings.snapshot();
        let launch = &snapshot["launch"];
        assert_eq!(launch.count, 2);
        assert_eq!(launch.buckets[1], 0); // 1 ms
        assert_eq!(launch.buckets[2], 1); // 2 ms
        assert_eq!(launch.buckets[6], 2); // 50 ms
        assert!((launch.sum_seconds - 0.0315).abs() < 1e-9);
        assert_eq!(snapshot["total"].count, 1);
    }
}
