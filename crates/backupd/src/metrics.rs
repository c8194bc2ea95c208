//! Prometheus metrics. Counters of what this process did (jobs, bytes,
//! failures) plus gauges computed from the catalog at scrape time (RPO, last
//! success, backups, queue depth), so every replica reports the same state.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use chrono::Utc;

use backup_catalog::{BackupFilter, BackupStatus};
use backup_engine::Engine;

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

#[derive(Default)]
struct Counters {
    /// (source, outcome) -> (count, total seconds)
    jobs: BTreeMap<(String, &'static str), (u64, f64)>,
    bytes_in: BTreeMap<String, u64>,
    bytes_out: BTreeMap<(String, String), u64>,
    failures: BTreeMap<String, u64>,
    /// (destination, outcome) -> copies made by this process
    copies: BTreeMap<(String, &'static str), u64>,
    copy_bytes: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn job_finished(&self, source: &str, outcome: &'static str, seconds: f64) {
        let mut c = self.inner.lock().expect("metrics");
        let e = c.jobs.entry((source.to_owned(), outcome)).or_default();
        e.0 += 1;
        e.1 += seconds;
        if outcome != "succeeded" {
            *c.failures.entry(source.to_owned()).or_default() += 1;
        }
    }

    pub fn bytes(&self, source: &str, repository: &str, read: u64, written: u64) {
        let mut c = self.inner.lock().expect("metrics");
        *c.bytes_in.entry(source.to_owned()).or_default() += read;
        *c.bytes_out
            .entry((source.to_owned(), repository.to_owned()))
            .or_default() += written;
    }

    pub fn copy_finished(&self, destination: &str, ok: bool, bytes: u64) {
        let mut c = self.inner.lock().expect("metrics");
        let outcome = if ok { "succeeded" } else { "failed" };
        *c.copies
            .entry((destination.to_owned(), outcome))
            .or_default() += 1;
        *c.copy_bytes.entry(destination.to_owned()).or_default() += bytes;
    }

    /// The text exposition format; metric names are stable (docs/operations.md).
    pub async fn render(&self, engine: &Engine) -> Result<String, backup_catalog::CatalogError> {
        let mut out = String::new();
        let backups = engine
            .catalog
            .list_backups(&BackupFilter::default())
            .await?;
        let now = Utc::now();

        family(
            &mut out,
            "backupd_backups",
            "gauge",
            "Backups in the catalog by source and status.",
        );
        let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
        for b in &backups {
            *counts
                .entry((b.source.clone(), b.status.as_str()))
                .or_default() += 1;
        }
        for ((source, status), n) in &counts {
            let _ = writeln!(
                out,
                "backupd_backups{{source=\"{}\",status=\"{status}\"}} {n}",
                esc(source)
            );
        }

        // Newest first: the first complete backup per source is its latest.
        let mut latest = BTreeMap::new();
        for b in backups
            .iter()
            .filter(|b| b.status == BackupStatus::Complete)
        {
            latest.entry(b.source.clone()).or_insert(b);
        }
        family(
            &mut out,
            "backupd_last_success_timestamp_seconds",
            "gauge",
            "Finish time of the newest complete backup.",
        );
        for (source, b) in &latest {
            let at = b.finished_at.unwrap_or(b.started_at).timestamp();
            let _ = writeln!(
                out,
                "backupd_last_success_timestamp_seconds{{source=\"{}\"}} {at}",
                esc(source)
            );
        }
        family(
            &mut out,
            "backupd_last_backup_bytes",
            "gauge",
            "Plaintext bytes of the newest complete backup.",
        );
        for (source, b) in &latest {
            let _ = writeln!(
                out,
                "backupd_last_backup_bytes{{source=\"{}\"}} {}",
                esc(source),
                b.plaintext_bytes
            );
        }
        family(
            &mut out,
            "backupd_rpo_seconds",
            "gauge",
            "Age of the newest restorable point (what would be lost now).",
        );
        family_body(
            &mut out,
            engine,
            |s| {
                latest.get(&s.name).map(|b| {
                    (now - b.finished_at.unwrap_or(b.started_at))
                        .num_seconds()
                        .max(0) as f64
                })
            },
            "backupd_rpo_seconds",
        );
        family(
            &mut out,
            "backupd_rpo_target_seconds",
            "gauge",
            "Recovery point objective of the source.",
        );
        family_body(
            &mut out,
            engine,
            |s| s.targets().map(|t| t.rpo.as_secs_f64()),
            "backupd_rpo_target_seconds",
        );
        family(
            &mut out,
            "backupd_rto_target_seconds",
            "gauge",
            "Recovery time objective of the source.",
        );
        family_body(
            &mut out,
            engine,
            |s| s.targets().map(|t| t.rto.as_secs_f64()),
            "backupd_rto_target_seconds",
        );

        recovery_families(&mut out, engine, now).await;

        family(
            &mut out,
            "backupd_queue_depth",
            "gauge",
            "Jobs queued and due.",
        );
        let _ = writeln!(
            out,
            "backupd_queue_depth {}",
            engine.catalog.queue_depth(now).await?
        );

        let lags = engine.catalog.replication_lag().await?;
        for (name, help, value) in [
            (
                "backupd_replication_pending",
                "Complete backups not yet copied to the destination.",
                (|l: &backup_catalog::DestinationLag| l.pending as i64)
                    as fn(&backup_catalog::DestinationLag) -> i64,
            ),
            (
                "backupd_replication_pending_bytes",
                "Stored bytes of the backups not yet copied to the destination.",
                |l| l.pending_bytes as i64,
            ),
            (
                "backupd_replication_lag_seconds",
                "Age of the oldest backup not yet copied to the destination (0 = caught up).",
                |l| l.lag_seconds(Utc::now()) as i64,
            ),
        ] {
            family(&mut out, name, "gauge", help);
            for l in &lags {
                let _ = writeln!(
                    out,
                    "{name}{{destination=\"{}\"}} {}",
                    esc(&l.destination),
                    value(l)
                );
            }
        }

        let wal = backup_engine::replicate::wal_copy_status(engine, now).await?;
        for (name, help, value) in [
            (
                "backupd_wal_replication_pending",
                "Archived WAL files of the source not yet copied to the destination.",
                (|w: &backup_engine::replicate::WalDestinationStatus| w.lag.pending as i64)
                    as fn(&backup_engine::replicate::WalDestinationStatus) -> i64,
            ),
            (
                "backupd_wal_replication_lag_seconds",
                "Age of the oldest archived WAL file not yet copied to the destination (0 = caught up).",
                |w| w.lag_seconds as i64,
            ),
        ] {
            family(&mut out, name, "gauge", help);
            for w in &wal {
                let _ = writeln!(
                    out,
                    "{name}{{source=\"{}\",destination=\"{}\"}} {}",
                    esc(&w.lag.source),
                    esc(&w.lag.destination),
                    value(w)
                );
            }
        }

        let c = self.inner.lock().expect("metrics");
        family(
            &mut out,
            "backupd_copies_total",
            "counter",
            "Copies to other repositories made by this process.",
        );
        for ((destination, outcome), n) in &c.copies {
            let _ = writeln!(
                out,
                "backupd_copies_total{{destination=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(destination)
            );
        }
        family(
            &mut out,
            "backupd_copy_bytes_total",
            "counter",
            "Bytes copied to other repositories by this process.",
        );
        for (destination, n) in &c.copy_bytes {
            let _ = writeln!(
                out,
                "backupd_copy_bytes_total{{destination=\"{}\"}} {n}",
                esc(destination)
            );
        }
        family(
            &mut out,
            "backupd_job_duration_seconds",
            "summary",
            "Duration of jobs run by this process.",
        );
        for ((source, outcome), (count, sum)) in &c.jobs {
            let labels = format!("source=\"{}\",outcome=\"{outcome}\"", esc(source));
            let _ = writeln!(out, "backupd_job_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(
                out,
                "backupd_job_duration_seconds_count{{{labels}}} {count}"
            );
        }
        family(
            &mut out,
            "backupd_job_failures_total",
            "counter",
            "Failed job attempts run by this process.",
        );
        for (source, n) in &c.failures {
            let _ = writeln!(
                out,
                "backupd_job_failures_total{{source=\"{}\"}} {n}",
                esc(source)
            );
        }
        family(
            &mut out,
            "backupd_bytes_read_total",
            "counter",
            "Plaintext bytes read from sources by this process.",
        );
        for (source, n) in &c.bytes_in {
            let _ = writeln!(
                out,
                "backupd_bytes_read_total{{source=\"{}\"}} {n}",
                esc(source)
            );
        }
        family(
            &mut out,
            "backupd_bytes_written_total",
            "counter",
            "Bytes stored in repositories by this process.",
        );
        for ((source, repo), n) in &c.bytes_out {
            let _ = writeln!(
                out,
                "backupd_bytes_written_total{{source=\"{}\",repository=\"{}\"}} {n}",
                esc(source),
                esc(repo)
            );
        }
        Ok(out)
    }
}

/// The RPO/RTO report (`/api/v1/report/recovery`) as gauges: achieved RPO with archived WAL
/// included, the last drill's RTO, and the verdict (1 for the source's current verdict).
async fn recovery_families(out: &mut String, engine: &Engine, now: chrono::DateTime<Utc>) {
    let report = match backup_engine::report::recovery_report(engine, now).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "recovery report for /metrics failed");
            return;
        }
    };
    family(
        out,
        "backupd_recovery_achieved_rpo_seconds",
        "gauge",
        "Age of the newest restorable point, archived WAL included (absent: none).",
    );
    for r in &report.sources {
        if let Some(v) = r.achieved_rpo_seconds {
            let _ = writeln!(
                out,
                "backupd_recovery_achieved_rpo_seconds{{source=\"{}\"}} {v}",
                esc(&r.source)
            );
        }
    }
    family(
        out,
        "backupd_recovery_last_drill_rto_seconds",
        "gauge",
        "Restore time measured by the last drill (absent: no drill yet).",
    );
    for r in &report.sources {
        if let Some(v) = r.last_drill_rto_seconds {
            let _ = writeln!(
                out,
                "backupd_recovery_last_drill_rto_seconds{{source=\"{}\"}} {v}",
                esc(&r.source)
            );
        }
    }
    family(
        out,
        "backupd_recovery_verdict",
        "gauge",
        "1 for the source's RPO/RTO verdict (ok, untested, rpo-breached, ...), else 0.",
    );
    for r in &report.sources {
        for v in backup_core::recovery::Verdict::ALL {
            let _ = writeln!(
                out,
                "backupd_recovery_verdict{{source=\"{}\",verdict=\"{}\"}} {}",
                esc(&r.source),
                v.as_str(),
                u8::from(v == r.verdict)
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn family_body(
    out: &mut String,
    engine: &Engine,
    value: impl Fn(&backup_engine::config::SourceConfig) -> Option<f64>,
    name: &str,
) {
    for s in &engine.config.sources {
        if let Some(v) = value(s) {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {v}", esc(&s.name));
        }
    }
}

fn esc(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
