//! `backupctl gc`: clean up after interrupted or failed backups, and finish deletions an
//! interrupted `backupctl prune` left `deleting`.
//!
//! Only objects of backups the catalog knows to be failed or interrupted are
//! deleted. Backup folders the catalog does not know are reported, never
//! deleted: with a lost catalog they may be the only copy (rebuild instead).

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupFilter, BackupRecord, BackupStatus};
use backup_core::manifest::layout;
use backup_core::BackupId;
use backup_sinks::Sink;

use crate::error::Result;
use crate::repo::Repository;
use crate::Engine;

/// A running backup whose heartbeat is older than this is considered dead.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

#[derive(Debug, Clone, Serialize, Default)]
pub struct GcReport {
    pub interrupted: Vec<String>,
    /// Backups an interrupted prune left `deleting`, now deleted.
    pub deletions_finished: Vec<String>,
    pub objects_deleted: u64,
    pub temp_files_removed: u64,
    pub unknown_backups: Vec<String>,
}

/// What a cleanup removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    pub objects: u64,
    pub temp_files: u64,
}

impl std::ops::AddAssign for Removed {
    fn add_assign(&mut self, other: Removed) {
        self.objects += other.objects;
        self.temp_files += other.temp_files;
    }
}

/// Marks running backups whose process is gone (same host) or whose heartbeat
/// stopped (any host) as failed, and deletes their objects.
pub async fn reap_interrupted(
    engine: &Engine,
    cancel: &CancellationToken,
) -> Result<(Vec<BackupRecord>, Removed)> {
    let host = crate::host_name();
    let running = engine
        .catalog
        .list_backups(&BackupFilter {
            source: None,
            status: Some(BackupStatus::Running),
        })
        .await?;
    let mut reaped = Vec::new();
    for b in running {
        if b.host == host && !std::path::Path::new(&format!("/proc/{}", b.pid)).exists() {
            let why = format!(
                "interrupted: process {} on {} exited before the backup finished",
                b.pid, b.host
            );
            engine.catalog.fail_backup(b.id, Utc::now(), &why).await?;
            reaped.push(b);
        }
    }
    let stale_before =
        Utc::now() - chrono::Duration::from_std(STALE_AFTER).expect("small duration");
    reaped.extend(engine.catalog.abandon_stale_backups(stale_before).await?);
    let mut removed = Removed::default();
    for b in &reaped {
        tracing::warn!(backup_id = %b.id, source = %b.source, "cleaning up an interrupted backup");
        // A repository removed from the config cannot be cleaned here; gc reports it later.
        if let Ok(repo) = Repository::open_named(&engine.config, &b.repository).await {
            removed += delete_backup_objects(&repo, b.id, cancel).await?;
        }
        if let Err(e) = crate::mongo::atlas::delete_backup_snapshot(engine, &b.source, b.id).await {
            tracing::warn!(backup_id = %b.id, error = %e, "could not delete the interrupted backup's Atlas snapshot; the next gc retries");
        }
    }
    Ok((reaped, removed))
}

/// Deletes every object and unfinished upload under a backup's prefix. Only for backups
/// whose writer is known to be gone (failed or interrupted). Safe to re-run.
pub async fn delete_backup_objects(
    repo: &Repository,
    backup: BackupId,
    cancel: &CancellationToken,
) -> Result<Removed> {
    let objects = repo
        .sink
        .list(&layout::backup_prefix(backup), cancel)
        .await?;
    // The envelope first: once it is gone nothing left behind is readable.
    let mut keys: Vec<_> = objects.into_iter().map(|o| o.key).collect();
    keys.sort_by_key(|k| !layout::is_envelope_key(backup, k));
    for key in &keys {
        repo.sink.delete(key, cancel).await?;
    }
    // Its writer is gone, so its unfinished uploads can go at once, whatever their age.
    let swept = repo
        .sink
        .sweep_incomplete(&layout::backup_prefix(backup), Duration::ZERO, cancel)
        .await?;
    Ok(Removed {
        objects: keys.len() as u64,
        temp_files: swept,
    })
}

pub async fn run_gc(
    engine: &Engine,
    grace: Duration,
    cancel: &CancellationToken,
) -> Result<GcReport> {
    let (reaped, mut removed) = reap_interrupted(engine, cancel).await?;
    let (finished, deleted) = crate::prune::finish_interrupted_deletions(engine, cancel).await?;
    for (source, snapshot) in engine.catalog.failed_backups_atlas_snapshots().await? {
        crate::mongo::atlas::delete_backup_snapshot(engine, &source, snapshot.backup_id).await?;
    }
    removed += deleted;
    let mut report = GcReport {
        interrupted: reaped.iter().map(|b| b.id.to_string()).collect(),
        deletions_finished: finished.iter().map(ToString::to_string).collect(),
        objects_deleted: removed.objects,
        temp_files_removed: removed.temp_files,
        unknown_backups: Vec::new(),
    };
    let known: HashSet<BackupId> = engine
        .catalog
        .list_backups(&BackupFilter::default())
        .await?
        .into_iter()
        .map(|b| b.id)
        .collect();
    let mut dead = Vec::new();
    for status in [BackupStatus::Failed, BackupStatus::Abandoned] {
        dead.extend(
            engine
                .catalog
                .list_backups(&BackupFilter {
                    source: None,
                    status: Some(status),
                })
                .await?,
        );
    }
    for repo_config in &engine.config.repositories {
        let repo = match Repository::open(&engine.config, repo_config).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repository = %repo_config.name, "skipped: {e}");
                continue;
            }
        };
        for b in dead.iter().filter(|b| b.repository == repo.name) {
            let removed = delete_backup_objects(&repo, b.id, cancel).await?;
            report.objects_deleted += removed.objects;
            report.temp_files_removed += removed.temp_files;
        }
        let mut unknown = HashSet::new();
        for object in repo.sink.list(layout::BACKUPS_PREFIX, cancel).await? {
            if let Some(id) = layout::backup_of_key(&object.key) {
                if !known.contains(&id) && unknown.insert(id) {
                    report.unknown_backups.push(format!("{}/{id}", repo.name));
                }
            }
        }
        report.temp_files_removed += repo.sink.sweep_incomplete("", grace, cancel).await?;
    }
    Ok(report)
}
