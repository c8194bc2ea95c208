//! backupd: the long-running service. For now it serves health, readiness,
//! the backup list and Prometheus metrics from the catalog; the scheduler,
//! replication and drills build on this (see the project issues).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;

use backup_catalog::{BackupFilter, BackupStatus};
use backup_engine::{Config, Engine};

#[derive(Parser)]
#[command(name = "backupd", version, about = "The backupd service")]
struct Cli {
    /// Configuration file (default: the embedded quickstart config).
    #[arg(long, env = "BACKUPD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address for the HTTP API, health and metrics.
    #[arg(long, env = "BACKUPD_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("while loading the configuration")?;
    let engine = Arc::new(
        Engine::open(config)
            .await
            .context("while opening the catalog")?,
    );
    let app = router(engine);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("while binding {}", cli.listen))?;
    tracing::info!(address = %listener.local_addr()?, "backupd listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("while serving HTTP")?;
    Ok(())
}

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/backups", get(list_backups))
        .route("/metrics", get(metrics))
        .with_state(engine)
}

struct ApiError(backup_engine::EngineError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.0.to_string() }));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

impl From<backup_catalog::CatalogError> for ApiError {
    fn from(e: backup_catalog::CatalogError) -> Self {
        Self(e.into())
    }
}

async fn readyz(State(engine): State<Arc<Engine>>) -> Result<&'static str, ApiError> {
    engine.catalog.list_sources().await?;
    Ok("ready\n")
}

#[derive(Deserialize)]
struct ListQuery {
    source: Option<String>,
    status: Option<String>,
}

async fn list_backups(
    State(engine): State<Arc<Engine>>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref().map(str::parse::<BackupStatus>) {
        Some(Err(e)) => {
            return Ok((
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response())
        }
        Some(Ok(s)) => Some(s),
        None => None,
    };
    let backups = engine
        .catalog
        .list_backups(&BackupFilter {
            source: q.source,
            status,
        })
        .await?;
    Ok(Json(backups).into_response())
}

/// Prometheus text exposition; names are stable (see docs/operations.md).
async fn metrics(State(engine): State<Arc<Engine>>) -> Result<String, ApiError> {
    use std::fmt::Write;
    let backups = engine
        .catalog
        .list_backups(&BackupFilter::default())
        .await?;
    let mut out = String::new();
    out.push_str("# HELP backupd_backups Backups in the catalog by source and status.\n# TYPE backupd_backups gauge\n");
    let mut counts = std::collections::BTreeMap::new();
    for b in &backups {
        *counts
            .entry((b.source.clone(), b.status.as_str()))
            .or_insert(0u64) += 1;
    }
    for ((source, status), n) in &counts {
        let _ = writeln!(
            out,
            "backupd_backups{{source=\"{}\",status=\"{status}\"}} {n}",
            escape(source)
        );
    }
    // Newest first: the first complete backup per source is its latest.
    let mut seen = std::collections::HashSet::new();
    let latest: Vec<_> = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Complete && seen.insert(b.source.clone()))
        .collect();
    out.push_str("# HELP backupd_last_backup_completion_timestamp_seconds Finish time of the newest complete backup.\n# TYPE backupd_last_backup_completion_timestamp_seconds gauge\n");
    for b in &latest {
        let at = b.finished_at.unwrap_or(b.started_at).timestamp();
        let _ = writeln!(
            out,
            "backupd_last_backup_completion_timestamp_seconds{{source=\"{}\"}} {at}",
            escape(&b.source)
        );
    }
    out.push_str("# HELP backupd_last_backup_bytes Plaintext bytes of the newest complete backup.\n# TYPE backupd_last_backup_bytes gauge\n");
    for b in &latest {
        let _ = writeln!(
            out,
            "backupd_last_backup_bytes{{source=\"{}\"}} {}",
            escape(&b.source),
            b.plaintext_bytes
        );
    }
    Ok(out)
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
