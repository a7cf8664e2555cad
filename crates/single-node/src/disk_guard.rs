//! The disk-floor guard in front of work that consumes disk (create, restore, snapshot).
//!
//! It measures free bytes *and* free inodes with `statvfs` (no `df` fork), keeps one sample per
//! path for a short TTL, and fails closed: if the measurement fails, the operation is refused.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::SingleNodeConfig;
use crate::error::{Error, Result};

/// Free space on a file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes available to unprivileged writers.
    pub available_bytes: u64,
    /// Inodes available to unprivileged writers.
    pub available_inodes: u64,
}

/// Something that can measure free space. Failures must be [`Error::DiskPressure`].
pub trait DiskProbe: Send + Sync + fmt::Debug {
    /// Free space of the file system holding `path`.
    ///
    /// # Errors
    ///
    /// [`Error::DiskPressure`] when it cannot be measured.
    fn measure(&self, path: &Path) -> Result<DiskSpace>;
}

/// Measures with `statvfs(2)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StatvfsDiskProbe;

impl DiskProbe for StatvfsDiskProbe {
    fn measure(&self, path: &Path) -> Result<DiskSpace> {
        let stat = rustix::fs::statvfs(path).map_err(|errno| {
            Error::DiskPressure(format!(
                "cannot measure free space at {}: {errno}",
                path.display()
            ))
        })?;
        Ok(DiskSpace {
            available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            available_inodes: stat.f_favail,
        })
    }
}

/// Reuses a probe's samples for `ttl`, per path.
#[derive(Debug)]
pub struct CachedDiskProbe {
    inner: Arc<dyn DiskProbe>,
    ttl: Duration,
    samples: Mutex<HashMap<PathBuf, (DiskSpace, Instant)>>,
}

impl CachedDiskProbe {
    /// Cache `inner`'s samples for `ttl`.
    #[must_use]
    pub fn new(inner: Arc<dyn DiskProbe>, ttl: Duration) -> Self {
        Self {
            inner,
            ttl,
            samples: Mutex::new(HashMap::new()),
        }
    }
}

impl DiskProbe for CachedDiskProbe {
    fn measure(&self, path: &Path) -> Result<DiskSpace> {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((space, at)) = samples.get(path)
            && at.elapsed() < self.ttl
        {
            return Ok(*space);
        }
        // Measure under the lock: concurrent checks of a stale sample then cost one statvfs.
        let space = self.inner.measure(path)?;
        samples.insert(path.to_owned(), (space, Instant::now()));
        Ok(space)
    }
}

/// Refuses disk-consuming operations below the configured floors.
#[derive(Clone, Debug)]
pub struct DiskPressureGuard {
    path: PathBuf,
    minimum_bytes: u64,
    minimum_inodes: u64,
    probe: Arc<dyn DiskProbe>,
}

impl DiskPressureGuard {
    /// A guard for `path` with the given floors, measuring through `probe`.
    #[must_use]
    pub fn with_probe(
        path: impl Into<PathBuf>,
        minimum_bytes: u64,
        minimum_inodes: u64,
        probe: Arc<dyn DiskProbe>,
    ) -> Self {
        Self {
            path: path.into(),
            minimum_bytes,
            minimum_inodes,
            probe,
        }
    }

    /// The guard the configuration asks for: `statvfs` at the state root, cached for the
    /// configured TTL.
    #[must_use]
    pub fn from_config(config: &SingleNodeConfig) -> Self {
        let probe = CachedDiskProbe::new(
            Arc::new(StatvfsDiskProbe),
            Duration::from_millis(config.disk_probe_ttl_ms),
        );
        Self::with_probe(
            config.root(),
            config.minimum_free_disk_bytes,
            config.minimum_free_inodes,
            Arc::new(probe),
        )
    }

    /// Allow `operation` only if both floors are met (equality passes).
    ///
    /// # Errors
    ///
    /// [`Error::DiskPressure`] naming the operation, the amounts and the path.
    pub fn check(&self, operation: &str) -> Result<()> {
        let space = self
            .probe
            .measure(&self.path)
            .map_err(|error| Error::DiskPressure(format!("{operation} refused: {error}")))?;
        if space.available_bytes < self.minimum_bytes {
            return Err(Error::DiskPressure(format!(
                "{operation} refused: available {} bytes is below minimum free disk {} bytes at {}; \
                 free space or lower minimum_free_disk_bytes",
                space.available_bytes,
                self.minimum_bytes,
                self.path.display()
            )));
        }
        if space.available_inodes < self.minimum_inodes {
            return Err(Error::DiskPressure(format!(
                "{operation} refused: available {} inodes is below minimum free inodes {} at {}",
                space.available_inodes,
                self.minimum_inodes,
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The guarded path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Fixed(DiskSpace, AtomicUsize);

    impl DiskProbe for Fixed {
        fn measure(&self, _: &Path) -> Result<DiskSpace> {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(self.0)
        }
    }

    fn fixed(bytes: u64, inodes: u64) -> Arc<Fixed> {
        Arc::new(Fixed(
            DiskSpace {
                available_bytes: bytes,
                available_inodes: inodes,
            },
            AtomicUsize::new(0),
        ))
    }

    #[test]
    fn floors_on_bytes_and_inodes_equality_passes() {
        let guard = DiskPressureGuard::with_probe("/s", 100, 10, fixed(100, 10));
        guard.check("sandbox create").unwrap();
        let error = DiskPressureGuard::with_probe("/s", 101, 10, fixed(100, 10))
            .check("sandbox create")
            .unwrap_err()
            .to_string();
        assert!(error.contains("sandbox create") && error.contains("minimum free disk 101"));
        let error = DiskPressureGuard::with_probe("/s", 1, 11, fixed(100, 10))
            .check("sandbox snapshot")
            .unwrap_err()
            .to_string();
        assert!(error.contains("inodes"), "{error}");
    }

    #[test]
    fn fails_closed_when_unmeasurable() {
        let guard =
            DiskPressureGuard::with_probe("/definitely/not/here", 0, 0, Arc::new(StatvfsDiskProbe));
        let error = guard.check("sandbox create").unwrap_err();
        assert!(matches!(error, Error::DiskPressure(_)));
        assert!(error.to_string().contains("/definitely/not/here"));
    }

    #[test]
    fn statvfs_measures_a_real_file_system() {
        let space = StatvfsDiskProbe.measure(Path::new("/")).unwrap();
        assert!(space.available_bytes > 0 && space.available_inodes > 0);
    }

    #[test]
    fn cache_reuses_samples_within_ttl_per_path() {
        let inner = fixed(1, 1);
        let cached = CachedDiskProbe::new(inner.clone(), Duration::from_secs(60));
        cached.measure(Path::new("/a")).unwrap();
        cached.measure(Path::new("/a")).unwrap();
        cached.measure(Path::new("/b")).unwrap();
        assert_eq!(inner.1.load(Ordering::SeqCst), 2);
        let uncached = CachedDiskProbe::new(inner.clone(), Duration::ZERO);
        uncached.measure(Path::new("/a")).unwrap();
        uncached.measure(Path::new("/a")).unwrap();
        assert_eq!(inner.1.load(Ordering::SeqCst), 4);
    }
}
