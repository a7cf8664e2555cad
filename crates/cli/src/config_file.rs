//! `firkin.toml`: the lowest layer of the daemon's settings. A key set here is used unless the
//! same setting comes from a `FIRKIN_*` environment variable or a flag (file < environment <
//! flag). Keys are the flags' names: `listen`, `state-dir`, `api-key-file`, `domain`, `envd-bin`,
//! `tls-listen`, `warm-pool`, `warm-pool-max`, `slot-range`, `max-connections`, `egress-allow-private` (a list
//! of CIDRs), `disk-size-mb`, `max-sandboxes`, `cpu-overcommit`, `memory-overcommit`,
//! `min-available-memory-mb`, `max-memory-pressure`; and `api-key`, the key itself (there is no such flag: see
//! [`crate::api_key`]). An unknown key is an error, so a typo never goes unnoticed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::ArgMatches;
use clap::parser::ValueSource;

/// What a `firkin.toml` may set.
#[derive(Debug, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FileConfig {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) api_key: Option<String>,
    pub(crate) api_key_file: Option<PathBuf>,
    pub(crate) domain: Option<String>,
    pub(crate) envd_bin: Option<PathBuf>,
    pub(crate) tls_listen: Option<SocketAddr>,
    pub(crate) warm_pool: Option<usize>,
    pub(crate) warm_pool_max: Option<usize>,
    pub(crate) warm_pool_per_template: Option<usize>,
    pub(crate) warm_templates: Option<usize>,
    #[serde(default, deserialize_with = "pool_sizes")]
    pub(crate) warm_pool_template: Option<Vec<(String, usize)>>,
    pub(crate) insecure_registry: Option<Vec<String>>,
    #[serde(default, deserialize_with = "slot_range")]
    pub(crate) slot_range: Option<firkin_linux::net::Ipv4Net>,
    #[serde(default, deserialize_with = "max_connections")]
    pub(crate) max_connections: Option<usize>,
    #[serde(default, deserialize_with = "private_ranges")]
    pub(crate) egress_allow_private: Option<Vec<firkin_linux::net::Ipv4Net>>,
    pub(crate) disk_size_mb: Option<u64>,
    #[serde(default, deserialize_with = "max_sandboxes")]
    pub(crate) max_sandboxes: Option<usize>,
    #[serde(default, deserialize_with = "ratio")]
    pub(crate) cpu_overcommit: Option<f64>,
    #[serde(default, deserialize_with = "ratio")]
    pub(crate) memory_overcommit: Option<f64>,
    pub(crate) min_available_memory_mb: Option<u64>,
    #[serde(default, deserialize_with = "percent")]
    pub(crate) max_memory_pressure: Option<f64>,
}

/// `max-sandboxes = 1000`, at least 1 as the flag.
fn max_sandboxes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    match <usize as serde::Deserialize>::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom("max-sandboxes must be at least 1")),
        n => Ok(Some(n)),
    }
}

/// `cpu-overcommit = 64` or `memory-overcommit = 1.5`, checked as the flags are.
fn ratio<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let value = <f64 as serde::Deserialize>::deserialize(deserializer)?;
    firkin_single_node::SingleNodeSchedulerConfig::check_ratio(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `max-memory-pressure = 20`, a percent.
fn percent<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<f64>, D::Error> {
    let value = <f64 as serde::Deserialize>::deserialize(deserializer)?;
    firkin_single_node::SingleNodeSchedulerConfig::check_percent(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `max-connections = 4096`, at least 1 as the flag.
fn max_connections<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<usize>, D::Error> {
    match <usize as serde::Deserialize>::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom(
            "max-connections must be at least 1",
        )),
        n => Ok(Some(n)),
    }
}

/// `egress-allow-private = ["192.168.1.0/24"]`, each checked as the flag's.
fn private_ranges<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<firkin_linux::net::Ipv4Net>>, D::Error> {
    let texts = <Vec<String> as serde::Deserialize>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| firkin_linux::net::egress::parse_opt_in(text))
        .collect::<Result<_, _>>()
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// `slot-range = "10.200.0.0/16"`, checked as the flag is.
/// `warm-pool-template = ["name=3"]`, each checked as the flag's.
fn pool_sizes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<(String, usize)>>, D::Error> {
    <Vec<String> as serde::Deserialize>::deserialize(deserializer)?
        .iter()
        .map(|text| crate::serve::parse_pool_size(text).map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

fn slot_range<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<firkin_linux::net::Ipv4Net>, D::Error> {
    let text = <String as serde::Deserialize>::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `/etc/firkin/firkin.toml` for root, else `$XDG_CONFIG_HOME/firkin/firkin.toml` (or
/// `~/.config/firkin/firkin.toml`).
pub(crate) fn default_path() -> PathBuf {
    if crate::is_root() {
        return PathBuf::from("/etc/firkin/firkin.toml");
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("."), PathBuf::from)
                .join(".config")
        });
    base.join("firkin/firkin.toml")
}

/// The file at `explicit` (which must exist), or the one at [`default_path`] if there is one.
pub(crate) fn load(explicit: Option<&Path>) -> anyhow::Result<FileConfig> {
    let path = explicit.map_or_else(default_path, Path::to_owned);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {
            return Ok(FileConfig::default());
        }
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    };
    let config = parse(&text).with_context(|| format!("in {}", path.display()))?;
    if config.api_key.is_some() {
        crate::api_key::refuse_if_readable_by_others(&path, "the settings file")?;
    }
    Ok(config)
}

fn parse(text: &str) -> anyhow::Result<FileConfig> {
    Ok(toml::from_str(text)?)
}

/// Whether the argument `id` was left to its default (neither a flag nor its variable set
/// it), so that the file's value applies.
pub(crate) fn unset(matches: &ArgMatches, id: &str) -> bool {
    !matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_takes_the_flags_names_and_refuses_unknown_keys() {
        let file = parse(
            "listen = \"0.0.0.0:49980\"\nstate-dir = \"/srv/firkin\"\ndomain = \"sbx.localhost\"\nwarm-pool = 0\nslot-range = \"10.77.0.0/20\"\ndisk-size-mb = 2048\n",
        )
        .unwrap();
        assert_eq!(file.warm_pool, Some(0));
        assert_eq!(file.disk_size_mb, Some(2048));
        assert_eq!(
            file.slot_range.map(|r| r.to_string()).as_deref(),
            Some("10.77.0.0/20")
        );
        assert_eq!(file.egress_allow_private, None);
        let opted = parse("egress-allow-private = [\"192.168.1.0/24\", \"10.0.0.0/8\"]\n").unwrap();
        let ranges: Vec<String> = opted
            .egress_allow_private
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ranges, ["192.168.1.0/24", "10.0.0.0/8"]);
        for bad in ["8.8.8.0/24", "10.0.0.1/8", "169.254.0.0/16"] {
            let error = parse(&format!("egress-allow-private = [\"{bad}\"]\n")).unwrap_err();
            assert!(format!("{error:#}").contains(bad), "{error:#}");
        }
        let bad = parse("slot-range = \"10.77.0.0/33\"\n").unwrap_err();
        assert!(format!("{bad:#}").contains("10.77.0.0/33"), "{bad:#}");
        assert_eq!(file.listen, Some("0.0.0.0:49980".parse().unwrap()));
        assert_eq!(file.state_dir, Some(PathBuf::from("/srv/firkin")));
        assert_eq!(file.domain.as_deref(), Some("sbx.localhost"));
        assert_eq!(file.api_key, None);
        let error = parse("listne = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(format!("{error:#}").contains("listne"), "{error:#}");
        assert!(parse("listen = \"not an address\"\n").is_err());
        assert!(load(Some(Path::new("/nonexistent/firkin.toml"))).is_err());
        assert_eq!(
            parse("max-connections = 64\n").unwrap().max_connections,
            Some(64)
        );
        let zero = parse("max-connections = 0\n").unwrap_err();
        assert!(format!("{zero:#}").contains("at least 1"), "{zero:#}");
    }

    #[test]
    fn a_settings_file_with_the_key_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firkin.toml");
        let mode = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));
        std::fs::write(&path, "warm-pool = 1\n").unwrap();
        mode(0o644).unwrap();
        assert_eq!(
            load(Some(&path)).unwrap().warm_pool,
            Some(1),
            "no key: may be open"
        );
        std::fs::write(&path, "api-key = \"k\"\n").unwrap();
        let error = load(Some(&path)).unwrap_err();
        assert!(format!("{error:#}").contains("chmod 600"), "{error:#}");
        mode(0o600).unwrap();
        assert_eq!(load(Some(&path)).unwrap().api_key.as_deref(), Some("k"));
    }
}
