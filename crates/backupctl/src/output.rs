//! What backupctl prints: short human text by default, JSON with --json.

use std::collections::HashMap;

use serde::Serialize;

use backup_catalog::{ArtifactWithCopies, BackupRecord};
use backup_core::BackupId;
use backup_engine::backup::BackupOutcome;
use backup_engine::gc::GcReport;
use backup_engine::init::InitReport;
use backup_engine::prune::PruneReport;
use backup_engine::rebuild::RebuildReport;
use backup_engine::replicate::{CopyOutcome, CopyPlace, ReplicationReport, ReplicationStatus};
use backup_engine::restore::RestoreOutcome;
use backup_engine::thaw::ThawReport;
use backup_engine::verify::VerifyReport;

fn json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

pub use backup_engine::human_bytes;

fn rate(bytes: u64, seconds: f64) -> String {
    format!(
        "{}/s",
        human_bytes((bytes as f64 / seconds.max(1e-3)) as u64)
    )
}

pub fn init(r: &InitReport) {
    if r.key_created {
        eprintln!("created key file {} (key {}); keep a copy somewhere safe: without it no backup can be restored", r.key_file, r.key_id);
    } else {
        eprintln!("using existing key file {} (key {})", r.key_file, r.key_id);
    }
    eprintln!("catalog ready at {}", r.catalog);
    for (name, created) in &r.repositories {
        eprintln!(
            "repository {name}: {}",
            if *created {
                "created"
            } else {
                "already initialised"
            }
        );
    }
}

pub fn backup(o: &BackupOutcome, copies: Option<&ReplicationReport>, as_json: bool) {
    if as_json {
        #[derive(Serialize)]
        struct WithCopies<'a> {
            #[serde(flatten)]
            backup: &'a BackupOutcome,
            copies: Vec<&'a CopyOutcome>,
        }
        return json(&WithCopies {
            backup: o,
            copies: copies
                .map(|r| r.copies.iter().collect())
                .unwrap_or_default(),
        });
    }
    eprintln!(
        "backed up {} files, {} dirs, {} symlinks ({}) from {} to {} in {:.1}s ({}); stored {}{}",
        o.files,
        o.dirs,
        o.symlinks,
        human_bytes(o.plaintext_bytes),
        o.source,
        o.repository,
        o.seconds,
        rate(o.plaintext_bytes, o.seconds),
        human_bytes(o.stored_bytes),
        if o.skipped > 0 {
            format!("; {} paths skipped (see `backupctl show`)", o.skipped)
        } else {
            String::new()
        }
    );
    for c in copies.map(|r| r.copies.as_slice()).unwrap_or_default() {
        copy_line(c);
    }
    // The id alone on stdout, for scripts.
    println!("{}", o.backup_id);
}

/// One copy's outcome, on stderr (stdout carries ids and tables).
fn copy_line(c: &CopyOutcome) {
    match &c.error {
        None => eprintln!(
            "copied backup {} from {} to {}{}: {} artifacts, {} in {:.1}s ({})",
            c.backup_id,
            c.from,
            c.destination,
            c.storage_class
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default(),
            c.artifacts_copied,
            human_bytes(c.bytes_copied),
            c.seconds,
            rate(c.bytes_copied, c.seconds)
        ),
        Some(e) => eprintln!(
            "warning: copying backup {} to {} failed: {e}; it stays queued and is retried by \
             `backupctl replicate` or backupd",
            c.backup_id, c.destination
        ),
    }
}

pub fn replicate(r: &ReplicationReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    for c in &r.copies {
        copy_line(c);
    }
    let failed = r.failed().count();
    for f in &r.wal_failures {
        eprintln!("warning: WAL copy failed: {f}");
    }
    println!(
        "{} copies made, {failed} failed{}",
        r.copies.len() - failed,
        if r.wal_files_copied > 0 || !r.wal_failures.is_empty() {
            format!(
                "; {} WAL files copied ({}), {} failed",
                r.wal_files_copied,
                human_bytes(r.wal_bytes_copied),
                r.wal_failures.len()
            )
        } else {
            String::new()
        }
    );
}

fn lag_text(seconds: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}

fn last_copy_text(at: Option<chrono::DateTime<chrono::Utc>>) -> String {
    at.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn replication_status(s: &ReplicationStatus, as_json: bool) {
    if as_json {
        return json(s);
    }
    println!(
        "{:<16}  {:>7}  {:>10}  {:>7}  {:>6}  {:>10}  LAST COPY (UTC)",
        "DESTINATION", "PENDING", "BYTES", "FAILING", "DONE", "LAG"
    );
    for d in &s.destinations {
        println!(
            "{:<16}  {:>7}  {:>10}  {:>7}  {:>6}  {:>10}  {}",
            d.lag.destination,
            d.lag.pending,
            human_bytes(d.lag.pending_bytes),
            d.lag.failing,
            d.lag.done,
            lag_text(d.lag_seconds),
            last_copy_text(d.lag.last_copied_at)
        );
    }
    if !s.wal.is_empty() {
        println!(
            "\n{:<16}  {:<16}  {:>7}  {:>10}  {:>6}  {:>10}  LAST COPY (UTC)",
            "WAL OF SOURCE", "DESTINATION", "PENDING", "BYTES", "DONE", "LAG"
        );
    }
    for w in &s.wal {
        println!(
            "{:<16}  {:<16}  {:>7}  {:>10}  {:>6}  {:>10}  {}",
            w.lag.source,
            w.lag.destination,
            w.lag.pending,
            human_bytes(w.lag.pending_bytes),
            w.lag.done,
            lag_text(w.lag_seconds),
            last_copy_text(w.lag.last_copied_at)
        );
    }
    for t in &s.failing {
        println!(
            "failing: backup {} to {}: {} attempts, next at {}: {}",
            t.backup_id,
            t.destination,
            t.attempts,
            t.next_attempt_at.format("%Y-%m-%d %H:%M:%S"),
            t.error.as_deref().unwrap_or("-")
        );
    }
}

pub fn thaw_status(reports: &[ThawReport], as_json: bool) {
    if as_json {
        return json(reports);
    }
    if reports.is_empty() {
        println!("no archive restores requested");
    }
    for r in reports {
        let state = if r.is_ready() {
            "READY".to_owned()
        } else {
            format!(
                "{} of {} objects ready, {} restoring, {} not requested",
                r.ready, r.objects, r.in_progress, r.frozen
            )
        };
        println!(
            "backup {} in {} ({}, {}): {state}; tier {} for {} days, expected {}, estimated ${:.2}{}",
            r.backup_id,
            r.repository,
            r.storage_class,
            human_bytes(r.bytes),
            r.tier,
            r.days,
            r.estimate.expected_wait,
            r.estimate.usd,
            r.requested_at
                .map(|t| format!("; requested {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default()
        );
    }
}

pub fn list(backups: &[BackupRecord], places: &HashMap<BackupId, Vec<CopyPlace>>, as_json: bool) {
    let no_copies = Vec::new();
    let copies_of = |b: &BackupRecord| places.get(&b.id).unwrap_or(&no_copies);
    if as_json {
        #[derive(Serialize)]
        struct Listed<'a> {
            #[serde(flatten)]
            backup: &'a BackupRecord,
            copies: &'a [CopyPlace],
        }
        let listed: Vec<_> = backups
            .iter()
            .map(|b| Listed {
                backup: b,
                copies: copies_of(b),
            })
            .collect();
        return json(&listed);
    }
    println!(
        "{:<36}  {:<12}  {:<10}  {:<4}  {:<20}  {:>7}  {:>10}  {:>10}  {:>6}  {:<8}  COPIES",
        "ID",
        "SOURCE",
        "STATUS",
        "HOLD",
        "STARTED (UTC)",
        "FILES",
        "SIZE",
        "STORED",
        "RATIO",
        "TAG"
    );
    for b in backups {
        let copies: Vec<String> = copies_of(b)
            .iter()
            .map(|p| {
                let mut s = p.repository.clone();
                if let Some(class) = &p.storage_class {
                    s.push_str(&format!("({class})"));
                }
                if !p.complete {
                    s.push_str("[partial]");
                }
                s
            })
            .collect();
        println!(
            "{:<36}  {:<12}  {:<10}  {:<4}  {:<20}  {:>7}  {:>10}  {:>10}  {:>6}  {:<8}  {}",
            b.id,
            b.source,
            b.status.as_str(),
            if b.legal_hold { "HOLD" } else { "" },
            b.started_at.format("%Y-%m-%d %H:%M:%S"),
            b.file_count,
            human_bytes(b.plaintext_bytes),
            human_bytes(b.stored_bytes),
            b.compression_ratio()
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            b.tag.as_deref().unwrap_or(""),
            copies.join(",")
        );
    }
}

pub fn show(
    b: &BackupRecord,
    artifacts: &[ArtifactWithCopies],
    snapshot: Option<&backup_catalog::ElasticsearchSnapshotRecord>,
    rds: &[backup_catalog::RdsSnapshotRecord],
    azure_sql: Option<&backup_catalog::AzureSqlBackupRecord>,
    as_json: bool,
) {
    if as_json {
        #[derive(Serialize)]
        struct Show<'a> {
            backup: &'a BackupRecord,
            artifacts: &'a [ArtifactWithCopies],
            #[serde(skip_serializing_if = "Option::is_none")]
            elasticsearch_snapshot: Option<&'a backup_catalog::ElasticsearchSnapshotRecord>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            rds_snapshots: &'a [backup_catalog::RdsSnapshotRecord],
            #[serde(skip_serializing_if = "Option::is_none")]
            azure_sql: Option<&'a backup_catalog::AzureSqlBackupRecord>,
        }
        return json(&Show {
            backup: b,
            artifacts,
            elasticsearch_snapshot: snapshot,
            rds_snapshots: rds,
            azure_sql,
        });
    }
    for s in rds {
        println!(
            "snapshot    {} ({}, {} in {}{}) of DB {} {}; the artifacts below are its record",
            s.arn,
            s.role,
            s.identifier,
            s.region,
            if s.encrypted { ", encrypted" } else { "" },
            s.resource_kind,
            s.resource
        );
    }
    if let Some(a) = azure_sql {
        println!(
            "database    {} on server {} ({}), restorable as of {} (window began {}); the artifacts below are its record",
            a.database,
            a.server,
            a.database_resource_id,
            a.restore_point.to_rfc3339(),
            a.earliest_restore_date
                .map(|t| t.to_rfc3339())
                .unwrap_or_else(|| "-".into())
        );
        if let Some(url) = &a.export_blob_url {
            println!(
                "bacpac      {url} ({})",
                a.export_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    if let Some(s) = snapshot {
        println!(
            "snapshot    {}:{} ({}; {} indices: {}; {} shards, {} failed; {}) in the cluster; the artifacts below are its record",
            s.es_repository,
            s.snapshot,
            s.state,
            s.indices.len(),
            s.indices.join(", "),
            s.shards_total,
            s.shards_failed,
            human_bytes(s.size_bytes)
        );
    }
    println!("backup      {}", b.id);
    println!("source      {} ({})", b.source, b.backup_type);
    println!("status      {}", b.status.as_str());
    if let Some(tag) = &b.tag {
        println!("tag         {tag}");
    }
    if b.legal_hold {
        println!("legal hold  yes (prune never deletes it; `backupctl unhold` releases it)");
    }
    println!("repository  {}", b.repository);
    println!("started     {}", b.started_at.to_rfc3339());
    if let Some(f) = b.finished_at {
        println!(
            "finished    {} ({:.1}s)",
            f.to_rfc3339(),
            (f - b.started_at).num_milliseconds() as f64 / 1000.0
        );
    }
    println!("host        {} (pid {}), {}", b.host, b.pid, b.tool_version);
    println!("files       {} ({} skipped)", b.file_count, b.skipped_count);
    println!(
        "size        {} -> {} stored (ratio {})",
        human_bytes(b.plaintext_bytes),
        human_bytes(b.stored_bytes),
        b.compression_ratio()
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(e) = &b.error {
        println!("error       {e}");
    }
    for a in artifacts {
        println!(
            "artifact    {} {} {} plaintext, {} segments, sha256 {}",
            a.artifact.id,
            a.artifact.role,
            human_bytes(a.artifact.plaintext_size),
            a.artifact.segment_count,
            a.artifact.plaintext_sha256
        );
        for c in &a.copies {
            println!(
                "  copy      {}:{} {}{} sha256 {} verified {}",
                c.repository,
                c.object_key,
                human_bytes(c.stored_size),
                c.storage_class
                    .as_deref()
                    .map(|s| format!(" {s}"))
                    .unwrap_or_default(),
                c.stored_sha256,
                c.verified_at.to_rfc3339()
            );
        }
    }
}

pub fn restore(o: &RestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    println!(
        "restored backup {} of {} into {}: {} files, {} dirs, {} symlinks, {} in {:.1}s ({})",
        o.backup_id,
        o.source,
        o.target.display(),
        o.files,
        o.dirs,
        o.symlinks,
        human_bytes(o.bytes),
        o.seconds,
        rate(o.bytes, o.seconds)
    );
    eprintln!("restored from repository {}", o.repository);
    for f in &o.failovers {
        eprintln!("  not used: {f}");
    }
}

pub fn mysql_restore(o: &backup_engine::mysql::MysqlRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    println!(
        "restored backup {} of {} into {} (databases {}): {} tables, {} rows in {:.1}s; row counts and CHECKSUM TABLE match the backup",
        o.backup_id,
        o.source,
        o.target,
        o.databases.join(", "),
        o.tables.len(),
        o.rows,
        o.seconds
    );
    eprintln!("restored from repository {}", o.repository);
}

pub fn blob_restore(o: &backup_engine::azure_blob::BlobRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    let places: Vec<String> = o
        .containers
        .iter()
        .map(|c| {
            if c.prefix.is_empty() {
                format!("{} -> {}", c.from, c.to)
            } else {
                format!("{} -> {}/{}", c.from, c.to, c.prefix)
            }
        })
        .collect();
    println!(
        "restored backup {} of {} into account {} ({}): {} blobs, {} bytes in {:.1}s; sizes, SHA-256 and listings match the backup",
        o.backup_id,
        o.source,
        o.account,
        places.join(", "),
        o.blobs,
        o.bytes,
        o.seconds
    );
    eprintln!("restored from repository {}", o.repository);
}

pub fn es_restore(o: &backup_engine::elasticsearch::EsRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    println!(
        "restored snapshot {}:{} (backup {} of {}): indices {}, {} shards in {:.1}s",
        o.es_repository,
        o.snapshot,
        o.backup_id,
        o.source,
        o.indices.join(", "),
        o.shards_total,
        o.seconds
    );
}

pub fn rds_restore(o: &backup_engine::rds::RdsRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    let endpoint = match (&o.address, o.port) {
        (Some(address), Some(port)) => format!(", endpoint {address}:{port}"),
        (Some(address), None) => format!(", endpoint {address}"),
        _ => String::new(),
    };
    let writer = o
        .writer_instance
        .as_ref()
        .map(|w| format!(", writer instance {w}"))
        .unwrap_or_default();
    println!(
        "restored backup {} of {} into DB {} {} in {} from {}{endpoint}{writer} in {:.1}s",
        o.backup_id, o.source, o.kind, o.identifier, o.region, o.snapshot_arn, o.seconds
    );
}

pub fn azure_sql_restore(o: &backup_engine::azure_sql::AzureSqlRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    let of = o
        .backup_id
        .map(|id| format!("backup {id} of {}", o.source))
        .unwrap_or_else(|| format!("source {}", o.source));
    let point = o.point_in_time.to_rfc3339();
    if o.waited {
        println!(
            "restored {of} (database {} as of {point}) into new database {} on server {} ({}) in {:.1}s",
            o.source_database,
            o.target_database,
            o.server,
            o.status.as_deref().unwrap_or("status unknown"),
            o.seconds
        );
    } else {
        println!(
            "Azure accepted the restore of {of} (database {} as of {point}) into new database {} on server {}; it is not done yet{}",
            o.source_database,
            o.target_database,
            o.server,
            o.operation_url
                .as_deref()
                .map(|u| format!(" (progress: {u})"))
                .unwrap_or_default()
        );
    }
}

pub fn archive_check(c: &backup_engine::wal::ArchiveCheck, as_json: bool) {
    if as_json {
        return json(c);
    }
    let range = format!(
        "{} to {}",
        c.from.as_deref().unwrap_or("-"),
        c.to.as_deref().unwrap_or("-")
    );
    if c.ok {
        println!(
            "WAL archive of {} is continuous from {range} (timeline {}, {} files archived)",
            c.source,
            c.timeline.unwrap_or(1),
            c.files_archived
        );
        return;
    }
    if let Some(problem) = &c.problem {
        println!("WAL archive of {} cannot be replayed: {problem}", c.source);
    }
    for m in &c.missing {
        println!(
            "missing WAL segment {} (timeline {}) between {range}",
            m.file_name, m.timeline
        );
    }
}

pub fn pitr(o: &backup_engine::pitr::PitrOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    println!(
        "restored base backup {} of {} (ended {}) into {}: {} files, {} in {:.1}s; recovery target {}",
        o.base_backup,
        o.source,
        o.base_backup_stop_time.to_rfc3339(),
        o.data_directory.display(),
        o.files,
        human_bytes(o.bytes),
        o.restore_seconds,
        o.target
    );
    match (&o.recovery_seconds, &o.server_log) {
        (Some(seconds), log) => println!(
            "server recovered and promoted in {seconds:.1}s: reached {}{}{}",
            o.reached_lsn.as_deref().unwrap_or("?"),
            o.reached_time
                .as_deref()
                .map(|t| format!(" (last transaction {t})"))
                .unwrap_or_default(),
            log.as_ref()
                .map(|l| format!("; log {}", l.display()))
                .unwrap_or_default()
        ),
        (None, _) => println!(
            "start it with: pg_ctl -D {} start (recovery.signal and restore_command are set)",
            o.data_directory.display()
        ),
    }
}

pub fn verify(r: &VerifyReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    let mode = if r.quick { "quick" } else { "full" };
    for b in &r.backups {
        if b.ok {
            println!(
                "ok      {} ({}): {} artifacts in {}, {} read ({mode}){}",
                b.backup_id,
                b.source,
                b.artifacts_checked,
                b.repositories.join(", "),
                human_bytes(b.bytes_read),
                if b.archived_size_only > 0 {
                    format!(
                        "; {} archived objects checked by size only (thaw to read them)",
                        b.archived_size_only
                    )
                } else {
                    String::new()
                }
            );
            for note in &b.notes {
                println!("        {note}");
            }
        } else {
            println!("FAILED  {} ({}):", b.backup_id, b.source);
            for p in &b.problems {
                println!("        {}", p.message);
            }
        }
    }
    let failed = r.backups.iter().filter(|b| !b.ok).count();
    println!(
        "{} backups verified ({mode}), {failed} failed",
        r.backups.len()
    );
}

pub fn rebuild(r: &RebuildReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    for id in &r.imported {
        println!("imported    {id}");
    }
    for (id, why) in &r.incomplete {
        println!("not a complete backup: {id}: {why}");
    }
    println!(
        "{} backups imported, {} incomplete{}",
        r.imported.len(),
        r.incomplete.len(),
        if r.wal_files_imported > 0 {
            format!("; {} archived WAL files recorded", r.wal_files_imported)
        } else {
            String::new()
        }
    );
}

pub fn gc(r: &GcReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    for id in &r.deletions_finished {
        println!("finished deleting backup {id} (left `deleting` by an interrupted prune)");
    }
    for id in &r.interrupted {
        println!("marked interrupted backup {id} as failed");
    }
    for id in &r.unknown_backups {
        println!("not in the catalog (left alone; `backupctl catalog rebuild` imports complete ones): {id}");
    }
    println!(
        "{} objects of failed backups deleted, {} temporary files removed",
        r.objects_deleted, r.temp_files_removed
    );
}

pub fn prune(r: &PruneReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    if r.dry_run {
        println!("dry run: nothing is deleted");
    }
    for s in &r.sources {
        println!(
            "source {} (keep {}, time zone {}):",
            s.source, s.policy, s.timezone
        );
        for b in &s.backups {
            let reasons: Vec<String> = b.reasons.iter().map(ToString::to_string).collect();
            let outcome = match (&b.error, b.deleted) {
                (Some(e), _) => format!("  FAILED: {e}"),
                (None, true) => "  deleted".to_owned(),
                (None, false) => String::new(),
            };
            println!(
                "  {:<6}  {}  {:<9}  {:<22}  {:<4}  {}{}{outcome}",
                b.action.as_str(),
                b.backup_id,
                b.status.as_str(),
                b.finished_local.as_deref().unwrap_or("-"),
                if b.legal_hold { "HOLD" } else { "" },
                b.tag
                    .as_deref()
                    .map(|t| format!("[{t}] "))
                    .unwrap_or_default(),
                reasons.join(", "),
            );
        }
        if s.early_deletion_charge_usd > 0.0 {
            println!(
                "  early-deletion charges (estimated): ${:.2}",
                s.early_deletion_charge_usd
            );
        }
        let verb = if r.dry_run {
            "would be deleted"
        } else {
            "deleted"
        };
        if s.wal_files_expired > 0 {
            println!(
                "  {} archived WAL files no kept base backup needs {verb}",
                s.wal_files_expired
            );
        }
        if s.oplog_slices_expired > 0 {
            println!(
                "  {} archived oplog slices no kept backup needs {verb}",
                s.oplog_slices_expired
            );
        }
    }
    for c in &r.copies_expired {
        let outcome = match (&c.error, c.deleted) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, true) => "deleted".to_owned(),
            (None, false) => "would be deleted".to_owned(),
        };
        println!(
            "copy of backup {} ({}) in {}: expired by its copy rule; {outcome}",
            c.backup_id, c.source, c.repository
        );
    }
    for s in &r.skipped {
        println!("skipped source {}: {}", s.source, s.reason);
    }
    let done = if r.dry_run {
        format!("{} would be deleted", r.planned_deletions)
    } else {
        format!(
            "{} of {} planned deleted, {} failed ({} objects removed)",
            r.deleted, r.planned_deletions, r.failed, r.objects_deleted
        )
    };
    println!(
        "{} kept, {done}{}",
        r.kept,
        if r.early_deletion_charge_usd > 0.0 {
            format!(
                "; estimated early-deletion charges ${:.2}",
                r.early_deletion_charge_usd
            )
        } else {
            String::new()
        }
    );
}

pub fn hold(b: &BackupRecord, as_json: bool) {
    if as_json {
        return json(b);
    }
    if b.legal_hold {
        println!(
            "backup {} ({}, {}) is under legal hold: prune will not delete it",
            b.id,
            b.source,
            b.status.as_str()
        );
    } else {
        println!(
            "backup {} ({}, {}) is not under legal hold: its source's keep policy applies",
            b.id,
            b.source,
            b.status.as_str()
        );
    }
}

fn millis_text(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0))
}

pub fn drill(report: &backup_engine::drill::DrillReport, as_json: bool) {
    if as_json {
        return json(report);
    }
    let r = &report.record;
    println!(
        "drill {} of {}: {} (backup {}, picked {})",
        r.id,
        r.source,
        r.status.as_str().to_uppercase(),
        r.backup_id.map_or("-".into(), |b| b.to_string()),
        r.pick
    );
    println!(
        "  RTO {} (restore {}, recovery {}), {} restored",
        millis_text(r.rto_millis),
        millis_text(r.restore_millis),
        millis_text(r.recovery_millis),
        human_bytes(r.restored_bytes.unwrap_or(0))
    );
    for c in &r.checks {
        println!(
            "  {} {}: {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if let Some(e) = &r.error {
        println!("  error: {e}");
    }
    if report.kept {
        println!("  scratch target kept: {}", report.scratch.display());
    }
}

pub fn drills(drills: &[backup_catalog::DrillRecord], as_json: bool) {
    if as_json {
        return json(drills);
    }
    println!(
        "{:<36}  {:<16}  {:<20}  {:<7}  {:>8}  {:<8}  BACKUP",
        "DRILL", "SOURCE", "STARTED (UTC)", "STATUS", "RTO", "TRIGGER"
    );
    for d in drills {
        println!(
            "{:<36}  {:<16}  {:<20}  {:<7}  {:>8}  {:<8}  {}",
            d.id,
            d.source,
            d.started_at.format("%Y-%m-%d %H:%M:%S"),
            d.status.as_str(),
            millis_text(d.rto_millis),
            d.trigger.as_str(),
            d.backup_id.map_or("-".into(), |b| b.to_string())
        );
    }
}

pub fn queued_drill(source: &str, job: &str, as_json: bool) {
    if as_json {
        return json(&serde_json::json!({ "source": source, "job_id": job }));
    }
    println!("queued drill job {job} for {source}; backupd runs it (see `backupctl drill --list`)");
}

pub fn keys(r: &backup_engine::keys::KeyReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    println!("key file {}", r.key_file);
    println!(
        "{:<20}  {:<6}  {:>9}  {:>9}",
        "KEY", "ACTIVE", "ENVELOPES", "WAL FILES"
    );
    for k in &r.keys {
        println!(
            "{:<20}  {:<6}  {:>9}  {:>9}",
            k.key_id,
            if k.active { "yes" } else { "" },
            k.envelopes,
            k.wal_files
        );
    }
    if r.rewrapped > 0 {
        println!("re-wrapped {} envelopes under {}", r.rewrapped, r.active);
    }
    for id in &r.retired {
        println!("retired {id}: nothing references it any more");
    }
    for why in &r.kept {
        println!("kept {why}");
    }
    for p in &r.problems {
        eprintln!("problem: {p}");
    }
}

pub fn shred(r: &backup_engine::keys::ShredReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    println!(
        "shredded backup {} of {}: key envelope deleted from {}; {} objects deleted",
        r.backup_id,
        r.source,
        r.repositories.join(", "),
        r.objects_deleted
    );
}

pub fn shreds(shreds: &[backup_catalog::ShredRecord], as_json: bool) {
    if as_json {
        return json(shreds);
    }
    println!(
        "{:<36}  {:<16}  {:<20}  {:<20}  REPOSITORIES",
        "BACKUP", "SOURCE", "BACKUP STARTED (UTC)", "SHREDDED (UTC)"
    );
    for s in shreds {
        println!(
            "{:<36}  {:<16}  {:<20}  {:<20}  {}",
            s.backup_id,
            s.source,
            s.backup_started_at.format("%Y-%m-%d %H:%M:%S"),
            s.shredded_at.format("%Y-%m-%d %H:%M:%S"),
            s.repositories.join(", ")
        );
    }
}

pub fn mongo_restore(o: &backup_engine::mongo::MongoRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    println!(
        "restored backup {} of {}: {} collections, {} documents, {} indexes, {} oplog entries \
         replayed; consistent at {} ({}) in {:.1}s",
        o.backup_id,
        o.source,
        o.collections,
        o.documents,
        o.indexes,
        o.oplog_entries_applied,
        o.restored_to,
        o.restored_to_time.to_rfc3339(),
        o.seconds
    );
    eprintln!("restored from repository {}", o.repository);
}

pub fn oplog_archive(r: &backup_engine::mongo::archive::ArchiveReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    println!(
        "{}: {} oplog slices archived ({} entries, {}); position {}{}",
        r.source,
        r.slices,
        r.entries,
        human_bytes(r.bytes),
        r.position.as_deref().unwrap_or("-"),
        if r.reconnects > 0 {
            format!("; {} reconnects", r.reconnects)
        } else {
            String::new()
        }
    );
}

#[derive(Serialize)]
struct OplogRange {
    backup_id: BackupId,
    from: String,
    from_time: String,
    to: String,
    to_time: String,
    slices: usize,
}

pub fn oplog_status(source: &str, ranges: &[backup_engine::mongo::RestorableRange], as_json: bool) {
    let rows: Vec<OplogRange> = ranges
        .iter()
        .map(|r| OplogRange {
            backup_id: r.backup.backup_id,
            from: r.from.to_string(),
            from_time: backup_engine::mongo::optime_time(r.from).to_rfc3339(),
            to: r.to.to_string(),
            to_time: backup_engine::mongo::optime_time(r.to).to_rfc3339(),
            slices: r.slices.len(),
        })
        .collect();
    if as_json {
        return json(&rows);
    }
    if rows.is_empty() {
        println!("{source}: nothing restorable yet (no complete backup)");
    }
    for r in rows {
        println!(
            "{source}: {} ({}) .. {} ({}) from backup {} + {} slices",
            r.from, r.from_time, r.to, r.to_time, r.backup_id, r.slices
        );
    }
}

pub fn atlas_restore(o: &backup_engine::mongo::atlas::AtlasRestoreOutcome, as_json: bool) {
    if as_json {
        return json(o);
    }
    let what = match (&o.snapshot_id, o.point_in_time) {
        (Some(snapshot), _) => format!(
            "snapshot {snapshot} (backup {})",
            o.backup_id.map_or("-".into(), |b| b.to_string())
        ),
        (None, Some(at)) => format!("point in time {}", at.to_rfc3339()),
        (None, None) => "-".into(),
    };
    if o.finished {
        println!(
            "restored {what} of {} into cluster {} (project {}): Atlas restore job {} finished in {:.1}s",
            o.source, o.target_cluster, o.target_project, o.restore_job, o.seconds
        );
    } else {
        println!(
            "Atlas restore job {} is restoring {what} of {} into cluster {} (project {}); \
             follow it on the cluster's Backup page",
            o.restore_job, o.source, o.target_cluster, o.target_project
        );
    }
}

pub fn atlas_snapshots(
    listing: &[backup_engine::mongo::atlas::AtlasSnapshotListing],
    as_json: bool,
) {
    if as_json {
        return json(listing);
    }
    println!(
        "{:<24}  {:<10}  {:<10}  {:<25}  {:>10}  BACKUP",
        "SNAPSHOT", "STATUS", "TYPE", "CREATED", "SIZE"
    );
    for l in listing {
        let s = &l.snapshot;
        println!(
            "{:<24}  {:<10}  {:<10}  {:<25}  {:>10}  {}",
            s.id,
            s.status,
            s.snapshot_type.as_deref().unwrap_or("-"),
            s.created_at.as_deref().unwrap_or("-"),
            human_bytes(s.storage_size_bytes.unwrap_or(0)),
            l.backup_id
                .map_or("(not taken by backupd)".into(), |b| b.to_string())
        );
    }
}
