//! The scheduler loop: plan due jobs, claim them under a lease, run them,
//! retry failures with backoff, alert, and check recovery-point objectives.
//!
//! Several replicas may share a PostgreSQL catalog: planning is idempotent per
//! cron slot and jobs are claimed with leases, so a job runs on one replica at
//! a time, and a replica that dies mid-job loses its lease to another, which
//! cleans up the partial backup and runs the job again.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use backup_catalog::{DrillTrigger, JobKind, JobOutcome, JobRecord, NewJob};
use backup_core::BackupId;
use backup_engine::config::{Config, SourceConfig};
use backup_engine::service::AlertEvent;
use backup_engine::{Engine, Progress};

use crate::alerts::{Alert, Alerter};
use crate::metrics::Metrics;

pub struct Runner {
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub alerts: Arc<Alerter>,
    /// This replica's name in leases.
    pub owner: String,
    pub last_tick: Arc<AtomicI64>,
}

/// A job for an on-demand backup (API trigger).
pub fn manual_job(
    config: &Config,
    source: &SourceConfig,
    tag: Option<String>,
    now: DateTime<Utc>,
) -> NewJob {
    NewJob {
        source: source.name.clone(),
        repository: source.repository.clone(),
        kind: JobKind::Backup,
        backup_type: "full".into(),
        tag,
        scheduled_for: None,
        due_at: now,
        max_attempts: config.scheduler.max_attempts,
        created_at: now,
    }
}

impl Runner {
    /// Runs until `shutdown` fires, then stops claiming, lets running jobs
    /// finish within the grace period and releases whatever is left.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let config = &self.engine.config;
        let tick = config.scheduler.tick;
        let capacity = config.scheduler.max_running_per_repository.max(1) as usize
            * config.repositories.len().max(1);
        let jobs_cancel = CancellationToken::new();
        let mut running: JoinSet<()> = JoinSet::new();
        let replication = {
            let me = self.clone();
            let stop = jobs_cancel.child_token();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { me.replicate_loop(shutdown, stop).await })
        };
        // MongoDB sources: their oplog is archived continuously (a slice every
        // `oplog-interval`), resuming where the catalog says the last slice ended.
        let oplog_archivers: Vec<_> = config
            .sources
            .iter()
            .filter(|s| s.kind.kind_name() == "mongodb")
            .map(|s| {
                let me = self.clone();
                // Stopped at once on shutdown: a slice being read is read again next time.
                let stop = shutdown.child_token();
                let name = s.name.clone();
                tokio::spawn(async move { me.oplog_loop(name, stop).await })
            })
            .collect();
        loop {
            let now = Utc::now();
            if let Err(e) = backup_engine::schedule::plan_due_jobs(&self.engine, now).await {
                tracing::error!(error = %e, "planning due jobs failed");
            }
            self.check_recovery_points(now).await;
            while running.len() < capacity {
                let limits = config.scheduler.claim_limits();
                match self
                    .engine
                    .catalog
                    .claim_job(&self.owner, Utc::now(), config.scheduler.lease, &limits)
                    .await
                {
                    Ok(Some(job)) => {
                        let me = self.clone();
                        let cancel = jobs_cancel.child_token();
                        running.spawn(async move { me.run_job(job, cancel).await });
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "claiming a job failed");
                        break;
                    }
                }
            }
            self.last_tick
                .store(Utc::now().timestamp(), Ordering::Relaxed);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
            while running.try_join_next().is_some() {}
        }
        tracing::info!(
            jobs = running.len(),
            "shutting down: no new jobs are claimed"
        );
        let grace = config.api.shutdown_grace;
        if tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("jobs still running after the shutdown grace period; cancelling them");
            jobs_cancel.cancel();
            while running.join_next().await.is_some() {}
        }
        if tokio::time::timeout(grace, replication).await.is_err() {
            tracing::warn!("a copy was still running after the shutdown grace period");
        }
        for archiver in oplog_archivers {
            let _ = tokio::time::timeout(grace, archiver).await;
        }
        if let Err(e) = self
            .engine
            .catalog
            .release_jobs(&self.owner, Utc::now())
            .await
        {
            tracing::error!(error = %e, "releasing leases failed");
        }
    }

    /// Archives `source`'s oplog until `stop`, while this replica holds the source's archiver
    /// lease (replicas on one catalog take turns; one that dies is taken over once its lease
    /// passes). After a failure that needs a person (no backup yet, the oplog rolled past the
    /// position) it says so and tries again a minute later.
    async fn oplog_loop(self: Arc<Self>, source: String, stop: CancellationToken) {
        let lease = self.engine.config.scheduler.lease;
        let catalog = &self.engine.catalog;
        while !stop.is_cancelled() {
            match catalog
                .claim_oplog_archiver(&source, &self.owner, Utc::now(), lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Another replica archives it; check again when its lease could pass.
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(lease / 3) => {}
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(source, error = %e, "claiming the oplog archiving failed");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(lease / 3) => {}
                    }
                    continue;
                }
            }
            let lost = stop.child_token();
            let keeper = {
                let (me, lost, source) = (self.clone(), lost.clone(), source.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = lost.cancelled() => break,
                            _ = tokio::time::sleep(lease / 3) => {}
                        }
                        match me
                            .engine
                            .catalog
                            .claim_oplog_archiver(&source, &me.owner, Utc::now(), lease)
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::error!(
                                    source,
                                    "oplog archiving taken over by another replica; stopping here"
                                );
                                lost.cancel();
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(source, error = %e, "renewing the oplog archiving lease failed")
                            }
                        }
                    }
                })
            };
            let result = backup_engine::mongo::archive::run_oplog_archive(
                &self.engine,
                &source,
                false,
                &lost,
            )
            .await;
            lost.cancel();
            let _ = keeper.await;
            match result {
                Ok(report) => {
                    tracing::info!(source, slices = report.slices, "oplog archiving stopped")
                }
                Err(e) => {
                    tracing::error!(source, error = %e, "oplog archiving failed; retrying in 60s")
                }
            }
            if stop.is_cancelled() {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
        let _ = catalog.release_oplog_archiver(&source, &self.owner).await;
    }

    /// Works the replication queue every tick until shutdown (a copy under way finishes,
    /// or is cancelled by `stop` after the grace period), and alerts on lagging destinations.
    async fn replicate_loop(self: Arc<Self>, shutdown: CancellationToken, stop: CancellationToken) {
        let tick = self.engine.config.scheduler.tick;
        loop {
            let progress = Arc::new(Progress::default());
            match backup_engine::replicate::run_replication(&self.engine, None, progress, &stop)
                .await
            {
                Ok(report) => {
                    for c in &report.copies {
                        self.metrics.copy_finished(
                            &c.destination,
                            c.error.is_none(),
                            c.bytes_copied,
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "working the replication queue failed"),
            }
            self.check_replication_lag(Utc::now()).await;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    async fn check_replication_lag(&self, now: DateTime<Utc>) {
        let status = match backup_engine::replicate::replication_status(&self.engine).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the replication lag");
                return;
            }
        };
        let limit = self.engine.config.alerts.replication_lag;
        for d in &status.destinations {
            let key = format!("replication-lag:{}", d.lag.destination);
            if d.lag_seconds <= limit.as_secs() {
                self.alerts.resolve(&key);
                continue;
            }
            let last_error = status
                .failing
                .iter()
                .find(|t| t.destination == d.lag.destination)
                .and_then(|t| t.error.clone());
            let alert = Alert {
                event: AlertEvent::ReplicationLag,
                key,
                source: None,
                summary: format!(
                    "copies to {} are {} behind ({} backups, {} bytes pending; limit {}){}",
                    d.lag.destination,
                    humanize(Duration::from_secs(d.lag_seconds)),
                    d.lag.pending,
                    d.lag.pending_bytes,
                    humanize(limit),
                    last_error
                        .as_deref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ),
                details: serde_json::json!({
                    "destination": d.lag.destination,
                    "lag_seconds": d.lag_seconds,
                    "pending": d.lag.pending,
                    "pending_bytes": d.lag.pending_bytes,
                    "last_error": last_error,
                }),
            };
            self.alerts.fire(&alert, now).await;
        }
        for w in &status.wal {
            let key = format!("replication-lag:wal:{}:{}", w.lag.source, w.lag.destination);
            if w.lag_seconds <= limit.as_secs() {
                self.alerts.resolve(&key);
                continue;
            }
            let alert = Alert {
                event: AlertEvent::ReplicationLag,
                key,
                source: Some(w.lag.source.clone()),
                summary: format!(
                    "WAL of {} copied to {} is {} behind ({} files, {} bytes pending; limit {}); \
                     `backupctl replicate` shows why",
                    w.lag.source,
                    w.lag.destination,
                    humanize(Duration::from_secs(w.lag_seconds)),
                    w.lag.pending,
                    w.lag.pending_bytes,
                    humanize(limit),
                ),
                details: serde_json::json!({
                    "source": w.lag.source,
                    "destination": w.lag.destination,
                    "lag_seconds": w.lag_seconds,
                    "pending": w.lag.pending,
                    "pending_bytes": w.lag.pending_bytes,
                }),
            };
            self.alerts.fire(&alert, now).await;
        }
    }

    async fn run_job(self: Arc<Self>, job: JobRecord, cancel: CancellationToken) {
        let started = Instant::now();
        let config = &self.engine.config;
        tracing::info!(job = %job.id, source = %job.source, kind = %job.kind, attempt = job.attempts + 1, "job started");
        if job.kind == JobKind::Drill {
            return self.run_drill_job(job, cancel).await;
        }
        // A job taken over from a dead replica: its partial backup goes first.
        if let Some(previous) = job.backup_id {
            self.discard_partial(previous).await;
        }
        let (keeper, lost) = self.keep_lease(job.id, &cancel);
        let run_cancel = CancellationToken::new();
        let result = {
            let backup_id = BackupId::new();
            let attached = self
                .engine
                .catalog
                .attach_backup(job.id, &self.owner, backup_id)
                .await;
            let progress = Arc::new(Progress::default());
            let backup_type = if job.backup_type == "incr" {
                backup_engine::policy::BackupType::Incr
            } else {
                backup_engine::policy::BackupType::Full
            };
            let work = backup_engine::backup::run_backup_with_id(
                &self.engine,
                &job.source,
                job.tag.clone(),
                backup_type,
                backup_id,
                progress,
                &run_cancel,
            );
            match attached {
                Err(e) => Err(backup_engine::EngineError::from(e)),
                Ok(_) => tokio::select! {
                    r = work => r,
                    _ = lost.cancelled() => { run_cancel.cancel(); Err(backup_engine::EngineError::Failed("lease lost".into())) }
                    _ = cancel.cancelled() => { run_cancel.cancel(); Err(backup_engine::EngineError::Failed("cancelled at shutdown".into())) }
                },
            }
        };
        keeper.abort();
        let seconds = started.elapsed().as_secs_f64();
        if lost.is_cancelled() {
            // Another replica owns the job now; it records the outcome.
            return;
        }
        let now = Utc::now();
        match result {
            Ok(outcome) => {
                self.metrics.job_finished(&job.source, "succeeded", seconds);
                self.metrics.bytes(
                    &job.source,
                    &outcome.repository,
                    outcome.plaintext_bytes,
                    outcome.stored_bytes,
                );
                let done = JobOutcome::Succeeded {
                    backup_id: Some(outcome.backup_id),
                };
                if let Err(e) = self
                    .engine
                    .catalog
                    .finish_job(job.id, &self.owner, now, &done)
                    .await
                {
                    tracing::error!(job = %job.id, error = %e, "recording the job's success failed");
                }
                self.alerts.resolve(&format!("job-failed:{}", job.source));
                tracing::info!(job = %job.id, backup_id = %outcome.backup_id, seconds, "job succeeded");
                self.verify_after_backup(&job.source, outcome.backup_id)
                    .await;
                self.prune_after_backup(&job.source).await;
            }
            Err(e) => {
                self.metrics.job_finished(&job.source, "failed", seconds);
                let attempt = job.attempts + 1;
                let retry_at = config.scheduler.retry_at(&job, now);
                let failed = JobOutcome::Failed {
                    error: e.to_string(),
                    retry_at,
                };
                if let Err(err) = self
                    .engine
                    .catalog
                    .finish_job(job.id, &self.owner, now, &failed)
                    .await
                {
                    tracing::error!(job = %job.id, error = %err, "recording the job's failure failed");
                }
                match retry_at {
                    Some(at) => {
                        tracing::warn!(job = %job.id, error = %e, retry_at = %at, "job failed; will retry")
                    }
                    None => {
                        tracing::error!(job = %job.id, error = %e, attempts = attempt, "job failed for good");
                        let alert = Alert {
                            event: AlertEvent::JobFailed,
                            key: format!("job-failed:{}", job.source),
                            source: Some(job.source.clone()),
                            summary: format!(
                                "backup of {} failed after {attempt} attempts: {e}",
                                job.source
                            ),
                            details: serde_json::json!({ "job_id": job.id, "attempts": attempt, "error": e.to_string() }),
                        };
                        self.alerts.fire(&alert, now).await;
                    }
                }
            }
        }
    }

    /// Renews `job`'s lease every third of its length until `stop`; the token returned fires
    /// when another replica took the job over.
    fn keep_lease(
        self: &Arc<Self>,
        job_id: backup_catalog::JobId,
        stop: &CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, CancellationToken) {
        let lease = self.engine.config.scheduler.lease;
        let lost = CancellationToken::new();
        let keeper = {
            let (me, lost, stop) = (self.clone(), lost.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(lease / 3) => {}
                    }
                    match me
                        .engine
                        .catalog
                        .renew_lease(job_id, &me.owner, Utc::now(), lease)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(job = %job_id, "lease lost to another replica; stopping the job");
                            lost.cancel();
                            break;
                        }
                        Err(e) => {
                            tracing::warn!(job = %job_id, error = %e, "renewing the lease failed")
                        }
                    }
                }
            })
        };
        (keeper, lost)
    }

    /// Runs a drill job: a drill that ran and failed is a finding (alert `drill-failed`, no
    /// retry), not an error of the job system.
    async fn run_drill_job(self: Arc<Self>, job: JobRecord, cancel: CancellationToken) {
        let started = Instant::now();
        let (keeper, lost) = self.keep_lease(job.id, &cancel);
        // Cancelling lets the drill stop its scratch server and remove its target itself.
        let run_cancel = CancellationToken::new();
        let watcher = {
            let (lost, cancel, run_cancel) = (lost.clone(), cancel.clone(), run_cancel.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = lost.cancelled() => {}
                    _ = cancel.cancelled() => {}
                }
                run_cancel.cancel();
            })
        };
        let trigger = if job.scheduled_for.is_some() {
            DrillTrigger::Schedule
        } else {
            DrillTrigger::Manual
        };
        let result = backup_engine::drill::run_drill(
            &self.engine,
            &job.source,
            trigger,
            &backup_engine::drill::DrillOptions::default(),
            &run_cancel,
        )
        .await;
        watcher.abort();
        keeper.abort();
        if lost.is_cancelled() {
            return;
        }
        let now = Utc::now();
        let seconds = started.elapsed().as_secs_f64();
        let failure = match &result {
            Ok(report) if report.passed() => None,
            Ok(report) => Some(drill_failure(report)),
            Err(e) => Some(format!("the drill could not run: {e}")),
        };
        let key = format!("drill-failed:{}", job.source);
        let outcome = match &failure {
            None => JobOutcome::Succeeded {
                backup_id: result.as_ref().ok().and_then(|r| r.record.backup_id),
            },
            Some(error) => JobOutcome::Failed {
                error: error.clone(),
                retry_at: None,
            },
        };
        self.metrics.job_finished(
            &job.source,
            if failure.is_none() {
                "succeeded"
            } else {
                "failed"
            },
            seconds,
        );
        if let Err(e) = self
            .engine
            .catalog
            .finish_job(job.id, &self.owner, now, &outcome)
            .await
        {
            tracing::error!(job = %job.id, error = %e, "recording the drill job's outcome failed");
        }
        match failure {
            None => self.alerts.resolve(&key),
            Some(summary) => {
                let details = match &result {
                    Ok(report) => serde_json::to_value(&report.record).unwrap_or_default(),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                };
                let alert = Alert {
                    event: AlertEvent::DrillFailed,
                    key,
                    source: Some(job.source.clone()),
                    summary: format!("restore drill of {} failed: {summary}", job.source),
                    details,
                };
                self.alerts.fire(&alert, now).await;
            }
        }
    }

    /// Marks a dead replica's unfinished backup failed and deletes what it wrote.
    async fn discard_partial(&self, backup: BackupId) {
        let catalog = &self.engine.catalog;
        let Ok(Some(record)) = catalog.get_backup(backup).await else {
            return;
        };
        if record.status != backup_catalog::BackupStatus::Running {
            return;
        }
        let why = format!(
            "interrupted: replica {} lost its lease; the job was taken over by {}",
            record.host, self.owner
        );
        if let Err(e) = catalog.fail_backup(backup, Utc::now(), &why).await {
            tracing::warn!(%backup, error = %e, "could not mark the partial backup failed");
        }
        if let Ok(repo) =
            backup_engine::repo::Repository::open_named(&self.engine.config, &record.repository)
                .await
        {
            if let Err(e) =
                backup_engine::gc::delete_backup_objects(&repo, backup, &CancellationToken::new())
                    .await
            {
                tracing::warn!(%backup, error = %e, "could not delete the partial backup's objects; `backupctl gc` will");
            }
        }
    }

    async fn verify_after_backup(&self, source: &str, backup: BackupId) {
        use backup_engine::config::VerifyAfterBackup;
        let Ok((_, s)) = self.engine.config.source(source) else {
            return;
        };
        let quick = match s.verify_after_backup {
            VerifyAfterBackup::None => return,
            VerifyAfterBackup::Quick => true,
            VerifyAfterBackup::Full => false,
        };
        let scope = backup_engine::verify::VerifyScope::One(backup.to_string());
        let progress = Arc::new(Progress::default());
        let problems = match backup_engine::verify::run_verify(
            &self.engine,
            &scope,
            quick,
            progress,
            &CancellationToken::new(),
        )
        .await
        {
            Ok(report) => report
                .backups
                .into_iter()
                .flat_map(|b| b.problems)
                .map(|p| p.message)
                .collect::<Vec<_>>(),
            Err(e) => vec![e.to_string()],
        };
        let key = format!("verify-failed:{source}");
        if problems.is_empty() {
            self.alerts.resolve(&key);
            return;
        }
        let alert = Alert {
            event: AlertEvent::VerifyFailed,
            key,
            source: Some(source.to_owned()),
            summary: format!(
                "verification of backup {backup} of {source} failed: {}",
                problems.join("; ")
            ),
            details: serde_json::json!({ "backup_id": backup, "problems": problems }),
        };
        self.alerts.fire(&alert, Utc::now()).await;
    }

    async fn prune_after_backup(&self, source: &str) {
        let Ok((_, s)) = self.engine.config.source(source) else {
            return;
        };
        if s.keep.is_none() {
            return;
        }
        let options = backup_engine::prune::PruneOptions {
            source: Some(source.to_owned()),
            dry_run: false,
            force: false,
        };
        if let Err(e) =
            backup_engine::prune::run_prune(&self.engine, &options, &CancellationToken::new()).await
        {
            tracing::error!(source, error = %e, "pruning after the backup failed");
        }
    }

    async fn check_recovery_points(&self, now: DateTime<Utc>) {
        for s in &self.engine.config.sources {
            let Some(targets) = s.targets() else { continue };
            let latest = match self.engine.catalog.latest_complete_backup(&s.name).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(source = %s.name, error = %e, "cannot read the latest backup");
                    continue;
                }
            };
            let key = format!("rpo-breach:{}", s.name);
            let age = latest
                .as_ref()
                .map(|b| now - b.finished_at.unwrap_or(b.started_at));
            let rpo = chrono::Duration::from_std(targets.rpo).unwrap_or(chrono::Duration::MAX);
            match age {
                Some(age) if age <= rpo => self.alerts.resolve(&key),
                _ => {
                    let summary = match age {
                        Some(age) => format!(
                            "{}: newest restorable point is {} old, RPO target is {}",
                            s.name,
                            humanize(age.to_std().unwrap_or_default()),
                            humanize(targets.rpo)
                        ),
                        None => format!(
                            "{}: no complete backup yet (RPO target {})",
                            s.name,
                            humanize(targets.rpo)
                        ),
                    };
                    let alert = Alert {
                        event: AlertEvent::RpoBreach,
                        key,
                        source: Some(s.name.clone()),
                        summary,
                        details: serde_json::json!({ "age_seconds": age.map(|a| a.num_seconds()), "rpo_seconds": targets.rpo.as_secs() }),
                    };
                    self.alerts.fire(&alert, now).await;
                }
            }
        }
    }
}

/// What went wrong in a failed drill: its error, else its failed checks.
fn drill_failure(report: &backup_engine::drill::DrillReport) -> String {
    let failed: Vec<String> = report
        .record
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    match (&report.record.error, failed.is_empty()) {
        (Some(error), true) => error.clone(),
        (Some(error), false) => format!("{error}; failed checks: {}", failed.join("; ")),
        (None, _) => format!("failed checks: {}", failed.join("; ")),
    }
}

fn humanize(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        s if s >= 86400 => format!("{}d{}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}
