//! What retention (`backupctl prune`) needs from the catalog: legal holds, the `deleting`
//! state a backup enters before its objects are removed, and where (and since when) each of a
//! source's artifacts is stored.
//!
//! Deleting a backup is three steps, each safe to repeat after a crash: [`Catalog::mark_deleting`]
//! (from then on nothing restores, verifies or imports it), deleting its objects from every
//! repository holding a copy, and [`Catalog::delete_backup`] for the rows.

use backup_core::{ArtifactId, BackupId};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{
    backup_columns, parse_artifact_id, parse_backup_id, BackupRecord, BackupRow, BackupStatus,
};

/// One stored copy of one artifact of a backup, as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCopy {
    pub backup_id: BackupId,
    pub artifact_id: ArtifactId,
    pub repository: String,
    pub object_key: String,
    pub storage_class: Option<String>,
    pub stored_size: u64,
    /// When the copy was first recorded; minimum storage durations count from here.
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct StoredCopyRow {
    backup_id: String,
    artifact_id: String,
    repository: String,
    object_key: String,
    storage_class: Option<String>,
    stored_size: i64,
    created_at: DateTime<Utc>,
}

impl TryFrom<StoredCopyRow> for StoredCopy {
    type Error = CatalogError;

    fn try_from(row: StoredCopyRow) -> Result<Self> {
        Ok(StoredCopy {
            backup_id: parse_backup_id("artifacts.backup_id", &row.backup_id)?,
            artifact_id: parse_artifact_id("copies.artifact_id", &row.artifact_id)?,
            repository: row.repository,
            object_key: row.object_key,
            storage_class: row.storage_class,
            stored_size: u64::try_from(row.stored_size).map_err(|_| CatalogError::Corrupt {
                field: "copies.stored_size",
                value: row.stored_size.to_string(),
            })?,
            created_at: row.created_at,
        })
    }
}

/// How often `mark_deleting` re-reads a backup whose status changed under it.
const STATE_RACE_RETRIES: usize = 3;

impl Catalog {
    /// Sets or clears the legal hold of a backup in any state but `deleting`; returns the
    /// updated backup. A held backup is never deleted: [`mark_deleting`](Self::mark_deleting)
    /// and [`delete_backup`](Self::delete_backup) refuse it, and the retention planner keeps
    /// it. Setting a hold that is already set is a no-op.
    #[tracing::instrument(skip_all, fields(backup_id = %id, hold))]
    pub async fn set_legal_hold(&self, id: BackupId, hold: bool) -> Result<BackupRecord> {
        let row: Option<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "UPDATE backups SET legal_hold = $2 WHERE id = $1 AND status <> 'deleting' \
             RETURNING ",
            backup_columns!()
        ))
        .bind(id.to_string())
        .bind(hold)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!(
            "{} the legal hold of backup {id}",
            if hold { "setting" } else { "clearing" }
        )))?;
        if let Some(row) = row {
            let record = BackupRecord::try_from(row)?;
            tracing::info!(source = %record.source, "legal hold {}", if hold { "set" } else { "cleared" });
            return Ok(record);
        }
        match self.get_backup(id).await? {
            None => Err(CatalogError::BackupNotFound { id }),
            Some(_) => Err(CatalogError::BackupDeleting { id }),
        }
    }

    /// First step of deleting a finished backup: `complete`, `failed` or `abandoned` becomes
    /// `deleting`, after which the backup is never restored, verified or re-imported. Refuses
    /// running backups (`BackupRunning`) and held ones (`LegalHold`); a backup that is already
    /// `deleting` is returned as it is, so a crashed prune can simply be repeated.
    #[tracing::instrument(skip_all, fields(backup_id = %id))]
    pub async fn mark_deleting(&self, id: BackupId) -> Result<BackupRecord> {
        for _ in 0..STATE_RACE_RETRIES {
            let row: Option<BackupRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
                "UPDATE backups SET status = 'deleting' \
                 WHERE id = $1 AND status IN ('complete', 'failed', 'abandoned') \
                 AND NOT legal_hold RETURNING ",
                backup_columns!()
            ))
            .bind(id.to_string())
            .fetch_optional(pool)
            .await)
            .map_err(db(format!("marking backup {id} deleting")))?;
            if let Some(row) = row {
                tracing::info!("backup marked deleting");
                return BackupRecord::try_from(row);
            }
            match self.get_backup(id).await? {
                None => return Err(CatalogError::BackupNotFound { id }),
                Some(b) if b.status == BackupStatus::Deleting => return Ok(b),
                Some(b) if b.status == BackupStatus::Running => {
                    return Err(CatalogError::BackupRunning { id })
                }
                Some(b) if b.legal_hold => return Err(CatalogError::LegalHold { id }),
                // Its status or hold changed between the two statements: try again.
                Some(_) => continue,
            }
        }
        Err(CatalogError::InvalidValue {
            field: "backup status",
            value: id.to_string(),
            reason: "the backup kept changing while it was being marked deleting; retry".into(),
        })
    }

    /// Every recorded copy of every artifact of `source`'s backups (any status), ordered by
    /// backup, artifact and repository: where a backup is stored, in which storage class and
    /// since when.
    /// [`Catalog::stored_copies`] of every source at once (one query for a whole prune).
    pub async fn all_stored_copies(&self) -> Result<Vec<StoredCopy>> {
        let rows: Vec<StoredCopyRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT a.backup_id, c.artifact_id, c.repository, c.object_key, c.storage_class, \
             c.stored_size, c.created_at \
             FROM copies c JOIN artifacts a ON a.id = c.artifact_id \
             ORDER BY a.backup_id, c.artifact_id, c.repository"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("listing the stored copies"))?;
        rows.into_iter().map(StoredCopy::try_from).collect()
    }

    pub async fn stored_copies(&self, source: &str) -> Result<Vec<StoredCopy>> {
        let rows: Vec<StoredCopyRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT a.backup_id, c.artifact_id, c.repository, c.object_key, c.storage_class, \
             c.stored_size, c.created_at \
             FROM copies c JOIN artifacts a ON a.id = c.artifact_id \
             JOIN backups b ON b.id = a.backup_id \
             WHERE b.source = $1 ORDER BY a.backup_id, c.artifact_id, c.repository"
        )
        .bind(source)
        .fetch_all(pool)
        .await)
        .map_err(db(format!(
            "listing the stored copies of source {source:?}"
        )))?;
        rows.into_iter().map(StoredCopy::try_from).collect()
    }
}
