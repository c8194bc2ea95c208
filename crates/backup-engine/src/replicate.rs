//! Replication: copy completed backups to the other repositories named by a source's
//! `copy-to` rules, from the persisted queue in the catalog.
//!
//! A copy streams each artifact from a repository that holds it straight into the
//! destination (bounded channels, no temp file). It is recorded only after the destination
//! confirmed a durable write whose SHA-256, computed while storing, equals the checksum the
//! catalog holds for the artifact; the destination also checked every part's
//! `x-amz-checksum-sha256` (S3) or fsynced the file (local). The key envelope goes last, so
//! the destination on its own is a complete, self-describing repository for the backup.
//!
//! A copier killed mid-way leaves its queue row leased: the next copier on the same host
//! sees the dead process and takes it over at once, others when the lease expires. Artifacts
//! already recorded are not copied again, and a half-written object is never visible.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{
    ArtifactWithCopies, BackupStatus, CopyRecord, CopyTarget, CopyTask, DestinationLag,
};
use backup_core::BackupId;
use backup_sinks::{put_bytes, read_object, Sink};

use crate::config::SourceConfig;
use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::{Engine, Progress};

/// How long a claimed copy stays ours without renewal.
const LEASE: Duration = Duration::from_secs(120);
const RENEW_EVERY: Duration = Duration::from_secs(30);
/// Retry delays of a failed copy: doubling from a minute up to an hour (with jitter).
const RETRY_BASE: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// What one copy attempt did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyOutcome {
    pub backup_id: BackupId,
    pub source: String,
    pub from: String,
    pub destination: String,
    pub storage_class: Option<String>,
    pub artifacts_copied: u64,
    pub bytes_copied: u64,
    pub seconds: f64,
    /// Set when the copy failed; it stays queued and is retried later.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ReplicationReport {
    pub copies: Vec<CopyOutcome>,
    /// Archived WAL files copied to other repositories (PostgreSQL sources).
    pub wal_files_copied: u64,
    pub wal_bytes_copied: u64,
    /// WAL files whose copy failed, with why (retried on the next run).
    pub wal_failures: Vec<String>,
}

impl ReplicationReport {
    pub fn failed(&self) -> impl Iterator<Item = &CopyOutcome> {
        self.copies.iter().filter(|c| c.error.is_some())
    }

    pub fn any_failed(&self) -> bool {
        self.failed().next().is_some() || !self.wal_failures.is_empty()
    }
}

/// The repositories a postgres source's archived WAL is copied to: its `copy-to` rules that
/// copy every backup into a readable class (a weekly deep-archive rule gets no WAL).
pub fn wal_destinations(source: &SourceConfig) -> Vec<&str> {
    source
        .copy_to
        .iter()
        .filter(|r| r.only.is_none() && !is_archive_class(r.storage_class.as_deref()))
        .map(|r| r.to.as_str())
        .collect()
}

/// Every postgres source of `config` with each repository its WAL is copied to.
fn wal_routes(config: &crate::config::Config) -> impl Iterator<Item = (&SourceConfig, &str)> {
    config
        .sources
        .iter()
        .filter(|s| matches!(s.kind, crate::config::SourceKindConfig::Postgres { .. }))
        .flat_map(|s| wal_destinations(s).into_iter().map(move |d| (s, d)))
}

/// Copies every archived WAL file not yet copied to the source's WAL destinations. WAL
/// objects are sealed (they carry their own wrapped key), so they are copied byte for byte
/// and recorded once the copy's SHA-256 equals the original's.
async fn copy_wal(
    engine: &Engine,
    report: &mut ReplicationReport,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<()> {
    for (source, destination) in wal_routes(&engine.config) {
        let pending = engine
            .catalog
            .wal_files_without_copy(&source.name, destination)
            .await?;
        if pending.is_empty() {
            continue;
        }
        let dest = Repository::open_named(&engine.config, destination).await?;
        let mut sources: std::collections::HashMap<String, Repository> = Default::default();
        for file in pending {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if !sources.contains_key(&file.repository) {
                let repo = Repository::open_named(&engine.config, &file.repository).await?;
                sources.insert(file.repository.clone(), repo);
            }
            let src = &sources[&file.repository];
            let copied = async {
                let receipt = copy_verified(
                    src,
                    &dest,
                    &file.object_key,
                    (file.stored_size, &file.stored_sha256),
                    |_| {
                        format!(
                            "WAL file {} of {}: the object read from {} does not match the \
                                 checksum recorded at push time",
                            file.file_name, source.name, file.repository
                        )
                    },
                    cancel,
                )
                .await?;
                engine
                    .catalog
                    .record_wal_copy(&backup_catalog::WalFileCopy {
                        source: source.name.clone(),
                        file_name: file.file_name.clone(),
                        repository: destination.to_owned(),
                        object_key: file.object_key.clone(),
                        stored_size: receipt.size,
                        stored_sha256: receipt.sha256_hex(),
                        copied_at: Utc::now(),
                    })
                    .await?;
                Ok::<_, EngineError>(receipt.size)
            }
            .await;
            match copied {
                Ok(bytes) => {
                    report.wal_files_copied += 1;
                    report.wal_bytes_copied += bytes;
                    progress.add_bytes(bytes);
                }
                Err(e) => {
                    tracing::error!(source = %source.name, file = %file.file_name, destination, error = %e, "WAL copy failed");
                    report.wal_failures.push(format!(
                        "{} {} to {destination}: {e}",
                        source.name, file.file_name
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The copies a new backup of `source` tagged `tag` must get.
pub fn copy_targets(source: &SourceConfig, tag: Option<&str>) -> Vec<CopyTarget> {
    source
        .copy_to
        .iter()
        .filter(|rule| rule.applies_to(tag))
        .map(|rule| CopyTarget {
            destination: rule.to.clone(),
            storage_class: rule.storage_class.clone(),
        })
        .collect()
}

/// This process's lease owner name: `host:pid:random`, so a copier on the same host can tell
/// that an owner's process is gone.
fn owner_name() -> String {
    format!(
        "{}:{}:{:08x}",
        crate::host_name(),
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Whether `owner` names a process on this host that no longer runs.
fn owner_is_dead_here(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_, pid, host) = (parts.next(), parts.next(), parts.next());
    match (host, pid.and_then(|p| p.parse::<u32>().ok())) {
        (Some(host), Some(pid)) => {
            host == crate::host_name()
                && pid != std::process::id()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => false,
    }
}

/// Copies every due, queued copy (only those of `only` if given) and returns what happened.
/// Failed copies are recorded with a retry time and stay queued; `Err` means the queue
/// itself could not be worked (catalog or key problems).
pub async fn run_replication(
    engine: &Engine,
    only: Option<BackupId>,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<ReplicationReport> {
    let owner = owner_name();
    release_dead_owners(engine).await?;
    let mut report = ReplicationReport::default();
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let Some(task) = engine
            .catalog
            .claim_copy(&owner, Utc::now(), LEASE, only)
            .await?
        else {
            break;
        };
        let outcome = copy_with_lease(engine, &owner, &task, &progress, cancel).await?;
        report.copies.push(outcome);
    }
    if only.is_none() {
        copy_wal(engine, &mut report, &progress, cancel).await?;
    }
    Ok(report)
}

/// Hands back copies leased by processes of this host that died (kill -9, crash).
async fn release_dead_owners(engine: &Engine) -> Result<()> {
    for task in engine.catalog.copy_tasks(true).await? {
        if let Some(owner) = task.lease_owner.as_deref() {
            if owner_is_dead_here(owner) {
                tracing::warn!(backup_id = %task.backup_id, destination = %task.destination, %owner,
                    "taking over a copy whose copier died");
                engine
                    .catalog
                    .release_copy(task.backup_id, &task.destination, owner)
                    .await?;
            }
        }
    }
    Ok(())
}

async fn copy_with_lease(
    engine: &Engine,
    owner: &str,
    task: &CopyTask,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<CopyOutcome> {
    let copy_cancel = cancel.child_token();
    let renewal = {
        let (catalog, owner, task, lost) = (
            engine.catalog.clone(),
            owner.to_owned(),
            task.clone(),
            copy_cancel.clone(),
        );
        let stop = CancellationToken::new();
        let guard = stop.clone().drop_guard();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        let renewed = catalog
                            .renew_copy_lease(task.backup_id, &task.destination, &owner, Utc::now(), LEASE)
                            .await;
                        if !matches!(renewed, Ok(true)) {
                            tracing::warn!(backup_id = %task.backup_id, destination = %task.destination,
                                "lost the lease on a copy; stopping it");
                            lost.cancel();
                            break;
                        }
                    }
                }
            }
        });
        guard
    };
    let started = Instant::now();
    let mut outcome = CopyOutcome {
        backup_id: task.backup_id,
        source: String::new(),
        from: String::new(),
        destination: task.destination.clone(),
        storage_class: task.storage_class.clone(),
        artifacts_copied: 0,
        bytes_copied: 0,
        seconds: 0.0,
        error: None,
    };
    let result = copy_backup(engine, task, &mut outcome, progress, &copy_cancel).await;
    drop(renewal);
    outcome.seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            let total = outcome.bytes_copied;
            if !engine
                .catalog
                .finish_copy(task.backup_id, &task.destination, owner, Utc::now(), total)
                .await?
            {
                outcome.error = Some("another copier took this copy over".into());
            }
            tracing::info!(backup_id = %task.backup_id, destination = %task.destination,
                bytes = outcome.bytes_copied, "copy complete");
        }
        Err(e) => {
            let attempt = u32::try_from(task.attempts).unwrap_or(u32::MAX);
            let delay = backup_scheduler::backoff(
                attempt,
                RETRY_BASE,
                RETRY_MAX,
                backup_scheduler::seed(&format!("{}{}", task.backup_id, task.destination)),
            );
            let retry_at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
            let message = e.to_string();
            tracing::error!(backup_id = %task.backup_id, destination = %task.destination,
                error = %message, %retry_at, "copy failed");
            engine
                .catalog
                .fail_copy(task.backup_id, &task.destination, owner, &message, retry_at)
                .await?;
            // Key problems concern every copy: stop instead of failing them one by one.
            if matches!(e, EngineError::Key(_)) {
                return Err(e);
            }
            outcome.error = Some(message);
        }
    }
    Ok(outcome)
}

/// Copies the artifacts of `task`'s backup that the destination does not hold yet, then its
/// key envelope.
async fn copy_backup(
    engine: &Engine,
    task: &CopyTask,
    outcome: &mut CopyOutcome,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<()> {
    let config = &engine.config;
    let id = task.backup_id;
    let record = engine
        .catalog
        .get_backup(id)
        .await?
        .filter(|b| b.status == BackupStatus::Complete)
        .ok_or_else(|| EngineError::Failed(format!("backup {id} is no longer complete")))?;
    outcome.source = record.source.clone();
    let dest_config = config.repository(&task.destination)?;
    // Manifests and envelopes keep the repository's class; data objects get the rule's.
    let dest = Repository::open(config, dest_config).await?;
    let dest_data = match &task.storage_class {
        Some(class) => Repository::open_with_class(config, dest_config, Some(class)).await?,
        None => Repository::open(config, dest_config).await?,
    };
    let key = engine.key()?;
    if !dest.check_key(&key, cancel).await? {
        return Err(EngineError::Failed(format!(
            "repository {} has not been initialised; run `backupctl init`",
            dest.name
        )));
    }
    let artifacts = engine.catalog.backup_artifacts(id).await?;
    let from = source_repository(config, &record.repository, &task.destination, &artifacts)?;
    outcome.from = from.clone();
    let src = Repository::open_named(config, &from).await?;
    for artifact in &artifacts {
        if artifact
            .copies
            .iter()
            .any(|c| c.repository == task.destination)
        {
            continue;
        }
        let src_copy = artifact
            .copies
            .iter()
            .find(|c| c.repository == from)
            .expect("source_repository picked a repository holding every artifact");
        let is_data = artifact.artifact.role != "manifest";
        let target = if is_data { &dest_data } else { &dest };
        let receipt = copy_verified(
            &src,
            target,
            &src_copy.object_key,
            (src_copy.stored_size, &src_copy.stored_sha256),
            |receipt| {
                format!(
                    "copying backup {id} artifact {} from repository {from} to {}: read {} \
                     bytes with SHA-256 {}, the catalog recorded {} bytes with SHA-256 {}; the \
                     copy in {from} is damaged (run `backupctl verify {id}`)",
                    artifact.artifact.id,
                    task.destination,
                    receipt.size,
                    receipt.sha256_hex(),
                    src_copy.stored_size,
                    src_copy.stored_sha256
                )
            },
            cancel,
        )
        .await?;
        let storage_class = if is_data {
            task.storage_class
                .clone()
                .or_else(|| configured_class(dest_config))
        } else {
            configured_class(dest_config)
        };
        engine
            .catalog
            .record_copy(&CopyRecord {
                artifact_id: artifact.artifact.id,
                repository: task.destination.clone(),
                object_key: src_copy.object_key.clone(),
                stored_size: receipt.size,
                stored_sha256: receipt.sha256_hex(),
                storage_class,
                verified_at: Utc::now(),
            })
            .await?;
        outcome.artifacts_copied += 1;
        outcome.bytes_copied += receipt.size;
        progress.add_bytes(receipt.size);
    }
    // Every envelope the source holds (two only while a key rotation of it is under way).
    for envelope_key in crate::keys::envelope_objects(&src, id, cancel).await? {
        let envelope = read_object(&src.sink, &envelope_key, cancel).await?;
        put_bytes(&dest.sink, &envelope_key, envelope, cancel).await?;
    }
    Ok(())
}

/// Streams object `key` from `src` into `dest` (bounded buffers, no temp file) and checks
/// that what `dest` stored has the `(size, SHA-256)` recorded for it. A mismatching copy is
/// deleted again, so damage in the source is never propagated; the error says `mismatch`.
async fn copy_verified(
    src: &Repository,
    dest: &Repository,
    key: &str,
    (expected_size, expected_sha256): (u64, &str),
    mismatch: impl FnOnce(&backup_sinks::PutReceipt) -> String,
    cancel: &CancellationToken,
) -> Result<backup_sinks::PutReceipt> {
    let body = src.sink.get(key, cancel).await?;
    let receipt = dest.sink.put(key, body, cancel).await?;
    if receipt.size != expected_size || receipt.sha256_hex() != expected_sha256 {
        let _ = dest.sink.delete(key, cancel).await;
        return Err(EngineError::Integrity(mismatch(&receipt)));
    }
    Ok(receipt)
}

/// The configured storage class of a repository (S3), as recorded with its copies.
fn configured_class(repo: &crate::config::RepositoryConfig) -> Option<String> {
    match &repo.kind {
        crate::config::RepositoryKindConfig::S3 { storage_class, .. } => storage_class.clone(),
        crate::config::RepositoryKindConfig::Local { .. } => None,
    }
}

/// Where to read a backup from for copying: its primary repository if that holds every
/// artifact, else another configured repository that does and needs no thaw.
fn source_repository(
    config: &crate::Config,
    primary: &str,
    destination: &str,
    artifacts: &[ArtifactWithCopies],
) -> Result<String> {
    let holds_all = |repo: &str| {
        artifacts.iter().all(|a| {
            a.copies
                .iter()
                .any(|c| c.repository == repo && !is_archive_class(c.storage_class.as_deref()))
        })
    };
    std::iter::once(primary)
        .chain(config.repositories.iter().map(|r| r.name.as_str()))
        .filter(|name| *name != destination)
        .find(|name| config.repository(name).is_ok() && holds_all(name))
        .map(str::to_owned)
        .ok_or_else(|| {
            EngineError::Failed(format!(
                "no configured repository holds a readable copy of every artifact to copy to \
                 {destination}"
            ))
        })
}

/// Storage classes whose objects must be restored (thawed) before they can be read.
pub fn is_archive_class(class: Option<&str>) -> bool {
    matches!(class, Some("GLACIER" | "DEEP_ARCHIVE"))
}

/// Where a backup's copies live, as `backupctl list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CopyPlace {
    pub repository: String,
    /// The data objects' storage class, when the repository has classes and one was set.
    pub storage_class: Option<String>,
    /// Holds every artifact of the backup (false while a copy is under way).
    pub complete: bool,
}

/// The copies of every backup (of `source` if given), by backup, primary repository first.
pub async fn copy_places(
    engine: &Engine,
    source: Option<&str>,
) -> Result<std::collections::HashMap<BackupId, Vec<CopyPlace>>> {
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    let copies = match source {
        Some(source) => engine.catalog.stored_copies(source).await?,
        None => engine.catalog.all_stored_copies().await?,
    };
    let mut by_backup: HashMap<BackupId, Vec<_>> = HashMap::new();
    for copy in copies {
        by_backup.entry(copy.backup_id).or_default().push(copy);
    }
    Ok(by_backup
        .into_iter()
        .map(|(id, copies)| {
            let artifacts: BTreeSet<_> = copies.iter().map(|c| c.artifact_id).collect();
            let mut repos: BTreeMap<&str, (usize, Option<String>)> = BTreeMap::new();
            for c in &copies {
                let entry = repos.entry(c.repository.as_str()).or_default();
                entry.0 += 1;
                if entry.1.is_none() || is_archive_class(c.storage_class.as_deref()) {
                    entry.1 = c.storage_class.clone();
                }
            }
            let mut places: Vec<CopyPlace> = repos
                .into_iter()
                .map(|(repo, (count, class))| CopyPlace {
                    repository: repo.to_owned(),
                    storage_class: class,
                    complete: count == artifacts.len(),
                })
                .collect();
            // Config order (the primary is usually first there), unknown repositories last.
            let rank = |name: &str| {
                engine
                    .config
                    .repositories
                    .iter()
                    .position(|r| r.name == name)
                    .unwrap_or(usize::MAX)
            };
            places.sort_by_key(|p| rank(&p.repository));
            (id, places)
        })
        .collect())
}

/// One destination in `backupctl replication status`.
#[derive(Debug, Clone, Serialize)]
pub struct DestinationStatus {
    #[serde(flatten)]
    pub lag: DestinationLag,
    /// How long the oldest backup not yet copied there has been waiting (0 = caught up).
    pub lag_seconds: u64,
}

/// One postgres source's archived WAL in one destination, in `backupctl replication status`.
#[derive(Debug, Clone, Serialize)]
pub struct WalDestinationStatus {
    #[serde(flatten)]
    pub lag: backup_catalog::WalCopyLag,
    /// How long the oldest WAL file not yet copied there has been waiting (0 = caught up).
    pub lag_seconds: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    pub destinations: Vec<DestinationStatus>,
    /// Archived WAL copies, per postgres source and WAL destination.
    pub wal: Vec<WalDestinationStatus>,
    /// Pending copies that failed at least once, with their last error.
    pub failing: Vec<CopyTask>,
}

/// Replication lag per destination (every `copy-to` destination of the config, plus any
/// with queued copies), and the copies that keep failing.
pub async fn replication_status(engine: &Engine) -> Result<ReplicationStatus> {
    let now = Utc::now();
    let mut lags = engine.catalog.replication_lag().await?;
    for rule in engine.config.sources.iter().flat_map(|s| &s.copy_to) {
        if !lags.iter().any(|l| l.destination == rule.to) {
            lags.push(DestinationLag {
                destination: rule.to.clone(),
                pending: 0,
                pending_bytes: 0,
                failing: 0,
                done: 0,
                oldest_pending_since: None,
                last_copied_at: None,
            });
        }
    }
    lags.sort_by(|a, b| a.destination.cmp(&b.destination));
    let destinations = lags
        .into_iter()
        .map(|lag| DestinationStatus {
            lag_seconds: lag.lag_seconds(now),
            lag,
        })
        .collect();
    let failing = engine
        .catalog
        .copy_tasks(true)
        .await?
        .into_iter()
        .filter(|t| t.attempts > 0)
        .collect();
    Ok(ReplicationStatus {
        destinations,
        wal: wal_copy_status(engine, now).await?,
        failing,
    })
}

/// WAL copy lag of every postgres source to each of its WAL destinations.
pub async fn wal_copy_status(
    engine: &Engine,
    now: chrono::DateTime<Utc>,
) -> std::result::Result<Vec<WalDestinationStatus>, backup_catalog::CatalogError> {
    let mut out = Vec::new();
    for (source, destination) in wal_routes(&engine.config) {
        let lag = engine
            .catalog
            .wal_copy_lag(&source.name, destination)
            .await?;
        out.push(WalDestinationStatus {
            lag_seconds: lag.lag_seconds(now),
            lag,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_owner_detection_needs_this_host_and_a_gone_pid() {
        let host = crate::host_name();
        // pid 0 never names a user process in /proc.
        assert!(owner_is_dead_here(&format!("{host}:999999999:abcd")));
        assert!(!owner_is_dead_here(&format!("{host}:1:abcd")));
        assert!(!owner_is_dead_here(&format!(
            "{host}:{}:abcd",
            std::process::id()
        )));
        assert!(!owner_is_dead_here("other-host:999999999:abcd"));
        assert!(!owner_is_dead_here("garbage"));
        assert!(owner_name().starts_with(&format!("{host}:{}:", std::process::id())));
    }
}
