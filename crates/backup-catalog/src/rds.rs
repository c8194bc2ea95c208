//! What RDS sources need from the catalog: the RDS snapshots each backup made (the one in the
//! source's region and its copy in the copy region), by identifier and ARN. The data stays
//! in RDS.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, validate_not_empty};

/// One RDS snapshot of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RdsSnapshotRecord {
    pub backup_id: BackupId,
    /// `source` (taken in the source's region) or `copy` (its copy in `copy-region`).
    pub role: String,
    pub region: String,
    /// `instance` (a DB snapshot) or `cluster` (a DB cluster snapshot).
    pub resource_kind: String,
    /// The DB instance or DB cluster identifier it is a snapshot of.
    pub resource: String,
    pub identifier: String,
    pub arn: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub engine: Option<String>,
    pub allocated_storage_gb: Option<u64>,
    pub created_at: DateTime<Utc>,
}

pub const RDS_ROLE_SOURCE: &str = "source";
pub const RDS_ROLE_COPY: &str = "copy";

#[derive(sqlx::FromRow)]
struct SnapshotRow {
    backup_id: String,
    role: String,
    region: String,
    resource_kind: String,
    resource: String,
    identifier: String,
    arn: String,
    encrypted: bool,
    kms_key_id: Option<String>,
    engine: Option<String>,
    allocated_storage_gb: Option<i64>,
    created_at: DateTime<Utc>,
}

impl TryFrom<SnapshotRow> for RdsSnapshotRecord {
    type Error = CatalogError;

    fn try_from(r: SnapshotRow) -> Result<Self> {
        let allocated_storage_gb = r
            .allocated_storage_gb
            .map(|v| {
                u64::try_from(v).map_err(|_| CatalogError::Corrupt {
                    field: "rds_snapshots.allocated_storage_gb",
                    value: v.to_string(),
                })
            })
            .transpose()?;
        Ok(RdsSnapshotRecord {
            backup_id: parse_backup_id("rds_snapshots.backup_id", &r.backup_id)?,
            role: r.role,
            region: r.region,
            resource_kind: r.resource_kind,
            resource: r.resource,
            identifier: r.identifier,
            arn: r.arn,
            encrypted: r.encrypted,
            kms_key_id: r.kms_key_id,
            engine: r.engine,
            allocated_storage_gb,
            created_at: r.created_at,
        })
    }
}

const COLUMNS: &str = "backup_id, role, region, resource_kind, resource, identifier, arn, \
     encrypted, kms_key_id, engine, allocated_storage_gb, created_at";

impl Catalog {
    /// Records one RDS snapshot of a backup (replacing an earlier record of the same backup
    /// and role).
    pub async fn record_rds_snapshot(&self, s: &RdsSnapshotRecord) -> Result<()> {
        for (field, value) in [
            ("region", &s.region),
            ("resource", &s.resource),
            ("identifier", &s.identifier),
            ("arn", &s.arn),
        ] {
            validate_not_empty(field, value)?;
        }
        let invalid = |field, value: &str, reason: &str| CatalogError::InvalidValue {
            field,
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        if s.role != RDS_ROLE_SOURCE && s.role != RDS_ROLE_COPY {
            return Err(invalid("role", &s.role, "must be `source` or `copy`"));
        }
        if s.resource_kind != "instance" && s.resource_kind != "cluster" {
            return Err(invalid(
                "resource_kind",
                &s.resource_kind,
                "must be `instance` or `cluster`",
            ));
        }
        let storage = s
            .allocated_storage_gb
            .map(|g| to_i64("allocated_storage_gb", g))
            .transpose()?;
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO rds_snapshots ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (backup_id, role) DO UPDATE SET \
             region = excluded.region, resource_kind = excluded.resource_kind, \
             resource = excluded.resource, identifier = excluded.identifier, \
             arn = excluded.arn, encrypted = excluded.encrypted, \
             kms_key_id = excluded.kms_key_id, engine = excluded.engine, \
             allocated_storage_gb = excluded.allocated_storage_gb, \
             created_at = excluded.created_at"
        ))
        .bind(s.backup_id.to_string())
        .bind(&s.role)
        .bind(&s.region)
        .bind(&s.resource_kind)
        .bind(&s.resource)
        .bind(&s.identifier)
        .bind(&s.arn)
        .bind(s.encrypted)
        .bind(&s.kms_key_id)
        .bind(&s.engine)
        .bind(storage)
        .bind(micros(s.created_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the RDS snapshot {} of backup {}",
            s.arn, s.backup_id
        )))
    }

    /// The RDS snapshots of backup `id` (none if it is no RDS backup), the source's first.
    pub async fn rds_snapshots(&self, id: BackupId) -> Result<Vec<RdsSnapshotRecord>> {
        let rows: Vec<SnapshotRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM rds_snapshots WHERE backup_id = $1 \
             ORDER BY CASE role WHEN 'source' THEN 0 ELSE 1 END"
        ))
        .bind(id.to_string())
        .fetch_all(pool)
        .await)
        .map_err(db(format!("reading the RDS snapshots of backup {id}")))?;
        rows.into_iter().map(RdsSnapshotRecord::try_from).collect()
    }
}
