//! What `kind = "atlas"` sources need from the catalog: the Atlas cloud backup snapshot each
//! backup took, so that retention deletes it in Atlas and restores name it.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, validate_not_empty};

/// The Atlas snapshot a backup took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AtlasSnapshotRecord {
    pub backup_id: BackupId,
    pub project_id: String,
    pub cluster: String,
    pub snapshot_id: String,
    pub snapshot_created: DateTime<Utc>,
    pub storage_size: u64,
    /// Whether the snapshot's files were downloaded into the backup's artifact.
    pub exported: bool,
}

const COLUMNS: &str =
    "backup_id, project_id, cluster, snapshot_id, snapshot_created, storage_size, exported";

#[derive(sqlx::FromRow)]
struct AtlasSnapshotRow {
    backup_id: String,
    project_id: String,
    cluster: String,
    snapshot_id: String,
    snapshot_created: DateTime<Utc>,
    storage_size: i64,
    exported: bool,
}

impl TryFrom<AtlasSnapshotRow> for AtlasSnapshotRecord {
    type Error = CatalogError;

    fn try_from(r: AtlasSnapshotRow) -> Result<Self> {
        Ok(AtlasSnapshotRecord {
            backup_id: parse_backup_id("atlas_snapshots.backup_id", &r.backup_id)?,
            project_id: r.project_id,
            cluster: r.cluster,
            snapshot_id: r.snapshot_id,
            snapshot_created: r.snapshot_created,
            storage_size: u64::try_from(r.storage_size).map_err(|_| CatalogError::Corrupt {
                field: "atlas_snapshots.storage_size",
                value: r.storage_size.to_string(),
            })?,
            exported: r.exported,
        })
    }
}

impl Catalog {
    /// Records (or, from a catalog rebuild, replaces) the Atlas snapshot of a backup.
    pub async fn record_atlas_snapshot(&self, s: &AtlasSnapshotRecord) -> Result<()> {
        validate_not_empty("snapshot_id", &s.snapshot_id)?;
        validate_not_empty("project_id", &s.project_id)?;
        validate_not_empty("cluster", &s.cluster)?;
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO atlas_snapshots ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (backup_id) DO UPDATE SET project_id = excluded.project_id, \
             cluster = excluded.cluster, snapshot_id = excluded.snapshot_id, \
             snapshot_created = excluded.snapshot_created, \
             storage_size = excluded.storage_size, exported = excluded.exported"
        ))
        .bind(s.backup_id.to_string())
        .bind(&s.project_id)
        .bind(&s.cluster)
        .bind(&s.snapshot_id)
        .bind(micros(s.snapshot_created))
        .bind(to_i64("storage_size", s.storage_size)?)
        .bind(s.exported)
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the Atlas snapshot of backup {}",
            s.backup_id
        )))
    }

    pub async fn atlas_snapshot(&self, id: BackupId) -> Result<Option<AtlasSnapshotRecord>> {
        let row: Option<AtlasSnapshotRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM atlas_snapshots WHERE backup_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the Atlas snapshot of backup {id}")))?;
        row.map(AtlasSnapshotRecord::try_from).transpose()
    }

    /// The Atlas snapshots of `source`'s backups (any status), oldest first.
    pub async fn atlas_snapshots(&self, source: &str) -> Result<Vec<AtlasSnapshotRecord>> {
        let rows: Vec<AtlasSnapshotRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT a.backup_id, a.project_id, a.cluster, a.snapshot_id, a.snapshot_created, \
             a.storage_size, a.exported FROM atlas_snapshots a \
             JOIN backups b ON b.id = a.backup_id WHERE b.source = $1 \
             ORDER BY a.snapshot_created, a.backup_id"
        )
        .bind(source)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("listing the Atlas snapshots of {source}")))?;
        rows.into_iter()
            .map(AtlasSnapshotRecord::try_from)
            .collect()
    }

    /// Forgets a backup's snapshot once it is deleted in Atlas.
    pub async fn forget_atlas_snapshot(&self, id: BackupId) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM atlas_snapshots WHERE backup_id = $1"
        )
        .bind(id.to_string())
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!("forgetting the Atlas snapshot of backup {id}")))
    }

    /// The snapshots of failed backups, with their source: a failure that could not delete
    /// its snapshot in Atlas leaves it here for gc.
    pub async fn failed_backups_atlas_snapshots(
        &self,
    ) -> Result<Vec<(String, AtlasSnapshotRecord)>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            source: String,
            #[sqlx(flatten)]
            snapshot: AtlasSnapshotRow,
        }
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT b.source, a.backup_id, a.project_id, a.cluster, a.snapshot_id, \
             a.snapshot_created, a.storage_size, a.exported FROM atlas_snapshots a \
             JOIN backups b ON b.id = a.backup_id WHERE b.status = 'failed' \
             ORDER BY a.snapshot_created, a.backup_id"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("listing the Atlas snapshots of failed backups"))?;
        rows.into_iter()
            .map(|r| Ok((r.source, AtlasSnapshotRecord::try_from(r.snapshot)?)))
            .collect()
    }
}
