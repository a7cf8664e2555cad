//! The builder: requests, uploads, and the build task itself (see the crate docs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use firkin_image::catalog::ImageRecord;
use firkin_image::{Digest, Expected, PullOptions, Templates};
use firkin_single_node::{SingleNodeBackend, SingleNodeCreateRequest, TemplateImage};
use sha2::{Digest as _, Sha256};

use crate::copy::{CopyInto, copy_layer};
use crate::held::{HeldLayers, Hold};
use crate::spec::{BuildStart, Step, is_files_hash};
use crate::{BuildError, envd};

/// The metadata key of a build's own sandboxes (its value: the build id).
pub const BUILD_METADATA: &str = "firkin.build";

/// How long a build sandbox may live (a step that runs longer is cut off).
const STEP_SANDBOX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The files a driver writes into every sandbox: never part of a step's layer.
const PER_SANDBOX_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];
/// The largest upload a `COPY` may bring.
pub const MAX_UPLOAD_BYTES: u64 = 4 << 30;

/// Builds templates into the daemon's catalog and layer store, running steps through its
/// backend.
#[derive(Debug)]
pub struct Builder {
    templates: Arc<Templates>,
    held: Arc<HeldLayers>,
    backend: SingleNodeBackend,
    uploads: PathBuf,
    pull: PullOptions,
}

/// Where a step runs: its build and the image so far.
#[derive(Debug)]
struct StepAt<'a> {
    template_id: &'a str,
    build_id: &'a str,
    /// The step's number (1-based), as the log and `reason.step` name it.
    label: &'a str,
    record: &'a ImageRecord,
}

/// The build's state between steps.
#[derive(Debug, Clone)]
struct Context {
    user: String,
    workdir: Option<String>,
    env: Vec<(String, String)>,
}

impl Builder {
    /// A builder over `templates` and `backend`, keeping uploads under `uploads`, pulling
    /// with `pull`.
    #[must_use]
    pub fn new(
        templates: Arc<Templates>,
        backend: SingleNodeBackend,
        uploads: PathBuf,
        pull: PullOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            templates,
            held: Arc::default(),
            backend,
            uploads,
            pull,
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
    fn disk_check(&self, operation: &str) -> Result<(), BuildError> {
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

    /// Where the upload `hash` of `template_id` is kept.
    fn upload_path(&self, template_id: &str, hash: &str) -> PathBuf {
        self.uploads.join(template_id).join(hash)
    }

    /// Whether the upload `hash` of `template_id` is here already.
    ///
    /// # Errors
    ///
    /// [`BuildError::BadRequest`] for a hash that is not 64 hex digits,
    /// [`BuildError::NotFound`] for an unknown template.
    pub fn upload_present(&self, template_id: &str, hash: &str) -> Result<bool, BuildError> {
        self.check_upload(template_id, hash)?;
        Ok(self.upload_path(template_id, hash).is_file())
    }

    fn check_upload(&self, template_id: &str, hash: &str) -> Result<(), BuildError> {
        if !is_files_hash(hash) {
            return Err(BuildError::BadRequest(format!(
                "files hash {hash:?} is not 64 lowercase hex digits"
            )));
        }
        if !self
            .templates
            .catalog
            .list()?
            .iter()
            .any(|t| t.template_id == template_id)
        {
            return Err(BuildError::NotFound(format!(
                "template '{template_id}' not found"
            )));
        }
        Ok(())
    }

    /// Keeps `body` as the upload `hash` of `template_id` (at most [`MAX_UPLOAD_BYTES`]);
    /// visible whole or not at all. Returns its size.
    ///
    /// # Errors
    ///
    /// As [`Builder::upload_present`]; [`BuildError::BadRequest`] when it is too large;
    /// [`BuildError::Internal`] when it cannot be written.
    pub async fn save_upload<B>(
        &self,
        template_id: &str,
        hash: &str,
        mut body: B,
    ) -> Result<u64, BuildError>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt as _;
        use tokio::io::AsyncWriteExt as _;
        self.check_upload(template_id, hash)?;
        self.disk_check("template file upload")?;
        let dest = self.upload_path(template_id, hash);
        let dir = dest.parent().unwrap_or(&self.uploads).to_owned();
        let internal = |what: &str, e: &dyn std::fmt::Display| {
            BuildError::Internal(format!("{what} {}: {e}", dest.display()))
        };
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| internal("create the directory of", &e))?;
        let partial = dir.join(format!(".{hash}.partial"));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| internal("create", &e))?;
        let mut size = 0_u64;
        let written = async {
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| BuildError::BadRequest(format!("the upload: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    size += data.len() as u64;
                    if size > MAX_UPLOAD_BYTES {
                        return Err(BuildError::BadRequest(format!(
                            "the upload is larger than {MAX_UPLOAD_BYTES} bytes"
                        )));
                    }
                    file.write_all(&data)
                        .await
                        .map_err(|e| internal("write", &e))?;
                }
            }
            file.sync_all().await.map_err(|e| internal("sync", &e))?;
            tokio::fs::rename(&partial, &dest)
                .await
                .map_err(|e| internal("keep", &e))
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written.map(|()| size)
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

    fn log(&self, build_id: &str, step: &str, message: &str) {
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
                return Err(BuildError::Step(
                    "building on the built-in 'base' template (the host's /usr) is not supported; start from an image (from_image) or a template built from one".to_owned(),
                ));
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

    /// One step that makes a layer (`ENV` makes none); the layer's digest.
    async fn run_step(
        &self,
        at: &StepAt<'_>,
        step: &Step,
        context: &Context,
    ) -> Result<Option<Digest>, BuildError> {
        let layers = self.layer_paths(at.record);
        let store = Arc::clone(&self.templates.layers);
        let tar = match step {
            Step::Env(_) => return Ok(None),
            Step::Run { command, user } => {
                let user = user.as_deref().unwrap_or(&context.user);
                return self
                    .run_in_sandbox(at, context, command, user)
                    .await
                    .map(Some);
            }
            Step::User(user) => {
                if firkin_image::provision::find_user(&layers, user).is_some() {
                    return Ok(None);
                }
                let command = format!(
                    "useradd --create-home --shell /bin/bash {user} 2>/dev/null || adduser -D -s /bin/sh {user}"
                );
                return self.run_as_root(at, context, &command).await;
            }
            Step::Workdir(_) => {
                let dir = context.workdir.clone().unwrap_or_default();
                if firkin_image::provision::attributes(
                    &layers,
                    store.ids(),
                    dir.trim_start_matches('/'),
                )
                .is_some()
                {
                    return Ok(None);
                }
                let dir = quote(&dir);
                let command = format!("mkdir -p {dir} && chown {} {dir}", quote(&context.user));
                return self.run_as_root(at, context, &command).await;
            }
            Step::Copy {
                source,
                dest,
                owner,
                mode,
                files_hash,
            } => {
                let archive = self.upload_path(at.template_id, files_hash);
                let into = CopyInto {
                    layers: &layers,
                    ids: store.ids(),
                    user: &context.user,
                    workdir: context.workdir.as_deref(),
                };
                copy_layer(&archive, source, dest, owner.as_deref(), *mode, &into)?
            }
        };
        let layer = tokio::task::spawn_blocking(move || {
            store.unpack(std::io::Cursor::new(tar), Expected::default())
        })
        .await
        .map_err(|e| BuildError::Internal(e.to_string()))?
        .map_err(|e| BuildError::Step(format!("the step's layer: {e}")))?;
        Ok(Some(layer.diff_id))
    }

    fn layer_paths(&self, record: &ImageRecord) -> Vec<PathBuf> {
        record
            .layers
            .iter()
            .map(|d| self.templates.layers.layer_path(d))
            .collect()
    }

    /// What a sandbox of `record` in `context` is started from.
    fn image(
        &self,
        template_id: &str,
        build_id: &str,
        record: &ImageRecord,
        context: &Context,
    ) -> TemplateImage {
        let mut env: Vec<(String, String)> = record
            .config
            .env
            .iter()
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        env.extend(context.env.iter().cloned());
        TemplateImage {
            template_id: template_id.to_owned(),
            name: template_id.to_owned(),
            build_id: build_id.to_owned(),
            layers: self.layer_paths(record),
            env,
            user: Some(context.user.clone()),
            workdir: context.workdir.clone(),
            start_cmd: record.start_cmd.clone(),
            ready_cmd: record.ready_cmd.clone(),
            keep_warm: false,
        }
    }

    fn request(&self, image: TemplateImage, build_id: &str) -> SingleNodeCreateRequest {
        SingleNodeCreateRequest::new(
            image.template_id.clone(),
            self.backend.config().default_sandbox_resources,
        )
        .with_image(image)
        .with_timeout(STEP_SANDBOX_TIMEOUT)
        .with_metadata(BTreeMap::from([(
            BUILD_METADATA.to_owned(),
            build_id.to_owned(),
        )]))
    }

    /// `command` as root from `/`, for a step that makes what the image lacks (a user, a
    /// directory), which may be the very user or directory the context names.
    async fn run_as_root(
        &self,
        at: &StepAt<'_>,
        context: &Context,
        command: &str,
    ) -> Result<Option<Digest>, BuildError> {
        let root = Context {
            user: "root".to_owned(),
            workdir: Some("/".to_owned()),
            ..context.clone()
        };
        self.run_in_sandbox(at, &root, command, "root")
            .await
            .map(Some)
    }

    /// `command` as `user` in a build sandbox of the image so far; what it wrote, as a layer.
    async fn run_in_sandbox(
        &self,
        at: &StepAt<'_>,
        context: &Context,
        command: &str,
        user: &str,
    ) -> Result<Digest, BuildError> {
        let (build_id, label) = (at.build_id, at.label);
        let image = self.image(at.template_id, build_id, at.record, context);
        let sandbox = self
            .backend
            .create(self.request(image, build_id))
            .await
            .map_err(|e| BuildError::Step(format!("start a build sandbox: {e}")))?;
        let id = sandbox.sandbox_id().to_owned();
        let token = sandbox.record().envd_access_token.clone();
        let result = async {
            let address = self
                .backend
                .ports()
                .target(&id, 49983)
                .map_err(|e| BuildError::Internal(e.to_string()))?;
            let run = envd::Command {
                line: command,
                user,
                cwd: context.workdir.as_deref(),
                envs: &context.env,
            };
            let code = envd::run(address, token.as_deref(), &run, |line| {
                self.log(build_id, label, line)
            })
            .await
            .map_err(|e| BuildError::Step(format!("failed to run command '{command}': {e}")))?;
            if code != 0 {
                return Err(BuildError::Step(format!(
                    "failed to run command '{command}': exit status {code}"
                )));
            }
            self.backend
                .pause(&id)
                .await
                .map_err(|e| BuildError::Internal(format!("freeze the build sandbox: {e}")))?;
            let upper = self.backend.driver().writes_dir(&id).ok_or_else(|| {
                BuildError::Internal("this driver cannot keep a sandbox's writes".to_owned())
            })?;
            let store = Arc::clone(&self.templates.layers);
            tokio::task::spawn_blocking(move || keep_writes(&upper, &store))
                .await
                .map_err(|e| BuildError::Internal(e.to_string()))?
        }
        .await;
        if let Err(error) = self.backend.delete(&id).await {
            tracing::warn!(%error, sandbox = id, "a build sandbox could not be deleted");
        }
        result
    }

    /// Starts a sandbox of the finished template: its start command runs and its ready
    /// command succeeds, or the build fails.
    async fn check_start(
        &self,
        template_id: &str,
        build_id: &str,
        record: &ImageRecord,
    ) -> Result<(), BuildError> {
        let context = Context {
            user: record.user.clone().unwrap_or_else(|| "user".to_owned()),
            workdir: record.workdir.clone(),
            env: Vec::new(),
        };
        let image = self.image(template_id, build_id, record, &context);
        let sandbox = self
            .backend
            .create(self.request(image, build_id))
            .await
            .map_err(|e| BuildError::Step(format!("the start command: {e}")))?;
        if let Err(error) = self.backend.delete(sandbox.sandbox_id()).await {
            tracing::warn!(%error, "a build sandbox could not be deleted");
        }
        Ok(())
    }
}

/// The upper `upper` as a layer of `store` (through a file in the store's scratch space).
fn keep_writes(upper: &Path, store: &firkin_image::LayerStore) -> Result<Digest, BuildError> {
    let scratch = store.scratch_path("step");
    let file = std::fs::File::create(&scratch).map_err(|e| BuildError::Internal(e.to_string()))?;
    let written = firkin_image::export::upper_to_tar(
        upper,
        store.ids(),
        &PER_SANDBOX_FILES,
        std::io::BufWriter::new(file),
    );
    let layer = written
        .map_err(|e| BuildError::Internal(format!("export the step's writes: {e}")))
        .and_then(|_| {
            let file =
                std::fs::File::open(&scratch).map_err(|e| BuildError::Internal(e.to_string()))?;
            store
                .unpack(std::io::BufReader::new(file), Expected::default())
                .map_err(|e| BuildError::Step(format!("the step's layer: {e}")))
        });
    let _ = std::fs::remove_file(&scratch);
    Ok(layer?.diff_id)
}

/// `text` as one shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `dir` against `base` (`/` when none was set), as WORKDIR resolves it.
fn absolute(base: &str, dir: &str) -> String {
    let joined = Path::new(base).join(dir);
    let mut out = PathBuf::from("/");
    for component in joined.components() {
        match component {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.display().to_string()
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
    fn a_quoted_word_stays_one_word() {
        assert_eq!(quote("/app"), "'/app'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }

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
