//! `cargo xtask bench-scheduler`: scheduler overhead with 1,000 sources and
//! 10,000 catalogued backups — time to plan a tick, to plan retention for
//! every source, and catalog latency of `list` — on SQLite and, with
//! `--postgres URL` (a database it may fill), on PostgreSQL.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use backup_catalog::{
    ArtifactRecord, ArtifactWithCopies, BackupCompletion, BackupFilter, CopyRecord, ImportedBackup,
    NewBackup,
};
use backup_core::{ArtifactId, BackupId};
use backup_engine::{Config, Engine};

const SOURCES: usize = 1000;
const BACKUPS_PER_SOURCE: usize = 10;

pub fn run(args: &[String]) -> Result<()> {
    let postgres = args
        .iter()
        .position(|a| a == "--postgres")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("backupd-bench-scheduler-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut sections = Vec::new();
    let sqlite_url = format!("sqlite://{}/catalog.db", dir.display());
    sections.push(("SQLite", rt.block_on(measure(&dir, &sqlite_url))?));
    if let Some(url) = postgres {
        sections.push(("PostgreSQL", rt.block_on(measure(&dir, &url))?));
    }
    std::fs::remove_dir_all(&dir)?;
    let mut table = String::from(
        "| catalog | tick, nothing due (median) | tick, 1,000 sources due | retention plan, all sources | `list` all 10,000 (median) | `list --source` (median) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (name, m) in &sections {
        table.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            ms(m.idle_tick),
            ms(m.busy_tick),
            ms(m.retention),
            ms(m.list_all),
            ms(m.list_source)
        ));
    }
    let section = format!(
        "## Scheduler overhead ({})\n\n{SOURCES} sources with a cron schedule and a GFS keep policy, {} complete backups in the \
         catalog, measured by `cargo xtask bench-scheduler` on {} cores. Targets: tick < 50 ms, retention plan < 1 s, \
         list < 100 ms.\n\n{table}",
        Utc::now().format("%Y-%m-%d %H:%M UTC"),
        SOURCES * BACKUPS_PER_SOURCE,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    );
    println!("{section}");
    crate::write_bench_section("## Scheduler overhead", &section)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Measured {
    idle_tick: Duration,
    busy_tick: Duration,
    retention: Duration,
    list_all: Duration,
    list_source: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn measure(dir: &Path, url: &str) -> Result<Measured> {
    let mut toml = format!(
        "[catalog]\nurl = \"{url}\"\n[encryption]\nkey-file = \"{}/repo.key\"\n[[repository]]\nname = \"r\"\nkind = \"local\"\npath = \"{}/repo\"\n",
        dir.display(),
        dir.display()
    );
    for i in 0..SOURCES {
        toml.push_str(&format!(
            "[[source]]\nname = \"s{i:04}\"\nkind = \"files\"\npaths = [\"{}\"]\nrepository = \"r\"\n\
             schedule = [{{ cron = \"0 */6 * * *\" }}]\nkeep = {{ last = 4, daily = 7, weekly = 4 }}\n",
            dir.display()
        ));
    }
    let config = Config::parse(&toml, "bench-scheduler.toml")?;
    let engine = Engine::open(config).await.context("opening the catalog")?;
    println!(
        "importing {} backups into {}",
        SOURCES * BACKUPS_PER_SOURCE,
        backup_catalog::redact_url(url)
    );
    let start = Utc::now() - chrono::Duration::days(BACKUPS_PER_SOURCE as i64);
    for i in 0..SOURCES {
        for b in 0..BACKUPS_PER_SOURCE {
            let at = start + chrono::Duration::days(b as i64) + chrono::Duration::seconds(i as i64);
            engine
                .catalog
                .import_backup(&imported(&format!("s{i:04}"), at))
                .await?;
        }
    }
    // The first tick records every schedule; later ticks are the steady state.
    let now = Utc::now();
    backup_engine::schedule::plan_due_jobs(&engine, now).await?;
    let mut idle = Vec::new();
    for k in 1..=11 {
        let t = Instant::now();
        backup_engine::schedule::plan_due_jobs(&engine, now + chrono::Duration::milliseconds(k))
            .await?;
        idle.push(t.elapsed());
    }
    // A tick at which every source's next slot is due: 1,000 jobs planned.
    let (_, first) = engine.config.source("s0000")?;
    let slot = first.schedules[0].next_after(now).context("a next slot")?;
    let t = Instant::now();
    let planned =
        backup_engine::schedule::plan_due_jobs(&engine, slot + chrono::Duration::seconds(1))
            .await?;
    let busy_tick = t.elapsed();
    anyhow::ensure!(planned.len() == SOURCES, "planned {} jobs", planned.len());

    let t = Instant::now();
    let options = backup_engine::prune::PruneOptions {
        source: None,
        dry_run: true,
        force: false,
    };
    backup_engine::prune::run_prune(&engine, &options, &CancellationToken::new()).await?;
    let retention = t.elapsed();

    let mut all = Vec::new();
    let mut one = Vec::new();
    for k in 0..11 {
        let t = Instant::now();
        let n = engine
            .catalog
            .list_backups(&BackupFilter::default())
            .await?
            .len();
        all.push(t.elapsed());
        anyhow::ensure!(n >= SOURCES * BACKUPS_PER_SOURCE, "listed {n}");
        let t = Instant::now();
        engine
            .catalog
            .list_backups(&BackupFilter {
                source: Some(format!("s{:04}", k * 37)),
                status: None,
            })
            .await?;
        one.push(t.elapsed());
    }
    Ok(Measured {
        idle_tick: median(idle),
        busy_tick,
        retention,
        list_all: median(all),
        list_source: median(one),
    })
}

fn imported(source: &str, at: chrono::DateTime<Utc>) -> ImportedBackup {
    let id = BackupId::new();
    let manifest = ArtifactId::new();
    let data = ArtifactId::new();
    let artifact = |a: ArtifactId, role: &str| ArtifactWithCopies {
        artifact: ArtifactRecord {
            id: a,
            backup_id: id,
            role: role.into(),
            plaintext_size: 1 << 20,
            plaintext_sha256: "0".repeat(64),
            segment_count: 1,
            created_at: at,
        },
        copies: vec![CopyRecord {
            artifact_id: a,
            repository: "r".into(),
            object_key: format!("backups/{id}/{role}-{a}.bkpd"),
            stored_size: 1 << 19,
            stored_sha256: "0".repeat(64),
            storage_class: None,
            verified_at: at,
        }],
    };
    ImportedBackup {
        backup: NewBackup {
            id,
            source: source.into(),
            repository: "r".into(),
            backup_type: "full".into(),
            tag: None,
            started_at: at,
            host: "bench".into(),
            pid: 0,
            tool_version: backup_core::TOOL_VERSION.into(),
        },
        source_kind: "files".into(),
        completion: BackupCompletion {
            finished_at: at + chrono::Duration::seconds(30),
            file_count: 10,
            skipped_count: 0,
            plaintext_bytes: 1 << 20,
            stored_bytes: 1 << 20,
            manifest_artifact: manifest,
        },
        artifacts: vec![artifact(data, "data"), artifact(manifest, "manifest")],
    }
}
