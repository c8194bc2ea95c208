//! The replication queue: which completed backups still have to be copied to which other
//! repositories, who is copying them, and how far behind each destination is. Also the
//! restores (thaws) requested for archived copies.
//!
//! ```text
//! enqueue (before the backup completes) --> pending --claim(lease)--> copying
//!   copying --finish--> done           copying --fail--> pending (attempts + 1, later)
//!   copying --lease expires / released--> pending (another copier takes it over)
//! ```
//!
//! Copies themselves are recorded in `copies` (one row per artifact and repository), so a copy
//! interrupted half way resumes with the artifacts it has not recorded yet and nothing is ever
//! recorded twice.

use std::time::Duration;

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{in_transaction, with_pool, Backend, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::jobs::{lease_expiry, validate_owner};
use crate::model::{micros, parse_backup_id, to_i64, to_u64, validate_not_empty};

/// Where a backup must be copied, and in which storage class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyTarget {
    pub destination: String,
    pub storage_class: Option<String>,
}

/// One queued copy of one backup to one destination repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyTask {
    pub backup_id: BackupId,
    pub destination: String,
    pub storage_class: Option<String>,
    /// `pending` or `done`.
    pub status: String,
    pub attempts: u64,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub bytes_copied: u64,
    pub enqueued_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How far one destination is behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationLag {
    pub destination: String,
    /// Complete backups not yet copied there.
    pub pending: u64,
    /// Their stored size in the primary repository.
    pub pending_bytes: u64,
    /// Pending copies that failed at least once.
    pub failing: u64,
    pub done: u64,
    /// When the oldest backup not yet copied there completed: the replication lag counts
    /// from here.
    pub oldest_pending_since: Option<DateTime<Utc>>,
    pub last_copied_at: Option<DateTime<Utc>>,
}

impl DestinationLag {
    /// How long the oldest backup not yet copied has waited at `now` (0 = caught up).
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> u64 {
        crate::model::waited_seconds(self.oldest_pending_since, now)
    }
}

/// A restore (thaw) requested for the archived copy of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThawRequest {
    pub backup_id: BackupId,
    pub repository: String,
    pub tier: String,
    pub days: u32,
    pub requested_at: DateTime<Utc>,
}

macro_rules! copy_task_columns {
    () => {
        "backup_id, destination, storage_class, status, attempts, next_attempt_at, lease_owner, \
         lease_expires_at, error, bytes_copied, enqueued_at, finished_at"
    };
}

#[derive(sqlx::FromRow)]
struct CopyTaskRow {
    backup_id: String,
    destination: String,
    storage_class: Option<String>,
    status: String,
    attempts: i64,
    next_attempt_at: DateTime<Utc>,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    error: Option<String>,
    bytes_copied: i64,
    enqueued_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<CopyTaskRow> for CopyTask {
    type Error = CatalogError;

    fn try_from(row: CopyTaskRow) -> Result<Self> {
        Ok(CopyTask {
            backup_id: parse_backup_id("replication_queue.backup_id", &row.backup_id)?,
            destination: row.destination,
            storage_class: row.storage_class,
            status: row.status,
            attempts: to_u64("replication_queue.attempts", row.attempts)?,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            error: row.error,
            bytes_copied: to_u64("replication_queue.bytes_copied", row.bytes_copied)?,
            enqueued_at: row.enqueued_at,
            finished_at: row.finished_at,
        })
    }
}

const CLAIM_COPY_CANDIDATE: &str = "SELECT q.backup_id, q.destination \
     FROM replication_queue q JOIN backups b ON b.id = q.backup_id \
     WHERE q.status = 'pending' AND b.status = 'complete' AND q.next_attempt_at <= $1 \
     AND (q.lease_owner IS NULL OR q.lease_expires_at <= $1) \
     AND (CAST($2 AS TEXT) IS NULL OR q.backup_id = $2) \
     ORDER BY q.enqueued_at, q.backup_id, q.destination LIMIT 1";

const CLAIM_COPY: &str = concat!(
    "UPDATE replication_queue SET lease_owner = $3, lease_expires_at = $4 \
     WHERE backup_id = $1 AND destination = $2 RETURNING ",
    copy_task_columns!()
);

impl Catalog {
    /// Queues copies of a backup. Call before the backup is marked complete: then no crash
    /// can leave a complete backup whose copies were never queued. Queuing an existing
    /// (backup, destination) again changes nothing.
    pub async fn enqueue_copies(
        &self,
        backup: BackupId,
        targets: &[CopyTarget],
        at: DateTime<Utc>,
    ) -> Result<()> {
        let action = format!("queuing the copies of backup {backup}");
        let at = micros(at);
        in_transaction!(self, action, |tx| {
            for t in targets {
                validate_not_empty("destination", &t.destination)?;
                sqlx::query(
                    "INSERT INTO replication_queue (backup_id, destination, storage_class, \
                     status, next_attempt_at, enqueued_at) VALUES ($1, $2, $3, 'pending', $4, $4) \
                     ON CONFLICT (backup_id, destination) DO NOTHING",
                )
                .bind(backup.to_string())
                .bind(&t.destination)
                .bind(t.storage_class.as_deref())
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            }
        });
        Ok(())
    }

    /// Takes the oldest pending copy of a complete backup (of `only` if given) that is due
    /// and not leased by a live copier, leasing it to `owner` until `now + lease`.
    pub async fn claim_copy(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        only: Option<BackupId>,
    ) -> Result<Option<CopyTask>> {
        validate_owner(owner)?;
        let now = micros(now);
        let expires = lease_expiry(now, lease)?;
        let candidate_sql = match self.backend() {
            Backend::Sqlite => CLAIM_COPY_CANDIDATE.to_owned(),
            Backend::Postgres => format!("{CLAIM_COPY_CANDIDATE} FOR UPDATE OF q SKIP LOCKED"),
        };
        let action = format!("claiming a copy for {owner:?}");
        let row: Option<CopyTaskRow> = in_transaction!(self, action, |tx| {
            let candidate: Option<(String, String)> = sqlx::query_as(&candidate_sql)
                .bind(now)
                .bind(only.map(|b| b.to_string()))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            match candidate {
                None => None,
                Some((backup_id, destination)) => Some(
                    sqlx::query_as(CLAIM_COPY)
                        .bind(&backup_id)
                        .bind(&destination)
                        .bind(owner)
                        .bind(expires)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db(action.clone()))?,
                ),
            }
        });
        row.map(CopyTask::try_from).transpose()
    }

    /// Extends `owner`'s lease. `false`: the copy is no longer `owner`'s; stop copying.
    pub async fn renew_copy_lease(
        &self,
        backup: BackupId,
        destination: &str,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool> {
        let expires = lease_expiry(micros(now), lease)?;
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE replication_queue SET lease_expires_at = $4 \
             WHERE backup_id = $1 AND destination = $2 AND lease_owner = $3 \
             AND status = 'pending'"
        )
        .bind(backup.to_string())
        .bind(destination)
        .bind(owner)
        .bind(expires)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!(
            "renewing the lease on the copy of backup {backup} to {destination}"
        )))?;
        Ok(rows == 1)
    }

    /// Marks `owner`'s copy done. Call only once every artifact's copy is recorded.
    pub async fn finish_copy(
        &self,
        backup: BackupId,
        destination: &str,
        owner: &str,
        at: DateTime<Utc>,
        bytes_copied: u64,
    ) -> Result<bool> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE replication_queue SET status = 'done', finished_at = $4, bytes_copied = $5, \
             error = NULL, lease_owner = NULL, lease_expires_at = NULL \
             WHERE backup_id = $1 AND destination = $2 AND lease_owner = $3 \
             AND status = 'pending'"
        )
        .bind(backup.to_string())
        .bind(destination)
        .bind(owner)
        .bind(micros(at))
        .bind(to_i64("bytes_copied", bytes_copied)?)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })
        .map_err(db(format!(
            "finishing the copy of backup {backup} to {destination}"
        )))?;
        Ok(rows == 1)
    }

    /// Records a failed attempt of `owner`'s copy and releases it until `retry_at`.
    pub async fn fail_copy(
        &self,
        backup: BackupId,
        destination: &str,
        owner: &str,
        error: &str,
        retry_at: DateTime<Utc>,
    ) -> Result<bool> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE replication_queue SET attempts = attempts + 1, error = $4, \
             next_attempt_at = $5, lease_owner = NULL, lease_expires_at = NULL \
             WHERE backup_id = $1 AND destination = $2 AND lease_owner = $3 \
             AND status = 'pending'"
        )
        .bind(backup.to_string())
        .bind(destination)
        .bind(owner)
        .bind(error)
        .bind(micros(retry_at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!(
            "recording a failed copy of backup {backup} to {destination}"
        )))?;
        Ok(rows == 1)
    }

    /// Hands back a copy whose owner is known to be dead (without counting an attempt), so
    /// it is taken over at once instead of when the lease expires.
    pub async fn release_copy(
        &self,
        backup: BackupId,
        destination: &str,
        owner: &str,
    ) -> Result<bool> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE replication_queue SET lease_owner = NULL, lease_expires_at = NULL \
             WHERE backup_id = $1 AND destination = $2 AND lease_owner = $3"
        )
        .bind(backup.to_string())
        .bind(destination)
        .bind(owner)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!(
            "releasing the copy of backup {backup} to {destination}"
        )))?;
        Ok(rows == 1)
    }

    /// The repositories a backup is queued to be copied to (copied or not).
    pub async fn copy_destinations(&self, backup: BackupId) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = with_pool!(self, |pool| {
            sqlx::query_as(
            "SELECT destination FROM replication_queue WHERE backup_id = $1 ORDER BY destination"
        )
        .bind(backup.to_string())
        .fetch_all(pool)
        .await
        })
        .map_err(db(format!(
            "listing the copy destinations of backup {backup}"
        )))?;
        Ok(rows.into_iter().map(|(d,)| d).collect())
    }

    /// Queued copies (all, or only pending ones), oldest first.
    pub async fn copy_tasks(&self, pending_only: bool) -> Result<Vec<CopyTask>> {
        let rows: Vec<CopyTaskRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            copy_task_columns!(),
            " FROM replication_queue WHERE (NOT $1 OR status = 'pending') \
             ORDER BY enqueued_at, backup_id, destination"
        ))
        .bind(pending_only)
        .fetch_all(pool)
        .await)
        .map_err(db("listing the replication queue"))?;
        rows.into_iter().map(CopyTask::try_from).collect()
    }

    /// Per destination: what is still to be copied (of complete backups) and since when.
    pub async fn replication_lag(&self) -> Result<Vec<DestinationLag>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            destination: String,
            pending: i64,
            pending_bytes: i64,
            failing: i64,
            done: i64,
            oldest_pending_since: Option<DateTime<Utc>>,
            last_copied_at: Option<DateTime<Utc>>,
        }
        let rows: Vec<Row> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT q.destination, \
             CAST(SUM(CASE WHEN q.status = 'pending' THEN 1 ELSE 0 END) AS BIGINT) AS pending, \
             CAST(SUM(CASE WHEN q.status = 'pending' THEN b.stored_bytes ELSE 0 END) AS BIGINT) \
               AS pending_bytes, \
             CAST(SUM(CASE WHEN q.status = 'pending' AND q.attempts > 0 THEN 1 ELSE 0 END) \
               AS BIGINT) AS failing, \
             CAST(SUM(CASE WHEN q.status = 'done' THEN 1 ELSE 0 END) AS BIGINT) AS done, \
             MIN(CASE WHEN q.status = 'pending' THEN b.finished_at END) AS oldest_pending_since, \
             MAX(q.finished_at) AS last_copied_at \
             FROM replication_queue q JOIN backups b ON b.id = q.backup_id \
             WHERE b.status = 'complete' GROUP BY q.destination ORDER BY q.destination"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("measuring the replication lag"))?;
        rows.into_iter()
            .map(|r| {
                Ok(DestinationLag {
                    destination: r.destination,
                    pending: to_u64("pending", r.pending)?,
                    pending_bytes: to_u64("pending_bytes", r.pending_bytes)?,
                    failing: to_u64("failing", r.failing)?,
                    done: to_u64("done", r.done)?,
                    oldest_pending_since: r.oldest_pending_since,
                    last_copied_at: r.last_copied_at,
                })
            })
            .collect()
    }

    /// Forgets the copies of a backup's artifacts in `repository` (the copy expired there).
    /// Refused, changing nothing, while the backup is under legal hold or when some artifact
    /// would be left without a copy anywhere. Returns the number of copies forgotten.
    pub async fn forget_copies(&self, backup: BackupId, repository: &str) -> Result<u64> {
        let action = format!("forgetting the copies of backup {backup} in {repository}");
        let key = backup.to_string();
        let forgotten = in_transaction!(self, action, |tx| {
            let held: Option<(bool,)> =
                sqlx::query_as("SELECT legal_hold FROM backups WHERE id = $1")
                    .bind(&key)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            match held {
                None => return Err(CatalogError::BackupNotFound { id: backup }),
                Some((true,)) => return Err(CatalogError::LegalHold { id: backup }),
                Some((false,)) => {}
            }
            let sole: Option<(String,)> = sqlx::query_as(
                "SELECT a.id FROM artifacts a WHERE a.backup_id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM copies c WHERE c.artifact_id = a.id AND c.repository <> $2) \
                 LIMIT 1",
            )
            .bind(&key)
            .bind(repository)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(action.clone()))?;
            if let Some((artifact,)) = sole {
                return Err(CatalogError::InvalidValue {
                    field: "repository",
                    value: repository.to_owned(),
                    reason: format!(
                        "artifact {artifact} of backup {backup} has no copy in any other \
                         repository; its last copy is never forgotten"
                    ),
                });
            }
            sqlx::query(crate::usage::LEDGER_BACKUP_COPIES_IN)
                .bind(&key)
                .bind(crate::model::micros(chrono::Utc::now()))
                .bind(repository)
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            sqlx::query(
                "DELETE FROM copies WHERE repository = $2 \
                 AND artifact_id IN (SELECT id FROM artifacts WHERE backup_id = $1)",
            )
            .bind(&key)
            .bind(repository)
            .execute(&mut *tx)
            .await
            .map_err(db(action.clone()))?
            .rows_affected()
        });
        Ok(forgotten)
    }

    /// Records (or renews) a thaw request for the archived copy of a backup.
    pub async fn record_thaw(&self, t: &ThawRequest) -> Result<()> {
        with_pool!(self, |pool| sqlx::query(
            "INSERT INTO thaw_requests (backup_id, repository, tier, days, requested_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (backup_id, repository) DO UPDATE SET \
             tier = excluded.tier, days = excluded.days, requested_at = excluded.requested_at"
        )
        .bind(t.backup_id.to_string())
        .bind(&t.repository)
        .bind(&t.tier)
        .bind(i64::from(t.days))
        .bind(micros(t.requested_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the thaw of backup {} in {}",
            t.backup_id, t.repository
        )))
    }

    /// Thaw requests, newest first.
    pub async fn thaw_requests(&self) -> Result<Vec<ThawRequest>> {
        let rows: Vec<(String, String, String, i64, DateTime<Utc>)> =
            with_pool!(self, |pool| sqlx::query_as(
                "SELECT backup_id, repository, tier, days, requested_at FROM thaw_requests \
                 ORDER BY requested_at DESC, backup_id, repository"
            )
            .fetch_all(pool)
            .await)
            .map_err(db("listing thaw requests"))?;
        rows.into_iter()
            .map(|(backup_id, repository, tier, days, requested_at)| {
                Ok(ThawRequest {
                    backup_id: parse_backup_id("thaw_requests.backup_id", &backup_id)?,
                    repository,
                    tier,
                    days: u32::try_from(days).map_err(|_| CatalogError::Corrupt {
                        field: "thaw_requests.days",
                        value: days.to_string(),
                    })?,
                    requested_at,
                })
            })
            .collect()
    }
}
