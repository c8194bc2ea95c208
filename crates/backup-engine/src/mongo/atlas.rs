//! `kind = "atlas"` sources: MongoDB Atlas clusters backed up by Atlas's own cloud backup
//! snapshots, driven through the Admin API.
//!
//! A backup takes an on-demand snapshot and waits until Atlas says `completed`. Its artifact
//! holds `atlas/snapshot.json` (what Atlas said about the snapshot) and, with `export =
//! true`, `atlas/<snapshot-id>.tar.gz`: the snapshot's files, fetched through a download
//! restore job, so a copy lives outside Atlas (encrypted, replicated and archived like any
//! artifact). The snapshot is recorded in the catalog as soon as Atlas accepted it, so a
//! backup that fails or is interrupted deletes it again (at once, or at the next gc).
//! Retention deletes the Atlas snapshot together with the backup; Atlas's own
//! `retentionInDays` (`atlas-retention-days`) is only a safety net.
//!
//! Restores are Atlas restore jobs: the backup's snapshot (or a point in time, when the
//! cluster has continuous cloud backup) restored into a target cluster.

use std::future::Future;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::AtlasSnapshotRecord;
use backup_core::manifest::AtlasSnapshotRef;
use backup_core::BackupId;
use backup_sources::atlas::{
    AtlasClient, AtlasError, RestoreJob, RestoreRequest, Secret, Snapshot,
};
use backup_sources::files::{EntryRecorder, TreeBackup};

use crate::config::{AtlasSourceConfig, SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::restore::BackupSelector;
use crate::Engine;

const SNAPSHOT_FILE: &str = "atlas/snapshot.json";

/// The atlas settings of `source`, or a usage error naming its kind.
pub fn atlas_source(source: &SourceConfig) -> Result<&AtlasSourceConfig> {
    match &source.kind {
        SourceKindConfig::Atlas(a) => Ok(a),
        other => Err(EngineError::Usage(format!(
            "source {} is a {} source, not an atlas one",
            source.name,
            other.kind_name()
        ))),
    }
}

/// A client for `source`'s cluster, with its (secret) private key.
pub fn client(source: &SourceConfig) -> Result<(AtlasClient, &AtlasSourceConfig)> {
    let a = atlas_source(source)?;
    let private_key = a
        .private_key()
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
    let client = AtlasClient::new(
        &a.base_url,
        &a.project_id,
        &a.cluster,
        &a.public_key,
        Secret::new(private_key),
    )
    .map_err(|e| atlas_error(&source.name, e))?;
    Ok((client, a))
}

fn atlas_error(source: &str, e: AtlasError) -> EngineError {
    EngineError::Failed(format!("source {source}: {e}"))
}

/// Asks `probe` every `every` until it returns a value, failing after `timeout`.
async fn poll<T, F, Fut>(
    what: &str,
    every: Duration,
    timeout: Duration,
    cancel: &CancellationToken,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await? {
            return Ok(value);
        }
        if started.elapsed() >= timeout {
            return Err(EngineError::Failed(format!(
                "{what}: still not done after {} (raise `snapshot-timeout` if Atlas is just slow)",
                humantime::format_duration(timeout)
            )));
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => {
                return Err(EngineError::Failed(format!("{what}: cancelled; Atlas carries on with it")));
            }
        }
    }
}

/// A completed snapshot, with its files' download when the source exports them.
pub struct AtlasSnapshotTaken {
    source: String,
    project_id: String,
    cluster: String,
    snapshot: Snapshot,
    download: Option<reqwest::Response>,
    handle: tokio::runtime::Handle,
}

/// Takes an on-demand snapshot for backup `backup_id`, records it in the catalog at once
/// (so a failure or crash from here on deletes it), waits until Atlas completes it and, with
/// `export`, until its download link is ready.
pub async fn take_snapshot(
    engine: &Engine,
    source: &SourceConfig,
    backup_id: BackupId,
    cancel: &CancellationToken,
) -> Result<AtlasSnapshotTaken> {
    let (client, a) = client(source)?;
    let name = source.name.as_str();
    let taken = client
        .take_snapshot(&format!("backupd {backup_id}"), a.atlas_retention_days)
        .await
        .map_err(|e| atlas_error(name, e))?;
    tracing::info!(source = name, snapshot = %taken.id, "Atlas snapshot requested");
    let mut record = AtlasSnapshotRecord {
        backup_id,
        project_id: a.project_id.clone(),
        cluster: a.cluster.clone(),
        snapshot_id: taken.id.clone(),
        snapshot_created: parse_time(taken.created_at.as_deref()).unwrap_or_else(Utc::now),
        storage_size: 0,
        exported: a.export,
    };
    engine.catalog.record_atlas_snapshot(&record).await?;
    let what = format!("Atlas snapshot {} of cluster {}", taken.id, a.cluster);
    let snapshot = poll(
        &what,
        a.poll_interval,
        a.snapshot_timeout,
        cancel,
        || async {
            let s = client
                .snapshot(&taken.id)
                .await
                .map_err(|e| atlas_error(name, e))?;
            if s.has_failed() {
                return Err(EngineError::Failed(format!(
                    "source {name}: {what} ended `failed` in Atlas (see the cluster's Backup page \
                 for why); the backup is not complete"
                )));
            }
            Ok(s.is_done().then_some(s))
        },
    )
    .await?;
    record.storage_size = snapshot.storage_size_bytes.unwrap_or(0);
    if let Some(created) = parse_time(snapshot.created_at.as_deref()) {
        record.snapshot_created = created;
    }
    engine.catalog.record_atlas_snapshot(&record).await?;
    let download = if a.export {
        let job = client
            .create_restore_job(&RestoreRequest {
                delivery_type: "download".into(),
                snapshot_id: Some(snapshot.id.clone()),
                target_cluster_name: None,
                target_group_id: None,
                point_in_time_utc_seconds: None,
            })
            .await
            .map_err(|e| atlas_error(name, e))?;
        let what = format!("the download of Atlas snapshot {}", snapshot.id);
        let url = wait_for_job(&client, name, a, &what, &job.id, cancel, |j| {
            j.delivery_url.first().cloned()
        })
        .await?;
        Some(
            client
                .download(&url)
                .await
                .map_err(|e| atlas_error(name, e))?,
        )
    } else {
        None
    };
    Ok(AtlasSnapshotTaken {
        source: name.to_owned(),
        project_id: a.project_id.clone(),
        cluster: a.cluster.clone(),
        snapshot,
        download,
        handle: tokio::runtime::Handle::current(),
    })
}

/// Polls restore job `job_id` until `ready` gives a value, failing when Atlas says the job
/// failed, was cancelled or expired.
async fn wait_for_job<T>(
    client: &AtlasClient,
    source: &str,
    a: &AtlasSourceConfig,
    what: &str,
    job_id: &str,
    cancel: &CancellationToken,
    ready: impl Fn(&RestoreJob) -> Option<T>,
) -> Result<T> {
    poll(
        what,
        a.poll_interval,
        a.snapshot_timeout,
        cancel,
        || async {
            let job = client
                .restore_job(job_id)
                .await
                .map_err(|e| atlas_error(source, e))?;
            job_failure(source, what, &job)?;
            Ok(ready(&job))
        },
    )
    .await
}

fn job_failure(source: &str, what: &str, job: &RestoreJob) -> Result<()> {
    let state = if job.failed {
        "failed"
    } else if job.cancelled {
        "was cancelled"
    } else if job.expired {
        "expired"
    } else {
        return Ok(());
    };
    Err(EngineError::Failed(format!(
        "source {source}: {what} (restore job {}) {state} in Atlas",
        job.id
    )))
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

impl AtlasSnapshotTaken {
    /// Blocking (off the executor): writes the snapshot's description and, when exported,
    /// its files into `tree`.
    pub fn write<W: io::Write, R: EntryRecorder>(
        self,
        tree: &mut TreeBackup<'_, W, R>,
    ) -> Result<AtlasSnapshotRef> {
        let mut description = serde_json::to_vec_pretty(&serde_json::json!({
            "project_id": self.project_id,
            "cluster": self.cluster,
            "snapshot": self.snapshot,
        }))
        .expect("snapshots serialise");
        description.push(b'\n');
        tree.add_file(SNAPSHOT_FILE, &description, 0o600)?;
        let exported = match self.download {
            Some(response) => {
                let expected = response.content_length();
                let name = format!("atlas/{}.tar.gz", self.snapshot.id);
                let mut body = BlockingBody {
                    handle: self.handle.clone(),
                    response,
                    pending: Bytes::new(),
                };
                let size = tree.add_stream(&name, &mut body, 0o600)?;
                if let Some(expected) = expected.filter(|e| *e != size) {
                    return Err(EngineError::Failed(format!(
                        "source {}: the download of Atlas snapshot {} ended after {size} of \
                         {expected} bytes",
                        self.source, self.snapshot.id
                    )));
                }
                tracing::info!(snapshot = %self.snapshot.id, bytes = size, "Atlas snapshot downloaded");
                true
            }
            None => false,
        };
        Ok(AtlasSnapshotRef {
            project_id: self.project_id,
            cluster: self.cluster,
            snapshot_id: self.snapshot.id.clone(),
            created_at: parse_time(self.snapshot.created_at.as_deref()),
            storage_size_bytes: self.snapshot.storage_size_bytes.unwrap_or(0),
            exported,
        })
    }
}

/// The download's body as a blocking reader, for the backup pipeline's thread.
struct BlockingBody {
    handle: tokio::runtime::Handle,
    response: reqwest::Response,
    pending: Bytes,
}

impl Read for BlockingBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            match self.handle.block_on(self.response.chunk()) {
                Ok(Some(chunk)) => self.pending = chunk,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e.without_url().to_string())),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}

/// The catalog row of a backup's snapshot, from its manifest footer (catalog rebuild).
pub fn atlas_record(
    backup_id: BackupId,
    r: &AtlasSnapshotRef,
    started: DateTime<Utc>,
) -> AtlasSnapshotRecord {
    AtlasSnapshotRecord {
        backup_id,
        project_id: r.project_id.clone(),
        cluster: r.cluster.clone(),
        snapshot_id: r.snapshot_id.clone(),
        snapshot_created: r.created_at.unwrap_or(started),
        storage_size: r.storage_size_bytes,
        exported: r.exported,
    }
}

/// Deletes the Atlas snapshot of backup `backup_id` of `source` (if it took one) and forgets
/// it. A snapshot Atlas no longer has counts as deleted. Used when a backup fails, is
/// reaped as interrupted, or is deleted by retention.
pub async fn delete_backup_snapshot(
    engine: &Engine,
    source: &str,
    backup_id: BackupId,
) -> Result<()> {
    let Some(record) = engine.catalog.atlas_snapshot(backup_id).await? else {
        return Ok(());
    };
    let config = engine.config.source(source).map_err(|_| {
        EngineError::Failed(format!(
            "backup {backup_id} has Atlas snapshot {} of cluster {}, but source {source} is no \
             longer configured, so it cannot be deleted from here: delete it in Atlas, or put \
             the source back",
            record.snapshot_id, record.cluster
        ))
    })?;
    let (client, _) = client(config.1)?;
    let existed = client
        .delete_snapshot(&record.snapshot_id)
        .await
        .map_err(|e| atlas_error(source, e))?;
    tracing::info!(%backup_id, snapshot = %record.snapshot_id, existed, "Atlas snapshot deleted");
    engine.catalog.forget_atlas_snapshot(backup_id).await?;
    Ok(())
}

/// One snapshot Atlas has of the cluster, with the backup that took it, if one did.
#[derive(Debug, Clone, Serialize)]
pub struct AtlasSnapshotListing {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    pub backup_id: Option<BackupId>,
}

/// Every snapshot Atlas has of `source`'s cluster (ours and Atlas's scheduled ones), plus
/// the snapshots our catalog records that Atlas no longer has (`status: missing`).
pub async fn list_snapshots(engine: &Engine, source: &str) -> Result<Vec<AtlasSnapshotListing>> {
    let (client, _) = client(engine.config.source(source)?.1)?;
    let ours = engine.catalog.atlas_snapshots(source).await?;
    let theirs = client
        .list_snapshots()
        .await
        .map_err(|e| atlas_error(source, e))?;
    let mut out: Vec<AtlasSnapshotListing> = theirs
        .into_iter()
        .map(|s| AtlasSnapshotListing {
            backup_id: ours
                .iter()
                .find(|o| o.snapshot_id == s.id)
                .map(|o| o.backup_id),
            snapshot: s,
        })
        .collect();
    for o in &ours {
        if !out.iter().any(|l| l.snapshot.id == o.snapshot_id) {
            out.push(AtlasSnapshotListing {
                snapshot: Snapshot {
                    id: o.snapshot_id.clone(),
                    status: "missing".into(),
                    created_at: Some(o.snapshot_created.to_rfc3339()),
                    expires_at: None,
                    description: Some("recorded by backupd, no longer in Atlas".into()),
                    snapshot_type: None,
                    storage_size_bytes: Some(o.storage_size),
                    mongod_version: None,
                    replica_set_name: None,
                },
                backup_id: Some(o.backup_id),
            });
        }
    }
    Ok(out)
}

/// Where and what an Atlas restore restores.
#[derive(Debug, Clone)]
pub struct AtlasRestoreOptions {
    pub target_cluster: String,
    /// Default: the source's project.
    pub target_project: Option<String>,
    /// Restore the cluster to this time (continuous cloud backup) instead of a snapshot.
    pub point_in_time: Option<DateTime<Utc>>,
    /// Wait until Atlas has finished (otherwise return once the job is accepted).
    pub wait: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AtlasRestoreOutcome {
    pub source: String,
    pub restore_job: String,
    pub backup_id: Option<BackupId>,
    pub snapshot_id: Option<String>,
    pub point_in_time: Option<DateTime<Utc>>,
    pub target_cluster: String,
    pub target_project: String,
    pub finished: bool,
    pub seconds: f64,
}

/// `restore SOURCE --target-cluster NAME`: an automated restore job of the backup's
/// snapshot (or a point-in-time job) into the target cluster, which Atlas overwrites.
pub async fn run_atlas_restore(
    engine: &Engine,
    source: &str,
    selector: Option<&BackupSelector>,
    options: &AtlasRestoreOptions,
    cancel: &CancellationToken,
) -> Result<AtlasRestoreOutcome> {
    let started = Instant::now();
    let (client, a) = client(engine.config.source(source)?.1)?;
    let target_project = options
        .target_project
        .clone()
        .unwrap_or_else(|| a.project_id.clone());
    let (request, backup_id, snapshot_id) = match (options.point_in_time, selector) {
        (Some(at), _) => (
            RestoreRequest {
                delivery_type: "pointInTime".into(),
                snapshot_id: None,
                target_cluster_name: Some(options.target_cluster.clone()),
                target_group_id: Some(target_project.clone()),
                point_in_time_utc_seconds: Some(at.timestamp()),
            },
            None,
            None,
        ),
        (None, Some(selector)) => {
            let backup = crate::restore::select_backup(engine, selector).await?;
            if backup.source != source {
                return Err(EngineError::Usage(format!(
                    "backup {} is of source {}, not {source}",
                    backup.id, backup.source
                )));
            }
            let record = engine
                .catalog
                .atlas_snapshot(backup.id)
                .await?
                .ok_or_else(|| {
                    EngineError::Usage(format!(
                        "backup {} records no Atlas snapshot; was it taken by an atlas source?",
                        backup.id
                    ))
                })?;
            (
                RestoreRequest {
                    delivery_type: "automated".into(),
                    snapshot_id: Some(record.snapshot_id.clone()),
                    target_cluster_name: Some(options.target_cluster.clone()),
                    target_group_id: Some(target_project.clone()),
                    point_in_time_utc_seconds: None,
                },
                Some(backup.id),
                Some(record.snapshot_id),
            )
        }
        (None, None) => {
            return Err(EngineError::Usage(
                "give --latest, --backup ID or --point-in-time TIME".into(),
            ))
        }
    };
    let job = client
        .create_restore_job(&request)
        .await
        .map_err(|e| atlas_error(source, e))?;
    tracing::info!(source, job = %job.id, target = %options.target_cluster, "Atlas restore job created");
    let mut finished = job.finished_at.is_some();
    if options.wait && !finished {
        let what = format!(
            "Atlas restore job {} into cluster {}",
            job.id, options.target_cluster
        );
        wait_for_job(&client, source, a, &what, &job.id, cancel, |j| {
            j.finished_at.is_some().then_some(())
        })
        .await?;
        finished = true;
    }
    Ok(AtlasRestoreOutcome {
        source: source.to_owned(),
        restore_job: job.id,
        backup_id,
        snapshot_id,
        point_in_time: options.point_in_time,
        target_cluster: options.target_cluster.clone(),
        target_project,
        finished,
        seconds: started.elapsed().as_secs_f64(),
    })
}
