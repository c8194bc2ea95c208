//! What Azure SQL sources need from the catalog: per backup, the database it is of (resource
//! id, server, location), the point in time a restore of it goes to, the start of the
//! database's restore window when it was taken, and its bacpac export if it made one. The
//! data stays in Azure.

use backup_core::BackupId;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::catalog::{with_pool, Catalog, Pool};
use crate::error::{db, CatalogError, Result};
use crate::model::{micros, parse_backup_id, to_i64, validate_not_empty};

/// One backup of an Azure SQL database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AzureSqlBackupRecord {
    pub backup_id: BackupId,
    pub subscription_id: String,
    pub resource_group: String,
    pub server: String,
    pub database: String,
    /// `/subscriptions/.../databases/NAME`: what a point-in-time restore names as its source.
    pub database_resource_id: String,
    pub location: String,
    /// The point a restore of this backup goes to.
    pub restore_point: DateTime<Utc>,
    /// The start of the database's restore window when the backup was taken.
    pub earliest_restore_date: Option<DateTime<Utc>>,
    /// The bacpac blob the backup exported (never with a SAS token), if it exported one.
    pub export_blob_url: Option<String>,
    pub export_bytes: Option<u64>,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BackupRow {
    backup_id: String,
    subscription_id: String,
    resource_group: String,
    server: String,
    database_name: String,
    database_resource_id: String,
    location: String,
    restore_point: DateTime<Utc>,
    earliest_restore_date: Option<DateTime<Utc>>,
    export_blob_url: Option<String>,
    export_bytes: Option<i64>,
    created_at: DateTime<Utc>,
}

impl TryFrom<BackupRow> for AzureSqlBackupRecord {
    type Error = CatalogError;

    fn try_from(r: BackupRow) -> Result<Self> {
        let export_bytes = r
            .export_bytes
            .map(|v| {
                u64::try_from(v).map_err(|_| CatalogError::Corrupt {
                    field: "azure_sql_backups.export_bytes",
                    value: v.to_string(),
                })
            })
            .transpose()?;
        Ok(AzureSqlBackupRecord {
            backup_id: parse_backup_id("azure_sql_backups.backup_id", &r.backup_id)?,
            subscription_id: r.subscription_id,
            resource_group: r.resource_group,
            server: r.server,
            database: r.database_name,
            database_resource_id: r.database_resource_id,
            location: r.location,
            restore_point: r.restore_point,
            earliest_restore_date: r.earliest_restore_date,
            export_blob_url: r.export_blob_url,
            export_bytes,
            created_at: r.created_at,
        })
    }
}

const COLUMNS: &str = "backup_id, subscription_id, resource_group, server, database_name, \
     database_resource_id, location, restore_point, earliest_restore_date, export_blob_url, \
     export_bytes, created_at";

impl Catalog {
    /// Records what a backup of an Azure SQL database captured (replacing an earlier record
    /// of the same backup).
    pub async fn record_azure_sql_backup(&self, r: &AzureSqlBackupRecord) -> Result<()> {
        for (field, value) in [
            ("subscription_id", &r.subscription_id),
            ("resource_group", &r.resource_group),
            ("server", &r.server),
            ("database", &r.database),
            ("database_resource_id", &r.database_resource_id),
            ("location", &r.location),
        ] {
            validate_not_empty(field, value)?;
        }
        if let Some(url) = &r.export_blob_url {
            validate_not_empty("export_blob_url", url)?;
            if url.to_ascii_lowercase().contains("sig=") {
                return Err(CatalogError::InvalidValue {
                    field: "export_blob_url",
                    value: "(a URL with a SAS signature)".into(),
                    reason: "must not carry a SAS token (a credential)".into(),
                });
            }
        }
        let bytes = r
            .export_bytes
            .map(|b| to_i64("export_bytes", b))
            .transpose()?;
        with_pool!(self, |pool| sqlx::query(&format!(
            "INSERT INTO azure_sql_backups ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (backup_id) DO UPDATE SET \
             subscription_id = excluded.subscription_id, \
             resource_group = excluded.resource_group, server = excluded.server, \
             database_name = excluded.database_name, \
             database_resource_id = excluded.database_resource_id, \
             location = excluded.location, restore_point = excluded.restore_point, \
             earliest_restore_date = excluded.earliest_restore_date, \
             export_blob_url = excluded.export_blob_url, \
             export_bytes = excluded.export_bytes, created_at = excluded.created_at"
        ))
        .bind(r.backup_id.to_string())
        .bind(&r.subscription_id)
        .bind(&r.resource_group)
        .bind(&r.server)
        .bind(&r.database)
        .bind(&r.database_resource_id)
        .bind(&r.location)
        .bind(micros(r.restore_point))
        .bind(r.earliest_restore_date.map(micros))
        .bind(&r.export_blob_url)
        .bind(bytes)
        .bind(micros(r.created_at))
        .execute(pool)
        .await
        .map(|_| ()))
        .map_err(db(format!(
            "recording the Azure SQL backup {} of database {}",
            r.backup_id, r.database
        )))
    }

    /// What backup `id` of an Azure SQL database recorded (none if it is no such backup).
    pub async fn azure_sql_backup(&self, id: BackupId) -> Result<Option<AzureSqlBackupRecord>> {
        let row: Option<BackupRow> = with_pool!(self, |pool| sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM azure_sql_backups WHERE backup_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(pool)
        .await)
        .map_err(db(format!("reading the Azure SQL record of backup {id}")))?;
        row.map(AzureSqlBackupRecord::try_from).transpose()
    }
}
