//! `tako-vm server`: the REST API on 127.0.0.1:8000 by default.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::api;
use crate::config::{self, Config};
use crate::jobs::{BaseRootfsEnvironments, Environments, Registry, Service, SnapshotEnvironments};
use crate::sandbox::{HostConfig, Runner};
use crate::store::sqlite::SqliteStore;

/// Arguments of `tako-vm server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Bind host (default: `server_host`; non-loopback hosts need auth or the escape hatch).
    #[arg(long)]
    host: Option<String>,
    /// Bind port (default: `server_port`).
    #[arg(long)]
    port: Option<u16>,
    /// Accepted for compatibility; has no effect.
    #[arg(long)]
    reload: bool,
    /// Worker processes; only 1 is supported (queues are per process).
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Accepted for compatibility (there is no PostgreSQL to start: history is in SQLite).
    #[arg(long)]
    no_auto_start_postgres: bool,
}

/// Loads the configuration or prints `Configuration error: …`.
pub fn load_config(path: Option<&Path>) -> Result<(Config, Option<std::path::PathBuf>), i32> {
    config::load(path).map_err(|e| {
        match e {
            config::ConfigError::NotFound(_) => eprintln!("Error: {e}"),
            _ => eprintln!("Configuration error: {e}"),
        }
        1
    })
}

/// Runs the server until SIGTERM/SIGINT.
pub fn run(config_path: Option<&Path>, a: ServerArgs) -> anyhow::Result<i32> {
    let (cfg, file) = match load_config(config_path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    if a.workers != 1 {
        bail!("--workers must be 1: tako-vm runs one process with max_workers sandbox workers");
    }
    let host = a.host.clone().unwrap_or_else(|| cfg.server_host.clone());
    if let Err(m) = cfg.check_bind(&host) {
        eprintln!("Error: {m}");
        return Ok(1);
    }
    let port = a.port.map(i64::from).unwrap_or(cfg.server_port);
    println!("Configuration loaded successfully");
    if let Some(f) = &file {
        println!("Config file: {}", f.display());
    }
    println!(
        "Running in {} mode",
        if cfg.production_mode {
            "PRODUCTION"
        } else {
            "DEVELOPMENT"
        }
    );
    // Built outside the runtime: the registry client is a blocking reqwest client, which
    // must neither be created nor dropped on an async thread.
    let (runner, envs) = backends(&cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tako-vm-server")
        .build()?;
    let pool = runner.as_ref().ok().and_then(|r| r.pool.clone());
    let res = rt.block_on(serve(cfg, host, port as u16, runner, envs.clone()));
    // Pre-started helpers and their cgroups go with the server.
    if let Some(p) = pool {
        p.close();
    }
    // A build still running on the blocking pool does not hold up the exit.
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(envs);
    res
}

/// The sandbox runner (or why it is unavailable) and the job-type environments.
type Backends = (Result<Arc<Runner>, String>, Arc<dyn Environments>);

/// The sandbox runner and the job-type environments (the snapshot store; the base rootfs
/// alone when the image store cannot be opened).
fn backends(cfg: &Config) -> anyhow::Result<Backends> {
    let runner = Runner::detect(&HostConfig {
        // One pre-started helper per worker keeps the cgroup move off the request path.
        prestart: cfg.max_workers as usize,
        // The nftables table of network-enabled runs stays for the server's lifetime.
        keep_net_table: true,
        ..cfg.host_config()
    })
    .map(Arc::new)
    .map_err(|e| e.to_string());
    if let Err(e) = &runner {
        eprintln!("tako-vm: WARNING: sandboxes unavailable, runs will fail: {e}");
    }
    let base = cfg.base_rootfs();
    match &base {
        Some(b) => println!("Base rootfs: {}", b.display()),
        None => {
            eprintln!("tako-vm: WARNING: no base rootfs (set base_rootfs or TAKO_VM_BASE_ROOTFS)")
        }
    }
    let envs: Arc<dyn Environments> =
        match SnapshotEnvironments::open(cfg, runner.clone(), std::env::current_dir()?) {
            Ok(e) => {
                println!("Image store: {}", e.root().display());
                Arc::new(e)
            }
            Err(e) => {
                eprintln!("tako-vm: WARNING: {e}; job types with requirements cannot be built");
                Arc::new(BaseRootfsEnvironments::new(base))
            }
        };
    Ok((runner, envs))
}

async fn serve(
    cfg: Config,
    host: String,
    port: u16,
    runner: Result<Arc<Runner>, String>,
    envs: Arc<dyn Environments>,
) -> anyhow::Result<i32> {
    let cfg = Arc::new(cfg);
    let data_dir = cfg.data_dir();
    std::fs::create_dir_all(data_dir.join("runs"))
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let store = SqliteStore::open(&cfg.sqlite_path())
        .with_context(|| format!("cannot open {}", cfg.sqlite_path().display()))?;
    let registry = Registry::load(&cfg);
    let svc = Service::new(cfg.clone(), Arc::new(store), registry, envs, runner);
    let addr: SocketAddr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await?
        .next()
        .context("cannot resolve the bind host")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind {addr}"))?;
    println!("Listening on http://{}", listener.local_addr()?);
    // Serve at once; until reconciliation and workers are up, `/health` answers 503
    // "starting" and every other route 503 "Server is not ready yet".
    let state = api::AppState::new(svc.clone());
    state
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let app = api::app(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let grace = Duration::from_secs(cfg.shutdown_grace_seconds as u64);
    let svc2 = svc.clone();
    // On SIGTERM: stop accepting, cancel queued jobs and give running ones `grace` while
    // in-flight requests (e.g. long polls) drain.
    let on_signal = async move {
        shutdown_signal().await;
        println!("Shutting down: cancelling queued jobs, finishing running ones");
        let _ = tx.send(tokio::spawn(async move { svc2.shutdown(grace).await }));
    };
    let server = tokio::spawn(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(on_signal)
        .into_future(),
    );
    let (requeued, failed) = svc.reconcile()?;
    if requeued + failed > 0 {
        println!("Reconciled unfinished records: {requeued} queued again, {failed} interrupted");
    }
    let workers = svc.start_workers();
    let retention = svc.start_retention();
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    server.await??;
    match rx.await {
        Ok(h) => {
            let _ = h.await;
        }
        Err(_) => svc.shutdown(grace).await,
    }
    retention.abort();
    for w in workers {
        w.abort();
    }
    crate::sandbox::net::release_table_for_this_process();
    let idle = || {
        crate::sandbox::net::finish_teardowns();
        crate::sandbox::net::remove_table_if_idle()
    };
    match tokio::task::spawn_blocking(idle).await {
        Ok(Err(e)) => eprintln!("tako-vm: cannot remove the network table: {e}"),
        Err(e) => eprintln!("tako-vm: cannot remove the network table: {e}"),
        Ok(Ok(_)) => {}
    }
    Ok(0)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
