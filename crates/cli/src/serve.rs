//! `firkin serve`: the E2B-compatible daemon over the Linux driver.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt as _;
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
    /// Refused: a key on the command line is readable by every user of the host (`ps`).
    /// Kept, hidden, to say so instead of "unexpected argument".
    #[arg(long = "api-key", hide = true, value_name = "KEY")]
    api_key_on_command_line: Option<String>,
    /// File holding the API key the SDKs must send (E2B_API_KEY). The key may instead come
    /// in FIRKIN_API_KEY (which wins); default: generated once into <state>/api-key (0600).
    #[arg(long, env = "FIRKIN_API_KEY_FILE", value_name = "PATH")]
    api_key_file: Option<PathBuf>,
    /// `api-key` from the settings file.
    #[arg(skip)]
    config_api_key: Option<String>,
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
    /// How far the warm pool grows while creates find it empty (bursts): each such create
    /// adds one, up to this; a minute without one shrinks it back to --warm-pool step by step.
    #[arg(long, env = "FIRKIN_WARM_POOL_MAX", default_value_t = firkin_linux::driver::DEFAULT_WARM_POOL_MAX)]
    warm_pool_max: usize,
    /// Sandboxes each template other than base keeps started ahead, from its first create
    /// on (its start command running, its ready command passed); 0: none.
    #[arg(long, env = "FIRKIN_WARM_POOL_PER_TEMPLATE", default_value_t = 1)]
    warm_pool_per_template: usize,
    /// `NAME=N`: the template NAME keeps N sandboxes started ahead instead (0: none);
    /// repeatable, or comma-separated.
    #[arg(
        long,
        env = "FIRKIN_WARM_POOL_TEMPLATE",
        value_delimiter = ',',
        value_name = "NAME=N",
        value_parser = parse_pool_size
    )]
    warm_pool_template: Vec<(String, usize)>,
    /// How many templates other than base keep warm sandboxes at once (the most recently
    /// used ones).
    #[arg(long, env = "FIRKIN_WARM_TEMPLATES", default_value_t = 4)]
    warm_templates: usize,
    /// Private IPv4 range the sandboxes' network slots are cut from (a /30 each); two daemons
    /// on one host need ranges that do not overlap. Default: 10.200.0.0/16.
    #[arg(long, env = "FIRKIN_SLOT_RANGE")]
    slot_range: Option<firkin_linux::net::Ipv4Net>,
    /// Connections each listener serves at once; further clients wait in the listen backlog
    /// until one closes.
    #[arg(
        long,
        env = "FIRKIN_MAX_CONNECTIONS",
        default_value_t = firkin_e2b::listener::ConnectionLimits::DEFAULT_MAX_CONNECTIONS,
        value_parser = at_least_one
    )]
    max_connections: usize,
    /// Private IPv4 ranges (comma-separated CIDRs inside 10.0.0.0/8, 172.16.0.0/12,
    /// 192.168.0.0/16 or 100.64.0.0/10) that sandboxes with internet access may reach after
    /// all; by default they reach none. The host and every sandbox stay unreachable.
    #[arg(
        long,
        env = "FIRKIN_EGRESS_ALLOW_PRIVATE",
        value_delimiter = ',',
        value_parser = parse_private_range
    )]
    egress_allow_private: Vec<firkin_linux::net::Ipv4Net>,
    /// Registries (`host:port`, comma-separated) that template builds pull from over plain
    /// HTTP, e.g. one on loopback; every other registry is spoken to over HTTPS.
    #[arg(long, env = "FIRKIN_INSECURE_REGISTRIES", value_delimiter = ',')]
    insecure_registry: Vec<String>,
    /// The disk each sandbox gets, MiB: writes past it fail with "No space left on device"
    /// inside the sandbox, and E2B's `diskSizeMB` reports it. A sparse image per sandbox, so
    /// the host gives only what is written. 0: no limit (sandboxes share the state file
    /// system). Default: 10240 (10 GiB).
    #[arg(long, env = "FIRKIN_DISK_SIZE_MB", default_value_t = firkin_linux::driver::DEFAULT_DISK_SIZE_MB)]
    disk_size_mb: u64,
    /// Admission: how many sandboxes, overcommit, memory pressure.
    #[command(flatten)]
    capacity: crate::capacity_args::CapacityArgs,
}

/// A count of 1 or more.
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(error) => Err(error.to_string()),
    }
}

/// `NAME=N` of `--warm-pool-template`.
pub(crate) fn parse_pool_size(text: &str) -> Result<(String, usize), String> {
    let (name, size) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=N"))?;
    let size = size
        .trim()
        .parse()
        .map_err(|_| format!("{text:?}: {size:?} is not a number of sandboxes"))?;
    Ok((name.trim().to_lowercase(), size))
}

/// One `--egress-allow-private` CIDR, checked as the driver would.
fn parse_private_range(text: &str) -> Result<firkin_linux::net::Ipv4Net, String> {
    firkin_linux::net::egress::parse_opt_in(text).map_err(|e| e.to_string())
}

impl ServeArgs {
    /// Take from `file` every setting that neither a flag nor its variable gave.
    pub(crate) fn apply_file(
        &mut self,
        file: crate::config_file::FileConfig,
        matches: &clap::ArgMatches,
    ) {
        self.capacity.apply_file(&file, matches);
        let unset = |id| crate::config_file::unset(matches, id);
        if let Some(listen) = file.listen.filter(|_| unset("listen")) {
            self.listen = listen;
        }
        if let Some(domain) = file.domain.filter(|_| unset("domain")) {
            self.domain = domain;
        }
        self.config_api_key = file.api_key;
        if unset("api_key_file") {
            self.api_key_file = file.api_key_file.or(self.api_key_file.take());
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
        if let Some(per) = file
            .warm_pool_per_template
            .filter(|_| unset("warm_pool_per_template"))
        {
            self.warm_pool_per_template = per;
        }
        if let Some(sizes) = file
            .warm_pool_template
            .clone()
            .filter(|_| unset("warm_pool_template"))
        {
            self.warm_pool_template = sizes;
        }
        if let Some(count) = file.warm_templates.filter(|_| unset("warm_templates")) {
            self.warm_templates = count;
        }
        if let Some(registries) = file
            .insecure_registry
            .clone()
            .filter(|_| unset("insecure_registry"))
        {
            self.insecure_registry = registries;
        }
        if let Some(max) = file.warm_pool_max.filter(|_| unset("warm_pool_max")) {
            self.warm_pool_max = max;
        }
        if unset("slot_range") {
            self.slot_range = file.slot_range.or(self.slot_range.take());
        }
        if let Some(max) = file.max_connections.filter(|_| unset("max_connections")) {
            self.max_connections = max;
        }
        if let Some(ranges) = file
            .egress_allow_private
            .filter(|_| unset("egress_allow_private"))
        {
            self.egress_allow_private = ranges;
        }
        if let Some(disk_size_mb) = file.disk_size_mb.filter(|_| unset("disk_size_mb")) {
            self.disk_size_mb = disk_size_mb;
        }
    }
}

pub(crate) fn run(state_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    if args.api_key_on_command_line.is_some() {
        bail!(
            "--api-key is not accepted: a command line is readable by every user of the host. \
             Pass the key in FIRKIN_API_KEY or in a file (--api-key-file), or leave it out to \
             use the generated <state>/api-key"
        );
    }
    if !crate::is_root() {
        bail!(
            "firkin serve needs root (it creates namespaces, cgroups and network devices); run it with sudo"
        );
    }
    let envd = envd_binary(args.envd_bin.clone())?;
    // Refused before the state directory is made: a bad setting changes nothing.
    firkin_linux::disk::check_size(args.disk_size_mb)?;
    let environment_key = match std::env::var_os("FIRKIN_API_KEY") {
        None => None,
        Some(key) => Some(
            key.into_string()
                .map_err(|_| anyhow::anyhow!("FIRKIN_API_KEY is not UTF-8"))?,
        ),
    };
    // Owner-only from the start (the driver then opens it to 0711, see `state_dir`).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(state_dir)
        .with_context(|| format!("create the state directory {}", state_dir.display()))?;
    let api_key = crate::api_key::resolve(
        crate::api_key::KeySettings {
            environment: environment_key,
            key_file: args.api_key_file.clone(),
            config_file: args.config_api_key.clone(),
        },
        state_dir,
    )?;
    if let crate::api_key::KeySource::Generated(path) = &api_key.source {
        eprintln!(
            "firkin serve: generated an API key, kept in {} (read it back with: sudo cat {0})",
            path.display()
        );
    }
    match firkin_linux::sandbox::spawn::protect_daemon_from_oom() {
        Ok(true) => {}
        Ok(false) => eprintln!(
            "firkin serve: no CAP_SYS_RESOURCE: the daemon cannot keep itself out of the OOM \
             killer's reach"
        ),
        Err(error) => eprintln!("firkin serve: cannot set the daemon's oom_score_adj: {error}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(state_dir, envd, api_key, args))
}

async fn serve(
    state_dir: &Path,
    envd: PathBuf,
    api_key: crate::api_key::ApiKey,
    args: ServeArgs,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // This executable is also the sandbox init helper (see main).
    let helper = std::env::current_exe().context("find this executable")?;
    let mut driver_config = NamespaceConfig::new(state_dir, envd, helper);
    driver_config.warm_pool = args.warm_pool;
    driver_config.warm_pool_max = args.warm_pool_max;
    driver_config.warm_pool_per_template = args.warm_pool_per_template;
    driver_config.warm_templates = args.warm_templates;
    driver_config.warm_pool_of = args.warm_pool_template.iter().cloned().collect();
    let scheduler = args.capacity.scheduler();
    driver_config.warm_pool_min_available_memory = scheduler.min_available_memory_bytes;
    driver_config.disk_size_mb = args.disk_size_mb;
    if let Some(range) = args.slot_range {
        driver_config.net.range = range;
    }
    driver_config.net.egress_allow_private = args.egress_allow_private.clone();
    // The durable state (state.db) shares the directory with the driver's templates,
    // sandboxes and views, so `firkin state show` reads the same directory.
    let store = StateStore::open(state_dir)
        .with_context(|| format!("open the state in {}", state_dir.display()))?;
    let templates = crate::template_cmd::open_templates(state_dir, driver_config.id_shift)?;
    let driver = NamespaceDriver::for_state(driver_config, &store)
        .await
        .context("start the Linux driver")?;
    let backend_config = SingleNodeConfig::new(state_dir).with_scheduler(scheduler);
    let backend = SingleNodeBackend::builder(backend_config, Arc::new(driver))
        .state(store)
        .templates(Arc::clone(&templates) as Arc<dyn firkin_single_node::TemplateSource>)
        .build()
        .await
        .context("open the sandbox backend")?;
    let report = backend.startup_reconciliation();
    let _reaper = backend.spawn_reaper();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let mut config = E2bConfig::new(&api_key.key);
    config.domain = args.domain.clone();
    config.envd_version = firkin_envd::ENVD_VERSION.to_owned();
    config.connections.max_connections = args.max_connections;
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
    let pull = firkin_image::PullOptions {
        insecure_registries: args.insecure_registry.clone(),
        ..firkin_image::PullOptions::default()
    };
    let builder = firkin_build::Builder::new(
        Arc::clone(&templates),
        backend.clone(),
        state_dir.join("images/uploads"),
        pull,
        // The driver's `base` (NamespaceDriver builds it there).
        Some(state_dir.join("templates/base/rootfs")),
    );
    let (interrupted, orphans) = builder.clean_up_interrupted().await?;
    if interrupted + orphans > 0 {
        eprintln!(
            "firkin serve: {interrupted} template builds the last daemon left unfinished are \
             marked failed; {orphans} of their build sandboxes deleted"
        );
    }
    let state = AppState::with_builder(backend.clone(), config, builder);

    eprintln!(
        "firkin serve: listening on http://{address} (state {}, ready in {:.0?}; re-adopted {}, reclaimed {})",
        state_dir.display(),
        started.elapsed(),
        report.adopted.len(),
        report.reclaimed.len() + report.vanished.len(),
    );
    eprintln!(
        "firkin serve: {}",
        crate::capacity_args::describe(&scheduler)
    );
    eprintln!("Use it from the E2B SDKs with:");
    println!("export E2B_API_URL=http://{address}");
    println!("export E2B_SANDBOX_URL=http://{address}");
    println!("{}", api_key.banner_line());

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
                state.config.connections,
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, FromArgMatches as _, Parser};

    use super::ServeArgs;

    #[derive(Debug, Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> Result<(ServeArgs, clap::ArgMatches), clap::Error> {
        let matches = Serve::command().try_get_matches_from(argv)?;
        Ok((Serve::from_arg_matches(&matches)?.args, matches))
    }

    fn texts(ranges: &[firkin_linux::net::Ipv4Net]) -> Vec<String> {
        ranges.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn warm_pool_template_takes_sizes_by_name_from_the_flag_or_the_file() {
        let (args, _) = parse(&["serve", "--warm-pool-template", "Py=3,node=0"]).unwrap();
        assert_eq!(
            args.warm_pool_template,
            [("py".to_owned(), 3), ("node".to_owned(), 0)]
        );
        for bad in ["py", "py=many"] {
            let error = parse(&["serve", "--warm-pool-template", bad]).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
        let (mut args, matches) = parse(&["serve"]).unwrap();
        args.apply_file(
            crate::config_file::FileConfig {
                warm_pool_template: Some(vec![("app".to_owned(), 2)]),
                ..Default::default()
            },
            &matches,
        );
        assert_eq!(args.warm_pool_template, [("app".to_owned(), 2)]);
    }

    #[test]
    fn egress_allow_private_takes_private_cidrs_from_the_flag_or_the_file() {
        let (args, _) = parse(&["serve"]).unwrap();
        assert!(args.egress_allow_private.is_empty(), "none by default");
        let (args, _) = parse(&[
            "serve",
            "--egress-allow-private",
            "192.168.1.0/24,10.0.0.0/8",
        ])
        .unwrap();
        assert_eq!(
            texts(&args.egress_allow_private),
            ["192.168.1.0/24", "10.0.0.0/8"]
        );
        for bad in ["8.8.8.0/24", "192.168.1.1/24", "169.254.0.0/16", "fc00::/7"] {
            let error = parse(&["serve", "--egress-allow-private", bad]).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }

        // The file applies unless the flag was given.
        let file = || crate::config_file::FileConfig {
            egress_allow_private: Some(vec!["172.16.0.0/12".parse().unwrap()]),
            ..Default::default()
        };
        let (mut args, matches) = parse(&["serve"]).unwrap();
        args.apply_file(file(), &matches);
        assert_eq!(texts(&args.egress_allow_private), ["172.16.0.0/12"]);
        let (mut args, matches) =
            parse(&["serve", "--egress-allow-private", "100.64.0.0/10"]).unwrap();
        args.apply_file(file(), &matches);
        assert_eq!(texts(&args.egress_allow_private), ["100.64.0.0/10"]);
    }
}
