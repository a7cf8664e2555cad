//! Where `firkin serve` gets its API key, and what its banner may say about it.
//!
//! The key is never taken from the command line: a command line is readable by every user
//! on the host (`ps`). It comes, first match wins, from `FIRKIN_API_KEY`, from the file
//! named by `--api-key-file` (or `FIRKIN_API_KEY_FILE`, or `api-key-file` in firkin.toml),
//! from `api-key` in firkin.toml, or else from `<state>/api-key`, generated (mode 0600) on
//! first use. The banner prints the key itself only when it was just generated; otherwise
//! it says where to read it. A file that holds a key (a key file, or firkin.toml with
//! `api-key`) must not be readable by other users: it is refused otherwise, as ssh refuses
//! an open private key.

use std::fmt;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where the key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// The `FIRKIN_API_KEY` environment variable.
    Environment,
    /// `api-key` in the settings file.
    ConfigFile,
    /// A file the operator named (`--api-key-file`).
    KeyFile(PathBuf),
    /// `<state>/api-key`, there from an earlier start.
    Stored(PathBuf),
    /// `<state>/api-key`, made by this start.
    Generated(PathBuf),
}

/// The daemon's API key; `Debug` does not show it.
pub(crate) struct ApiKey {
    /// The key.
    pub(crate) key: String,
    /// Where it came from.
    pub(crate) source: KeySource,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// What the daemon prints on stdout for `E2B_API_KEY`: the key only when this start
    /// generated it (the operator has no other way to learn it yet), else a line that reads
    /// it back (a file) or names where it was set.
    pub(crate) fn banner_line(&self) -> String {
        match &self.source {
            KeySource::Generated(_) => format!("export E2B_API_KEY={}", self.key),
            KeySource::Stored(path) | KeySource::KeyFile(path) => {
                format!("export E2B_API_KEY=\"$(sudo cat '{}')\"", path.display())
            }
            KeySource::Environment => {
                "# E2B_API_KEY: the key firkin serve was given in FIRKIN_API_KEY".to_owned()
            }
            KeySource::ConfigFile => {
                "# E2B_API_KEY: the api-key in firkin serve's settings file".to_owned()
            }
        }
    }
}

/// The inputs, as the settings layers left them.
#[derive(Debug, Default)]
pub(crate) struct KeySettings {
    /// `FIRKIN_API_KEY`, if set.
    pub(crate) environment: Option<String>,
    /// `--api-key-file` (flag, variable or settings file).
    pub(crate) key_file: Option<PathBuf>,
    /// `api-key` from the settings file.
    pub(crate) config_file: Option<String>,
}

/// The key per the order in the [module docs](self).
///
/// # Errors
///
/// An unreadable or empty key file; a state directory where `api-key` cannot be made.
pub(crate) fn resolve(settings: KeySettings, state_dir: &Path) -> anyhow::Result<ApiKey> {
    let given = |key: &str| Some(key.trim().to_owned()).filter(|key| !key.is_empty());
    if let Some(key) = settings.environment.as_deref().and_then(given) {
        return Ok(ApiKey {
            key,
            source: KeySource::Environment,
        });
    }
    if let Some(path) = settings.key_file {
        return Ok(ApiKey {
            key: read_key_file(&path)?,
            source: KeySource::KeyFile(path),
        });
    }
    if let Some(key) = settings.config_file.as_deref().and_then(given) {
        return Ok(ApiKey {
            key,
            source: KeySource::ConfigFile,
        });
    }
    stored(state_dir)
}

/// The key in the file at `path`, which no other user may read.
///
/// # Errors
///
/// The file cannot be read, is readable by others (see [`refuse_if_readable_by_others`]), or
/// holds only white space.
pub(crate) fn read_key_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the API key file {}", path.display()))?;
    refuse_if_readable_by_others(path, "the API key file")?;
    match text.trim() {
        "" => bail!("the API key file {} is empty", path.display()),
        key => Ok(key.to_owned()),
    }
}

/// Refuses `path` (`what`, for the message) when its group or other users may read it.
///
/// # Errors
///
/// The file cannot be inspected, or its mode lets others read it.
pub(crate) fn refuse_if_readable_by_others(path: &Path, what: &str) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("inspect {what} {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o044 != 0 {
        bail!(
            "{what} {} holds the API key but other users may read it (mode {:o}): run \
             `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// The key kept in `<state>/api-key` (mode 0600 from its creation), made on first use.
fn stored(state_dir: &Path) -> anyhow::Result<ApiKey> {
    let path = state_dir.join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => {
            // A file from an older firkin may be more open than it should be.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 0600 {}", path.display()))?;
            return Ok(ApiKey {
                key: key.trim().to_owned(),
                source: KeySource::Stored(path),
            });
        }
        // An empty file (a crash between create and write): made again below.
        Ok(_) => std::fs::remove_file(&path)
            .with_context(|| format!("remove the empty {}", path.display()))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    }
    let mut bytes = [0_u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random API key: {e}"))?;
    let key: String = format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())
        .with_context(|| format!("write {}", path.display()))?;
    Ok(ApiKey {
        key,
        source: KeySource::Generated(path),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn the_key_is_generated_once_0600_and_printed_only_then() {
        let state = tempfile::tempdir().unwrap();
        let first = resolve(KeySettings::default(), state.path()).unwrap();
        let path = state.path().join("api-key");
        assert_eq!(first.source, KeySource::Generated(path.clone()));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            first.banner_line(),
            format!("export E2B_API_KEY={}", first.key)
        );

        let second = resolve(KeySettings::default(), state.path()).unwrap();
        assert_eq!(second.key, first.key);
        assert_eq!(second.source, KeySource::Stored(path.clone()));
        let line = second.banner_line();
        assert!(!line.contains(&first.key), "{line}");
        assert_eq!(
            line,
            format!("export E2B_API_KEY=\"$(sudo cat '{}')\"", path.display())
        );
        assert!(!format!("{second:?}").contains(&first.key));
    }

    #[test]
    fn the_environment_wins_then_the_key_file_then_the_settings_file() {
        let state = tempfile::tempdir().unwrap();
        let key_file = state.path().join("key");
        write_private(&key_file, "from-the-key-file\n");
        let all = || KeySettings {
            environment: Some("from-the-environment".into()),
            key_file: Some(key_file.clone()),
            config_file: Some("from-the-settings-file".into()),
        };
        let key = resolve(all(), state.path()).unwrap();
        assert_eq!(
            (key.key.as_str(), &key.source),
            ("from-the-environment", &KeySource::Environment)
        );
        assert!(!key.banner_line().contains("from-the-environment"));

        let key = resolve(
            KeySettings {
                environment: Some(String::new()),
                ..all()
            },
            state.path(),
        )
        .unwrap();
        assert_eq!(key.key, "from-the-key-file");
        assert!(!key.banner_line().contains("from-the-key-file"));

        let key = resolve(
            KeySettings {
                environment: None,
                key_file: None,
                ..all()
            },
            state.path(),
        )
        .unwrap();
        assert_eq!(key.key, "from-the-settings-file");
        assert!(!key.banner_line().contains("from-the-settings-file"));
        assert!(!state.path().join("api-key").exists(), "nothing generated");
    }

    #[test]
    fn a_missing_or_empty_key_file_is_an_error_naming_it() {
        let state = tempfile::tempdir().unwrap();
        let empty = state.path().join("empty");
        write_private(&empty, "\n");
        for path in [empty, state.path().join("missing")] {
            let error = resolve(
                KeySettings {
                    key_file: Some(path.clone()),
                    ..KeySettings::default()
                },
                state.path(),
            )
            .unwrap_err();
            assert!(
                format!("{error:#}").contains(&path.display().to_string()),
                "{error:#}"
            );
        }
        assert!(!state.path().join("api-key").exists());
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let open = state.path().join("key");
        write_private(&open, "the-key\n");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = read_key_file(&open).unwrap_err();
            let message = format!("{error:#}");
            assert!(
                message.contains("other users may read it") && message.contains("chmod 600"),
                "{message}"
            );
            assert!(!message.contains("the-key\n"), "{message}");
        }
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_key_file(&open).unwrap(), "the-key");
    }

    fn write_private(path: &Path, text: &str) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}
