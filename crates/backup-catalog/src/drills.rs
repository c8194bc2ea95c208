//! Restore drills (migration 0009): one row per drill with its measured RTO and check results,
//! and the row counts a backup recorded for drills to compare a restore against.

use std::collections::BTreeMap;

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::{in_transaction, with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, to_u64, validate_not_empty};

/// Why a drill ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillTrigger {
    /// The source's `drill.cron`.
    Schedule,
    /// `backupctl drill` or the API.
    Manual,
}

impl DrillTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillTrigger::Schedule => "schedule",
            DrillTrigger::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillStatus {
    Running,
    Passed,
    Failed,
}

impl DrillStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillStatus::Running => "running",
            DrillStatus::Passed => "passed",
            DrillStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "running" => Ok(DrillStatus::Running),
            "passed" => Ok(DrillStatus::Passed),
            "failed" => Ok(DrillStatus::Failed),
            other => Err(CatalogError::Corrupt {
                field: "drills.status",
                value: other.to_owned(),
            }),
        }
    }
}

/// One check a drill ran on the restored data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheckResult {
    /// e.g. `integrity`, `counts`, `query: SELECT count(*) FROM t`.
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// How a finished drill went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillCompletion {
    pub finished_at: DateTime<Utc>,
    pub backup_id: Option<BackupId>,
    /// thaw + download + restore + recovery (absent when the restore never finished).
    pub rto_millis: Option<u64>,
    pub restore_millis: Option<u64>,
    pub recovery_millis: Option<u64>,
    pub restored_bytes: Option<u64>,
    pub checks: Vec<DrillCheckResult>,
    /// Set when the drill failed: the first thing that went wrong.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillRecord {
    pub id: String,
    pub source: String,
    pub backup_id: Option<BackupId>,
    pub trigger: DrillTrigger,
    /// latest, random or oldest.
    pub pick: String,
    pub status: DrillStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub rto_millis: Option<u64>,
    pub restore_millis: Option<u64>,
    pub recovery_millis: Option<u64>,
    pub restored_bytes: Option<u64>,
    pub checks: Vec<DrillCheckResult>,
    pub error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct DrillRow {
    id: String,
    source: String,
    backup_id: Option<String>,
    trigger_kind: String,
    pick: String,
    status: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    rto_millis: Option<i64>,
    restore_millis: Option<i64>,
    recovery_millis: Option<i64>,
    restored_bytes: Option<i64>,
    checks: String,
    error: Option<String>,
}

const DRILL_COLUMNS: &str = "id, source, backup_id, trigger_kind, pick, status, started_at, \
     finished_at, rto_millis, restore_millis, recovery_millis, restored_bytes, checks, error";

fn opt_u64(field: &'static str, v: Option<i64>) -> Result<Option<u64>> {
    v.map(|v| to_u64(field, v)).transpose()
}

fn opt_i64(field: &'static str, v: Option<u64>) -> Result<Option<i64>> {
    v.map(|v| to_i64(field, v)).transpose()
}

impl TryFrom<DrillRow> for DrillRecord {
    type Error = CatalogError;

    fn try_from(r: DrillRow) -> Result<Self> {
        let trigger = match r.trigger_kind.as_str() {
            "schedule" => DrillTrigger::Schedule,
            "manual" => DrillTrigger::Manual,
            other => {
                return Err(CatalogError::Corrupt {
                    field: "drills.trigger_kind",
                    value: other.to_owned(),
                })
            }
        };
        Ok(DrillRecord {
            status: DrillStatus::parse(&r.status)?,
            backup_id: r
                .backup_id
                .map(|b| parse_backup_id("drills.backup_id", &b))
                .transpose()?,
            checks: serde_json::from_str(&r.checks).map_err(|_| CatalogError::Corrupt {
                field: "drills.checks",
                value: r.checks.clone(),
            })?,
            rto_millis: opt_u64("drills.rto_millis", r.rto_millis)?,
            restore_millis: opt_u64("drills.restore_millis", r.restore_millis)?,
            recovery_millis: opt_u64("drills.recovery_millis", r.recovery_millis)?,
            restored_bytes: opt_u64("drills.restored_bytes", r.restored_bytes)?,
            id: r.id,
            source: r.source,
            trigger,
            pick: r.pick,
            started_at: r.started_at,
            finished_at: r.finished_at,
            error: r.error,
        })
    }
}

impl Catalog {
    /// Records that a drill of `source` started; returns its id.
    pub async fn begin_drill(
        &self,
        source: &str,
        trigger: DrillTrigger,
        pick: &str,
        at: DateTime<Utc>,
    ) -> Result<String> {
        validate_not_empty("source", source)?;
        let id = Uuid::now_v7().to_string();
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO drills ({DRILL_COLUMNS}) \
             VALUES ($1, $2, NULL, $3, $4, 'running', $5, NULL, NULL, NULL, NULL, NULL, '[]', NULL)"
        ))
        .bind(&id)
        .bind(source)
        .bind(trigger.as_str())
        .bind(pick)
        .bind(micros(at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!("recording the start of a drill of {source}")))?;
        Ok(id)
    }

    /// Records how drill `id` ended: passed when it has no error and every check passed.
    pub async fn finish_drill(&self, id: &str, c: &DrillCompletion) -> Result<DrillStatus> {
        let passed = c.error.is_none() && c.checks.iter().all(|check| check.passed);
        let status = if passed {
            DrillStatus::Passed
        } else {
            DrillStatus::Failed
        };
        let checks = serde_json::to_string(&c.checks).expect("check results serialize");
        let rows = with_pool!(self, |pool| {
            sqlx::query(
            "UPDATE drills SET status = $2, finished_at = $3, backup_id = $4, rto_millis = $5, \
             restore_millis = $6, recovery_millis = $7, restored_bytes = $8, checks = $9, \
             error = $10 WHERE id = $1 AND status = 'running'"
        )
        .bind(id)
        .bind(status.as_str())
        .bind(micros(c.finished_at))
        .bind(c.backup_id.map(|b| b.to_string()))
        .bind(opt_i64("rto_millis", c.rto_millis)?)
        .bind(opt_i64("restore_millis", c.restore_millis)?)
        .bind(opt_i64("recovery_millis", c.recovery_millis)?)
        .bind(opt_i64("restored_bytes", c.restored_bytes)?)
        .bind(checks)
        .bind(&c.error)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        })
        .map_err(db(format!("recording the end of drill {id}")))?;
        if rows != 1 {
            return Err(CatalogError::InvalidValue {
                field: "drill id",
                value: id.to_owned(),
                reason: "no running drill has this id".into(),
            });
        }
        Ok(status)
    }

    /// Drills of `source` (all sources when `None`), newest first, at most `limit`.
    pub async fn list_drills(&self, source: Option<&str>, limit: u32) -> Result<Vec<DrillRecord>> {
        let rows: Vec<DrillRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {DRILL_COLUMNS} FROM drills WHERE ($1 IS NULL OR source = $1) \
             ORDER BY started_at DESC, id DESC LIMIT $2"
        ))
        .bind(source)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await)
        .map_err(db("listing drills"))?;
        rows.into_iter().map(DrillRecord::try_from).collect()
    }

    /// The newest finished drill of `source`.
    pub async fn last_finished_drill(&self, source: &str) -> Result<Option<DrillRecord>> {
        let row: Option<DrillRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {DRILL_COLUMNS} FROM drills WHERE source = $1 AND status <> 'running' \
             ORDER BY started_at DESC, id DESC LIMIT 1"
        ))
        .bind(source)
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the last drill of {source}")))?;
        row.map(DrillRecord::try_from).transpose()
    }

    /// Records the row counts a backup saw (relation -> rows), replacing earlier ones.
    pub async fn record_row_counts(
        &self,
        backup: BackupId,
        counts: &BTreeMap<String, u64>,
    ) -> Result<()> {
        let key = backup.to_string();
        let action = format!("recording the row counts of backup {backup}");
        in_transaction!(self, action, |tx| {
            sqlx::query("DELETE FROM backup_row_counts WHERE backup_id = $1")
                .bind(&key)
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            for (relation, rows) in counts {
                sqlx::query(
                    "INSERT INTO backup_row_counts (backup_id, relation, row_count) \
                     VALUES ($1, $2, $3)",
                )
                .bind(&key)
                .bind(relation)
                .bind(to_i64("row_count", *rows)?)
                .execute(&mut *tx)
                .await
                .map_err(db(action.clone()))?;
            }
        });
        Ok(())
    }

    /// The row counts `backup` recorded (empty when it recorded none).
    pub async fn row_counts(&self, backup: BackupId) -> Result<BTreeMap<String, u64>> {
        let rows: Vec<(String, i64)> = with_pool!(self, |pool| sqlx::query_as(
            "SELECT relation, row_count FROM backup_row_counts WHERE backup_id = $1"
        )
        .bind(backup.to_string())
        .fetch_all(pool)
        .await)
        .map_err(db(format!("reading the row counts of backup {backup}")))?;
        rows.into_iter()
            .map(|(relation, n)| Ok((relation, to_u64("backup_row_counts.row_count", n)?)))
            .collect()
    }
}
