//! `backupctl report recovery` and `backupctl report cost`: gathers what the catalog
//! recorded and hands it to the pure models in `backup_core::recovery` and
//! `backup_core::cost`. Also records the reads the cost report counts (`record_gets`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use backup_catalog::{ArtifactWithCopies, ObjectRequests, RequestOperation};
use backup_core::cost::{
    self, CostInputs, CostReport, Month, Prices, RequestKind, RequestRecord, StoredObject,
};
use backup_core::recovery::{self, RecoveryInputs, RecoveryRow, RestorePoint};
use backup_sources::postgres::wal::{SegmentName, WalFileName};

use crate::config::{RepositoryKindConfig, SourceConfig};
use crate::{Engine, EngineError, Result};

/// `[cost]`: where the cost report's prices come from and the regions of repositories that
/// do not name one (local directories).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CostConfig {
    /// A price table like config/prices-2026-11.toml (default: that file, embedded).
    #[serde(default)]
    pub prices_file: Option<PathBuf>,
    /// Repository name -> region, e.g. `{ region-a = "us-east-1" }`; S3 repositories default
    /// to their `region`, local ones to "local" (unpriced unless the table has it).
    #[serde(default)]
    pub regions: BTreeMap<String, String>,
}

/// The storage class of objects a repository writes when no class is recorded.
const DEFAULT_CLASS: &str = "STANDARD";

// ---- recovery ------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    pub generated_at: DateTime<Utc>,
    pub sources: Vec<RecoveryRow>,
}

impl RecoveryReport {
    /// Some source breaches its objectives (exit 1 for `backupctl report recovery`).
    pub fn any_breach(&self) -> bool {
        self.sources.iter().any(|r| r.verdict.is_breach())
    }
}

/// The RPO/RTO report of every configured source at `now`.
///
/// The RTO is what the source's last finished drill measured; a source never drilled is
/// `untested` even when it meets its RPO.
pub async fn recovery_report(engine: &Engine, now: DateTime<Utc>) -> Result<RecoveryReport> {
    let mut sources = Vec::new();
    for s in &engine.config.sources {
        let targets = s.targets();
        let newest_point = newest_restorable_point(engine, s).await?;
        sources.push(recovery::recovery_row(
            &RecoveryInputs {
                source: s.name.clone(),
                kind: s.kind.kind_name().to_owned(),
                tier: s.tier.map(|t| format!("{t:?}").to_lowercase()),
                target_rpo: targets.map(|t| t.rpo),
                target_rto: targets.map(|t| t.rto),
                newest_point,
                last_drill: last_drill(engine, &s.name).await?,
            },
            now,
        ));
    }
    Ok(RecoveryReport {
        generated_at: now,
        sources,
    })
}

/// The last finished drill of `source`, as the recovery model sees it.
async fn last_drill(engine: &Engine, source: &str) -> Result<Option<recovery::DrillResult>> {
    let Some(d) = engine.catalog.last_finished_drill(source).await? else {
        return Ok(None);
    };
    Ok(Some(recovery::DrillResult {
        finished_at: d.finished_at.unwrap_or(d.started_at),
        rto: std::time::Duration::from_millis(d.rto_millis.unwrap_or(0)),
        succeeded: d.status == backup_catalog::DrillStatus::Passed,
    }))
}

/// The newest point `source` can be restored to: its newest complete backup; for PostgreSQL,
/// the newest base backup whose own WAL is archived, extended by the WAL archived after it
/// without a gap (the time the last segment of that continuous run was archived).
pub async fn newest_restorable_point(
    engine: &Engine,
    source: &SourceConfig,
) -> Result<Option<RestorePoint>> {
    let latest = engine.catalog.latest_complete_backup(&source.name).await?;
    if source.kind.kind_name() != "postgres" {
        return Ok(latest.map(|b| RestorePoint {
            at: b.finished_at.unwrap_or(b.started_at),
            from: format!("backup {}", b.id),
        }));
    }
    let size = source.kind.wal_segment_size().unwrap_or_default();
    let files = engine.catalog.wal_files(&source.name).await?;
    let mut archived: HashMap<(u32, u64), DateTime<Utc>> = HashMap::new();
    for f in &files {
        if let Ok(WalFileName::Segment(s)) = WalFileName::parse(&f.file_name, size) {
            archived.insert((s.timeline, s.segno), f.archived_at);
        }
    }
    let bases = engine.catalog.postgres_backups(&source.name).await?;
    // Newest first: the first base whose start..stop WAL is all archived is restorable.
    for base in bases.iter().rev() {
        let (Ok(start), Ok(stop)) = (
            SegmentName::parse(&base.start_wal, size),
            SegmentName::parse(&base.stop_wal, size),
        ) else {
            continue;
        };
        let own_wal =
            (start.segno..=stop.segno).all(|n| archived.contains_key(&(stop.timeline, n)));
        if !own_wal {
            continue;
        }
        let mut point = RestorePoint {
            at: base.stop_time,
            from: format!("backup {}", base.backup_id),
        };
        let mut next = stop.next();
        while let Some(at) = archived.get(&(next.timeline, next.segno)) {
            if *at > point.at {
                point.at = *at;
            }
            point.from = format!(
                "backup {} + WAL to {}",
                base.backup_id,
                next.file_name(size)
            );
            next = next.next();
        }
        return Ok(Some(point));
    }
    Ok(None)
}

// ---- cost ----------------------------------------------------------------------------------

/// The price table: `[cost] prices-file`, or the shipped one.
pub fn prices(engine: &Engine) -> Result<Prices> {
    match &engine.config.cost.prices_file {
        None => Ok(Prices::shipped()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                EngineError::Usage(format!(
                    "cannot read the price table {} (`[cost] prices-file` in {}): {e}",
                    path.display(),
                    engine.config.origin
                ))
            })?;
            Prices::parse_toml(&text, &path.display().to_string())
                .map_err(|e| EngineError::Usage(e.to_string()))
        }
    }
}

struct RepoFacts {
    region: String,
    class: String,
    part_size: Option<u64>,
}

fn repo_facts(engine: &Engine) -> Result<HashMap<String, RepoFacts>> {
    let cost = &engine.config.cost;
    for name in cost.regions.keys() {
        if engine.config.repository(name).is_err() {
            return Err(EngineError::Usage(format!(
                "`[cost] regions` in {} names repository {name:?}, which is not configured",
                engine.config.origin
            )));
        }
    }
    Ok(engine
        .config
        .repositories
        .iter()
        .map(|r| {
            let (region, class, part_size) = match &r.kind {
                RepositoryKindConfig::S3 {
                    region,
                    storage_class,
                    part_size_mib,
                    ..
                } => (
                    region.clone(),
                    storage_class.clone(),
                    Some((*part_size_mib as u64) << 20),
                ),
                RepositoryKindConfig::Local { .. } => ("local".to_owned(), None, None),
            };
            (
                r.name.clone(),
                RepoFacts {
                    region: cost.regions.get(&r.name).cloned().unwrap_or(region),
                    class: class.unwrap_or_else(|| DEFAULT_CLASS.to_owned()),
                    part_size,
                },
            )
        })
        .collect())
}

/// The most backups a keep policy retains, when it bounds them: the sum of its counts (an
/// upper bound, as buckets overlap); `None` without a policy or with `within`.
fn max_backups(keep: Option<&backup_core::retention::KeepPolicy>) -> Option<u64> {
    let k = keep?;
    if k.is_empty() || k.within.is_some_and(|d| !d.is_zero()) {
        return None;
    }
    Some(
        [k.last, k.hourly, k.daily, k.weekly, k.monthly, k.yearly]
            .iter()
            .map(|c| u64::from(c.unwrap_or(0)))
            .sum(),
    )
}

/// The cost report of `month` from the catalog's records and the price table.
pub async fn cost_report(engine: &Engine, month: Month) -> Result<CostReport> {
    let prices = prices(engine)?;
    let repos = repo_facts(engine)?;
    let facts = |name: &str| repos.get(name);
    let mut inputs = CostInputs::default();
    for (name, f) in &repos {
        inputs.regions.insert(name.clone(), f.region.clone());
    }
    let mut envelope_counted = HashSet::new();
    for o in engine
        .catalog
        .usage_objects(month.start(), month.end())
        .await?
    {
        let f = facts(&o.repository);
        let class = o
            .storage_class
            .clone()
            .or_else(|| f.map(|f| f.class.clone()))
            .unwrap_or_else(|| DEFAULT_CLASS.to_owned());
        let mut puts = cost::put_requests(o.stored_size, f.and_then(|f| f.part_size));
        // A backup also writes one key envelope object per repository.
        if let Some(b) = &o.backup_id {
            if envelope_counted.insert((b.clone(), o.repository.clone())) {
                puts += 1;
            }
        }
        inputs.objects.push(StoredObject {
            source: o.source,
            repository: o.repository,
            origin_repository: o.origin_repository,
            storage_class: class,
            bytes: o.stored_size,
            put_requests: puts,
            backup: o.backup_id,
            created_at: o.created_at,
            deleted_at: o.deleted_at,
        });
    }
    for q in engine
        .catalog
        .object_requests(month.start(), month.end())
        .await?
    {
        let class = q
            .storage_class
            .clone()
            .or_else(|| facts(&q.repository).map(|f| f.class.clone()))
            .unwrap_or_else(|| DEFAULT_CLASS.to_owned());
        inputs.requests.push(RequestRecord {
            source: q.source,
            repository: q.repository,
            storage_class: class,
            kind: match q.operation {
                RequestOperation::Get => RequestKind::Get,
                RequestOperation::Restore => RequestKind::Restore {
                    tier: q.tier.unwrap_or_else(|| "standard".to_owned()),
                },
            },
            requests: q.requests,
            bytes: q.bytes,
            at: q.requested_at,
        });
    }
    for s in &engine.config.sources {
        if let Some(n) = max_backups(s.keep.as_ref()) {
            inputs
                .max_backups
                .insert((s.name.clone(), s.repository.clone()), n);
        }
        for rule in &s.copy_to {
            if let Some(n) = max_backups(rule.keep.as_ref().or(s.keep.as_ref())) {
                inputs
                    .max_backups
                    .insert((s.name.clone(), rule.to.clone()), n);
            }
        }
    }
    Ok(cost::cost_report(&inputs, &prices, month))
}

// ---- recording reads -------------------------------------------------------------------------

/// Reads of one backup layer from `repository`, by storage class: (class, objects, bytes).
/// The key envelope is one more object, in the manifest's class.
pub(crate) fn reads_of(
    repository: &str,
    artifacts: &[&ArtifactWithCopies],
) -> Vec<(Option<String>, u64, u64)> {
    let mut by_class: BTreeMap<Option<String>, (u64, u64)> = BTreeMap::new();
    let mut envelope = true;
    for a in artifacts {
        if let Some(c) = a.copies.iter().find(|c| c.repository == repository) {
            let e = by_class.entry(c.storage_class.clone()).or_default();
            e.0 += 1 + u64::from(std::mem::take(&mut envelope));
            e.1 += c.stored_size;
        }
    }
    by_class
        .into_iter()
        .map(|(class, (n, bytes))| (class, n, bytes))
        .collect()
}

/// Records GETs for the cost report; a failure to record is logged, never fails the read.
pub(crate) async fn record_gets(
    engine: &Engine,
    source: &str,
    repository: &str,
    reads: Vec<(Option<String>, u64, u64)>,
) {
    for (storage_class, requests, bytes) in reads {
        record(
            engine,
            ObjectRequests {
                source: source.to_owned(),
                repository: repository.to_owned(),
                storage_class,
                operation: RequestOperation::Get,
                tier: None,
                requests,
                bytes,
                requested_at: Utc::now(),
            },
        )
        .await;
    }
}

/// Records requests; a failure is logged (the operation itself succeeded).
pub(crate) async fn record(engine: &Engine, r: ObjectRequests) {
    if let Err(e) = engine.catalog.record_requests(&r).await {
        tracing::warn!(error = %e, repository = %r.repository,
            "could not record requests for the cost report");
    }
}

// ---- rendering -----------------------------------------------------------------------------

/// How `backupctl report` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Table,
    Json,
    Csv,
}

impl std::str::FromStr for ReportFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "table" => Ok(Self::Table),
            "json" => Ok(Self::Json),
            "csv" => Ok(Self::Csv),
            other => Err(format!("unknown format {other:?}: use table, json or csv")),
        }
    }
}

/// One CSV field (RFC 4180: quoted when it holds a comma, quote or line break).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn csv_line(fields: &[String]) -> String {
    let mut line = fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",");
    line.push('\n');
    line
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(T::to_string).unwrap_or_default()
}

fn dur(secs: Option<u64>) -> String {
    secs.map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
        .unwrap_or_else(|| "-".to_owned())
}

pub fn render_recovery(r: &RecoveryReport, format: ReportFormat) -> String {
    match format {
        ReportFormat::Json => serde_json::to_string_pretty(r).expect("serializable") + "\n",
        ReportFormat::Csv => {
            let mut out = csv_line(
                &[
                    "source",
                    "kind",
                    "tier",
                    "target_rpo_seconds",
                    "target_rto_seconds",
                    "restorable_point",
                    "restorable_from",
                    "achieved_rpo_seconds",
                    "last_drill_at",
                    "last_drill_rto_seconds",
                    "rto_status",
                    "verdict",
                ]
                .map(str::to_owned),
            );
            for s in &r.sources {
                out += &csv_line(&[
                    s.source.clone(),
                    s.kind.clone(),
                    opt(&s.tier),
                    opt(&s.target_rpo_seconds),
                    opt(&s.target_rto_seconds),
                    s.restorable_point
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    opt(&s.restorable_from),
                    opt(&s.achieved_rpo_seconds),
                    s.last_drill_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                    opt(&s.last_drill_rto_seconds),
                    s.rto_status.clone(),
                    s.verdict.as_str().to_owned(),
                ]);
            }
            out
        }
        ReportFormat::Table => {
            let mut out = format!(
                "{:<16}  {:<10}  {:>8}  {:>8}  {:>12}  {:>14}  {:<20}\n",
                "SOURCE", "TIER", "RPO", "RTO", "ACHIEVED RPO", "LAST DRILL RTO", "VERDICT"
            );
            for s in &r.sources {
                out += &format!(
                    "{:<16}  {:<10}  {:>8}  {:>8}  {:>12}  {:>14}  {:<20}\n",
                    s.source,
                    s.tier.as_deref().unwrap_or("-"),
                    dur(s.target_rpo_seconds),
                    dur(s.target_rto_seconds),
                    dur(s.achieved_rpo_seconds),
                    s.last_drill_rto_seconds
                        .map(|v| dur(Some(v)))
                        .unwrap_or_else(|| s.rto_status.clone()),
                    s.verdict.as_str(),
                );
            }
            for s in &r.sources {
                for reason in &s.reasons {
                    out += &format!("{}: {reason}\n", s.source);
                }
            }
            out
        }
    }
}

pub fn render_cost(r: &CostReport, format: ReportFormat) -> String {
    match format {
        ReportFormat::Json => serde_json::to_string_pretty(r).expect("serializable") + "\n",
        ReportFormat::Csv => {
            let mut out = csv_line(
                &[
                    "month",
                    "source",
                    "repository",
                    "region",
                    "storage_class",
                    "stored_gb_month",
                    "put_requests",
                    "get_requests",
                    "restore_requests",
                    "retrieval_gb",
                    "inter_region_transfer_gb",
                    "early_deletion_gb_month",
                    "storage_cost",
                    "request_cost",
                    "retrieval_cost",
                    "transfer_cost",
                    "early_deletion_cost",
                    "total_cost",
                    "currency",
                    "priced",
                ]
                .map(str::to_owned),
            );
            let month = r.month.to_string();
            for row in &r.rows {
                out += &csv_line(&[
                    month.clone(),
                    row.source.clone(),
                    row.repository.clone(),
                    row.region.clone(),
                    row.storage_class.clone(),
                    format!("{:.6}", row.stored_gb_month),
                    row.put_requests.to_string(),
                    row.get_requests.to_string(),
                    row.restore_requests.to_string(),
                    format!("{:.6}", row.retrieval_gb),
                    format!("{:.6}", row.inter_region_transfer_gb),
                    format!("{:.6}", row.early_deletion_gb_month),
                    format!("{:.6}", row.storage_cost),
                    format!("{:.6}", row.request_cost),
                    format!("{:.6}", row.retrieval_cost),
                    format!("{:.6}", row.transfer_cost),
                    format!("{:.6}", row.early_deletion_cost),
                    format!("{:.6}", row.total_cost),
                    r.currency.clone(),
                    row.priced.to_string(),
                ]);
            }
            for f in &r.forecast {
                out += &csv_line(&[
                    f.month.to_string(),
                    "forecast".to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{:.6}", f.stored_gb_month),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{:.6}", f.storage_cost),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    format!("{:.6}", f.total_cost),
                    r.currency.clone(),
                    "true".to_owned(),
                ]);
            }
            out
        }
        ReportFormat::Table => {
            let mut out = format!(
                "cost report {} (prices of {}, {})\n{:<14}  {:<12}  {:<10}  {:<13}  {:>10}  {:>7}  {:>6}  {:>7}  {:>8}  {:>8}  {:>10}\n",
                r.month,
                r.prices_effective,
                r.currency,
                "SOURCE",
                "REPOSITORY",
                "REGION",
                "CLASS",
                "GB-MONTH",
                "PUT",
                "GET",
                "RESTORE",
                "RETR GB",
                "XFER GB",
                "COST"
            );
            for row in &r.rows {
                out += &format!(
                    "{:<14}  {:<12}  {:<10}  {:<13}  {:>10.3}  {:>7}  {:>6}  {:>7}  {:>8.3}  {:>8.3}  {:>10.4}{}\n",
                    row.source,
                    row.repository,
                    row.region,
                    row.storage_class,
                    row.stored_gb_month,
                    row.put_requests,
                    row.get_requests,
                    row.restore_requests,
                    row.retrieval_gb,
                    row.inter_region_transfer_gb,
                    row.total_cost,
                    if row.early_deletion_cost > 0.0 {
                        format!("  (early deletion {:.4})", row.early_deletion_cost)
                    } else {
                        String::new()
                    }
                );
            }
            out += &format!("total {:.4} {}\n", r.total_cost, r.currency);
            for f in &r.forecast {
                out += &format!(
                    "forecast {}: {:.3} GB-month, {:.4} {}\n",
                    f.month, f.stored_gb_month, f.total_cost, r.currency
                );
            }
            for n in &r.notes {
                out += &format!("note: {n}\n");
            }
            out
        }
    }
}

#[cfg(test)]
mod tests;
