//! A step that runs something: in a build sandbox made through the backend from the layers
//! so far, its output streamed into the build log, its writes (the sandbox's overlay upper)
//! kept as the step's layer; and the start-and-ready check of a finished build.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use firkin_image::catalog::ImageRecord;
use firkin_image::{Digest, Expected};
use firkin_single_node::{SingleNodeCreateRequest, TemplateImage};

use crate::copy::{CopyInto, copy_layer};
use crate::engine::{Builder, Context, StepAt};
use crate::shell::quote;
use crate::spec::Step;
use crate::{BuildError, envd};

/// The metadata key of a build's own sandboxes (its value: the build id).
pub const BUILD_METADATA: &str = "firkin.build";
/// How long a build sandbox may live (a step that runs longer is cut off).
const STEP_SANDBOX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The files a driver writes into every sandbox: never part of a step's layer.
const PER_SANDBOX_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

impl Builder {
    /// One step that makes a layer (`ENV` makes none); the layer's digest.
    pub(crate) async fn run_step(
        &self,
        at: &StepAt<'_>,
        step: &Step,
        context: &Context,
    ) -> Result<Option<Digest>, BuildError> {
        let layers = self.visible_layers(at.record);
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

    /// The layers whose files a sandbox of `record` sees, bottom first: `base`'s own below a
    /// template built on it (where its users, groups and directories are looked up).
    fn visible_layers(&self, record: &ImageRecord) -> Vec<PathBuf> {
        let base = record.on_base.then(|| self.base_rootfs.clone()).flatten();
        base.into_iter().chain(self.layer_paths(record)).collect()
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
            on_base: record.on_base,
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
            let uppers = self.backend.driver().writes_dirs(&id);
            if uppers.is_empty() {
                return Err(BuildError::Internal(
                    "this driver cannot keep a sandbox's writes".to_owned(),
                ));
            }
            let store = Arc::clone(&self.templates.layers);
            tokio::task::spawn_blocking(move || keep_writes(&uppers, &store))
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
    pub(crate) async fn check_start(
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

/// The sandbox's uppers (each with where it was mounted) as one layer of `store`, through a
/// file in the store's scratch space.
fn keep_writes(
    uppers: &[(PathBuf, PathBuf)],
    store: &firkin_image::LayerStore,
) -> Result<Digest, BuildError> {
    let scratch = store.scratch_path("step");
    let file = std::fs::File::create(&scratch).map_err(|e| BuildError::Internal(e.to_string()))?;
    let written = firkin_image::export::uppers_to_tar(
        uppers,
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
