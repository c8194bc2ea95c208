//! What Elasticsearch sources need from the catalog: the snapshot each backup made (its name
//! and repository in the cluster, indices, shards, size and state). The snapshot's data stays
//! in the cluster's snapshot repository.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, validate_not_empty};

/// The snapshot behind one Elasticsearch backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElasticsearchSnapshotRecord {
    pub backup_id: BackupId,
    /// The snapshot repository in the cluster.
    pub es_repository: String,
    pub snapshot: String,
    pub snapshot_uuid: String,
    /// `SUCCESS` for complete backups.
    pub state: String,
    pub indices: Vec<String>,
    pub shards_total: u64,
    pub shards_failed: u64,
    pub size_bytes: u64,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    backup_id: String,
    es_repository: String,
    snapshot: String,
    snapshot_uuid: String,
    state: String,
    indices: String,
    shards_total: i64,
    shards_failed: i64,
    size_bytes: i64,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

fn corrupt(field: &'static str, value: impl std::fmt::Display) -> CatalogError {
    CatalogError::Corrupt {
        field,
        value: value.to_string(),
    }
}

impl TryFrom<SnapshotRow> for ElasticsearchSnapshotRecord {
    type Error = CatalogError;

    fn try_from(r: SnapshotRow) -> Result<Self> {
        let count = |field, v: i64| u64::try_from(v).map_err(|_| corrupt(field, v));
        Ok(ElasticsearchSnapshotRecord {
            backup_id: parse_backup_id("elasticsearch_snapshots.backup_id", &r.backup_id)?,
            es_repository: r.es_repository,
            snapshot: r.snapshot,
            snapshot_uuid: r.snapshot_uuid,
            state: r.state,
            indices: serde_json::from_str(&r.indices)
                .map_err(|_| corrupt("elasticsearch_snapshots.indices", &r.indices))?,
            shards_total: count("elasticsearch_snapshots.shards_total", r.shards_total)?,
            shards_failed: count("elasticsearch_snapshots.shards_failed", r.shards_failed)?,
            size_bytes: count("elasticsearch_snapshots.size_bytes", r.size_bytes)?,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

const COLUMNS: &str = "backup_id, es_repository, snapshot, snapshot_uuid, state, indices, \
     shards_total, shards_failed, size_bytes, started_at, finished_at";

impl Catalog {
    /// Records the snapshot of an Elasticsearch backup (replacing an earlier record of the
    /// same backup).
    pub async fn record_elasticsearch_snapshot(
        &self,
        s: &ElasticsearchSnapshotRecord,
    ) -> Result<()> {
        validate_not_empty("es_repository", &s.es_repository)?;
        validate_not_empty("snapshot", &s.snapshot)?;
        validate_not_empty("state", &s.state)?;
        let indices = serde_json::to_string(&s.indices).expect("strings serialize");
        let (total, failed, size) = (
            to_i64("shards_total", s.shards_total)?,
            to_i64("shards_failed", s.shards_failed)?,
            to_i64("size_bytes", s.size_bytes)?,
        );
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO elasticsearch_snapshots ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (backup_id) DO UPDATE SET \
             es_repository = excluded.es_repository, snapshot = excluded.snapshot, \
             snapshot_uuid = excluded.snapshot_uuid, state = excluded.state, \
             indices = excluded.indices, shards_total = excluded.shards_total, \
             shards_failed = excluded.shards_failed, size_bytes = excluded.size_bytes, \
             started_at = excluded.started_at, finished_at = excluded.finished_at"
        ))
        .bind(s.backup_id.to_string())
        .bind(&s.es_repository)
        .bind(&s.snapshot)
        .bind(&s.snapshot_uuid)
        .bind(&s.state)
        .bind(&indices)
        .bind(total)
        .bind(failed)
        .bind(size)
        .bind(micros(s.started_at))
        .bind(micros(s.finished_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the snapshot {} of backup {}",
            s.snapshot, s.backup_id
        )))
    }

    /// The snapshot of backup `id`, if it is an Elasticsearch backup.
    pub async fn elasticsearch_snapshot(
        &self,
        id: BackupId,
    ) -> Result<Option<ElasticsearchSnapshotRecord>> {
        let row: Option<SnapshotRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM elasticsearch_snapshots WHERE backup_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the snapshot of backup {id}")))?;
        row.map(ElasticsearchSnapshotRecord::try_from).transpose()
    }

    /// The snapshots of `source`'s complete backups, oldest first.
    pub async fn elasticsearch_snapshots(
        &self,
        source: &str,
    ) -> Result<Vec<ElasticsearchSnapshotRecord>> {
        let rows: Vec<SnapshotRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT e.backup_id, e.es_repository, e.snapshot, e.snapshot_uuid, e.state, \
             e.indices, e.shards_total, e.shards_failed, e.size_bytes, e.started_at, \
             e.finished_at FROM elasticsearch_snapshots e JOIN backups b ON b.id = e.backup_id \
             WHERE b.source = $1 AND b.status = 'complete' ORDER BY e.finished_at, e.backup_id"
        )
        .bind(source)
        .fetch_all(pool)
        .await)
        .map_err(db(format!("listing the snapshots of {source}")))?;
        rows.into_iter()
            .map(ElasticsearchSnapshotRecord::try_from)
            .collect()
    }
}
