//! What the SDK asks for (`POST /v2/templates/{id}/builds/{bid}`, `TemplateBuildStartV2`)
//! and the steps it names, checked before anything runs.

use serde::Deserialize;

use crate::BuildError;

/// The build request's body as the SDK sends it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildStart {
    /// An image reference to start from.
    pub from_image: Option<String>,
    /// A template (name or id) to start from.
    pub from_template: Option<String>,
    /// Registry credentials for `from_image`.
    pub from_image_registry: Option<RegistryAuth>,
    /// Ignore the step cache for the whole build.
    #[serde(default)]
    pub force: bool,
    /// The steps, in order.
    #[serde(default)]
    pub steps: Vec<WireStep>,
    /// Started in every sandbox of the template.
    pub start_cmd: Option<String>,
    /// Run until it succeeds before a sandbox is handed out.
    pub ready_cmd: Option<String>,
}

/// `fromImageRegistry`: only user and password are understood here.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistryAuth {
    /// `registry`, `aws` or `gcp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user (`registry`).
    pub username: Option<String>,
    /// The password or token (`registry`).
    pub password: Option<String>,
}

/// One step as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireStep {
    /// `RUN`, `COPY` (`ADD`), `ENV` (`ARG`), `WORKDIR` or `USER`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// A `COPY`'s uploaded files.
    pub files_hash: Option<String>,
    /// Run it even if the cache has it.
    #[serde(default)]
    pub force: bool,
}

/// A checked step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `/bin/bash -l -c command`, as `user` (the build's current user when `None`).
    Run {
        /// The command line.
        command: String,
        /// Who runs it.
        user: Option<String>,
    },
    /// Files of the upload `files_hash` from `source` (a path or glob in the context) to
    /// `dest`, owned by `owner`, with `mode`.
    Copy {
        /// The source as given (`folder/*`, `app`, `requirements.txt`).
        source: String,
        /// Where it goes (relative: to the working directory, else the user's home).
        dest: String,
        /// `user` or `user:group` (the build's current user when `None`).
        owner: Option<String>,
        /// Octal permissions for everything copied.
        mode: Option<u32>,
        /// The upload.
        files_hash: String,
    },
    /// Build environment variables.
    Env(Vec<(String, String)>),
    /// The working directory of later steps and of the template's sandboxes.
    Workdir(String),
    /// The user of later steps and of the template's sandboxes.
    User(String),
}

impl Step {
    /// Checks a step as sent.
    ///
    /// # Errors
    ///
    /// [`BuildError::BadRequest`] naming the step (1-based) and what is wrong.
    pub fn parse(index: usize, wire: &WireStep) -> Result<Self, BuildError> {
        let bad = |why: &str| {
            BuildError::BadRequest(format!("step {} ({}): {why}", index + 1, wire.kind))
        };
        let arg = |i: usize| wire.args.get(i).map(String::as_str).unwrap_or_default();
        let optional = |i: usize| Some(arg(i).to_owned()).filter(|s| !s.is_empty());
        match wire.kind.to_ascii_uppercase().as_str() {
            "RUN" if !arg(0).trim().is_empty() => Ok(Self::Run {
                command: arg(0).to_owned(),
                user: optional(1),
            }),
            "RUN" => Err(bad("needs a command")),
            "COPY" | "ADD" => {
                let files_hash = wire
                    .files_hash
                    .clone()
                    .filter(|h| is_files_hash(h))
                    .ok_or_else(|| bad("needs the filesHash of its upload (64 hex digits)"))?;
                if arg(0).is_empty() || arg(1).is_empty() {
                    return Err(bad("needs a source and a destination"));
                }
                let mode = match optional(3) {
                    Some(mode) => Some(
                        u32::from_str_radix(&mode, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(|| bad("the mode is not octal permissions"))?,
                    ),
                    None => None,
                };
                Ok(Self::Copy {
                    source: arg(0).to_owned(),
                    dest: arg(1).to_owned(),
                    owner: optional(2),
                    mode,
                    files_hash,
                })
            }
            "ENV" | "ARG" => {
                if wire.args.is_empty() || !wire.args.len().is_multiple_of(2) {
                    return Err(bad("needs name and value pairs"));
                }
                let pairs = wire
                    .args
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect::<Vec<_>>();
                if pairs.iter().any(|(name, _)| !is_env_name(name)) {
                    return Err(bad("a variable name is not [A-Za-z_][A-Za-z0-9_]*"));
                }
                Ok(Self::Env(pairs))
            }
            "WORKDIR" if !arg(0).is_empty() => Ok(Self::Workdir(arg(0).to_owned())),
            "USER" if is_user_name(arg(0)) => Ok(Self::User(arg(0).to_owned())),
            "WORKDIR" | "USER" => Err(bad("needs one valid argument")),
            other => Err(bad(&format!("unknown step type {other:?}"))),
        }
    }

    /// How the step shows in the build log (`RUN echo hi`).
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Run { command, user } => match user {
                Some(user) => format!("RUN {command} (as {user})"),
                None => format!("RUN {command}"),
            },
            Self::Copy { source, dest, .. } => format!("COPY {source} {dest}"),
            Self::Env(pairs) => {
                let names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
                format!("ENV {}", names.join(" "))
            }
            Self::Workdir(dir) => format!("WORKDIR {dir}"),
            Self::User(user) => format!("USER {user}"),
        }
    }
}

/// A files hash as the SDK computes it: 64 lowercase hex digits.
#[must_use]
pub fn is_files_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A user name `useradd` would take (and nothing a shell would read as more).
fn is_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(kind: &str, args: &[&str]) -> WireStep {
        WireStep {
            kind: kind.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            files_hash: Some("a".repeat(64)),
            force: false,
        }
    }

    #[test]
    fn steps_as_the_sdk_sends_them_parse() {
        assert_eq!(
            Step::parse(0, &wire("RUN", &["whoami", "root"])).unwrap(),
            Step::Run {
                command: "whoami".into(),
                user: Some("root".into())
            }
        );
        assert_eq!(
            Step::parse(
                0,
                &wire("COPY", &["folder/*", "/home/user/folder", "", "0644"])
            )
            .unwrap(),
            Step::Copy {
                source: "folder/*".into(),
                dest: "/home/user/folder".into(),
                owner: None,
                mode: Some(0o644),
                files_hash: "a".repeat(64),
            }
        );
        assert_eq!(
            Step::parse(0, &wire("ENV", &["A", "1", "B", "two"])).unwrap(),
            Step::Env(vec![("A".into(), "1".into()), ("B".into(), "two".into())])
        );
    }

    #[test]
    fn bad_steps_are_refused_with_their_number() {
        for (kind, args) in [
            ("RUN", &[""][..]),
            ("ENV", &["A"][..]),
            ("ENV", &["1A", "x"][..]),
            ("USER", &["a b"][..]),
            ("COPY", &["x", "y", "", "999"][..]),
            ("FROM", &["x"][..]),
        ] {
            let error = Step::parse(2, &wire(kind, args)).unwrap_err().to_string();
            assert!(error.contains("step 3"), "{error}");
        }
        let mut no_hash = wire("COPY", &["a", "b"]);
        no_hash.files_hash = Some("../x".into());
        assert!(Step::parse(0, &no_hash).is_err());
    }
}
