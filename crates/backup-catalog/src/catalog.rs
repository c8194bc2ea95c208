//! [`Catalog`]: one type over an SQLite or PostgreSQL pool.
//!
//! Every query is written once, in SQL both backends accept (`$1` placeholders,
//! `ON CONFLICT`, `RETURNING`), and run on whichever pool the catalog holds via
//! `with_pool!` / `in_transaction!`. The schema keeps the column types that matter to
//! Rust identical (TEXT ids, BIGINT sizes, timestamps decoded as `DateTime<Utc>`), so the same
//! row structs decode on both.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use backup_core::{ArtifactId, BackupId};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use sqlx::error::ErrorKind as DbErrorKind;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::error::{db, redact_url, CatalogError, Result};
use crate::model::{
    artifact_columns, backup_columns, copy_columns, micros, to_i64, validate_not_empty,
    validate_role, validate_sha256, ArtifactRecord, ArtifactRow, ArtifactWithCopies,
    BackupCompletion, BackupFilter, BackupRecord, BackupRow, BackupStatus, CopyRecord, CopyRow,
    ImportedBackup, NewBackup, SourceRecord, SourceRow,
};

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long an SQLite statement waits for another writer (in this or another process)
/// before failing with a (temporary) "database is locked" error.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// WAL lets readers run beside the single writer; a few connections are plenty for one
/// process and keep writers queueing on the pool rather than on SQLite's lock.
const SQLITE_MAX_CONNECTIONS: u32 = 4;
const POSTGRES_MAX_CONNECTIONS: u32 = 8;
/// sqlx retries refused connections until this deadline, so it bounds how long `connect`
/// takes to report an unreachable server.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Long enough to cover a full SQLite busy timeout of the connection ahead in the queue.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many candidates an ambiguous prefix error lists.
const MAX_PREFIX_CANDIDATES: usize = 10;

/// Which database a [`Catalog`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool. The body is compiled once per
/// backend, so it must evaluate to a backend-independent type (map `execute` results to
/// `rows_affected()`).
macro_rules! with_pool {
    ($catalog:expr, |$pool:ident| $body:expr) => {
        match &$catalog.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a transaction bound to `$tx` and commits it; a `?` in the body
/// returns early and the dropped transaction rolls back. `$action` describes the work for
/// error messages.
macro_rules! in_transaction {
    ($catalog:expr, $action:expr, |$tx:ident| $body:expr) => {
        match &$catalog.pool {
            Pool::Sqlite(pool) => {
                // IMMEDIATE takes the write lock up front, so a concurrent writer makes us
                // wait (busy_timeout) instead of failing later when a read lock would have
                // to be upgraded.
                let mut $tx = pool
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(db(format!("starting a transaction for {}", $action)))?;
                let out = $body;
                $tx.commit()
                    .await
                    .map_err(db(format!("committing {}", $action)))?;
                out
            }
            Pool::Postgres(pool) => {
                let mut $tx = pool
                    .begin()
                    .await
                    .map_err(db(format!("starting a transaction for {}", $action)))?;
                let out = $body;
                $tx.commit()
                    .await
                    .map_err(db(format!("committing {}", $action)))?;
                out
            }
        }
    };
}
// Shared with the other query modules of this crate (jobs.rs).
pub(crate) use {in_transaction, with_pool};

const UPSERT_SOURCE: &str = "INSERT INTO sources (name, kind, created_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET kind = excluded.kind";

// `created_at` (when the copy was first recorded; minimum storage durations count from it)
// is set on insert only, so re-recording or re-verifying a copy does not move it.
const UPSERT_COPY: &str = concat!(
    "INSERT INTO copies (",
    copy_columns!(),
    ", created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
     ON CONFLICT (artifact_id, repository) DO UPDATE SET \
     object_key = excluded.object_key, stored_size = excluded.stored_size, \
     stored_sha256 = excluded.stored_sha256, storage_class = excluded.storage_class, \
     verified_at = excluded.verified_at"
);

/// Rows that belong to a backup without a foreign key (see migration 0004); deleted with it,
/// but kept when `import_backup` replaces the backup row.
const DELETE_BACKUP_QUEUE_ROWS: [&str; 9] = [
    "DELETE FROM replication_queue WHERE backup_id = $1",
    "DELETE FROM thaw_requests WHERE backup_id = $1",
    "DELETE FROM postgres_backups WHERE backup_id = $1",
    "DELETE FROM backup_row_counts WHERE backup_id = $1",
    "DELETE FROM mongo_backups WHERE backup_id = $1",
    "DELETE FROM atlas_snapshots WHERE backup_id = $1",
    "DELETE FROM elasticsearch_snapshots WHERE backup_id = $1",
    "DELETE FROM rds_snapshots WHERE backup_id = $1",
    "DELETE FROM azure_sql_backups WHERE backup_id = $1",
];

const DELETE_BACKUP_ROWS: [&str; 3] = [
    "DELETE FROM copies WHERE artifact_id IN (SELECT id FROM artifacts WHERE backup_id = $1)",
    "DELETE FROM artifacts WHERE backup_id = $1",
    "DELETE FROM backups WHERE id = $1",
];

/// Artifact values converted to column types once, so every insert binds the same way.
struct ArtifactParams<'a> {
    artifact_id: ArtifactId,
    id: String,
    backup_id: String,
    role: &'a str,
    plaintext_size: i64,
    plaintext_sha256: &'a str,
    segment_count: i64,
    created_at: DateTime<Utc>,
}

impl<'a> ArtifactParams<'a> {
    fn new(a: &'a ArtifactRecord) -> Result<Self> {
        validate_role(&a.role)?;
        validate_sha256("plaintext_sha256", &a.plaintext_sha256)?;
        Ok(ArtifactParams {
            artifact_id: a.id,
            id: a.id.to_string(),
            backup_id: a.backup_id.to_string(),
            role: &a.role,
            plaintext_size: to_i64("plaintext_size", a.plaintext_size)?,
            plaintext_sha256: &a.plaintext_sha256,
            segment_count: to_i64("segment_count", a.segment_count)?,
            created_at: micros(a.created_at),
        })
    }
}

/// Binds an [`ArtifactParams`] as `$1..$7` in `artifact_columns!()` order.
macro_rules! bind_artifact {
    ($query:expr, $p:expr) => {
        $query
            .bind(&$p.id)
            .bind(&$p.backup_id)
            .bind($p.role)
            .bind($p.plaintext_size)
            .bind($p.plaintext_sha256)
            .bind($p.segment_count)
            .bind($p.created_at)
    };
}

struct CopyParams<'a> {
    artifact_id: String,
    repository: &'a str,
    object_key: &'a str,
    stored_size: i64,
    stored_sha256: &'a str,
    storage_class: Option<&'a str>,
    verified_at: DateTime<Utc>,
}

impl<'a> CopyParams<'a> {
    fn new(c: &'a CopyRecord) -> Result<Self> {
        validate_not_empty("repository", &c.repository)?;
        validate_not_empty("object_key", &c.object_key)?;
        validate_sha256("stored_sha256", &c.stored_sha256)?;
        Ok(CopyParams {
            artifact_id: c.artifact_id.to_string(),
            repository: &c.repository,
            object_key: &c.object_key,
            stored_size: to_i64("stored_size", c.stored_size)?,
            stored_sha256: &c.stored_sha256,
            storage_class: c.storage_class.as_deref(),
            verified_at: micros(c.verified_at),
        })
    }
}

/// Binds a [`CopyParams`] as `$1..$7` in `copy_columns!()` order.
macro_rules! bind_copy {
    ($query:expr, $p:expr) => {
        $query
            .bind(&$p.artifact_id)
            .bind($p.repository)
            .bind($p.object_key)
            .bind($p.stored_size)
            .bind($p.stored_sha256)
            .bind($p.storage_class)
            .bind($p.verified_at)
    };
}

fn db_error_kind(e: &sqlx::Error) -> Option<DbErrorKind> {
    e.as_database_error().map(|d| d.kind())
}

fn validate_new_backup(b: &NewBackup) -> Result<()> {
    validate_not_empty("source", &b.source)?;
    validate_not_empty("repository", &b.repository)?;
    validate_not_empty("backup_type", &b.backup_type)
}

/// The backup catalog: sources, backups, their artifacts and the copies of those artifacts
/// in repositories. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Catalog {
    pub(crate) pool: Pool,
    /// The connection URL with its password redacted, for messages.
    url: Arc<str>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog")
            .field("backend", &self.backend())
            .field("url", &self.url)
            .finish()
    }
}

impl Catalog {
    /// Opens the catalog and applies pending migrations.
    ///
    /// * `sqlite://PATH` (relative to the working directory, or `sqlite:///abs/path.db`):
    ///   creates the file and its parent directories if missing; WAL journal so readers do not
    ///   block the writer, foreign keys on, and a busy timeout so concurrent writers queue.
    /// * `sqlite::memory:`: a private in-memory database, for tests.
    /// * `postgres://...` or `postgresql://...`: any libpq-style URL sqlx accepts.
    #[tracing::instrument(skip_all, fields(url = %redact_url(url)))]
    pub async fn connect(url: &str) -> Result<Catalog> {
        let url = url.trim();
        let shown = redact_url(url);
        let pool = if let Some(rest) = url.strip_prefix("sqlite:") {
            let pool = connect_sqlite(url, rest, &shown).await?;
            SQLITE_MIGRATOR
                .run(&pool)
                .await
                .map_err(|source| CatalogError::Migrate {
                    url: shown.clone(),
                    source,
                })?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = connect_postgres(url, &shown).await?;
            POSTGRES_MIGRATOR
                .run(&pool)
                .await
                .map_err(|source| CatalogError::Migrate {
                    url: shown.clone(),
                    source,
                })?;
            Pool::Postgres(pool)
        } else {
            return Err(CatalogError::UnsupportedUrl { url: shown });
        };
        tracing::debug!("catalog ready");
        Ok(Catalog {
            pool,
            url: shown.into(),
        })
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The URL this catalog was opened with, password redacted (safe to print).
    pub fn display_url(&self) -> &str {
        &self.url
    }

    /// Closes all connections (and, for SQLite, checkpoints the WAL). Later calls fail.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    /// Registers a source, or updates its kind if it exists (its `created_at` is kept).
    pub async fn upsert_source(&self, name: &str, kind: &str) -> Result<()> {
        validate_not_empty("source name", name)?;
        validate_not_empty("source kind", kind)?;
        let now = micros(Utc::now());
        with_pool!(self, |pool| sqlx::query(UPSERT_SOURCE)
            .bind(name)
            .bind(kind)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))
        .map_err(db(format!("registering source {name:?}")))
    }

    /// All registered sources, by name.
    pub async fn list_sources(&self) -> Result<Vec<SourceRecord>> {
        let rows: Vec<SourceRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT name, kind, created_at FROM sources ORDER BY name"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("listing sources"))?;
        Ok(rows.into_iter().map(SourceRecord::from).collect())
    }

    /// Records a new backup as `running`, with its heartbeat at `started_at`. The source must
    /// be registered. Retrying after a lost reply is harmless: an identical running backup
    /// counts as success.
    #[tracing::instrument(skip_all, fields(backup_id = %b.id, source = %b.source))]
    pub async fn begin_backup(&self, b: &NewBackup) -> Result<()> {
        validate_new_backup(b)?;
        let id = b.id.to_string();
        let started_at = micros(b.started_at);
        let result = with_pool!(self, |pool| sqlx::query(
            "INSERT INTO backups (id, source, repository, backup_type, status, started_at, \
             heartbeat_at, host, pid, tool_version, tag) \
             VALUES ($1, $2, $3, $4, 'running', $5, $5, $6, $7, $8, $9)"
        )
        .bind(&id)
        .bind(&b.source)
        .bind(&b.repository)
        .bind(&b.backup_type)
        .bind(started_at)
        .bind(&b.host)
        .bind(i64::from(b.pid))
        .bind(&b.tool_version)
        .bind(b.tag.as_deref())
        .execute(pool)
        .await
        .map(|_| ()));
        match result {
            Ok(()) => Ok(()),
            Err(e) if db_error_kind(&e) == Some(DbErrorKind::ForeignKeyViolation) => {
                Err(CatalogError::UnknownSource {
                    name: b.source.clone(),
                })
            }
            Err(e) if db_error_kind(&e) == Some(DbErrorKind::UniqueViolation) => {
                match self.get_backup(b.id).await? {
                    Some(existing)
                        if existing.status == BackupStatus::Running
                            && existing.source == b.source
                            && existing.repository == b.repository
                            && existing.backup_type == b.backup_type
                            && existing.started_at == started_at
                            && existing.host == b.host
                            && existing.pid == b.pid
                            && existing.tool_version == b.tool_version
                            && existing.tag == b.tag =>
                    {
                        Ok(())
                    }
                    _ => Err(CatalogError::BackupExists { id: b.id }),
                }
            }
            Err(e) => Err(CatalogError::query(format!("starting backup {}", b.id), e)),
        }
    }

    /// Proves the writer of a running backup is alive; fails once the backup is no longer
    /// running (e.g. abandoned by another process), which tells the writer to stop.
    pub async fn heartbeat_backup(&self, id: BackupId, at: DateTime<Utc>) -> Result<()> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE backups SET heartbeat_at = $2 WHERE id = $1 AND status = 'running'"
        )
        .bind(id.to_string())
        .bind(micros(at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("recording a heartbeat for backup {id}")))?;
        if rows == 0 {
            return Err(self.state_error(id, "record a heartbeat for").await);
        }
        Ok(())
    }

    /// Records an artifact of a running backup. Call only after a sink confirmed a durable,
    /// checksum-verified write (then [`record_copy`](Self::record_copy) for each copy).
    /// Re-recording an identical artifact is a no-op, so retries are safe.
    #[tracing::instrument(skip_all, fields(artifact_id = %a.id, backup_id = %a.backup_id))]
    pub async fn record_artifact(&self, a: &ArtifactRecord) -> Result<()> {
        let p = ArtifactParams::new(a)?;
        let rows = with_pool!(self, |pool| bind_artifact!(
            sqlx::query(concat!(
                "INSERT INTO artifacts (",
                artifact_columns!(),
                ") SELECT $1, $2, $3, $4, $5, $6, $7 \
                 WHERE EXISTS (SELECT 1 FROM backups WHERE id = $2 AND status = 'running') \
                 ON CONFLICT (id) DO NOTHING"
            )),
            p
        )
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!(
            "recording artifact {} of backup {}",
            a.id, a.backup_id
        )))?;
        if rows == 1 {
            return Ok(());
        }
        // Nothing inserted: either the artifact exists already or the backup is not running.
        if let Some(existing) = self.get_artifact(a.id).await? {
            let wanted = ArtifactRecord {
                created_at: p.created_at,
                ..a.clone()
            };
            return if existing == wanted {
                Ok(())
            } else {
                Err(CatalogError::ArtifactConflict {
                    id: a.id,
                    detail: format!("recorded {existing:?}, now {wanted:?}"),
                })
            };
        }
        Err(self
            .state_error(a.backup_id, "record an artifact for")
            .await)
    }

    /// Records (or replaces) the copy of an artifact in one repository.
    #[tracing::instrument(skip_all, fields(artifact_id = %c.artifact_id, repository = %c.repository))]
    pub async fn record_copy(&self, c: &CopyRecord) -> Result<()> {
        let p = CopyParams::new(c)?;
        let result = with_pool!(self, |pool| bind_copy!(sqlx::query(UPSERT_COPY), p)
            .execute(pool)
            .await
            .map(|_| ()));
        match result {
            Ok(()) => Ok(()),
            Err(e) if db_error_kind(&e) == Some(DbErrorKind::ForeignKeyViolation) => {
                Err(CatalogError::ArtifactNotFound { id: c.artifact_id })
            }
            Err(e) => Err(CatalogError::query(
                format!(
                    "recording the copy of artifact {} in repository {:?}",
                    c.artifact_id, c.repository
                ),
                e,
            )),
        }
    }

    /// Notes that a copy was re-read and its checksum matched at `at`.
    pub async fn mark_copy_verified(
        &self,
        artifact_id: ArtifactId,
        repository: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE copies SET verified_at = $3 WHERE artifact_id = $1 AND repository = $2"
        )
        .bind(artifact_id.to_string())
        .bind(repository)
        .bind(micros(at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!(
            "marking the copy of artifact {artifact_id} in repository {repository:?} verified"
        )))?;
        if rows == 0 {
            return Err(CatalogError::CopyNotFound {
                artifact_id,
                repository: repository.to_owned(),
            });
        }
        Ok(())
    }

    /// Marks a running backup `complete`. Refused unless the backup has artifacts, every
    /// artifact has at least one recorded copy, and `manifest_artifact` is one of its
    /// artifacts with role "manifest": a complete backup must be restorable.
    ///
    /// The checks and the update are one statement, so they cannot race with other writers.
    #[tracing::instrument(skip_all, fields(backup_id = %id))]
    pub async fn complete_backup(&self, id: BackupId, c: &BackupCompletion) -> Result<()> {
        let finished_at = micros(c.finished_at);
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE backups SET status = 'complete', finished_at = $2, file_count = $3, \
             skipped_count = $4, plaintext_bytes = $5, stored_bytes = $6, \
             manifest_artifact = $7, error = NULL \
             WHERE id = $1 AND status = 'running' \
             AND EXISTS (SELECT 1 FROM artifacts m \
                         WHERE m.id = $7 AND m.backup_id = $1 AND m.role = 'manifest') \
             AND NOT EXISTS (SELECT 1 FROM artifacts a WHERE a.backup_id = $1 \
                             AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.artifact_id = a.id))"
        )
        .bind(id.to_string())
        .bind(finished_at)
        .bind(to_i64("file_count", c.file_count)?)
        .bind(to_i64("skipped_count", c.skipped_count)?)
        .bind(to_i64("plaintext_bytes", c.plaintext_bytes)?)
        .bind(to_i64("stored_bytes", c.stored_bytes)?)
        .bind(c.manifest_artifact.to_string())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("completing backup {id}")))?;
        if rows == 1 {
            tracing::info!("backup complete");
            return Ok(());
        }
        match self.explain_incomplete(id, c, finished_at).await? {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Why `complete_backup` updated nothing, or `None` if this exact completion already
    /// happened (so a retry after a lost reply succeeds).
    async fn explain_incomplete(
        &self,
        id: BackupId,
        c: &BackupCompletion,
        finished_at: DateTime<Utc>,
    ) -> Result<Option<CatalogError>> {
        let Some(backup) = self.get_backup(id).await? else {
            return Ok(Some(CatalogError::BackupNotFound { id }));
        };
        if backup.status == BackupStatus::Complete
            && backup.manifest_artifact == Some(c.manifest_artifact)
            && backup.finished_at == Some(finished_at)
        {
            return Ok(None);
        }
        if backup.status != BackupStatus::Running {
            return Ok(Some(CatalogError::BackupNotRunning {
                id,
                status: backup.status,
                action: "complete",
            }));
        }
        let artifacts = self.backup_artifacts(id).await?;
        let missing_copies: Vec<String> = artifacts
            .iter()
            .filter(|a| a.copies.is_empty())
            .map(|a| a.artifact.id.to_string())
            .collect();
        let reason = if artifacts.is_empty() {
            "no artifacts are recorded; record its data and manifest artifacts and their copies \
             first"
                .to_owned()
        } else if !missing_copies.is_empty() {
            format!(
                "artifact(s) {} have no recorded copy; record a copy of every artifact once a \
                 sink has stored it durably",
                missing_copies.join(", ")
            )
        } else if !artifacts
            .iter()
            .any(|a| a.artifact.id == c.manifest_artifact && a.artifact.role == "manifest")
        {
            format!(
                "manifest artifact {} is not an artifact with role \"manifest\" of this backup; \
                 record the manifest artifact first",
                c.manifest_artifact
            )
        } else {
            "the backup changed while it was being completed; retry".to_owned()
        };
        Ok(Some(CatalogError::Incomplete { id, reason }))
    }

    /// Marks a running backup `failed` with the error that stopped it.
    #[tracing::instrument(skip_all, fields(backup_id = %id))]
    pub async fn fail_backup(
        &self,
        id: BackupId,
        finished_at: DateTime<Utc>,
        error: &str,
    ) -> Result<()> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE backups SET status = 'failed', finished_at = $2, error = $3 \
             WHERE id = $1 AND status = 'running'"
        )
        .bind(id.to_string())
        .bind(micros(finished_at))
        .bind(error)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("marking backup {id} failed")))?;
        if rows == 0 {
            return Err(self.state_error(id, "fail").await);
        }
        Ok(())
    }

    /// Backups left `running` whose heartbeat is older than `stale_before` (their process
    /// died or lost the catalog) become `abandoned`; returns them, newest first.
    pub async fn abandon_stale_backups(
        &self,
        stale_before: DateTime<Utc>,
    ) -> Result<Vec<BackupRecord>> {
        let stale_before = micros(stale_before);
        let error = format!(
            "abandoned: no heartbeat since before {}; the backup process stopped or lost \
             contact with the catalog",
            stale_before.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let rows: Vec<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "UPDATE backups SET status = 'abandoned', error = $2 \
             WHERE status = 'running' AND heartbeat_at < $1 RETURNING ",
            backup_columns!()
        ))
        .bind(stale_before)
        .bind(&error)
        .fetch_all(pool)
        .await)
        .map_err(db("abandoning stale backups"))?;
        let mut backups = rows
            .into_iter()
            .map(BackupRecord::try_from)
            .collect::<Result<Vec<_>>>()?;
        sort_newest_first(&mut backups);
        for b in &backups {
            tracing::warn!(backup_id = %b.id, source = %b.source, host = %b.host, pid = b.pid,
                heartbeat_at = %b.heartbeat_at, "abandoned stale backup");
        }
        Ok(backups)
    }

    /// Backups matching `filter`, newest (by `started_at`) first.
    pub async fn list_backups(&self, filter: &BackupFilter) -> Result<Vec<BackupRecord>> {
        // One statement per filter shape: `($1 IS NULL OR source = $1)` would keep the
        // planners from using the (source, started_at) index.
        let sql = match (filter.source.is_some(), filter.status.is_some()) {
            (true, true) => concat!(
                "SELECT ",
                backup_columns!(),
                " FROM backups WHERE source = $1 AND status = $2 ORDER BY started_at DESC, id DESC"
            ),
            (true, false) => concat!(
                "SELECT ",
                backup_columns!(),
                " FROM backups WHERE source = $1 ORDER BY started_at DESC, id DESC"
            ),
            (false, true) => concat!(
                "SELECT ",
                backup_columns!(),
                " FROM backups WHERE status = $1 ORDER BY started_at DESC, id DESC"
            ),
            (false, false) => concat!(
                "SELECT ",
                backup_columns!(),
                " FROM backups ORDER BY started_at DESC, id DESC"
            ),
        };
        let rows: Vec<BackupRow> = with_pool!(self, |pool| {
            let mut query = sqlx::query_as(sql);
            if let Some(source) = filter.source.as_deref() {
                query = query.bind(source);
            }
            if let Some(status) = filter.status {
                query = query.bind(status.as_str());
            }
            query.fetch_all(pool).await
        })
        .map_err(db("listing backups"))?;
        rows.into_iter().map(BackupRecord::try_from).collect()
    }

    pub async fn get_backup(&self, id: BackupId) -> Result<Option<BackupRecord>> {
        let row: Option<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            backup_columns!(),
            " FROM backups WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading backup {id}")))?;
        row.map(BackupRecord::try_from).transpose()
    }

    /// Looks a backup up by a unique prefix of its id, like git does for commits: at least
    /// 8 characters, case-insensitive, hyphens optional.
    pub async fn find_backup_by_prefix(&self, prefix: &str) -> Result<BackupRecord> {
        let wanted = normalize_prefix(prefix)?;
        if let Ok(id) = BackupId::from_str(&wanted) {
            return self
                .get_backup(id)
                .await?
                .ok_or(CatalogError::BackupNotFound { id });
        }
        let pattern = format!("{wanted}%");
        let rows: Vec<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            backup_columns!(),
            " FROM backups WHERE id LIKE $1 ORDER BY id LIMIT $2"
        ))
        .bind(&pattern)
        .bind(MAX_PREFIX_CANDIDATES as i64)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("looking up backup id prefix {prefix:?}")))?;
        let mut backups = rows
            .into_iter()
            .map(BackupRecord::try_from)
            .collect::<Result<Vec<_>>>()?;
        match backups.len() {
            0 => Err(CatalogError::PrefixNotFound {
                prefix: prefix.to_owned(),
            }),
            1 => Ok(backups.remove(0)),
            _ => Err(CatalogError::AmbiguousPrefix {
                prefix: prefix.to_owned(),
                candidates: backups.iter().map(|b| b.id.to_string()).collect(),
            }),
        }
    }

    /// The newest complete backup of `source`: what a restore uses by default.
    pub async fn latest_complete_backup(&self, source: &str) -> Result<Option<BackupRecord>> {
        let row: Option<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            backup_columns!(),
            " FROM backups WHERE source = $1 AND status = 'complete' \
             ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .bind(source)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!(
            "finding the latest complete backup of {source:?}"
        )))?;
        row.map(BackupRecord::try_from).transpose()
    }

    /// The backup's artifacts (oldest first) with their copies (by repository). Errors with
    /// `BackupNotFound` for an unknown backup rather than returning an empty list.
    pub async fn backup_artifacts(&self, id: BackupId) -> Result<Vec<ArtifactWithCopies>> {
        let key = id.to_string();
        let action = || format!("reading the artifacts of backup {id}");
        let (artifact_rows, copy_rows): (Vec<ArtifactRow>, Vec<CopyRow>) =
            with_pool!(self, |pool| {
                let artifacts = sqlx::query_as(concat!(
                    "SELECT ",
                    artifact_columns!(),
                    " FROM artifacts WHERE backup_id = $1 ORDER BY created_at, id"
                ))
                .bind(&key)
                .fetch_all(pool)
                .await
                .map_err(db(action()))?;
                let copies = sqlx::query_as(
                    "SELECT c.artifact_id, c.repository, c.object_key, c.stored_size, \
                     c.stored_sha256, c.storage_class, c.verified_at \
                     FROM copies c JOIN artifacts a ON a.id = c.artifact_id \
                     WHERE a.backup_id = $1 ORDER BY c.artifact_id, c.repository",
                )
                .bind(&key)
                .fetch_all(pool)
                .await
                .map_err(db(action()))?;
                (artifacts, copies)
            });
        if artifact_rows.is_empty() && self.get_backup(id).await?.is_none() {
            return Err(CatalogError::BackupNotFound { id });
        }
        let mut copies: HashMap<ArtifactId, Vec<CopyRecord>> = HashMap::new();
        for row in copy_rows {
            let copy = CopyRecord::try_from(row)?;
            copies.entry(copy.artifact_id).or_default().push(copy);
        }
        artifact_rows
            .into_iter()
            .map(|row| {
                let artifact = ArtifactRecord::try_from(row)?;
                let copies = copies.remove(&artifact.id).unwrap_or_default();
                Ok(ArtifactWithCopies { artifact, copies })
            })
            .collect()
    }

    /// Removes a backup with its artifacts and copies (the catalog rows only; deleting the
    /// stored objects is the caller's job). Running backups are refused: fail or abandon them
    /// first. So are backups under legal hold.
    #[tracing::instrument(skip_all, fields(backup_id = %id))]
    pub async fn delete_backup(&self, id: BackupId) -> Result<()> {
        let key = id.to_string();
        let action = format!("deleting backup {id}");
        in_transaction!(self, action, |tx| {
            let status: Option<(String, bool)> =
                sqlx::query_as("SELECT status, legal_hold FROM backups WHERE id = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            match status {
                None => return Err(CatalogError::BackupNotFound { id }),
                Some((status, _)) if status == BackupStatus::Running.as_str() => {
                    return Err(CatalogError::BackupRunning { id })
                }
                Some((_, true)) => return Err(CatalogError::LegalHold { id }),
                Some(_) => {}
            }
            // The cost report bills its copies until now (migration 0008).
            sqlx::query(crate::usage::LEDGER_BACKUP_COPIES)
                .bind(&key)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            for sql in DELETE_BACKUP_QUEUE_ROWS.iter().chain(&DELETE_BACKUP_ROWS) {
                sqlx::query(sql)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            }
        });
        Ok(())
    }

    /// For `catalog rebuild`: writes a complete backup with its artifacts and copies in one
    /// transaction, registering the source if needed. Idempotent: an existing backup with
    /// the same id (and its artifacts and copies) is replaced, keeping its legal hold. A
    /// backup that is being deleted is refused (`BackupDeleting`): prune decided it goes.
    #[tracing::instrument(skip_all, fields(backup_id = %b.backup.id, source = %b.backup.source))]
    pub async fn import_backup(&self, b: &ImportedBackup) -> Result<()> {
        let new = &b.backup;
        let id = new.id;
        validate_new_backup(new)?;
        validate_not_empty("source kind", &b.source_kind)?;
        let artifacts = validate_import(b)?;
        let copies = b
            .artifacts
            .iter()
            .flat_map(|a| &a.copies)
            .map(CopyParams::new)
            .collect::<Result<Vec<_>>>()?;
        let key = id.to_string();
        let finished_at = micros(b.completion.finished_at);
        let file_count = to_i64("file_count", b.completion.file_count)?;
        let skipped_count = to_i64("skipped_count", b.completion.skipped_count)?;
        let plaintext_bytes = to_i64("plaintext_bytes", b.completion.plaintext_bytes)?;
        let stored_bytes = to_i64("stored_bytes", b.completion.stored_bytes)?;
        let action = format!("importing backup {id}");
        in_transaction!(self, action, |tx| {
            let existing: Option<(String, bool)> =
                sqlx::query_as("SELECT status, legal_hold FROM backups WHERE id = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            let legal_hold = match existing {
                Some((status, _)) if status == BackupStatus::Deleting.as_str() => {
                    return Err(CatalogError::BackupDeleting { id })
                }
                Some((_, hold)) => hold,
                None => false,
            };
            sqlx::query(UPSERT_SOURCE)
                .bind(&new.source)
                .bind(&b.source_kind)
                .bind(micros(Utc::now()))
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            for sql in DELETE_BACKUP_ROWS {
                sqlx::query(sql)
                    .bind(&key)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            }
            sqlx::query(
                "INSERT INTO backups (id, source, repository, backup_type, status, started_at, \
                 finished_at, heartbeat_at, host, pid, tool_version, file_count, skipped_count, \
                 plaintext_bytes, stored_bytes, manifest_artifact, tag, legal_hold) \
                 VALUES ($1, $2, $3, $4, 'complete', $5, $6, $6, $7, $8, $9, $10, $11, $12, \
                 $13, $14, $15, $16)",
            )
            .bind(&key)
            .bind(&new.source)
            .bind(&new.repository)
            .bind(&new.backup_type)
            .bind(micros(new.started_at))
            .bind(finished_at)
            .bind(&new.host)
            .bind(i64::from(new.pid))
            .bind(&new.tool_version)
            .bind(file_count)
            .bind(skipped_count)
            .bind(plaintext_bytes)
            .bind(stored_bytes)
            .bind(b.completion.manifest_artifact.to_string())
            .bind(new.tag.as_deref())
            .bind(legal_hold)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
            for p in &artifacts {
                bind_artifact!(
                    sqlx::query(concat!(
                        "INSERT INTO artifacts (",
                        artifact_columns!(),
                        ") VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    )),
                    p
                )
                .execute(&mut *tx)
                .await
                .map_err(|e| match db_error_kind(&e) {
                    Some(DbErrorKind::UniqueViolation) => CatalogError::ArtifactConflict {
                        id: p.artifact_id,
                        detail: "it belongs to another backup".into(),
                    },
                    _ => CatalogError::query(action.clone(), e),
                })?;
            }
            for p in &copies {
                bind_copy!(sqlx::query(UPSERT_COPY), p)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            }
        });
        Ok(())
    }

    async fn get_artifact(&self, id: ArtifactId) -> Result<Option<ArtifactRecord>> {
        let row: Option<ArtifactRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            artifact_columns!(),
            " FROM artifacts WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading artifact {id}")))?;
        row.map(ArtifactRecord::try_from).transpose()
    }

    /// The error for an update of a backup that matched no running backup.
    async fn state_error(&self, id: BackupId, action: &'static str) -> CatalogError {
        match self.get_backup(id).await {
            Ok(None) => CatalogError::BackupNotFound { id },
            Ok(Some(b)) => CatalogError::BackupNotRunning {
                id,
                status: b.status,
                action,
            },
            Err(e) => e,
        }
    }
}

async fn connect_sqlite(url: &str, rest: &str, shown: &str) -> Result<SqlitePool> {
    let options =
        SqliteConnectOptions::from_str(url).map_err(|source| CatalogError::InvalidUrl {
            url: shown.to_owned(),
            source,
        })?;
    let (path, query) = rest
        .trim_start_matches("//")
        .split_once('?')
        .unwrap_or((rest.trim_start_matches("//"), ""));
    let in_memory = path == ":memory:" || query.split('&').any(|p| p == "mode=memory");
    let options = options
        .create_if_missing(true)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    if in_memory {
        // An in-memory database lives as long as its connection: keep exactly one, forever.
        return SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(|source| CatalogError::Connect {
                url: shown.to_owned(),
                source,
            });
    }
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return Err(CatalogError::UnsupportedUrl {
            url: shown.to_owned(),
        });
    }
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|source| CatalogError::CreateDir {
                url: shown.to_owned(),
                path: dir.to_owned(),
                source,
            })?;
    }
    SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
        .connect_with(options.journal_mode(SqliteJournalMode::Wal))
        .await
        .map_err(|source| CatalogError::Connect {
            url: shown.to_owned(),
            source,
        })
}

async fn connect_postgres(url: &str, shown: &str) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|source| CatalogError::InvalidUrl {
            url: shown.to_owned(),
            source,
        })?
        .application_name("backupd");
    PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| CatalogError::Connect {
            url: shown.to_owned(),
            source,
        })
}

/// The invariants `complete_backup` enforces, checked up front for an import; returns the
/// artifacts converted to column values.
fn validate_import(b: &ImportedBackup) -> Result<Vec<ArtifactParams<'_>>> {
    let id = b.backup.id;
    let incomplete = |reason: String| CatalogError::Incomplete { id, reason };
    if b.artifacts.is_empty() {
        return Err(incomplete("the imported backup has no artifacts".into()));
    }
    let mut params = Vec::with_capacity(b.artifacts.len());
    for a in &b.artifacts {
        let artifact = &a.artifact;
        if artifact.backup_id != id {
            return Err(incomplete(format!(
                "artifact {} belongs to backup {}, not to the imported backup",
                artifact.id, artifact.backup_id
            )));
        }
        if a.copies.is_empty() {
            return Err(incomplete(format!(
                "artifact {} has no copies",
                artifact.id
            )));
        }
        if let Some(c) = a.copies.iter().find(|c| c.artifact_id != artifact.id) {
            return Err(incomplete(format!(
                "a copy listed under artifact {} is of artifact {}",
                artifact.id, c.artifact_id
            )));
        }
        params.push(ArtifactParams::new(artifact)?);
    }
    let manifest = b.completion.manifest_artifact;
    if !b
        .artifacts
        .iter()
        .any(|a| a.artifact.id == manifest && a.artifact.role == "manifest")
    {
        return Err(incomplete(format!(
            "manifest artifact {manifest} is not one of its artifacts with role \"manifest\""
        )));
    }
    Ok(params)
}

/// Lowercases a user-typed id prefix and restores the hyphens of the canonical form, so
/// `0192F0C47B1E` finds `0192f0c4-7b1e-...`.
fn normalize_prefix(prefix: &str) -> Result<String> {
    let invalid = |reason: &str| CatalogError::InvalidValue {
        field: "backup id prefix",
        value: prefix.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = prefix.trim();
    if !trimmed.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(invalid("a backup id contains only hex digits and '-'"));
    }
    let hex: String = trimmed
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() < 8 {
        return Err(invalid(
            "give at least 8 characters of the backup id (see the list of backups)",
        ));
    }
    if hex.len() > 32 {
        return Err(invalid("longer than a backup id"));
    }
    let mut canonical = String::with_capacity(36);
    for (i, c) in hex.chars().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            canonical.push('-');
        }
        canonical.push(c);
    }
    Ok(canonical)
}

fn sort_newest_first(backups: &mut [BackupRecord]) {
    backups.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| b.id.to_string().cmp(&a.id.to_string()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_to_the_canonical_form() {
        assert_eq!(normalize_prefix("0192F0C4").unwrap(), "0192f0c4");
        assert_eq!(normalize_prefix("0192f0c47b1e").unwrap(), "0192f0c4-7b1e");
        assert_eq!(normalize_prefix(" 0192f0c4-7b ").unwrap(), "0192f0c4-7b");
        assert!(normalize_prefix("0192f0c").is_err());
        assert!(normalize_prefix("0192f0c4%").is_err());
        assert!(normalize_prefix(&"a".repeat(33)).is_err());
    }
}
