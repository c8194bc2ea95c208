//! Restoring from archived copies (S3 Glacier Flexible Retrieval / Deep Archive): request a
//! temporary readable copy of every archived object (RestoreObject), tell the user how long
//! it should take and roughly what it costs, and wait for it or come back later.
//!
//! Only data objects are ever archived by a copy rule; manifests and key envelopes stay in
//! the repository's own class, so listing, `catalog rebuild` and this module's bookkeeping
//! never need a thaw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupRecord, ThawRequest};
use backup_core::BackupId;
pub use backup_sinks::RestoreTier;
use backup_sinks::{AnySink, RestoreRequested, ThawState};

use crate::error::{EngineError, Result};
use crate::replicate::is_archive_class;
use crate::repo::Repository;
use crate::Engine;

/// How restores of archived copies behave.
#[derive(Debug, Clone)]
pub struct ThawOptions {
    pub tier: RestoreTier,
    /// How long the thawed copy stays readable.
    pub days: u32,
    /// Wait (polling) until the objects are readable instead of returning.
    pub wait: bool,
    pub poll: Duration,
}

impl Default for ThawOptions {
    fn default() -> Self {
        Self {
            tier: RestoreTier::Standard,
            days: 3,
            wait: false,
            poll: Duration::from_secs(300),
        }
    }
}

/// Expected wait and cost of a thaw, from AWS list prices (us-east-1, 2024).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThawEstimate {
    pub expected_wait: &'static str,
    /// Retrieval, requests and the temporary copy's storage for `days`.
    pub usd: f64,
}

/// Where one backup's archived copy stands.
#[derive(Debug, Clone, Serialize)]
pub struct ThawReport {
    pub backup_id: BackupId,
    pub repository: String,
    pub storage_class: String,
    pub tier: String,
    pub days: u32,
    pub requested_at: Option<DateTime<Utc>>,
    pub objects: u64,
    pub bytes: u64,
    pub ready: u64,
    pub in_progress: u64,
    pub frozen: u64,
    pub estimate: ThawEstimate,
}

impl ThawReport {
    pub fn is_ready(&self) -> bool {
        self.ready == self.objects
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The estimate for thawing `bytes` in `objects` objects of `class` with `tier`.
pub fn estimate(
    class: &str,
    tier: RestoreTier,
    bytes: u64,
    objects: u64,
    days: u32,
) -> Result<ThawEstimate> {
    // (per GiB retrieved, per 1,000 requests, expected wait)
    let (per_gib, per_thousand, expected_wait) = match (class, tier) {
        ("DEEP_ARCHIVE", RestoreTier::Expedited) => {
            return Err(EngineError::Usage(
                "Deep Archive objects cannot be restored with the expedited tier; use --tier \
                 standard (within 12 hours) or bulk (within 48 hours)"
                    .into(),
            ))
        }
        ("DEEP_ARCHIVE", RestoreTier::Standard) => (0.02, 0.10, "within 12 hours"),
        ("DEEP_ARCHIVE", RestoreTier::Bulk) => (0.0025, 0.025, "within 48 hours"),
        (_, RestoreTier::Expedited) => (0.03, 10.0, "1-5 minutes"),
        (_, RestoreTier::Standard) => (0.01, 0.05, "3-5 hours"),
        (_, RestoreTier::Bulk) => (0.0, 0.025, "5-12 hours"),
    };
    // The thawed copy is billed as S3 Standard while it exists.
    let standard_per_gib_month = 0.023;
    let gib = bytes as f64 / GIB;
    let usd = gib * per_gib
        + objects as f64 / 1000.0 * per_thousand
        + gib * standard_per_gib_month * f64::from(days) / 30.0;
    Ok(ThawEstimate { expected_wait, usd })
}

/// The archived objects of a backup's copy in `repository`: (key, size, class).
fn archived_objects(
    artifacts: &[backup_catalog::ArtifactWithCopies],
    repository: &str,
) -> Vec<(String, u64, String)> {
    artifacts
        .iter()
        .filter_map(|a| a.copies.iter().find(|c| c.repository == repository))
        .filter(|c| is_archive_class(c.storage_class.as_deref()))
        .map(|c| {
            (
                c.object_key.clone(),
                c.stored_size,
                c.storage_class.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn s3_of(repo: &Repository) -> Result<&backup_sinks::S3Sink> {
    match &repo.sink {
        AnySink::S3(s3) => Ok(s3),
        _ => Err(EngineError::Usage(format!(
            "repository {} is not an S3 repository: it holds no archived objects",
            repo.name
        ))),
    }
}

/// Checks (and with `request`, asks for) the thaw of a backup's archived copy in
/// `repository`.
pub async fn thaw_copy(
    engine: &Engine,
    record: &BackupRecord,
    repository: &str,
    options: &ThawOptions,
    request: bool,
    cancel: &CancellationToken,
) -> Result<ThawReport> {
    let artifacts = engine.catalog.backup_artifacts(record.id).await?;
    let objects = archived_objects(&artifacts, repository);
    let storage_class = objects
        .first()
        .map(|o| o.2.clone())
        .unwrap_or_else(|| "STANDARD".into());
    let bytes = objects.iter().map(|o| o.1).sum();
    let mut report = ThawReport {
        backup_id: record.id,
        repository: repository.to_owned(),
        storage_class: storage_class.clone(),
        tier: options.tier.as_str().to_owned(),
        days: options.days,
        requested_at: None,
        objects: objects.len() as u64,
        bytes,
        ready: 0,
        in_progress: 0,
        frozen: 0,
        estimate: estimate(
            &storage_class,
            options.tier,
            bytes,
            objects.len() as u64,
            options.days,
        )?,
    };
    if objects.is_empty() {
        return Ok(report);
    }
    let repo = Repository::open_named(&engine.config, repository).await?;
    let s3 = s3_of(&repo)?;
    let (mut started, mut started_bytes) = (0u64, 0u64);
    for (key, size, _) in &objects {
        let state = s3.thaw_state(key, cancel).await?;
        let state = match state {
            ThawState::Frozen if request => {
                match s3
                    .request_restore(key, options.days, options.tier, cancel)
                    .await?
                {
                    RestoreRequested::AlreadyAvailable | RestoreRequested::NotArchived => {
                        ThawState::NotArchived
                    }
                    RestoreRequested::Started => {
                        started += 1;
                        started_bytes += size;
                        ThawState::InProgress
                    }
                    RestoreRequested::AlreadyInProgress => ThawState::InProgress,
                }
            }
            other => other,
        };
        match state {
            ThawState::NotArchived | ThawState::Restored { .. } => report.ready += 1,
            ThawState::InProgress => report.in_progress += 1,
            ThawState::Frozen => report.frozen += 1,
        }
    }
    if started > 0 {
        crate::report::record(
            engine,
            backup_catalog::ObjectRequests {
                source: record.source.clone(),
                repository: repository.to_owned(),
                storage_class: Some(storage_class.clone()),
                operation: backup_catalog::RequestOperation::Restore,
                tier: Some(options.tier.as_str().to_owned()),
                requests: started,
                bytes: started_bytes,
                requested_at: Utc::now(),
            },
        )
        .await;
    }
    if request {
        let now = Utc::now();
        engine
            .catalog
            .record_thaw(&ThawRequest {
                backup_id: record.id,
                repository: repository.to_owned(),
                tier: options.tier.as_str().to_owned(),
                days: options.days,
                requested_at: now,
            })
            .await?;
        report.requested_at = Some(now);
    }
    Ok(report)
}

/// Makes sure every archived object of the copy in `repository` is readable: requests the
/// thaw, then waits for it (`options.wait`) or fails with [`EngineError::Pending`].
pub async fn ensure_thawed(
    engine: &Engine,
    record: &BackupRecord,
    repository: &str,
    options: &ThawOptions,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut report = thaw_copy(engine, record, repository, options, true, cancel).await?;
    if report.is_ready() {
        return Ok(());
    }
    let announce = pending_message(&report);
    if !options.wait {
        return Err(EngineError::Pending(format!(
            "{announce}; run the same restore again once `backupctl thaw status` shows it \
             ready, or add --wait"
        )));
    }
    eprintln!("{announce}; waiting (checking every {:?})", options.poll);
    while !report.is_ready() {
        tokio::select! {
            _ = cancel.cancelled() => {
                return Err(EngineError::Failed(
                    "interrupted while waiting for the archive restore; it goes on in S3, \
                     run the restore again later".into(),
                ))
            }
            _ = tokio::time::sleep(options.poll) => {}
        }
        report = thaw_copy(engine, record, repository, options, false, cancel).await?;
    }
    Ok(())
}

fn pending_message(r: &ThawReport) -> String {
    format!(
        "backup {} is archived in repository {} ({}): {} of {} objects ({}) being restored with \
         the {} tier, expected {}, estimated cost ${:.2}",
        r.backup_id,
        r.repository,
        r.storage_class,
        r.objects - r.ready,
        r.objects,
        crate::human_bytes(r.bytes),
        r.tier,
        r.estimate.expected_wait,
        r.estimate.usd
    )
}

/// `backupctl thaw status`: every recorded thaw request (or those of one backup), checked
/// against the repository now.
pub async fn thaw_status(
    engine: &Engine,
    only: Option<BackupId>,
    cancel: &CancellationToken,
) -> Result<Vec<ThawReport>> {
    let mut out = Vec::new();
    for request in engine.catalog.thaw_requests().await? {
        if only.is_some_and(|id| id != request.backup_id) {
            continue;
        }
        let Some(record) = engine.catalog.get_backup(request.backup_id).await? else {
            continue;
        };
        let options = ThawOptions {
            tier: request.tier.parse().unwrap_or_default(),
            days: request.days,
            ..ThawOptions::default()
        };
        let mut report = thaw_copy(
            engine,
            &record,
            &request.repository,
            &options,
            false,
            cancel,
        )
        .await?;
        report.requested_at = Some(request.requested_at);
        out.push(report);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_list_prices_and_refuse_expedited_deep_archive() {
        let gib = 1u64 << 30;
        let e = estimate("DEEP_ARCHIVE", RestoreTier::Standard, 100 * gib, 1000, 0).unwrap();
        assert!((e.usd - (2.0 + 0.10)).abs() < 1e-9, "{e:?}");
        assert_eq!(e.expected_wait, "within 12 hours");
        let bulk = estimate("DEEP_ARCHIVE", RestoreTier::Bulk, 100 * gib, 1000, 0).unwrap();
        assert!(bulk.usd < e.usd);
        let with_days = estimate("DEEP_ARCHIVE", RestoreTier::Bulk, 100 * gib, 0, 30).unwrap();
        assert!((with_days.usd - (0.25 + 2.3)).abs() < 1e-9, "{with_days:?}");
        let err = estimate("DEEP_ARCHIVE", RestoreTier::Expedited, gib, 1, 1).unwrap_err();
        assert!(err.to_string().contains("expedited"), "{err}");
        assert_eq!(
            estimate("GLACIER", RestoreTier::Expedited, gib, 1, 0)
                .unwrap()
                .expected_wait,
            "1-5 minutes"
        );
    }
}
