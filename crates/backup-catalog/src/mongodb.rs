//! What MongoDB sources need from the catalog: the oplog range of each logical backup, and
//! the archived oplog slices of each source (whose newest end is where archiving resumes).
//!
//! Oplog positions are BSON timestamps `(seconds, increment)`, kept as [`OplogTs`].

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, validate_not_empty, validate_sha256};

/// An oplog position: BSON timestamp seconds and increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct OplogTs {
    pub t: u32,
    pub i: u32,
}

/// The oplog range of a MongoDB logical backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MongoBackupRecord {
    pub backup_id: BackupId,
    pub start: OplogTs,
    /// Where the backup is consistent.
    pub end: OplogTs,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
}

/// One archived oplog slice: the entries after `after` up to and including `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OplogSliceRecord {
    pub source: String,
    pub after: OplogTs,
    pub last: OplogTs,
    pub entries: u64,
    pub repository: String,
    pub object_key: String,
    pub plaintext_size: u64,
    /// Lowercase hex.
    pub plaintext_sha256: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    pub archived_at: DateTime<Utc>,
}

fn corrupt(field: &'static str, value: impl ToString) -> CatalogError {
    CatalogError::Corrupt {
        field,
        value: value.to_string(),
    }
}

fn ts(field: &'static str, t: i64, i: i64) -> Result<OplogTs> {
    Ok(OplogTs {
        t: u32::try_from(t).map_err(|_| corrupt(field, t))?,
        i: u32::try_from(i).map_err(|_| corrupt(field, i))?,
    })
}

#[derive(sqlx::FromRow)]
struct MongoBackupRow {
    backup_id: String,
    start_t: i64,
    start_i: i64,
    end_t: i64,
    end_i: i64,
    start_time: DateTime<Utc>,
    end_time: DateTime<Utc>,
}

impl TryFrom<MongoBackupRow> for MongoBackupRecord {
    type Error = CatalogError;

    fn try_from(r: MongoBackupRow) -> Result<Self> {
        Ok(MongoBackupRecord {
            backup_id: parse_backup_id("mongo_backups.backup_id", &r.backup_id)?,
            start: ts("mongo_backups.start", r.start_t, r.start_i)?,
            end: ts("mongo_backups.end", r.end_t, r.end_i)?,
            start_time: r.start_time,
            end_time: r.end_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct OplogSliceRow {
    source: String,
    after_t: i64,
    after_i: i64,
    last_t: i64,
    last_i: i64,
    entries: i64,
    repository: String,
    object_key: String,
    plaintext_size: i64,
    plaintext_sha256: String,
    stored_size: i64,
    stored_sha256: String,
    archived_at: DateTime<Utc>,
}

impl TryFrom<OplogSliceRow> for OplogSliceRecord {
    type Error = CatalogError;

    fn try_from(r: OplogSliceRow) -> Result<Self> {
        let size = |field, v: i64| u64::try_from(v).map_err(|_| corrupt(field, v));
        Ok(OplogSliceRecord {
            source: r.source,
            after: ts("mongo_oplog_slices.after", r.after_t, r.after_i)?,
            last: ts("mongo_oplog_slices.last", r.last_t, r.last_i)?,
            entries: size("mongo_oplog_slices.entries", r.entries)?,
            repository: r.repository,
            object_key: r.object_key,
            plaintext_size: size("mongo_oplog_slices.plaintext_size", r.plaintext_size)?,
            plaintext_sha256: r.plaintext_sha256,
            stored_size: size("mongo_oplog_slices.stored_size", r.stored_size)?,
            stored_sha256: r.stored_sha256,
            archived_at: r.archived_at,
        })
    }
}

const MONGO_BACKUP_COLUMNS: &str =
    "backup_id, start_t, start_i, end_t, end_i, start_time, end_time";
const SLICE_COLUMNS: &str = "source, after_t, after_i, last_t, last_i, entries, repository, \
     object_key, plaintext_size, plaintext_sha256, stored_size, stored_sha256, archived_at";

impl Catalog {
    /// Records (or, from a catalog rebuild, replaces) the oplog range of a MongoDB backup.
    pub async fn record_mongo_backup(&self, m: &MongoBackupRecord) -> Result<()> {
        if m.end < m.start {
            return Err(CatalogError::InvalidValue {
                field: "mongo_backups.end",
                value: format!("{}.{}", m.end.t, m.end.i),
                reason: "the end of a backup's oplog range is before its start".into(),
            });
        }
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO mongo_backups ({MONGO_BACKUP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (backup_id) DO UPDATE SET start_t = excluded.start_t, \
             start_i = excluded.start_i, end_t = excluded.end_t, end_i = excluded.end_i, \
             start_time = excluded.start_time, end_time = excluded.end_time"
        ))
        .bind(m.backup_id.to_string())
        .bind(i64::from(m.start.t))
        .bind(i64::from(m.start.i))
        .bind(i64::from(m.end.t))
        .bind(i64::from(m.end.i))
        .bind(micros(m.start_time))
        .bind(micros(m.end_time))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the oplog range of backup {}",
            m.backup_id
        )))
    }

    pub async fn mongo_backup(&self, id: BackupId) -> Result<Option<MongoBackupRecord>> {
        let row: Option<MongoBackupRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {MONGO_BACKUP_COLUMNS} FROM mongo_backups WHERE backup_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the oplog range of backup {id}")))?;
        row.map(MongoBackupRecord::try_from).transpose()
    }

    /// The oplog ranges of `source`'s complete backups, oldest end first.
    pub async fn mongo_backups(&self, source: &str) -> Result<Vec<MongoBackupRecord>> {
        let rows: Vec<MongoBackupRow> = with_pool!(self, |pool| {
            sqlx::query_as(
                "SELECT m.backup_id, m.start_t, m.start_i, m.end_t, m.end_i, m.start_time, \
                 m.end_time FROM mongo_backups m JOIN backups b ON b.id = m.backup_id \
                 WHERE b.source = $1 AND b.status = 'complete' \
                 ORDER BY m.end_t, m.end_i, m.backup_id",
            )
            .bind(source)
            .fetch_all(pool)
            .await
        })
        .map_err(db(format!("listing the MongoDB backups of {source}")))?;
        rows.into_iter().map(MongoBackupRecord::try_from).collect()
    }

    /// Records an archived oplog slice once it is durable and verified. Returns false when a
    /// slice with the same end was recorded already (a repeated write of the same slice).
    pub async fn record_oplog_slice(&self, s: &OplogSliceRecord) -> Result<bool> {
        validate_not_empty("source", &s.source)?;
        validate_not_empty("object_key", &s.object_key)?;
        validate_sha256("plaintext_sha256", &s.plaintext_sha256)?;
        validate_sha256("stored_sha256", &s.stored_sha256)?;
        if s.last <= s.after {
            return Err(CatalogError::InvalidValue {
                field: "mongo_oplog_slices.last",
                value: format!("{}.{}", s.last.t, s.last.i),
                reason: "an oplog slice must end after the position it starts after".into(),
            });
        }
        let rows = with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO mongo_oplog_slices ({SLICE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (source, last_t, last_i) DO NOTHING"
        ))
        .bind(&s.source)
        .bind(i64::from(s.after.t))
        .bind(i64::from(s.after.i))
        .bind(i64::from(s.last.t))
        .bind(i64::from(s.last.i))
        .bind(to_i64("entries", s.entries)?)
        .bind(&s.repository)
        .bind(&s.object_key)
        .bind(to_i64("plaintext_size", s.plaintext_size)?)
        .bind(&s.plaintext_sha256)
        .bind(to_i64("stored_size", s.stored_size)?)
        .bind(&s.stored_sha256)
        .bind(micros(s.archived_at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("recording an oplog slice of {}", s.source)))?;
        Ok(rows == 1)
    }

    /// Every archived oplog slice of `source`, in oplog order.
    pub async fn oplog_slices(&self, source: &str) -> Result<Vec<OplogSliceRecord>> {
        let rows: Vec<OplogSliceRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {SLICE_COLUMNS} FROM mongo_oplog_slices WHERE source = $1 \
             ORDER BY last_t, last_i"
        ))
        .bind(source)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("listing the oplog slices of {source}")))?;
        rows.into_iter().map(OplogSliceRecord::try_from).collect()
    }

    /// The newest archived oplog slice of `source`: where archiving resumes.
    pub async fn last_oplog_slice(&self, source: &str) -> Result<Option<OplogSliceRecord>> {
        let row: Option<OplogSliceRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {SLICE_COLUMNS} FROM mongo_oplog_slices WHERE source = $1 \
             ORDER BY last_t DESC, last_i DESC LIMIT 1"
        ))
        .bind(source)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the newest oplog slice of {source}")))?;
        row.map(OplogSliceRecord::try_from).transpose()
    }

    /// Forgets the slices of `source` ending at `ends` (their objects are deleted next).
    pub async fn forget_oplog_slices(&self, source: &str, ends: &[OplogTs]) -> Result<()> {
        for end in ends {
            with_pool!(self, |pool| sqlx::query(
                "DELETE FROM mongo_oplog_slices WHERE source = $1 AND last_t = $2 AND last_i = $3"
            )
            .bind(source)
            .bind(i64::from(end.t))
            .bind(i64::from(end.i))
            .execute(pool)
            .await
            .map(|_| ()))
            .map_err(db(format!("forgetting an oplog slice of {source}")))?;
        }
        Ok(())
    }

    /// Takes (or renews) the lease on archiving `source`'s oplog for `owner` until
    /// `now + lease`: granted when nobody holds it, `owner` does, or the holder's lease has
    /// passed (its replica died). `false`: another replica archives it.
    pub async fn claim_oplog_archiver(
        &self,
        source: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
    ) -> Result<bool> {
        let now = micros(now);
        let expires = crate::jobs::lease_expiry(now, lease)?;
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO oplog_archivers (source, owner, lease_expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (source) DO UPDATE SET owner = excluded.owner, \
             lease_expires_at = excluded.lease_expires_at \
             WHERE oplog_archivers.owner = excluded.owner OR oplog_archivers.lease_expires_at < $4"
        )
        .bind(source)
        .bind(owner)
        .bind(expires)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })
        .map_err(db(format!(
            "claiming the oplog archiving of {source} for {owner:?}"
        )))?;
        Ok(rows == 1)
    }

    /// Gives up `owner`'s lease on archiving `source`'s oplog (at shutdown).
    pub async fn release_oplog_archiver(&self, source: &str, owner: &str) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM oplog_archivers WHERE source = $1 AND owner = $2"
        )
        .bind(source)
        .bind(owner)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!("releasing the oplog archiving of {source}")))
    }
}
