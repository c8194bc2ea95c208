//! Restore drills: restore a backup into a scratch target, check it, measure the real RTO,
//! tear the target down, and record the result in the catalog.
//!
//! A drill of a `files` source restores into a scratch directory; a drill of a `postgres`
//! source restores a base backup into a scratch data directory, starts a temporary server on
//! a free port with `recovery_target = 'immediate'` (the end of that backup, fetching its WAL
//! through `backupctl wal-fetch`), waits for it to promote, runs the checks against it and
//! stops it. The RTO is the wall time of the restore plus recovery (an archived copy's thaw
//! included); checks and teardown are not part of it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use backup_catalog::{
    BackupFilter, BackupRecord, BackupStatus, DrillCheckResult, DrillCompletion, DrillRecord,
    DrillStatus, DrillTrigger,
};
use backup_scheduler::CronSchedule;

use crate::config::{SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::pitr::{PitrOptions, RecoveryTarget};
use crate::restore::{BackupSelector, RestoreOptions};
use crate::verify::VerifyScope;
use crate::{Engine, Progress};

mod databases;

/// A source's `drill = { ... }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DrillConfig {
    /// When scheduled drills run, in the source's time zone (default: 04:00 on the 1st of
    /// every month).
    #[serde(default = "default_cron")]
    pub cron: String,
    /// Which complete backup a drill restores.
    #[serde(default)]
    pub pick: DrillPick,
    /// Directory the scratch targets are made in (default: the system temp directory).
    #[serde(default)]
    pub target: Option<PathBuf>,
    /// What is checked after the restore.
    #[serde(default = "default_checks", deserialize_with = "drill_checks")]
    pub checks: Vec<DrillCheck>,
    /// How long the scratch server may take to finish recovery.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// For `counts` on a database under write load: the fraction a table's rows may differ
    /// from what the backup counted (rows written between the backup's end and the count).
    #[serde(default)]
    pub row_count_tolerance: f64,
    /// MongoDB: the server drills restore into, by the environment variable or file holding
    /// its URI (a secret). Default: the source's own server, under scratch database names.
    #[serde(default)]
    pub server_uri_env: Option<String>,
    #[serde(default)]
    pub server_uri_file: Option<PathBuf>,
    /// MySQL: the server drills restore into (`mysql://user@host:port/`, no password).
    /// Default: the source's own server, under scratch database names.
    #[serde(default)]
    pub server_url: Option<String>,
    #[serde(default)]
    pub server_password_env: Option<String>,
    #[serde(default)]
    pub server_password_file: Option<PathBuf>,
    /// The parsed `cron` (filled in by validation).
    #[serde(skip)]
    pub schedule: Option<CronSchedule>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            cron: default_cron(),
            pick: DrillPick::default(),
            target: None,
            checks: default_checks(),
            timeout: default_timeout(),
            row_count_tolerance: 0.0,
            server_uri_env: None,
            server_uri_file: None,
            server_url: None,
            server_password_env: None,
            server_password_file: None,
            schedule: None,
        }
    }
}

impl DrillConfig {
    pub fn wants_row_counts(&self) -> bool {
        self.checks.contains(&DrillCheck::Counts)
    }
}

fn default_cron() -> String {
    "0 4 1 * *".into()
}

fn default_checks() -> Vec<DrillCheck> {
    vec![DrillCheck::Integrity, DrillCheck::Counts]
}

fn default_timeout() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DrillPick {
    /// The newest complete backup.
    #[default]
    Latest,
    /// Any complete backup, chosen at random: over time every retained backup gets tested.
    Random,
    /// The oldest retained backup: the one most likely to have rotted.
    Oldest,
}

impl DrillPick {
    pub fn as_str(self) -> &'static str {
        match self {
            DrillPick::Latest => "latest",
            DrillPick::Random => "random",
            DrillPick::Oldest => "oldest",
        }
    }
}

impl std::str::FromStr for DrillPick {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "latest" => Ok(DrillPick::Latest),
            "random" => Ok(DrillPick::Random),
            "oldest" => Ok(DrillPick::Oldest),
            other => Err(format!("{other:?}: use latest, random or oldest")),
        }
    }
}

/// One check of a drill.
#[derive(Debug, Clone, PartialEq)]
pub enum DrillCheck {
    /// Every artifact of the backup decrypts, decompresses and matches its checksums.
    Integrity,
    /// Files: as many files restored as the backup recorded. PostgreSQL: every table has the
    /// rows the backup counted (the base backup then counts them, which reads every table).
    Counts,
    /// PostgreSQL: `query`'s first column of its first row, as text, equals `expect`.
    Query {
        query: String,
        expect: String,
        database: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryCheck {
    query: String,
    expect: String,
    #[serde(default)]
    database: Option<String>,
}

/// `checks` entries are "integrity", "counts" or `{ query = "...", expect = "..." }`.
fn drill_checks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DrillCheck>, D::Error> {
    use serde::de::Error;
    Vec::<toml::Value>::deserialize(d)?
        .into_iter()
        .map(|value| match value {
            toml::Value::String(name) if name == "integrity" => Ok(DrillCheck::Integrity),
            toml::Value::String(name) if name == "counts" => Ok(DrillCheck::Counts),
            toml::Value::String(other) => Err(D::Error::custom(format!(
                "unknown drill check {other:?}: use \"integrity\", \"counts\" or \
                 {{ query = \"SELECT ...\", expect = \"...\" }}"
            ))),
            table @ toml::Value::Table(_) => {
                let q = QueryCheck::deserialize(table).map_err(D::Error::custom)?;
                Ok(DrillCheck::Query {
                    query: q.query,
                    expect: q.expect,
                    database: q.database,
                })
            }
            other => Err(D::Error::custom(format!(
                "drill checks are \"integrity\", \"counts\" or a table like \
                 {{ query = \"SELECT ...\", expect = \"...\" }}, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

/// Checks a drill config against its source; `Err((key suffix, message))`.
pub(crate) fn validate(source: &SourceConfig, drill: &DrillConfig) -> Result<(), (String, String)> {
    if let Some(message) = unsupported(source) {
        return Err((String::new(), message));
    }
    if !(0.0..=1.0).contains(&drill.row_count_tolerance) {
        return Err((
            "row-count-tolerance".into(),
            "must be a fraction from 0 to 1 (0.01 = 1%)".into(),
        ));
    }
    if drill.timeout.is_zero() {
        return Err(("timeout".into(), "must be more than 0s".into()));
    }
    if let Some(why) = unsupported(source) {
        return Err(("cron".into(), why));
    }
    for (k, check) in drill.checks.iter().enumerate() {
        if let DrillCheck::Query { query, .. } = check {
            if !matches!(
                source.kind,
                SourceKindConfig::Postgres { .. } | SourceKindConfig::Mysql(_)
            ) {
                return Err((
                    format!("checks[{k}]"),
                    format!(
                        "query checks run SQL on the restored database; {} sources have none",
                        source.kind.kind_name()
                    ),
                ));
            }
            if query.trim().is_empty() {
                return Err((format!("checks[{k}].query"), "must not be empty".into()));
            }
        }
    }
    databases::validate(source, drill)
}

/// What `backupctl drill` (or the API) asks for beyond the source's config.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    pub pick: Option<DrillPick>,
    /// Drill this backup (id or prefix) instead of picking one.
    pub backup: Option<String>,
    /// Keep the scratch target (and stop nothing) for inspection.
    pub keep: bool,
}

/// A finished drill: its catalog record, and where the scratch target was.
#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    #[serde(flatten)]
    pub record: DrillRecord,
    pub scratch: PathBuf,
    /// The scratch target was left in place (`--keep`).
    pub kept: bool,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.record.status == DrillStatus::Passed
    }
}

/// Runs one drill of `source` and records it. A drill that ran and failed is `Ok` with a
/// failed record; `Err` only when not even the drill's record could be written.
pub async fn run_drill(
    engine: &Engine,
    source_name: &str,
    trigger: DrillTrigger,
    options: &DrillOptions,
    cancel: &CancellationToken,
) -> Result<DrillReport> {
    let (_, source) = engine.config.source(source_name)?;
    if let Some(message) = unsupported(source) {
        return Err(EngineError::Usage(message));
    }
    let config = source.drill.clone().unwrap_or_default();
    let pick = options.pick.unwrap_or(config.pick);
    let base = config.target.clone().unwrap_or_else(std::env::temp_dir);
    // Absolute: the scratch server runs in its data directory and puts its socket here.
    let base = if base.is_absolute() {
        base
    } else {
        std::env::current_dir()
            .map_err(|e| EngineError::Failed(format!("the current directory: {e}")))?
            .join(base)
    };
    let started_at = Utc::now();
    let id = engine
        .catalog
        .begin_drill(&source.name, trigger, pick.as_str(), started_at)
        .await?;
    let scratch = base.join(format!("backupd-drill-{}-{id}", source.name));
    tracing::info!(source = %source.name, drill = %id, scratch = %scratch.display(), pick = pick.as_str(), "drill started");
    let mut run = DrillRun {
        engine,
        source,
        config: &config,
        scratch: scratch.clone(),
        completion: DrillCompletion {
            finished_at: started_at,
            backup_id: None,
            rto_millis: None,
            restore_millis: None,
            recovery_millis: None,
            restored_bytes: None,
            checks: Vec::new(),
            error: None,
        },
        server: None,
        databases: None,
        prefix: databases::scratch_prefix(&id),
    };
    if let Err(e) = run.run(pick, options, cancel).await {
        run.completion.error = Some(e.to_string());
    }
    if !options.keep {
        if let Some(databases::ScratchDatabases::Rds {
            source,
            region,
            kind,
            identifier,
        }) = &run.databases
        {
            if let Err(e) =
                crate::rds::delete_restored(engine, source, region, kind, identifier).await
            {
                tracing::warn!(drill = %id, database = %identifier, %region, error = %e, "deleting the drill's scratch RDS database failed; delete it by hand");
            }
            run.databases = None;
        }
        if let Some(scratch) = run.databases.take() {
            match scratch.drop_all().await {
                Ok(dropped) => {
                    tracing::debug!(drill = %id, ?dropped, "dropped the drill's scratch databases")
                }
                Err(e) => {
                    tracing::warn!(drill = %id, prefix = %run.prefix, error = %e, "dropping the drill's scratch databases failed; drop the databases named with this prefix by hand")
                }
            }
        }
        if let Some((data_dir, _)) = run.server.take() {
            let bin = crate::pitr::postgres_parts(source).ok().flatten();
            if let Err(e) = crate::pitr::stop_server(bin.map(PathBuf::as_path), &data_dir) {
                tracing::warn!(drill = %id, error = %e, "stopping the drill's scratch server failed");
            }
        }
        if scratch.exists() {
            if let Err(e) = std::fs::remove_dir_all(&scratch) {
                tracing::warn!(drill = %id, scratch = %scratch.display(), error = %e, "removing the drill's scratch target failed");
            }
        }
    }
    let mut completion = run.completion;
    completion.finished_at = Utc::now();
    let status = engine.catalog.finish_drill(&id, &completion).await?;
    match status {
        DrillStatus::Passed => {
            tracing::info!(source = %source.name, drill = %id, rto_ms = ?completion.rto_millis, "drill passed")
        }
        _ => tracing::error!(source = %source.name, drill = %id, error = ?completion.error,
            failed_checks = ?completion.checks.iter().filter(|c| !c.passed).map(|c| &c.name).collect::<Vec<_>>(),
            "drill failed"),
    }
    Ok(DrillReport {
        record: DrillRecord {
            id,
            source: source.name.clone(),
            backup_id: completion.backup_id,
            trigger,
            pick: pick.as_str().to_owned(),
            status,
            started_at,
            finished_at: Some(completion.finished_at),
            rto_millis: completion.rto_millis,
            restore_millis: completion.restore_millis,
            recovery_millis: completion.recovery_millis,
            restored_bytes: completion.restored_bytes,
            checks: completion.checks,
            error: completion.error,
        },
        scratch,
        kept: options.keep,
    })
}

struct DrillRun<'a> {
    engine: &'a Engine,
    source: &'a SourceConfig,
    config: &'a DrillConfig,
    scratch: PathBuf,
    completion: DrillCompletion,
    /// The data directory and port of a scratch server that was started (and may run).
    server: Option<(PathBuf, u16)>,
    /// MongoDB, MySQL: the scratch databases' server (dropped by their prefix).
    databases: Option<databases::ScratchDatabases>,
    /// What the names of this drill's scratch databases start with.
    prefix: String,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DrillRun<'_> {
    /// Records a restore without a separate recovery: its wall time is the RTO.
    fn restored(&mut self, started: Instant, bytes: u64) {
        let took = millis(started.elapsed());
        self.completion.restore_millis = Some(took);
        self.completion.rto_millis = Some(took);
        self.completion.restored_bytes = Some(bytes);
    }

    async fn run(
        &mut self,
        pick: DrillPick,
        options: &DrillOptions,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let backup = self.pick_backup(pick, options.backup.as_deref()).await?;
        self.completion.backup_id = Some(backup.id);
        if self.config.checks.contains(&DrillCheck::Integrity) {
            self.check_integrity(&backup, cancel).await;
        }
        std::fs::create_dir_all(&self.scratch).map_err(|e| {
            EngineError::Failed(format!(
                "creating the drill's scratch directory {}: {e}; set the source's drill.target to a writable directory",
                self.scratch.display()
            ))
        })?;
        let restore = RestoreOptions {
            thaw: crate::thaw::ThawOptions {
                wait: true,
                ..Default::default()
            },
            ..Default::default()
        };
        match &self.source.kind {
            SourceKindConfig::Files { .. } => {
                let started = Instant::now();
                let outcome = crate::restore::run_restore(
                    self.engine,
                    &BackupSelector::Id(backup.id.to_string()),
                    &self.scratch.join("files"),
                    &restore,
                    Arc::new(Progress::default()),
                    cancel,
                )
                .await?;
                self.restored(started, outcome.bytes);
                if self.config.checks.contains(&DrillCheck::Counts) {
                    self.completion.checks.push(DrillCheckResult {
                        name: "counts".into(),
                        passed: outcome.files == backup.file_count,
                        detail: format!(
                            "{} files restored, the backup recorded {}",
                            outcome.files, backup.file_count
                        ),
                    });
                }
            }
            SourceKindConfig::Postgres { .. } => {
                self.restore_postgres(&backup, restore, cancel).await?;
                self.check_postgres(&backup).await?;
            }
            SourceKindConfig::Mongodb(_) => self.drill_mongo(&backup, restore, cancel).await?,
            SourceKindConfig::Mysql(_) => self.drill_mysql(&backup, restore, cancel).await?,
            SourceKindConfig::Elasticsearch(_) => self.drill_elasticsearch(&backup).await?,
            SourceKindConfig::Rds(_) => self.drill_rds(&backup, cancel).await?,
            SourceKindConfig::AzureSql(_) => self.drill_azure_sql(&backup, cancel).await?,
            SourceKindConfig::AzureBlob(_) => {
                self.drill_azure_blob(&backup, restore, cancel).await?
            }
            SourceKindConfig::Atlas(_) => {
                let why = unsupported(self.source).unwrap_or_default();
                return Err(EngineError::Usage(why));
            }
        }
        Ok(())
    }

    async fn pick_backup(&self, pick: DrillPick, explicit: Option<&str>) -> Result<BackupRecord> {
        let catalog = &self.engine.catalog;
        if let Some(prefix) = explicit {
            let record = catalog.find_backup_by_prefix(prefix).await?;
            if record.source != self.source.name || record.status != BackupStatus::Complete {
                return Err(EngineError::Usage(format!(
                    "backup {} is not a complete backup of {}",
                    record.id, self.source.name
                )));
            }
            return Ok(record);
        }
        let mut candidates = catalog
            .list_backups(&BackupFilter {
                source: Some(self.source.name.clone()),
                status: Some(BackupStatus::Complete),
            })
            .await?;
        if matches!(self.source.kind, SourceKindConfig::Postgres { .. }) {
            // Only base backups whose WAL position is recorded can be recovered.
            let bases: Vec<_> = catalog
                .postgres_backups(&self.source.name)
                .await?
                .into_iter()
                .map(|b| b.backup_id)
                .collect();
            candidates.retain(|b| bases.contains(&b.id));
        }
        candidates.sort_by_key(|b| b.started_at);
        let chosen = match pick {
            DrillPick::Latest => candidates.pop(),
            DrillPick::Oldest => candidates.into_iter().next(),
            DrillPick::Random if candidates.is_empty() => None,
            DrillPick::Random => {
                let i = rand::thread_rng().gen_range(0..candidates.len());
                Some(candidates.swap_remove(i))
            }
        };
        chosen.ok_or_else(|| {
            EngineError::Failed(format!(
                "source {} has no complete backup to drill; run `backupctl backup {}` first",
                self.source.name, self.source.name
            ))
        })
    }

    async fn check_integrity(&mut self, backup: &BackupRecord, cancel: &CancellationToken) {
        let report = crate::verify::run_verify(
            self.engine,
            &VerifyScope::One(backup.id.to_string()),
            false,
            Arc::new(Progress::default()),
            cancel,
        )
        .await;
        let (passed, detail) = match report {
            Ok(report) => {
                let checked: u64 = report.backups.iter().map(|b| b.artifacts_checked).sum();
                let problems: Vec<String> = report
                    .backups
                    .into_iter()
                    .flat_map(|b| b.problems)
                    .map(|p| p.message)
                    .collect();
                if problems.is_empty() {
                    (
                        true,
                        format!("{checked} artifacts decrypted and matched their checksums"),
                    )
                } else {
                    (false, problems.join("; "))
                }
            }
            Err(e) => (false, e.to_string()),
        };
        self.completion.checks.push(DrillCheckResult {
            name: "integrity".into(),
            passed,
            detail,
        });
    }

    async fn restore_postgres(
        &mut self,
        backup: &BackupRecord,
        restore: RestoreOptions,
        cancel: &CancellationToken,
    ) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let data_dir = self.scratch.join("pgdata");
        let started = Instant::now();
        let options = PitrOptions {
            target: RecoveryTarget::Immediate,
            timeline: None,
            backup: Some(backup.id.to_string()),
            start_port: None,
            start_timeout: self.config.timeout,
            restore,
        };
        let mut outcome = crate::pitr::run_pitr_restore(
            self.engine,
            self.source,
            &data_dir,
            &options,
            Arc::new(Progress::default()),
            cancel,
        )
        .await?;
        self.completion.restore_millis = Some(millis(started.elapsed()));
        self.completion.restored_bytes = Some(outcome.bytes);
        // The server runs as the data directory's owner and puts its socket and log here.
        let meta = std::fs::metadata(&data_dir)
            .map_err(|e| EngineError::Failed(format!("{}: {e}", data_dir.display())))?;
        std::os::unix::fs::chown(&self.scratch, Some(meta.uid()), Some(meta.gid())).map_err(
            |e| {
                EngineError::Failed(format!(
                    "giving the scratch directory {} to the data directory's owner: {e}",
                    self.scratch.display()
                ))
            },
        )?;
        let port = free_port()?;
        let bin = crate::pitr::postgres_parts(self.source)?.cloned();
        self.server = Some((data_dir.clone(), port));
        let recovery = crate::pitr::start_and_wait(
            self.source,
            bin.as_deref(),
            &data_dir,
            port,
            self.config.timeout,
            &mut outcome,
            cancel,
        )
        .await;
        // On failure the server may still run: `run_drill` stops it.
        recovery?;
        self.completion.recovery_millis = outcome.recovery_seconds.map(|s| (s * 1000.0) as u64);
        self.completion.rto_millis = Some(millis(started.elapsed()));
        Ok(())
    }
}

impl DrillRun<'_> {
    /// Counts and query checks against the promoted scratch server.
    async fn check_postgres(&mut self, backup: &BackupRecord) -> Result<()> {
        let port = self.server.as_ref().expect("the scratch server runs").1;
        let user = crate::pitr::connection_user(self.source);
        let mut connections: HashMap<String, sqlx::PgConnection> = HashMap::new();
        let default_db = source_database(self.source);
        if self.config.checks.contains(&DrillCheck::Counts) {
            let recorded = self.engine.catalog.row_counts(backup.id).await?;
            let check = if recorded.is_empty() {
                databases::no_counts(backup)
            } else {
                self.compare_counts(&recorded, port, &user, &mut connections)
                    .await
            };
            self.completion.checks.push(check);
        }
        for check in &self.config.checks {
            let DrillCheck::Query {
                query,
                expect,
                database,
            } = check
            else {
                continue;
            };
            let db = database.clone().unwrap_or_else(|| default_db.clone());
            let result = match connection(&mut connections, port, &user, &db).await {
                Ok(conn) => first_value(conn, query).await,
                Err(e) => Err(e),
            };
            self.completion.checks.push(query_result(
                format!("query ({db}): {query}"),
                result,
                expect,
            ));
        }
        Ok(())
    }

    async fn compare_counts(
        &self,
        recorded: &BTreeMap<String, u64>,
        port: u16,
        user: &str,
        connections: &mut HashMap<String, sqlx::PgConnection>,
    ) -> DrillCheckResult {
        let tolerance = self.config.row_count_tolerance;
        let mut differences = Vec::new();
        for (relation, expected) in recorded {
            let Some((db, table)) = relation.split_once('.') else {
                differences.push(format!("{relation}: not a database.schema.table name"));
                continue;
            };
            let Some((schema, name)) = table.split_once('.') else {
                differences.push(format!("{relation}: not a database.schema.table name"));
                continue;
            };
            let sql = format!(
                "SELECT count(*)::text FROM {}.{}",
                quote_ident(schema),
                quote_ident(name)
            );
            let found = match connection(connections, port, user, db).await {
                Ok(conn) => first_value(conn, &sql).await,
                Err(e) => Err(e),
            };
            match found {
                Ok(Some(text)) => differences.extend(databases::count_difference(
                    relation,
                    text.parse().unwrap_or(u64::MAX),
                    *expected,
                    tolerance,
                    "rows",
                )),
                Ok(None) => differences.push(format!("{relation}: count returned nothing")),
                Err(e) => differences.push(format!("{relation}: {e}")),
            }
        }
        databases::counts_result(recorded.len(), differences, tolerance, "tables", "rows")
    }
}

/// Why `source` cannot be drilled, for kinds without a scratch target yet.
fn unsupported(source: &SourceConfig) -> Option<String> {
    match &source.kind {
        SourceKindConfig::Files { .. }
        | SourceKindConfig::Postgres { .. }
        | SourceKindConfig::Mongodb(_)
        | SourceKindConfig::Mysql(_)
        | SourceKindConfig::Elasticsearch(_)
        | SourceKindConfig::Rds(_)
        | SourceKindConfig::AzureBlob(_)
        | SourceKindConfig::AzureSql(_) => None,
        SourceKindConfig::Atlas(_) => Some(format!(
            "source {}: drills of atlas sources are not available yet; test a restore with \
             `backupctl restore {} --latest --target-cluster SCRATCH`",
            source.name, source.name
        )),
    }
}

/// A query check's result from the value its query returned.
fn query_result(
    name: String,
    result: std::result::Result<Option<String>, String>,
    expect: &str,
) -> DrillCheckResult {
    let (passed, detail) = match result {
        Ok(Some(value)) if value == expect => (true, format!("returned {value:?}")),
        Ok(Some(value)) => (false, format!("returned {value:?}, expected {expect:?}")),
        Ok(None) => (
            false,
            format!("returned no row (or NULL), expected {expect:?}"),
        ),
        Err(e) => (false, e),
    };
    DrillCheckResult {
        name,
        passed,
        detail,
    }
}

/// The database a postgres source's connection URL names (default `postgres`).
fn source_database(source: &SourceConfig) -> String {
    match &source.kind {
        SourceKindConfig::Postgres { connection, .. } => connection
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(_, path)| path.split('?').next().unwrap_or("").to_owned())
            .filter(|db| !db.is_empty())
            .unwrap_or_else(|| "postgres".into()),
        _ => "postgres".into(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn connection<'c>(
    connections: &'c mut HashMap<String, sqlx::PgConnection>,
    port: u16,
    user: &str,
    db: &str,
) -> std::result::Result<&'c mut sqlx::PgConnection, String> {
    use sqlx::Connection as _;
    if !connections.contains_key(db) {
        let options = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username(user)
            .database(db);
        let conn = sqlx::PgConnection::connect_with(&options)
            .await
            .map_err(|e| format!("connecting to database {db} of the scratch server: {e}"))?;
        connections.insert(db.to_owned(), conn);
    }
    Ok(connections.get_mut(db).expect("inserted above"))
}

/// The first column of the first row as text (simple query protocol: every value is text).
async fn first_value(
    conn: &mut sqlx::PgConnection,
    sql: &str,
) -> std::result::Result<Option<String>, String> {
    use sqlx::{Executor as _, Row as _};
    // Through the connection: RawSql's own fetch methods make the future not Send.
    let rows = conn
        .fetch_all(sqlx::raw_sql(sql))
        .await
        .map_err(|e| format!("query failed: {e}"))?;
    match rows.into_iter().next() {
        None => Ok(None),
        Some(row) => row
            .try_get_unchecked::<Option<String>, _>(0)
            .map_err(|e| format!("reading the result: {e}")),
    }
}

/// Counts the rows of every user table of every database `url` can reach, in one snapshot per
/// database, for a drill's `counts` check: relation "database.schema.table" -> rows.
pub(crate) async fn count_rows(url: &str) -> Result<BTreeMap<String, u64>> {
    use sqlx::Connection as _;
    let failed = |what: String| move |e: sqlx::Error| EngineError::Failed(format!("{what}: {e}"));
    let base: sqlx::postgres::PgConnectOptions = url.parse().map_err(failed(
        "counting rows for the drill: bad connection URL".into(),
    ))?;
    let mut conn = sqlx::PgConnection::connect_with(&base)
        .await
        .map_err(failed("counting rows for the drill: connecting".into()))?;
    let databases: Vec<String> = sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .map_err(failed(
        "counting rows for the drill: listing databases".into(),
    ))?;
    drop(conn);
    let mut counts = BTreeMap::new();
    for db in databases {
        let what = format!("counting the rows of database {db} for the drill");
        let mut conn = sqlx::PgConnection::connect_with(&base.clone().database(&db))
            .await
            .map_err(failed(what.clone()))?;
        let mut tx = conn.begin().await.map_err(failed(what.clone()))?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(failed(what.clone()))?;
        let tables: Vec<(String, String)> = sqlx::query_as(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND c.relpersistence = 'p' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' \
             ORDER BY 1, 2",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(failed(what.clone()))?;
        for (schema, table) in tables {
            let rows: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {}.{}",
                quote_ident(&schema),
                quote_ident(&table)
            ))
            .fetch_one(&mut *tx)
            .await
            .map_err(failed(format!("{what}: {schema}.{table}")))?;
            counts.insert(format!("{db}.{schema}.{table}"), rows.max(0) as u64);
        }
        tx.rollback().await.map_err(failed(what))?;
    }
    Ok(counts)
}

/// A TCP port nothing listens on now (the scratch server binds it a moment later).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            EngineError::Failed(format!("finding a free port for the scratch server: {e}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// backupd runs drills on spawned tasks.
    #[allow(dead_code)]
    fn drills_can_run_on_spawned_tasks(
        engine: &'static Engine,
        cancel: &'static CancellationToken,
        options: &'static DrillOptions,
    ) {
        fn is_send<T: Send>(_: T) {}
        is_send(run_drill(engine, "", DrillTrigger::Manual, options, cancel));
    }
}
