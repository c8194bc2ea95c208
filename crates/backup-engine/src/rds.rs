//! The RDS source: backupd drives RDS's own snapshots of one DB instance or Aurora cluster.
//! The data stays in RDS: each backup is a manual snapshot in the source's region and, with
//! `copy-region`, a copy there (encrypted with `copy-kms-key-id`). The backup's data artifact
//! in the backupd repository holds a record of both (identifiers, ARNs, KMS keys), and so does
//! the catalog. Retention deletes both snapshots with the backup; restore makes a new
//! instance or cluster from either. See docs/sources/rds.md.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::{RdsSnapshotRecord, RDS_ROLE_COPY, RDS_ROLE_SOURCE};
use backup_core::BackupId;
use backup_rds::{
    backupd_tags, CopyRequest, Deletion, RdsCredentials, RdsError, RdsResource, RdsSnapshots,
    RdsTarget, RestoreRequest, SecretSource, SnapshotInfo, SnapshotRequest, WaitPolicy,
};

use crate::error::{EngineError, Result};
use crate::mysql::DumpEvent;
use crate::restore::BackupSelector;
use crate::Engine;

/// The entry a backup's data artifact holds: the snapshots' record.
pub const RECORD_PATH: &str = "rds/snapshot.json";

/// `[[source]] kind = "rds"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RdsSourceConfig {
    /// Region of the DB instance or cluster, e.g. `eu-west-1`.
    pub region: String,
    /// One of these: the DB instance, or the Aurora / Multi-AZ DB cluster, to snapshot.
    #[serde(default)]
    pub db_instance: Option<String>,
    #[serde(default)]
    pub db_cluster: Option<String>,
    /// An RDS-compatible API (moto, a VPC endpoint); default: AWS's endpoint of the region.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// A static access key: the id and the secret each from an environment variable or a
    /// file. Without them, the standard AWS chain (env, profile, web identity, instance role).
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// Copy every snapshot to this region (a disaster-recovery copy outside the source's).
    #[serde(default)]
    pub copy_region: Option<String>,
    /// KMS key of `copy-region` for the copy: needed when the snapshot is encrypted (KMS keys
    /// do not leave their region); given for an unencrypted one, the copy is encrypted.
    #[serde(default)]
    pub copy_kms_key_id: Option<String>,
    /// Snapshot identifiers are this prefix followed by the backup id.
    #[serde(default = "default_prefix")]
    pub snapshot_prefix: String,
    /// How often RDS is asked whether a snapshot, copy or restore is done.
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A snapshot (or its copy) not `available` after this long fails the backup.
    #[serde(default = "default_snapshot_timeout", with = "humantime_serde")]
    pub snapshot_timeout: Duration,
    /// A restored database not `available` after this long fails the restore.
    #[serde(default = "default_restore_timeout", with = "humantime_serde")]
    pub restore_timeout: Duration,
    /// Request attempts (the first included) for throttling, 5xx and connection errors.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
}

fn default_prefix() -> String {
    "backupd-".into()
}
fn default_poll() -> Duration {
    WaitPolicy::DEFAULT_POLL_INTERVAL
}
fn default_snapshot_timeout() -> Duration {
    WaitPolicy::DEFAULT_TIMEOUT
}
fn default_restore_timeout() -> Duration {
    Duration::from_secs(2 * 3600)
}
fn default_attempts() -> u32 {
    backup_rds::DEFAULT_MAX_ATTEMPTS
}

fn secret_source(env: &Option<String>, file: &Option<PathBuf>) -> Option<SecretSource> {
    match (env, file) {
        (Some(var), _) => Some(SecretSource::Env(var.clone())),
        (None, Some(path)) => Some(SecretSource::File(path.clone())),
        (None, None) => None,
    }
}

impl RdsSourceConfig {
    /// Checked at config load: `(key, message)` on failure.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((key.to_owned(), message.to_owned()));
        if self.region.trim().is_empty() {
            return bad(
                "region",
                "must name the region of the DB instance or cluster",
            );
        }
        let resource = match (&self.db_instance, &self.db_cluster) {
            (Some(id), None) => ("db-instance", id),
            (None, Some(id)) => ("db-cluster", id),
            _ => {
                return bad(
                    "db-instance",
                    "give exactly one of db-instance (a DB instance identifier) or db-cluster \
                     (an Aurora or Multi-AZ DB cluster identifier)",
                )
            }
        };
        if resource.1.is_empty() || resource.1.len() > 63 {
            return bad(resource.0, "an RDS identifier is 1 to 63 characters long");
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return bad("endpoint", "must be an http:// or https:// URL");
            }
            if crate::config::url_has_password(endpoint) {
                return bad("endpoint", "must not carry credentials");
            }
        }
        let count = |a: bool, b: bool| a as u8 + b as u8;
        let id = count(
            self.access_key_id_env.is_some(),
            self.access_key_id_file.is_some(),
        );
        let secret = count(
            self.secret_access_key_env.is_some(),
            self.secret_access_key_file.is_some(),
        );
        if id > 1 || secret > 1 || id != secret {
            return bad(
                "access-key-id-env",
                "give the access key id (access-key-id-env or -file) with the secret access \
                 key (secret-access-key-env or -file), one source each, or neither (the \
                 standard AWS credential chain)",
            );
        }
        match &self.copy_region {
            Some(r) if r.trim().is_empty() => return bad("copy-region", "must not be empty"),
            Some(r) if *r == self.region => {
                return bad(
                    "copy-region",
                    "is the source's own region: a copy there survives no regional outage; \
                     name another region",
                )
            }
            None if self.copy_kms_key_id.is_some() => {
                return bad("copy-kms-key-id", "needs copy-region")
            }
            _ => {}
        }
        let prefix_ok = self
            .snapshot_prefix
            .starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .snapshot_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !self.snapshot_prefix.contains("--")
            && self.snapshot_prefix.len() <= 200;
        if !prefix_ok {
            return bad(
                "snapshot-prefix",
                "start with a lowercase letter, then lowercase letters, digits and single \
                 hyphens (RDS snapshot identifier rules)",
            );
        }
        for (key, timeout) in [
            ("snapshot-timeout", self.snapshot_timeout),
            ("restore-timeout", self.restore_timeout),
        ] {
            if self.poll_interval.is_zero() || timeout < self.poll_interval {
                return Err((
                    "poll-interval".into(),
                    format!("must be above zero and at most {key}"),
                ));
            }
        }
        if self.max_attempts == 0 {
            return bad("max-attempts", "must be at least 1");
        }
        Ok(())
    }

    pub fn resource(&self) -> RdsResource {
        match (&self.db_instance, &self.db_cluster) {
            (Some(id), _) => RdsResource::Instance(id.clone()),
            (None, Some(id)) => RdsResource::Cluster(id.clone()),
            (None, None) => RdsResource::Instance(String::new()),
        }
    }

    /// The snapshot identifier of backup `id` (the same in the copy region).
    pub fn snapshot_identifier(&self, id: BackupId) -> String {
        format!("{}{}", self.snapshot_prefix, id).to_lowercase()
    }

    fn target(&self) -> RdsTarget {
        let credentials = match (
            secret_source(&self.access_key_id_env, &self.access_key_id_file),
            secret_source(&self.secret_access_key_env, &self.secret_access_key_file),
        ) {
            (Some(access_key_id), Some(secret_access_key)) => RdsCredentials::Static {
                access_key_id,
                secret_access_key,
            },
            _ => RdsCredentials::Default,
        };
        RdsTarget {
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            resource: self.resource(),
            credentials,
            max_attempts: self.max_attempts,
        }
    }

    fn snapshot_wait(&self) -> WaitPolicy {
        WaitPolicy::new(self.poll_interval, self.snapshot_timeout)
    }

    fn restore_wait(&self) -> WaitPolicy {
        WaitPolicy::new(self.poll_interval, self.restore_timeout)
    }
}

/// The engine error of an RDS failure of `source`: the RDS error already says what failed
/// and what to do; unusable settings are usage errors.
fn failure(source: &str, e: RdsError) -> EngineError {
    match e {
        RdsError::Config { .. } => EngineError::Usage(format!("RDS source {source}: {e}")),
        e => EngineError::Failed(format!("RDS source {source}: {e}")),
    }
}

async fn client(source: &str, cfg: &RdsSourceConfig) -> Result<RdsSnapshots> {
    RdsSnapshots::new(cfg.target())
        .await
        .map_err(|e| failure(source, e))
}

/// One snapshot of a backup, as the record artifact stores it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordedSnapshot {
    /// `source` or `copy`.
    pub role: String,
    pub region: String,
    pub identifier: String,
    pub arn: String,
    pub encrypted: bool,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub engine: Option<String>,
    #[serde(default)]
    pub engine_version: Option<String>,
    #[serde(default)]
    pub allocated_storage_gb: Option<u64>,
    pub created_at: DateTime<Utc>,
}

/// What a backup of an RDS source stores as its data: enough to find, restore and delete
/// its snapshots with the repository alone (catalog rebuild reads it back).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// `instance` or `cluster`.
    pub resource_kind: String,
    pub resource: String,
    /// The source's snapshot first, then its copy.
    pub snapshots: Vec<RecordedSnapshot>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl SnapshotRecord {
    pub fn catalog_records(&self, backup_id: BackupId) -> Vec<RdsSnapshotRecord> {
        self.snapshots
            .iter()
            .map(|s| RdsSnapshotRecord {
                backup_id,
                role: s.role.clone(),
                region: s.region.clone(),
                resource_kind: self.resource_kind.clone(),
                resource: self.resource.clone(),
                identifier: s.identifier.clone(),
                arn: s.arn.clone(),
                encrypted: s.encrypted,
                kms_key_id: s.kms_key_id.clone(),
                engine: s.engine.clone(),
                allocated_storage_gb: s.allocated_storage_gb,
                created_at: s.created_at,
            })
            .collect()
    }

    /// Storage allocated to the database when snapshotted, in bytes (what a restore makes).
    pub fn allocated_bytes(&self) -> u64 {
        self.snapshots
            .first()
            .and_then(|s| s.allocated_storage_gb)
            .unwrap_or(0)
            .saturating_mul(1 << 30)
    }
}

fn recorded(role: &str, s: &SnapshotInfo) -> RecordedSnapshot {
    RecordedSnapshot {
        role: role.to_owned(),
        region: s.region.clone(),
        identifier: s.identifier.clone(),
        arn: s.arn.clone(),
        encrypted: s.encrypted,
        kms_key_id: s.kms_key_id.clone(),
        engine: s.engine.clone(),
        engine_version: s.engine_version.clone(),
        allocated_storage_gb: s.allocated_storage_gb.map(u64::from),
        created_at: s
            .created
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(Utc::now),
    }
}

fn kind_of(resource: &RdsResource) -> &'static str {
    if resource.is_cluster() {
        "cluster"
    } else {
        "instance"
    }
}

/// Takes the snapshot of backup `backup_id`, waits until it is `available`, copies it to
/// `copy-region` (waiting for the copy too), then sends the record into the pipeline. Any
/// failure fails the backup (whose snapshots the caller then deletes).
pub async fn snapshot(
    cfg: &RdsSourceConfig,
    source: &str,
    backup_id: BackupId,
    tx: mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<SnapshotRecord> {
    let started_at = Utc::now();
    let rds = client(source, cfg).await?;
    let identifier = cfg.snapshot_identifier(backup_id);
    let snapshots = match take_and_copy(cfg, source, backup_id, &rds, &identifier, cancel).await {
        Ok(snapshots) => snapshots,
        Err(e) => {
            // No snapshot outlives a failed backup if RDS lets us delete it now.
            let cleanup = delete_made(cfg, &rds, &identifier).await;
            return Err(EngineError::Failed(format!(
                "RDS source {source}: {e}; the backup is not complete{cleanup}"
            )));
        }
    };
    let record = SnapshotRecord {
        resource_kind: kind_of(rds.resource()).to_owned(),
        resource: rds.resource().identifier().to_owned(),
        snapshots,
        started_at,
        finished_at: Utc::now(),
    };
    crate::mysql::send_record(&tx, RECORD_PATH, &record, "RDS snapshot record").await?;
    Ok(record)
}

/// The source's snapshot, available, and its copy, available.
async fn take_and_copy(
    cfg: &RdsSourceConfig,
    source: &str,
    backup_id: BackupId,
    rds: &RdsSnapshots,
    identifier: &str,
    cancel: &CancellationToken,
) -> std::result::Result<Vec<RecordedSnapshot>, RdsError> {
    let tags = backupd_tags(source, &backup_id.to_string());
    let request = SnapshotRequest {
        identifier: identifier.to_owned(),
        tags: tags.clone(),
    };
    let taken = rds
        .create_snapshot(&request, cfg.snapshot_wait(), cancel)
        .await?;
    let mut snapshots = vec![recorded(RDS_ROLE_SOURCE, &taken)];
    if let Some(region) = &cfg.copy_region {
        let copy = CopyRequest {
            region: region.clone(),
            identifier: identifier.to_owned(),
            kms_key_id: cfg.copy_kms_key_id.clone(),
            tags,
        };
        let copied = rds
            .copy_snapshot(identifier, &copy, cfg.snapshot_wait(), cancel)
            .await?;
        snapshots.push(recorded(RDS_ROLE_COPY, &copied));
    }
    Ok(snapshots)
}

/// Deletes what a failed backup may have made (`identifier` in the source's region and in
/// `copy-region`); says what happened, as "; ..." (or "" when there was nothing).
async fn delete_made(cfg: &RdsSourceConfig, rds: &RdsSnapshots, identifier: &str) -> String {
    let mut deleted = Vec::new();
    let mut kept = Vec::new();
    for region in std::iter::once(&cfg.region).chain(cfg.copy_region.as_ref()) {
        match rds.in_region(region).delete_snapshot(identifier).await {
            Ok(Deletion::Deleted) => deleted.push(region.as_str()),
            Ok(Deletion::AlreadyAbsent) => {}
            Err(e) => kept.push(format!("in {region} ({e})")),
        }
    }
    let mut said = String::new();
    if !deleted.is_empty() {
        said.push_str(&format!(
            "; its snapshot {identifier} was deleted in {}",
            deleted.join(" and ")
        ));
    }
    if !kept.is_empty() {
        said.push_str(&format!(
            "; its snapshot {identifier} could not be deleted {}: delete it once RDS allows \
             (it is tagged {})",
            kept.join(", "),
            backup_rds::TAG_BACKUP_ID
        ));
    }
    said
}

/// The RDS source config of `source`, if it still is one.
fn rds_config<'a>(engine: &'a Engine, source: &str) -> Option<&'a RdsSourceConfig> {
    match &engine.config.source(source).ok()?.1.kind {
        crate::config::SourceKindConfig::Rds(cfg) => Some(cfg),
        _ => None,
    }
}

/// Deletes the RDS snapshots of backup `backup_id` of `source`: those the catalog records
/// or, for a backup that failed before recording them, those it may have made (its
/// identifier in the source's region and in `copy-region`). Missing ones are no error.
/// Returns how many were deleted.
pub async fn delete_backup_snapshots(
    engine: &Engine,
    source: &str,
    backup_id: BackupId,
) -> Result<usize> {
    let Some(cfg) = rds_config(engine, source) else {
        return Ok(0);
    };
    let recorded = engine.catalog.rds_snapshots(backup_id).await?;
    let places: Vec<(String, String)> = if recorded.is_empty() {
        let identifier = cfg.snapshot_identifier(backup_id);
        std::iter::once(cfg.region.clone())
            .chain(cfg.copy_region.clone())
            .map(|region| (region, identifier.clone()))
            .collect()
    } else {
        // The copy first: were the source's snapshot deleted and the copy not, the backup
        // would still be restorable from it, and the next prune retries.
        recorded
            .iter()
            .rev()
            .map(|r| (r.region.clone(), r.identifier.clone()))
            .collect()
    };
    let rds = client(source, cfg).await?;
    let mut deleted = 0;
    for (region, identifier) in places {
        let in_region = rds.in_region(&region);
        match in_region.delete_snapshot(&identifier).await {
            Ok(Deletion::Deleted) => deleted += 1,
            Ok(Deletion::AlreadyAbsent) => {}
            Err(e) => {
                return Err(EngineError::Failed(format!(
                    "RDS source {source}: deleting snapshot {identifier} in {region}: {e}"
                )))
            }
        }
    }
    Ok(deleted)
}

/// `backupctl verify` of an RDS backup: each recorded snapshot must still exist with its
/// ARN and be `available`. Its data is RDS's to check.
pub async fn check_snapshots(
    engine: &Engine,
    source: &str,
    records: &[RdsSnapshotRecord],
) -> Result<String> {
    let cfg = rds_config(engine, source)
        .ok_or_else(|| EngineError::Usage(format!("source {source} is no longer an rds source")))?;
    let rds = client(source, cfg).await?;
    let mut seen = Vec::new();
    for record in records {
        let info = match rds
            .in_region(&record.region)
            .describe_snapshot(&record.identifier)
            .await
        {
            Ok(info) => info,
            Err(e) if e.is_snapshot_not_found() => {
                return Err(EngineError::Integrity(format!(
                    "backup {}: its RDS snapshot {} ({}) is missing from {} ({e}); it was \
                     deleted outside backupd",
                    record.backup_id, record.identifier, record.arn, record.region
                )))
            }
            Err(e) => return Err(failure(source, e)),
        };
        if info.arn != record.arn {
            return Err(EngineError::Integrity(format!(
                "backup {}: RDS snapshot {} in {} is {}, not the snapshot {} the backup \
                 recorded; it was replaced outside backupd",
                record.backup_id, record.identifier, record.region, info.arn, record.arn
            )));
        }
        if !info.is_available() {
            return Err(EngineError::Integrity(format!(
                "backup {}: RDS snapshot {} in {} is `{}`, not `available`; it cannot be \
                 restored",
                record.backup_id, record.identifier, record.region, info.status
            )));
        }
        seen.push(format!("{} in {}", record.identifier, record.region));
    }
    Ok(format!("RDS snapshot {} available", seen.join(" and ")))
}

/// Catalog rebuild: reads the record artifact of backup `backup_id` back into the catalog.
pub async fn reimport_record(
    engine: &Engine,
    backup_id: BackupId,
    cancel: &CancellationToken,
) -> Result<()> {
    let record: SnapshotRecord = crate::restore::read_backup_record(
        engine,
        backup_id,
        RECORD_PATH,
        "RDS snapshot record",
        cancel,
    )
    .await?;
    for row in record.catalog_records(backup_id) {
        engine.catalog.record_rds_snapshot(&row).await?;
    }
    Ok(())
}

/// `backupctl restore SOURCE --backup ID --target-instance NAME`.
#[derive(Debug, Clone)]
pub struct RdsRestoreOptions {
    pub source: String,
    pub backup: BackupSelector,
    /// Identifier of the new DB instance (or DB cluster); must not exist.
    pub target: String,
    pub instance_class: Option<String>,
    pub subnet_group: Option<String>,
    /// Restore from the copy in `copy-region` (into that region) instead of the original.
    pub from_copy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RdsRestoreOutcome {
    pub backup_id: BackupId,
    pub source: String,
    pub region: String,
    pub snapshot_arn: String,
    /// `instance` or `cluster`.
    pub kind: String,
    pub identifier: String,
    pub arn: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub writer_instance: Option<String>,
    pub seconds: f64,
}

/// Restores a backup's snapshot into a new database and waits until it is `available`.
pub async fn run_rds_restore(
    engine: &Engine,
    options: &RdsRestoreOptions,
    cancel: &CancellationToken,
) -> Result<RdsRestoreOutcome> {
    let started = std::time::Instant::now();
    let (_, source) = engine.config.source(&options.source)?;
    let crate::config::SourceKindConfig::Rds(cfg) = &source.kind else {
        return Err(EngineError::Usage(format!(
            "source {} is a {} source; --target-instance restores rds sources",
            options.source,
            source.kind.kind_name()
        )));
    };
    let backup = crate::restore::select_backup(engine, &options.backup).await?;
    if backup.source != options.source {
        return Err(EngineError::Usage(format!(
            "backup {} is of source {}, not {}",
            backup.id, backup.source, options.source
        )));
    }
    let snapshots = engine.catalog.rds_snapshots(backup.id).await?;
    let role = if options.from_copy {
        RDS_ROLE_COPY
    } else {
        RDS_ROLE_SOURCE
    };
    let snapshot = snapshots.iter().find(|s| s.role == role).ok_or_else(|| {
        if snapshots.is_empty() {
            EngineError::Failed(format!(
                "backup {} has no RDS snapshot recorded (it is {}); restore another backup",
                backup.id,
                backup.status.as_str()
            ))
        } else {
            EngineError::Usage(format!(
                "backup {} has no copy in another region (the source had no copy-region \
                     when it was taken); restore without --from-region copy",
                backup.id
            ))
        }
    })?;
    let rds = client(&options.source, cfg)
        .await?
        .in_region(&snapshot.region);
    let request = RestoreRequest {
        identifier: options.target.clone(),
        instance_class: options.instance_class.clone(),
        subnet_group: options.subnet_group.clone(),
        tags: std::collections::BTreeMap::from([(
            backup_rds::TAG_BACKUP_ID.to_owned(),
            backup.id.to_string(),
        )]),
    };
    let restored = rds
        .restore(&snapshot.identifier, &request, cfg.restore_wait(), cancel)
        .await
        .map_err(|e| failure(&options.source, e))?;
    Ok(RdsRestoreOutcome {
        backup_id: backup.id,
        source: options.source.clone(),
        region: snapshot.region.clone(),
        snapshot_arn: snapshot.arn.clone(),
        kind: kind_of(&restored.resource).to_owned(),
        identifier: restored.resource.identifier().to_owned(),
        arn: restored.arn,
        address: restored.address,
        port: restored.port,
        writer_instance: restored.writer_instance,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Deletes a database a drill restored (no final snapshot: it is a scratch copy).
pub async fn delete_restored(
    engine: &Engine,
    source: &str,
    region: &str,
    kind: &str,
    identifier: &str,
) -> Result<()> {
    let cfg = rds_config(engine, source)
        .ok_or_else(|| EngineError::Usage(format!("source {source} is no longer an rds source")))?;
    let resource = if kind == "cluster" {
        RdsResource::Cluster(identifier.to_owned())
    } else {
        RdsResource::Instance(identifier.to_owned())
    };
    client(source, cfg)
        .await?
        .in_region(region)
        .delete_database(&resource)
        .await
        .map_err(|e| failure(source, e))
}

#[cfg(test)]
mod tests {
    fn config(source: &str) -> Result<crate::Config, String> {
        crate::config::parse_with_source("orders", "rds", source)
    }

    #[test]
    fn config_parses_and_bad_settings_are_named() {
        let c = config(
            "region = \"eu-west-1\"\ndb-instance = \"orders\"\ncopy-region = \"us-east-1\"\n\
             copy-kms-key-id = \"alias/backups\"\naccess-key-id-env = \"K\"\n\
             secret-access-key-file = \"/etc/s\"\npoll-interval = \"1s\"\n",
        )
        .unwrap();
        let crate::config::SourceKindConfig::Rds(r) = &c.sources[0].kind else {
            panic!("not rds");
        };
        assert_eq!(r.poll_interval, std::time::Duration::from_secs(1));
        assert_eq!(r.snapshot_timeout, std::time::Duration::from_secs(4 * 3600));
        assert_eq!(
            r.resource(),
            backup_rds::RdsResource::Instance("orders".into())
        );
        let id = backup_core::BackupId::new();
        assert_eq!(
            r.snapshot_identifier(id),
            format!("backupd-{id}").to_lowercase()
        );
        let base = "region = \"eu-west-1\"\n";
        for (bad, needle) in [
            ("", "exactly one of db-instance"),
            (
                "db-instance = \"a\"\ndb-cluster = \"b\"\n",
                "exactly one of db-instance",
            ),
            (
                "db-instance = \"a\"\ncopy-region = \"eu-west-1\"\n",
                "the source's own region",
            ),
            (
                "db-instance = \"a\"\ncopy-kms-key-id = \"k\"\n",
                "copy-kms-key-id",
            ),
            (
                "db-instance = \"a\"\naccess-key-id-env = \"K\"\n",
                "with the secret access key",
            ),
            (
                "db-instance = \"a\"\nsnapshot-prefix = \"Backupd_\"\n",
                "snapshot-prefix",
            ),
            (
                "db-instance = \"a\"\nendpoint = \"127.0.0.1:5000\"\n",
                "endpoint",
            ),
            (
                "db-instance = \"a\"\npoll-interval = \"1h\"\nrestore-timeout = \"10m\"\n",
                "at most restore-timeout",
            ),
            ("db-instance = \"a\"\nsecret-key = \"x\"\n", "unknown field"),
        ] {
            let err = config(&format!("{base}{bad}")).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
