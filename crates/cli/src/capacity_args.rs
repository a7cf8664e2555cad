//! `firkin serve`'s admission settings: how many sandboxes, how far their caps overcommit the
//! host, and the memory pressure at which creates stop. Each left unset takes the default
//! that [`SingleNodeSchedulerConfig::from_host`] derives from this machine.

use clap::Args;
use firkin_single_node::SingleNodeSchedulerConfig;

const MIB: u64 = 1 << 20;

/// The flags (each also a `FIRKIN_*` variable and a `firkin.toml` key of the same name).
#[derive(Debug, Default, Args)]
pub(crate) struct CapacityArgs {
    /// Most sandboxes at once, running and paused together. Default: 2048.
    #[arg(long, env = "FIRKIN_MAX_SANDBOXES", value_parser = crate::serve::at_least_one)]
    pub(crate) max_sandboxes: Option<usize>,
    /// Sandbox vCPUs admitted per host CPU. A vCPU is a CPU-time cap that idle sandboxes do
    /// not use; overcommit only slows busy sandboxes down. Default: 1024.
    #[arg(long, env = "FIRKIN_CPU_OVERCOMMIT", value_parser = ratio)]
    pub(crate) cpu_overcommit: Option<f64>,
    /// Bytes of sandbox memory limits admitted per byte of host memory (less a 10% reserve).
    /// A limit is a cap, not a reservation; the pressure floor protects the host. Default: 32.
    #[arg(long, env = "FIRKIN_MEMORY_OVERCOMMIT", value_parser = ratio)]
    pub(crate) memory_overcommit: Option<f64>,
    /// Refuse creates while the host's MemAvailable is below this, MiB. Default: 5% of the
    /// host's memory, at least 256.
    #[arg(long, env = "FIRKIN_MIN_AVAILABLE_MEMORY_MB")]
    pub(crate) min_available_memory_mb: Option<u64>,
    /// Refuse creates while PSI shows every task stalled on memory more than this percent of
    /// the last 10 s. Default: 10.
    #[arg(long, env = "FIRKIN_MAX_MEMORY_PRESSURE", value_parser = percent)]
    pub(crate) max_memory_pressure: Option<f64>,
}

/// An overcommit ratio flag ([`SingleNodeSchedulerConfig::check_ratio`]).
fn ratio(text: &str) -> Result<f64, String> {
    SingleNodeSchedulerConfig::check_ratio(number(text)?)
}

/// A memory stall ceiling flag ([`SingleNodeSchedulerConfig::check_percent`]).
fn percent(text: &str) -> Result<f64, String> {
    SingleNodeSchedulerConfig::check_percent(number(text)?)
}

fn number(text: &str) -> Result<f64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

impl CapacityArgs {
    /// Take from the settings file what neither a flag nor its variable gave.
    pub(crate) fn apply_file(
        &mut self,
        file: &crate::config_file::FileConfig,
        matches: &clap::ArgMatches,
    ) {
        let unset = |id| crate::config_file::unset(matches, id);
        if unset("max_sandboxes") {
            self.max_sandboxes = file.max_sandboxes.or(self.max_sandboxes);
        }
        if unset("cpu_overcommit") {
            self.cpu_overcommit = file.cpu_overcommit.or(self.cpu_overcommit);
        }
        if unset("memory_overcommit") {
            self.memory_overcommit = file.memory_overcommit.or(self.memory_overcommit);
        }
        if unset("min_available_memory_mb") {
            self.min_available_memory_mb = file
                .min_available_memory_mb
                .or(self.min_available_memory_mb);
        }
        if unset("max_memory_pressure") {
            self.max_memory_pressure = file.max_memory_pressure.or(self.max_memory_pressure);
        }
    }

    /// This host's defaults with the settings given.
    pub(crate) fn scheduler(&self) -> SingleNodeSchedulerConfig {
        let mut config = SingleNodeSchedulerConfig::from_host();
        if let Some(max) = self.max_sandboxes {
            config.max_sandboxes = max;
        }
        if let Some(ratio) = self.cpu_overcommit {
            config.cpu_overcommit = ratio;
        }
        if let Some(ratio) = self.memory_overcommit {
            config.memory_overcommit = ratio;
        }
        if let Some(mib) = self.min_available_memory_mb {
            config.min_available_memory_bytes = mib.saturating_mul(MIB);
        }
        if let Some(percent) = self.max_memory_pressure {
            config.max_memory_full_pressure = percent;
        }
        config
    }
}

/// One line for the daemon's banner: what it will admit.
pub(crate) fn describe(config: &SingleNodeSchedulerConfig) -> String {
    let capacity = config.capacity();
    format!(
        "admits up to {} sandboxes with {} vCPUs ({} CPUs × {}) and {} GiB ({} GiB × {}) of \
         limits; refuses creates below {} MiB available memory or above {}% memory stall",
        config.max_sandboxes,
        capacity.vcpus,
        config.host.vcpus,
        config.cpu_overcommit,
        capacity.memory_bytes >> 30,
        config.host.memory_bytes >> 30,
        config.memory_overcommit,
        config.min_available_memory_bytes / MIB,
        config.max_memory_full_pressure
    )
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: CapacityArgs,
    }

    fn parse(argv: &[&str]) -> Result<(CapacityArgs, clap::ArgMatches), clap::Error> {
        let matches = Serve::command().try_get_matches_from(argv)?;
        Ok((Serve::from_arg_matches(&matches)?.args, matches))
    }

    #[test]
    fn defaults_come_from_the_host_and_flags_win_over_the_file() {
        let (args, _) = parse(&["serve"]).unwrap();
        assert_eq!(args.scheduler(), SingleNodeSchedulerConfig::from_host());

        let file = crate::config_file::FileConfig {
            max_sandboxes: Some(5000),
            memory_overcommit: Some(8.0),
            min_available_memory_mb: Some(2048),
            ..Default::default()
        };
        let (mut args, matches) = parse(&["serve", "--memory-overcommit", "2.5"]).unwrap();
        args.apply_file(&file, &matches);
        let config = args.scheduler();
        assert_eq!(config.max_sandboxes, 5000);
        assert!((config.memory_overcommit - 2.5).abs() < f64::EPSILON);
        assert_eq!(config.min_available_memory_bytes, 2048 * MIB);
        assert!(describe(&config).contains("up to 5000 sandboxes"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for argv in [
            ["serve", "--max-sandboxes", "0"],
            ["serve", "--cpu-overcommit", "0"],
            ["serve", "--memory-overcommit", "NaN"],
            ["serve", "--memory-overcommit", "lots"],
            ["serve", "--max-memory-pressure", "150"],
        ] {
            let error = parse(&argv).unwrap_err().to_string();
            assert!(error.contains(argv[1]), "{error}");
        }
    }
}
