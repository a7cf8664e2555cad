//! `process.Process`: the Connect service over the [`Supervisor`](super::Supervisor).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use buffa::MessageField;
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::process::{Event, ExitInfo, Output, ProcessError, ProcessHandle, StartSpec};
use crate::proto::process::__buffa::oneof::process_event::{
    Event as WireEvent, data_event::Output as WireOutput,
};
use crate::proto::process::__buffa::oneof::process_input::Input as WireInput;
use crate::proto::process::__buffa::oneof::process_selector::Selector;
use crate::proto::process::__buffa::oneof::stream_input_request::Event as InputEvent;
use crate::proto::process::{
    CloseStdinRequest, CloseStdinResponse, ConnectRequest, ConnectResponse, ListRequest,
    ListResponse, Process, ProcessConfig, ProcessEvent, ProcessInfo, ProcessSelector,
    SendInputRequest, SendInputResponse, SendSignalRequest, SendSignalResponse, Signal,
    StartRequest, StartResponse, StreamInputRequest, StreamInputResponse, UpdateRequest,
    UpdateResponse, process_event,
};
use crate::rpc::{request_user, to_connect_error};
use crate::state::Envd;

/// `PATH` for processes whose request does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The `process.Process` service.
#[derive(Clone, Debug)]
pub struct ProcessService {
    envd: Envd,
}

impl ProcessService {
    /// The service over `envd`'s supervisor.
    #[must_use]
    pub fn new(envd: Envd) -> Self {
        Self { envd }
    }

    fn select(
        &self,
        selector: Option<&ProcessSelector>,
    ) -> Result<Arc<ProcessHandle>, ConnectError> {
        let processes = self.envd.processes();
        match selector.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => processes.by_pid(*pid),
            Some(Selector::Tag(tag)) => processes.by_tag(tag),
            None => {
                return Err(ConnectError::invalid_argument(
                    "a process selector (pid or tag) is required",
                ));
            }
        }
        .map_err(process_error)
    }

    fn start_spec(
        &self,
        ctx: &RequestContext,
        request: StartRequest,
    ) -> Result<StartSpec, ConnectError> {
        let user = request_user(&self.envd, ctx.headers())?;
        let config = request
            .process
            .into_option()
            .ok_or_else(|| ConnectError::invalid_argument("process config is required"))?;
        if config.cmd.is_empty() {
            return Err(ConnectError::invalid_argument("process cmd is empty"));
        }
        let settings = self.envd.settings();
        let cwd = match config
            .cwd
            .as_deref()
            .or(settings.default_workdir.as_deref())
        {
            Some(cwd) => crate::paths::resolve(&user, cwd),
            None => user.home.clone(),
        };
        if !cwd.is_dir() {
            return Err(ConnectError::invalid_argument(format!(
                "cwd '{}' does not exist",
                cwd.display()
            )));
        }
        let mut envs = BTreeMap::from([
            ("PATH".to_owned(), DEFAULT_PATH.to_owned()),
            ("HOME".to_owned(), user.home.display().to_string()),
            ("USER".to_owned(), user.name.clone()),
            ("LOGNAME".to_owned(), user.name.clone()),
            ("SHELL".to_owned(), user.shell.clone()),
        ]);
        envs.extend(settings.envs);
        envs.extend(config.envs);
        let pty = request.pty.as_option().map(|pty| {
            let size = pty.size.as_option();
            let dimension = |value: Option<u32>, default: u16| {
                value
                    .filter(|v| *v > 0)
                    .map_or(default, |v| u16::try_from(v).unwrap_or(u16::MAX))
            };
            (
                dimension(size.map(|s| s.cols), 80),
                dimension(size.map(|s| s.rows), 24),
            )
        });
        Ok(StartSpec {
            cmd: config.cmd,
            args: config.args,
            envs,
            cwd,
            user,
            tag: request.tag,
            stdin: request.stdin.unwrap_or(true),
            pty,
            kill_at: ctx.deadline(),
            oom_score_adj: settings.child_oom_score_adj,
        })
    }
}

#[allow(refining_impl_trait)]
impl Process for ProcessService {
    async fn list(
        &self,
        _ctx: RequestContext,
        _request: ServiceRequest<'_, ListRequest>,
    ) -> ServiceResult<ListResponse> {
        let processes = self
            .envd
            .processes()
            .list()
            .iter()
            .map(|process| {
                let spec = process.spec();
                ProcessInfo {
                    config: MessageField::some(ProcessConfig {
                        cmd: spec.cmd.clone(),
                        args: spec.args.clone(),
                        envs: spec.envs.clone().into_iter().collect(),
                        cwd: Some(spec.cwd.display().to_string()),
                        ..Default::default()
                    }),
                    pid: process.pid(),
                    tag: spec.tag.clone(),
                    ..Default::default()
                }
            })
            .collect();
        Response::ok(ListResponse {
            processes,
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, ConnectRequest>,
    ) -> ServiceResult<ServiceStream<ConnectResponse>> {
        let request = request.to_owned_message();
        let process = self.select(request.process.as_option())?;
        let events = process.attach().ok_or_else(|| {
            ConnectError::not_found(format!("process {} has ended", process.pid()))
        })?;
        Ok(stream_response(
            &ctx,
            process.pid(),
            events,
            false,
            |event| ConnectResponse {
                event: MessageField::some(event),
                ..Default::default()
            },
        ))
    }

    async fn start(
        &self,
        ctx: RequestContext,
        request: ServiceRequest<'_, StartRequest>,
    ) -> ServiceResult<ServiceStream<StartResponse>> {
        let spec = self.start_spec(&ctx, request.to_owned_message())?;
        let cmd = spec.cmd.clone();
        let (process, events) = self
            .envd
            .processes()
            .start(spec)
            .map_err(|error| match error {
                ProcessError::Spawn { source, .. } => {
                    ConnectError::invalid_argument(format!("failed to start {cmd:?}: {source}"))
                }
                other => process_error(other),
            })?;
        // The deadline bounds the process (the supervisor kills it then) and the stream, which
        // ends with `deadline_exceeded` as E2B's envd does: the SDKs raise a timeout for it.
        Ok(stream_response(
            &ctx,
            process.pid(),
            events,
            true,
            |event| StartResponse {
                event: MessageField::some(event),
                ..Default::default()
            },
        ))
    }

    async fn update(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, UpdateRequest>,
    ) -> ServiceResult<UpdateResponse> {
        let request = request.to_owned_message();
        let process = self.select(request.process.as_option())?;
        if let Some(size) = request.pty.as_option().and_then(|pty| pty.size.as_option()) {
            let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX).max(1);
            process
                .resize(clamp(size.cols), clamp(size.rows))
                .map_err(process_error)?;
        }
        Response::ok(UpdateResponse::default())
    }

    async fn stream_input(
        &self,
        _ctx: RequestContext,
        mut requests: connectrpc::InboundStream<StreamInputRequest>,
    ) -> ServiceResult<StreamInputResponse> {
        let mut process: Option<Arc<ProcessHandle>> = None;
        while let Some(message) = requests.next().await {
            let message = message?.to_owned_message();
            match message.event {
                Some(InputEvent::Start(start)) => {
                    process = Some(self.select(start.process.as_option())?)
                }
                Some(InputEvent::Data(data)) => {
                    let target = process.as_ref().ok_or_else(|| {
                        ConnectError::failed_precondition(
                            "the first message must be start{process}",
                        )
                    })?;
                    write_input(target, data.input.as_option()).await?;
                }
                Some(InputEvent::Keepalive(_)) | None => {}
            }
        }
        Response::ok(StreamInputResponse::default())
    }

    async fn send_input(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendInputRequest>,
    ) -> ServiceResult<SendInputResponse> {
        let request = request.to_owned_message();
        let process = self.select(request.process.as_option())?;
        write_input(&process, request.input.as_option()).await?;
        Response::ok(SendInputResponse::default())
    }

    async fn send_signal(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SendSignalRequest>,
    ) -> ServiceResult<SendSignalResponse> {
        let request = request.to_owned_message();
        let signal = match request.signal.as_known() {
            Some(Signal::SIGNAL_SIGKILL) => rustix::process::Signal::KILL,
            Some(Signal::SIGNAL_SIGTERM) => rustix::process::Signal::TERM,
            Some(Signal::SIGNAL_UNSPECIFIED) | None => {
                return Err(ConnectError::invalid_argument(format!(
                    "unsupported signal {}; use SIGNAL_SIGTERM or SIGNAL_SIGKILL",
                    request.signal.to_i32()
                )));
            }
        };
        let process = self.select(request.process.as_option())?;
        process.signal(signal).map_err(process_error)?;
        Response::ok(SendSignalResponse::default())
    }

    async fn close_stdin(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CloseStdinRequest>,
    ) -> ServiceResult<CloseStdinResponse> {
        let request = request.to_owned_message();
        let process = self.select(request.process.as_option())?;
        process.close_stdin().await.map_err(process_error)?;
        Response::ok(CloseStdinResponse::default())
    }
}

async fn write_input(
    process: &ProcessHandle,
    input: Option<&crate::proto::process::ProcessInput>,
) -> Result<(), ConnectError> {
    match input.and_then(|input| input.input.as_ref()) {
        Some(WireInput::Stdin(data)) => process.write_input(data, false).await,
        Some(WireInput::Pty(data)) => process.write_input(data, true).await,
        None => return Ok(()),
    }
    .map_err(process_error)
}

fn process_error(error: ProcessError) -> ConnectError {
    match error {
        ProcessError::NotFound(what) => {
            ConnectError::not_found(format!("process {what} not found"))
        }
        ProcessError::Unsupported(message) => ConnectError::failed_precondition(message),
        other => to_connect_error(&other),
    }
}

/// How long a Start stream waits, at its deadline, for the process it kills to be gone.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A process's events as the response of a Start or Connect call (`wrap` builds the message).
/// `killed_at_deadline`: the call's deadline is also the process's (Start).
fn stream_response<R: Send + 'static>(
    ctx: &RequestContext,
    pid: u32,
    events: mpsc::Receiver<Event>,
    killed_at_deadline: bool,
    wrap: fn(ProcessEvent) -> R,
) -> Response<ServiceStream<R>> {
    let stream = event_stream(
        pid,
        events,
        crate::rpc::keepalive_interval(ctx),
        ctx.deadline(),
        killed_at_deadline,
    );
    Response::new(Box::pin(stream.map(move |event| event.map(wrap))))
}

/// `start{pid}`, the process's events as they come, keepalives in the silences, and the end.
fn event_stream(
    pid: u32,
    events: mpsc::Receiver<Event>,
    keepalive: Option<Duration>,
    deadline: Option<Instant>,
    killed_at_deadline: bool,
) -> impl futures::Stream<Item = Result<ProcessEvent, ConnectError>> + Send + 'static {
    let start = wire(WireEvent::from(process_event::StartEvent {
        pid,
        ..Default::default()
    }));
    struct State {
        events: mpsc::Receiver<Event>,
        done: bool,
    }
    let rest = futures::stream::unfold(
        State {
            events,
            done: false,
        },
        move |mut state| async move {
            if state.done {
                return None;
            }
            loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    state.done = true;
                    if killed_at_deadline {
                        // The supervisor kills the process at this same deadline: let it be
                        // gone (reaped and unlisted) before the client hears the deadline.
                        let _ = tokio::time::timeout(KILL_GRACE, async {
                            while let Some(event) = state.events.recv().await {
                                if matches!(event, Event::End(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    return Some((
                        Err(ConnectError::deadline_exceeded("deadline reached")),
                        state,
                    ));
                }
                let next = state.events.recv();
                let waited = match (keepalive, deadline) {
                    (Some(interval), deadline) => {
                        let wait = deadline.map_or(interval, |d| {
                            interval.min(d.saturating_duration_since(Instant::now()))
                        });
                        tokio::time::timeout(wait, next).await
                    }
                    (None, Some(deadline)) => tokio::time::timeout_at(deadline.into(), next).await,
                    (None, None) => Ok(next.await),
                };
                match waited {
                    Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => continue,
                    Err(_) => {
                        return Some((
                            Ok(wire(WireEvent::from(process_event::KeepAlive::default()))),
                            state,
                        ));
                    }
                    Ok(Some(Event::Data(output))) => {
                        let output = match output {
                            Output::Stdout(bytes) => WireOutput::Stdout(bytes),
                            Output::Stderr(bytes) => WireOutput::Stderr(bytes),
                            Output::Pty(bytes) => WireOutput::Pty(bytes),
                        };
                        let data = process_event::DataEvent {
                            output: Some(output),
                            ..Default::default()
                        };
                        return Some((Ok(wire(WireEvent::from(data))), state));
                    }
                    Ok(Some(Event::End(end))) => {
                        state.done = true;
                        return Some((Ok(wire(WireEvent::from(end_event(end)))), state));
                    }
                    // The supervisor dropped the stream without an end: it cannot happen, but a
                    // stream must never end silently.
                    Ok(None) => {
                        state.done = true;
                        return Some((
                            Err(ConnectError::internal(
                                "process stream closed without an end",
                            )),
                            state,
                        ));
                    }
                }
            }
        },
    );
    futures::stream::once(async move { Ok(start) }).chain(rest)
}

fn end_event(end: ExitInfo) -> process_event::EndEvent {
    process_event::EndEvent {
        exit_code: end.exit_code,
        exited: end.exited,
        status: end.status,
        error: end.error,
        ..Default::default()
    }
}

fn wire(event: WireEvent) -> ProcessEvent {
    ProcessEvent {
        event: Some(event),
        ..Default::default()
    }
}
