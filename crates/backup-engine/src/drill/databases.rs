//! Drills of MongoDB, MySQL and Elasticsearch sources. They restore into scratch databases on
//! a server (the source's own by default, or the drill's `server-*`): every database `db` of
//! the backup comes back as `backupd_drill_<drill>_<db>` (an Elasticsearch index `i` as
//! `backupd-drill-<drill>-i`, through the snapshot restore's rename), is checked, and is
//! dropped again. A drill that fails half way is torn down the same way, by that prefix.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupRecord, DrillCheckResult};

use super::{DrillCheck, DrillConfig, DrillRun};
use crate::config::{SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::restore::{BackupSelector, RestoreOptions};
use crate::Progress;

/// Checks the `server-*` keys against the source's kind; `Err((key suffix, message))`.
pub(super) fn validate(source: &SourceConfig, drill: &DrillConfig) -> Result<(), (String, String)> {
    let mongo_keys = drill.server_uri_env.is_some() || drill.server_uri_file.is_some();
    let mysql_keys = drill.server_url.is_some()
        || drill.server_password_env.is_some()
        || drill.server_password_file.is_some();
    let kind = source.kind.kind_name();
    if mongo_keys && !matches!(source.kind, SourceKindConfig::Mongodb(_)) {
        return Err((
            "server-uri-env".into(),
            format!("names a MongoDB server to drill into; {kind} sources have none"),
        ));
    }
    if mysql_keys && !matches!(source.kind, SourceKindConfig::Mysql(_)) {
        return Err((
            "server-url".into(),
            format!("names a MySQL server to drill into; {kind} sources have none"),
        ));
    }
    if drill.server_uri_env.is_some() && drill.server_uri_file.is_some() {
        return Err((
            "server-uri-env".into(),
            "give one of `server-uri-env` or `server-uri-file`".into(),
        ));
    }
    if let Some(url) = &drill.server_url {
        if crate::config::url_has_password(url) {
            return Err((
                "server-url".into(),
                "must not contain a password: use `server-password-env` or `server-password-file`"
                    .into(),
            ));
        }
    }
    if (drill.server_password_env.is_some() || drill.server_password_file.is_some())
        && drill.server_url.is_none()
    {
        return Err((
            "server-password-env".into(),
            "is the password of `server-url`, which is not set (without it the drill uses the \
             source's server and password)"
                .into(),
        ));
    }
    Ok(())
}

/// The names of a drill's scratch databases start with this (the random end of its id:
/// drills started in the same second differ).
pub(super) fn scratch_prefix(drill_id: &str) -> String {
    let hex: String = drill_id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail = &hex[hex.len().saturating_sub(12)..];
    format!("backupd_drill_{}_", tail.to_ascii_lowercase())
}

/// Where a drill restored to, so it can be dropped whatever happened.
pub(super) enum ScratchDatabases {
    Mongo {
        uri: String,
        prefix: String,
    },
    Mysql {
        url: String,
        password: Option<String>,
        prefix: String,
    },
    Elasticsearch {
        client: crate::elasticsearch::EsClient,
        prefix: String,
    },
    /// The scratch DB instance (or cluster) an RDS drill restored.
    Rds {
        source: String,
        region: String,
        kind: String,
        identifier: String,
    },
    /// The scratch database an Azure SQL drill restored (on the source's server).
    AzureSql(Box<crate::azure_sql::ScratchDatabase>),
    /// One scratch container of the source's storage account, deleted whole.
    AzureBlob {
        client: backup_sources::azure::blob::BlobClient,
        container: String,
    },
}

impl ScratchDatabases {
    /// Drops every database whose name starts with the drill's prefix; returns their names.
    pub(super) async fn drop_all(&self) -> Result<Vec<String>> {
        match self {
            ScratchDatabases::Mongo { uri, prefix } => {
                use backup_sources::mongodb as mongo;
                let failed = |e: mongo::MongoError| {
                    EngineError::Failed(format!("dropping the drill's scratch databases: {e}"))
                };
                let client = mongo::connect_target(uri).await.map_err(failed)?;
                let names = client
                    .list_database_names()
                    .await
                    .map_err(|e| failed(mongo::MongoError::driver("listing databases")(e)))?;
                let mut dropped = Vec::new();
                for db in names.into_iter().filter(|n| n.starts_with(prefix.as_str())) {
                    mongo::restore::drop_database(&client, &db)
                        .await
                        .map_err(failed)?;
                    dropped.push(db);
                }
                Ok(dropped)
            }
            ScratchDatabases::Mysql {
                url,
                password,
                prefix,
            } => {
                use crate::mysql;
                let mut conn = mysql::connect(url, password.as_deref()).await?;
                // Not LIKE: `_` is a wildcard there.
                let names: Vec<String> = mysql::rows(
                    &mut conn,
                    url,
                    &format!(
                        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA \
                         WHERE LEFT(SCHEMA_NAME, {}) = '{}'",
                        prefix.len(),
                        prefix
                    ),
                    "listing the drill's scratch databases",
                )
                .await?
                .iter()
                .filter_map(|r| mysql::text(r, 0))
                .collect();
                for db in &names {
                    mysql::exec(
                        &mut conn,
                        url,
                        &format!("DROP DATABASE IF EXISTS {}", mysql::ident(db)),
                        &format!("dropping the drill's scratch database {db}"),
                    )
                    .await?;
                }
                Ok(names)
            }
            // Deleted by `run_drill` through the engine (it needs the source's settings).
            ScratchDatabases::Rds { .. } => Ok(Vec::new()),
            ScratchDatabases::AzureSql(scratch) => Ok(if scratch.delete().await? {
                vec![scratch.database.clone()]
            } else {
                Vec::new()
            }),
            ScratchDatabases::Elasticsearch { client, prefix } => {
                let mut deleted = Vec::new();
                for index in client.doc_counts().await?.into_keys() {
                    if index.starts_with(prefix.as_str()) && client.delete_index(&index).await? {
                        deleted.push(index);
                    }
                }
                Ok(deleted)
            }
            ScratchDatabases::AzureBlob { client, container } => {
                let deleted = client
                    .delete_container(container)
                    .await
                    .map_err(crate::azure_blob::blob_error)?;
                Ok(if deleted {
                    vec![container.clone()]
                } else {
                    Vec::new()
                })
            }
        }
    }
}

/// The scratch container of a drill (container names are lower case, hyphens only).
pub(super) fn scratch_container(database_prefix: &str) -> String {
    index_prefix(database_prefix)
        .trim_end_matches('-')
        .to_owned()
}

/// The prefix of a drill's restored Elasticsearch indices (index names are lower case).
pub(super) fn index_prefix(database_prefix: &str) -> String {
    database_prefix.replace('_', "-")
}

/// `found` against `expected` within `tolerance` (a fraction of `expected`); the
/// difference, named, when it is larger.
pub(super) fn count_difference(
    relation: &str,
    found: u64,
    expected: u64,
    tolerance: f64,
    unit: &str,
) -> Option<String> {
    let allowed = (expected as f64 * tolerance).floor() as u64;
    (found.abs_diff(expected) > allowed)
        .then(|| format!("{relation}: {found} {unit}, the backup counted {expected}"))
}

/// The `counts` check's result from the differences found among `checked` relations.
pub(super) fn counts_result(
    checked: usize,
    differences: Vec<String>,
    tolerance: f64,
    what: &str,
    unit: &str,
) -> DrillCheckResult {
    DrillCheckResult {
        name: "counts".into(),
        passed: differences.is_empty(),
        detail: if differences.is_empty() {
            format!(
                "{checked} {what} have the {unit} the backup counted{}",
                if tolerance > 0.0 {
                    format!(" (within {:.2}%)", tolerance * 100.0)
                } else {
                    String::new()
                }
            )
        } else {
            differences.join("; ")
        },
    }
}

/// The failed `counts` check of a backup that recorded none.
pub(super) fn no_counts(backup: &BackupRecord) -> DrillCheckResult {
    DrillCheckResult {
        name: "counts".into(),
        passed: false,
        detail: format!(
            "backup {} recorded no counts (it was made before `counts` was among the source's \
             drill checks); drill a newer backup",
            backup.id
        ),
    }
}

impl DrillRun<'_> {
    /// MongoDB: restores the backup to its consistent end under the scratch prefix, then
    /// counts every collection's documents against what the backup counted at its end.
    pub(super) async fn drill_mongo(
        &mut self,
        backup: &BackupRecord,
        restore: RestoreOptions,
        cancel: &CancellationToken,
    ) -> Result<()> {
        use backup_sources::mongodb as mongo;
        let SourceKindConfig::Mongodb(m) = &self.source.kind else {
            unreachable!("drill_mongo runs for mongodb sources")
        };
        let uri = match (&self.config.server_uri_env, &self.config.server_uri_file) {
            (None, None) => m.uri(),
            (env, file) => crate::config::read_secret(
                env.as_deref(),
                file.as_deref(),
                "the drill's MongoDB server URI",
                "`drill.server-uri-env` or `drill.server-uri-file`",
            )
            .map(|(uri, _)| uri),
        }
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", self.source.name)))?;
        self.databases = Some(ScratchDatabases::Mongo {
            uri: uri.clone(),
            prefix: self.prefix.clone(),
        });
        let options = crate::mongo::MongoRestoreOptions {
            target_uri: uri.clone(),
            database_prefix: Some(self.prefix.clone()),
            staging: Some(self.scratch.join("staging")),
            restore,
            ..Default::default()
        };
        let started = Instant::now();
        let outcome = crate::mongo::run_mongo_restore(
            self.engine,
            &BackupSelector::Id(backup.id.to_string()),
            crate::mongo::RestorePoint::BackupEnd,
            &options,
            Arc::new(Progress::default()),
            cancel,
        )
        .await?;
        self.restored(started, outcome.bytes);
        if !self.config.checks.contains(&DrillCheck::Counts) {
            return Ok(());
        }
        let recorded = self.engine.catalog.row_counts(backup.id).await?;
        if recorded.is_empty() {
            self.completion.checks.push(no_counts(backup));
            return Ok(());
        }
        let client = mongo::connect_target(&uri)
            .await
            .map_err(|e| EngineError::Failed(format!("drill target: {e}")))?;
        let tolerance = self.config.row_count_tolerance;
        let mut differences = Vec::new();
        for (namespace, expected) in &recorded {
            let Some((db, coll)) = namespace.split_once('.') else {
                differences.push(format!("{namespace}: not a database.collection name"));
                continue;
            };
            let scratch_db = format!("{}{db}", self.prefix);
            match mongo::restore::count_documents(&client, &scratch_db, coll).await {
                Ok(found) => differences.extend(count_difference(
                    namespace,
                    found,
                    *expected,
                    tolerance,
                    "documents",
                )),
                Err(e) => differences.push(format!("{namespace}: {e}")),
            }
        }
        self.completion.checks.push(counts_result(
            recorded.len(),
            differences,
            tolerance,
            "collections",
            "documents",
        ));
        Ok(())
    }

    /// MySQL: restores the dump under the scratch prefix (the restore itself compares every
    /// table's rows and `CHECKSUM TABLE` with the dump's), then runs the query checks there.
    pub(super) async fn drill_mysql(
        &mut self,
        backup: &BackupRecord,
        restore: RestoreOptions,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let SourceKindConfig::Mysql(source) = &self.source.kind else {
            unreachable!("drill_mysql runs for mysql sources")
        };
        let (url, password) = match &self.config.server_url {
            Some(url) => (
                url.clone(),
                crate::mysql::read_password(
                    self.config.server_password_env.as_deref(),
                    self.config.server_password_file.as_deref(),
                )?,
            ),
            None => (source.url.clone(), source.password()?),
        };
        self.databases = Some(ScratchDatabases::Mysql {
            url: url.clone(),
            password: password.clone(),
            prefix: self.prefix.clone(),
        });
        let options = crate::mysql::MysqlRestoreOptions {
            source: self.source.name.clone(),
            target_url: url.clone(),
            password: password.clone(),
            database: None,
            database_prefix: Some(self.prefix.clone()),
            drop: false,
            restore,
        };
        let started = Instant::now();
        let restored = crate::mysql::run_mysql_restore(
            self.engine,
            &BackupSelector::Id(backup.id.to_string()),
            &options,
            Arc::new(Progress::default()),
            cancel,
        )
        .await;
        let wants_counts = self.config.checks.contains(&DrillCheck::Counts);
        let outcome = match restored {
            Ok(outcome) => outcome,
            // A table that came back different is the counts check failing, not the drill.
            Err(EngineError::Integrity(message)) if wants_counts => {
                self.completion.checks.push(DrillCheckResult {
                    name: "counts".into(),
                    passed: false,
                    detail: message,
                });
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.restored(started, outcome.bytes);
        if wants_counts {
            self.completion.checks.push(DrillCheckResult {
                name: "counts".into(),
                passed: true,
                detail: format!(
                    "{} tables ({} rows) have the rows and CHECKSUM TABLE values the dump recorded",
                    outcome.tables.len(),
                    outcome.rows
                ),
            });
        }
        let single = match outcome.databases.as_slice() {
            [only] => Some(only.clone()),
            _ => None,
        };
        let mut conn = None;
        for check in &self.config.checks {
            let DrillCheck::Query {
                query,
                expect,
                database,
            } = check
            else {
                continue;
            };
            let db = database
                .as_ref()
                .map(|d| format!("{}{d}", self.prefix))
                .or_else(|| single.clone());
            let result =
                mysql_first_value(&mut conn, &url, password.as_deref(), db.as_deref(), query).await;
            let shown = database.clone().unwrap_or_else(|| "default".into());
            self.completion.checks.push(super::query_result(
                format!("query ({shown}): {query}"),
                result,
                expect,
            ));
        }
        Ok(())
    }
}

impl DrillRun<'_> {
    /// Elasticsearch: restores the backup's snapshot with every index renamed under the
    /// scratch prefix, then counts each index's documents against what the backup counted
    /// just before its snapshot.
    /// Restores every container of the backup into one scratch container (each under
    /// `{container}/`), which the restore itself checks blob by blob (sizes and SHA-256)
    /// and by listing; the counts check compares what the listing found with the index.
    pub(super) async fn drill_azure_blob(
        &mut self,
        backup: &BackupRecord,
        restore: RestoreOptions,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let SourceKindConfig::AzureBlob(cfg) = &self.source.kind else {
            unreachable!("drill_azure_blob runs for azure-blob sources")
        };
        let container = scratch_container(&self.prefix);
        self.databases = Some(ScratchDatabases::AzureBlob {
            client: cfg.client()?,
            container: container.clone(),
        });
        let options = crate::azure_blob::BlobRestoreOptions {
            source: self.source.name.clone(),
            containers: Vec::new(),
            target_container: Some(container.clone()),
            // Always a prefix per container, even for one, so the layout is the same.
            target_prefix: None,
            overwrite: false,
            drop: false,
            restore,
        };
        let started = Instant::now();
        let outcome = crate::azure_blob::run_blob_restore(
            self.engine,
            &BackupSelector::Id(backup.id.to_string()),
            &options,
            Arc::new(Progress::default()),
            cancel,
        )
        .await?;
        self.restored(started, outcome.bytes);
        if self.config.checks.contains(&DrillCheck::Counts) {
            let client = cfg.client()?;
            let listed = client
                .list_blobs(&container, None)
                .await
                .map_err(crate::azure_blob::blob_error)?;
            let bytes: u64 = listed.iter().map(|b| b.size).sum();
            self.completion.checks.push(DrillCheckResult {
                name: "counts".into(),
                passed: listed.len() as u64 == outcome.blobs && bytes == outcome.bytes,
                detail: format!(
                    "{} blobs ({bytes} bytes) in the scratch container {container}, the backup \
                     recorded {} ({} bytes)",
                    listed.len(),
                    outcome.blobs,
                    outcome.bytes
                ),
            });
        }
        Ok(())
    }

    pub(super) async fn drill_elasticsearch(&mut self, backup: &BackupRecord) -> Result<()> {
        let SourceKindConfig::Elasticsearch(cfg) = &self.source.kind else {
            unreachable!("drill_elasticsearch runs for elasticsearch sources")
        };
        let snapshot = self
            .engine
            .catalog
            .elasticsearch_snapshot(backup.id)
            .await?
            .ok_or_else(|| {
                EngineError::Integrity(format!(
                    "backup {} has no Elasticsearch snapshot recorded; drill another backup",
                    backup.id
                ))
            })?;
        let prefix = index_prefix(&self.prefix);
        let client = crate::elasticsearch::EsClient::new(cfg)?;
        self.databases = Some(ScratchDatabases::Elasticsearch {
            client: crate::elasticsearch::EsClient::new(cfg)?,
            prefix: prefix.clone(),
        });
        let options = crate::elasticsearch::EsRestoreOptions {
            source: self.source.name.clone(),
            snapshot: Some(snapshot.snapshot.clone()),
            indices: Vec::new(),
            rename_pattern: Some("(.+)".into()),
            rename_replacement: Some(format!("{prefix}$1")),
        };
        let started = Instant::now();
        let outcome = crate::elasticsearch::run_es_restore(self.engine, &options).await?;
        self.restored(started, snapshot.size_bytes);
        if !self.config.checks.contains(&DrillCheck::Counts) {
            return Ok(());
        }
        let recorded = self.engine.catalog.row_counts(backup.id).await?;
        if recorded.is_empty() {
            self.completion.checks.push(no_counts(backup));
            return Ok(());
        }
        let found = client.doc_counts().await?;
        let tolerance = self.config.row_count_tolerance;
        let mut differences = Vec::new();
        for (index, expected) in &recorded {
            match found.get(&format!("{prefix}{index}")) {
                Some(docs) => differences.extend(count_difference(
                    index,
                    *docs,
                    *expected,
                    tolerance,
                    "documents",
                )),
                None => differences.push(format!(
                    "{index}: not restored (the restore returned {:?})",
                    outcome.indices
                )),
            }
        }
        self.completion.checks.push(counts_result(
            recorded.len(),
            differences,
            tolerance,
            "indices",
            "documents",
        ));
        Ok(())
    }
}

/// The first column of `sql`'s first row as text, in database `db` when given.
async fn mysql_first_value(
    conn: &mut Option<sqlx::MySqlConnection>,
    url: &str,
    password: Option<&str>,
    db: Option<&str>,
    sql: &str,
) -> std::result::Result<Option<String>, String> {
    use crate::mysql;
    if conn.is_none() {
        *conn = Some(
            mysql::connect(url, password)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let c = conn.as_mut().expect("connected above");
    if let Some(db) = db {
        mysql::exec(
            c,
            url,
            &format!("USE {}", mysql::ident(db)),
            "choosing the database",
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let rows = mysql::rows(c, url, sql, "running the drill's query")
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.first().and_then(|r| mysql::text(r, 0)))
}

impl DrillRun<'_> {
    /// RDS: restores the backup's snapshot (in the source's region) into a scratch DB
    /// instance or cluster, waits until RDS reports it `available` (the RTO), and has it
    /// deleted afterwards without a final snapshot. RDS checks the data itself; the drill
    /// proves the snapshot restores and how long that takes.
    pub(super) async fn drill_rds(
        &mut self,
        backup: &BackupRecord,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let snapshots = self.engine.catalog.rds_snapshots(backup.id).await?;
        let Some(original) = snapshots.first() else {
            return Err(EngineError::Integrity(format!(
                "backup {} has no RDS snapshot recorded; drill another backup",
                backup.id
            )));
        };
        let tail = self
            .prefix
            .trim_start_matches("backupd_drill_")
            .trim_end_matches('_');
        let identifier = format!("backupd-drill-{tail}");
        self.databases = Some(ScratchDatabases::Rds {
            source: self.source.name.clone(),
            region: original.region.clone(),
            kind: original.resource_kind.clone(),
            identifier: identifier.clone(),
        });
        let options = crate::rds::RdsRestoreOptions {
            source: self.source.name.clone(),
            backup: BackupSelector::Id(backup.id.to_string()),
            target: identifier,
            instance_class: None,
            subnet_group: None,
            from_copy: false,
        };
        let started = Instant::now();
        let outcome = crate::rds::run_rds_restore(self.engine, &options, cancel).await?;
        let bytes = original
            .allocated_storage_gb
            .unwrap_or(0)
            .saturating_mul(1 << 30);
        self.restored(started, bytes);
        self.completion.checks.push(DrillCheckResult {
            name: "available".into(),
            passed: true,
            detail: format!(
                "{} {} restored from {} and available in {}",
                outcome.kind, outcome.identifier, outcome.snapshot_arn, outcome.region
            ),
        });
        Ok(())
    }

    /// Azure SQL: restores the source's database as of the backup's point into a scratch
    /// database `backupd-drill-<drill>` on the same server, waits until Azure has made it
    /// (the RTO), checks it is `Online`, and has it deleted afterwards, whatever happened.
    /// Azure checks the data itself; the drill proves the point restores and how long
    /// that takes.
    pub(super) async fn drill_azure_sql(
        &mut self,
        backup: &BackupRecord,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let Some(record) = self.engine.catalog.azure_sql_backup(backup.id).await? else {
            return Err(EngineError::Integrity(format!(
                "backup {} has no Azure SQL record; drill another backup",
                backup.id
            )));
        };
        let tail = self
            .prefix
            .trim_start_matches("backupd_drill_")
            .trim_end_matches('_');
        let database = format!("backupd-drill-{tail}");
        // Set before the restore starts: a restore that fails half way is deleted too.
        self.databases = Some(ScratchDatabases::AzureSql(Box::new(
            crate::azure_sql::scratch_database(self.engine, &self.source.name, &database)?,
        )));
        let options = crate::azure_sql::AzureSqlRestoreOptions {
            source: self.source.name.clone(),
            point: crate::azure_sql::RestorePointChoice::Backup(BackupSelector::Id(
                backup.id.to_string(),
            )),
            target_database: database,
            wait: true,
        };
        let started = Instant::now();
        let outcome =
            crate::azure_sql::run_azure_sql_restore(self.engine, &options, cancel).await?;
        self.restored(started, record.export_bytes.unwrap_or(0));
        let status = outcome.status.clone().unwrap_or_default();
        self.completion.checks.push(DrillCheckResult {
            name: "online".into(),
            passed: status == "Online",
            detail: format!(
                "database {} restored as of {} from {} and `{status}`",
                outcome.target_database,
                outcome.point_in_time.to_rfc3339(),
                outcome.source_database_id
            ),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_prefixes_take_the_random_end_of_the_id() {
        let a = scratch_prefix("0193a0b2-7c4e-7abc-9def-0123456789ab");
        assert_eq!(a, "backupd_drill_0123456789ab_");
        let b = scratch_prefix("0193a0b2-7c4e-7abc-9def-ba9876543210");
        assert_ne!(a, b);
    }

    #[test]
    fn counts_differ_only_beyond_the_tolerance() {
        assert_eq!(count_difference("a.b", 100, 100, 0.0, "documents"), None);
        assert!(count_difference("a.b", 99, 100, 0.0, "documents").is_some());
        assert_eq!(count_difference("a.b", 99, 100, 0.01, "documents"), None);
        let d = count_difference("a.b", 97, 100, 0.01, "documents").unwrap();
        assert_eq!(d, "a.b: 97 documents, the backup counted 100");
    }
}
