//! `firkin-envd`: run the agent, in a sandbox (as its PID 1) or standalone on a host.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use firkin_envd::process::OomScoreAdj;
use firkin_envd::state::{Envd, Settings};
use firkin_envd::users::UserDb;

/// The agent inside every firkin sandbox, speaking E2B's envd protocol.
#[derive(Debug, Parser)]
#[command(name = "firkin-envd", version, about)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "0.0.0.0:49983", env = "FIRKIN_ENVD_LISTEN")]
    listen: SocketAddr,
    /// Read the token every request must carry in X-Access-Token from this inherited file
    /// descriptor (to its end, then closed), e.g. `--access-token-fd 3 3<token-file`.
    /// Default: no token. There is deliberately no flag or variable taking the token itself:
    /// command lines and environments are readable in /proc.
    #[arg(long, value_name = "FD")]
    access_token_fd: Option<i32>,
    /// Write `ready` and a newline to this inherited file descriptor once envd accepts
    /// connections, then close it: the Linux driver waits for that line (or for the pipe to
    /// end, when envd fails to start) instead of polling `/health`.
    #[arg(long, value_name = "FD")]
    ready_fd: Option<i32>,
    /// User for requests that name none (default: `user` when it exists, else root).
    #[arg(long)]
    default_user: Option<String>,
    /// Working directory for processes that name none (default: the user's home).
    #[arg(long)]
    workdir: Option<String>,
    /// The template's start command, run in the background (`/bin/sh -c`) as the default
    /// user once envd serves; it shows in `commands.list()` with tag `start-cmd`.
    #[arg(long)]
    start_cmd: Option<String>,
    /// The template's ready command (`/bin/sh -c`, as the start command): run until it exits
    /// 0 before `--ready-fd` hears `ready`; a start command that fails first is reported
    /// there as `err <why>` and envd exits.
    #[arg(long)]
    ready_cmd: Option<String>,
    /// An environment variable of every process envd starts (the template's `ENV`), as
    /// `KEY=VALUE`; repeatable. Requests and `/init` add to them and win.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    envs: Vec<(String, String)>,
    /// Act as PID 1 (reap orphans, forward signals) even when not PID 1. Automatic as PID 1.
    #[arg(long)]
    init: bool,
    /// The oom_score_adj (-1000 to 1000) every command envd starts gets instead of envd's
    /// own, so that the OOM killer picks a command before envd. In a sandbox the driver
    /// gives envd -999 and passes 0; where it cannot lower envd's value (no
    /// CAP_SYS_RESOURCE), envd keeps its 0 and the driver passes 500. A value below envd's
    /// minimum (its oom_score_adj_min, 0 unless a privileged writer set one) is refused by
    /// the kernel, and the command then keeps envd's value.
    #[arg(
        long,
        value_name = "N",
        default_value_t = OomScoreAdj::NEUTRAL,
        allow_negative_numbers = true
    )]
    child_oom_score_adj: OomScoreAdj,
}

#[allow(unsafe_code)]
fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIRKIN_ENVD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    // First, before PID 1 forks and before any thread or child exists: no child inherits
    // the pipe, and a bad descriptor fails the start instead of serving without a token.
    let access_token = args
        .access_token_fd
        // SAFETY: the number was handed to envd for this alone, and nothing has run yet that
        // could have taken it.
        .map(|fd| unsafe { firkin_envd::access_token::read_from_fd(fd) })
        .transpose()
        .context("--access-token-fd")?;
    let ready = args
        .ready_fd
        // SAFETY: as the token's: handed to envd for this alone, and nothing has run yet.
        .map(|fd| unsafe { firkin_envd::sys::take_inherited_fd(fd) })
        .transpose()
        .and_then(|fd| {
            // Never inherited by what envd starts, even if it outlived its write.
            fd.map(|fd| {
                rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
                Ok(std::fs::File::from(fd))
            })
            .transpose()
        })
        .context("--ready-fd")?;
    // Before any thread exists: PID 1 forks off the server and stays behind as the reaper.
    if args.init || rustix::process::getpid() == rustix::process::Pid::INIT {
        // SAFETY: no thread has been started yet: the subscriber and the argument parser run
        // on this one, and the async runtime is built below.
        unsafe { firkin_envd::init::split_off_server() }.context("split PID 1 from the server")?;
    }
    let users = UserDb::default();
    let default_user = args
        .default_user
        .unwrap_or_else(|| if users.exists("user") { "user" } else { "root" }.to_owned());
    let settings = Settings {
        access_token,
        default_user,
        default_workdir: args.workdir,
        envs: args.envs.iter().cloned().collect(),
        child_oom_score_adj: args.child_oom_score_adj,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listen on {}", args.listen))?;
        let envd = Envd::new(settings, users);
        let server = tokio::spawn(firkin_envd::server::serve(
            listener,
            envd.clone(),
            firkin_envd::server::shutdown_signal(),
        ));
        let template = firkin_envd::process::wait_until_template_ready(
            &envd,
            args.start_cmd.as_deref(),
            args.ready_cmd.as_deref(),
        )
        .await;
        if let Some(mut ready) = ready {
            // The pipe is close-on-exec: no command inherited it. A reader that stopped
            // waiting is no reason to stop serving.
            let line = match &template {
                Ok(()) => "ready\n".to_owned(),
                Err(error) => format!("err {}\n", error.replace('\n', " ")),
            };
            if let Err(error) = std::io::Write::write_all(&mut ready, line.as_bytes()) {
                tracing::warn!("--ready-fd: {error}");
            }
        }
        template.map_err(anyhow::Error::msg)?;
        server.await.context("the server task")?.context("serve")
    })
}

fn parse_env(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{pair:?} is not KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child_oom_score_adj(flags: &[&str]) -> Result<i32, String> {
        Args::try_parse_from(std::iter::once("firkin-envd").chain(flags.iter().copied()))
            .map(|args| args.child_oom_score_adj.get())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn child_oom_score_adj_is_a_checked_number_defaulting_to_0() {
        assert_eq!(child_oom_score_adj(&[]), Ok(0));
        assert_eq!(
            child_oom_score_adj(&["--child-oom-score-adj", "500"]),
            Ok(500)
        );
        assert_eq!(
            child_oom_score_adj(&["--child-oom-score-adj", "-999"]),
            Ok(-999)
        );
        assert_eq!(
            child_oom_score_adj(&["--child-oom-score-adj=1000"]),
            Ok(1000)
        );
        for bad in ["1001", "-1001", "abc", ""] {
            let error = child_oom_score_adj(&["--child-oom-score-adj", bad]).unwrap_err();
            assert!(
                error.contains("--child-oom-score-adj") && error.contains("-1000 to 1000"),
                "{bad:?}: {error}"
            );
        }
    }
}
