//! What the driver tells the init helper.

use std::path::PathBuf;

/// Everything the init helper needs to build one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InitSpec {
    /// Hostname (the sandbox id).
    pub hostname: String,
    /// The slot's network namespace file; `None` makes a fresh, isolated one.
    pub netns: Option<PathBuf>,
    /// Overlay lower layers, topmost first.
    pub lower_dirs: Vec<PathBuf>,
    /// Overlay upper directory (the sandbox's private writes).
    pub upper_dir: PathBuf,
    /// Overlay work directory (same file system as `upper_dir`).
    pub work_dir: PathBuf,
    /// Where the root filesystem is assembled (an empty directory).
    pub root_dir: PathBuf,
    /// Host directories mounted over the root overlay, in order.
    pub layers: Vec<LayerMount>,
    /// The envd binary on the host; bound read-only at [`InitSpec::ENVD_PATH`].
    pub envd_binary: PathBuf,
    /// envd's arguments.
    pub envd_args: Vec<String>,
    /// envd's environment.
    pub envd_env: Vec<(String, String)>,
    /// The token envd demands of every request. Never serialized: [`crate::sandbox::spawn::launch`]
    /// hands it to the helper on its go pipe, and the helper to envd in a pipe of its own
    /// (`--access-token-fd`), so it appears on no command line and in no environment.
    #[serde(skip)]
    pub envd_access_token: Option<EnvdAccessToken>,
    /// Set `no_new_privs` on PID 1 (and so on every process of the sandbox): setuid binaries
    /// such as `sudo` then gain nothing. A template option; off for `base`, whose users expect
    /// `sudo` to work.
    #[serde(default)]
    pub no_new_privs: bool,
}

/// envd's access token; its `Debug` hides it, so that a logged spec shows no secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvdAccessToken(pub String);

impl std::fmt::Debug for EnvdAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvdAccessToken(..)")
    }
}

/// A host directory (usually an idmapped view, see [`crate::idmap`]) mounted inside a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerMount {
    /// The host directory; never written.
    pub source: PathBuf,
    /// Where it appears inside the sandbox (absolute).
    pub target: PathBuf,
    /// The sandbox's private upper and work directories when it may write there (an overlay
    /// with `source` as its lower layer); `None` binds `source` read-only.
    pub overlay: Option<(PathBuf, PathBuf)>,
    /// More lower layers above `source`, topmost first (a template's own files under this
    /// target); only with `overlay`.
    #[serde(default)]
    pub extra_lowers: Vec<PathBuf>,
}

impl InitSpec {
    /// Where envd appears inside the sandbox.
    pub const ENVD_PATH: &'static str = "/run/firkin/envd";
    /// Environment variable carrying the JSON spec to the helper.
    pub const ENV_SPEC: &'static str = "FIRKIN_INIT_SPEC";
    /// Environment variable carrying the `cgroup.procs` files the helper joins first (a JSON
    /// list of paths), so that the sandbox's every process and its cgroup namespace start
    /// inside the sandbox's cgroups.
    pub const ENV_CGROUP_PROCS: &'static str = "FIRKIN_INIT_CGROUP_PROCS";
}
