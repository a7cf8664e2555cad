//! `firkin sandbox ...`: a client of the daemon's own E2B REST API (and, for `exec`, of a
//! sandbox's envd through the daemon's proxy), as an SDK user would see it.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// Where the daemon is.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// The daemon's URL.
    #[arg(
        long,
        env = "FIRKIN_URL",
        default_value = "http://127.0.0.1:49980",
        global = true
    )]
    url: String,
    /// A file holding the daemon's API key (which no other user may read). The key may
    /// instead come in FIRKIN_API_KEY (which wins); default: the key `firkin serve` keeps in
    /// the state directory.
    #[arg(long, env = "FIRKIN_API_KEY_FILE", value_name = "PATH", global = true)]
    api_key_file: Option<std::path::PathBuf>,
    /// Refused: a key on the command line is readable by every user of the host (`ps`).
    #[arg(long = "api-key", hide = true, value_name = "KEY", global = true)]
    api_key_on_command_line: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create {
        /// Template.
        #[arg(long, default_value = "base")]
        template: String,
        /// Seconds until it is killed (the daemon's default when absent).
        #[arg(long)]
        timeout: Option<u64>,
        /// Metadata, `key=value` (repeatable).
        #[arg(long = "metadata", value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// Environment of its processes, `KEY=value` (repeatable).
        #[arg(long = "env", value_parser = key_value)]
        env: Vec<(String, String)>,
    },
    /// List running and paused sandboxes.
    Ls,
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec {
        /// The sandbox.
        id: String,
        /// Run as this user (default: the sandbox's default user).
        #[arg(long)]
        user: Option<String>,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a sandbox's log.
    Logs {
        /// The sandbox.
        id: String,
    },
    /// Freeze a sandbox (memory kept, no CPU).
    Pause {
        /// The sandbox.
        id: String,
    },
    /// Thaw a paused sandbox.
    Resume {
        /// The sandbox.
        id: String,
    },
    /// Delete a sandbox.
    Kill {
        /// The sandbox.
        id: String,
    },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not key=value"))
}

pub(crate) struct Client {
    url: String,
    api_key: String,
}

impl Client {
    pub(crate) fn new(args: ClientArgs, state_dir: &Path) -> anyhow::Result<Self> {
        if args.api_key_on_command_line.is_some() {
            bail!(
                "--api-key is not accepted: a command line is readable by every user of the \
                 host. Pass the key in FIRKIN_API_KEY or in a file (--api-key-file)"
            );
        }
        let from_environment = std::env::var("FIRKIN_API_KEY")
            .ok()
            .filter(|key| !key.trim().is_empty());
        let api_key = match (from_environment, args.api_key_file) {
            (Some(key), _) => key.trim().to_owned(),
            (None, Some(path)) => crate::api_key::read_key_file(&path)?,
            (None, None) => std::fs::read_to_string(state_dir.join("api-key"))
                .map(|key| key.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no API key: set FIRKIN_API_KEY or --api-key-file (firkin serve keeps \
                         it in {})",
                        state_dir.join("api-key").display()
                    )
                })?,
        };
        Ok(Self {
            url: args.url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// A control-plane call; E2B error bodies become errors with their message.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let request =
            ureq::request(method, &format!("{}{path}", self.url)).set("X-API-KEY", &self.api_key);
        let response = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match response {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                bail!("{method} {path}: {status}: {message}");
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "cannot reach the daemon at {} (is firkin serve running?)",
                        self.url
                    )
                });
            }
        };
        let text = response.into_string()?;
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).context("the daemon answered something that is not JSON")?
        })
    }
}

pub(crate) fn run(
    state_dir: &Path,
    client: ClientArgs,
    command: SandboxCommand,
    json: bool,
) -> anyhow::Result<i32> {
    let client = Client::new(client, state_dir)?;
    let print = |value: &Value, text: &str| {
        if json {
            println!("{value}");
        } else if !text.is_empty() {
            println!("{text}");
        }
    };
    match command {
        SandboxCommand::Create {
            template,
            timeout,
            metadata,
            env,
        } => {
            let mut body = json!({
                "templateID": template,
                "metadata": metadata.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "envVars": env.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            if let Some(timeout) = timeout {
                body["timeout"] = timeout.into();
            }
            let sandbox = client.call("POST", "/v2/sandboxes", Some(body))?;
            print(&sandbox, sandbox["sandboxID"].as_str().unwrap_or_default());
        }
        SandboxCommand::Ls => {
            let list = client.call("GET", "/v2/sandboxes?limit=1000", None)?;
            if json {
                println!("{list}");
            } else {
                println!(
                    "{:<22} {:<10} {:<8} {:<25} END",
                    "ID", "TEMPLATE", "STATE", "STARTED"
                );
                for sandbox in list.as_array().into_iter().flatten() {
                    let field = |key: &str| sandbox[key].as_str().unwrap_or("-").to_owned();
                    println!(
                        "{:<22} {:<10} {:<8} {:<25} {}",
                        field("sandboxID"),
                        field("templateID"),
                        field("state"),
                        field("startedAt"),
                        field("endAt")
                    );
                }
            }
        }
        SandboxCommand::Exec { id, user, command } => {
            return exec(&client, &id, user.as_deref(), &command, json);
        }
        SandboxCommand::Logs { id } => {
            let logs = client.call("GET", &format!("/sandboxes/{id}/logs"), None)?;
            if json {
                println!("{logs}");
            } else {
                for line in logs["logs"].as_array().into_iter().flatten() {
                    println!(
                        "{} {}",
                        line["timestamp"].as_str().unwrap_or_default(),
                        line["line"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        SandboxCommand::Pause { id } => {
            client.call("POST", &format!("/sandboxes/{id}/pause"), Some(json!({})))?;
            print(&json!({ "sandboxID": id, "state": "paused" }), "");
        }
        SandboxCommand::Resume { id } => {
            let sandbox = client.call(
                "POST",
                &format!("/v2/sandboxes/{id}/connect"),
                Some(json!({})),
            )?;
            print(&sandbox, "");
        }
        SandboxCommand::Kill { id } => {
            client.call("DELETE", &format!("/sandboxes/{id}"), None)?;
            print(&json!({ "sandboxID": id, "killed": true }), "");
        }
    }
    Ok(0)
}

/// One Connect envelope around a JSON message.
fn envelope(message: &Value) -> Vec<u8> {
    let payload = message.to_string().into_bytes();
    let mut framed = vec![0_u8];
    framed.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(&payload);
    framed
}

/// `process.Process/Start` through the proxy; copies the output as it comes and returns the
/// exit code (128 + signal for a killed process, as a shell reports it).
fn exec(
    client: &Client,
    id: &str,
    user: Option<&str>,
    command: &[String],
    json: bool,
) -> anyhow::Result<i32> {
    let sandbox = client.call("GET", &format!("/sandboxes/{id}"), None)?;
    // `env` finds the command on the sandbox's PATH, as a shell would.
    let start = json!({
        "process": { "cmd": "/usr/bin/env", "args": command },
        "stdin": false,
    });
    let mut request = ureq::post(&format!("{}/process.Process/Start", client.url))
        .set("E2b-Sandbox-Id", id)
        .set("E2b-Sandbox-Port", "49983")
        .set("Content-Type", "application/connect+json")
        .set("Connect-Protocol-Version", "1");
    if let Some(token) = sandbox["envdAccessToken"].as_str() {
        request = request.set("X-Access-Token", token);
    }
    if let Some(user) = user {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:"));
        request = request.set("Authorization", &format!("Basic {basic}"));
    }
    let response = match request.send_bytes(&envelope(&start)) {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response)) => {
            bail!(
                "exec in {id}: {status}: {}",
                response.into_string().unwrap_or_default()
            )
        }
        Err(error) => return Err(error).context("cannot reach the daemon"),
    };
    let mut body = response.into_reader();
    let decode = |text: &str| base64::engine::general_purpose::STANDARD.decode(text);
    let mut exit_code = None;
    loop {
        let mut header = [0_u8; 5];
        match body.read_exact(&mut header) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(error) => return Err(error).context("read the command's output"),
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut payload = vec![0_u8; len];
        body.read_exact(&mut payload)?;
        let message: Value = serde_json::from_slice(&payload).context("bad event from envd")?;
        if header[0] & 0x02 != 0 {
            if let Some(error) = message.get("error") {
                bail!(
                    "exec in {id}: {}",
                    error["message"].as_str().unwrap_or("failed")
                );
            }
            break;
        }
        if json {
            println!("{message}");
        }
        let event = &message["event"];
        if let Some(data) = event.get("data") {
            if json {
                continue;
            }
            if let Some(out) = data["stdout"].as_str() {
                std::io::stdout().write_all(&decode(out)?)?;
                std::io::stdout().flush()?;
            }
            if let Some(err) = data["stderr"].as_str() {
                std::io::stderr().write_all(&decode(err)?)?;
            }
        } else if let Some(end) = event.get("end") {
            let code = end["exitCode"].as_i64().unwrap_or(0);
            let status = end["status"].as_str().unwrap_or_default();
            exit_code = Some(if code < 0 && status.starts_with("signal") {
                // envd reports a killed process as -1 with "signal: killed".
                137
            } else {
                i32::try_from(code).unwrap_or(1)
            });
        }
    }
    exit_code.with_context(|| format!("the command in {id} ended without an exit status"))
}
