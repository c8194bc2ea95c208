//! What PostgreSQL sources need from the catalog: the archived WAL files of each source, and
//! the WAL position (start/stop LSN, timeline) of each base backup.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{in_transaction, with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, to_u64, validate_not_empty, validate_sha256};

/// One archived WAL file (segment, `.history`, `.backup` or `.partial`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalFileRecord {
    pub source: String,
    pub file_name: String,
    pub timeline: u32,
    pub repository: String,
    pub object_key: String,
    pub plaintext_size: u64,
    /// Lowercase hex.
    pub plaintext_sha256: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub archived_at: DateTime<Utc>,
}

/// How far one repository is behind in copying one source's archived WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalCopyLag {
    pub source: String,
    pub destination: String,
    /// Archived WAL files not copied there yet, and their stored size.
    pub pending: u64,
    pub pending_bytes: u64,
    pub done: u64,
    /// When the oldest WAL file not copied there was archived: the lag counts from here.
    pub oldest_pending_since: Option<DateTime<Utc>>,
    pub last_copied_at: Option<DateTime<Utc>>,
}

impl WalCopyLag {
    /// How long the oldest uncopied WAL file has waited at `now` (0 = caught up).
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> u64 {
        crate::model::waited_seconds(self.oldest_pending_since, now)
    }
}

/// A verified copy of an archived WAL file in another repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalFileCopy {
    pub source: String,
    pub file_name: String,
    pub repository: String,
    pub object_key: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub copied_at: DateTime<Utc>,
}

/// What recording a pushed WAL file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRecorded {
    New,
    /// The same name with the same content was recorded already: a repeated push.
    AlreadyArchived,
}

/// The WAL position of a PostgreSQL base backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostgresBackupRecord {
    pub backup_id: BackupId,
    pub start_lsn: String,
    pub stop_lsn: String,
    pub timeline: u32,
    pub start_wal: String,
    pub stop_wal: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub parent_backup_id: Option<BackupId>,
}

#[derive(sqlx::FromRow)]
struct WalFileRow {
    source: String,
    file_name: String,
    timeline: i64,
    repository: String,
    object_key: String,
    plaintext_size: i64,
    plaintext_sha256: String,
    stored_size: i64,
    stored_sha256: String,
    archived_at: DateTime<Utc>,
}

fn corrupt(field: &'static str, value: impl ToString) -> CatalogError {
    CatalogError::Corrupt {
        field,
        value: value.to_string(),
    }
}

impl TryFrom<WalFileRow> for WalFileRecord {
    type Error = CatalogError;

    fn try_from(r: WalFileRow) -> Result<Self> {
        Ok(WalFileRecord {
            source: r.source,
            file_name: r.file_name,
            timeline: u32::try_from(r.timeline)
                .map_err(|_| corrupt("wal_files.timeline", r.timeline))?,
            repository: r.repository,
            object_key: r.object_key,
            plaintext_size: u64::try_from(r.plaintext_size)
                .map_err(|_| corrupt("wal_files.plaintext_size", r.plaintext_size))?,
            plaintext_sha256: r.plaintext_sha256,
            stored_size: u64::try_from(r.stored_size)
                .map_err(|_| corrupt("wal_files.stored_size", r.stored_size))?,
            stored_sha256: r.stored_sha256,
            archived_at: r.archived_at,
        })
    }
}

const WAL_COLUMNS: &str = "source, file_name, timeline, repository, object_key, plaintext_size, \
     plaintext_sha256, stored_size, stored_sha256, archived_at";

#[derive(sqlx::FromRow)]
struct PostgresBackupRow {
    backup_id: String,
    start_lsn: String,
    stop_lsn: String,
    timeline: i64,
    start_wal: String,
    stop_wal: String,
    start_time: DateTime<Utc>,
    stop_time: DateTime<Utc>,
    parent_backup_id: Option<String>,
}

impl TryFrom<PostgresBackupRow> for PostgresBackupRecord {
    type Error = CatalogError;

    fn try_from(r: PostgresBackupRow) -> Result<Self> {
        Ok(PostgresBackupRecord {
            backup_id: parse_backup_id("postgres_backups.backup_id", &r.backup_id)?,
            start_lsn: r.start_lsn,
            stop_lsn: r.stop_lsn,
            timeline: u32::try_from(r.timeline)
                .map_err(|_| corrupt("postgres_backups.timeline", r.timeline))?,
            start_wal: r.start_wal,
            stop_wal: r.stop_wal,
            start_time: r.start_time,
            stop_time: r.stop_time,
            parent_backup_id: r
                .parent_backup_id
                .map(|p| parse_backup_id("postgres_backups.parent_backup_id", &p))
                .transpose()?,
        })
    }
}

const PG_BACKUP_COLUMNS: &str = "backup_id, start_lsn, stop_lsn, timeline, start_wal, stop_wal, \
     start_time, stop_time, parent_backup_id";

impl Catalog {
    /// Records a pushed WAL file once it is durable and verified. The same name with the same
    /// content again is [`WalRecorded::AlreadyArchived`]; other content under a recorded name
    /// is refused ([`CatalogError::WalConflict`]), since PostgreSQL never rewrites a WAL file.
    pub async fn record_wal_file(&self, w: &WalFileRecord) -> Result<WalRecorded> {
        validate_not_empty("source", &w.source)?;
        validate_not_empty("file_name", &w.file_name)?;
        validate_sha256("plaintext_sha256", &w.plaintext_sha256)?;
        validate_sha256("stored_sha256", &w.stored_sha256)?;
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO wal_files ({WAL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (source, file_name) DO NOTHING"
        ))
        .bind(&w.source)
        .bind(&w.file_name)
        .bind(i64::from(w.timeline))
        .bind(&w.repository)
        .bind(&w.object_key)
        .bind(to_i64("plaintext_size", w.plaintext_size)?)
        .bind(&w.plaintext_sha256)
        .bind(to_i64("stored_size", w.stored_size)?)
        .bind(&w.stored_sha256)
        .bind(micros(w.archived_at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("recording WAL file {} of {}", w.file_name, w.source)))?;
        if rows == 1 {
            return Ok(WalRecorded::New);
        }
        let existing = self
            .wal_file(&w.source, &w.file_name)
            .await?
            .ok_or_else(|| corrupt("wal_files", &w.file_name))?;
        if existing.plaintext_sha256 == w.plaintext_sha256
            && existing.plaintext_size == w.plaintext_size
        {
            Ok(WalRecorded::AlreadyArchived)
        } else {
            Err(CatalogError::WalConflict {
                source_name: w.source.clone(),
                file_name: w.file_name.clone(),
                archived_sha256: existing.plaintext_sha256,
                new_sha256: w.plaintext_sha256.clone(),
            })
        }
    }

    pub async fn wal_file(&self, source: &str, file_name: &str) -> Result<Option<WalFileRecord>> {
        let row: Option<WalFileRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {WAL_COLUMNS} FROM wal_files WHERE source = $1 AND file_name = $2"
        ))
        .bind(source)
        .bind(file_name)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading WAL file {file_name} of {source}")))?;
        row.map(WalFileRecord::try_from).transpose()
    }

    /// Every archived WAL file of `source`, by name (for segments: timeline, then position).
    pub async fn wal_files(&self, source: &str) -> Result<Vec<WalFileRecord>> {
        let rows: Vec<WalFileRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {WAL_COLUMNS} FROM wal_files WHERE source = $1 ORDER BY file_name"
        ))
        .bind(source)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("listing the WAL files of {source}")))?;
        rows.into_iter().map(WalFileRecord::try_from).collect()
    }

    /// Records the verified copy of an archived WAL file in another repository.
    pub async fn record_wal_copy(&self, copy: &WalFileCopy) -> Result<()> {
        validate_sha256("stored_sha256", &copy.stored_sha256)?;
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO wal_file_copies (source, file_name, repository, object_key, \
             stored_size, stored_sha256, copied_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (source, file_name, repository) DO UPDATE SET \
             object_key = excluded.object_key, stored_size = excluded.stored_size, \
             stored_sha256 = excluded.stored_sha256, copied_at = excluded.copied_at"
        )
        .bind(&copy.source)
        .bind(&copy.file_name)
        .bind(&copy.repository)
        .bind(&copy.object_key)
        .bind(to_i64("stored_size", copy.stored_size)?)
        .bind(&copy.stored_sha256)
        .bind(micros(copy.copied_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the copy of WAL file {} in {}",
            copy.file_name, copy.repository
        )))
    }

    /// `source`'s archived WAL files with no copy in `repository` yet, by name.
    pub async fn wal_files_without_copy(
        &self,
        source: &str,
        repository: &str,
    ) -> Result<Vec<WalFileRecord>> {
        let rows: Vec<WalFileRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {WAL_COLUMNS} FROM wal_files w WHERE source = $1 AND repository <> $2 \
             AND NOT EXISTS (SELECT 1 FROM wal_file_copies c WHERE c.source = w.source \
             AND c.file_name = w.file_name AND c.repository = $2) ORDER BY file_name"
        ))
        .bind(source)
        .bind(repository)
        .fetch_all(pool)
        .await)
        .map_err(db(format!(
            "listing the WAL files of {source} not copied to {repository}"
        )))?;
        rows.into_iter().map(WalFileRecord::try_from).collect()
    }

    /// How far `repository` is behind in copying `source`'s archived WAL.
    pub async fn wal_copy_lag(&self, source: &str, repository: &str) -> Result<WalCopyLag> {
        #[derive(sqlx::FromRow)]
        struct Row {
            pending: i64,
            pending_bytes: i64,
            oldest_pending_since: Option<DateTime<Utc>>,
        }
        let row: Row = with_pool!(self, |pool| sqlx::query_as(
            "SELECT CAST(COUNT(*) AS BIGINT) AS pending, \
             CAST(COALESCE(SUM(stored_size), 0) AS BIGINT) AS pending_bytes, \
             MIN(archived_at) AS oldest_pending_since \
             FROM wal_files w WHERE source = $1 AND repository <> $2 \
             AND NOT EXISTS (SELECT 1 FROM wal_file_copies c WHERE c.source = w.source \
             AND c.file_name = w.file_name AND c.repository = $2)"
        )
        .bind(source)
        .bind(repository)
        .fetch_one(pool)
        .await)
        .map_err(db(format!(
            "measuring the WAL copy lag of {source} to {repository}"
        )))?;
        let (done, last_copied_at): (i64, Option<DateTime<Utc>>) = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT CAST(COUNT(*) AS BIGINT), MAX(copied_at) FROM wal_file_copies \
                 WHERE source = $1 AND repository = $2",
            )
            .bind(source)
            .bind(repository)
            .fetch_one(pool)
            .await
        })
        .map_err(db(format!(
            "counting the WAL copies of {source} in {repository}"
        )))?;
        Ok(WalCopyLag {
            source: source.to_owned(),
            destination: repository.to_owned(),
            pending: to_u64("pending", row.pending)?,
            pending_bytes: to_u64("pending_bytes", row.pending_bytes)?,
            done: to_u64("done", done)?,
            oldest_pending_since: row.oldest_pending_since,
            last_copied_at,
        })
    }

    /// The copies of one archived WAL file in other repositories.
    pub async fn wal_copies(&self, source: &str, file_name: &str) -> Result<Vec<WalFileCopy>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            source: String,
            file_name: String,
            repository: String,
            object_key: String,
            stored_size: i64,
            stored_sha256: String,
            copied_at: DateTime<Utc>,
        }
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT source, file_name, repository, object_key, stored_size, stored_sha256, \
             copied_at FROM wal_file_copies WHERE source = $1 AND file_name = $2 \
             ORDER BY repository"
        )
        .bind(source)
        .bind(file_name)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("listing the copies of WAL file {file_name}")))?;
        rows.into_iter()
            .map(|r| {
                Ok(WalFileCopy {
                    stored_size: u64::try_from(r.stored_size)
                        .map_err(|_| corrupt("wal_file_copies.stored_size", r.stored_size))?,
                    source: r.source,
                    file_name: r.file_name,
                    repository: r.repository,
                    object_key: r.object_key,
                    stored_sha256: r.stored_sha256,
                    copied_at: r.copied_at,
                })
            })
            .collect()
    }

    /// Forgets archived WAL files and their copies (retention; delete the objects afterwards).
    /// Each file is forgotten in one transaction with its `storage_deletions` records.
    pub async fn forget_wal_files(&self, source: &str, file_names: &[String]) -> Result<u64> {
        let mut forgotten = 0;
        let now = micros(chrono::Utc::now());
        for name in file_names {
            let action = format!("forgetting WAL file {name} of {source}");
            forgotten += in_transaction!(self, action, |tx| {
                for sql in [
                    crate::usage::LEDGER_WAL_COPIES,
                    crate::usage::LEDGER_WAL_FILE,
                    "DELETE FROM wal_file_copies WHERE source = $1 AND file_name = $2",
                ] {
                    let query = sqlx::query(sql).bind(source).bind(name);
                    let query = if sql.starts_with("INSERT") {
                        query.bind(now)
                    } else {
                        query
                    };
                    query.execute(&mut *tx).await.map_err(db(action.clone()))?;
                }
                sqlx::query("DELETE FROM wal_files WHERE source = $1 AND file_name = $2")
                    .bind(source)
                    .bind(name)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?
                    .rows_affected()
            });
        }
        Ok(forgotten)
    }

    /// Records where a PostgreSQL base backup starts and stops in the WAL (replacing any
    /// earlier record of the same backup).
    pub async fn record_postgres_backup(&self, p: &PostgresBackupRecord) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO postgres_backups ({PG_BACKUP_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (backup_id) DO UPDATE SET \
             start_lsn = excluded.start_lsn, stop_lsn = excluded.stop_lsn, \
             timeline = excluded.timeline, start_wal = excluded.start_wal, \
             stop_wal = excluded.stop_wal, start_time = excluded.start_time, \
             stop_time = excluded.stop_time, parent_backup_id = excluded.parent_backup_id"
        ))
        .bind(p.backup_id.to_string())
        .bind(&p.start_lsn)
        .bind(&p.stop_lsn)
        .bind(i64::from(p.timeline))
        .bind(&p.start_wal)
        .bind(&p.stop_wal)
        .bind(micros(p.start_time))
        .bind(micros(p.stop_time))
        .bind(p.parent_backup_id.map(|b| b.to_string()))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the WAL position of backup {}",
            p.backup_id
        )))
    }

    pub async fn postgres_backup(&self, id: BackupId) -> Result<Option<PostgresBackupRecord>> {
        let row: Option<PostgresBackupRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {PG_BACKUP_COLUMNS} FROM postgres_backups WHERE backup_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the WAL position of backup {id}")))?;
        row.map(PostgresBackupRecord::try_from).transpose()
    }

    /// The WAL positions of `source`'s complete base backups, oldest first.
    pub async fn postgres_backups(&self, source: &str) -> Result<Vec<PostgresBackupRecord>> {
        let rows: Vec<PostgresBackupRow> = with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT p.backup_id, p.start_lsn, p.stop_lsn, p.timeline, p.start_wal, p.stop_wal, \
             p.start_time, p.stop_time, p.parent_backup_id \
             FROM postgres_backups p JOIN backups b ON b.id = p.backup_id \
             WHERE b.source = $1 AND b.status = 'complete' ORDER BY p.stop_time, p.backup_id"
        )
        .bind(source)
        .fetch_all(pool)
        .await
        })
        .map_err(db(format!("listing the base backups of {source}")))?;
        rows.into_iter()
            .map(PostgresBackupRecord::try_from)
            .collect()
    }
}
