//! What the catalog stores, as callers see it, plus the private row types that map the SQL
//! columns (TEXT ids, i64 sizes) onto them.

use std::fmt;
use std::str::FromStr;

use backup_core::{ArtifactId, BackupId};
use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{CatalogError, Result};

/// Artifact roles the catalog accepts.
pub const ARTIFACT_ROLES: &[&str] = &["data", "manifest"];

/// Lifecycle of a backup: `running` until it ends as `complete` or `failed`, or until
/// [`Catalog::abandon_stale_backups`](crate::Catalog::abandon_stale_backups) sees its
/// heartbeat stop and marks it `abandoned`. A finished backup that retention (`prune`)
/// removes becomes `deleting` (see [`Catalog::mark_deleting`](crate::Catalog::mark_deleting))
/// until its objects and then its rows are gone; it can no longer be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    Running,
    Complete,
    Failed,
    Abandoned,
    Deleting,
}

impl BackupStatus {
    pub const ALL: [BackupStatus; 5] = [
        BackupStatus::Running,
        BackupStatus::Complete,
        BackupStatus::Failed,
        BackupStatus::Abandoned,
        BackupStatus::Deleting,
    ];

    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            BackupStatus::Running => "running",
            BackupStatus::Complete => "complete",
            BackupStatus::Failed => "failed",
            BackupStatus::Abandoned => "abandoned",
            BackupStatus::Deleting => "deleting",
        }
    }
}

impl fmt::Display for BackupStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a backup status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a backup status (expected one of: running, complete, failed, abandoned, deleting)"
)]
pub struct ParseBackupStatusError(pub String);

impl FromStr for BackupStatus {
    type Err = ParseBackupStatusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BackupStatus::ALL
            .into_iter()
            .find(|status| status.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseBackupStatusError(s.to_owned()))
    }
}

/// A registered source (a database or directory that gets backed up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceRecord {
    pub name: String,
    pub kind: String,
    pub created_at: DateTime<Utc>,
}

/// What is known when a backup starts; see [`Catalog::begin_backup`](crate::Catalog::begin_backup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewBackup {
    pub id: BackupId,
    pub source: String,
    /// The repository the backup writes to first.
    pub repository: String,
    /// "full" today.
    pub backup_type: String,
    pub started_at: DateTime<Utc>,
    /// Host and pid of the writer, so an operator can tell whether a `running` backup's
    /// process still exists.
    pub host: String,
    pub pid: u32,
    pub tool_version: String,
    /// A label chosen by whoever started the backup (e.g. "weekly", "pre-upgrade"); shown
    /// by `list` and recorded in the manifest so `catalog rebuild` restores it.
    pub tag: Option<String>,
}

/// Totals recorded when a backup completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupCompletion {
    pub finished_at: DateTime<Utc>,
    pub file_count: u64,
    pub skipped_count: u64,
    pub plaintext_bytes: u64,
    pub stored_bytes: u64,
    /// The backup's own artifact with role "manifest".
    pub manifest_artifact: ArtifactId,
}

/// One backup row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRecord {
    pub id: BackupId,
    pub source: String,
    pub repository: String,
    pub backup_type: String,
    pub status: BackupStatus,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub heartbeat_at: DateTime<Utc>,
    pub host: String,
    pub pid: u32,
    pub tool_version: String,
    pub file_count: u64,
    pub skipped_count: u64,
    pub plaintext_bytes: u64,
    pub stored_bytes: u64,
    pub manifest_artifact: Option<ArtifactId>,
    pub error: Option<String>,
    pub tag: Option<String>,
    /// A legal hold: retention never deletes this backup while it is set
    /// ([`Catalog::set_legal_hold`](crate::Catalog::set_legal_hold)).
    pub legal_hold: bool,
}

impl BackupRecord {
    /// plaintext / stored bytes (e.g. 3.2 means the stored form is 3.2x smaller); `None`
    /// until something has been stored.
    pub fn compression_ratio(&self) -> Option<f64> {
        (self.stored_bytes > 0).then(|| self.plaintext_bytes as f64 / self.stored_bytes as f64)
    }
}

/// Which backups [`Catalog::list_backups`](crate::Catalog::list_backups) returns; `None`
/// means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupFilter {
    pub source: Option<String>,
    pub status: Option<BackupStatus>,
}

/// One artifact (an encrypted, compressed object) of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactRecord {
    pub id: ArtifactId,
    pub backup_id: BackupId,
    /// One of [`ARTIFACT_ROLES`].
    pub role: String,
    pub plaintext_size: u64,
    /// Lowercase hex.
    pub plaintext_sha256: String,
    pub segment_count: u64,
    pub created_at: DateTime<Utc>,
}

/// A durable, checksum-verified copy of an artifact in one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyRecord {
    pub artifact_id: ArtifactId,
    pub repository: String,
    pub object_key: String,
    pub stored_size: u64,
    /// Lowercase hex.
    pub stored_sha256: String,
    pub storage_class: Option<String>,
    pub verified_at: DateTime<Utc>,
}

/// An artifact with every recorded copy of it (ordered by repository).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactWithCopies {
    pub artifact: ArtifactRecord,
    pub copies: Vec<CopyRecord>,
}

/// A complete backup reconstructed from a repository by `catalog rebuild`; see
/// [`Catalog::import_backup`](crate::Catalog::import_backup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportedBackup {
    pub backup: NewBackup,
    /// Kind of the source, used when the source is not registered yet.
    pub source_kind: String,
    pub completion: BackupCompletion,
    pub artifacts: Vec<ArtifactWithCopies>,
}

// ---- conversions between Rust values and columns -------------------------------------------

/// Both backends store microseconds (Postgres cannot hold more), so truncate on the way in
/// and both return exactly what the other would.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

pub(crate) fn to_i64(field: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| CatalogError::InvalidValue {
        field,
        value: value.to_string(),
        reason: format!("the catalog stores at most {} (i64::MAX)", i64::MAX),
    })
}

/// How long something pending since `since` has waited at `now` (0 when nothing is pending).
pub(crate) fn waited_seconds(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> u64 {
    since
        .map(|t| (now - t).num_seconds().max(0) as u64)
        .unwrap_or(0)
}

pub(crate) fn to_u64(field: &'static str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| corrupt(field, value))
}

fn corrupt(field: &'static str, value: impl ToString) -> CatalogError {
    CatalogError::Corrupt {
        field,
        value: value.to_string(),
    }
}

pub(crate) fn parse_backup_id(field: &'static str, value: &str) -> Result<BackupId> {
    value.parse().map_err(|_| corrupt(field, value))
}

pub(crate) fn parse_artifact_id(field: &'static str, value: &str) -> Result<ArtifactId> {
    value.parse().map_err(|_| corrupt(field, value))
}

pub(crate) fn validate_sha256(field: &'static str, value: &str) -> Result<()> {
    if value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(CatalogError::InvalidValue {
            field,
            value: value.to_owned(),
            reason: "expected 64 lowercase hex characters (a SHA-256 digest)".into(),
        })
    }
}

pub(crate) fn validate_not_empty(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        Err(CatalogError::InvalidValue {
            field,
            value: value.to_owned(),
            reason: "must not be empty".into(),
        })
    } else {
        Ok(())
    }
}

pub(crate) fn validate_role(role: &str) -> Result<()> {
    if ARTIFACT_ROLES.contains(&role) {
        Ok(())
    } else {
        Err(CatalogError::InvalidValue {
            field: "artifact role",
            value: role.to_owned(),
            reason: format!("expected one of {ARTIFACT_ROLES:?}"),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SourceRow {
    name: String,
    kind: String,
    created_at: DateTime<Utc>,
}

impl From<SourceRow> for SourceRecord {
    fn from(row: SourceRow) -> Self {
        SourceRecord {
            name: row.name,
            kind: row.kind,
            created_at: row.created_at,
        }
    }
}

/// Column list matching [`BackupRow`], for SELECT and RETURNING.
macro_rules! backup_columns {
    () => {
        "id, source, repository, backup_type, status, started_at, finished_at, heartbeat_at, \
         host, pid, tool_version, file_count, skipped_count, plaintext_bytes, stored_bytes, \
         manifest_artifact, error, tag, legal_hold"
    };
}
pub(crate) use backup_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct BackupRow {
    id: String,
    source: String,
    repository: String,
    backup_type: String,
    status: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    heartbeat_at: DateTime<Utc>,
    host: String,
    pid: i64,
    tool_version: String,
    file_count: i64,
    skipped_count: i64,
    plaintext_bytes: i64,
    stored_bytes: i64,
    manifest_artifact: Option<String>,
    error: Option<String>,
    tag: Option<String>,
    legal_hold: bool,
}

impl TryFrom<BackupRow> for BackupRecord {
    type Error = CatalogError;

    fn try_from(row: BackupRow) -> Result<Self> {
        Ok(BackupRecord {
            id: parse_backup_id("backups.id", &row.id)?,
            status: row
                .status
                .parse()
                .map_err(|_| corrupt("backups.status", &row.status))?,
            source: row.source,
            repository: row.repository,
            backup_type: row.backup_type,
            started_at: row.started_at,
            finished_at: row.finished_at,
            heartbeat_at: row.heartbeat_at,
            host: row.host,
            pid: u32::try_from(row.pid).map_err(|_| corrupt("backups.pid", row.pid))?,
            tool_version: row.tool_version,
            file_count: to_u64("backups.file_count", row.file_count)?,
            skipped_count: to_u64("backups.skipped_count", row.skipped_count)?,
            plaintext_bytes: to_u64("backups.plaintext_bytes", row.plaintext_bytes)?,
            stored_bytes: to_u64("backups.stored_bytes", row.stored_bytes)?,
            manifest_artifact: row
                .manifest_artifact
                .as_deref()
                .map(|id| parse_artifact_id("backups.manifest_artifact", id))
                .transpose()?,
            error: row.error,
            tag: row.tag,
            legal_hold: row.legal_hold,
        })
    }
}

macro_rules! artifact_columns {
    () => {
        "id, backup_id, role, plaintext_size, plaintext_sha256, segment_count, created_at"
    };
}
pub(crate) use artifact_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct ArtifactRow {
    id: String,
    backup_id: String,
    role: String,
    plaintext_size: i64,
    plaintext_sha256: String,
    segment_count: i64,
    created_at: DateTime<Utc>,
}

impl TryFrom<ArtifactRow> for ArtifactRecord {
    type Error = CatalogError;

    fn try_from(row: ArtifactRow) -> Result<Self> {
        Ok(ArtifactRecord {
            id: parse_artifact_id("artifacts.id", &row.id)?,
            backup_id: parse_backup_id("artifacts.backup_id", &row.backup_id)?,
            role: row.role,
            plaintext_size: to_u64("artifacts.plaintext_size", row.plaintext_size)?,
            plaintext_sha256: row.plaintext_sha256,
            segment_count: to_u64("artifacts.segment_count", row.segment_count)?,
            created_at: row.created_at,
        })
    }
}

macro_rules! copy_columns {
    () => {
        "artifact_id, repository, object_key, stored_size, stored_sha256, storage_class, \
         verified_at"
    };
}
pub(crate) use copy_columns;

#[derive(sqlx::FromRow)]
pub(crate) struct CopyRow {
    artifact_id: String,
    repository: String,
    object_key: String,
    stored_size: i64,
    stored_sha256: String,
    storage_class: Option<String>,
    verified_at: DateTime<Utc>,
}

impl TryFrom<CopyRow> for CopyRecord {
    type Error = CatalogError;

    fn try_from(row: CopyRow) -> Result<Self> {
        Ok(CopyRecord {
            artifact_id: parse_artifact_id("copies.artifact_id", &row.artifact_id)?,
            repository: row.repository,
            object_key: row.object_key,
            stored_size: to_u64("copies.stored_size", row.stored_size)?,
            stored_sha256: row.stored_sha256,
            storage_class: row.storage_class,
            verified_at: row.verified_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_strings() {
        for status in BackupStatus::ALL {
            assert_eq!(status.as_str().parse::<BackupStatus>(), Ok(status));
        }
        assert_eq!(
            "Complete".parse::<BackupStatus>(),
            Ok(BackupStatus::Complete)
        );
        let err = "done".parse::<BackupStatus>().unwrap_err();
        assert!(err.to_string().contains("running, complete"), "{err}");
    }

    #[test]
    fn micros_truncates_nanoseconds() {
        let t = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(micros(t).nanosecond(), 123_456_000);
    }

    #[test]
    fn sha256_must_be_lowercase_hex() {
        assert!(validate_sha256("x", &"a".repeat(64)).is_ok());
        assert!(validate_sha256("x", &"A".repeat(64)).is_err());
        assert!(validate_sha256("x", &"a".repeat(63)).is_err());
        assert!(validate_sha256("x", &"g".repeat(64)).is_err());
    }

    #[test]
    fn compression_ratio_is_plaintext_over_stored() {
        let mut r = BackupRecord {
            id: BackupId::new(),
            source: "s".into(),
            repository: "r".into(),
            backup_type: "full".into(),
            status: BackupStatus::Complete,
            started_at: Utc::now(),
            finished_at: None,
            heartbeat_at: Utc::now(),
            host: "h".into(),
            pid: 1,
            tool_version: "0".into(),
            file_count: 0,
            skipped_count: 0,
            plaintext_bytes: 300,
            stored_bytes: 100,
            manifest_artifact: None,
            error: None,
            tag: None,
            legal_hold: false,
        };
        assert_eq!(r.compression_ratio(), Some(3.0));
        r.stored_bytes = 0;
        assert_eq!(r.compression_ratio(), None);
    }
}
