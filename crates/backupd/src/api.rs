//! HTTP: `/healthz`, `/readyz`, `/metrics`, the status page at `/` (unless
//! `[api] status-page = false`; see [`crate::status_page`]), and the JSON API under `/api/v1`,
//! which needs a bearer token whose SHA-256 is in `[[api.token]]`
//! (401 without a valid token, 403 when its scope is too small).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use backup_catalog::{BackupFilter, BackupStatus, JobFilter, JobStatus};
use backup_engine::service::TokenScope;
use backup_engine::Engine;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    /// Unix time of the scheduler's last completed tick (0 = not started).
    pub last_tick: Arc<AtomicI64>,
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/sources", get(list_sources))
        .route("/sources/{name}/backup", post(trigger_backup))
        .route("/sources/{name}/drill", post(trigger_drill))
        .route("/drills", get(list_drills))
        .route("/backups", get(list_backups))
        .route("/jobs", get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/report/recovery", get(report_recovery))
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let mut root = Router::new();
    if state.engine.config.api.status_page {
        root = root.route("/", get(crate::status_page::page));
    }
    root.route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .nest("/api/v1", api)
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

struct ApiError(Response);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<backup_catalog::CatalogError> for ApiError {
    fn from(e: backup_catalog::CatalogError) -> Self {
        ApiError(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }
}

/// The scope a request needs: reads are `read`, anything else `operate`.
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let tokens = &state.engine.config.api.tokens;
    if tokens.is_empty() {
        return error(
            StatusCode::UNAUTHORIZED,
            "no API tokens are configured; add an [[api.token]] with the SHA-256 of a token",
        );
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| hex::encode(Sha256::digest(t.trim().as_bytes())));
    let Some(presented) = presented else {
        return error(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer TOKEN)",
        );
    };
    // Compare every configured hash in full so timing does not reveal which matched.
    let matched = tokens.iter().fold(None, |found, t| {
        if constant_time_eq(t.sha256.as_bytes(), presented.as_bytes()) {
            Some(t)
        } else {
            found
        }
    });
    let Some(token) = matched else {
        return error(StatusCode::UNAUTHORIZED, "invalid bearer token");
    };
    let needed = if request.method() == axum::http::Method::GET {
        TokenScope::Read
    } else {
        TokenScope::Operate
    };
    if token.scope < needed {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "token {:?} has scope read; this call needs operate",
                token.name
            ),
        );
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let Err(e) = state.engine.catalog.list_sources().await {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("catalog unreachable: {e}"),
        );
    }
    let last = state.last_tick.load(Ordering::Relaxed);
    let tick = state.engine.config.scheduler.tick.as_secs() as i64;
    let age = Utc::now().timestamp() - last;
    if last == 0 || age > 3 * tick.max(1) + 5 {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("scheduler not running (last tick {age}s ago)"),
        );
    }
    "ready\n".into_response()
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = state.metrics.render(&state.engine).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

async fn list_sources(State(state): State<AppState>) -> Result<Response, ApiError> {
    let now = Utc::now();
    let mut out = Vec::new();
    for s in &state.engine.config.sources {
        let latest = state.engine.catalog.latest_complete_backup(&s.name).await?;
        let rpo_now = latest
            .as_ref()
            .map(|b| (now - b.finished_at.unwrap_or(b.started_at)).num_seconds());
        out.push(serde_json::json!({
            "name": s.name,
            "kind": s.kind.kind_name(),
            "repository": s.repository,
            "timezone": s.timezone,
            "schedule": s.schedule,
            "keep": s.keep,
            "targets": s.targets(),
            "latest_backup": latest,
            "rpo_seconds": rpo_now,
            "rpo_breached": match (rpo_now, s.targets()) {
                (Some(age), Some(t)) => Some(age > t.rpo.as_secs() as i64),
                (None, Some(_)) => Some(true),
                _ => None,
            },
        }));
    }
    Ok(Json(out).into_response())
}

/// The RPO/RTO report, as `backupctl report recovery --format json` prints it.
async fn report_recovery(State(state): State<AppState>) -> Result<Response, ApiError> {
    match backup_engine::report::recovery_report(&state.engine, Utc::now()).await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(backup_engine::EngineError::Catalog(e)) => Err(e.into()),
        Err(e) => Ok(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    source: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

async fn list_backups(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match q
        .status
        .as_deref()
        .map(str::parse::<BackupStatus>)
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let backups = state
        .engine
        .catalog
        .list_backups(&BackupFilter {
            source: q.source,
            status,
        })
        .await?;
    Ok(Json(backups).into_response())
}

async fn list_jobs(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match q.status.as_deref().map(str::parse::<JobStatus>).transpose() {
        Ok(s) => s,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e.to_string())),
    };
    let jobs = state
        .engine
        .catalog
        .list_jobs(&JobFilter {
            source: q.source,
            status,
            limit: q.limit,
        })
        .await?;
    Ok(Json(jobs).into_response())
}

async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Ok(id) = id.parse() else {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a job id"),
        ));
    };
    match state.engine.catalog.get_job(id).await? {
        Some(job) => Ok(Json(job).into_response()),
        None => Ok(error(StatusCode::NOT_FOUND, format!("no job {id}"))),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    tag: Option<String>,
}

/// Queues a restore drill of the source (run by whichever replica claims it).
async fn trigger_drill(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    enqueue_for_source(&state, &name, |config, source| {
        backup_engine::schedule::drill_job(config, source, None, Utc::now())
    })
    .await
}

/// Queues the job `make` builds for source `name`: 202 with its id, 404 for an unknown source.
async fn enqueue_for_source(
    state: &AppState,
    name: &str,
    make: impl FnOnce(
        &backup_engine::config::Config,
        &backup_engine::config::SourceConfig,
    ) -> backup_catalog::NewJob,
) -> Result<Response, ApiError> {
    let Ok((_, source)) = state.engine.config.source(name) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            format!("no source named {name:?}"),
        ));
    };
    let job = make(&state.engine.config, source);
    let id = state.engine.catalog.enqueue_manual(&job).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "job_id": id, "status": "queued" })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct DrillQuery {
    source: Option<String>,
}

/// Recorded drills, newest first (at most 100).
async fn list_drills(
    State(state): State<AppState>,
    Query(q): Query<DrillQuery>,
) -> Result<Response, ApiError> {
    let drills = state
        .engine
        .catalog
        .list_drills(q.source.as_deref(), 100)
        .await?;
    Ok(Json(drills).into_response())
}

async fn trigger_backup(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<TriggerBody>>,
) -> Result<Response, ApiError> {
    let tag = body.and_then(|b| b.0.tag);
    enqueue_for_source(&state, &name, |config, source| {
        crate::runner::manual_job(config, source, tag, Utc::now())
    })
    .await
}
