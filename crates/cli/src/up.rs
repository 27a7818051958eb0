//! `tidepool up`, `server` and `agent`: bind, start, wait for Ctrl-C.

use crate::cli::{AgentArgs, EmulatorArgs, GatewayArgs, ServerArgs, UpArgs};
use tidepool_gateway::emulator::EmulatorConfig;
use tidepool_gateway::GatewayConfig;
use std::path::Path;
use std::time::Duration;
use tidepool_agent::AgentConfig;
use tidepool_server::Config;

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

/// Completes on the first SIGINT or SIGTERM, after logging which came.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let name = tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => "SIGTERM",
    };
    tracing::info!("{name}: stopping");
}

/// This machine's host name.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

async fn bind(args: &ServerArgs) -> Result<(tokio::net::TcpListener, Config), String> {
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let data_dir = std::path::absolute(&args.data_dir).map_err(|e| e.to_string())?;
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    let mut config = Config::new(data_dir, format!("{scheme}://{addr}"));
    // Read here, so bad files are refused before anything starts.
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(tidepool_server::tls::server_config(cert, key).map_err(|e| e.to_string())?);
    }
    config.max_array_size = args.max_array_size;
    config.known_pools = vec!["local".into()];
    config.agent_lease_ms = args.agent_lease * 1000;
    config.snapshot_every = args.snapshot_every;
    config.keep_finished_ms = args.keep_finished * 1000;
    config.limits = tidepool_server::http::Limits {
        header_read_timeout: Duration::from_secs(args.header_timeout),
        idle_timeout: Duration::from_secs(args.idle_timeout),
        max_connections: args.max_connections as usize,
        max_body_bytes: (args.max_body_mib << 20) as usize,
    };
    config.projects = args.project.iter().map(|p| parse_project(p)).collect::<Result<_, _>>()?;
    Ok((listener, config))
}

/// Creates `dir` owner-only, or makes an existing one so: a directory that others could enter
/// (made by an older release, or by hand) has every entry under it stripped of group and
/// other permissions, once, with one log line.
pub fn make_private(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |e: std::io::Error| format!("cannot make {} private: {e}", dir.display());
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(fail);
        }
        Err(e) => return Err(fail(e)),
        Ok(m) if m.permissions().mode() & 0o077 == 0 => return Ok(()),
        Ok(_) => {}
    }
    let mut n_fixed = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7700)).map_err(fail)?;
            n_fixed += 1;
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).map_err(fail)?.flatten().map(|e| e.path()));
        }
    }
    tracing::warn!(dir = %dir.display(), n_fixed, "the data directory was readable by others: made it and everything in it owner-only");
    Ok(())
}

fn prepare_tokens(data_dir: &Path) -> Result<String, String> {
    make_private(data_dir)?;
    tidepool_server::tokens::load_or_create(&data_dir.join("admin.token"), "tpa_").map_err(|e| e.to_string())?;
    let (join, _) = tidepool_server::tokens::load_or_create(&data_dir.join("join.token"), "tpj_").map_err(|e| e.to_string())?;
    Ok(join)
}

/// Control plane and local agent in one process.
pub async fn up(args: UpArgs) -> Result<u8, String> {
    init_logging();
    let (listener, mut config) = bind(&args.server).await?;
    config.known_pools = vec![args.pool.clone()];
    let join_token = prepare_tokens(&config.data_dir)?;
    let (mut cpu_millis, mem_bytes) = AgentConfig::local_capacity();
    if let Some(cpus) = args.cpus {
        cpu_millis = u64::from(cpus) * 1000;
    }
    let tidepool = std::env::current_exe().map_err(|e| e.to_string())?;
    let agent = AgentConfig {
        server_url: config.public_url.clone(),
        join_token,
        run_dir: config.data_dir.join("agent").join("run"),
        name: host_name(),
        pool: args.pool.clone(),
        cpu_millis,
        mem_bytes,
        gpus: 0,
        features: AgentConfig::local_features(),
        resources: Default::default(),
        launcher_program: AgentConfig::launcher_beside(&tidepool),
        tidepool_program: tidepool.clone(),
        kill_grace_s: 1,
        ca_cert: args.ca_cert.clone(),
        slurm: None,
        keep_tasks: args.keep_tasks,
        identities: tidepool_agent::identity::IdentityPolicy::for_invoking_user(),
        gpu_health: None,
        image_cache: tidepool_agent::images::CacheLimits::default(),
        allowed_registries: Vec::new(),
    };
    tracing::info!(
        "tidepool is up: API {}/api/v1, admin token in {}",
        config.public_url,
        config.data_dir.join("admin.token").display()
    );
    let mut gateway_config = match &args.gateway_config {
        Some(path) => read_gateway_config(path)?,
        None => demo_gateway(&config.data_dir).await?,
    };
    if gateway_config.data_dir.is_none() {
        gateway_config.data_dir = Some(config.data_dir.join("gateway"));
    }
    let gateway_listener = tokio::net::TcpListener::bind(&args.gateway_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.gateway_listen))?;
    let gateway_addr = gateway_listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("gateway listening on http://{gateway_addr}");
    // In order: the agent stops its tasks and reports them while the server still listens,
    // then the server stops, then the gateway.
    let (agent_stopped, server_stop) = tokio::sync::oneshot::channel::<()>();
    let agent_task = tokio::spawn(async move {
        let outcome = tidepool_agent::run_until(agent, shutdown_signal()).await;
        if let Err(e) = &outcome {
            // The control plane serves on without its local agent until told to stop.
            tracing::error!(error = %e, "the local agent stopped");
            shutdown_signal().await;
        }
        let _ = agent_stopped.send(());
    });
    let server = tokio::spawn(tidepool_server::run(listener, config, async move {
        let _ = server_stop.await;
    }));
    let gateway_task = tokio::spawn(tidepool_gateway::run(gateway_listener, gateway_config, std::future::pending()));
    let outcome = server.await;
    agent_task.abort();
    gateway_task.abort();
    tracing::info!("stopped");
    match outcome {
        Ok(Ok(())) => Ok(0),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn read_gateway_config(path: &Path) -> Result<GatewayConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    GatewayConfig::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The most tokens a request may ask the demo replicas to generate.
const DEMO_MAX_TOKENS: u64 = 8192;

/// The key in a file, trimmed; a readable error naming the file otherwise.
fn read_key(path: &Path) -> Result<String, String> {
    let key = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{} holds no key", path.display()));
    }
    Ok(key.to_string())
}

/// Two emulated replicas on loopback, which answer only the gateway (a key made afresh and
/// never written down), and a demo tenant and a metrics key kept in DATA_DIR.
async fn demo_gateway(data_dir: &Path) -> Result<GatewayConfig, String> {
    let key_path = data_dir.join("gateway-demo.key");
    let (key, _) = tidepool_server::tokens::load_or_create(&key_path, "sk-tp-").map_err(|e| e.to_string())?;
    let metrics_path = data_dir.join("gateway-metrics.key");
    let (metrics_key, _) = tidepool_server::tokens::load_or_create(&metrics_path, "mk-tp-").map_err(|e| e.to_string())?;
    let upstream_key = tidepool_server::tokens::random_token("uk-tp-").map_err(|e| e.to_string())?;
    let mut replicas = String::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let emulator = EmulatorConfig { api_key: Some(upstream_key.clone()), ..EmulatorConfig::default() };
        replicas.push_str(&format!(
            "[[replicas]]\nurl = \"http://{addr}\"\nmodel = \"{}\"\nbest_concurrency = {}\napi_key = \"{upstream_key}\"\nmax_tokens = {DEMO_MAX_TOKENS}\n\n",
            emulator.model, emulator.best_concurrency
        ));
        tokio::spawn(tidepool_gateway::emulator::serve(listener, emulator));
    }
    tracing::info!(key_file = %key_path.display(), metrics_key_file = %metrics_path.display(), "demo tenant's gateway key, and the key to scrape its /metrics");
    GatewayConfig::from_toml(&format!(
        "metrics_key = \"{metrics_key}\"\n{replicas}[[tenants]]\nname = \"demo\"\nkeys = [\"{key}\"]\ntpm = 200000\nrpm = 1200\n"
    ))
}

/// The gateway alone.
pub async fn gateway(args: GatewayArgs) -> Result<u8, String> {
    init_logging();
    let mut config = read_gateway_config(&args.config)?;
    if let Some(dir) = &config.data_dir {
        make_private(dir)?;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("gateway listening on http://{addr}");
    tidepool_gateway::run_on_workers(listener, config, shutdown_signal()).await?;
    Ok(0)
}

/// An emulated replica.
pub async fn replica_emulator(args: EmulatorArgs) -> Result<u8, String> {
    init_logging();
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!("replica emulator listening on http://{addr}");
    let config = EmulatorConfig {
        model: args.model,
        best_concurrency: args.best_concurrency,
        itl_ms: args.itl_ms,
        prefill_us_per_token: args.prefill_us_per_token,
        default_output_tokens: args.default_output_tokens,
        api_key: match &args.api_key_file {
            Some(path) => Some(read_key(path)?),
            None => None,
        },
    };
    tokio::select! {
        r = tidepool_gateway::emulator::serve(listener, config) => r.map_err(|e| e.to_string())?,
        _ = shutdown_signal() => {}
    }
    Ok(0)
}

/// The control plane alone.
pub async fn server(args: ServerArgs) -> Result<u8, String> {
    init_logging();
    let (listener, config) = bind(&args).await?;
    prepare_tokens(&config.data_dir)?;
    tracing::info!(
        "tidepool server on {}/api/v1; admin token in {}, agents join with {}",
        config.public_url,
        config.data_dir.join("admin.token").display(),
        config.data_dir.join("join.token").display()
    );
    tidepool_server::run(listener, config, shutdown_signal()).await.map_err(|e| e.to_string())?;
    Ok(0)
}

fn parse_resource(text: &str) -> Result<(String, u64), String> {
    let (name, count) = text.split_once('=').ok_or_else(|| format!("--resource '{text}' is not NAME=COUNT"))?;
    let count = count.parse::<u64>().map_err(|_| format!("--resource '{text}': '{count}' is not a count"))?;
    Ok((name.to_string(), count))
}

/// Reads `NAME=CORES[:BORROW[:SHARE]]`.
pub fn parse_project(text: &str) -> Result<(String, tidepool_core::ProjectLimits), String> {
    let bad = || format!("--project '{text}' is not NAME=CORES[:BORROW[:SHARE]] (e.g. chem=400:100)");
    let (name, rest) = text.split_once('=').ok_or_else(bad)?;
    let parts: Vec<u64> = rest.split(':').map(|p| p.parse::<u64>().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let quota = parts.first().copied().ok_or_else(bad)?;
    Ok((
        name.to_string(),
        tidepool_core::ProjectLimits {
            quota_cpu_millis: Some(quota * 1000),
            borrow_cpu_millis: Some(parts.get(1).copied().unwrap_or(0) * 1000),
            share: parts.get(2).copied().unwrap_or(1).clamp(1, 1_000_000) as u32,
        },
    ))
}

/// A node agent.
pub async fn agent(args: AgentArgs) -> Result<u8, String> {
    init_logging();
    let (mut cpu_millis, mem_bytes) = AgentConfig::local_capacity();
    if let Some(cpus) = args.cpus {
        cpu_millis = u64::from(cpus) * 1000;
    }
    let data_dir = std::path::absolute(&args.data_dir).map_err(|e| e.to_string())?;
    make_private(&data_dir)?;
    let tidepool = std::env::current_exe().map_err(|e| e.to_string())?;
    let join_token = match (&args.join_token_file, &args.join_token) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --join-token-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (None, Some(token)) => {
            if std::env::args().any(|a| a == "--join-token" || a.starts_with("--join-token=")) {
                tracing::warn!("--join-token puts the token in this process's arguments, readable by every user in ps: use --join-token-file or TIDEPOOL_JOIN_TOKEN");
            }
            token.clone()
        }
        (None, None) => return Err("no join token: give --join-token-file FILE (or TIDEPOOL_JOIN_TOKEN)".into()),
    };
    if join_token.is_empty() {
        return Err("the join token is empty".into());
    }
    if args.image_gc_low_percent >= args.image_gc_high_percent {
        return Err(format!(
            "--image-gc-low-percent ({}) must be below --image-gc-high-percent ({})",
            args.image_gc_low_percent, args.image_gc_high_percent
        ));
    }
    let (found_gpus, gpu_models) = if args.gpus.is_none() { tidepool_agent::gpus::discover() } else { (0, Vec::new()) };
    let config = AgentConfig {
        server_url: args.server,
        join_token,
        run_dir: data_dir.join("run"),
        name: args.name.unwrap_or_else(host_name),
        pool: args.pool,
        cpu_millis,
        mem_bytes,
        gpus: args.gpus.unwrap_or(found_gpus),
        features: {
            let mut f = AgentConfig::local_features();
            if args.gpus.is_none() {
                f.extend(gpu_models);
            }
            f.extend(args.feature);
            f
        },
        resources: args.resource.iter().map(|r| parse_resource(r)).collect::<Result<_, _>>()?,
        launcher_program: AgentConfig::launcher_beside(&tidepool),
        tidepool_program: tidepool.clone(),
        kill_grace_s: 1,
        ca_cert: args.ca_cert,
        slurm: (args.executor == "slurm").then_some(tidepool_agent::slurm_site::SlurmSite { sbatch_args: args.sbatch_arg }),
        keep_tasks: args.keep_tasks,
        identities: tidepool_agent::identity::IdentityPolicy::for_agent(args.allow_root_tasks, args.admin_runs_as.as_deref())?,
        gpu_health: args.gpu_health_command.map(|command| tidepool_agent::gpus::GpuHealth {
            command,
            every: std::time::Duration::from_secs(args.gpu_health_every.max(1)),
        }),
        image_cache: tidepool_agent::images::CacheLimits {
            max_bytes: args.image_cache_gb.map(|gb| gb << 30),
            high_percent: args.image_gc_high_percent,
            low_percent: args.image_gc_low_percent,
        },
        allowed_registries: {
            for r in &args.allowed_registry {
                tidepool_api::registry_host(r).map_err(|e| format!("--allowed-registry: {e}"))?;
            }
            args.allowed_registry
        },
    };
    tidepool_agent::run_until(config, shutdown_signal()).await.map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(0)
}
