//! `firkin template build -f Dockerfile [context]`: the Dockerfile subset of the SDK's
//! `from_dockerfile`, built by a running daemon through the same routes the Template SDK
//! uses (request, uploads of the `COPY` sources, start, status with its log).

use std::io::Write as _;
use std::path::{Component, Path};
use std::time::Duration;

use anyhow::{Context, bail};
use firkin_build::{Dockerfile, Instruction};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::sandbox_cmd::Client;

/// Builds `dockerfile` with the context directory `context` as `name` (with `tags`).
pub(crate) fn build(
    client: &Client,
    dockerfile: &Path,
    context: &Path,
    name: &str,
    tags: &[String],
    json: bool,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(dockerfile)
        .with_context(|| format!("read {}", dockerfile.display()))?;
    let parsed = Dockerfile::parse(&text)?;
    for (keyword, line) in &parsed.skipped {
        eprintln!("firkin: Dockerfile line {line}: {keyword} has no meaning here; skipped");
    }
    let request = client.call(
        "POST",
        "/v3/templates",
        Some(json!({ "name": name, "tags": tags })),
    )?;
    let template_id = request["templateID"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let build_id = request["buildID"].as_str().unwrap_or_default().to_owned();
    let mut steps = Vec::new();
    for instruction in &parsed.steps {
        steps.push(match instruction {
            Instruction::Run(command) => json!({"type": "RUN", "args": [command], "force": false}),
            Instruction::Env(pairs) => {
                let args: Vec<&str> = pairs.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
                json!({"type": "ENV", "args": args, "force": false})
            }
            Instruction::Workdir(dir) => json!({"type": "WORKDIR", "args": [dir], "force": false}),
            Instruction::User(user) => json!({"type": "USER", "args": [user], "force": false}),
            Instruction::Copy {
                source,
                dest,
                owner,
                mode,
            } => {
                let hash = upload(client, &template_id, context, source, dest)?;
                json!({
                    "type": "COPY",
                    "args": [source, dest, owner.clone().unwrap_or_default(), mode.clone().unwrap_or_default()],
                    "filesHash": hash,
                    "force": false,
                })
            }
        });
    }
    let mut start = json!({ "fromImage": parsed.from_image, "force": false, "steps": steps });
    if let Some(command) = &parsed.start_cmd {
        start["startCmd"] = command.clone().into();
    }
    client.call(
        "POST",
        &format!("/v2/templates/{template_id}/builds/{build_id}"),
        Some(start),
    )?;
    follow(client, &template_id, &build_id, name, json)
}

/// Tars `source` (a file or directory under `context`, named relative to it, as the SDK
/// does), uploads it unless the daemon has it; its files hash.
fn upload(
    client: &Client,
    template_id: &str,
    context: &Path,
    source: &str,
    dest: &str,
) -> anyhow::Result<String> {
    if source.contains(['*', '?', '[']) {
        bail!(
            "COPY {source}: globs are not supported by `firkin template build` (name files or directories)"
        );
    }
    let relative = Path::new(source.trim_start_matches("./"));
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("COPY {source}: the source must be inside the build context");
    }
    let path = context.join(relative);
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    tar.follow_symlinks(false);
    if path.is_dir() {
        tar.append_dir_all(relative, &path)
    } else {
        tar.append_path_with_name(&path, relative)
    }
    .with_context(|| format!("COPY {source}: read {}", path.display()))?;
    let archive = tar.into_inner()?.finish()?;
    let mut hash = Sha256::new();
    hash.update(format!("COPY {source} {dest}"));
    hash.update(&archive);
    let hash: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let link = client.call(
        "GET",
        &format!("/templates/{template_id}/files/{hash}"),
        None,
    )?;
    if link["present"] != Value::Bool(true) {
        let url = link["url"]
            .as_str()
            .context("the daemon gave no upload URL")?;
        ureq::put(url)
            .send_bytes(&archive)
            .with_context(|| format!("upload the files of COPY {source}"))?;
    }
    Ok(hash)
}

/// Prints the build's log as it comes (a spinner shows the step) until it ends.
fn follow(
    client: &Client,
    template_id: &str,
    build_id: &str,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    let spinner = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let spinner =
            indicatif::ProgressBar::new_spinner().with_message(format!("building {name}"));
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    };
    let mut offset = 0;
    loop {
        let status = client.call(
            "GET",
            &format!(
                "/templates/{template_id}/builds/{build_id}/status?logsOffset={offset}&limit=100"
            ),
            None,
        )?;
        let entries = status["logEntries"].as_array().cloned().unwrap_or_default();
        offset += entries.len();
        for entry in &entries {
            let message = entry["message"].as_str().unwrap_or_default();
            if json {
                spinner.suspend(|| println!("{entry}"));
            } else {
                if message.starts_with("[builder") || message.starts_with("[base]") {
                    spinner.set_message(message.to_owned());
                }
                spinner.suspend(|| {
                    let _ = writeln!(std::io::stderr(), "{message}");
                });
            }
        }
        match status["status"].as_str() {
            Some("ready") if entries.is_empty() => {
                spinner.finish_and_clear();
                if json {
                    println!(
                        "{}",
                        json!({"templateID": template_id, "buildID": build_id, "name": name})
                    );
                } else {
                    println!("template {name} ({template_id}), build {build_id}: ready");
                }
                return Ok(());
            }
            Some("error") if entries.is_empty() => {
                spinner.finish_and_clear();
                bail!(
                    "the build of {name} failed: {}",
                    status["reason"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                );
            }
            _ if entries.is_empty() => std::thread::sleep(Duration::from_millis(200)),
            _ => {}
        }
    }
}
