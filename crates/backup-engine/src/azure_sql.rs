//! The Azure SQL source: backupd drives Azure SQL Database's own backups through Azure
//! Resource Manager. Azure keeps the data (its automated full, differential and log backups,
//! reached by a point-in-time restore into a new database); each backupd backup is a checked
//! point in that window, recorded with the database's resource id and the window's start,
//! and optionally a bacpac export to Blob Storage that the backup owns. The backup's data
//! artifact in the backupd repository holds that record, and so does the catalog. Retention
//! deletes the bacpac with the backup (never anything of Azure's own backups); restore makes
//! a new database as of the backup's point (or any point in the window). See
//! docs/sources/azure-sql.md.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::AzureSqlBackupRecord;
use backup_core::BackupId;
use backup_sources::azure::blob::{BlobClient, BlobCredential};
use backup_sources::azure::sql::{
    AzureEndpoints, Database, ExportRequest, RestorePoint, ServicePrincipal, SqlClient, SqlError,
    SqlServerRef, StorageKeyType, DEFAULT_AUTHORITY, DEFAULT_MANAGEMENT_URL, DEFAULT_POLL_INTERVAL,
};
use backup_sources::Secret;

use crate::error::{EngineError, Result};
use crate::mysql::DumpEvent;
use crate::restore::BackupSelector;
use crate::Engine;

/// The entry a backup's data artifact holds: the backup's [`AzureSqlRecord`].
pub const RECORD_PATH: &str = "azure-sql/backup.json";
const RECORD_FORMAT: u32 = 1;

/// `[[source]] kind = "azure-sql"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureSqlSourceConfig {
    /// The Microsoft Entra ID tenant (directory) of the service principal.
    pub tenant_id: String,
    /// The service principal's application (client) id.
    pub client_id: String,
    /// Its client secret, from an environment variable or a file (never here).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    pub subscription_id: String,
    pub resource_group: String,
    /// The logical server's name (`NAME.database.windows.net`).
    pub server: String,
    pub database: String,
    /// The identity platform; default Azure's public cloud (sovereign clouds, test doubles).
    #[serde(default)]
    pub authority_url: Option<String>,
    /// Resource Manager; default Azure's public cloud.
    #[serde(default)]
    pub management_url: Option<String>,
    /// How often an operation is polled when Azure sends no `Retry-After`.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A restore (or a drill's) not done after this long fails.
    #[serde(default = "default_restore_timeout", with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Also export a bacpac with every backup.
    #[serde(default)]
    pub export: Option<AzureSqlExportConfig>,
}

/// `[source.export]`: a bacpac of the database with every backup.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureSqlExportConfig {
    /// The container bacpacs are written to: `https://ACCOUNT.blob.core.windows.net/CONTAINER`
    /// (an emulator's `http://HOST:PORT/ACCOUNT/CONTAINER`). No SAS token here.
    pub storage_uri: String,
    /// `storage-access-key` (the account key) or `shared-access-key` (a SAS token with
    /// read, write, delete and list permissions on the container).
    #[serde(default)]
    pub storage_key_type: StorageKeyKind,
    #[serde(default)]
    pub storage_key_env: Option<String>,
    #[serde(default)]
    pub storage_key_file: Option<PathBuf>,
    /// A SQL login of the server (the export reads the database as it) and its password.
    pub administrator_login: String,
    #[serde(default)]
    pub administrator_login_password_env: Option<String>,
    #[serde(default)]
    pub administrator_login_password_file: Option<PathBuf>,
    /// Blob names are this prefix, the database name and the backup id (`.bacpac`).
    #[serde(default)]
    pub prefix: String,
    /// An export not `Succeeded` after this long fails the backup.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageKeyKind {
    #[default]
    StorageAccessKey,
    SharedAccessKey,
}

fn default_poll() -> Duration {
    DEFAULT_POLL_INTERVAL
}
fn default_restore_timeout() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(6 * 3600)
}

/// Azure names: no path or query characters, not empty.
fn plain_name(value: &str) -> bool {
    !value.trim().is_empty() && !value.contains(['/', '?', '#', '%', '&', ' '])
}

fn http_url(value: &str) -> bool {
    Url::parse(value).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

impl AzureSqlSourceConfig {
    /// Checked at config load: `(key, message)` on failure.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        for (key, value) in [
            ("tenant-id", &self.tenant_id),
            ("client-id", &self.client_id),
            ("subscription-id", &self.subscription_id),
            ("resource-group", &self.resource_group),
            ("server", &self.server),
            ("database", &self.database),
        ] {
            if !plain_name(value) {
                return bad(
                    key,
                    "must be a name or id, without `/`, `?`, `#`, `%`, `&` or spaces",
                );
            }
        }
        if self.server.contains('.') {
            return bad(
                "server",
                "is the logical server's name, without `.database.windows.net`",
            );
        }
        if self.client_secret_env.is_some() == self.client_secret_file.is_some() {
            return bad(
                "client-secret-env",
                "give one of client-secret-env or client-secret-file (the service principal's \
                 secret, never the secret itself)",
            );
        }
        for (key, url) in [
            ("authority-url", &self.authority_url),
            ("management-url", &self.management_url),
        ] {
            if let Some(url) = url {
                if !http_url(url) {
                    return bad(key, "must be an http:// or https:// URL");
                }
                if crate::config::url_has_password(url) || url.contains('?') {
                    return bad(key, "must not carry credentials or a query");
                }
            }
        }
        if self.poll_interval.is_zero() || self.restore_timeout < self.poll_interval {
            return bad(
                "poll-interval",
                "must be above zero and at most restore-timeout",
            );
        }
        if let Some(export) = &self.export {
            export
                .validate(self.poll_interval)
                .map_err(|(key, message)| (format!("export.{key}"), message))?;
        }
        Ok(())
    }

    fn client(&self, source: &str) -> Result<SqlClient> {
        let (secret, _) = crate::config::read_secret(
            self.client_secret_env.as_deref(),
            self.client_secret_file.as_deref(),
            "the client secret",
            "`client-secret-env` or `client-secret-file`",
        )
        .map_err(|e| EngineError::Usage(format!("Azure SQL source {source}: {e}")))?;
        SqlClient::new(
            SqlServerRef {
                subscription_id: self.subscription_id.clone(),
                resource_group: self.resource_group.clone(),
                server: self.server.clone(),
            },
            ServicePrincipal {
                tenant_id: self.tenant_id.clone(),
                client_id: self.client_id.clone(),
                client_secret: Secret::new(secret),
            },
            AzureEndpoints {
                authority: self
                    .authority_url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AUTHORITY.into()),
                management: self
                    .management_url
                    .clone()
                    .unwrap_or_else(|| DEFAULT_MANAGEMENT_URL.into()),
            },
        )
        .map(|c| c.with_poll_interval(self.poll_interval))
        .map_err(|e| failure(source, e))
    }
}

impl AzureSqlExportConfig {
    fn validate(&self, poll: Duration) -> std::result::Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        if !http_url(&self.storage_uri) || self.storage_uri.contains('?') {
            return bad(
                "storage-uri",
                "must be the container's URL, https://ACCOUNT.blob.core.windows.net/CONTAINER, \
                 without a SAS token (put that in storage-key-env or storage-key-file)",
            );
        }
        if let Err(why) = BacpacStore::of(&self.storage_uri) {
            return bad("storage-uri", &why);
        }
        if self.storage_key_env.is_some() == self.storage_key_file.is_some() {
            return bad(
                "storage-key-env",
                "give one of storage-key-env or storage-key-file (the storage account key or \
                 SAS token, never the key itself)",
            );
        }
        if !plain_name(&self.administrator_login) {
            return bad("administrator-login", "must be a SQL login name");
        }
        if self.administrator_login_password_env.is_some()
            == self.administrator_login_password_file.is_some()
        {
            return bad(
                "administrator-login-password-env",
                "give one of administrator-login-password-env or \
                 administrator-login-password-file",
            );
        }
        if self.prefix.contains(['?', '#', '\\']) || self.prefix.starts_with('/') {
            return bad(
                "prefix",
                "must be a blob name prefix (no `?`, `#`, `\\` or leading `/`)",
            );
        }
        if self.timeout < poll {
            return bad("timeout", "must be at least the source's poll-interval");
        }
        Ok(())
    }

    fn storage_key(&self) -> std::result::Result<Secret, String> {
        let what = match self.storage_key_type {
            StorageKeyKind::StorageAccessKey => "the storage account key",
            StorageKeyKind::SharedAccessKey => "the SAS token",
        };
        crate::config::read_secret(
            self.storage_key_env.as_deref(),
            self.storage_key_file.as_deref(),
            what,
            "`export.storage-key-env` or `export.storage-key-file`",
        )
        .map(|(key, _)| Secret::new(key))
    }

    /// The export request of backup `id` of `database`, secrets read now.
    fn request(&self, database: &str, id: BackupId) -> std::result::Result<ExportRequest, String> {
        let (password, _) = crate::config::read_secret(
            self.administrator_login_password_env.as_deref(),
            self.administrator_login_password_file.as_deref(),
            "the SQL administrator password",
            "`export.administrator-login-password-env` or `-file`",
        )?;
        Ok(ExportRequest {
            storage_uri: self.blob_url(database, id),
            storage_key_type: match self.storage_key_type {
                StorageKeyKind::StorageAccessKey => StorageKeyType::StorageAccessKey,
                StorageKeyKind::SharedAccessKey => StorageKeyType::SharedAccessKey,
            },
            storage_key: self.storage_key()?,
            administrator_login: self.administrator_login.clone(),
            administrator_login_password: Secret::new(password),
        })
    }

    fn blob_name(&self, database: &str, id: BackupId) -> String {
        format!("{}{database}-{id}.bacpac", self.prefix)
    }

    /// The URL of backup `id`'s bacpac (what the catalog records).
    fn blob_url(&self, database: &str, id: BackupId) -> String {
        format!(
            "{}/{}",
            self.storage_uri.trim_end_matches('/'),
            self.blob_name(database, id)
        )
    }

    /// A client of the storage account, with the container and the account's endpoint.
    fn store(&self) -> std::result::Result<(BlobClient, BacpacStore), String> {
        let store = BacpacStore::of(&self.storage_uri)?;
        let key = self.storage_key()?;
        let credential = match self.storage_key_type {
            StorageKeyKind::StorageAccessKey => BlobCredential::SharedKey(key),
            StorageKeyKind::SharedAccessKey => BlobCredential::Sas(key),
        };
        let client = BlobClient::new(&store.endpoint, &store.account, credential)
            .map_err(|e| e.to_string())?;
        Ok((client, store))
    }
}

/// Where bacpacs go, from the container URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BacpacStore {
    /// The Blob service endpoint of the account (`https://ACCOUNT.blob.core.windows.net`).
    endpoint: String,
    account: String,
    container: String,
}

impl BacpacStore {
    /// `https://ACCOUNT.blob.core.windows.net/CONTAINER` or, path-style (emulators),
    /// `http://HOST:PORT/ACCOUNT/CONTAINER`.
    fn of(container_url: &str) -> std::result::Result<BacpacStore, String> {
        let url = Url::parse(container_url).map_err(|e| format!("not a URL: {e}"))?;
        let origin = url.origin().ascii_serialization();
        let segments: Vec<&str> = url
            .path_segments()
            .map(|s| s.filter(|p| !p.is_empty()).collect())
            .unwrap_or_default();
        let (endpoint, account, container) = match segments.as_slice() {
            [container] => {
                let host = url.host_str().unwrap_or("");
                let account = host.split('.').next().unwrap_or("").to_owned();
                (origin, account, container.to_string())
            }
            [account, container] => (
                format!("{origin}/{account}"),
                account.to_string(),
                container.to_string(),
            ),
            _ => {
                return Err(
                    "must name exactly one container: https://ACCOUNT.blob.core.windows.net/\
                     CONTAINER"
                        .into(),
                )
            }
        };
        crate::azure_blob::check_container_name(&container)?;
        Ok(BacpacStore {
            endpoint,
            account,
            container,
        })
    }

    /// The blob name of `url` if it is a blob of this container.
    fn blob_of(&self, url: &str) -> Option<String> {
        let prefix = format!("{}/{}/", self.endpoint, self.container);
        url.strip_prefix(&prefix)
            .filter(|name| !name.is_empty() && !name.contains('?'))
            .map(str::to_owned)
    }
}

/// The engine error of an Azure failure of `source`: Azure's error already says what failed
/// and what to do; unusable settings are usage errors.
fn failure(source: &str, e: SqlError) -> EngineError {
    match e {
        SqlError::Config { .. } => EngineError::Usage(format!("Azure SQL source {source}: {e}")),
        e => EngineError::Failed(format!("Azure SQL source {source}: {e}")),
    }
}

/// One restore point as the record stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedRestorePoint {
    pub name: String,
    /// `CONTINUOUS` or `DISCRETE`.
    pub restore_point_type: String,
    #[serde(default)]
    pub earliest_restore_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restore_point_creation_date: Option<DateTime<Utc>>,
    #[serde(default)]
    pub restore_point_label: Option<String>,
}

/// The bacpac a backup exported.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedExport {
    /// The blob, never with a SAS token.
    pub blob_url: String,
    pub bytes: u64,
    #[serde(default)]
    pub request_id: Option<String>,
}

/// What a backup of an Azure SQL source stores as its data: enough to restore it and to
/// delete what it owns with the repository alone (catalog rebuild reads it back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AzureSqlRecord {
    pub format: u32,
    pub subscription_id: String,
    pub resource_group: String,
    pub server: String,
    pub database: String,
    pub database_resource_id: String,
    pub location: String,
    /// The database's own GUID (`properties.databaseId`).
    #[serde(default)]
    pub database_guid: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub sku: Option<String>,
    #[serde(default)]
    pub max_size_bytes: Option<u64>,
    /// The point a restore of this backup goes to.
    pub restore_point: DateTime<Utc>,
    /// The start of the restore window when the backup was taken.
    pub earliest_restore_date: DateTime<Utc>,
    pub restore_points: Vec<RecordedRestorePoint>,
    #[serde(default)]
    pub export: Option<RecordedExport>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl AzureSqlRecord {
    pub fn catalog_record(&self, backup_id: BackupId) -> AzureSqlBackupRecord {
        AzureSqlBackupRecord {
            backup_id,
            subscription_id: self.subscription_id.clone(),
            resource_group: self.resource_group.clone(),
            server: self.server.clone(),
            database: self.database.clone(),
            database_resource_id: self.database_resource_id.clone(),
            location: self.location.clone(),
            restore_point: self.restore_point,
            earliest_restore_date: Some(self.earliest_restore_date),
            export_blob_url: self.export.as_ref().map(|e| e.blob_url.clone()),
            export_bytes: self.export.as_ref().map(|e| e.bytes),
            created_at: self.finished_at,
        }
    }
}

/// Start of the restore window: the `CONTINUOUS` restore point's, else the database's.
fn window_start(db: &Database, points: &[RestorePoint]) -> Option<DateTime<Utc>> {
    points
        .iter()
        .filter(|p| p.restore_point_type.eq_ignore_ascii_case("CONTINUOUS"))
        .filter_map(|p| p.earliest_restore_date)
        .min()
        .or(db.earliest_restore_date)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `now` to the millisecond (what a restore request carries).
fn now_millis() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// Runs `future`, or fails when `cancel` fires first.
async fn cancellable<T>(
    cancel: &CancellationToken,
    what: &str,
    future: impl std::future::Future<Output = std::result::Result<T, SqlError>>,
) -> std::result::Result<T, String> {
    tokio::select! {
        r = future => r.map_err(|e| e.to_string()),
        _ = cancel.cancelled() => Err(format!("{what} was cancelled")),
    }
}

/// Backs up source `source`: reads the database (failing if it is missing), lists its
/// restore points, takes `now` as the backup's point (inside the window), exports a bacpac
/// when configured (waiting until Azure reports `Succeeded` and the blob is there), then
/// sends the record into the pipeline.
pub async fn backup(
    cfg: &AzureSqlSourceConfig,
    source: &str,
    backup_id: BackupId,
    tx: mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<AzureSqlRecord> {
    let started_at = Utc::now();
    let client = cfg.client(source)?;
    let fail = |e: String| {
        EngineError::Failed(format!(
            "Azure SQL source {source}: {e}; the backup is not complete"
        ))
    };
    let db = cancellable(
        cancel,
        "reading the database",
        client.database(&cfg.database),
    )
    .await
    .map_err(fail)?;
    let points = cancellable(
        cancel,
        "listing the restore points",
        client.restore_points(&cfg.database),
    )
    .await
    .map_err(fail)?;
    let restore_point = now_millis();
    let Some(earliest) = window_start(&db, &points) else {
        return Err(fail(format!(
            "database {} of server {} has no restore point yet (Azure takes its first full \
             backup minutes after the database is created); try again later",
            cfg.database, cfg.server
        )));
    };
    if earliest > restore_point {
        return Err(fail(format!(
            "database {}'s restore window starts at {}, after now ({}); check this host's clock",
            cfg.database,
            rfc3339(earliest),
            rfc3339(restore_point)
        )));
    }
    let export = match &cfg.export {
        Some(export) => Some(
            run_export(&client, cfg, export, backup_id, cancel)
                .await
                .map_err(fail)?,
        ),
        None => None,
    };
    let record = AzureSqlRecord {
        format: RECORD_FORMAT,
        subscription_id: cfg.subscription_id.clone(),
        resource_group: cfg.resource_group.clone(),
        server: cfg.server.clone(),
        database: db.name.clone(),
        database_resource_id: db.id.clone(),
        location: db.location.clone(),
        database_guid: db.database_id.clone(),
        status: db.status.clone(),
        sku: db.sku_name.clone(),
        max_size_bytes: db.max_size_bytes,
        restore_point,
        earliest_restore_date: earliest,
        restore_points: points
            .iter()
            .map(|p| RecordedRestorePoint {
                name: p.name.clone(),
                restore_point_type: p.restore_point_type.clone(),
                earliest_restore_date: p.earliest_restore_date,
                restore_point_creation_date: p.restore_point_creation_date,
                restore_point_label: p.restore_point_label.clone(),
            })
            .collect(),
        export,
        started_at,
        finished_at: Utc::now(),
    };
    crate::mysql::send_record(&tx, RECORD_PATH, &record, "Azure SQL record").await?;
    Ok(record)
}

/// Exports the database to backup `backup_id`'s bacpac and checks the blob is there.
async fn run_export(
    client: &SqlClient,
    cfg: &AzureSqlSourceConfig,
    export: &AzureSqlExportConfig,
    backup_id: BackupId,
    cancel: &CancellationToken,
) -> std::result::Result<RecordedExport, String> {
    let request = export.request(&cfg.database, backup_id)?;
    let blob_url = request.storage_uri.clone();
    let result = cancellable(
        cancel,
        "the export",
        client.export(&cfg.database, &request, export.timeout),
    )
    .await?;
    let (store_client, store) = export.store()?;
    let name = export.blob_name(&cfg.database, backup_id);
    let bytes = blob_size(&store_client, &store, &name)
        .await?
        .ok_or_else(|| {
            format!(
                "the export of database {} reported {} but its bacpac {blob_url} is not in \
                 the container",
                cfg.database,
                result.status.as_deref().unwrap_or("success")
            )
        })?;
    tracing::info!(%backup_id, blob = %blob_url, bytes, "bacpac exported");
    Ok(RecordedExport {
        blob_url,
        bytes,
        request_id: result.request_id,
    })
}

/// The size of blob `name` of the store's container, `None` when there is no such blob.
async fn blob_size(
    client: &BlobClient,
    store: &BacpacStore,
    name: &str,
) -> std::result::Result<Option<u64>, String> {
    let listed = client
        .list_blobs(&store.container, Some(name))
        .await
        .map_err(|e| e.to_string())?;
    Ok(listed.into_iter().find(|b| b.name == name).map(|b| b.size))
}

/// The Azure SQL config of `source`, if it still is one.
fn azure_sql_config<'a>(engine: &'a Engine, source: &str) -> Option<&'a AzureSqlSourceConfig> {
    match &engine.config.source(source).ok()?.1.kind {
        crate::config::SourceKindConfig::AzureSql(cfg) => Some(cfg),
        _ => None,
    }
}

fn no_longer(source: &str) -> EngineError {
    EngineError::Usage(format!("source {source} is no longer an azure-sql source"))
}

/// Deletes the bacpac of backup `backup_id` of `source`: the one the catalog records or,
/// for a backup that failed before recording it, the one its export may have started.
/// Azure's own backups are never touched. `true` when a blob was deleted.
pub async fn delete_backup_export(
    engine: &Engine,
    source: &str,
    backup_id: BackupId,
) -> Result<bool> {
    let recorded = engine.catalog.azure_sql_backup(backup_id).await?;
    let recorded_url = recorded.as_ref().and_then(|r| r.export_blob_url.clone());
    let Some(cfg) = azure_sql_config(engine, source) else {
        if let Some(url) = recorded_url {
            tracing::warn!(%backup_id, blob = %url, "source {source} is no longer an azure-sql source: its bacpac is left in place; delete it by hand");
        }
        return Ok(false);
    };
    let Some(export) = &cfg.export else {
        if let Some(url) = recorded_url {
            return Err(EngineError::Failed(format!(
                "backup {backup_id} of {source} owns the bacpac {url}, but the source has no \
                 [export] settings (storage key) left to delete it with; restore them, or \
                 delete the blob by hand and then the backup"
            )));
        }
        return Ok(false);
    };
    let url = match (&recorded, recorded_url) {
        (_, Some(url)) => url,
        // Recorded without an export: there is nothing of ours in Blob Storage.
        (Some(_), None) => return Ok(false),
        (None, None) => export.blob_url(&cfg.database, backup_id),
    };
    let (client, store) = export
        .store()
        .map_err(|e| EngineError::Usage(format!("Azure SQL source {source}: {e}")))?;
    let name = store.blob_of(&url).ok_or_else(|| {
        EngineError::Failed(format!(
            "backup {backup_id}'s bacpac {url} is not in the container of export.storage-uri \
             ({}/{}); delete it by hand",
            store.endpoint, store.container
        ))
    })?;
    client
        .delete_blob(&store.container, &name)
        .await
        .map_err(|e| {
            EngineError::Failed(format!(
                "Azure SQL source {source}: deleting the bacpac {url}: {e}"
            ))
        })
}

/// `backupctl verify` of an Azure SQL backup: the database still exists, the backup's point
/// is still inside its restore window, and its bacpac (if any) is there with its size.
pub async fn check_backup(
    engine: &Engine,
    source: &str,
    record: &AzureSqlBackupRecord,
) -> Result<String> {
    let cfg = azure_sql_config(engine, source).ok_or_else(|| no_longer(source))?;
    let client = cfg.client(source)?;
    let id = record.backup_id;
    let db = match client.database(&record.database).await {
        Ok(db) => db,
        Err(e @ SqlError::NotFound { .. }) => {
            return Err(EngineError::Integrity(format!(
                "backup {id}: database {} of server {} no longer exists ({e}); a point-in-time \
                 restore needs it (a deleted database can only be restored as of its deletion)",
                record.database, record.server
            )))
        }
        Err(e) => return Err(failure(source, e)),
    };
    let points = client
        .restore_points(&record.database)
        .await
        .map_err(|e| failure(source, e))?;
    let now = Utc::now();
    let start = window_start(&db, &points).ok_or_else(|| {
        EngineError::Integrity(format!(
            "backup {id}: database {} reports no restore window",
            record.database
        ))
    })?;
    if record.restore_point < start {
        return Err(EngineError::Integrity(format!(
            "backup {id}: its point {} has aged out of Azure's point-in-time restore window \
             (now {} to {}); raise the database's backup retention or rely on a bacpac export",
            rfc3339(record.restore_point),
            rfc3339(start),
            rfc3339(now)
        )));
    }
    if record.restore_point > now {
        return Err(EngineError::Integrity(format!(
            "backup {id}: its point {} is in the future (now {}); check the clocks",
            rfc3339(record.restore_point),
            rfc3339(now)
        )));
    }
    let mut note = format!(
        "point {} inside the restore window of database {} ({} to now)",
        rfc3339(record.restore_point),
        record.database,
        rfc3339(start)
    );
    if let Some(url) = &record.export_blob_url {
        let export = cfg.export.as_ref().ok_or_else(|| {
            EngineError::Usage(format!(
                "backup {id} has the bacpac {url}, but source {source} has no [export] \
                 settings (storage key) to check it with"
            ))
        })?;
        let (client, store) = export
            .store()
            .map_err(|e| EngineError::Usage(format!("Azure SQL source {source}: {e}")))?;
        let name = store.blob_of(url).ok_or_else(|| {
            EngineError::Failed(format!(
                "backup {id}'s bacpac {url} is not in the container of export.storage-uri"
            ))
        })?;
        let size = blob_size(&client, &store, &name)
            .await
            .map_err(|e| EngineError::Failed(format!("Azure SQL source {source}: {e}")))?;
        match (size, record.export_bytes) {
            (None, _) => {
                return Err(EngineError::Integrity(format!(
                    "backup {id}: its bacpac {url} is missing; it was deleted outside backupd"
                )))
            }
            (Some(size), Some(recorded)) if size != recorded => {
                return Err(EngineError::Integrity(format!(
                    "backup {id}: its bacpac {url} is {size} bytes, not the {recorded} the \
                     export wrote; it was replaced outside backupd"
                )))
            }
            (Some(size), _) => note.push_str(&format!("; bacpac {url} present, {size} bytes")),
        }
    }
    Ok(note)
}

/// Catalog rebuild: reads the record artifact of backup `backup_id` back into the catalog.
pub async fn reimport_record(
    engine: &Engine,
    backup_id: BackupId,
    cancel: &CancellationToken,
) -> Result<()> {
    let record: AzureSqlRecord = crate::restore::read_backup_record(
        engine,
        backup_id,
        RECORD_PATH,
        "Azure SQL record",
        cancel,
    )
    .await?;
    engine
        .catalog
        .record_azure_sql_backup(&record.catalog_record(backup_id))
        .await?;
    Ok(())
}

/// Which point a restore goes to.
#[derive(Debug, Clone)]
pub enum RestorePointChoice {
    /// A backup's recorded point.
    Backup(BackupSelector),
    /// Any point inside the database's restore window.
    Time(DateTime<Utc>),
}

/// `backupctl restore SOURCE (--backup ID | --latest | --point-in-time TS)
/// --target-database NEW [--no-wait]`.
#[derive(Debug, Clone)]
pub struct AzureSqlRestoreOptions {
    pub source: String,
    pub point: RestorePointChoice,
    /// The new database (same server); must not exist.
    pub target_database: String,
    /// Wait until Azure has made the database (else return once the restore is accepted).
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AzureSqlRestoreOutcome {
    pub backup_id: Option<BackupId>,
    pub source: String,
    pub server: String,
    pub source_database: String,
    pub source_database_id: String,
    pub target_database: String,
    pub point_in_time: DateTime<Utc>,
    /// The new database's resource id and status once done (waited).
    pub database_resource_id: Option<String>,
    pub status: Option<String>,
    pub waited: bool,
    /// Where Azure reports the restore's progress (without waiting).
    pub operation_url: Option<String>,
    pub seconds: f64,
}

/// Restores the source's database as of a backup's point (or a time) into a new database
/// of the same server and, unless told not to, waits until Azure has made it.
pub async fn run_azure_sql_restore(
    engine: &Engine,
    options: &AzureSqlRestoreOptions,
    cancel: &CancellationToken,
) -> Result<AzureSqlRestoreOutcome> {
    let started = std::time::Instant::now();
    let (_, source) = engine.config.source(&options.source)?;
    let crate::config::SourceKindConfig::AzureSql(cfg) = &source.kind else {
        return Err(EngineError::Usage(format!(
            "source {} is a {} source; --target-database restores azure-sql sources",
            options.source,
            source.kind.kind_name()
        )));
    };
    if !plain_name(&options.target_database) {
        return Err(EngineError::Usage(format!(
            "--target-database {:?} is not a database name",
            options.target_database
        )));
    }
    let (backup_id, point) = match &options.point {
        RestorePointChoice::Backup(selector) => {
            let backup = crate::restore::select_backup(engine, selector).await?;
            if backup.source != options.source {
                return Err(EngineError::Usage(format!(
                    "backup {} is of source {}, not {}",
                    backup.id, backup.source, options.source
                )));
            }
            let record = engine
                .catalog
                .azure_sql_backup(backup.id)
                .await?
                .ok_or_else(|| {
                    EngineError::Failed(format!(
                        "backup {} has no Azure SQL record (it is {}); restore another backup",
                        backup.id,
                        backup.status.as_str()
                    ))
                })?;
            if record.database != cfg.database || record.server != cfg.server {
                return Err(EngineError::Usage(format!(
                    "backup {} is of database {} on server {}; the source now names {} on {}",
                    backup.id, record.database, record.server, cfg.database, cfg.server
                )));
            }
            (Some(backup.id), record.restore_point)
        }
        RestorePointChoice::Time(t) => (None, *t),
    };
    let client = cfg.client(&options.source)?;
    let fail = |e| failure(&options.source, e);
    let db = client.database(&cfg.database).await.map_err(fail)?;
    let points = client.restore_points(&cfg.database).await.map_err(fail)?;
    let now = Utc::now();
    let start = window_start(&db, &points).ok_or_else(|| {
        EngineError::Failed(format!(
            "database {} has no restore point yet; nothing can be restored",
            cfg.database
        ))
    })?;
    if point < start || point > now {
        let range = format!("{} to {}", rfc3339(start), rfc3339(now));
        return Err(match backup_id {
            Some(id) => EngineError::Failed(format!(
                "backup {id}'s point {} has aged out of Azure's point-in-time restore window \
                 of database {} ({range}); restore a newer backup",
                rfc3339(point),
                cfg.database
            )),
            None => EngineError::Usage(format!(
                "--point-in-time {} is outside the restorable range of database {} ({range})",
                rfc3339(point),
                cfg.database
            )),
        });
    }
    let operation = client
        .begin_point_in_time_restore(&cfg.database, &options.target_database, point)
        .await
        .map_err(fail)?;
    let mut outcome = AzureSqlRestoreOutcome {
        backup_id,
        source: options.source.clone(),
        server: cfg.server.clone(),
        source_database: cfg.database.clone(),
        source_database_id: db.id.clone(),
        target_database: options.target_database.clone(),
        point_in_time: point,
        database_resource_id: None,
        status: None,
        waited: options.wait,
        operation_url: operation
            .async_operation_url
            .clone()
            .or(operation.location_url.clone()),
        seconds: 0.0,
    };
    if options.wait {
        cancellable(
            cancel,
            "the restore",
            client.wait(&operation, cfg.restore_timeout),
        )
        .await
        .map_err(|e| {
            EngineError::Failed(format!(
                "Azure SQL source {}: {e}; database {} may be left half made: check it in \
                 Azure and delete it before trying again",
                options.source, options.target_database
            ))
        })?;
        let restored = client
            .database(&options.target_database)
            .await
            .map_err(fail)?;
        outcome.database_resource_id = Some(restored.id);
        outcome.status = restored.status;
    }
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// A scratch database a drill restored, deleted afterwards.
#[derive(Debug)]
pub struct ScratchDatabase {
    client: SqlClient,
    pub database: String,
    timeout: Duration,
}

impl ScratchDatabase {
    /// Deletes it (no-op when it was never made); `true` when one was deleted.
    pub async fn delete(&self) -> Result<bool> {
        self.client
            .delete_database(&self.database, self.timeout)
            .await
            .map_err(|e| EngineError::Failed(e.to_string()))
    }
}

/// The scratch database `name` of `source`, to be deleted after a drill.
pub fn scratch_database(engine: &Engine, source: &str, name: &str) -> Result<ScratchDatabase> {
    let cfg = azure_sql_config(engine, source).ok_or_else(|| no_longer(source))?;
    Ok(ScratchDatabase {
        client: cfg.client(source)?,
        database: name.to_owned(),
        timeout: cfg.restore_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(source: &str) -> std::result::Result<crate::Config, String> {
        crate::config::parse_with_source("ledger", "azure-sql", source)
    }

    const BASE: &str = "tenant-id = \"t\"\nclient-id = \"c\"\nclient-secret-env = \"S\"\n\
                        subscription-id = \"sub\"\nresource-group = \"rg\"\nserver = \"srv\"\n\
                        database = \"ledger\"\n";

    #[test]
    fn config_parses_and_bad_settings_are_named() {
        let c = config(&format!(
            "{BASE}management-url = \"http://127.0.0.1:1\"\npoll-interval = \"1s\"\n\
             [source.export]\nstorage-uri = \"https://acct.blob.core.windows.net/bacpacs\"\n\
             storage-key-file = \"/etc/k\"\nadministrator-login = \"sqladmin\"\n\
             administrator-login-password-env = \"P\"\ntimeout = \"30m\"\n"
        ))
        .unwrap();
        let crate::config::SourceKindConfig::AzureSql(a) = &c.sources[0].kind else {
            panic!("not azure-sql");
        };
        assert_eq!(a.poll_interval, Duration::from_secs(1));
        let export = a.export.as_ref().unwrap();
        assert_eq!(export.storage_key_type, StorageKeyKind::StorageAccessKey);
        let id = BackupId::new();
        assert_eq!(
            export.blob_url("ledger", id),
            format!("https://acct.blob.core.windows.net/bacpacs/ledger-{id}.bacpac")
        );
        let export = "[source.export]\nstorage-uri = \"https://a.blob.core.windows.net/bak\"\n\
                      storage-key-env = \"K\"\nadministrator-login = \"x\"\n\
                      administrator-login-password-env = \"P\"\n";
        for (bad, needle) in [
            (
                BASE.replace("client-secret-env = \"S\"\n", ""),
                "client-secret-env",
            ),
            (format!("{BASE}client-secret = \"x\"\n"), "unknown field"),
            (
                BASE.replace("srv", "srv.database.windows.net"),
                "source[0].server",
            ),
            (BASE.replace("\"rg\"", "\"r/g\""), "resource-group"),
            (
                format!("{BASE}management-url = \"localhost:1\"\n"),
                "management-url",
            ),
            (
                format!("{BASE}poll-interval = \"1h\"\nrestore-timeout = \"10m\"\n"),
                "at most restore-timeout",
            ),
            (
                format!("{BASE}{}", export.replace("/bak", "/bak?sv=1&sig=x")),
                "export.storage-uri",
            ),
            (
                format!("{BASE}{}", export.replace("/bak", "")),
                "export.storage-uri",
            ),
            (
                format!("{BASE}{}", export.replace("storage-key-env = \"K\"\n", "")),
                "export.storage-key-env",
            ),
            (
                format!("{BASE}{export}storage-key = \"k\"\n"),
                "unknown field",
            ),
            (
                format!("{BASE}{export}storage-key-type = \"sas\"\n"),
                "unknown variant",
            ),
        ] {
            let err = config(&bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn bacpac_stores_are_read_from_container_urls() {
        let azure = BacpacStore::of("https://acct.blob.core.windows.net/bacpacs/").unwrap();
        assert_eq!(
            azure,
            BacpacStore {
                endpoint: "https://acct.blob.core.windows.net".into(),
                account: "acct".into(),
                container: "bacpacs".into(),
            }
        );
        assert_eq!(
            azure.blob_of("https://acct.blob.core.windows.net/bacpacs/x/y.bacpac"),
            Some("x/y.bacpac".into())
        );
        assert_eq!(
            azure.blob_of("https://other.blob.core.windows.net/bacpacs/y.bacpac"),
            None
        );
        let emulator = BacpacStore::of("http://127.0.0.1:10000/devstoreaccount1/bacpacs").unwrap();
        assert_eq!(emulator.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        assert_eq!(emulator.account, "devstoreaccount1");
        assert!(BacpacStore::of("https://acct.blob.core.windows.net").is_err());
        assert!(BacpacStore::of("https://acct.blob.core.windows.net/Bad_Name").is_err());
    }
}
