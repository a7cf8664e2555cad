//! `firkin template ...`: bring images in as templates, list, remove and prune them, in the
//! state directory's image store (`<state>/images`), which the daemon creates sandboxes
//! from; `build` has a running daemon build a Dockerfile. `base` is built in and not listed
//! here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use clap::Subcommand;
use firkin_image::catalog::ResolvedTemplate;
use firkin_image::{Credentials, IdShift, PullOptions, Templates, UnpackOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum TemplateCommand {
    /// Pull an image from a registry as a template (`python:3.12` is Docker Hub's).
    Pull {
        /// The image reference.
        reference: String,
        /// The template's name[:tag] (default: the image's own name and tag).
        #[arg(long)]
        name: Option<String>,
        /// More tags for it.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A registry (host:port) to speak plain HTTP to, e.g. one on loopback.
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// The registry user; the password (or token) is read from FIRKIN_REGISTRY_PASSWORD.
        #[arg(long)]
        username: Option<String>,
    },
    /// Import an image from an OCI image layout directory or a `docker save` archive.
    Import {
        /// The layout directory or archive.
        path: PathBuf,
        /// The template's name[:tag].
        #[arg(long)]
        name: String,
        /// Which image of it (a layout's ref name, an archive's tag; default: its only one).
        #[arg(long)]
        image: Option<String>,
        /// More tags for it.
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Build a Dockerfile (the subset the SDK's `from_dockerfile` reads) with a running
    /// daemon, showing its log.
    Build {
        /// The Dockerfile.
        #[arg(short = 'f', long = "file", default_value = "Dockerfile")]
        dockerfile: PathBuf,
        /// The build context (COPY sources are relative to it).
        #[arg(default_value = ".")]
        context: PathBuf,
        /// The template's name[:tag].
        #[arg(long)]
        name: String,
        /// More tags for it.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// How to reach the daemon.
        #[command(flatten)]
        client: crate::sandbox_cmd::ClientArgs,
    },
    /// Point tags at the build `target` (`name:tag` or `name:<build id>`) names, or with
    /// `--remove` take them off the template `target`.
    Tag {
        /// The build (`name[:tag]`), or with `--remove` the template.
        target: String,
        /// The tags.
        #[arg(required = true)]
        tags: Vec<String>,
        /// Remove the tags instead.
        #[arg(long)]
        remove: bool,
    },
    /// List the templates.
    Ls,
    /// Remove a template (its builds and tags; `prune` then frees its layers).
    /// While a daemon runs on the state directory, the daemon removes it (refusing while a
    /// sandbox uses it).
    Rm {
        /// Its name or id.
        name: String,
        /// How to reach the daemon, when one runs.
        #[command(flatten)]
        client: crate::sandbox_cmd::ClientArgs,
    },
    /// Remove the layers no template uses.
    Prune,
}

/// The image store of the state directory `state_dir`, whose layers belong to sandboxes
/// whose root is the host id `id_shift`.
pub(crate) fn open_templates(state_dir: &Path, id_shift: u32) -> anyhow::Result<Arc<Templates>> {
    let dir = state_dir.join("images");
    let ids = IdShift {
        host_start: id_shift,
        count: 65_536,
    };
    let templates = Templates::open(&dir, UnpackOptions::new(ids))
        .with_context(|| format!("open the image store in {}", dir.display()))?;
    Ok(Arc::new(templates))
}

pub(crate) fn run(state_dir: &Path, command: TemplateCommand, json: bool) -> anyhow::Result<()> {
    // The Linux driver's default id range (the daemon has no setting for another yet).
    let open = || open_templates(state_dir, 100_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    match command {
        TemplateCommand::Pull {
            reference,
            name,
            tags,
            insecure_registries,
            username,
        } => {
            let credentials = match username {
                Some(username) => Credentials::Basic {
                    username,
                    password: std::env::var("FIRKIN_REGISTRY_PASSWORD")
                        .context("--username needs the password in FIRKIN_REGISTRY_PASSWORD")?,
                },
                None => Credentials::Anonymous,
            };
            let spinner = spinner(json, format!("pulling {reference}"));
            let options = PullOptions {
                credentials,
                insecure_registries,
                progress: Some(bytes_bar(&spinner, &reference)),
            };
            let templates = open()?;
            let made =
                runtime.block_on(templates.pull(&reference, name.as_deref(), &tags, &options));
            spinner.finish_and_clear();
            report(&made.with_context(|| format!("pull {reference}"))?, json)
        }
        TemplateCommand::Import {
            path,
            name,
            image,
            tags,
        } => {
            let templates = open()?;
            let spinner = spinner(json, format!("importing {}", path.display()));
            let made = runtime.block_on(templates.import(&path, image.as_deref(), &name, &tags));
            spinner.finish_and_clear();
            report(
                &made.with_context(|| format!("import {}", path.display()))?,
                json,
            )
        }
        TemplateCommand::Ls => list(&*open()?, json),
        TemplateCommand::Tag {
            target,
            tags,
            remove,
        } => {
            let templates = open()?;
            if remove {
                templates.catalog.remove_tags(&target, &tags)?;
                if json {
                    println!("{}", serde_json::json!({ "removed": tags }));
                } else {
                    println!("removed from {target}: {}", tags.join(", "));
                }
            } else {
                let (tags, build) = templates.catalog.assign_tags(&target, &tags)?;
                if json {
                    println!("{}", serde_json::json!({ "tags": tags, "buildID": build }));
                } else {
                    println!("{} now name build {build}", tags.join(", "));
                }
            }
            Ok(())
        }
        TemplateCommand::Build {
            dockerfile,
            context,
            name,
            tags,
            client,
        } => {
            let client = crate::sandbox_cmd::Client::new(client, state_dir)?;
            crate::template_build::build(&client, &dockerfile, &context, &name, &tags, json)
        }
        TemplateCommand::Rm { name, client } => {
            let templates = open()?;
            // A running daemon holds the sandboxes' state: it checks and removes.
            let Ok(active) = firkin_single_node::DurableStateStore::read_active(state_dir) else {
                let client = crate::sandbox_cmd::Client::new(client, state_dir)?;
                client.call("DELETE", &format!("/templates/{name}"), None)?;
                if json {
                    println!("{}", serde_json::json!({ "name": name }));
                } else {
                    println!("removed template {name}; `firkin template prune` frees its layers");
                }
                return Ok(());
            };
            refuse_if_in_use(&active, &templates, &name)?;
            let id = templates.catalog.delete(&name)?;
            if json {
                println!("{}", serde_json::json!({ "templateID": id }));
            } else {
                println!(
                    "removed template {name} ({id}); `firkin template prune` frees its layers"
                );
            }
            Ok(())
        }
        TemplateCommand::Prune => {
            let removed = open()?.prune()?;
            if json {
                let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
                println!("{}", serde_json::json!({ "removedLayers": removed }));
            } else {
                println!("removed {} unused layers", removed.len());
            }
            Ok(())
        }
    }
}

/// Refuses to remove a template that a sandbox of the state directory's daemon (its
/// `active` records) still runs from, running or paused: a prune would then take its layers
/// from under it.
fn refuse_if_in_use(
    active: &[firkin_single_node::ActiveSessionRecord],
    templates: &Templates,
    name: &str,
) -> anyhow::Result<()> {
    let Some(template_id) = templates.catalog.find(name)? else {
        return Ok(());
    };
    if let Some(user) = active
        .iter()
        .find(|record| record.template_id == template_id)
    {
        anyhow::bail!(
            "template {name} is in use by sandbox {} ({}); kill its sandboxes first",
            user.sandbox_id,
            user.state
        );
    }
    Ok(())
}

/// Turns `bar` into a byte count of the pull of `reference` once its plan is known.
fn bytes_bar(bar: &indicatif::ProgressBar, reference: &str) -> firkin_image::ProgressFn {
    let (bar, reference) = (bar.clone(), reference.to_owned());
    firkin_image::ProgressFn(Arc::new(move |event| match event {
        firkin_image::PullProgress::Planned { layers, bytes } => {
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_length(bytes);
            bar.set_message(format!("pulling {reference}: {layers} layers to fetch"));
        }
        firkin_image::PullProgress::Downloaded(bytes) => bar.inc(bytes),
        firkin_image::PullProgress::Stored => {}
    }))
}

/// A spinner on stderr while a pull or an import runs (none with `--json`, or off a terminal:
/// indicatif draws nothing there).
fn spinner(json: bool, message: String) -> indicatif::ProgressBar {
    if json {
        return indicatif::ProgressBar::hidden();
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_message(message);
    spinner.enable_steady_tick(Duration::from_millis(100));
    spinner
}

fn report(made: &ResolvedTemplate, json: bool) -> anyhow::Result<()> {
    let layers: Vec<String> = made.image.layers.iter().map(ToString::to_string).collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "templateID": made.template_id, "name": made.name, "buildID": made.build_id,
                "layers": layers, "env": made.image.config.env, "workdir": made.image.config.working_dir,
                "user": made.image.config.user, "cmd": made.image.config.cmd,
            })
        );
    } else {
        println!(
            "template {} ({}), build {}: {} layers",
            made.name,
            made.template_id,
            made.build_id,
            layers.len()
        );
    }
    Ok(())
}

fn list(templates: &Templates, json: bool) -> anyhow::Result<()> {
    let all = templates.catalog.list()?;
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|t| {
                serde_json::json!({
                    "templateID": t.template_id, "name": t.name, "tags": t.tags,
                    "buildID": t.latest_build.as_ref().map(|b| &b.0),
                    "buildStatus": t.latest_build.as_ref().map(|b| b.1.as_str()),
                    "createdAt": t.created_at,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!("{:<24} {:<22} {:<10} tags", "name", "id", "build");
    for t in &all {
        let status = t.latest_build.as_ref().map_or("-", |b| b.1.as_str());
        println!(
            "{:<24} {:<22} {:<10} {}",
            t.name,
            t.template_id,
            status,
            t.tags.join(" ")
        );
    }
    Ok(())
}
