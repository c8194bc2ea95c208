//! `backupctl prune`: apply each source's `keep` policy.
//!
//! The decisions come from the pure planner in `backup_core::retention`; this module feeds it
//! from the catalog and carries the deletions out. Deleting one backup is crash-safe at every
//! step ([`finish_deletion`]):
//!
//! 1. the catalog marks it `deleting` (refused for held and running backups); from then on
//!    restore, verify and `catalog rebuild` leave it alone;
//! 2. its key envelope is deleted from every repository that holds a copy, which makes every
//!    remaining object unreadable (crypto-shredding), then the rest of its objects;
//! 3. its catalog rows are deleted.
//!
//! A prune or gc that finds a backup still `deleting` repeats 2 and 3, which are idempotent.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupFilter, BackupRecord, BackupStatus, CatalogError, StoredCopy};
use backup_core::retention::{
    self, Action, BackupInfo, BackupState, CopyInfo, PlanOptions, Reason, RetentionPlan,
};
use backup_core::BackupId;
use backup_sinks::Sink;

use crate::config::SourceConfig;
use crate::error::{exit, EngineError, Result};
use crate::gc::{delete_backup_objects, Removed};
use crate::repo::Repository;
use crate::Engine;

#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Only this source (it must be configured); all configured sources when `None`.
    pub source: Option<String>,
    /// Plan and report, delete nothing.
    pub dry_run: bool,
    /// Delete even before archive storage classes' minimum storage durations end.
    pub force: bool,
}

/// Everything a prune decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub force: bool,
    pub sources: Vec<SourcePrune>,
    /// Sources that were not pruned, and why.
    pub skipped: Vec<SkippedSource>,
    pub kept: u64,
    /// Backups the plans delete (in a dry run: would delete).
    pub planned_deletions: u64,
    /// Backups actually deleted.
    pub deleted: u64,
    pub failed: u64,
    pub objects_deleted: u64,
    /// Estimated early-deletion charges of the planned deletions (only with `force`).
    pub early_deletion_charge_usd: f64,
    /// Copies that their copy rule's `keep` no longer keeps (in a dry run: would expire).
    pub copies_expired: Vec<ExpiredCopy>,
}

impl PruneReport {
    pub fn exit_code(&self) -> i32 {
        if self.failed > 0 {
            exit::FAILED
        } else {
            exit::OK
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SkippedSource {
    pub source: String,
    pub reason: String,
}

/// The plan for one source and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct SourcePrune {
    pub source: String,
    pub timezone: String,
    /// The `keep` policy, as written in the config.
    pub policy: String,
    /// Newest first.
    pub backups: Vec<PlannedBackup>,
    pub early_deletion_charge_usd: f64,
    /// PostgreSQL: archived WAL files no retained base backup needs any more (in a dry run:
    /// that would be deleted).
    pub wal_files_expired: u64,
    /// MongoDB: archived oplog slices that end before every retained backup (in a dry run:
    /// that would be deleted).
    pub oplog_slices_expired: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedBackup {
    pub backup_id: BackupId,
    pub status: BackupStatus,
    pub finished_at: Option<DateTime<Utc>>,
    /// `finished_at` on the source's wall clock (the calendar the keep rules use).
    pub finished_local: Option<String>,
    pub tag: Option<String>,
    pub legal_hold: bool,
    pub action: Action,
    pub reasons: Vec<Reason>,
    /// True once a planned deletion was carried out.
    pub deleted: bool,
    /// Why a planned deletion failed (the backup is left for the next prune or gc).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Plans every selected source and, unless `dry_run`, deletes what the plans say.
pub async fn run_prune(
    engine: &Engine,
    options: &PruneOptions,
    cancel: &CancellationToken,
) -> Result<PruneReport> {
    let config = &engine.config;
    let selected: Vec<&SourceConfig> = match &options.source {
        Some(name) => vec![config.source(name)?.1],
        None => config.sources.iter().collect(),
    };
    let mut report = PruneReport {
        dry_run: options.dry_run,
        force: options.force,
        sources: Vec::new(),
        skipped: Vec::new(),
        kept: 0,
        planned_deletions: 0,
        deleted: 0,
        failed: 0,
        objects_deleted: 0,
        early_deletion_charge_usd: 0.0,
        copies_expired: Vec::new(),
    };
    if options.source.is_none() {
        for known in engine.catalog.list_sources().await? {
            if !config.sources.iter().any(|s| s.name == known.name) {
                report.skipped.push(SkippedSource {
                    source: known.name,
                    reason: "not in the config, so it has no `keep` policy; its backups are kept"
                        .into(),
                });
            }
        }
    }
    let now = Utc::now();
    // Planning many sources: read the catalog once rather than twice per source.
    let preloaded = if selected.len() > 1 {
        Some(Preloaded::load(engine).await?)
    } else {
        None
    };
    for source in selected {
        let Some(policy) = &source.keep else {
            report.skipped.push(SkippedSource {
                source: source.name.clone(),
                reason: "no `keep` policy: all its backups are kept".into(),
            });
            continue;
        };
        let (records, plan) =
            plan_source(engine, source, now, options.force, preloaded.as_ref()).await?;
        let timezone = backup_scheduler::parse_timezone(&source.timezone)
            .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
        let mut pruned = SourcePrune {
            source: source.name.clone(),
            timezone: source.timezone.clone(),
            policy: policy.to_string(),
            backups: Vec::new(),
            early_deletion_charge_usd: plan.early_deletion_charge_usd(),
            wal_files_expired: 0,
            oplog_slices_expired: 0,
        };
        for decision in plan.decisions {
            let record = &records[&decision.backup];
            let mut planned = PlannedBackup {
                backup_id: record.id,
                status: record.status,
                finished_at: record.finished_at,
                finished_local: record.finished_at.map(|t| {
                    t.with_timezone(&timezone)
                        .format("%Y-%m-%d %H:%M %Z")
                        .to_string()
                }),
                tag: record.tag.clone(),
                legal_hold: record.legal_hold,
                action: decision.action,
                reasons: decision.reasons,
                deleted: false,
                error: None,
            };
            match decision.action {
                Action::Keep => report.kept += 1,
                Action::Delete => {
                    report.planned_deletions += 1;
                    if !options.dry_run {
                        // Newest first: an incremental goes before the backup it builds on.
                        match finish_deletion(engine, record.id, cancel).await {
                            Ok(removed) => {
                                planned.deleted = true;
                                report.deleted += 1;
                                report.objects_deleted += removed.objects;
                            }
                            Err(e) if cancel.is_cancelled() => return Err(e),
                            Err(e) => {
                                tracing::error!(backup_id = %record.id, "deleting failed: {e}");
                                planned.error = Some(e.to_string());
                                report.failed += 1;
                            }
                        }
                    }
                }
            }
            pruned.backups.push(planned);
        }
        report.early_deletion_charge_usd += pruned.early_deletion_charge_usd;
        // The source's continuous archive (WAL, oplog) is kept as far as kept backups need it.
        let kept: Vec<BackupId> = pruned
            .backups
            .iter()
            .filter(|b| b.action == Action::Keep || b.error.is_some())
            .map(|b| b.backup_id)
            .collect();
        let archive = match source.kind {
            crate::config::SourceKindConfig::Postgres { .. } => Some((
                "WAL",
                expire_wal(engine, source, &kept, options.dry_run, cancel).await,
                &mut pruned.wal_files_expired,
            )),
            crate::config::SourceKindConfig::Mongodb(_) => Some((
                "oplog slices",
                expire_oplog(engine, source, &kept, options.dry_run, cancel).await,
                &mut pruned.oplog_slices_expired,
            )),
            _ => None,
        };
        if let Some((what, result, expired)) = archive {
            match result {
                Ok(n) => *expired = n,
                Err(e) if cancel.is_cancelled() => return Err(e),
                Err(e) => {
                    tracing::error!(source = %source.name, "expiring {what} failed: {e}");
                    report.failed += 1;
                }
            }
        }
        report.sources.push(pruned);
    }
    for source in config
        .sources
        .iter()
        .filter(|s| options.source.as_ref().is_none_or(|only| *only == s.name))
    {
        for rule in source.copy_to.iter().filter(|r| r.keep.is_some()) {
            prune_copies(engine, source, rule, now, options, &mut report, cancel).await?;
        }
    }
    Ok(report)
}

/// Deletes the archived WAL that no kept base backup of `source` needs: everything before
/// the start segment of the oldest kept one (timeline histories are always kept). Without a
/// kept base backup nothing is deleted. Returns how many files went (or would go).
async fn expire_wal(
    engine: &Engine,
    source: &SourceConfig,
    kept: &[BackupId],
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<u64> {
    use backup_sources::postgres::wal::{segments_needed_from, SegmentName, WalFileName};
    let size = source.kind.wal_segment_size().unwrap_or_default();
    let bases = engine.catalog.postgres_backups(&source.name).await?;
    let Some(oldest) = bases
        .iter()
        .filter(|b| kept.contains(&b.backup_id))
        .filter_map(|b| SegmentName::parse(&b.start_wal, size).ok())
        .min_by_key(|s| s.segno)
    else {
        return Ok(0);
    };
    let retention = segments_needed_from(oldest);
    let expired: Vec<_> = engine
        .catalog
        .wal_files(&source.name)
        .await?
        .into_iter()
        .filter(|f| {
            WalFileName::parse(&f.file_name, size).is_ok_and(|name| !retention.is_needed(&name))
        })
        .collect();
    if dry_run || expired.is_empty() {
        return Ok(expired.len() as u64);
    }
    // The catalog first: a crash in between leaves unreferenced objects, never a recorded
    // file without its object.
    let names: Vec<String> = expired.iter().map(|f| f.file_name.clone()).collect();
    let mut objects: Vec<(String, String)> = expired
        .iter()
        .map(|f| (f.repository.clone(), f.object_key.clone()))
        .collect();
    for file in &expired {
        for copy in engine
            .catalog
            .wal_copies(&source.name, &file.file_name)
            .await?
        {
            objects.push((copy.repository, copy.object_key));
        }
    }
    engine
        .catalog
        .forget_wal_files(&source.name, &names)
        .await?;
    delete_objects(engine, &objects, cancel).await?;
    tracing::info!(source = %source.name, files = expired.len(), oldest_needed = %oldest.file_name(size), "WAL expired");
    Ok(expired.len() as u64)
}

/// Deletes the archived oplog slices no kept backup of `source` can replay: those ending at
/// or before the end of the oldest kept backup (a restore replays from a backup's end on).
/// Without a kept backup nothing is deleted. Returns how many slices went (or would go).
async fn expire_oplog(
    engine: &Engine,
    source: &SourceConfig,
    kept: &[BackupId],
    dry_run: bool,
    cancel: &CancellationToken,
) -> Result<u64> {
    let Some(oldest_end) = engine
        .catalog
        .mongo_backups(&source.name)
        .await?
        .into_iter()
        .filter(|b| kept.contains(&b.backup_id))
        .map(|b| b.end)
        .min()
    else {
        return Ok(0);
    };
    let expired: Vec<_> = engine
        .catalog
        .oplog_slices(&source.name)
        .await?
        .into_iter()
        .filter(|s| s.last <= oldest_end)
        .collect();
    if dry_run || expired.is_empty() {
        return Ok(expired.len() as u64);
    }
    // The catalog first: a crash in between leaves unreferenced objects, never a recorded
    // slice without its object.
    let ends: Vec<_> = expired.iter().map(|s| s.last).collect();
    engine
        .catalog
        .forget_oplog_slices(&source.name, &ends)
        .await?;
    let objects: Vec<(String, String)> = expired
        .iter()
        .map(|s| (s.repository.clone(), s.object_key.clone()))
        .collect();
    delete_objects(engine, &objects, cancel).await?;
    tracing::info!(source = %source.name, slices = expired.len(), "oplog slices expired");
    Ok(expired.len() as u64)
}

/// Deletes `(repository, object key)` pairs, opening each repository once.
async fn delete_objects(
    engine: &Engine,
    objects: &[(String, String)],
    cancel: &CancellationToken,
) -> Result<()> {
    let mut repos: HashMap<String, Repository> = HashMap::new();
    for (repository, object_key) in objects {
        if !repos.contains_key(repository) {
            let repo = Repository::open_named(&engine.config, repository).await?;
            repos.insert(repository.clone(), repo);
        }
        repos[repository].sink.delete(object_key, cancel).await?;
    }
    Ok(())
}

/// A copy that a copy rule's `keep` no longer keeps.
#[derive(Debug, Clone, Serialize)]
pub struct ExpiredCopy {
    pub backup_id: BackupId,
    pub source: String,
    pub repository: String,
    /// True once the copy was forgotten and its objects deleted.
    pub deleted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Applies a copy rule's `keep` to the copies in its repository: expired copies are
/// forgotten by the catalog (refused while the backup is held or if it is the last copy),
/// then their objects are deleted from that repository only.
async fn prune_copies(
    engine: &Engine,
    source: &SourceConfig,
    rule: &crate::config::CopyRule,
    now: DateTime<Utc>,
    options: &PruneOptions,
    report: &mut PruneReport,
    cancel: &CancellationToken,
) -> Result<()> {
    let policy = rule.keep.clone().unwrap_or_default();
    let timezone = backup_scheduler::parse_timezone(&source.timezone)
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
    let mut copies: HashMap<BackupId, Vec<CopyInfo>> = HashMap::new();
    for c in engine.catalog.stored_copies(&source.name).await? {
        if c.repository == rule.to {
            copies.entry(c.backup_id).or_default().push(copy_info(c));
        }
    }
    let records = engine
        .catalog
        .list_backups(&BackupFilter {
            source: Some(source.name.clone()),
            status: Some(BackupStatus::Complete),
        })
        .await?;
    let infos: Vec<BackupInfo> = records
        .iter()
        .filter_map(|r| Some(backup_info(&engine.config, r, copies.remove(&r.id)?)))
        .collect();
    let plan_options = PlanOptions {
        force: options.force,
        ..PlanOptions::new(now, timezone)
    };
    let plan = retention::plan(&infos, &policy, &plan_options).map_err(|e| {
        EngineError::Failed(format!(
            "planning retention of {}'s copies in {}: {e}",
            source.name, rule.to
        ))
    })?;
    for decision in plan.decisions {
        if decision.action != Action::Delete {
            continue;
        }
        let mut expired = ExpiredCopy {
            backup_id: decision.backup,
            source: source.name.clone(),
            repository: rule.to.clone(),
            deleted: false,
            error: None,
        };
        if !options.dry_run {
            match expire_copy(engine, decision.backup, &rule.to, cancel).await {
                Ok(removed) => {
                    expired.deleted = true;
                    report.objects_deleted += removed.objects;
                }
                Err(e) if cancel.is_cancelled() => return Err(e),
                Err(e) => {
                    tracing::error!(backup_id = %decision.backup, repository = %rule.to,
                        "expiring the copy failed: {e}");
                    expired.error = Some(e.to_string());
                    report.failed += 1;
                }
            }
        }
        report.copies_expired.push(expired);
    }
    Ok(())
}

/// Forgets, then deletes, one backup's copy in `repository`.
async fn expire_copy(
    engine: &Engine,
    id: BackupId,
    repository: &str,
    cancel: &CancellationToken,
) -> Result<Removed> {
    let repo = Repository::open_named(&engine.config, repository).await?;
    // The catalog first: from then on nothing restores from this copy.
    engine.catalog.forget_copies(id, repository).await?;
    let removed = delete_backup_objects(&repo, id, cancel).await?;
    tracing::info!(backup_id = %id, repository, objects = removed.objects, "copy expired");
    Ok(removed)
}

/// Every backup and copy in the catalog, grouped for planning many sources.
struct Preloaded {
    backups: HashMap<String, Vec<BackupRecord>>,
    copies: HashMap<BackupId, Vec<backup_catalog::StoredCopy>>,
}

impl Preloaded {
    async fn load(engine: &Engine) -> Result<Preloaded> {
        let mut backups: HashMap<String, Vec<BackupRecord>> = HashMap::new();
        for b in engine
            .catalog
            .list_backups(&BackupFilter::default())
            .await?
        {
            backups.entry(b.source.clone()).or_default().push(b);
        }
        let mut copies: HashMap<BackupId, Vec<backup_catalog::StoredCopy>> = HashMap::new();
        for c in engine.catalog.all_stored_copies().await? {
            copies.entry(c.backup_id).or_default().push(c);
        }
        Ok(Preloaded { backups, copies })
    }
}

/// Reads `source`'s backups and copies (from the catalog, or `preloaded`) and plans them.
async fn plan_source(
    engine: &Engine,
    source: &SourceConfig,
    now: DateTime<Utc>,
    force: bool,
    preloaded: Option<&Preloaded>,
) -> Result<(HashMap<BackupId, BackupRecord>, RetentionPlan)> {
    let policy = source.keep.clone().unwrap_or_default();
    let timezone = backup_scheduler::parse_timezone(&source.timezone)
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
    let mut copies: HashMap<BackupId, Vec<CopyInfo>> = HashMap::new();
    let records = match preloaded {
        Some(p) => {
            let records = p.backups.get(&source.name).cloned().unwrap_or_default();
            for r in &records {
                if let Some(c) = p.copies.get(&r.id) {
                    copies.insert(r.id, c.iter().cloned().map(copy_info).collect());
                }
            }
            records
        }
        None => {
            for c in engine.catalog.stored_copies(&source.name).await? {
                copies.entry(c.backup_id).or_default().push(copy_info(c));
            }
            engine
                .catalog
                .list_backups(&BackupFilter {
                    source: Some(source.name.clone()),
                    status: None,
                })
                .await?
        }
    };
    let mut infos: Vec<BackupInfo> = records
        .iter()
        .map(|r| backup_info(&engine.config, r, copies.remove(&r.id).unwrap_or_default()))
        .collect();
    // An incremental base backup needs the one it builds on.
    for pg in engine.catalog.postgres_backups(&source.name).await? {
        if let (Some(parent), Some(info)) = (
            pg.parent_backup_id,
            infos.iter_mut().find(|b| b.id == pg.backup_id),
        ) {
            info.depends_on = Some(parent);
        }
    }
    // The planner's "newest" goes by finish time; `restore --latest` picks the latest start.
    // Should two overlapping backups disagree, keep both.
    let newest_finished = infos
        .iter()
        .filter(|b| b.state == BackupState::Complete)
        .max_by_key(|b| (b.finished_at, b.id))
        .map(|b| b.id);
    if let Some(latest) = engine.catalog.latest_complete_backup(&source.name).await? {
        if newest_finished != Some(latest.id) {
            if let Some(b) = infos.iter_mut().find(|b| b.id == latest.id) {
                b.pinned_by =
                    Some("latest complete backup by start time (restore --latest)".into());
            }
        }
    }
    let options = PlanOptions {
        force,
        ..PlanOptions::new(now, timezone)
    };
    let plan = retention::plan(&infos, &policy, &options)
        .map_err(|e| EngineError::Failed(format!("planning retention of {}: {e}", source.name)))?;
    let records = records.into_iter().map(|r| (r.id, r)).collect();
    Ok((records, plan))
}

/// What the retention planner knows of a backup and the `copies` it plans over.
fn backup_info(config: &crate::Config, r: &BackupRecord, copies: Vec<CopyInfo>) -> BackupInfo {
    BackupInfo {
        id: r.id,
        finished_at: r.finished_at.unwrap_or(r.started_at),
        state: state_of(r.status),
        tag: r.tag.clone(),
        legal_hold: r.legal_hold,
        object_lock_until: object_lock_until(config, &copies),
        // Every backup is a full backup today.
        depends_on: None,
        pinned_by: None,
        copies,
    }
}

/// When the last S3 Object Lock retention on any of these copies ends: the store refuses to
/// delete a locked object version before then, so retention keeps the backup until then.
fn object_lock_until(config: &crate::Config, copies: &[CopyInfo]) -> Option<DateTime<Utc>> {
    copies
        .iter()
        .filter_map(|c| {
            let days = lock_days(config, &c.repository)?;
            c.created_at
                .checked_add_signed(chrono::Duration::days(i64::from(days)))
        })
        .max()
}

/// The Object Lock retention (days) of a configured S3 repository, if it has one.
pub(crate) fn lock_days(config: &crate::Config, repository: &str) -> Option<u32> {
    match &config.repository(repository).ok()?.kind {
        crate::config::RepositoryKindConfig::S3 { object_lock, .. } => {
            object_lock.as_ref().map(|l| l.days)
        }
        crate::config::RepositoryKindConfig::Local { .. } => None,
    }
}

fn state_of(status: BackupStatus) -> BackupState {
    match status {
        BackupStatus::Complete => BackupState::Complete,
        BackupStatus::Running => BackupState::Running,
        BackupStatus::Failed | BackupStatus::Abandoned => BackupState::Failed,
        BackupStatus::Deleting => BackupState::Deleting,
    }
}

fn copy_info(c: StoredCopy) -> CopyInfo {
    CopyInfo {
        repository: c.repository,
        storage_class: c.storage_class,
        created_at: c.created_at,
        bytes: c.stored_size,
    }
}

/// Deletes a finished backup everywhere: marks it `deleting`, deletes its key envelope from
/// every repository holding a copy (from then on nothing left is readable), then the rest of
/// its objects, then its catalog rows. Refuses held and running backups. Safe to repeat after
/// a crash at any point, and against a backup someone else finished deleting meanwhile.
pub async fn finish_deletion(
    engine: &Engine,
    id: BackupId,
    cancel: &CancellationToken,
) -> Result<Removed> {
    let record = match engine.catalog.mark_deleting(id).await {
        Ok(record) => record,
        Err(CatalogError::BackupNotFound { .. }) => return Ok(Removed::default()),
        Err(e) => return Err(e.into()),
    };
    let artifacts = match engine.catalog.backup_artifacts(id).await {
        Ok(artifacts) => artifacts,
        Err(CatalogError::BackupNotFound { .. }) => return Ok(Removed::default()),
        Err(e) => return Err(e.into()),
    };
    // Copy destinations too: a copy cut short may have written objects it never recorded.
    let queued = engine.catalog.copy_destinations(id).await?;
    let names: BTreeSet<&str> = std::iter::once(record.repository.as_str())
        .chain(
            artifacts
                .iter()
                .flat_map(|a| a.copies.iter().map(|c| c.repository.as_str())),
        )
        .chain(
            queued
                .iter()
                .map(String::as_str)
                .filter(|name| engine.config.repository(name).is_ok()),
        )
        .collect();
    // Open them all first: one that cannot be reached leaves every copy in place.
    let mut repos = Vec::new();
    for name in names {
        let repo = Repository::open_named(&engine.config, name)
            .await
            .map_err(|e| {
                EngineError::Failed(format!(
                    "backup {id} has objects in repository {name}, which cannot be opened ({e}); \
                     it stays `deleting` until a prune or gc can reach every repository"
                ))
            })?;
        repos.push(repo);
    }
    // An Atlas source's snapshot goes with its backup (retried while Atlas cannot be reached).
    crate::mongo::atlas::delete_backup_snapshot(engine, &record.source, id).await?;
    // Elasticsearch: the snapshot in the cluster goes first (its record below still names it).
    if engine.catalog.elasticsearch_snapshot(id).await?.is_some() {
        crate::elasticsearch::delete_backup_snapshot(engine, &record.source, id)
            .await
            .map_err(|e| {
                EngineError::Failed(format!(
                    "backup {id}: deleting its Elasticsearch snapshot failed ({e}); it stays \
                     `deleting` until a prune or gc can reach the cluster"
                ))
            })?;
    }
    // RDS: both snapshots (the source region's and the copy) go first, as above.
    if !engine.catalog.rds_snapshots(id).await?.is_empty() {
        crate::rds::delete_backup_snapshots(engine, &record.source, id)
            .await
            .map_err(|e| {
                EngineError::Failed(format!(
                    "backup {id}: deleting its RDS snapshots failed ({e}); it stays \
                     `deleting` until a prune or gc can reach RDS"
                ))
            })?;
    }
    // Azure SQL: the bacpac the backup exported goes first, as above (Azure's own backups
    // are Azure's: never touched).
    if engine
        .catalog
        .azure_sql_backup(id)
        .await?
        .is_some_and(|r| r.export_blob_url.is_some())
    {
        crate::azure_sql::delete_backup_export(engine, &record.source, id)
            .await
            .map_err(|e| {
                EngineError::Failed(format!(
                    "backup {id}: deleting its bacpac failed ({e}); it stays `deleting` until \
                     a prune or gc can reach Blob Storage"
                ))
            })?;
    }
    for repo in &repos {
        crate::keys::delete_envelopes(repo, id, cancel)
            .await
            .map_err(|e| {
                EngineError::Failed(format!(
                    "deleting the key envelope of backup {id} from repository {}: {e}",
                    repo.name
                ))
            })?;
    }
    let mut removed = Removed::default();
    for repo in &repos {
        removed += delete_backup_objects(repo, id, cancel).await?;
    }
    match engine.catalog.delete_backup(id).await {
        Ok(()) | Err(CatalogError::BackupNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(backup_id = %id, source = %record.source, objects = removed.objects, "backup deleted");
    Ok(removed)
}

/// Finishes every backup left `deleting` by an interrupted prune; returns their ids.
pub async fn finish_interrupted_deletions(
    engine: &Engine,
    cancel: &CancellationToken,
) -> Result<(Vec<BackupId>, Removed)> {
    let deleting = engine
        .catalog
        .list_backups(&BackupFilter {
            source: None,
            status: Some(BackupStatus::Deleting),
        })
        .await?;
    let mut removed = Removed::default();
    let mut finished = Vec::new();
    for b in deleting {
        tracing::warn!(backup_id = %b.id, source = %b.source, "finishing an interrupted deletion");
        removed += finish_deletion(engine, b.id, cancel).await?;
        finished.push(b.id);
    }
    Ok((finished, removed))
}

/// `backupctl hold` / `unhold`: sets or clears a backup's legal hold, in the catalog and on
/// its objects in every S3 repository with Object Lock (where the store itself then refuses
/// to delete them). A hold is set in the catalog first and cleared there last, so a failure
/// half way always leaves the backup held.
pub async fn set_legal_hold(
    engine: &Engine,
    backup: &str,
    hold: bool,
    cancel: &CancellationToken,
) -> Result<BackupRecord> {
    let record = engine.catalog.find_backup_by_prefix(backup).await?;
    let id = record.id;
    let record = if hold {
        engine.catalog.set_legal_hold(id, true).await?
    } else {
        record
    };
    let artifacts = engine.catalog.backup_artifacts(id).await?;
    let mut keys: HashMap<&str, Vec<String>> = HashMap::new();
    for c in artifacts.iter().flat_map(|a| &a.copies) {
        if lock_days(&engine.config, &c.repository).is_some() {
            keys.entry(c.repository.as_str())
                .or_default()
                .push(c.object_key.clone());
        }
    }
    for (repository, mut keys) in keys {
        let repo = Repository::open_named(&engine.config, repository).await?;
        // The key envelopes too (a rotated backup's is keys-KEY.json).
        keys.extend(crate::keys::envelope_objects(&repo, id, cancel).await?);
        let backup_sinks::AnySink::S3(s3) = &repo.sink else {
            continue;
        };
        for key in &keys {
            s3.set_legal_hold(key, hold, cancel).await.map_err(|e| {
                EngineError::Failed(format!(
                    "{} the S3 legal hold of backup {id} in repository {repository}: {e}{}",
                    if hold { "setting" } else { "clearing" },
                    if hold {
                        "; the backup is held in the catalog, so prune keeps it; run `backupctl hold` again"
                    } else {
                        "; the backup stays held; run `backupctl unhold` again"
                    }
                ))
            })?;
        }
        tracing::info!(backup_id = %id, repository, objects = keys.len(), hold, "S3 legal hold updated");
    }
    if hold {
        Ok(record)
    } else {
        Ok(engine.catalog.set_legal_hold(id, false).await?)
    }
}
