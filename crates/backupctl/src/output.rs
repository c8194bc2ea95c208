//! What backupctl prints: short human text by default, JSON with --json.

use serde::Serialize;

use backup_catalog::{ArtifactWithCopies, BackupRecord};
use backup_engine::backup::BackupOutcome;
use backup_engine::gc::GcReport;
use backup_engine::init::InitReport;
use backup_engine::prune::PruneReport;
use backup_engine::rebuild::RebuildReport;
use backup_engine::restore::RestoreOutcome;
use backup_engine::verify::VerifyReport;

fn json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

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

pub fn backup(o: &BackupOutcome, as_json: bool) {
    if as_json {
        return json(o);
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
    // The id alone on stdout, for scripts.
    println!("{}", o.backup_id);
}

pub fn list(backups: &[BackupRecord], as_json: bool) {
    if as_json {
        return json(backups);
    }
    println!(
        "{:<36}  {:<12}  {:<10}  {:<4}  {:<20}  {:>7}  {:>10}  {:>10}  {:>6}  TAG",
        "ID", "SOURCE", "STATUS", "HOLD", "STARTED (UTC)", "FILES", "SIZE", "STORED", "RATIO"
    );
    for b in backups {
        println!(
            "{:<36}  {:<12}  {:<10}  {:<4}  {:<20}  {:>7}  {:>10}  {:>10}  {:>6}  {}",
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
            b.tag.as_deref().unwrap_or("")
        );
    }
}

pub fn show(b: &BackupRecord, artifacts: &[ArtifactWithCopies], as_json: bool) {
    if as_json {
        #[derive(Serialize)]
        struct Show<'a> {
            backup: &'a BackupRecord,
            artifacts: &'a [ArtifactWithCopies],
        }
        return json(&Show {
            backup: b,
            artifacts,
        });
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
                "  copy      {}:{} {} sha256 {} verified {}",
                c.repository,
                c.object_key,
                human_bytes(c.stored_size),
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
}

pub fn verify(r: &VerifyReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    let mode = if r.quick { "quick" } else { "full" };
    for b in &r.backups {
        if b.ok {
            println!(
                "ok      {} ({}): {} artifacts, {} read ({mode})",
                b.backup_id,
                b.source,
                b.artifacts_checked,
                human_bytes(b.bytes_read)
            );
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
        "{} backups imported, {} incomplete",
        r.imported.len(),
        r.incomplete.len()
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
