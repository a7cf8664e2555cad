//! The Dockerfile subset E2B's `Template().from_dockerfile()` understands, read into a build:
//! one `FROM` (multi-stage builds are refused), `RUN`, `COPY`/`ADD`, `ENV`, `ARG` (with a
//! default), `WORKDIR`, `USER`, and `CMD`/`ENTRYPOINT` as the start command. As the SDK does,
//! the steps start with `USER root` and `WORKDIR /`, and end with `USER user` and
//! `WORKDIR /home/user` unless the Dockerfile set them. Instructions with no meaning here
//! (`EXPOSE`, `LABEL`, `VOLUME`, `HEALTHCHECK`, ...) are reported back and skipped.

use crate::BuildError;

/// A Dockerfile read into a build.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dockerfile {
    /// The `FROM` image.
    pub from_image: String,
    /// The steps, in order.
    pub steps: Vec<Instruction>,
    /// `CMD` / `ENTRYPOINT` as a shell command line.
    pub start_cmd: Option<String>,
    /// Instructions skipped (their keyword and line number).
    pub skipped: Vec<(String, usize)>,
}

/// One step of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    /// `RUN` (shell form, or the exec form joined into a command line).
    Run(String),
    /// `COPY`/`ADD` of context paths (one step per source, as the SDK sends them).
    Copy {
        /// A path or glob in the build context.
        source: String,
        /// Where it goes.
        dest: String,
        /// `--chown` (`user` or `user:group`).
        owner: Option<String>,
        /// `--chmod` (octal).
        mode: Option<String>,
    },
    /// `ENV` / `ARG` with a value.
    Env(Vec<(String, String)>),
    /// `WORKDIR`.
    Workdir(String),
    /// `USER`.
    User(String),
}

impl Dockerfile {
    /// Reads `text`.
    ///
    /// # Errors
    ///
    /// [`BuildError::BadRequest`] naming the line: no `FROM`, a second `FROM`, `COPY
    /// --from`, or an instruction without its arguments.
    pub fn parse(text: &str) -> Result<Self, BuildError> {
        let mut out = Self::default();
        let mut set_user = false;
        let mut set_workdir = false;
        for (line_no, line) in logical_lines(text) {
            let bad =
                |why: &str| BuildError::BadRequest(format!("Dockerfile line {line_no}: {why}"));
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            let rest = rest.trim();
            let keyword = keyword.to_ascii_uppercase();
            if keyword != "FROM" && out.from_image.is_empty() && keyword != "ARG" {
                return Err(bad("the first instruction must be FROM"));
            }
            if rest.is_empty() {
                return Err(bad(&format!("{keyword} needs arguments")));
            }
            match keyword.as_str() {
                "FROM" if out.from_image.is_empty() => {
                    let image = rest.split_whitespace().next().unwrap_or_default();
                    out.from_image = image.to_owned();
                    out.steps.push(Instruction::User("root".into()));
                    out.steps.push(Instruction::Workdir("/".into()));
                }
                "FROM" => return Err(bad("multi-stage builds (a second FROM) are not supported")),
                "RUN" => out.steps.push(Instruction::Run(command_line(rest))),
                "CMD" | "ENTRYPOINT" => out.start_cmd = Some(command_line(rest)),
                "COPY" | "ADD" => out.steps.extend(copies(rest).map_err(|why| bad(&why))?),
                "ENV" => out
                    .steps
                    .push(Instruction::Env(env_pairs(rest).map_err(|why| bad(&why))?)),
                "ARG" => {
                    if let Some((name, value)) = rest.split_once('=') {
                        out.steps.push(Instruction::Env(vec![(
                            name.trim().into(),
                            unquote(value.trim()),
                        )]));
                    }
                }
                "WORKDIR" => {
                    set_workdir = true;
                    out.steps.push(Instruction::Workdir(rest.into()));
                }
                "USER" => {
                    set_user = true;
                    out.steps.push(Instruction::User(rest.into()));
                }
                other => out.skipped.push((other.to_owned(), line_no)),
            }
        }
        if out.from_image.is_empty() {
            return Err(BuildError::BadRequest("the Dockerfile has no FROM".into()));
        }
        if !set_user {
            out.steps.push(Instruction::User("user".into()));
        }
        if !set_workdir {
            out.steps.push(Instruction::Workdir("/home/user".into()));
        }
        Ok(out)
    }
}

/// Lines with `\` continuations joined, comments and blank lines left out, with the number of
/// their first line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if current.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        let (start, mut joined) = current.take().unwrap_or((index + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            joined.push_str(body);
            joined.push(' ');
            current = Some((start, joined));
        } else if !trimmed.starts_with('#') {
            joined.push_str(trimmed);
            lines.push((start, joined));
        } else {
            current = Some((start, joined));
        }
    }
    if let Some(last) = current {
        lines.push(last);
    }
    lines
}

/// The shell form as it is; the exec form (`["a", "b c"]`) as a quoted command line.
fn command_line(rest: &str) -> String {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(words) => words
            .iter()
            .map(|word| {
                if !word.is_empty()
                    && word
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
                {
                    word.clone()
                } else {
                    crate::shell::quote(word)
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => rest.to_owned(),
    }
}

fn copies(rest: &str) -> Result<Vec<Instruction>, String> {
    let mut owner = None;
    let mut mode = None;
    let mut words: Vec<String> = Vec::new();
    let parts: Vec<String> = match serde_json::from_str::<Vec<String>>(rest) {
        Ok(words) => words,
        Err(_) => rest.split_whitespace().map(str::to_owned).collect(),
    };
    for word in parts {
        if let Some(value) = word.strip_prefix("--chown=") {
            owner = Some(value.to_owned());
        } else if let Some(value) = word.strip_prefix("--chmod=") {
            mode = Some(value.to_owned());
        } else if word.starts_with("--from=") {
            return Err("COPY --from (multi-stage builds) is not supported".into());
        } else if word.starts_with("--") {
            return Err(format!("COPY option {word} is not supported"));
        } else {
            words.push(word);
        }
    }
    let Some((dest, sources)) = words.split_last() else {
        return Err("COPY needs a source and a destination".into());
    };
    if sources.is_empty() {
        return Err("COPY needs a source and a destination".into());
    }
    Ok(sources
        .iter()
        .map(|source| Instruction::Copy {
            source: source.clone(),
            dest: dest.clone(),
            owner: owner.clone(),
            mode: mode.clone(),
        })
        .collect())
}

/// `K=V K2="v 2"` or the old `K V` form.
fn env_pairs(rest: &str) -> Result<Vec<(String, String)>, String> {
    if !rest
        .split_whitespace()
        .next()
        .is_some_and(|w| w.contains('='))
    {
        let (name, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return Ok(vec![(name.to_owned(), value.trim().to_owned())]);
    }
    let mut pairs = Vec::new();
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() {
            break;
        }
        if chars.next() != Some('=') {
            return Err(format!("ENV {name} has no value"));
        }
        let mut value = String::new();
        let mut quote = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => break,
                (_, '\\') => value.extend(chars.next()),
                (_, c) => value.push(c),
            }
        }
        pairs.push((name.trim().to_owned(), value));
    }
    Ok(pairs)
}

fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dockerfile_reads_as_the_sdk_reads_it() {
        let parsed = Dockerfile::parse(
            "# comment\nFROM node:24 AS base\nWORKDIR /app\nENV X=1 Y=\"two words\"\n\
             RUN npm i && \\\n    npm test\nCOPY --chown=user a.js b.js ./\nEXPOSE 3000\n\
             CMD [\"node\", \"x.js\"]\n",
        )
        .unwrap();
        assert_eq!(parsed.from_image, "node:24");
        assert_eq!(parsed.start_cmd.as_deref(), Some("node x.js"));
        assert_eq!(parsed.skipped, [("EXPOSE".to_owned(), 8)]);
        assert_eq!(
            parsed.steps,
            [
                Instruction::User("root".into()),
                Instruction::Workdir("/".into()),
                Instruction::Workdir("/app".into()),
                Instruction::Env(vec![
                    ("X".into(), "1".into()),
                    ("Y".into(), "two words".into())
                ]),
                Instruction::Run("npm i &&  npm test".into()),
                Instruction::Copy {
                    source: "a.js".into(),
                    dest: "./".into(),
                    owner: Some("user".into()),
                    mode: None
                },
                Instruction::Copy {
                    source: "b.js".into(),
                    dest: "./".into(),
                    owner: Some("user".into()),
                    mode: None
                },
                Instruction::User("user".into()),
            ]
        );
    }

    #[test]
    fn what_a_single_node_cannot_build_is_refused_with_its_line() {
        for (text, words) in [
            ("RUN x", "line 1: the first instruction must be FROM"),
            ("FROM a\nFROM b", "line 2: multi-stage"),
            ("FROM a\nCOPY --from=b x y", "line 2: COPY --from"),
            ("FROM a\nRUN", "line 2: RUN needs arguments"),
            ("", "no FROM"),
        ] {
            let error = Dockerfile::parse(text).unwrap_err().to_string();
            assert!(error.contains(words), "{text:?}: {error}");
        }
    }
}
