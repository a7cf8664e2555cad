//! The `filesystem.Filesystem` Connect service.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use buffa::MessageField;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt;

use crate::filesystem::entry::Names;
use crate::filesystem::watch::{DirWatch, Setup};
use crate::filesystem::{ops, to_wire};
use crate::proto::filesystem::__buffa::oneof::watch_dir_response::Event as WireEvent;
use crate::proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, Filesystem, FilesystemEvent,
    GetWatcherEventsRequest, GetWatcherEventsResponse, ListDirRequest, ListDirResponse,
    MakeDirRequest, MakeDirResponse, MoveRequest, MoveResponse, RemoveRequest, RemoveResponse,
    RemoveWatcherRequest, RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest,
    WatchDirResponse, watch_dir_response,
};
use crate::rpc::request_user;
use crate::state::Envd;
use crate::users::User;

/// Keepalive interval on `WatchDir` streams when the client names none (E2B envd's).
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(90);

/// The `filesystem.Filesystem` service.
#[derive(Clone, Debug)]
pub struct FilesystemService {
    envd: Envd,
}

impl FilesystemService {
    /// The service over `envd`.
    #[must_use]
    pub fn new(envd: Envd) -> Self {
        Self { envd }
    }

    /// The request's user and `path` resolved for them.
    fn user_and_path(
        &self,
        ctx: &RequestContext,
        path: &str,
    ) -> Result<(User, PathBuf), ConnectError> {
        let user = request_user(&self.envd, ctx.headers())?;
        let path = crate::paths::resolve(&user, path);
        Ok((user, path))
    }

    /// Start watching for a `WatchDir` or `CreateWatcher` request.
    async fn open_watch(
        &self,
        ctx: &RequestContext,
        path: &str,
        recursive: bool,
        allow_network_mounts: bool,
    ) -> Result<DirWatch, ConnectError> {
        let (user, path) = self.user_and_path(ctx, path)?;
        let root = path.clone();
        let watcher = user.clone();
        let setup = as_user(&user, move || {
            Setup::open(&path, recursive, allow_network_mounts, &watcher)
        })
        .await?;
        setup.start().map_err(|error| {
            ConnectError::internal(format!("cannot watch '{}': {error}", root.display()))
        })
    }
}

/// Run `op` with `user`'s credentials.
async fn as_user<T, F>(user: &User, op: F) -> Result<T, ConnectError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ConnectError> + Send + 'static,
{
    crate::as_user::run(user, move || Ok(op()))
        .await
        .map_err(|error| {
            ConnectError::internal(format!("cannot act as user '{}': {error}", user.name))
        })?
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let request = request.to_owned_message();
        let (user, path) = self.user_and_path(&ctx, &request.path)?;
        let entry = as_user(&user, move || ops::stat(&path, &Names::system())).await?;
        Response::ok(StatResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn make_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        let request = request.to_owned_message();
        let (user, path) = self.user_and_path(&ctx, &request.path)?;
        let entry = as_user(&user, move || ops::make_dir(&path, &Names::system())).await?;
        Response::ok(MakeDirResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn r#move(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        let request = request.to_owned_message();
        let (user, source) = self.user_and_path(&ctx, &request.source)?;
        let destination = crate::paths::resolve(&user, &request.destination);
        let entry = as_user(&user, move || {
            ops::rename(&source, &destination, &Names::system())
        })
        .await?;
        Response::ok(MoveResponse {
            entry: MessageField::some(entry),
            ..Default::default()
        })
    }

    async fn list_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        let request = request.to_owned_message();
        let (user, path) = self.user_and_path(&ctx, &request.path)?;
        let depth = request.depth;
        let entries = as_user(&user, move || ops::list_dir(&path, depth, &Names::system())).await?;
        Response::ok(ListDirResponse {
            entries,
            ..Default::default()
        })
    }

    async fn remove(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        let request = request.to_owned_message();
        let (user, path) = self.user_and_path(&ctx, &request.path)?;
        as_user(&user, move || ops::remove(&path)).await?;
        Response::ok(RemoveResponse::default())
    }

    async fn watch_dir(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        let request = request.to_owned_message();
        let watch = self
            .open_watch(
                &ctx,
                &request.path,
                request.recursive,
                request.allow_network_mounts,
            )
            .await?;
        let keepalive = crate::rpc::keepalive_interval(&ctx).unwrap_or(DEFAULT_KEEPALIVE);
        let stream = watch_stream(watch, request.include_entry, keepalive, ctx.deadline());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_watcher(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        let request = request.to_owned_message();
        let watch = self
            .open_watch(
                &ctx,
                &request.path,
                request.recursive,
                request.allow_network_mounts,
            )
            .await?;
        let watcher_id = self.envd.watchers().insert(watch, request.include_entry)?;
        Response::ok(CreateWatcherResponse {
            watcher_id,
            ..Default::default()
        })
    }

    async fn get_watcher_events(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        let request = request.to_owned_message();
        let events = self.envd.watchers().drain(&request.watcher_id)?;
        Response::ok(GetWatcherEventsResponse {
            events,
            ..Default::default()
        })
    }

    async fn remove_watcher(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        let request = request.to_owned_message();
        self.envd.watchers().remove(&request.watcher_id)?;
        Response::ok(RemoveWatcherResponse::default())
    }
}

fn response(event: impl Into<WireEvent>) -> WatchDirResponse {
    WatchDirResponse {
        event: Some(event.into()),
        ..Default::default()
    }
}

/// `start{}`, then the watch's events as they come, keepalives in the silences; the stream
/// ends when the watched directory is deleted, with `deadline_exceeded` at the deadline, or
/// when the client goes away (dropping the stream drops the watch and its inotify fd).
fn watch_stream(
    watch: DirWatch,
    include_entry: bool,
    keepalive: Duration,
    deadline: Option<Instant>,
) -> impl futures::Stream<Item = Result<WatchDirResponse, ConnectError>> + Send + 'static {
    struct State {
        watch: DirWatch,
        pending: VecDeque<FilesystemEvent>,
        done: bool,
    }
    let start = response(watch_dir_response::StartEvent::default());
    let rest = futures::stream::unfold(
        State {
            watch,
            pending: VecDeque::new(),
            done: false,
        },
        move |mut state| async move {
            loop {
                if let Some(event) = state.pending.pop_front() {
                    return Some((Ok(response(event)), state));
                }
                if state.done {
                    return None;
                }
                let wait = deadline.map_or(keepalive, |deadline| {
                    keepalive.min(deadline.saturating_duration_since(Instant::now()))
                });
                match tokio::time::timeout(wait, state.watch.next()).await {
                    Err(_) if deadline.is_some_and(|deadline| Instant::now() >= deadline) => {
                        state.done = true;
                        return Some((
                            Err(ConnectError::deadline_exceeded("watch deadline reached")),
                            state,
                        ));
                    }
                    Err(_) => {
                        return Some((
                            Ok(response(watch_dir_response::KeepAlive::default())),
                            state,
                        ));
                    }
                    Ok(Some(Ok(batch))) => state.pending.extend(to_wire(batch, include_entry)),
                    Ok(Some(Err(error))) => {
                        state.done = true;
                        let root = state.watch.root().display().to_string();
                        return Some((
                            Err(ConnectError::internal(format!(
                                "watching '{root}' failed: {error}"
                            ))),
                            state,
                        ));
                    }
                    Ok(None) => state.done = true,
                }
            }
        },
    );
    futures::stream::once(async move { Ok(start) }).chain(rest)
}
