//! The builder: build requests, the build task and its steps in order, the build cache, and
//! what a stopped daemon left (see the crate docs). Steps that run something are in `run.rs`,
//! uploads in `uploads.rs`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use firkin_image::catalog::ImageRecord;
use firkin_image::{Digest, PullOptions, Templates};
use firkin_single_node::SingleNodeBackend;
use sha2::{Digest as _, Sha256};

use crate::BuildError;
use crate::held::{HeldLayers, Hold};
use crate::run::BUILD_METADATA;
use crate::spec::{BuildStart, Step};

/// Builds templates into the daemon's catalog and layer store, running steps through its
/// backend.
#[derive(Debug)]
pub struct Builder {
    pub(crate) templates: Arc<Templates>,
    pub(crate) held: Arc<HeldLayers>,
    pub(crate) backend: SingleNodeBackend,
    pub(crate) uploads: PathBuf,
    pull: PullOptions,
    /// The built-in `base` template's own layer, for builds `from_template("base")`.
    pub(crate) base_rootfs: Option<PathBuf>,
}

/// Where a step runs: its build and the image so far.
#[derive(Debug)]
pub(crate) struct StepAt<'a> {
    pub(crate) template_id: &'a str,
    pub(crate) build_id: &'a str,
    /// The step's number (1-based), as the log and `reason.step` name it.
    pub(crate) label: &'a str,
    pub(crate) record: &'a ImageRecord,
}

/// The build's state between steps.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    pub(crate) user: String,
    pub(crate) workdir: Option<String>,
    pub(crate) env: Vec<(String, String)>,
}

impl Builder {
    /// A builder over `templates` and `backend`, keeping uploads under `uploads`, pulling
    /// with `pull`; builds on the built-in `base` use its layer `base_rootfs` (the driver's
    /// `<state>/templates/base/rootfs`; `None`: such builds are refused).
    #[must_use]
    pub fn new(
        templates: Arc<Templates>,
        backend: SingleNodeBackend,
        uploads: PathBuf,
        pull: PullOptions,
        base_rootfs: Option<PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            templates,
            held: Arc::default(),
            backend,
            uploads,
            pull,
            base_rootfs,
        })
    }

    /// What a daemon that stopped during builds left: its unfinished builds are marked failed
    /// and their build sandboxes (metadata [`BUILD_METADATA`]) deleted. Call once, when the
    /// daemon starts, before any build. Returns (builds failed, sandboxes deleted).
    ///
    /// # Errors
    ///
    /// The catalog or the backend failed.
    pub async fn clean_up_interrupted(&self) -> Result<(usize, usize), BuildError> {
        let failed = self.templates.catalog.fail_interrupted_builds()?;
        let mut orphans = Vec::new();
        let mut query = firkin_single_node::ListQuery {
            limit: Some(firkin_single_node::ListQuery::MAX_LIMIT),
            ..firkin_single_node::ListQuery::default()
        };
        loop {
            let page = self
                .backend
                .list(&query)
                .map_err(|e| BuildError::Internal(e.to_string()))?;
            orphans.extend(
                page.sandboxes
                    .iter()
                    .filter(|s| s.metadata().contains_key(BUILD_METADATA))
                    .map(|s| s.sandbox_id().to_owned()),
            );
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => break,
            }
        }
        for id in &orphans {
            if let Err(error) = self.backend.delete(id).await {
                tracing::warn!(%error, sandbox = id, "deleting a build sandbox left by a stopped daemon");
            }
        }
        Ok((failed, orphans.len()))
    }

    /// The catalog and store it builds into.
    #[must_use]
    pub fn templates(&self) -> &Arc<Templates> {
        &self.templates
    }

    /// [`BuildError::DiskFull`] when the state's disk is below the daemon's floor.
    /// Below the floor, the layers no template and no running build uses are pruned first
    /// (the store's garbage collection), and the check is made again.
    pub(crate) fn disk_check(&self, operation: &str) -> Result<(), BuildError> {
        let guard = self.backend.disk_guard();
        if guard.check(operation).is_ok() {
            return Ok(());
        }
        match self.templates.prune_keeping(&self.held.all()) {
            Ok(removed) if !removed.is_empty() => tracing::warn!(
                layers = removed.len(),
                "the disk is below its floor: unused template layers were pruned"
            ),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "pruning unused template layers failed"),
        }
        guard
            .check(operation)
            .map_err(|error| BuildError::DiskFull(error.to_string()))
    }

    /// Starts the waiting build `build_id` of `template_id` with `start` (checked first:
    /// nothing changes when it is refused); the build runs on a task of its own.
    ///
    /// # Errors
    ///
    /// [`BuildError::BadRequest`] for bad steps or a missing upload, [`BuildError::NotFound`],
    /// [`BuildError::NotWaiting`] when it was started already.
    pub fn start(
        self: &Arc<Self>,
        template_id: &str,
        build_id: &str,
        start: BuildStart,
    ) -> Result<(), BuildError> {
        self.disk_check("template build")?;
        let steps = start
            .steps
            .iter()
            .enumerate()
            .map(|(i, wire)| Step::parse(i, wire))
            .collect::<Result<Vec<_>, _>>()?;
        match (&start.from_image, &start.from_template) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(BuildError::BadRequest(
                    "exactly one of fromImage and fromTemplate is required".to_owned(),
                ));
            }
        }
        for step in &steps {
            if let Step::Copy { files_hash, .. } = step
                && !self.upload_path(template_id, files_hash).is_file()
            {
                return Err(BuildError::BadRequest(format!(
                    "the files {files_hash} of a COPY step were not uploaded"
                )));
            }
        }
        self.templates.catalog.start_build(template_id, build_id)?;
        let builder = Arc::clone(self);
        let (template_id, build_id) = (template_id.to_owned(), build_id.to_owned());
        tokio::spawn(async move {
            // Held until the build is recorded: a prune meanwhile keeps its layers.
            let mut hold = builder.held.hold();
            let outcome = builder
                .build(&template_id, &build_id, &start, &steps, &mut hold)
                .await;
            builder.finish(&build_id, outcome);
            drop(hold);
        });
        Ok(())
    }

    fn finish(&self, build_id: &str, outcome: Result<ImageRecord, (String, String)>) {
        let catalog = &self.templates.catalog;
        let recorded = match outcome {
            Ok(record) => catalog
                .log(build_id, "info", "Build finished", Some("finalize"))
                .and_then(|()| catalog.finish_build(build_id, Ok(record))),
            Err((step, message)) => catalog
                .log(build_id, "error", &message, Some(&step))
                .and_then(|()| catalog.finish_build(build_id, Err(message))),
        };
        if let Err(error) = recorded {
            tracing::error!(%error, build_id, "the build's end could not be recorded");
        }
    }

    pub(crate) fn log(&self, build_id: &str, step: &str, message: &str) {
        if let Err(error) = self
            .templates
            .catalog
            .log(build_id, "info", message, Some(step))
        {
            tracing::warn!(%error, build_id, "a build log line was lost");
        }
    }

    /// The build itself; on failure, (the step, E2B's `reason.message`).
    async fn build(
        &self,
        template_id: &str,
        build_id: &str,
        start: &BuildStart,
        steps: &[Step],
        hold: &mut Hold,
    ) -> Result<ImageRecord, (String, String)> {
        let (mut record, mut key) = self
            .base(build_id, start)
            .await
            .map_err(|e| ("base".to_owned(), e.to_string()))?;
        hold.add(&record.layers);
        let mut context = Context {
            user: record.user.clone().unwrap_or_else(|| "user".to_owned()),
            workdir: record.workdir.clone(),
            env: Vec::new(),
        };
        for (index, step) in steps.iter().enumerate() {
            let label = (index + 1).to_string();
            let force = start.force || start.steps[index].force;
            let fail = |e: BuildError| (label.clone(), e.to_string());
            self.log(
                build_id,
                &label,
                &format!(
                    "[builder {}/{}] {}",
                    index + 1,
                    steps.len(),
                    step.describe()
                ),
            );
            key = step_key(&key, step, &context);
            match step {
                Step::Env(pairs) => {
                    context
                        .env
                        .retain(|(k, _)| pairs.iter().all(|(n, _)| n != k));
                    context.env.extend(pairs.iter().cloned());
                    continue;
                }
                Step::Workdir(dir) => {
                    let base = context.workdir.as_deref().unwrap_or("/");
                    context.workdir = Some(absolute(base, dir));
                }
                Step::User(user) => context.user = user.clone(),
                Step::Run { .. } | Step::Copy { .. } => {}
            }
            if !force
                && let Ok(Some(layer)) = self.templates.catalog.cached_step(&key)
                && self.templates.layers.get(&layer).is_some()
            {
                self.log(build_id, &label, &format!("CACHED {}", step.describe()));
                hold.add(&[layer]);
                record.layers.push(layer);
                continue;
            }
            let made = self
                .run_step(
                    &StepAt {
                        template_id,
                        build_id,
                        label: &label,
                        record: &record,
                    },
                    step,
                    &context,
                )
                .await
                .map_err(fail)?;
            if let Some(layer) = made {
                if let Err(error) = self.templates.catalog.remember_step(&key, &layer) {
                    tracing::warn!(%error, "a build step could not be cached");
                }
                hold.add(&[layer]);
                record.layers.push(layer);
            }
        }
        record.user = Some(context.user);
        record.workdir = context.workdir;
        record.start_cmd = start.start_cmd.clone().filter(|c| !c.trim().is_empty());
        record.ready_cmd = start.ready_cmd.clone().filter(|c| !c.trim().is_empty());
        if record.start_cmd.is_some() || record.ready_cmd.is_some() {
            self.log(
                build_id,
                "finalize",
                "[finalize] starting the template's start and ready commands",
            );
            self.check_start(template_id, build_id, &record)
                .await
                .map_err(|e| ("finalize".to_owned(), e.to_string()))?;
        }
        Ok(record)
    }

    /// The image the build starts from, and its cache key.
    async fn base(
        &self,
        build_id: &str,
        start: &BuildStart,
    ) -> Result<(ImageRecord, String), BuildError> {
        if let Some(parent) = &start.from_template {
            self.log(build_id, "base", &format!("[base] FROM template {parent}"));
            if parent.trim() == firkin_single_node::BASE_TEMPLATE {
                if self.base_rootfs.is_none() {
                    return Err(BuildError::Step(
                        "this daemon cannot build on the built-in 'base' template".to_owned(),
                    ));
                }
                // Nothing of its own: the driver puts `base` under the steps' layers.
                let record = ImageRecord {
                    layers: Vec::new(),
                    config: firkin_image::ImageConfig::default(),
                    start_cmd: None,
                    ready_cmd: None,
                    user: Some("user".to_owned()),
                    workdir: None,
                    on_base: true,
                };
                return Ok((record, "base".to_owned()));
            }
            let resolved = self.templates.catalog.resolve(parent)?;
            let key = format!("template {}", resolved.build_id);
            return Ok((resolved.image, key));
        }
        let reference = start.from_image.as_deref().unwrap_or_default();
        self.log(build_id, "base", &format!("[base] FROM {reference}"));
        let mut options = self.pull.clone();
        if let Some(auth) = &start.from_image_registry {
            if auth.kind != "registry" {
                return Err(BuildError::BadRequest(format!(
                    "fromImageRegistry of type {:?} is not supported (only \"registry\")",
                    auth.kind
                )));
            }
            options.credentials = firkin_image::Credentials::Basic {
                username: auth.username.clone().unwrap_or_default(),
                password: auth.password.clone().unwrap_or_default(),
            };
        }
        let record = self
            .templates
            .pull_image(reference, &options)
            .await
            .map_err(|e| BuildError::Step(format!("pull {reference}: {e}")))?;
        let key = layers_key(&record.layers);
        Ok((record, key))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dir` against `base` (`/` when none was set), as WORKDIR resolves it.
fn absolute(base: &str, dir: &str) -> String {
    format!(
        "/{}",
        crate::copy::normalize(&Path::new(base).join(dir)).display()
    )
}

fn layers_key(layers: &[Digest]) -> String {
    let mut hash = Sha256::new();
    for layer in layers {
        hash.update(layer.to_string());
        hash.update("\n");
    }
    hex(&hash.finalize())
}

/// A step's cache key: its parent's key, the step as sent, the files it copies, and the
/// build context it runs in.
fn step_key(parent: &str, step: &Step, context: &Context) -> String {
    let mut hash = Sha256::new();
    hash.update(parent);
    hash.update(format!(
        "\n{step:?}\n{}\n{:?}\n{:?}",
        context.user, context.workdir, context.env
    ));
    hex(&hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdirs_resolve_against_the_last_one() {
        assert_eq!(absolute("/", "app"), "/app");
        assert_eq!(absolute("/app", "src"), "/app/src");
        assert_eq!(absolute("/app", "/srv"), "/srv");
        assert_eq!(absolute("/app", "../../x"), "/x");
    }

    #[test]
    fn a_step_key_changes_with_its_parent_step_and_context() {
        let context = Context {
            user: "user".into(),
            workdir: None,
            env: vec![],
        };
        let run = Step::Run {
            command: "echo".into(),
            user: None,
        };
        let key = step_key("p", &run, &context);
        assert_eq!(key, step_key("p", &run, &context));
        assert_ne!(key, step_key("q", &run, &context));
        let root = Context {
            user: "root".into(),
            ..context.clone()
        };
        assert_ne!(key, step_key("p", &run, &root));
    }
}
