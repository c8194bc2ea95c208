//! backupd configuration: TOML, validated once at load into typed values.
//!
//! Relative paths are resolved against the current working directory, like
//! most command-line tools do. `config/quickstart.toml` is compiled in and used
//! when no configuration is given.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use backup_scheduler::{parse_timezone, CronSchedule};
use backup_sources::files::UnreadablePolicy;

use crate::policy::{line_of, BackupType, KeepPolicy, RecoveryTargets, ScheduleEntry, Tier};

/// The embedded default configuration (works with no server at all).
pub const QUICKSTART_TOML: &str = include_str!("../../../config/quickstart.toml");
pub const QUICKSTART_NAME: &str = "<embedded config/quickstart.toml>";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config file {file}{}: `{key}`: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        file: String,
        line: Option<usize>,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub catalog: CatalogConfig,
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[scheduler]`: job planning, claiming and retries.
    #[serde(default)]
    pub scheduler: crate::schedule::SchedulerConfig,
    #[serde(default)]
    pub api: crate::service::ApiConfig,
    #[serde(default)]
    pub alerts: crate::service::AlertsConfig,
    /// `[cost]`: price table and repository regions of `backupctl report cost`.
    #[serde(default)]
    pub cost: crate::report::CostConfig,
    #[serde(default, rename = "repository")]
    pub repositories: Vec<RepositoryConfig>,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// Where this config came from, for error messages.
    #[serde(skip)]
    pub origin: String,
    /// The config text, to point errors at a line.
    #[serde(skip)]
    text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CatalogConfig {
    /// `sqlite://path` or `postgres://user@host/db`.
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncryptionConfig {
    /// File holding the repository key: 32 random bytes, base64.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineConfig {
    /// zstd level, 1-19.
    #[serde(default = "default_level")]
    pub compression_level: i32,
    /// Plaintext segment size in KiB (4 - 65536).
    #[serde(default = "default_segment_kib")]
    pub segment_size_kib: usize,
}

fn default_level() -> i32 {
    3
}
fn default_segment_kib() -> usize {
    4096
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            compression_level: default_level(),
            segment_size_kib: default_segment_kib(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "kind")]
// Built once per config load; boxing the S3 settings would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum RepositoryKindConfig {
    #[serde(rename = "local")]
    Local { path: PathBuf },
    /// An S3 bucket (AWS or an S3-compatible store).
    #[serde(rename = "s3", rename_all = "kebab-case")]
    S3 {
        bucket: String,
        region: String,
        #[serde(default)]
        prefix: String,
        /// e.g. `http://127.0.0.1:8333` for an S3-compatible store; AWS when absent.
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        force_path_style: bool,
        #[serde(default = "default_part_size_mib")]
        part_size_mib: usize,
        #[serde(default = "default_s3_concurrency")]
        concurrency: usize,
        #[serde(default)]
        storage_class: Option<String>,
        /// Credentials: the standard AWS chain unless both an access key id and a secret
        /// are named here, each by an environment variable or a file (never a literal).
        #[serde(default)]
        access_key_id_env: Option<String>,
        #[serde(default)]
        access_key_id_file: Option<PathBuf>,
        #[serde(default)]
        secret_access_key_env: Option<String>,
        #[serde(default)]
        secret_access_key_file: Option<PathBuf>,
        /// Object Lock retention of every object written, e.g.
        /// `object-lock = { mode = "governance", days = 30 }`; the bucket must have Object
        /// Lock enabled (`backupctl init` checks).
        #[serde(default)]
        object_lock: Option<backup_sinks::ObjectLock>,
    },
}

fn default_part_size_mib() -> usize {
    16
}
fn default_s3_concurrency() -> usize {
    4
}

// No deny_unknown_fields here: serde cannot combine it with `flatten`; the
// flattened kind enum rejects unknown keys instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RepositoryConfig {
    pub name: String,
    #[serde(flatten)]
    pub kind: RepositoryKindConfig,
}

// No deny_unknown_fields here: serde cannot combine it with `flatten`; the
// flattened kind enum rejects unknown keys instead.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct SourceConfig {
    pub name: String,
    pub repository: String,
    #[serde(flatten)]
    pub kind: SourceKindConfig,
    /// When to back up; empty means only on demand.
    #[serde(default)]
    pub schedule: Vec<ScheduleEntry>,
    /// IANA time zone the cron expressions are evaluated in.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Retention; none means keep everything.
    #[serde(default)]
    pub keep: Option<KeepPolicy>,
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Explicit recovery point objective (overrides the tier's).
    #[serde(default, with = "humantime_serde")]
    pub rpo: Option<std::time::Duration>,
    /// Explicit recovery time objective (overrides the tier's).
    #[serde(default, with = "humantime_serde")]
    pub rto: Option<std::time::Duration>,
    /// Check each scheduled backup right after it is made; a failure alerts `verify-failed`.
    #[serde(default)]
    pub verify_after_backup: VerifyAfterBackup,
    /// Other repositories every completed backup is copied to: a repository name, or a rule
    /// `{ to = "archive-eu", storage-class = "DEEP_ARCHIVE", only = "weekly", keep = {...} }`.
    #[serde(default, deserialize_with = "copy_rules")]
    pub copy_to: Vec<CopyRule>,
    /// Restore drills: `drill = { cron = "0 4 1 * *", pick = "latest", checks = [...] }`.
    #[serde(default)]
    pub drill: Option<crate::drill::DrillConfig>,
    /// The parsed `schedule`, in the same order (filled in by validation).
    #[serde(skip)]
    pub schedules: Vec<CronSchedule>,
}

/// One `copy-to` entry: where a source's completed backups are copied.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CopyRule {
    /// The destination repository.
    pub to: String,
    /// Storage class of the copied data objects (S3 destinations only), e.g. `DEEP_ARCHIVE`.
    /// Manifests and key envelopes stay in the repository's own class, so an archived copy
    /// can be listed and rebuilt into a catalog without a thaw.
    #[serde(default)]
    pub storage_class: Option<String>,
    /// Copy only backups with this tag (e.g. the `weekly` schedule entry's).
    #[serde(default)]
    pub only: Option<String>,
    /// Retention of the copies there; without it a copy lives as long as its backup.
    #[serde(default)]
    pub keep: Option<KeepPolicy>,
}

impl CopyRule {
    /// Whether a backup tagged `tag` is copied by this rule.
    pub fn applies_to(&self, tag: Option<&str>) -> bool {
        self.only.as_deref().is_none_or(|only| Some(only) == tag)
    }
}

/// `copy-to` entries are a repository name or a rule table.
fn copy_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<CopyRule>, D::Error> {
    use serde::de::Error;
    Vec::<toml::Value>::deserialize(d)?
        .into_iter()
        .map(|value| match value {
            toml::Value::String(to) => Ok(CopyRule {
                to,
                storage_class: None,
                only: None,
                keep: None,
            }),
            table @ toml::Value::Table(_) => CopyRule::deserialize(table).map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "copy-to entries are a repository name or a table like \
                 {{ to = \"region-b\" }}, not {}",
                other.type_str()
            ))),
        })
        .collect()
}

/// S3 storage classes a copy rule may name.
const STORAGE_CLASSES: [&str; 8] = [
    "STANDARD",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER_IR",
    "GLACIER",
    "DEEP_ARCHIVE",
    "REDUCED_REDUNDANCY",
];

/// `verify-after-backup`: none, quick (object checksums) or full (decrypt and decompress).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyAfterBackup {
    #[default]
    None,
    Quick,
    Full,
}

fn default_timezone() -> String {
    "UTC".into()
}

impl SourceConfig {
    /// Recovery targets from `rpo`/`rto`, falling back to the tier; `None` when neither is set.
    pub fn targets(&self) -> Option<RecoveryTargets> {
        let tier = self.tier.map(Tier::targets);
        match (self.rpo, self.rto, tier) {
            (None, None, None) => None,
            (rpo, rto, tier) => {
                let fallback = tier.unwrap_or(Tier::Standard.targets());
                Some(RecoveryTargets {
                    rpo: rpo.unwrap_or(fallback.rpo),
                    rto: rto.unwrap_or(fallback.rto),
                })
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "kind")]
pub enum SourceKindConfig {
    #[serde(rename = "files", rename_all = "kebab-case")]
    Files {
        paths: Vec<PathBuf>,
        #[serde(default)]
        on_unreadable: UnreadablePolicy,
    },
    /// A PostgreSQL cluster: base backups of `data-directory` (read on this host while the
    /// server runs) and WAL archived by `backupctl wal-push` for point-in-time restore.
    #[serde(rename = "postgres", rename_all = "kebab-case")]
    Postgres {
        /// libpq-style URL of a superuser (or pg_backup_start-privileged) connection. Put a
        /// password in `PGPASSWORD` or `~/.pgpass`, not here.
        connection: String,
        data_directory: PathBuf,
        /// Where pg_ctl and friends live (for `restore --start`); default: PATH.
        #[serde(default)]
        pg_bin_dir: Option<PathBuf>,
        /// The cluster's `wal_segment_size` (set by initdb; 16 MiB unless changed there).
        #[serde(default = "default_wal_segment_mib")]
        wal_segment_size_mib: u64,
        /// Local directory for `wal-push --async`: segments are spooled (fsynced) here and
        /// pushed in the background, so archive_command returns at once.
        #[serde(default)]
        spool_directory: Option<PathBuf>,
        /// How long a base backup waits for the WAL it needs to be archived.
        #[serde(default = "default_archive_timeout", with = "humantime_serde")]
        archive_timeout: std::time::Duration,
    },
    /// A MongoDB replica set: logical backups through the driver, consistent to one oplog
    /// position, and oplog archiving for point-in-time restore (docs/sources/mongodb.md).
    #[serde(rename = "mongodb")]
    Mongodb(MongoSourceConfig),
    /// A MongoDB Atlas cluster: on-demand cloud backup snapshots through the Atlas Admin
    /// API, deleted by our retention, optionally downloaded into our repository
    /// (docs/sources/atlas.md).
    #[serde(rename = "atlas")]
    Atlas(AtlasSourceConfig),
    /// A MariaDB/MySQL server: consistent logical backups (one snapshot transaction) of
    /// its databases. See docs/sources/mysql.md.
    #[serde(rename = "mysql")]
    Mysql(crate::mysql::MysqlSourceConfig),
    /// An Elasticsearch (or OpenSearch) cluster: snapshots in its snapshot repository,
    /// driven and recorded by backupd. See docs/sources/elasticsearch.md.
    #[serde(rename = "elasticsearch")]
    Elasticsearch(crate::elasticsearch::ElasticsearchSourceConfig),
    /// An AWS RDS DB instance or Aurora cluster: RDS snapshots taken, copied to another
    /// region, pruned and restored by backupd. See docs/sources/rds.md.
    #[serde(rename = "rds")]
    Rds(crate::rds::RdsSourceConfig),
    /// Azure Blob Storage containers: blobs (names, metadata, content) copied into our
    /// repositories. See docs/sources/azure-blob.md.
    #[serde(rename = "azure-blob")]
    AzureBlob(crate::azure_blob::AzureBlobSourceConfig),
    /// An Azure SQL database: its own point-in-time backups checked, recorded and restored
    /// into a new database, optionally a bacpac export. See docs/sources/azure-sql.md.
    #[serde(rename = "azure-sql")]
    AzureSql(crate::azure_sql::AzureSqlSourceConfig),
}

/// A `kind = "atlas"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AtlasSourceConfig {
    /// The project (group) id: 24 hex digits.
    pub project_id: String,
    pub cluster: String,
    /// The programmatic API key's public part (not a secret, like an access key id).
    pub public_key: String,
    /// The private part is a secret: the environment variable or the file that holds it.
    #[serde(default)]
    pub private_key_env: Option<String>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    #[serde(default = "default_atlas_base_url")]
    pub base_url: String,
    /// Also download each snapshot's files (a download restore job) into the backup's
    /// artifact, so a copy lives outside Atlas, encrypted, replicated and archived like any.
    #[serde(default)]
    pub export: bool,
    /// How long Atlas itself keeps a snapshot at most; our retention deletes it sooner. Set
    /// it above the longest time the source's retention keeps a backup.
    #[serde(default = "default_atlas_retention_days")]
    pub atlas_retention_days: u32,
    /// How long a snapshot (and an export) may take before the backup fails.
    #[serde(default = "default_atlas_timeout", with = "humantime_serde")]
    pub snapshot_timeout: std::time::Duration,
    /// How often Atlas is asked how a snapshot, export or restore is getting on.
    #[serde(default = "default_atlas_poll", with = "humantime_serde")]
    pub poll_interval: std::time::Duration,
}

fn default_atlas_base_url() -> String {
    "https://cloud.mongodb.com".into()
}

fn default_atlas_retention_days() -> u32 {
    400
}

fn default_atlas_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(4 * 3600)
}

fn default_atlas_poll() -> std::time::Duration {
    std::time::Duration::from_secs(15)
}

impl AtlasSourceConfig {
    /// Reads the private key from its env var or file. The error names where, never the value.
    pub fn private_key(&self) -> Result<String, String> {
        let (value, _) = read_secret(
            self.private_key_env.as_deref(),
            self.private_key_file.as_deref(),
            "the Atlas private key",
            "`private-key-env` or `private-key-file`",
        )?;
        if value.is_empty() {
            return Err("the Atlas private key is empty".into());
        }
        Ok(value)
    }
}

/// A secret from an environment variable (first) or a file, trimmed, with where it came from.
pub(crate) fn read_secret(
    env: Option<&str>,
    file: Option<&Path>,
    what: &str,
    keys: &str,
) -> Result<(String, String), String> {
    let (value, from) = match (env, file) {
        (Some(var), _) => (
            std::env::var(var).map_err(|e| {
                format!("cannot read {what} from the environment variable {var}: {e}")
            })?,
            format!("the environment variable {var}"),
        ),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {what} from {}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        (None, None) => return Err(format!("the source names no {keys}")),
    };
    Ok((value.trim().to_owned(), from))
}

/// A `kind = "mongodb"` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MongoSourceConfig {
    /// The connection URI is a secret (it carries the password): name the environment
    /// variable or the file that holds it, never the URI itself.
    #[serde(default)]
    pub uri_env: Option<String>,
    #[serde(default)]
    pub uri_file: Option<PathBuf>,
    /// Namespaces backed up: `db`, `db.*` or `db.collection` (all user databases when empty).
    #[serde(default)]
    pub include: Vec<String>,
    /// Namespaces left out, same patterns.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Which members documents are read from (default secondary-preferred).
    #[serde(default)]
    pub read_preference: backup_sources::mongodb::ReadPreferenceMode,
    /// How often `backupctl oplog-archive` / backupd writes an oplog slice (default 1m).
    #[serde(default = "default_oplog_interval", with = "humantime_serde")]
    pub oplog_interval: std::time::Duration,
}

fn default_oplog_interval() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

impl MongoSourceConfig {
    /// The namespace filter of `include` / `exclude`.
    pub fn filter(&self) -> backup_sources::mongodb::NamespaceFilter {
        backup_sources::mongodb::NamespaceFilter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }

    /// Reads the URI from its env var or file. The error names where, never the value.
    pub fn uri(&self) -> Result<String, String> {
        let (value, from) = read_secret(
            self.uri_env.as_deref(),
            self.uri_file.as_deref(),
            "the MongoDB URI",
            "`uri-env` or `uri-file`",
        )?;
        if !(value.starts_with("mongodb://") || value.starts_with("mongodb+srv://")) {
            return Err(format!(
                "{from} does not hold a mongodb:// or mongodb+srv:// URI"
            ));
        }
        Ok(value)
    }
}

fn default_archive_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_wal_segment_mib() -> u64 {
    16
}

impl SourceKindConfig {
    /// A postgres source's `spool-directory`.
    pub fn spool_directory(&self) -> Option<&Path> {
        match self {
            Self::Postgres {
                spool_directory, ..
            } => spool_directory.as_deref(),
            _ => None,
        }
    }

    /// A postgres source's WAL segment size (validated at load).
    pub fn wal_segment_size(&self) -> Option<backup_sources::postgres::wal::WalSegmentSize> {
        match self {
            Self::Postgres {
                wal_segment_size_mib,
                ..
            } => {
                backup_sources::postgres::wal::WalSegmentSize::new(wal_segment_size_mib << 20).ok()
            }
            _ => None,
        }
    }

    /// A postgres source's `archive-timeout`.
    pub fn archive_timeout(&self) -> Option<std::time::Duration> {
        match self {
            Self::Postgres {
                archive_timeout, ..
            } => Some(*archive_timeout),
            _ => None,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Files { .. } => "files",
            Self::Postgres { .. } => "postgres",
            Self::Mongodb(_) => "mongodb",
            Self::Atlas(_) => "atlas",
            Self::Mysql(_) => "mysql",
            Self::Elasticsearch(_) => "elasticsearch",
            Self::Rds(_) => "rds",
            Self::AzureBlob(_) => "azure-blob",
            Self::AzureSql(_) => "azure-sql",
        }
    }
}

impl Config {
    /// Loads `path`, or the embedded quickstart config when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, &p.display().to_string())
            }
            None => Self::parse(QUICKSTART_TOML, QUICKSTART_NAME),
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: origin.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        config.origin = origin.to_owned();
        config.text = text.to_owned();
        config.validate()?;
        Ok(config)
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.clone(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// Like `invalid`, with the line where `needle` first appears.
    fn invalid_at(&self, key: String, needle: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.origin.clone(),
            line: line_of(&self.text, needle),
            key,
            message: message.into(),
        }
    }

    fn validate(&mut self) -> Result<(), ConfigError> {
        self.validate_structure()?;
        for i in 0..self.sources.len() {
            let parsed = self.parse_policy(i)?;
            self.sources[i].schedules = parsed;
            let drill = self.parse_drill(i)?;
            if let Some(d) = self.sources[i].drill.as_mut() {
                d.schedule = drill;
            }
        }
        Ok(())
    }

    /// Checks a source's `drill` and parses its cron (in the source's time zone).
    fn parse_drill(&self, i: usize) -> Result<Option<CronSchedule>, ConfigError> {
        let s = &self.sources[i];
        let Some(drill) = &s.drill else {
            return Ok(None);
        };
        crate::drill::validate(s, drill).map_err(|(key, message)| {
            let key = if key.is_empty() {
                format!("source[{i}].drill")
            } else {
                format!("source[{i}].drill.{key}")
            };
            self.invalid(key, message)
        })?;
        let tz = parse_timezone(&s.timezone)
            .map_err(|e| self.invalid(format!("source[{i}].timezone"), e.to_string()))?;
        CronSchedule::parse(&drill.cron, tz).map(Some).map_err(|e| {
            self.invalid_at(
                format!("source[{i}].drill.cron"),
                &format!("\"{}\"", drill.cron),
                e.to_string(),
            )
        })
    }

    fn parse_policy(&self, i: usize) -> Result<Vec<CronSchedule>, ConfigError> {
        let s = &self.sources[i];
        let tz = parse_timezone(&s.timezone).map_err(|e| {
            self.invalid_at(
                format!("source[{i}].timezone"),
                &format!("\"{}\"", s.timezone),
                e.to_string(),
            )
        })?;
        let mut out = Vec::new();
        for (j, entry) in s.schedule.iter().enumerate() {
            let schedule = CronSchedule::parse(&entry.cron, tz).map_err(|e| {
                self.invalid_at(
                    format!("source[{i}].schedule[{j}].cron"),
                    &format!("\"{}\"", entry.cron),
                    e.to_string(),
                )
            })?;
            if entry.backup_type == BackupType::Incr
                && !matches!(s.kind, SourceKindConfig::Postgres { .. })
            {
                return Err(self.invalid(
                    format!("source[{i}].schedule[{j}].type"),
                    format!(
                        "{} sources take full backups only; remove `type = \"incr\"`",
                        s.kind.kind_name()
                    ),
                ));
            }
            out.push(schedule);
        }
        Ok(out)
    }

    fn validate_structure(&self) -> Result<(), ConfigError> {
        self.scheduler
            .validate()
            .map_err(|(key, message)| self.invalid(key, message))?;
        let url = &self.catalog.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(self.invalid(
                "catalog.url",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        }
        if self.encryption.key_file.as_os_str().is_empty() {
            return Err(self.invalid("encryption.key-file", "must not be empty"));
        }
        if !(1..=19).contains(&self.pipeline.compression_level) {
            return Err(self.invalid("pipeline.compression-level", "must be between 1 and 19"));
        }
        if !(4..=65536).contains(&self.pipeline.segment_size_kib) {
            return Err(self.invalid("pipeline.segment-size-kib", "must be between 4 and 65536"));
        }
        let mut names = HashSet::new();
        for (i, r) in self.repositories.iter().enumerate() {
            check_name(&r.name).map_err(|m| self.invalid(format!("repository[{i}].name"), m))?;
            if !names.insert(r.name.as_str()) {
                return Err(self.invalid(
                    format!("repository[{i}].name"),
                    format!("repository {:?} is defined twice", r.name),
                ));
            }
            match &r.kind {
                RepositoryKindConfig::Local { path } if path.as_os_str().is_empty() => {
                    return Err(self.invalid(format!("repository[{i}].path"), "must not be empty"))
                }
                RepositoryKindConfig::Local { .. } => {}
                RepositoryKindConfig::S3 { bucket, region, .. }
                    if bucket.is_empty() || region.is_empty() =>
                {
                    return Err(self.invalid(
                        format!("repository[{i}]"),
                        "`bucket` and `region` must not be empty",
                    ))
                }
                RepositoryKindConfig::S3 {
                    object_lock: Some(lock),
                    ..
                } if !(1..=backup_sinks::s3::MAX_LOCK_DAYS).contains(&lock.days) => {
                    return Err(self.invalid(
                        format!("repository[{i}].object-lock.days"),
                        format!(
                            "must be between 1 and {} (days each object is retained)",
                            backup_sinks::s3::MAX_LOCK_DAYS
                        ),
                    ))
                }
                RepositoryKindConfig::S3 {
                    access_key_id_env,
                    access_key_id_file,
                    secret_access_key_env,
                    secret_access_key_file,
                    ..
                } => {
                    let id = access_key_id_env.is_some() as u8 + access_key_id_file.is_some() as u8;
                    let secret = secret_access_key_env.is_some() as u8
                        + secret_access_key_file.is_some() as u8;
                    if id > 1 || secret > 1 || id != secret {
                        return Err(self.invalid(
                            format!("repository[{i}]"),
                            "name the access key id and the secret access key once each \
                             (access-key-id-env or -file, secret-access-key-env or -file), or neither to use the AWS credential chain",
                        ));
                    }
                }
            }
        }
        let mut sources = HashSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            check_name(&s.name).map_err(|m| self.invalid(format!("source[{i}].name"), m))?;
            if !sources.insert(s.name.as_str()) {
                return Err(self.invalid(
                    format!("source[{i}].name"),
                    format!("source {:?} is defined twice", s.name),
                ));
            }
            if !names.contains(s.repository.as_str()) {
                let known: Vec<_> = self.repositories.iter().map(|r| r.name.as_str()).collect();
                return Err(self.invalid_at(
                    format!("source[{i}].repository"),
                    &format!("repository = \"{}\"", s.repository),
                    format!(
                        "unknown repository {:?}; defined repositories: {known:?}",
                        s.repository
                    ),
                ));
            }
            self.validate_copy_rules(i, s)?;
            match &s.kind {
                SourceKindConfig::Files { paths, .. } if paths.is_empty() => {
                    return Err(self.invalid(format!("source[{i}].paths"), "list at least one path"))
                }
                SourceKindConfig::Files { .. } => {}
                SourceKindConfig::Postgres { connection, .. }
                    if !(connection.starts_with("postgres://")
                        || connection.starts_with("postgresql://")) =>
                {
                    return Err(self.invalid(
                        format!("source[{i}].connection"),
                        "must be a postgres:// or postgresql:// URL",
                    ))
                }
                SourceKindConfig::Postgres { connection, .. } if url_has_password(connection) => {
                    return Err(self.invalid(
                        format!("source[{i}].connection"),
                        "must not contain a password: use PGPASSWORD or ~/.pgpass",
                    ))
                }
                SourceKindConfig::Postgres {
                    wal_segment_size_mib,
                    ..
                } if backup_sources::postgres::wal::WalSegmentSize::new(
                    wal_segment_size_mib.saturating_mul(1 << 20),
                )
                .is_err() =>
                {
                    return Err(self.invalid(
                        format!("source[{i}].wal-segment-size-mib"),
                        "must be a power of two from 1 to 1024",
                    ))
                }
                SourceKindConfig::Postgres { .. } => {}
                SourceKindConfig::Mongodb(m) => {
                    if m.uri_env.is_some() == m.uri_file.is_some() {
                        return Err(self.invalid(
                            format!("source[{i}].uri-env"),
                            "give the MongoDB URI by exactly one of `uri-env` (an environment \
                             variable) or `uri-file` (a file); it is a secret, so never the URI itself",
                        ));
                    }
                    m.filter()
                        .check()
                        .map_err(|e| self.invalid(format!("source[{i}].include"), e))?;
                    if m.oplog_interval < std::time::Duration::from_secs(1) {
                        return Err(self.invalid(
                            format!("source[{i}].oplog-interval"),
                            "must be at least 1s",
                        ));
                    }
                }
                SourceKindConfig::Atlas(a) => self.validate_atlas(i, a)?,
                SourceKindConfig::Mysql(m) => m.validate().map_err(|(key, message)| {
                    self.invalid(format!("source[{i}].{key}"), message)
                })?,
                SourceKindConfig::Elasticsearch(e) => e.validate().map_err(|(key, message)| {
                    self.invalid(format!("source[{i}].{key}"), message)
                })?,
                SourceKindConfig::Rds(r) => r.validate().map_err(|(key, message)| {
                    self.invalid(format!("source[{i}].{key}"), message)
                })?,
                SourceKindConfig::AzureBlob(b) => b.validate().map_err(|(key, message)| {
                    self.invalid(format!("source[{i}].{key}"), message)
                })?,
                SourceKindConfig::AzureSql(a) => a.validate().map_err(|(key, message)| {
                    self.invalid(format!("source[{i}].{key}"), message)
                })?,
            }
        }
        Ok(())
    }

    fn validate_atlas(&self, i: usize, a: &AtlasSourceConfig) -> Result<(), ConfigError> {
        if a.project_id.len() != 24 || !a.project_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.invalid(
                format!("source[{i}].project-id"),
                "an Atlas project id is 24 hex digits (Project Settings in the Atlas UI)",
            ));
        }
        let cluster_ok = a
            .cluster
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && a.cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !cluster_ok {
            return Err(self.invalid(
                format!("source[{i}].cluster"),
                "an Atlas cluster name is letters, digits and '-', starting with a letter or digit",
            ));
        }
        if a.public_key.is_empty() || a.public_key.contains(|c: char| !c.is_ascii_graphic()) {
            return Err(self.invalid(
                format!("source[{i}].public-key"),
                "give the API key's public part (8 characters in the Atlas UI)",
            ));
        }
        if a.private_key_env.is_some() == a.private_key_file.is_some() {
            return Err(self.invalid(
                format!("source[{i}].private-key-env"),
                "give the API key's private part by exactly one of `private-key-env` (an \
                 environment variable) or `private-key-file` (a file); it is a secret, so \
                 never the key itself",
            ));
        }
        if !(a.base_url.starts_with("https://") || a.base_url.starts_with("http://")) {
            return Err(self.invalid(
                format!("source[{i}].base-url"),
                "must be an http(s) URL, e.g. https://cloud.mongodb.com",
            ));
        }
        if a.atlas_retention_days == 0 {
            return Err(self.invalid(
                format!("source[{i}].atlas-retention-days"),
                "must be at least 1",
            ));
        }
        if a.poll_interval.is_zero() || a.poll_interval > a.snapshot_timeout {
            return Err(self.invalid(
                format!("source[{i}].poll-interval"),
                "must be more than 0 and at most snapshot-timeout",
            ));
        }
        Ok(())
    }

    fn validate_copy_rules(&self, i: usize, s: &SourceConfig) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (j, rule) in s.copy_to.iter().enumerate() {
            let key = format!("source[{i}].copy-to[{j}]");
            let needle = format!("\"{}\"", rule.to);
            let Some(repo) = self.repositories.iter().find(|r| r.name == rule.to) else {
                let known: Vec<_> = self.repositories.iter().map(|r| r.name.as_str()).collect();
                return Err(self.invalid_at(
                    key,
                    &needle,
                    format!(
                        "unknown repository {:?}; defined repositories: {known:?}",
                        rule.to
                    ),
                ));
            };
            if rule.to == s.repository {
                return Err(self.invalid_at(
                    key,
                    &needle,
                    format!(
                        "{:?} is the source's own repository; copy to another one",
                        rule.to
                    ),
                ));
            }
            if !seen.insert(rule.to.as_str()) {
                return Err(self.invalid_at(
                    key,
                    &needle,
                    format!("repository {:?} is named twice in copy-to", rule.to),
                ));
            }
            if let Some(class) = &rule.storage_class {
                if !STORAGE_CLASSES.contains(&class.as_str()) {
                    return Err(self.invalid_at(
                        format!("{key}.storage-class"),
                        &format!("\"{class}\""),
                        format!("unknown storage class {class:?}; use one of {STORAGE_CLASSES:?}"),
                    ));
                }
                if !matches!(repo.kind, RepositoryKindConfig::S3 { .. }) {
                    return Err(self.invalid_at(
                        format!("{key}.storage-class"),
                        &format!("\"{class}\""),
                        format!(
                            "repository {:?} is not an S3 repository and has no storage classes",
                            rule.to
                        ),
                    ));
                }
            }
            if let Some(tag) = &rule.only {
                crate::backup::check_tag(tag)
                    .map_err(|e| self.invalid(format!("{key}.only"), e.to_string()))?;
            }
        }
        Ok(())
    }

    pub fn source(&self, name: &str) -> Result<(usize, &SourceConfig), ConfigError> {
        self.sources
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| {
                let known: Vec<_> = self.sources.iter().map(|s| s.name.as_str()).collect();
                self.invalid(
                    "source",
                    format!("no source named {name:?}; configured sources: {known:?}"),
                )
            })
    }

    pub fn repository(&self, name: &str) -> Result<&RepositoryConfig, ConfigError> {
        self.repositories
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| {
                self.invalid(
                    "repository",
                    format!(
                        "no repository named {name:?} (it may have been removed from the config)"
                    ),
                )
            })
    }

    /// Checks that a source's paths exist, naming the config key on failure.
    pub fn check_source_paths(&self, index: usize) -> Result<(), ConfigError> {
        match &self.sources[index].kind {
            SourceKindConfig::Files { paths, .. } => {
                for (j, p) in paths.iter().enumerate() {
                    if let Err(e) = std::fs::symlink_metadata(p) {
                        return Err(self.invalid(
                            format!("source[{index}].paths[{j}]"),
                            format!("{}: {e}", p.display()),
                        ));
                    }
                }
            }
            SourceKindConfig::Postgres { data_directory, .. } => {
                if let Err(e) = std::fs::metadata(data_directory.join("PG_VERSION")) {
                    return Err(self.invalid(
                        format!("source[{index}].data-directory"),
                        format!(
                            "{} is not a PostgreSQL data directory (PG_VERSION: {e})",
                            data_directory.display()
                        ),
                    ));
                }
            }
            SourceKindConfig::Mongodb(_)
            | SourceKindConfig::Atlas(_)
            | SourceKindConfig::Mysql(_)
            | SourceKindConfig::Elasticsearch(_)
            | SourceKindConfig::Rds(_)
            | SourceKindConfig::AzureBlob(_)
            | SourceKindConfig::AzureSql(_) => {}
        }
        Ok(())
    }
}

/// Whether a `scheme://user:password@host` URL carries a password.
pub(crate) fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(user_info, _)| user_info.contains(':'))
        || url.contains("password=")
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// A configuration of one local repository `r` and one source `name` of `kind` with these
/// extra settings, parsed: what the source modules' config tests start from.
#[cfg(test)]
pub(crate) fn parse_with_source(
    name: &str,
    kind: &str,
    settings: &str,
) -> std::result::Result<Config, String> {
    let text = format!(
        "[catalog]\nurl = \"sqlite://c.db\"\n[encryption]\nkey-file = \"k\"\n\
         [[repository]]\nname = \"r\"\nkind = \"local\"\npath = \"r\"\n\
         [[source]]\nname = \"{name}\"\nkind = \"{kind}\"\nrepository = \"r\"\n{settings}"
    );
    Config::parse(&text, "t.toml").map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[catalog]
url = "sqlite://var/catalog.db"
[encryption]
key-file = "var/keys/repo.key"
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "files"
kind = "files"
paths = ["./data"]
repository = "region-a"
"#;

    #[test]
    fn the_documented_example_parses() {
        let c = Config::parse(GOOD, "test.toml").unwrap();
        assert_eq!(c.repositories[0].name, "region-a");
        assert_eq!(c.sources[0].kind.kind_name(), "files");
        assert_eq!(c.pipeline.compression_level, 3);
    }

    #[test]
    fn status_page_is_on_by_default_and_can_be_turned_off() {
        assert!(Config::parse(GOOD, "test.toml").unwrap().api.status_page);
        let off = format!("{GOOD}[api]\nstatus-page = false\n");
        assert!(!Config::parse(&off, "test.toml").unwrap().api.status_page);
        let typo = format!("{GOOD}[api]\nstatus_page = false\n");
        let err = Config::parse(&typo, "test.toml").unwrap_err().to_string();
        assert!(err.contains("status_page"), "{err}");
    }

    #[test]
    fn policies_parse_and_bad_ones_name_the_line() {
        let policy = GOOD.replace(
            "repository = \"region-a\"\n\"#",
            "repository = \"region-a\"\ntimezone = \"Europe/Rome\"\nschedule = [{ cron = \"0 */6 * * *\", type = \"full\" }, { cron = \"0 3 * * SAT\", tag = \"weekly\" }]\nkeep = { last = 4, daily = 7, within = \"2d\" }\ntier = \"premium\"\n\"#",
        );
        let policy = if policy == GOOD {
            format!("{GOOD}timezone = \"Europe/Rome\"\nschedule = [{{ cron = \"0 */6 * * *\", type = \"full\" }}, {{ cron = \"0 3 * * SAT\", tag = \"weekly\" }}]\nkeep = {{ last = 4, daily = 7, within = \"2d\" }}\ntier = \"premium\"\n")
        } else {
            policy
        };
        let c = Config::parse(&policy, "p.toml").unwrap();
        let s = &c.sources[0];
        assert_eq!(s.schedules.len(), 2);
        assert_eq!(s.schedule[1].tag.as_deref(), Some("weekly"));
        assert_eq!(
            s.keep.as_ref().unwrap().within,
            Some(std::time::Duration::from_secs(2 * 86400))
        );
        assert_eq!(
            s.targets().unwrap().rpo,
            std::time::Duration::from_secs(15 * 60)
        );

        let bad_cron = policy.replace("0 3 * * SAT", "0 3 * * SATURDAYS");
        let err = Config::parse(&bad_cron, "p.toml").unwrap_err().to_string();
        let line = policy
            .lines()
            .position(|l| l.contains("0 3 * * SAT"))
            .unwrap()
            + 1;
        assert!(
            err.contains("source[0].schedule[1].cron") && err.contains(&format!("line {line}")),
            "{err}"
        );
        let bad_tz = policy.replace("Europe/Rome", "Europe/Atlantis");
        let err = Config::parse(&bad_tz, "p.toml").unwrap_err().to_string();
        assert!(
            err.contains("source[0].timezone") && err.contains("Atlantis") && err.contains("line"),
            "{err}"
        );
        let bad_keep = policy.replace("daily = 7", "dayly = 7");
        let err = Config::parse(&bad_keep, "p.toml").unwrap_err().to_string();
        assert!(err.contains("dayly"), "{err}");
    }

    #[test]
    fn s3_object_lock_parses_and_is_checked() {
        let s3 = |lock: &str| {
            GOOD.replace(
                "kind = \"local\"\npath = \"var/repo/region-a\"",
                &format!(
                    "kind = \"s3\"\nbucket = \"b\"\nregion = \"us-east-1\"\nobject-lock = {lock}"
                ),
            )
        };
        let c = Config::parse(&s3("{ mode = \"compliance\", days = 30 }"), "l.toml").unwrap();
        let RepositoryKindConfig::S3 { object_lock, .. } = &c.repositories[0].kind else {
            panic!("not s3: {:?}", c.repositories[0].kind);
        };
        assert_eq!(
            *object_lock,
            Some(backup_sinks::ObjectLock {
                mode: backup_sinks::ObjectLockMode::Compliance,
                days: 30
            })
        );
        for (bad, expect) in [
            (
                "{ mode = \"governance\", days = 0 }",
                "repository[0].object-lock.days",
            ),
            ("{ mode = \"legal\", days = 3 }", "legal"),
            ("{ mode = \"governance\", days = 3, years = 1 }", "years"),
            ("{ days = 3 }", "mode"),
        ] {
            let err = Config::parse(&s3(bad), "l.toml").unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn copy_rules_parse_and_bad_ones_name_the_key() {
        let two = GOOD.replace(
            "[[source]]",
            "[[repository]]\nname = \"archive\"\nkind = \"s3\"\nbucket = \"b\"\nregion = \"eu-west-1\"\n[[repository]]\nname = \"region-b\"\nkind = \"local\"\npath = \"var/b\"\n[[source]]",
        );
        let rules = |copy_to: &str| format!("{two}copy-to = {copy_to}\n");
        let c = Config::parse(
            &rules(r#"["region-b", { to = "archive", storage-class = "DEEP_ARCHIVE", only = "weekly", keep = { last = 4 } }]"#),
            "c.toml",
        )
        .unwrap();
        let copy_to = &c.sources[0].copy_to;
        assert_eq!(copy_to.len(), 2);
        assert_eq!(copy_to[0].to, "region-b");
        assert!(copy_to[0].applies_to(None) && copy_to[0].applies_to(Some("x")));
        assert_eq!(copy_to[1].storage_class.as_deref(), Some("DEEP_ARCHIVE"));
        assert!(copy_to[1].applies_to(Some("weekly")) && !copy_to[1].applies_to(None));
        assert!(copy_to[1].keep.is_some());

        for (copy_to, needles) in [
            (
                r#"["nowhere"]"#,
                vec!["source[0].copy-to[0]", "nowhere", "line"],
            ),
            (r#"["region-a"]"#, vec!["own repository"]),
            (r#"["region-b", "region-b"]"#, vec!["copy-to[1]", "twice"]),
            (
                r#"[{ to = "archive", storage-class = "FROZEN" }]"#,
                vec!["storage-class", "FROZEN", "DEEP_ARCHIVE"],
            ),
            (
                r#"[{ to = "region-b", storage-class = "GLACIER" }]"#,
                vec!["not an S3 repository"],
            ),
            (r#"[{ to = "region-b", when = "weekly" }]"#, vec!["when"]),
            (r#"[{ to = "region-b", only = "no spaces" }]"#, vec!["only"]),
            ("[3]", vec!["repository name or a table"]),
        ] {
            let err = Config::parse(&rules(copy_to), "c.toml")
                .unwrap_err()
                .to_string();
            for needle in needles {
                assert!(err.contains(needle), "{copy_to}: {err}");
            }
        }
    }

    #[test]
    fn mongodb_sources_parse_and_take_the_uri_only_as_a_secret() {
        let mongo = |extra: &str| {
            GOOD.replace(
                "kind = \"files\"\npaths = [\"./data\"]",
                &format!("kind = \"mongodb\"\n{extra}"),
            )
        };
        let c = Config::parse(
            &mongo("uri-env = \"BACKUPD_TEST_MONGO_URI_UNSET\"\ninclude = [\"app\", \"crm.contacts\"]\nexclude = [\"app.cache\"]\nread-preference = \"primary\"\noplog-interval = \"30s\""),
            "m.toml",
        )
        .unwrap();
        let SourceKindConfig::Mongodb(m) = &c.sources[0].kind else {
            panic!("not mongodb: {:?}", c.sources[0].kind);
        };
        assert_eq!(c.sources[0].kind.kind_name(), "mongodb");
        assert_eq!(m.oplog_interval, std::time::Duration::from_secs(30));
        assert_eq!(
            m.read_preference,
            backup_sources::mongodb::ReadPreferenceMode::Primary
        );
        let filter = m.filter();
        assert!(filter.covers("crm", "contacts") && !filter.covers("app", "cache"));
        let err = m.uri().unwrap_err();
        assert!(err.contains("BACKUPD_TEST_MONGO_URI_UNSET"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uri");
        std::fs::write(
            &file,
            "mongodb://backup:s3cret@db.example:27017/?replicaSet=rs0\n",
        )
        .unwrap();
        let c = Config::parse(
            &mongo(&format!("uri-file = \"{}\"", file.display())),
            "m.toml",
        )
        .unwrap();
        let SourceKindConfig::Mongodb(m) = &c.sources[0].kind else {
            panic!("not mongodb");
        };
        assert_eq!(
            m.uri().unwrap(),
            "mongodb://backup:s3cret@db.example:27017/?replicaSet=rs0"
        );
        assert_eq!(m.read_preference, Default::default());
        std::fs::write(&file, "postgres://x:s3cret@h/").unwrap();
        let err = m.uri().unwrap_err();
        assert!(
            err.contains("mongodb://") && !err.contains("s3cret"),
            "{err}"
        );

        for (extra, needle) in [
            ("", "uri-env"),
            ("uri-env = \"A\"\nuri-file = \"/x\"", "exactly one"),
            ("uri = \"mongodb://u:p@h/\"", "uri"),
            ("uri-env = \"A\"\ninclude = [\"a b\"]", "include"),
            ("uri-env = \"A\"\noplog-interval = \"0s\"", "oplog-interval"),
            ("uri-env = \"A\"\nread-preference = \"any\"", "any"),
        ] {
            let err = Config::parse(&mongo(extra), "m.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{extra}: {err}");
        }
    }

    #[test]
    fn shipped_configs_are_valid() {
        Config::load(None).unwrap();
        let production = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/production.toml");
        Config::load(Some(Path::new(production))).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let err = Config::parse(&GOOD.replace("paths =", "pathz ="), "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml") && err.contains("pathz"), "{err}");
        let err = Config::parse(
            &GOOD.replace("repository = \"region-a\"", "repository = \"nope\""),
            "my.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("source[0].repository") && err.contains("nope") && err.contains("line 14"),
            "{err}"
        );
        let err = Config::parse(
            &GOOD.replace("kind = \"local\"", "kind = \"tape\""),
            "my.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("my.toml") && err.contains("tape"), "{err}");
        let err = Config::parse(&GOOD.replace("sqlite://", "mysql://"), "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("catalog.url"), "{err}");
        let err = Config::parse(&format!("{GOOD}\n[bogus]\nx = 1\n"), "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/backupd.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/backupd.toml"), "{err}");
    }
}
