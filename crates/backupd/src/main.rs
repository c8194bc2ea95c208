//! backupd binary: parse flags, load config, take the instance lock (SQLite),
//! start the scheduler and the HTTP server, shut down gracefully on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;

use backup_engine::{Config, Engine};
use backupd::alerts::Alerter;
use backupd::api::{router, AppState};
use backupd::metrics::Metrics;
use backupd::runner::Runner;

#[derive(Parser)]
#[command(
    name = "backupd",
    version,
    about = "The backupd service: scheduler, HTTP API, health and metrics"
)]
struct Cli {
    /// Configuration file (default: the embedded quickstart config).
    #[arg(long, env = "BACKUPD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address for the HTTP API (default: `[api] listen` from the config).
    #[arg(long, env = "BACKUPD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Name of this replica in job leases (default: host:pid).
    #[arg(long, env = "BACKUPD_REPLICA")]
    replica: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("while loading the configuration")?;
    let _lock = backupd::lock::lock_for_catalog(&config.catalog.url)?;
    let listen: SocketAddr =
        match cli.listen {
            Some(l) => l,
            None => config.api.listen.parse().with_context(|| {
                format!("`api.listen` = {:?} is not an address", config.api.listen)
            })?,
        };
    let engine = Arc::new(
        Engine::open(config)
            .await
            .context("while opening the catalog")?,
    );
    let metrics = Arc::new(Metrics::default());
    let last_tick = Arc::new(AtomicI64::new(0));
    let owner = cli
        .replica
        .unwrap_or_else(|| format!("{}:{}", hostname(), std::process::id()));
    let runner = Arc::new(Runner {
        engine: engine.clone(),
        metrics: metrics.clone(),
        alerts: Arc::new(Alerter::new(engine.config.alerts.clone())),
        owner: owner.clone(),
        last_tick: last_tick.clone(),
    });

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone()));
    let scheduler = tokio::spawn(runner.run(shutdown.clone()));

    let app = router(AppState {
        engine,
        metrics,
        last_tick,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("while binding {listen}"))?;
    tracing::info!(address = %listener.local_addr()?, replica = %owner, "backupd started");
    let stop = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .context("while serving HTTP")?;
    scheduler.await.context("the scheduler task failed")?;
    tracing::info!("backupd stopped");
    Ok(())
}

async fn watch_signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}
