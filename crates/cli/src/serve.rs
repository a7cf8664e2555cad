//! `firkin serve`: the E2B-compatible daemon over the Linux driver.

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::Args;
use firkin_e2b::{AppState, E2bConfig};
use firkin_linux::driver::{NamespaceConfig, NamespaceDriver};
use firkin_single_node::{SingleNodeBackend, SingleNodeConfig, StateStore};

/// Flags of `firkin serve` (each also a `FIRKIN_*` environment variable).
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address of the listener for the control plane and the sandbox proxy.
    #[arg(long, env = "FIRKIN_LISTEN", default_value = "127.0.0.1:49980")]
    listen: SocketAddr,
    /// API key the SDKs must send (E2B_API_KEY); default: generated once, kept in the state
    /// directory.
    #[arg(long, env = "FIRKIN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sandbox domain: `Host: <port>-<id>.<domain>` reaches a sandbox's port.
    #[arg(long, env = "FIRKIN_DOMAIN", default_value = "e2b.localhost")]
    domain: String,
    /// The static envd binary put into sandboxes (see scripts/build-envd); default:
    /// `firkin-envd` beside this executable.
    #[arg(long, env = "FIRKIN_ENVD_BIN")]
    envd_bin: Option<PathBuf>,
    /// Also serve over TLS here (recipe B: host names under the domain), with a certificate
    /// for `*.<domain>` from a local CA made on first use in `<state>/tls/`.
    #[arg(long, env = "FIRKIN_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// Sandboxes kept started ahead, so that a create only hands one out (about 1.3 MiB and
    /// one network slot each while they wait); 0 starts every sandbox at its create.
    #[arg(long, env = "FIRKIN_WARM_POOL", default_value_t = 2)]
    warm_pool: usize,
    /// Private IPv4 range the sandboxes' network slots are cut from (a /30 each); two daemons
    /// on one host need ranges that do not overlap. Default: 10.200.0.0/16.
    #[arg(long, env = "FIRKIN_SLOT_RANGE")]
    slot_range: Option<firkin_linux::net::Ipv4Net>,
    /// The disk each sandbox gets, MiB: writes past it fail with "No space left on device"
    /// inside the sandbox, and E2B's `diskSizeMB` reports it. A sparse image per sandbox, so
    /// the host gives only what is written. 0: no limit (sandboxes share the state file
    /// system). Default: 10240 (10 GiB).
    #[arg(long, env = "FIRKIN_DISK_SIZE_MB", default_value_t = firkin_linux::driver::DEFAULT_DISK_SIZE_MB)]
    disk_size_mb: u64,
}

impl ServeArgs {
    /// Take from `file` every setting that neither a flag nor its variable gave.
    pub(crate) fn apply_file(
        &mut self,
        file: crate::config_file::FileConfig,
        matches: &clap::ArgMatches,
    ) {
        let unset = |id| crate::config_file::unset(matches, id);
        if let Some(listen) = file.listen.filter(|_| unset("listen")) {
            self.listen = listen;
        }
        if let Some(domain) = file.domain.filter(|_| unset("domain")) {
            self.domain = domain;
        }
        if unset("api_key") {
            self.api_key = file.api_key.or(self.api_key.take());
        }
        if unset("envd_bin") {
            self.envd_bin = file.envd_bin.or(self.envd_bin.take());
        }
        if unset("tls_listen") {
            self.tls_listen = file.tls_listen.or(self.tls_listen.take());
        }
        if let Some(warm_pool) = file.warm_pool.filter(|_| unset("warm_pool")) {
            self.warm_pool = warm_pool;
        }
        if unset("slot_range") {
            self.slot_range = file.slot_range.or(self.slot_range.take());
        }
        if let Some(disk_size_mb) = file.disk_size_mb.filter(|_| unset("disk_size_mb")) {
            self.disk_size_mb = disk_size_mb;
        }
    }
}

pub(crate) fn run(state_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!(
            "firkin serve needs root (it creates namespaces, cgroups and network devices); run it with sudo"
        );
    }
    let envd = envd_binary(args.envd_bin.clone())?;
    // Refused before the state directory is made: a bad setting changes nothing.
    if (1..firkin_linux::disk::MIN_SIZE_MB).contains(&args.disk_size_mb) {
        bail!(firkin_linux::disk::DiskError::TooSmall(args.disk_size_mb));
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("create the state directory {}", state_dir.display()))?;
    let api_key = match args.api_key.clone() {
        Some(key) if !key.is_empty() => key,
        _ => stored_api_key(state_dir)?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(state_dir, envd, api_key, args))
}

async fn serve(
    state_dir: &Path,
    envd: PathBuf,
    api_key: String,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // This executable is also the sandbox init helper (see main).
    let helper = std::env::current_exe().context("find this executable")?;
    let mut driver_config = NamespaceConfig::new(state_dir, envd, helper);
    driver_config.warm_pool = args.warm_pool;
    driver_config.disk_size_mb = args.disk_size_mb;
    if let Some(range) = args.slot_range {
        driver_config.net.range = range;
    }
    // The durable state (state.db) shares the directory with the driver's templates,
    // sandboxes and views, so `firkin state show` reads the same directory.
    let store = StateStore::open(state_dir)
        .with_context(|| format!("open the state in {}", state_dir.display()))?;
    let driver = NamespaceDriver::for_state(driver_config, &store)
        .await
        .context("start the Linux driver")?;
    let backend = SingleNodeBackend::builder(SingleNodeConfig::new(state_dir), Arc::new(driver))
        .state(store)
        .build()
        .await
        .context("open the sandbox backend")?;
    let report = backend.startup_reconciliation();
    let _reaper = backend.spawn_reaper();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut config = E2bConfig::new(&api_key);
    config.domain = args.domain.clone();
    config.envd_version = firkin_envd::ENVD_VERSION.to_owned();
    config.disk_size_mb = (args.disk_size_mb > 0).then_some(args.disk_size_mb);
    let tls = match args.tls_listen {
        Some(tls_address) => {
            let ca = firkin_e2b::tls::LocalCa::ensure(&state_dir.join("tls"), &args.domain)
                .context("make the local CA")?;
            let server_config = ca.server_config().context("load the TLS certificate")?;
            let tls_listener = tokio::net::TcpListener::bind(tls_address)
                .await
                .with_context(|| format!("listen on {tls_address}"))?;
            let port = tls_listener.local_addr()?.port();
            // The SDK then builds https://<port>-<id>.<domain>:<tls port> by itself.
            config.domain = format!("{}:{port}", args.domain);
            config.advertise_domain = true;
            Some((tls_listener, server_config, ca))
        }
        None => None,
    };
    let state = AppState::new(backend.clone(), config);

    eprintln!(
        "firkin serve: listening on http://{address} (state {}, ready in {:.0?}; re-adopted {}, reclaimed {})",
        state_dir.display(),
        started.elapsed(),
        report.adopted.len(),
        report.reclaimed.len() + report.vanished.len(),
    );
    eprintln!("Use it from the E2B SDKs with:");
    println!("export E2B_API_URL=http://{address}");
    println!("export E2B_SANDBOX_URL=http://{address}");
    println!("export E2B_API_KEY={api_key}");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let tls_task = match tls {
        Some((tls_listener, server_config, ca)) => {
            let tls_address = tls_listener.local_addr()?;
            eprintln!(
                "firkin serve: TLS on https://api.{}:{} (CA {}); or, with host names:",
                args.domain,
                tls_address.port(),
                ca.ca_cert.display()
            );
            println!(
                "# recipe B (TLS, host names): these instead of E2B_API_URL and E2B_SANDBOX_URL"
            );
            println!("export E2B_DOMAIN={}:{}", args.domain, tls_address.port());
            println!("export SSL_CERT_FILE={}", ca.ca_cert.display());
            println!("export NODE_EXTRA_CA_CERTS={}", ca.ca_cert.display());
            let app = firkin_e2b::app(state.clone());
            Some(tokio::spawn(firkin_e2b::tls::serve_tls(
                tls_listener,
                server_config,
                app,
                until_stopped(),
            )))
        }
        None => None,
    };
    let plain = tokio::spawn(firkin_e2b::serve(listener, state, until_stopped()));
    firkin_envd::server::shutdown_signal().await;
    let _ = stop.send(true);
    // Requests in flight get a moment to finish; a long command stream does not hold the
    // daemon (the sandbox and its process live on).
    let drain = async {
        plain.await.context("serve")?.context("serve")?;
        if let Some(task) = tls_task {
            task.await.context("serve TLS")?.context("serve TLS")?;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), drain).await {
        Ok(result) => result?,
        Err(_) => eprintln!("firkin serve: connections still open after 10 s; closing them"),
    }
    backend
        .shutdown()
        .await
        .context("release the driver's network pool")?;
    eprintln!("firkin serve: stopped; sandboxes keep running and are re-adopted at the next start");
    Ok(())
}

fn envd_binary(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match flag {
        Some(path) => path,
        None => std::env::current_exe()
            .context("find this executable")?
            .with_file_name("firkin-envd"),
    };
    if !path.is_file() {
        bail!(
            "no envd binary at {}: build it with scripts/build-envd and pass --envd-bin (or FIRKIN_ENVD_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// The API key kept in `<state>/api-key` (mode 0600), made on first use.
fn stored_api_key(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    }
    let mut bytes = [0_u8; 20];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("random API key: {e}"))?;
    let key: String = format!(
        "e2b_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    std::io::Write::write_all(&mut file, key.as_bytes())?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    eprintln!(
        "firkin serve: generated an API key, kept in {}",
        path.display()
    );
    Ok(key)
}
