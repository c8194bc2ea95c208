//! The job queue shared by backupd replicas, and the schedule state that plans each cron slot
//! once.
//!
//! A job is `queued` until a replica claims it ([`Catalog::claim_job`]): the claim sets a lease
//! (`lease_owner`, `lease_expires_at`) that the owner renews while it works. A job whose lease
//! expires (its replica died) is taken over by the next claimer. The owner ends the job with
//! [`Catalog::finish_job`]: `succeeded`, back to `queued` for a retry, or `dead` once no retry
//! is left; [`Catalog::release_jobs`] hands a replica's jobs back on a graceful shutdown.
//!
//! ```text
//! queued --claim--> running --finish(ok)--> succeeded
//!   ^                 |  |---finish(failed, retry)--> queued (attempts + 1, next_attempt_at)
//!   |                 |  '---finish(failed, no retry or last attempt)--> dead
//!   '----release------'  (lease expired: another owner claims it while it stays running)
//! queued | running --cancel--> cancelled
//! ```
//!
//! Planning is idempotent across replicas: [`Catalog::plan_slot`] advances a schedule entry's
//! `last_planned` and inserts its job in one transaction, and `jobs` holds one row per
//! `(source, kind, scheduled_for)`.
//!
//! Every time is passed in by the caller (`now`), so tests control the clock; only new
//! [`JobId`]s (UUIDv7) read it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use backup_core::BackupId;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::{in_transaction, with_pool, Backend, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, validate_not_empty};

/// Identifies one job. UUIDv7, so ids sort by creation time.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(Uuid);

impl JobId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

/// A string that is not a job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job id (expected a UUID such as 0192f0c4-7b1e-7c3a-9d6e-2f4b5a6c7d8e)")]
pub struct ParseJobIdError(pub String);

impl FromStr for JobId {
    type Err = ParseJobIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(Self)
            .map_err(|_| ParseJobIdError(s.to_owned()))
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Backup,
    Prune,
    /// A restore drill (`backup_type` is unused: "drill").
    Drill,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Backup, JobKind::Prune, JobKind::Drill];

    /// The value stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Prune => "prune",
            JobKind::Drill => "drill",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life; see the module documentation for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for `due_at` and `next_attempt_at`, then for a claimer.
    Queued,
    /// Claimed by `lease_owner` until `lease_expires_at` (renewed while it works).
    Running,
    Succeeded,
    /// Reserved for a failure that is final without being out of retries; this version ends
    /// every failure that is not retried as `dead`.
    Failed,
    /// Failed and will not be retried (no retry asked for, or `max_attempts` reached).
    Dead,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Dead,
        JobStatus::Cancelled,
    ];

    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Dead => "dead",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Whether the job can still change (be claimed, finished or cancelled).
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a job status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a job status (expected one of: queued, running, succeeded, failed, dead, \
     cancelled)"
)]
pub struct ParseJobStatusError(pub String);

impl FromStr for JobStatus {
    type Err = ParseJobStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseJobStatusError(s.to_owned()))
    }
}

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewJob {
    pub source: String,
    /// The repository the job writes to; running jobs per repository are limited.
    pub repository: String,
    pub kind: JobKind,
    /// "full" or "incr".
    pub backup_type: String,
    /// Label recorded on the backup (from the schedule entry).
    pub tag: Option<String>,
    /// The cron slot: `Some` for [`Catalog::enqueue_scheduled`] (ignored by
    /// [`Catalog::plan_slot`], which uses its `slot`), `None` for
    /// [`Catalog::enqueue_manual`].
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Not claimed before this (the slot plus jitter, or the request time).
    pub due_at: DateTime<Utc>,
    /// Attempts before the job is `dead` (at least 1).
    pub max_attempts: u32,
    /// Now; also the first `updated_at`.
    pub created_at: DateTime<Utc>,
}

/// A cron slot to plan with [`Catalog::plan_slots`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSlot {
    pub source: String,
    pub schedule_key: String,
    pub slot: DateTime<Utc>,
    pub job: NewJob,
}

/// One job row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    pub id: JobId,
    pub source: String,
    pub repository: String,
    pub kind: JobKind,
    pub backup_type: String,
    pub tag: Option<String>,
    /// The cron slot; `None` for manual jobs.
    pub scheduled_for: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
    pub status: JobStatus,
    /// Finished attempts (succeeded or failed). A takeover after a lease expired is not one.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Not claimed before this (retries move it forward).
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// How often another owner took the job over after its lease expired.
    pub takeovers: u32,
    /// The backup this job made or is making. In a record returned by
    /// [`Catalog::claim_job`], `Some` is the backup of an earlier attempt that never finished
    /// (its owner died or shut down): the new owner cleans it up before starting its own.
    pub backup_id: Option<BackupId>,
    /// The last attempt's error (kept while the job waits for a retry).
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the current or last attempt started (or was taken over).
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// How many jobs may run at once, counting running jobs whose lease has not expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClaimLimits {
    pub max_running_per_source: u32,
    pub max_running_per_repository: u32,
}

impl Default for ClaimLimits {
    fn default() -> Self {
        Self {
            max_running_per_source: 1,
            max_running_per_repository: 2,
        }
    }
}

/// How the owner of a running job ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Succeeded {
        /// The backup made (`None` keeps the one attached with [`Catalog::attach_backup`]).
        backup_id: Option<BackupId>,
    },
    Failed {
        error: String,
        /// Try again at this time (the runner computes the backoff); `None` means do not
        /// retry. Either way the job is `dead` once `max_attempts` attempts have failed.
        retry_at: Option<DateTime<Utc>>,
    },
}

/// Which jobs [`Catalog::list_jobs`] returns; `None` means any (no limit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub source: Option<String>,
    pub status: Option<JobStatus>,
    pub limit: Option<u32>,
}

/// Serializes claims on Postgres (`pg_advisory_xact_lock`), so the running-job limits hold
/// across replicas: "backupd" + 1.
const CLAIM_LOCK_KEY: i64 = 0x6261_636b_7570_6401;

macro_rules! job_columns {
    () => {
        "id, source, repository, kind, backup_type, tag, scheduled_for, due_at, status, \
         attempts, max_attempts, next_attempt_at, lease_owner, lease_expires_at, takeovers, \
         backup_id, error, created_at, updated_at, started_at, finished_at"
    };
}

/// `$1..$10`: id, source, repository, kind, backup_type, tag, scheduled_for, due_at,
/// max_attempts, created_at. A slot that exists already inserts nothing (and returns no row).
const INSERT_JOB: &str = "INSERT INTO jobs (id, source, repository, kind, backup_type, tag, \
     scheduled_for, due_at, status, attempts, max_attempts, next_attempt_at, takeovers, \
     created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9, $8, 0, $10, $10) \
     ON CONFLICT (source, kind, scheduled_for) DO NOTHING RETURNING id";

/// `$1` now, `$2` per-source limit, `$3` per-repository limit: the oldest claimable job
/// (queued and due, or running with an expired lease) whose source and repository are
/// below their limits.
const CLAIM_CANDIDATE: &str = "SELECT j.id, j.status FROM jobs j \
     WHERE ((j.status = 'queued' AND j.due_at <= $1 AND j.next_attempt_at <= $1) \
            OR (j.status = 'running' AND j.lease_expires_at < $1)) \
       AND (SELECT COUNT(*) FROM jobs r WHERE r.status = 'running' \
            AND r.lease_expires_at >= $1 AND r.source = j.source) < $2 \
       AND (SELECT COUNT(*) FROM jobs r WHERE r.status = 'running' \
            AND r.lease_expires_at >= $1 AND r.repository = j.repository) < $3 \
     ORDER BY j.due_at, j.created_at, j.id LIMIT 1";

/// A new claim; `$1` id, `$2` owner, `$3` lease expiry, `$4` now.
const CLAIM_QUEUED: &str = concat!(
    "UPDATE jobs SET status = 'running', lease_owner = $2, lease_expires_at = $3, \
     started_at = $4, updated_at = $4 WHERE id = $1 RETURNING ",
    job_columns!()
);

/// A takeover of a job whose lease expired: not a new attempt, and `backup_id` (the dead
/// owner's backup) is kept for the new owner to clean up.
const CLAIM_EXPIRED: &str = concat!(
    "UPDATE jobs SET lease_owner = $2, lease_expires_at = $3, takeovers = takeovers + 1, \
     started_at = $4, updated_at = $4 WHERE id = $1 RETURNING ",
    job_columns!()
);

/// `$1` id, `$2` owner, `$3` backup id or NULL, `$4` now.
const FINISH_SUCCEEDED: &str = "UPDATE jobs SET status = 'succeeded', attempts = attempts + 1, \
     backup_id = COALESCE($3, backup_id), error = NULL, lease_owner = NULL, \
     lease_expires_at = NULL, finished_at = $4, updated_at = $4 \
     WHERE id = $1 AND status = 'running' AND lease_owner = $2";

/// `$1` id, `$2` owner, `$3` error, `$4` retry time or NULL, `$5` now. A retry goes back to
/// `queued` (its backup was ended by the owner, so `backup_id` is cleared); otherwise `dead`.
const FINISH_FAILED: &str = "UPDATE jobs SET \
     status = CASE WHEN $4 IS NOT NULL AND attempts + 1 < max_attempts \
                   THEN 'queued' ELSE 'dead' END, \
     next_attempt_at = CASE WHEN $4 IS NOT NULL AND attempts + 1 < max_attempts \
                            THEN $4 ELSE next_attempt_at END, \
     finished_at = CASE WHEN $4 IS NOT NULL AND attempts + 1 < max_attempts \
                        THEN NULL ELSE $5 END, \
     backup_id = CASE WHEN $4 IS NOT NULL AND attempts + 1 < max_attempts \
                      THEN NULL ELSE backup_id END, \
     attempts = attempts + 1, error = $3, lease_owner = NULL, lease_expires_at = NULL, \
     updated_at = $5 \
     WHERE id = $1 AND status = 'running' AND lease_owner = $2";

/// Column values of a [`NewJob`], validated and converted once.
struct JobParams<'a> {
    id: JobId,
    key: String,
    job: &'a NewJob,
    scheduled_for: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
    max_attempts: i64,
    created_at: DateTime<Utc>,
}

impl<'a> JobParams<'a> {
    fn new(job: &'a NewJob, scheduled_for: Option<DateTime<Utc>>) -> Result<Self> {
        validate_not_empty("job source", &job.source)?;
        validate_not_empty("job repository", &job.repository)?;
        validate_not_empty("job backup_type", &job.backup_type)?;
        if job.max_attempts == 0 {
            return Err(CatalogError::InvalidValue {
                field: "job max_attempts",
                value: "0".into(),
                reason: "a job needs at least one attempt".into(),
            });
        }
        let id = JobId::new();
        Ok(JobParams {
            id,
            key: id.to_string(),
            job,
            scheduled_for: scheduled_for.map(micros),
            due_at: micros(job.due_at),
            max_attempts: i64::from(job.max_attempts),
            created_at: micros(job.created_at),
        })
    }
}

/// Binds a [`JobParams`] as `$1..$10` of [`INSERT_JOB`].
macro_rules! bind_job {
    ($query:expr, $p:expr) => {
        $query
            .bind(&$p.key)
            .bind(&$p.job.source)
            .bind(&$p.job.repository)
            .bind($p.job.kind.as_str())
            .bind(&$p.job.backup_type)
            .bind($p.job.tag.as_deref())
            .bind($p.scheduled_for)
            .bind($p.due_at)
            .bind($p.max_attempts)
            .bind($p.created_at)
    };
}

pub(crate) fn validate_owner(owner: &str) -> Result<()> {
    validate_not_empty("lease owner", owner)
}

/// `now + lease`, refusing a zero or absurd lease.
pub(crate) fn lease_expiry(now: DateTime<Utc>, lease: Duration) -> Result<DateTime<Utc>> {
    let invalid = |reason: &str| CatalogError::InvalidValue {
        field: "lease",
        value: format!("{lease:?}"),
        reason: reason.into(),
    };
    if lease.is_zero() {
        return Err(invalid("a lease must be longer than zero"));
    }
    TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(micros)
        .ok_or_else(|| invalid("too long"))
}

fn validate_limits(limits: &ClaimLimits) -> Result<()> {
    for (field, value) in [
        ("max_running_per_source", limits.max_running_per_source),
        (
            "max_running_per_repository",
            limits.max_running_per_repository,
        ),
    ] {
        if value == 0 {
            return Err(CatalogError::InvalidValue {
                field,
                value: "0".into(),
                reason: "at least one job must be allowed to run".into(),
            });
        }
    }
    Ok(())
}

impl Catalog {
    /// Enqueues the job for cron slot `job.scheduled_for` (required). Returns `None` when a
    /// job of the same source and kind exists for that slot (another replica planned it).
    #[tracing::instrument(skip_all, fields(source = %job.source))]
    pub async fn enqueue_scheduled(&self, job: &NewJob) -> Result<Option<JobId>> {
        let Some(slot) = job.scheduled_for else {
            return Err(CatalogError::InvalidValue {
                field: "job scheduled_for",
                value: "None".into(),
                reason: "a scheduled job needs its cron slot; use enqueue_manual otherwise".into(),
            });
        };
        let p = JobParams::new(job, Some(slot))?;
        let inserted: Option<(String,)> =
            with_pool!(self, |pool| bind_job!(sqlx::query_as(INSERT_JOB), p)
                .fetch_optional(pool)
                .await)
            .map_err(db(format!(
                "enqueueing the {} job of {:?} for {slot}",
                job.kind, job.source
            )))?;
        Ok(inserted.map(|_| p.id))
    }

    /// Enqueues a job on demand (`job.scheduled_for` is ignored: manual jobs have no slot and
    /// never conflict).
    #[tracing::instrument(skip_all, fields(source = %job.source))]
    pub async fn enqueue_manual(&self, job: &NewJob) -> Result<JobId> {
        let p = JobParams::new(job, None)?;
        let inserted: Option<(String,)> =
            with_pool!(self, |pool| bind_job!(sqlx::query_as(INSERT_JOB), p)
                .fetch_optional(pool)
                .await)
            .map_err(db(format!(
                "enqueueing a manual {} job of {:?}",
                job.kind, job.source
            )))?;
        match inserted {
            Some(_) => Ok(p.id),
            None => Err(CatalogError::InvalidValue {
                field: "job",
                value: p.key,
                reason: "the manual job was not inserted; retry".into(),
            }),
        }
    }

    /// [`Catalog::plan_slot`] for many slots in one transaction, so a tick at which many
    /// sources are due costs one commit. Returns the jobs created.
    pub async fn plan_slots(&self, slots: &[PlannedSlot]) -> Result<Vec<JobId>> {
        let mut params = Vec::with_capacity(slots.len());
        for s in slots {
            validate_not_empty("schedule key", &s.schedule_key)?;
            if s.job.source != s.source {
                return Err(CatalogError::InvalidValue {
                    field: "job source",
                    value: s.job.source.clone(),
                    reason: format!(
                        "planning a slot of source {:?} needs a job of that source",
                        s.source
                    ),
                });
            }
            params.push(JobParams::new(&s.job, Some(s.slot))?);
        }
        let action = format!("planning {} scheduled slots", slots.len());
        let planned = in_transaction!(self, action, |tx| {
            let mut planned = Vec::new();
            for (s, p) in slots.iter().zip(&params) {
                let advanced: Option<(DateTime<Utc>,)> = sqlx::query_as(
                    "INSERT INTO schedule_state (source, schedule_key, last_planned) \
                     VALUES ($1, $2, $3) \
                     ON CONFLICT (source, schedule_key) DO UPDATE \
                     SET last_planned = excluded.last_planned \
                     WHERE schedule_state.last_planned < excluded.last_planned \
                     RETURNING last_planned",
                )
                .bind(&s.source)
                .bind(&s.schedule_key)
                .bind(micros(s.slot))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
                if advanced.is_some() {
                    let inserted: Option<(String,)> = bind_job!(sqlx::query_as(INSERT_JOB), p)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db(action.clone()))?;
                    if inserted.is_some() {
                        planned.push(p.id);
                    }
                }
            }
            planned
        });
        Ok(planned)
    }

    /// Plans cron slot `slot` of schedule entry `schedule_key` of `source`: in one
    /// transaction, if `slot` is later than the entry's `last_planned` (or none is recorded),
    /// records `slot` as planned and enqueues `job` for it (with `scheduled_for = slot`).
    /// Returns the new job, or `None` when the slot was planned already (by this or another
    /// replica) or a job exists for it. `job.source` must be `source`.
    #[tracing::instrument(skip_all, fields(source, schedule_key, %slot))]
    pub async fn plan_slot(
        &self,
        source: &str,
        schedule_key: &str,
        slot: DateTime<Utc>,
        job: &NewJob,
    ) -> Result<Option<JobId>> {
        let planned = self
            .plan_slots(&[PlannedSlot {
                source: source.to_owned(),
                schedule_key: schedule_key.to_owned(),
                slot,
                job: job.clone(),
            }])
            .await?;
        if let Some(id) = planned.first() {
            tracing::info!(job_id = %id, "planned scheduled job");
        }
        Ok(planned.into_iter().next())
    }

    /// The latest slot planned for a schedule entry, if any.
    pub async fn last_planned(
        &self,
        source: &str,
        schedule_key: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        let row: Option<(DateTime<Utc>,)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT last_planned FROM schedule_state WHERE source = $1 AND schedule_key = $2"
        )
        .bind(source)
        .bind(schedule_key)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!(
            "reading the last planned slot of schedule {schedule_key:?} of {source:?}"
        )))?;
        Ok(row.map(|(t,)| t))
    }

    /// Every schedule entry's last planned slot, keyed by (source, schedule key): one query
    /// per scheduler tick instead of one per entry.
    pub async fn all_last_planned(
        &self,
    ) -> Result<std::collections::HashMap<(String, String), DateTime<Utc>>> {
        let rows: Vec<(String, String, DateTime<Utc>)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT source, schedule_key, last_planned FROM schedule_state"
        )
        .fetch_all(pool)
        .await)
        .map_err(db("reading the last planned slots"))?;
        Ok(rows.into_iter().map(|(s, k, t)| ((s, k), t)).collect())
    }

    /// Records `at` as the entry's last planned slot unless one is recorded (a schedule seen
    /// for the first time starts from now instead of catching up on its whole past). Returns
    /// whether it was recorded.
    pub async fn init_last_planned(
        &self,
        source: &str,
        schedule_key: &str,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        validate_not_empty("source", source)?;
        validate_not_empty("schedule key", schedule_key)?;
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "INSERT INTO schedule_state (source, schedule_key, last_planned) VALUES ($1, $2, $3) \
             ON CONFLICT (source, schedule_key) DO NOTHING"
        )
        .bind(source)
        .bind(schedule_key)
        .bind(micros(at))
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })
        .map_err(db(format!(
            "initialising the schedule state of {schedule_key:?} of {source:?}"
        )))?;
        Ok(rows == 1)
    }

    /// Claims the oldest claimable job for `owner`, with a lease until `now + lease`:
    /// a `queued` job whose `due_at` and `next_attempt_at` have passed, or a `running` job
    /// whose lease expired before `now` (its owner died; taking it over is not a new attempt,
    /// and the record's `backup_id` is the dead owner's backup, to clean up). A job is skipped
    /// while its source or repository has as many running jobs (with live leases) as
    /// `limits` allow. `None` when nothing is claimable.
    ///
    /// Claims are serialized (Postgres: a transaction-scoped advisory lock plus
    /// `FOR UPDATE SKIP LOCKED`; SQLite: `BEGIN IMMEDIATE`), so no job is held by two owners
    /// and the limits hold across replicas.
    #[tracing::instrument(skip_all, fields(owner))]
    pub async fn claim_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limits: &ClaimLimits,
    ) -> Result<Option<JobRecord>> {
        validate_owner(owner)?;
        validate_limits(limits)?;
        let now = micros(now);
        let expires = lease_expiry(now, lease)?;
        let backend = self.backend();
        let candidate_sql = match backend {
            Backend::Sqlite => CLAIM_CANDIDATE.to_owned(),
            Backend::Postgres => format!("{CLAIM_CANDIDATE} FOR UPDATE SKIP LOCKED"),
        };
        let action = format!("claiming a job for {owner:?}");
        let row: Option<JobRow> = in_transaction!(self, action, |tx| {
            if backend == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CLAIM_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(db(action.clone()))?;
            }
            let candidate: Option<(String, String)> = sqlx::query_as(&candidate_sql)
                .bind(now)
                .bind(i64::from(limits.max_running_per_source))
                .bind(i64::from(limits.max_running_per_repository))
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            match candidate {
                None => None,
                Some((id, status)) => {
                    let sql = if status == JobStatus::Running.as_str() {
                        CLAIM_EXPIRED
                    } else {
                        CLAIM_QUEUED
                    };
                    let row: JobRow = sqlx::query_as(sql)
                        .bind(&id)
                        .bind(owner)
                        .bind(expires)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db(action.clone()))?;
                    Some(row)
                }
            }
        });
        let Some(job) = row.map(JobRecord::try_from).transpose()? else {
            return Ok(None);
        };
        tracing::info!(job_id = %job.id, source = %job.source, takeovers = job.takeovers,
            previous_backup = ?job.backup_id, "claimed job");
        Ok(Some(job))
    }

    /// Extends `owner`'s lease on a running job to `now + lease`. `false` means the job is no
    /// longer `owner`'s (another replica took it over, or it was cancelled or finished): stop
    /// working on it.
    pub async fn renew_lease(
        &self,
        job: JobId,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<bool> {
        let now = micros(now);
        let expires = lease_expiry(now, lease)?;
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET lease_expires_at = $3, updated_at = $4 \
             WHERE id = $1 AND status = 'running' AND lease_owner = $2"
        )
        .bind(job.to_string())
        .bind(owner)
        .bind(expires)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("renewing the lease of job {job} for {owner:?}")))?;
        Ok(rows == 1)
    }

    /// Records the backup the owner started for a running job (so a replica that takes the
    /// job over can clean it up). `false` if the job is no longer `owner`'s.
    pub async fn attach_backup(
        &self,
        job: JobId,
        owner: &str,
        backup_id: BackupId,
    ) -> Result<bool> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET backup_id = $3 \
             WHERE id = $1 AND status = 'running' AND lease_owner = $2"
        )
        .bind(job.to_string())
        .bind(owner)
        .bind(backup_id.to_string())
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("attaching backup {backup_id} to job {job}")))?;
        Ok(rows == 1)
    }

    /// Ends `owner`'s running job. `Succeeded` makes it `succeeded`. `Failed` counts an
    /// attempt and, with a `retry_at` and attempts left, queues it again for `retry_at`;
    /// otherwise it is `dead`. `false` if the job is no longer `owner`'s (nothing changed).
    #[tracing::instrument(skip_all, fields(job_id = %job, owner))]
    pub async fn finish_job(
        &self,
        job: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: &JobOutcome,
    ) -> Result<bool> {
        let now = micros(now);
        let key = job.to_string();
        let action = format!("finishing job {job} of {owner:?}");
        let rows = match outcome {
            JobOutcome::Succeeded { backup_id } => {
                with_pool!(self, |pool| sqlx::query(FINISH_SUCCEEDED)
                    .bind(&key)
                    .bind(owner)
                    .bind(backup_id.map(|b| b.to_string()))
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()))
            }
            JobOutcome::Failed { error, retry_at } => {
                with_pool!(self, |pool| sqlx::query(FINISH_FAILED)
                    .bind(&key)
                    .bind(owner)
                    .bind(error)
                    .bind(retry_at.map(micros))
                    .bind(now)
                    .execute(pool)
                    .await
                    .map(|r| r.rows_affected()))
            }
        }
        .map_err(db(action))?;
        if rows == 1 {
            tracing::info!(?outcome, "job finished");
        }
        Ok(rows == 1)
    }

    /// Graceful shutdown: `owner`'s running jobs go back to `queued` with their leases
    /// cleared, so another replica claims them at once. Returns how many were released.
    pub async fn release_jobs(&self, owner: &str, now: DateTime<Utc>) -> Result<u64> {
        let rows = with_pool!(self, |pool| sqlx::query(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, \
             updated_at = $2 WHERE status = 'running' AND lease_owner = $1"
        )
        .bind(owner)
        .bind(micros(now))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db(format!("releasing the jobs of {owner:?}")))?;
        if rows > 0 {
            tracing::info!(owner, released = rows, "released running jobs");
        }
        Ok(rows)
    }

    /// Cancels a queued or running job (a running job's owner sees its next renewal fail).
    /// `false` if the job is unknown or already ended.
    pub async fn cancel_job(&self, job: JobId, now: DateTime<Utc>) -> Result<bool> {
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE jobs SET status = 'cancelled', lease_owner = NULL, lease_expires_at = NULL, \
             finished_at = $2, updated_at = $2 \
             WHERE id = $1 AND status IN ('queued', 'running')"
        )
        .bind(job.to_string())
        .bind(micros(now))
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })
        .map_err(db(format!("cancelling job {job}")))?;
        Ok(rows == 1)
    }

    /// Deletes jobs that ended (succeeded, failed, dead or cancelled) before
    /// `finished_before`, so the queue's history does not grow forever. Returns how many.
    pub async fn purge_finished_jobs(&self, finished_before: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, |pool| sqlx::query(
            "DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'dead', 'cancelled') \
             AND finished_at < $1"
        )
        .bind(micros(finished_before))
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db("purging finished jobs"))
    }

    pub async fn get_job(&self, job: JobId) -> Result<Option<JobRecord>> {
        let row: Option<JobRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE id = $1"
        ))
        .bind(job.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading job {job}")))?;
        row.map(JobRecord::try_from).transpose()
    }

    /// Jobs matching `filter`, newest (by `due_at`) first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>> {
        let limit = filter.limit.map(i64::from).unwrap_or(i64::MAX);
        let rows: Vec<JobRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE ($1 IS NULL OR source = $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY due_at DESC, id DESC LIMIT $3"
        ))
        .bind(filter.source.as_deref())
        .bind(filter.status.map(JobStatus::as_str))
        .bind(limit)
        .fetch_all(pool)
        .await)
        .map_err(db("listing jobs"))?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }

    /// How many queued jobs are due at `now` (waiting for a claimer).
    pub async fn queue_depth(&self, now: DateTime<Utc>) -> Result<u64> {
        let (count,): (i64,) = with_pool!(self, |pool| sqlx::query_as(
            "SELECT COUNT(*) FROM jobs \
             WHERE status = 'queued' AND due_at <= $1 AND next_attempt_at <= $1"
        )
        .bind(micros(now))
        .fetch_one(pool)
        .await)
        .map_err(db("counting due jobs"))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every `running` job (including ones whose lease expired), oldest start first.
    pub async fn running_jobs(&self) -> Result<Vec<JobRecord>> {
        let rows: Vec<JobRow> = with_pool!(self, |pool| sqlx::query_as(concat!(
            "SELECT ",
            job_columns!(),
            " FROM jobs WHERE status = 'running' ORDER BY started_at, id"
        ))
        .fetch_all(pool)
        .await)
        .map_err(db("listing running jobs"))?;
        rows.into_iter().map(JobRecord::try_from).collect()
    }
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: String,
    source: String,
    repository: String,
    kind: String,
    backup_type: String,
    tag: Option<String>,
    scheduled_for: Option<DateTime<Utc>>,
    due_at: DateTime<Utc>,
    status: String,
    attempts: i64,
    max_attempts: i64,
    next_attempt_at: DateTime<Utc>,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    takeovers: i64,
    backup_id: Option<String>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

fn corrupt(field: &'static str, value: impl ToString) -> CatalogError {
    CatalogError::Corrupt {
        field,
        value: value.to_string(),
    }
}

fn to_u32(field: &'static str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| corrupt(field, value))
}

impl TryFrom<JobRow> for JobRecord {
    type Error = CatalogError;

    fn try_from(row: JobRow) -> Result<Self> {
        Ok(JobRecord {
            id: row.id.parse().map_err(|_| corrupt("jobs.id", &row.id))?,
            kind: JobKind::ALL
                .into_iter()
                .find(|k| k.as_str() == row.kind)
                .ok_or_else(|| corrupt("jobs.kind", &row.kind))?,
            status: row
                .status
                .parse()
                .map_err(|_| corrupt("jobs.status", &row.status))?,
            attempts: to_u32("jobs.attempts", row.attempts)?,
            max_attempts: to_u32("jobs.max_attempts", row.max_attempts)?,
            takeovers: to_u32("jobs.takeovers", row.takeovers)?,
            backup_id: row
                .backup_id
                .as_deref()
                .map(|id| parse_backup_id("jobs.backup_id", id))
                .transpose()?,
            source: row.source,
            repository: row.repository,
            backup_type: row.backup_type,
            tag: row.tag,
            scheduled_for: row.scheduled_for,
            due_at: row.due_at,
            next_attempt_at: row.next_attempt_at,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_ids_round_trip_through_strings() {
        for status in JobStatus::ALL {
            assert_eq!(status.as_str().parse::<JobStatus>(), Ok(status));
        }
        assert_eq!(" Queued ".parse::<JobStatus>(), Ok(JobStatus::Queued));
        let err = "done".parse::<JobStatus>().unwrap_err();
        assert!(err.to_string().contains("queued, running"), "{err}");
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>(), Ok(id));
        assert!(JobId::new() > id, "ids sort by creation time");
        assert!("nope".parse::<JobId>().is_err());
    }

    #[test]
    fn leases_must_be_positive() {
        let now = Utc::now();
        assert!(lease_expiry(now, Duration::ZERO).is_err());
        assert!(lease_expiry(now, Duration::from_secs(u64::MAX)).is_err());
        assert_eq!(
            lease_expiry(now, Duration::from_secs(60)).unwrap(),
            micros(now + TimeDelta::seconds(60))
        );
        assert!(validate_limits(&ClaimLimits::default()).is_ok());
        assert!(validate_limits(&ClaimLimits {
            max_running_per_source: 0,
            ..ClaimLimits::default()
        })
        .is_err());
    }
}
