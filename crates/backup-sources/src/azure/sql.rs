//! Azure SQL Database through Azure Resource Manager (`Microsoft.Sql`, API version
//! [`API_VERSION`]): read a database (its resource id and `earliestRestoreDate`), list its
//! restore points, restore it to a point in time as a new database, export it to a bacpac in
//! Blob Storage, and follow the long-running operations those start.
//!
//! Authentication is a Microsoft Entra ID service principal: an OAuth2 client-credentials
//! token from `{authority}/{tenant}/oauth2/v2.0/token` for the scope
//! `https://management.azure.com/.default`, cached until shortly before it expires and
//! fetched again when Resource Manager says it is no longer valid. The client secret, the
//! tokens, the storage key and the SQL password are kept in [`Secret`] and never appear in
//! errors, `Debug` output or logs.
//!
//! Long-running operations follow Resource Manager's protocol: the `Azure-AsyncOperation`
//! URL is polled until its `status` is `Succeeded`, `Failed` or `Canceled` (the failure's
//! `error` object is reported), else the `Location` URL until it stops answering 202; each
//! wait honours `Retry-After`. Poll URLs must be on the management endpoint: the token is
//! never sent anywhere else.

use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{debug, info, instrument};

use super::{error_chain, redact_sas, Secret};

/// The `Microsoft.Sql` API version of every call.
pub const API_VERSION: &str = "2021-11-01";
/// The Microsoft identity platform of Azure's public cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Azure Resource Manager of Azure's public cloud.
pub const DEFAULT_MANAGEMENT_URL: &str = "https://management.azure.com";
/// The scope a token for Resource Manager is asked for.
pub const MANAGEMENT_SCOPE: &str = "https://management.azure.com/.default";
/// How often an operation is polled when Azure does not say (`Retry-After`).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(15);

/// What went wrong talking to Microsoft Entra ID or Resource Manager.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("invalid Azure SQL settings: {reason}")]
    Config { reason: String },
    #[error(
        "cannot reach {service} at {url}: {reason}; check the endpoint settings and the network"
    )]
    Unreachable {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("Microsoft Entra ID refused a token to client {client_id} in tenant {tenant_id} (HTTP {status} {error}: {description}); check tenant-id, client-id and client-secret-env/client-secret-file (the secret may have expired)")]
    TokenRejected {
        tenant_id: String,
        client_id: String,
        status: u16,
        error: String,
        description: String,
    },
    #[error("Azure Resource Manager rejected the access token of client {client_id} (HTTP 401 {code}: {message}); check tenant-id (the subscription's directory) and client-id")]
    Unauthorized {
        client_id: String,
        code: String,
        message: String,
    },
    #[error("client {client_id} may not {what} (HTTP 403 {code}: {message}); give the service principal the roles in docs/sources/azure-sql.md")]
    Forbidden {
        client_id: String,
        what: String,
        code: String,
        message: String,
    },
    #[error("{what}: not found (HTTP 404 {code}: {message}); check subscription-id, resource-group, server and database")]
    NotFound {
        what: String,
        code: String,
        message: String,
    },
    #[error("Azure Resource Manager answered {what} with HTTP {status} {code}: {message}")]
    Api {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("database {database} already exists on server {server}: a point-in-time restore creates a new database; pick another name or drop it first")]
    TargetExists { server: String, database: String },
    #[error("{what} failed in Azure ({code}: {message})")]
    OperationFailed {
        what: String,
        code: String,
        message: String,
    },
    #[error("{what} was canceled in Azure")]
    OperationCanceled { what: String },
    #[error("{what} did not finish within {waited:?} (last status {status}); it may still finish in Azure: look at the server's Deployments or Import/Export history")]
    OperationTimedOut {
        what: String,
        waited: Duration,
        status: String,
    },
    #[error("unexpected answer to {what}: {reason}")]
    Protocol { what: String, reason: String },
}

impl SqlError {
    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            SqlError::TokenRejected { status, .. } | SqlError::Api { status, .. } => Some(*status),
            SqlError::Unauthorized { .. } => Some(401),
            SqlError::Forbidden { .. } => Some(403),
            SqlError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// Azure's error code (`error.code` of Resource Manager, `error` of Entra ID).
    pub fn code(&self) -> Option<&str> {
        match self {
            SqlError::TokenRejected { error, .. } => Some(error),
            SqlError::Unauthorized { code, .. }
            | SqlError::Forbidden { code, .. }
            | SqlError::NotFound { code, .. }
            | SqlError::Api { code, .. }
            | SqlError::OperationFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the same call may succeed later without a change of settings.
    pub fn is_transient(&self) -> bool {
        match self {
            SqlError::Unreachable { .. } | SqlError::OperationTimedOut { .. } => true,
            SqlError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// The service principal backupd runs as.
#[derive(Debug, Clone)]
pub struct ServicePrincipal {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// The logical server the client works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlServerRef {
    pub subscription_id: String,
    pub resource_group: String,
    pub server: String,
}

/// Where the identity platform and Resource Manager are (sovereign clouds and test doubles
/// differ from the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureEndpoints {
    pub authority: String,
    pub management: String,
}

impl Default for AzureEndpoints {
    fn default() -> Self {
        AzureEndpoints {
            authority: DEFAULT_AUTHORITY.into(),
            management: DEFAULT_MANAGEMENT_URL.into(),
        }
    }
}

/// A database, as Resource Manager describes it (`Microsoft.Sql/servers/databases`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// The resource id (`/subscriptions/.../databases/NAME`), what a restore names as source.
    pub id: String,
    pub name: String,
    pub location: String,
    /// The database's own GUID (`properties.databaseId`).
    pub database_id: Option<String>,
    /// `Online`, `Creating`, `Restoring`, `Paused`, ...
    pub status: Option<String>,
    pub creation_date: Option<DateTime<Utc>>,
    /// The oldest point a point-in-time restore can go back to.
    pub earliest_restore_date: Option<DateTime<Utc>>,
    pub sku_name: Option<String>,
    pub max_size_bytes: Option<u64>,
}

/// A restore point (`Microsoft.Sql/servers/databases/restorePoints`). An Azure SQL database
/// has one `CONTINUOUS` point whose `earliest_restore_date` starts its restore window; data
/// warehouses also list `DISCRETE` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    pub id: String,
    pub name: String,
    pub location: Option<String>,
    /// `CONTINUOUS` or `DISCRETE`.
    pub restore_point_type: String,
    pub earliest_restore_date: Option<DateTime<Utc>>,
    pub restore_point_creation_date: Option<DateTime<Utc>>,
    pub restore_point_label: Option<String>,
}

/// How an export authenticates to the storage account of `storage_uri`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StorageKeyType {
    /// The storage account key.
    StorageAccessKey,
    /// A SAS token with write permission on the container.
    SharedAccessKey,
}

/// An export of a database to a bacpac blob.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The blob the bacpac is written to, `https://ACCOUNT.blob.core.windows.net/C/NAME.bacpac`.
    pub storage_uri: String,
    pub storage_key_type: StorageKeyType,
    pub storage_key: Secret,
    /// A SQL login of the server (the export connects to the database as it).
    pub administrator_login: String,
    pub administrator_login_password: Secret,
}

/// What an export reports once done (`ImportExportOperationResult`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportResult {
    pub request_id: Option<String>,
    /// `Completed` when the bacpac is written.
    pub status: Option<String>,
    pub blob_uri: Option<String>,
    pub database_name: Option<String>,
    pub error_message: Option<String>,
    pub queued_time: Option<String>,
    pub last_modified_time: Option<String>,
}

/// A long-running operation Resource Manager accepted: where to poll it. It can be stored
/// (serde) to follow the operation again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongRunningOperation {
    /// What the operation does, for messages (`restore of db to db-restored`).
    pub what: String,
    /// `Azure-AsyncOperation`: answers `{status, error}`.
    pub async_operation_url: Option<String>,
    /// `Location`: answers 202 until done, then the final result.
    pub location_url: Option<String>,
    /// The first answer's `Retry-After`, in seconds.
    pub retry_after_secs: Option<u64>,
    /// The first answer's body, the result when the operation finished at once.
    pub initial_body: Option<Value>,
}

/// A finished operation: the final result, if Azure gives one.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedOperation {
    pub what: String,
    pub result: Option<Value>,
}

/// A token and when to stop using it.
struct CachedToken {
    value: Secret,
    refresh_at: Instant,
}

/// A client for the databases of one logical server.
pub struct SqlClient {
    http: reqwest::Client,
    authority: String,
    management: String,
    management_origin: String,
    principal: ServicePrincipal,
    server: SqlServerRef,
    poll_interval: Duration,
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl fmt::Debug for SqlClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlClient")
            .field("authority", &self.authority)
            .field("management", &self.management)
            .field("tenant_id", &self.principal.tenant_id)
            .field("client_id", &self.principal.client_id)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// How long one HTTP call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of answers that say "try again" (429, 5xx) and of lost connections.
const RETRIES: u32 = 3;
/// A token is fetched again this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);

/// The token endpoint's answer (success or error).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Deserialize, Default)]
struct ArmErrorBody {
    error: Option<ArmError>,
}

#[derive(Deserialize, Default, Clone)]
struct ArmError {
    code: Option<String>,
    message: Option<String>,
}

impl SqlClient {
    pub fn new(
        server: SqlServerRef,
        principal: ServicePrincipal,
        endpoints: AzureEndpoints,
    ) -> Result<SqlClient, SqlError> {
        for (name, value) in [
            ("subscription-id", &server.subscription_id),
            ("resource-group", &server.resource_group),
            ("server", &server.server),
            ("tenant-id", &principal.tenant_id),
            ("client-id", &principal.client_id),
        ] {
            if value.is_empty() || value.contains(['/', '?', '#']) {
                return Err(SqlError::Config {
                    reason: format!("`{name}` is empty or holds `/`, `?` or `#`: {value:?}"),
                });
            }
        }
        let parse = |name: &str, text: &str| {
            Url::parse(text).map_err(|e| SqlError::Config {
                reason: format!("{name} {:?} is not a URL: {e}", redact_sas(text)),
            })
        };
        parse("authority", &endpoints.authority)?;
        let management = parse("management endpoint", &endpoints.management)?;
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("backupd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SqlError::Config {
                reason: format!("cannot set up the HTTP client: {}", error_chain(&e)),
            })?;
        Ok(SqlClient {
            http,
            authority: endpoints.authority.trim_end_matches('/').to_owned(),
            management: endpoints.management.trim_end_matches('/').to_owned(),
            management_origin: management.origin().ascii_serialization(),
            principal,
            server,
            poll_interval: DEFAULT_POLL_INTERVAL,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Polls operations this often when Azure sends no `Retry-After`.
    pub fn with_poll_interval(mut self, interval: Duration) -> SqlClient {
        self.poll_interval = interval;
        self
    }

    pub fn server(&self) -> &SqlServerRef {
        &self.server
    }

    fn database_path(&self, database: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Sql/servers/{}/databases/{}",
            self.server.subscription_id, self.server.resource_group, self.server.server, database
        )
    }

    /// A database of the server.
    pub async fn database(&self, name: &str) -> Result<Database, SqlError> {
        check_database_name(name)?;
        let (_, body) = self
            .call(
                Method::GET,
                &self.database_path(name),
                None,
                &format!("reading database {name} of server {}", self.server.server),
            )
            .await?;
        database_of(&body)
    }

    /// The database's restore points (for an Azure SQL database: one `CONTINUOUS` point that
    /// starts the restore window).
    pub async fn restore_points(&self, database: &str) -> Result<Vec<RestorePoint>, SqlError> {
        check_database_name(database)?;
        let what = format!("listing the restore points of database {database}");
        let mut path = format!("{}/restorePoints", self.database_path(database));
        let mut all = Vec::new();
        loop {
            let (_, body) = self.call(Method::GET, &path, None, &what).await?;
            let list: ListAnswer<RestorePointJson> =
                serde_json::from_value(body).map_err(|e| SqlError::Protocol {
                    what: what.clone(),
                    reason: e.to_string(),
                })?;
            all.extend(
                list.value
                    .into_iter()
                    .map(RestorePointJson::into_restore_point),
            );
            // Resource Manager pages lists by `nextLink`, an absolute URL.
            match list.next_link {
                Some(next) if !next.is_empty() => path = self.path_of(&next, &what)?,
                _ => return Ok(all),
            }
        }
    }

    /// Starts a point-in-time restore of `source` into the new database `target` (same
    /// server and location) as of `point_in_time`. Fails with [`SqlError::TargetExists`] if
    /// `target` exists: a restore never overwrites a database.
    #[instrument(skip_all, fields(source, target, point_in_time = %point_in_time))]
    pub async fn begin_point_in_time_restore(
        &self,
        source: &str,
        target: &str,
        point_in_time: DateTime<Utc>,
    ) -> Result<LongRunningOperation, SqlError> {
        check_database_name(target)?;
        let source_db = self.database(source).await?;
        match self.database(target).await {
            Ok(_) => {
                return Err(SqlError::TargetExists {
                    server: self.server.server.clone(),
                    database: target.to_owned(),
                })
            }
            Err(SqlError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let body = json!({
            "location": source_db.location,
            "properties": {
                "createMode": "PointInTimeRestore",
                "sourceDatabaseId": source_db.id,
                "restorePointInTime": point_in_time.to_rfc3339_opts(SecondsFormat::Millis, true),
            }
        });
        let what = format!(
            "the point-in-time restore of database {source} to {} as new database {target}",
            point_in_time.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let (headers, body) = self
            .call(Method::PUT, &self.database_path(target), Some(body), &what)
            .await?;
        info!(target, "point-in-time restore accepted");
        self.operation_of(what, &headers, body)
    }

    /// Restores `source` as of `point_in_time` into the new database `target` and waits (at
    /// most `timeout`) until it is done; returns the new database.
    pub async fn restore_to_point_in_time(
        &self,
        source: &str,
        target: &str,
        point_in_time: DateTime<Utc>,
        timeout: Duration,
    ) -> Result<Database, SqlError> {
        let operation = self
            .begin_point_in_time_restore(source, target, point_in_time)
            .await?;
        self.wait(&operation, timeout).await?;
        self.database(target).await
    }

    /// Deletes database `name` (a scratch database a drill restored) and waits (at most
    /// `timeout`) until it is gone; `false` when there was none. Never call it on a
    /// database backupd did not create.
    #[instrument(skip_all, fields(database = name))]
    pub async fn delete_database(&self, name: &str, timeout: Duration) -> Result<bool, SqlError> {
        check_database_name(name)?;
        let what = format!("deleting database {name} of server {}", self.server.server);
        let result = self
            .call_raw(Method::DELETE, &self.database_path(name), None, &what)
            .await;
        let (headers, body) = match result {
            // Resource Manager answers 204 for a resource that is not there.
            Ok((StatusCode::NO_CONTENT, _, _)) | Err(SqlError::NotFound { .. }) => {
                return Ok(false)
            }
            Ok((_, headers, body)) => (headers, body.unwrap_or(Value::Null)),
            Err(e) => return Err(e),
        };
        let operation = self.operation_of(what, &headers, body)?;
        self.wait(&operation, timeout).await?;
        info!(database = name, "database deleted");
        Ok(true)
    }

    /// Starts an export of `database` to a bacpac blob.
    #[instrument(skip_all, fields(database, storage_uri = %redact_sas(&request.storage_uri)))]
    pub async fn begin_export(
        &self,
        database: &str,
        request: &ExportRequest,
    ) -> Result<LongRunningOperation, SqlError> {
        check_database_name(database)?;
        let body = json!({
            "storageKeyType": request.storage_key_type,
            "storageKey": request.storage_key.expose(),
            "storageUri": request.storage_uri,
            "administratorLogin": request.administrator_login,
            "administratorLoginPassword": request.administrator_login_password.expose(),
            "authenticationType": "Sql",
        });
        let what = format!(
            "the export of database {database} to {}",
            redact_sas(&request.storage_uri)
        );
        let (headers, body) = self
            .call(
                Method::POST,
                &format!("{}/export", self.database_path(database)),
                Some(body),
                &what,
            )
            .await?;
        self.operation_of(what, &headers, body)
    }

    /// Exports `database` to a bacpac blob and waits (at most `timeout`) until it is written.
    pub async fn export(
        &self,
        database: &str,
        request: &ExportRequest,
        timeout: Duration,
    ) -> Result<ExportResult, SqlError> {
        let operation = self.begin_export(database, request).await?;
        let done = self.wait(&operation, timeout).await?;
        let result = done.result.unwrap_or(Value::Null);
        let p = &result["properties"];
        let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_owned);
        let export = ExportResult {
            request_id: text("requestId"),
            status: text("status"),
            blob_uri: text("blobUri").map(|u| redact_sas(&u)),
            database_name: text("databaseName"),
            error_message: text("errorMessage"),
            queued_time: text("queuedTime"),
            last_modified_time: text("lastModifiedTime"),
        };
        if let Some(message) = export.error_message.clone().filter(|m| !m.is_empty()) {
            return Err(SqlError::OperationFailed {
                what: operation.what,
                code: export.status.unwrap_or_else(|| "Failed".into()),
                message: redact_sas(&message),
            });
        }
        Ok(export)
    }

    /// Polls `operation` until it succeeds (the final result), fails or is canceled (an
    /// error), or `timeout` passes.
    pub async fn wait(
        &self,
        operation: &LongRunningOperation,
        timeout: Duration,
    ) -> Result<CompletedOperation, SqlError> {
        let started = Instant::now();
        let mut delay = operation.retry_after_secs.map(Duration::from_secs);
        let mut last_status = String::from("Accepted");
        let what = &operation.what;
        if operation.async_operation_url.is_none() && operation.location_url.is_none() {
            return Ok(CompletedOperation {
                what: what.clone(),
                result: operation.initial_body.clone(),
            });
        }
        loop {
            let pause = delay.unwrap_or(self.poll_interval);
            if started.elapsed() + pause > timeout {
                return Err(SqlError::OperationTimedOut {
                    what: what.clone(),
                    waited: started.elapsed(),
                    status: last_status,
                });
            }
            tokio::time::sleep(pause).await;
            if let Some(url) = &operation.async_operation_url {
                let path = self.path_of(url, what)?;
                let (headers, body) = self.call(Method::GET, &path, None, what).await?;
                delay = retry_after(&headers);
                let status = body["status"].as_str().unwrap_or("").to_owned();
                debug!(what = %what, status = %status, "operation status");
                match status.as_str() {
                    "Succeeded" => {
                        let result = match &operation.location_url {
                            Some(location) => self.final_result(location, what).await?,
                            None => None,
                        };
                        return Ok(CompletedOperation {
                            what: what.clone(),
                            result,
                        });
                    }
                    "Failed" => {
                        let error: ArmError =
                            serde_json::from_value(body["error"].clone()).unwrap_or_default();
                        return Err(SqlError::OperationFailed {
                            what: what.clone(),
                            code: error.code.unwrap_or_else(|| "Failed".into()),
                            message: redact_sas(
                                &error.message.unwrap_or_else(|| "no message".into()),
                            ),
                        });
                    }
                    "Canceled" => return Err(SqlError::OperationCanceled { what: what.clone() }),
                    "" => {
                        return Err(SqlError::Protocol {
                            what: what.clone(),
                            reason: "the operation status has no `status`".into(),
                        })
                    }
                    other => last_status = other.to_owned(),
                }
            } else if let Some(location) = &operation.location_url {
                let path = self.path_of(location, what)?;
                let (status, headers, body) = self.call_raw(Method::GET, &path, None, what).await?;
                delay = retry_after(&headers);
                if status == StatusCode::ACCEPTED {
                    last_status = "InProgress".into();
                    continue;
                }
                return Ok(CompletedOperation {
                    what: what.clone(),
                    result: body,
                });
            }
        }
    }

    /// The `Location` URL's answer once an operation succeeded (202 means not yet).
    async fn final_result(&self, location: &str, what: &str) -> Result<Option<Value>, SqlError> {
        let path = self.path_of(location, what)?;
        for _ in 0..=RETRIES {
            let (status, headers, body) = self.call_raw(Method::GET, &path, None, what).await?;
            if status != StatusCode::ACCEPTED {
                return Ok(body);
            }
            let pause = retry_after(&headers).unwrap_or(self.poll_interval);
            tokio::time::sleep(pause).await;
        }
        Err(SqlError::Protocol {
            what: what.to_owned(),
            reason: "the operation succeeded but its result stayed pending".into(),
        })
    }

    fn operation_of(
        &self,
        what: String,
        headers: &HeaderMap,
        body: Value,
    ) -> Result<LongRunningOperation, SqlError> {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let async_operation_url = header("azure-asyncoperation");
        let location_url = header(LOCATION.as_str());
        for url in async_operation_url.iter().chain(location_url.iter()) {
            self.path_of(url, &what)?;
        }
        Ok(LongRunningOperation {
            what,
            async_operation_url,
            location_url,
            retry_after_secs: retry_after(headers).map(|d| d.as_secs()),
            initial_body: (!body.is_null()).then_some(body),
        })
    }

    /// The path and query of a URL Azure gave (a poll URL, a next page), which must be on the
    /// management endpoint: the bearer token goes nowhere else.
    fn path_of(&self, url: &str, what: &str) -> Result<String, SqlError> {
        let parsed = Url::parse(url).map_err(|e| SqlError::Protocol {
            what: what.to_owned(),
            reason: format!("a URL in the answer does not parse: {e}"),
        })?;
        if parsed.origin().ascii_serialization() != self.management_origin {
            return Err(SqlError::Protocol {
                what: what.to_owned(),
                reason: format!(
                    "the answer points to {} instead of the management endpoint {}",
                    parsed.origin().ascii_serialization(),
                    self.management_origin
                ),
            });
        }
        Ok(match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        })
    }

    /// A bearer token for Resource Manager, from the cache or fresh.
    async fn token(&self, fresh: bool) -> Result<Secret, SqlError> {
        let mut cached = self.token.lock().await;
        if !fresh {
            if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                return Ok(token.value.clone());
            }
        }
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority, self.principal.tenant_id
        );
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.principal.client_id.as_str()),
            ("client_secret", self.principal.client_secret.expose()),
            ("scope", MANAGEMENT_SCOPE),
        ];
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            match self.http.post(&url).form(&form).send().await {
                Ok(r) if r.status().is_server_error() && attempt <= RETRIES => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Ok(r) => break r,
                Err(e) if attempt <= RETRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => {
                    return Err(SqlError::Unreachable {
                        service: "Microsoft Entra ID",
                        url: self.authority.clone(),
                        reason: error_chain(&e.without_url()),
                    })
                }
            }
        };
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer: Option<TokenAnswer> = serde_json::from_str(&text).ok();
        match answer {
            Some(TokenAnswer {
                access_token: Some(token),
                expires_in,
                ..
            }) if status.is_success() => {
                let lifetime = Duration::from_secs(expires_in.unwrap_or(3600));
                let value = Secret::new(token);
                *cached = Some(CachedToken {
                    value: value.clone(),
                    refresh_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
                });
                debug!(
                    expires_in = lifetime.as_secs(),
                    "got a Resource Manager token"
                );
                Ok(value)
            }
            answer => {
                let answer = answer.unwrap_or(TokenAnswer {
                    access_token: None,
                    expires_in: None,
                    error: None,
                    error_description: None,
                });
                Err(SqlError::TokenRejected {
                    tenant_id: self.principal.tenant_id.clone(),
                    client_id: self.principal.client_id.clone(),
                    status: status.as_u16(),
                    error: answer.error.unwrap_or_else(|| "no_token".into()),
                    // The first line; the rest is trace and correlation ids.
                    description: answer
                        .error_description
                        .and_then(|d| d.lines().next().map(str::to_owned))
                        .unwrap_or_else(|| status.to_string()),
                })
            }
        }
    }

    /// One Resource Manager call that must succeed; the answer's headers and JSON body
    /// (`Null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(HeaderMap, Value), SqlError> {
        let (_, headers, body) = self.call_raw(method, path, body, what).await?;
        Ok((headers, body.unwrap_or(Value::Null)))
    }

    /// One Resource Manager call, with the token, `api-version`, retries of transient
    /// answers, and one fresh token when the cached one is refused.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<(StatusCode, HeaderMap, Option<Value>), SqlError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = if path.contains("api-version=") {
            format!("{}{path}", self.management)
        } else {
            format!(
                "{}{path}{separator}api-version={API_VERSION}",
                self.management
            )
        };
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self.token(false).await?;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(AUTHORIZATION, format!("Bearer {}", token.expose()));
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
            }
            debug!(method = %method, path = %path, attempt, "Resource Manager call");
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if attempt <= RETRIES && (e.is_connect() || e.is_timeout()) => {
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(SqlError::Unreachable {
                        service: "Azure Resource Manager",
                        url: self.management.clone(),
                        reason: error_chain(&e.without_url()),
                    })
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            let text = response.text().await.map_err(|e| SqlError::Protocol {
                what: what.to_owned(),
                reason: error_chain(&e.without_url()),
            })?;
            if status.is_success() {
                let body = if text.trim().is_empty() {
                    None
                } else {
                    Some(serde_json::from_str(&text).map_err(|e| SqlError::Protocol {
                        what: what.to_owned(),
                        reason: format!("not JSON: {e}"),
                    })?)
                };
                return Ok((status, headers, body));
            }
            let error = serde_json::from_str::<ArmErrorBody>(&text)
                .ok()
                .and_then(|b| b.error)
                .unwrap_or_default();
            let code = error
                .code
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("").replace(' ', ""));
            let message = redact_sas(&error.message.unwrap_or_else(|| status.to_string()));
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // Revoked or expired early: one fresh token, then believe the answer.
                refreshed = true;
                self.token(true).await?;
                continue;
            }
            if (status.as_u16() == 429 || status.is_server_error()) && attempt <= RETRIES {
                tokio::time::sleep(retry_after(&headers).unwrap_or_else(|| backoff(attempt))).await;
                continue;
            }
            return Err(match status.as_u16() {
                401 => SqlError::Unauthorized {
                    client_id: self.principal.client_id.clone(),
                    code,
                    message,
                },
                403 => SqlError::Forbidden {
                    client_id: self.principal.client_id.clone(),
                    what: what.to_owned(),
                    code,
                    message,
                },
                404 => SqlError::NotFound {
                    what: what.to_owned(),
                    code,
                    message,
                },
                other => SqlError::Api {
                    what: what.to_owned(),
                    status: other,
                    code,
                    message,
                },
            });
        }
    }
}

fn check_database_name(name: &str) -> Result<(), SqlError> {
    if name.is_empty() || name.contains(['/', '?', '#', '%']) {
        return Err(SqlError::Config {
            reason: format!("database name {name:?} is empty or holds `/`, `?`, `#` or `%`"),
        });
    }
    Ok(())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64 << attempt.min(5))
}

#[derive(Deserialize)]
struct ListAnswer<T> {
    #[serde(default = "Vec::new")]
    value: Vec<T>,
    #[serde(rename = "nextLink", default)]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RestorePointJson {
    #[serde(default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    properties: RestorePointPropertiesJson,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RestorePointPropertiesJson {
    #[serde(default)]
    restore_point_type: Option<String>,
    #[serde(default)]
    earliest_restore_date: Option<DateTime<Utc>>,
    #[serde(default)]
    restore_point_creation_date: Option<DateTime<Utc>>,
    #[serde(default)]
    restore_point_label: Option<String>,
}

impl RestorePointJson {
    fn into_restore_point(self) -> RestorePoint {
        RestorePoint {
            id: self.id,
            name: self.name,
            location: self.location,
            restore_point_type: self.properties.restore_point_type.unwrap_or_default(),
            earliest_restore_date: self.properties.earliest_restore_date,
            restore_point_creation_date: self.properties.restore_point_creation_date,
            restore_point_label: self.properties.restore_point_label,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DatabaseJson {
    id: String,
    name: String,
    location: String,
    #[serde(default)]
    sku: Option<SkuJson>,
    #[serde(default)]
    properties: DatabasePropertiesJson,
}

#[derive(Deserialize)]
struct SkuJson {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DatabasePropertiesJson {
    database_id: Option<String>,
    status: Option<String>,
    creation_date: Option<DateTime<Utc>>,
    earliest_restore_date: Option<DateTime<Utc>>,
    max_size_bytes: Option<u64>,
}

fn database_of(body: &Value) -> Result<Database, SqlError> {
    let json: DatabaseJson =
        serde_json::from_value(body.clone()).map_err(|e| SqlError::Protocol {
            what: "a database".into(),
            reason: e.to_string(),
        })?;
    Ok(Database {
        id: json.id,
        name: json.name,
        location: json.location,
        database_id: json.properties.database_id,
        status: json.properties.status,
        creation_date: json.properties.creation_date,
        earliest_restore_date: json.properties.earliest_restore_date,
        sku_name: json.sku.and_then(|s| s.name),
        max_size_bytes: json.properties.max_size_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> SqlClient {
        SqlClient::new(
            SqlServerRef {
                subscription_id: "00000000-1111-2222-3333-444444444444".into(),
                resource_group: "rg".into(),
                server: "srv".into(),
            },
            ServicePrincipal {
                tenant_id: "tenant".into(),
                client_id: "client".into(),
                client_secret: Secret::new("TOP-SECRET"),
            },
            AzureEndpoints {
                authority: "https://login.example".into(),
                management: "https://management.example".into(),
            },
        )
        .unwrap()
    }

    #[test]
    fn documented_answers_parse() {
        // From the 2021-11-01 examples (DatabaseRestorePointsGet, CreateDatabasePITRMode).
        let point: RestorePointJson = serde_json::from_value(json!({
            "id": "/subscriptions/x/providers/Microsoft.Sql/servers/testserver/databases/testDatabase/restorePoints/ContinuousRestorePoint",
            "name": "ContinuousRestorePoint",
            "type": "Microsoft.Sql/servers/databases/restorePoints",
            "location": "japaneast",
            "properties": {"restorePointType": "CONTINUOUS", "earliestRestoreDate": "2017-03-10T08:00:00Z"}
        }))
        .unwrap();
        let point = point.into_restore_point();
        assert_eq!(point.restore_point_type, "CONTINUOUS");
        assert_eq!(
            point.earliest_restore_date.unwrap().to_rfc3339(),
            "2017-03-10T08:00:00+00:00"
        );
        let db = database_of(&json!({
            "sku": {"name": "Standard", "tier": "Standard", "capacity": 10},
            "kind": "v12.0,user",
            "properties": {
                "collation": "SQL_Latin1_General_CP1_CI_AS",
                "maxSizeBytes": 268435456000u64,
                "status": "Online",
                "databaseId": "2463ef48-53e2-4c26-9781-2d7138080bfd",
                "creationDate": "2020-10-23T20:31:35.807Z",
                "earliestRestoreDate": "2020-10-23T20:47:37Z"
            },
            "location": "SoutheastAsia",
            "id": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Sql/servers/testsvr/databases/dbpitr",
            "name": "dbpitr",
            "type": "Microsoft.Sql/servers/databases"
        }))
        .unwrap();
        assert_eq!(db.sku_name.as_deref(), Some("Standard"));
        assert_eq!(db.max_size_bytes, Some(268_435_456_000));
        assert!(db.earliest_restore_date.unwrap() > db.creation_date.unwrap());
    }

    #[test]
    fn poll_urls_must_stay_on_the_management_endpoint() {
        let c = client();
        assert_eq!(
            c.path_of("https://management.example/a/b?api-version=1", "x")
                .unwrap(),
            "/a/b?api-version=1"
        );
        assert!(matches!(
            c.path_of("https://evil.example/a", "x"),
            Err(SqlError::Protocol { .. })
        ));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = client();
        assert!(!format!("{c:?}").contains("TOP-SECRET"));
        let request = ExportRequest {
            storage_uri: "https://a.blob.core.windows.net/c/x.bacpac".into(),
            storage_key_type: StorageKeyType::StorageAccessKey,
            storage_key: Secret::new("STORAGE-KEY"),
            administrator_login: "admin".into(),
            administrator_login_password: Secret::new("PASSWORD"),
        };
        let text = format!("{request:?}");
        assert!(
            !text.contains("STORAGE-KEY") && !text.contains("PASSWORD"),
            "{text}"
        );
    }
}
