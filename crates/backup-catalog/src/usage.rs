//! What the cost report needs from the catalog (migration 0008): every stored object that
//! existed in a time range with when it was recorded and (if it is gone) deleted, and the
//! recorded reads and archive restore requests.
//!
//! Deletions are recorded in `storage_deletions` by the methods that forget stored objects
//! ([`Catalog::delete_backup`], [`Catalog::forget_copies`], [`Catalog::forget_wal_files`]), in
//! the same transaction as the rows they remove, via the statements below.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, to_i64, validate_not_empty};

/// Copies of a backup's artifacts about to be deleted: `$1` backup id, `$2` deletion time.
pub(crate) const LEDGER_BACKUP_COPIES: &str = "INSERT INTO storage_deletions \
     (source, repository, origin_repository, object_kind, object_key, backup_id, storage_class, \
      stored_size, created_at, deleted_at) \
     SELECT b.source, c.repository, b.repository, 'artifact', c.object_key, b.id, \
            c.storage_class, c.stored_size, c.created_at, $2 \
     FROM copies c JOIN artifacts a ON a.id = c.artifact_id JOIN backups b ON b.id = a.backup_id \
     WHERE b.id = $1";

/// The same for one repository: `$3` repository.
pub(crate) const LEDGER_BACKUP_COPIES_IN: &str = "INSERT INTO storage_deletions \
     (source, repository, origin_repository, object_kind, object_key, backup_id, storage_class, \
      stored_size, created_at, deleted_at) \
     SELECT b.source, c.repository, b.repository, 'artifact', c.object_key, b.id, \
            c.storage_class, c.stored_size, c.created_at, $2 \
     FROM copies c JOIN artifacts a ON a.id = c.artifact_id JOIN backups b ON b.id = a.backup_id \
     WHERE b.id = $1 AND c.repository = $3";

/// A WAL file's copies (`$1` source, `$2` file name, `$3` deletion time)...
pub(crate) const LEDGER_WAL_COPIES: &str = "INSERT INTO storage_deletions \
     (source, repository, origin_repository, object_kind, object_key, backup_id, storage_class, \
      stored_size, created_at, deleted_at) \
     SELECT c.source, c.repository, w.repository, 'wal', c.object_key, NULL, NULL, \
            c.stored_size, c.copied_at, $3 \
     FROM wal_file_copies c JOIN wal_files w ON w.source = c.source AND w.file_name = c.file_name \
     WHERE c.source = $1 AND c.file_name = $2";

/// ...and the file itself.
pub(crate) const LEDGER_WAL_FILE: &str = "INSERT INTO storage_deletions \
     (source, repository, origin_repository, object_kind, object_key, backup_id, storage_class, \
      stored_size, created_at, deleted_at) \
     SELECT source, repository, repository, 'wal', object_key, NULL, NULL, stored_size, \
            archived_at, $3 \
     FROM wal_files WHERE source = $1 AND file_name = $2";

/// A stored object (artifact copy, archived WAL file or WAL copy), live or deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageObject {
    pub source: String,
    pub repository: String,
    /// The repository the data was first written to (differs for a copy).
    pub origin_repository: String,
    /// `artifact` or `wal`.
    pub kind: String,
    pub object_key: String,
    pub backup_id: Option<String>,
    /// `None`: the repository's own class.
    pub storage_class: Option<String>,
    pub stored_size: u64,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    source: String,
    repository: String,
    origin_repository: String,
    kind: String,
    object_key: String,
    backup_id: Option<String>,
    storage_class: Option<String>,
    stored_size: i64,
    created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DeletionRow {
    source: String,
    repository: String,
    origin_repository: String,
    object_kind: String,
    object_key: String,
    backup_id: Option<String>,
    storage_class: Option<String>,
    stored_size: i64,
    created_at: DateTime<Utc>,
    deleted_at: DateTime<Utc>,
}

fn size(field: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| CatalogError::Corrupt {
        field,
        value: v.to_string(),
    })
}

/// `get` (objects read) or `restore` (archive restore requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestOperation {
    Get,
    Restore,
}

impl RequestOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOperation::Get => "get",
            RequestOperation::Restore => "restore",
        }
    }
}

/// Requests that read (or thawed) stored data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRequests {
    pub source: String,
    pub repository: String,
    pub storage_class: Option<String>,
    pub operation: RequestOperation,
    /// The retrieval tier of a restore request.
    pub tier: Option<String>,
    pub requests: u64,
    pub bytes: u64,
    pub requested_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RequestRow {
    source: String,
    repository: String,
    storage_class: Option<String>,
    operation: String,
    tier: Option<String>,
    requests: i64,
    bytes: i64,
    requested_at: DateTime<Utc>,
}

impl Catalog {
    /// Every stored object recorded before `to` and not deleted before `from`: live artifact
    /// copies, archived WAL files and their copies, and deleted objects from
    /// `storage_deletions`. Ordered by source, repository, creation time.
    pub async fn usage_objects(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageObject>> {
        let (from, to) = (micros(from), micros(to));
        let live = [
            "SELECT b.source, c.repository, b.repository AS origin_repository, \
             'artifact' AS kind, c.object_key, b.id AS backup_id, c.storage_class, \
             c.stored_size, c.created_at \
             FROM copies c JOIN artifacts a ON a.id = c.artifact_id \
             JOIN backups b ON b.id = a.backup_id WHERE c.created_at < $1",
            "SELECT source, repository, repository AS origin_repository, 'wal' AS kind, \
             object_key, NULL AS backup_id, NULL AS storage_class, stored_size, \
             archived_at AS created_at FROM wal_files WHERE archived_at < $1",
            "SELECT c.source, c.repository, w.repository AS origin_repository, 'wal' AS kind, \
             c.object_key, NULL AS backup_id, NULL AS storage_class, c.stored_size, \
             c.copied_at AS created_at \
             FROM wal_file_copies c JOIN wal_files w \
             ON w.source = c.source AND w.file_name = c.file_name WHERE c.copied_at < $1",
        ];
        let mut out = Vec::new();
        for sql in live {
            let rows: Vec<UsageRow> = with_pool!(self, |pool| sqlx::query_as(sql)
                .bind(to)
                .fetch_all(pool)
                .await)
            .map_err(db("listing stored objects for the cost report"))?;
            for r in rows {
                out.push(UsageObject {
                    source: r.source,
                    repository: r.repository,
                    origin_repository: r.origin_repository,
                    kind: r.kind,
                    object_key: r.object_key,
                    backup_id: r.backup_id,
                    storage_class: r.storage_class,
                    stored_size: size("stored_size", r.stored_size)?,
                    created_at: r.created_at,
                    deleted_at: None,
                });
            }
        }
        let rows: Vec<DeletionRow> = with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT source, repository, origin_repository, object_kind, object_key, backup_id, \
             storage_class, stored_size, created_at, deleted_at FROM storage_deletions \
             WHERE created_at < $1 AND deleted_at >= $2"
        )
        .bind(to)
        .bind(from)
        .fetch_all(pool)
        .await
        })
        .map_err(db("listing deleted objects for the cost report"))?;
        for r in rows {
            out.push(UsageObject {
                source: r.source,
                repository: r.repository,
                origin_repository: r.origin_repository,
                kind: r.object_kind,
                object_key: r.object_key,
                backup_id: r.backup_id,
                storage_class: r.storage_class,
                stored_size: size("storage_deletions.stored_size", r.stored_size)?,
                created_at: r.created_at,
                deleted_at: Some(r.deleted_at),
            });
        }
        out.sort_by(|a, b| {
            (&a.source, &a.repository, a.created_at, &a.object_key).cmp(&(
                &b.source,
                &b.repository,
                b.created_at,
                &b.object_key,
            ))
        });
        Ok(out)
    }

    /// Records requests that read stored data (after they succeeded).
    pub async fn record_requests(&self, r: &ObjectRequests) -> Result<()> {
        validate_not_empty("source", &r.source)?;
        validate_not_empty("repository", &r.repository)?;
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO object_requests (source, repository, storage_class, operation, tier, \
             requests, bytes, requested_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        )
        .bind(&r.source)
        .bind(&r.repository)
        .bind(r.storage_class.as_deref())
        .bind(r.operation.as_str())
        .bind(r.tier.as_deref())
        .bind(to_i64("requests", r.requests)?)
        .bind(to_i64("bytes", r.bytes)?)
        .bind(micros(r.requested_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording {} requests on repository {}",
            r.operation.as_str(),
            r.repository
        )))
    }

    /// Recorded requests with `from <= requested_at < to`, oldest first.
    pub async fn object_requests(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<ObjectRequests>> {
        let rows: Vec<RequestRow> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT source, repository, storage_class, operation, tier, requests, bytes, \
             requested_at FROM object_requests WHERE requested_at >= $1 AND requested_at < $2 \
             ORDER BY requested_at"
        )
        .bind(micros(from))
        .bind(micros(to))
        .fetch_all(pool)
        .await)
        .map_err(db("listing recorded requests"))?;
        rows.into_iter()
            .map(|r| {
                Ok(ObjectRequests {
                    operation: match r.operation.as_str() {
                        "get" => RequestOperation::Get,
                        "restore" => RequestOperation::Restore,
                        other => {
                            return Err(CatalogError::Corrupt {
                                field: "object_requests.operation",
                                value: other.to_owned(),
                            })
                        }
                    },
                    source: r.source,
                    repository: r.repository,
                    storage_class: r.storage_class,
                    tier: r.tier,
                    requests: size("object_requests.requests", r.requests)?,
                    bytes: size("object_requests.bytes", r.bytes)?,
                    requested_at: r.requested_at,
                })
            })
            .collect()
    }
}
