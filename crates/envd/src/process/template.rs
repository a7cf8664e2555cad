//! A template's start and ready commands: the start command runs in the background for the
//! sandbox's life; the ready command is run again and again until it succeeds, and only then
//! does envd tell the driver it is ready (so a create answers once the template's server
//! serves, as E2B's do).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Event, ProcessError, StartSpec, service};
use crate::state::Envd;

/// The first pause between two runs of the ready command; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between two runs (E2B polls every 2 s; a create should not wait that).
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// `/bin/sh -c command` as the default user in the default working directory, with envd's
/// default environment, tagged `tag` (as `commands.list()` shows it).
fn spec(envd: &Envd, command: &str, tag: &str) -> Result<StartSpec, ProcessError> {
    let user = envd.user(None).map_err(|error| ProcessError::Spawn {
        cmd: command.to_owned(),
        source: std::io::Error::other(error.to_string()),
    })?;
    let settings = envd.settings();
    let cwd = settings.default_workdir.as_deref().map_or_else(
        || user.home.clone(),
        |dir| crate::paths::resolve(&user, dir),
    );
    let mut envs = BTreeMap::from([
        ("PATH".to_owned(), service::DEFAULT_PATH.to_owned()),
        ("HOME".to_owned(), user.home.display().to_string()),
        ("USER".to_owned(), user.name.clone()),
    ]);
    envs.extend(settings.envs);
    Ok(StartSpec {
        cmd: "/bin/sh".to_owned(),
        args: vec!["-c".to_owned(), command.to_owned()],
        envs,
        cwd,
        user,
        tag: Some(tag.to_owned()),
        stdin: false,
        pty: None,
        kill_at: None,
        oom_score_adj: settings.child_oom_score_adj,
    })
}

/// Starts the template's start command in the background, tagged `start-cmd`; its pid.
///
/// # Errors
///
/// When the default user does not exist or the shell cannot be started.
pub fn start_template_command(envd: &Envd, command: &str) -> Result<u32, ProcessError> {
    Ok(start(envd, command)?.0)
}

fn start(envd: &Envd, command: &str) -> Result<(u32, mpsc::Receiver<Event>), ProcessError> {
    let (process, events) = envd.processes().start(spec(envd, command, "start-cmd")?)?;
    Ok((process.pid(), events))
}

/// Starts `start_cmd` (if any), then runs `ready_cmd` (if any) until it exits 0.
///
/// # Errors
///
/// A message for the driver: a command could not be started, or the start command ended
/// with a failure before the ready command succeeded.
pub async fn wait_until_template_ready(
    envd: &Envd,
    start_cmd: Option<&str>,
    ready_cmd: Option<&str>,
) -> Result<(), String> {
    let mut started = match start_cmd {
        Some(command) => Some(
            start(envd, command)
                .map_err(|error| format!("the template's start command: {error}"))?
                .1,
        ),
        None => None,
    };
    let Some(ready_cmd) = ready_cmd else {
        return Ok(());
    };
    let mut pause = FIRST_PAUSE;
    loop {
        if run_to_end(envd, ready_cmd).await? == 0 {
            return Ok(());
        }
        // The start command's output goes unread here; its end matters.
        if let Some(events) = started.as_mut() {
            while let Ok(event) = events.try_recv() {
                if let Event::End(end) = event {
                    started = None;
                    if end.exit_code != 0 {
                        return Err(format!(
                            "the template's start command ended ({}) before its ready command succeeded",
                            end.status
                        ));
                    }
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Runs `command` (tagged `ready-cmd`) to its end; its exit code.
async fn run_to_end(envd: &Envd, command: &str) -> Result<i32, String> {
    let (_process, mut events) = envd
        .processes()
        .start(spec(envd, command, "ready-cmd").map_err(|e| e.to_string())?)
        .map_err(|error| format!("the template's ready command: {error}"))?;
    while let Some(event) = events.recv().await {
        if let Event::End(end) = event {
            return Ok(end.exit_code);
        }
    }
    Ok(-1)
}
