//! Crypto-shredded backups (migration 0010): what `backupctl shred` made unreadable, kept after
//! the backup itself is deleted.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, Result};
use crate::model::{micros, parse_backup_id};

/// A backup `backupctl shred` made unreadable (migration 0010).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShredRecord {
    pub backup_id: BackupId,
    pub source: String,
    pub backup_started_at: DateTime<Utc>,
    /// Repositories its key envelope was deleted from.
    pub repositories: Vec<String>,
    pub shredded_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct ShredRow {
    backup_id: String,
    source: String,
    backup_started_at: DateTime<Utc>,
    repositories: String,
    shredded_at: DateTime<Utc>,
}

impl Catalog {
    /// Records a shred (again: replaces the earlier record, as a repeated shred may have
    /// reached more repositories).
    pub async fn record_shred(&self, r: &ShredRecord) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO shredded_backups \
             (backup_id, source, backup_started_at, repositories, shredded_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (backup_id) DO UPDATE SET \
             repositories = excluded.repositories, shredded_at = excluded.shredded_at"
        )
        .bind(r.backup_id.to_string())
        .bind(&r.source)
        .bind(micros(r.backup_started_at))
        .bind(r.repositories.join(","))
        .bind(micros(r.shredded_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!("recording the shred of backup {}", r.backup_id)))?;
        Ok(())
    }

    /// Every shredded backup, newest shred first.
    pub async fn list_shreds(&self) -> Result<Vec<ShredRecord>> {
        let rows: Vec<ShredRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT backup_id, source, backup_started_at, repositories, shredded_at \
             FROM shredded_backups ORDER BY shredded_at DESC"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("listing shredded backups"))?;
        rows.into_iter()
            .map(|r| {
                Ok(ShredRecord {
                    backup_id: parse_backup_id("shredded_backups.backup_id", &r.backup_id)?,
                    source: r.source,
                    backup_started_at: r.backup_started_at,
                    repositories: r.repositories.split(',').map(str::to_owned).collect(),
                    shredded_at: r.shredded_at,
                })
            })
            .collect()
    }
}
