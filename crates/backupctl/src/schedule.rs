//! What `backupctl schedule` and `backupctl jobs` print: short human text by default, JSON
//! with --json.

use backup_catalog::JobRecord;
use backup_engine::schedule::ScheduleReport;
use chrono::{DateTime, Utc};

fn json<T: serde::Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializable")
    );
}

fn utc(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn schedule(r: &ScheduleReport, as_json: bool) {
    if as_json {
        return json(r);
    }
    println!(
        "source {} -> repository {} (time zone {})",
        r.source, r.repository, r.timezone
    );
    if r.entries.is_empty() {
        println!(
            "no schedule: backed up on demand only (`backupctl backup {}`)",
            r.source
        );
    }
    for e in &r.entries {
        let s = &e.entry;
        println!();
        println!(
            "schedule[{}]  \"{}\"  type {}{}",
            s.index,
            s.cron,
            s.backup_type.as_str(),
            s.tag
                .as_deref()
                .map(|t| format!("  tag {t}"))
                .unwrap_or_default()
        );
        match e.last_planned {
            Some(t) => println!("  last planned  {} UTC", utc(t)),
            None => println!("  last planned  never (no scheduler has seen this entry yet)"),
        }
        for (i, run) in s.next_runs.iter().enumerate() {
            println!(
                "  {:<12}  {} ({})  {} UTC",
                if i == 0 { "next runs" } else { "" },
                run.local.format("%Y-%m-%d %H:%M:%S"),
                run.local.format("%:z"),
                utc(run.utc)
            );
        }
        if s.next_runs.is_empty() {
            println!("  next runs     none");
        }
    }
    println!();
    if r.jobs.is_empty() {
        println!("no queued or running jobs");
    } else {
        println!("queued and running jobs:");
        jobs_table(&r.jobs);
    }
}

pub fn jobs(jobs: &[JobRecord], as_json: bool) {
    if as_json {
        return json(jobs);
    }
    if jobs.is_empty() {
        println!("no jobs");
        return;
    }
    jobs_table(jobs);
}

fn jobs_table(jobs: &[JobRecord]) {
    println!(
        "{:<36}  {:<12}  {:<9}  {:>8}  {:<19}  {:<16}  {:<36}  ERROR",
        "ID", "SOURCE", "STATUS", "ATTEMPTS", "DUE (UTC)", "LEASE OWNER", "BACKUP"
    );
    for j in jobs {
        println!(
            "{:<36}  {:<12}  {:<9}  {:>8}  {:<19}  {:<16}  {:<36}  {}",
            j.id,
            j.source,
            j.status.as_str(),
            format!("{}/{}", j.attempts, j.max_attempts),
            utc(j.next_attempt_at.max(j.due_at)),
            j.lease_owner.as_deref().unwrap_or("-"),
            j.backup_id
                .map(|b| b.to_string())
                .unwrap_or_else(|| "-".into()),
            j.error
                .as_deref()
                .map(|e| e.replace('\n', " "))
                .unwrap_or_else(|| "-".into())
        );
    }
}
