//! firkin-envd: the agent inside every sandbox, wire-compatible with E2B's envd.
//!
//! It serves the envd protocol on port 49983: the Connect services `process.Process` and
//! `filesystem.Filesystem` (JSON and binary protobuf, unary and streaming), and plain HTTP
//! `/files`, `/health`, `/init`, `/envs`, `/metrics`. The daemon, the driver and the E2B SDKs
//! all talk to a sandbox through it. It must not own sandbox lifecycle: that belongs to the
//! daemon and the driver.

pub mod access_token;
pub mod as_user;
pub mod auth;
pub mod filesystem;
pub mod http;
pub mod http_error;
pub mod init;
pub mod metadata;
pub mod paths;
pub mod process;
pub mod rpc;
pub mod server;
pub mod state;
pub mod sys;
pub mod users;

/// Message types and service traits generated from `proto/` (see `build.rs`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic
)]
pub mod proto {
    connectrpc::include_generated!();
}

/// The highest E2B envd version whose features this envd implements (what the daemon reports
/// as `envdVersion`; the SDKs gate features on it).
pub const ENVD_VERSION: &str = "0.6.4";
