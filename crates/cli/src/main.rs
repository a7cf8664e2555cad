//! `firkin`: the sandbox runtime's command line.
//!
//! `firkin serve` runs the E2B-compatible daemon; `firkin state ...` manages its durable
//! state, `firkin template ...` its image store, and `firkin doctor` checks the host. The same executable is the sandbox init helper
//! the Linux driver starts for each sandbox (when `FIRKIN_INIT_SPEC` is set).

// Denied, not forbidden: `main` may become a sandbox's init helper, an `unsafe` call.
#![deny(unsafe_code)]

mod api_key;
mod capacity_args;
mod config_file;
mod doctor_capacity;
mod sandbox_cmd;
mod serve;
mod state_cmd;
mod template_build;
mod template_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

/// firkin: a self-hosted sandbox runtime for AI agents, speaking the E2B protocol.
#[derive(Debug, Parser)]
#[command(name = "firkin", version, about, long_about = None)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Inspect and import the daemon's durable state.
    State {
        /// State directory (default: /var/lib/firkin for root, else $XDG_STATE_HOME/firkin).
        #[arg(long, env = "FIRKIN_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,

        #[command(subcommand)]
        command: state_cmd::StateCommand,
    },
    /// Run the E2B-compatible daemon: the control plane and the sandbox proxy on one listener.
    ///
    /// Settings come from firkin.toml, then FIRKIN_* variables, then flags (the last wins).
    Serve {
        /// State directory (default: /var/lib/firkin for root, else $XDG_STATE_HOME/firkin).
        #[arg(long, env = "FIRKIN_STATE_DIR")]
        state_dir: Option<PathBuf>,

        /// Settings file (default: /etc/firkin/firkin.toml for root, else
        /// $XDG_CONFIG_HOME/firkin/firkin.toml; a missing default file is fine).
        #[arg(long, env = "FIRKIN_CONFIG")]
        config: Option<PathBuf>,

        #[command(flatten)]
        args: Box<serve::ServeArgs>,
    },
    /// Bring images in as templates (pull, import, or a Dockerfile built by the daemon), tag,
    /// list, remove and prune them.
    Template {
        /// State directory (default: /var/lib/firkin for root, else $XDG_STATE_HOME/firkin).
        #[arg(long, env = "FIRKIN_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,

        #[command(subcommand)]
        command: template_cmd::TemplateCommand,
    },
    /// Create, list, run commands in, pause, resume and kill sandboxes of a running daemon.
    Sandbox {
        /// State directory of the daemon, to find its API key when none is given.
        #[arg(long, env = "FIRKIN_STATE_DIR", global = true)]
        state_dir: Option<PathBuf>,

        #[command(flatten)]
        client: sandbox_cmd::ClientArgs,

        #[command(subcommand)]
        command: sandbox_cmd::SandboxCommand,
    },
    /// Check which kernel features this host has, and what does not work without them; show
    /// the admission capacity, the host's memory pressure, and (if a daemon answers at
    /// `--url`) what it admitted and why it last refused.
    ///
    /// Always exits 0: a missing feature is reported, not an error.
    Doctor {
        /// The daemon to ask for its admission state (its public `/metrics`).
        #[arg(long, env = "FIRKIN_URL", default_value = "http://127.0.0.1:49980")]
        url: String,
    },
}

#[allow(unsafe_code)]
fn main() -> ExitCode {
    // Started by the Linux driver as a sandbox's init helper: a fresh single-threaded process
    // that must do nothing else first.
    if std::env::var_os(firkin_linux::sandbox::InitSpec::ENV_SPEC).is_some() {
        // SAFETY: nothing has run yet, so this is the process's only thread, and the status
        // and go pipes the driver passed as stdout and stdin are untouched; the helper takes them over.
        unsafe { firkin_linux::sandbox::init::main_from_env() };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FIRKIN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::State { state_dir, command } => {
            let dir = state_dir.unwrap_or_else(default_state_dir);
            state_cmd::run(&dir, command, cli.json)
        }
        Command::Template { state_dir, command } => {
            let dir = state_dir.unwrap_or_else(default_state_dir);
            template_cmd::run(&dir, command, cli.json)
        }
        Command::Serve {
            state_dir,
            config,
            mut args,
        } => (|| {
            let file = config_file::load(config.as_deref())?;
            let serve_matches = matches
                .subcommand_matches("serve")
                .expect("the serve subcommand was parsed");
            let state_dir = if config_file::unset(serve_matches, "state_dir") {
                file.state_dir.clone().or(state_dir)
            } else {
                state_dir
            };
            args.apply_file(file, serve_matches);
            serve::run(&state_dir.unwrap_or_else(default_state_dir), *args)
        })(),
        Command::Sandbox {
            state_dir,
            client,
            command,
        } => {
            let dir = state_dir.unwrap_or_else(default_state_dir);
            match sandbox_cmd::run(&dir, client, command, cli.json) {
                // The exit code of `exec` is the command's.
                Ok(code) if code != 0 => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
                other => other.map(|_| ()),
            }
        }
        Command::Doctor { url } => doctor(&url, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("firkin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `firkin doctor`: the report as a table, or as JSON with `--json` (the summary line then goes
/// to stderr, so stdout stays one JSON document).
fn doctor(url: &str, json: bool) -> anyhow::Result<()> {
    let report = firkin_linux::doctor::DoctorReport::run();
    let capacity = doctor_capacity::CapacitySection::probe(url);
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["capacity"] = capacity.to_json();
        value["passed"] = report.passed().into();
        value["failed"] = (report.checks.len() - report.passed()).into();
        value["summary"] = report.summary().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
        eprintln!("{}", report.summary());
    } else {
        print!("{capacity}\n{report}");
    }
    Ok(())
}

/// `/var/lib/firkin` for root; otherwise `$XDG_STATE_HOME/firkin`, falling back to
/// `~/.local/state/firkin`.
fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/firkin");
    }
    if let Some(state_home) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(state_home).join("firkin");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/firkin")
}

fn is_root() -> bool {
    // The owner of /proc/self is the process's effective uid; avoids unsafe `geteuid`.
    std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0)
}
