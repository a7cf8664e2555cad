//! The `filesystem.Filesystem` Connect service.

use connectrpc::{ConnectError, RequestContext, ServiceRequest, ServiceResult, ServiceStream};

use crate::proto::filesystem::{
    CreateWatcherRequest, CreateWatcherResponse, Filesystem, GetWatcherEventsRequest,
    GetWatcherEventsResponse, ListDirRequest, ListDirResponse, MakeDirRequest, MakeDirResponse,
    MoveRequest, MoveResponse, RemoveRequest, RemoveResponse, RemoveWatcherRequest,
    RemoveWatcherResponse, StatRequest, StatResponse, WatchDirRequest, WatchDirResponse,
};
use crate::state::Envd;

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
}

fn todo(name: &str) -> ConnectError {
    ConnectError::unimplemented(format!("filesystem.{name} is not implemented yet"))
}

#[allow(refining_impl_trait)]
impl Filesystem for FilesystemService {
    async fn stat(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, StatRequest>,
    ) -> ServiceResult<StatResponse> {
        let _ = &self.envd;
        Err(todo("Stat"))
    }
    async fn make_dir(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, MakeDirRequest>,
    ) -> ServiceResult<MakeDirResponse> {
        Err(todo("MakeDir"))
    }
    async fn r#move(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, MoveRequest>,
    ) -> ServiceResult<MoveResponse> {
        Err(todo("Move"))
    }
    async fn list_dir(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, ListDirRequest>,
    ) -> ServiceResult<ListDirResponse> {
        Err(todo("ListDir"))
    }
    async fn remove(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, RemoveRequest>,
    ) -> ServiceResult<RemoveResponse> {
        Err(todo("Remove"))
    }
    async fn watch_dir(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, WatchDirRequest>,
    ) -> ServiceResult<ServiceStream<WatchDirResponse>> {
        Err(todo("WatchDir"))
    }
    async fn create_watcher(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, CreateWatcherRequest>,
    ) -> ServiceResult<CreateWatcherResponse> {
        Err(todo("CreateWatcher"))
    }
    async fn get_watcher_events(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, GetWatcherEventsRequest>,
    ) -> ServiceResult<GetWatcherEventsResponse> {
        Err(todo("GetWatcherEvents"))
    }
    async fn remove_watcher(
        &self,
        _: RequestContext,
        _: ServiceRequest<'_, RemoveWatcherRequest>,
    ) -> ServiceResult<RemoveWatcherResponse> {
        Err(todo("RemoveWatcher"))
    }
}
