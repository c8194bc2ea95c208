//! backupctl: the backupd command-line client. Thin: parses arguments, loads
//! the config, calls backup-engine, prints results and maps errors to the
//! documented exit codes (0 ok, 1 failed, 2 bad usage/config, 3 integrity).

mod output;
mod progress;
mod schedule;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupFilter, JobFilter, JobStatus};
use backup_engine::restore::BackupSelector;
use backup_engine::verify::VerifyScope;
use backup_engine::{exit, Config, Engine, EngineError, Progress};

#[derive(Parser)]
#[command(name = "backupctl", version, about = "Back up, verify and restore with backupd", long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 operation failed, 2 bad usage or configuration, 3 integrity failure, 4 waiting for an archive restore (run again later)."
)]
struct Cli {
    /// Configuration file (default: the embedded quickstart config).
    #[arg(long, global = true, env = "BACKUPD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Log filter, e.g. "info" or "backup_engine=debug" (also RUST_LOG).
    #[arg(long, global = true, default_value = "warn", value_name = "FILTER")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the catalog, the repositories and (if missing) the key file.
    Init,
    /// Back up a source and print the new backup id.
    Backup {
        source: String,
        /// Label the backup (shown by `list`, kept in its manifest).
        #[arg(long, value_name = "TAG")]
        tag: Option<String>,
        /// Only queue the source's `copy-to` copies (for `backupctl replicate` or backupd)
        /// instead of making them right after the backup.
        #[arg(long)]
        no_copy: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Make the queued copies of completed backups (`copy-to`); exit 1 if any failed.
    Replicate {
        /// Only this backup's copies.
        #[arg(long, value_name = "BACKUP_ID")]
        backup: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Replication state.
    Replication {
        #[command(subcommand)]
        command: ReplicationCommand,
    },
    /// Archive (Glacier / Deep Archive) restores.
    Thaw {
        #[command(subcommand)]
        command: ThawCommand,
    },
    /// List backups, newest first.
    List {
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show one backup with its artifacts and copies.
    Show {
        backup_id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restore a backup into a directory.
    Restore {
        /// Backup id (or unique prefix); omit with --source S --latest.
        #[arg(required_unless_present = "latest")]
        backup_id: Option<String>,
        #[arg(long, value_name = "DIR")]
        target: PathBuf,
        #[arg(long, requires = "latest", conflicts_with = "backup_id")]
        source: Option<String>,
        /// Restore the newest complete backup of --source.
        #[arg(long, requires = "source")]
        latest: bool,
        /// Restore into a non-empty target, replacing files that exist.
        #[arg(long)]
        force: bool,
        /// Restore from these repositories, in this order (repeat or comma-separate); by
        /// default the backup's own repository, then its other copies, archived ones last.
        #[arg(long, value_name = "REPOSITORY", value_delimiter = ',')]
        from: Vec<String>,
        #[command(flatten)]
        thaw: ThawArgs,
        /// Only request the restore of archived objects, then stop (see `thaw status`).
        #[arg(long)]
        thaw_only: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Check that backups are intact and restorable.
    Verify {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        backup_id: Option<String>,
        #[arg(long)]
        all: bool,
        /// Only re-hash stored objects instead of decrypting and decompressing them.
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Show a source's schedule: entries, next runs, last planned slot, queued and running jobs.
    Schedule {
        source: String,
        /// Upcoming runs to show per schedule entry.
        #[arg(long, default_value_t = 5, value_name = "N")]
        count: usize,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// List scheduler jobs, newest first.
    Jobs {
        #[arg(long)]
        source: Option<String>,
        /// queued, running, succeeded, failed, dead or cancelled.
        #[arg(long)]
        status: Option<JobStatus>,
        /// Show at most this many.
        #[arg(long, default_value_t = 100, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Catalog maintenance.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Apply the sources' `keep` policies: delete the backups they do not keep.
    Prune {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print the plan without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Also delete backups whose archive copies have not reached their minimum storage
        /// duration (the estimated early-deletion charge is printed).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Put a backup under legal hold: prune never deletes it until `unhold`.
    Hold {
        backup_id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Release a backup's legal hold.
    Unhold {
        backup_id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Remove what interrupted or failed backups left behind.
    Gc {
        /// Leave temporary files younger than this alone (they may belong to a running backup).
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        grace: Duration,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum CatalogCommand {
    /// Recreate the catalog from the repositories' contents alone.
    Rebuild {
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum ReplicationCommand {
    /// Per destination: copies pending, bytes pending, lag, last copy; failing copies.
    Status {
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Subcommand)]
enum ThawCommand {
    /// Restores requested for archived copies, and how far along they are.
    Status {
        /// Only this backup.
        backup_id: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// How archived copies are restored.
#[derive(Args, Clone)]
struct ThawArgs {
    /// Archive retrieval tier: bulk (cheapest, slowest), standard or expedited.
    #[arg(long, default_value = "standard", value_name = "TIER")]
    tier: backup_engine::thaw::RestoreTier,
    /// Days the thawed copy stays readable.
    #[arg(long, default_value_t = 3, value_name = "DAYS")]
    thaw_days: u32,
    /// Wait for archived objects to become readable instead of exiting with code 4.
    #[arg(long)]
    wait: bool,
    /// How often --wait checks.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    poll: Duration,
}

impl ThawArgs {
    fn options(&self) -> backup_engine::thaw::ThawOptions {
        backup_engine::thaw::ThawOptions {
            tier: self.tier,
            days: self.thaw_days,
            wait: self.wait,
            poll: self.poll,
        }
    }
}

#[derive(Args, Clone, Copy)]
struct JsonFlag {
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    init_logging(&cli.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(cli));
    ExitCode::from(code as u8)
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

async fn run(cli: Cli) -> i32 {
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted; stopping");
                cancel.cancel();
            }
        });
    }
    match dispatch(cli, &cancel).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn dispatch(cli: Cli, cancel: &CancellationToken) -> Result<i32, EngineError> {
    let config = Config::load(cli.config.as_deref())?;
    if let Command::Init = cli.command {
        let report = backup_engine::init::run_init(&config, cancel).await?;
        output::init(&report);
        return Ok(exit::OK);
    }
    let engine = Engine::open(config).await?;
    match cli.command {
        Command::Init => unreachable!("handled above"),
        Command::Backup {
            source,
            tag,
            no_copy,
            json,
        } => {
            let progress = Arc::new(Progress::default());
            let bar = progress::start(progress.clone(), "backing up");
            let outcome =
                backup_engine::backup::run_backup(&engine, &source, tag, progress, cancel).await;
            progress::finish(bar);
            let outcome = outcome?;
            let copies = if no_copy {
                None
            } else {
                let progress = Arc::new(Progress::default());
                let bar = progress::start(progress.clone(), "copying");
                let report = backup_engine::replicate::run_replication(
                    &engine,
                    Some(outcome.backup_id),
                    progress,
                    cancel,
                )
                .await;
                progress::finish(bar);
                Some(report?)
            };
            output::backup(&outcome, copies.as_ref(), json.json);
        }
        Command::Replicate { backup, json } => {
            let only = match backup {
                Some(prefix) => Some(engine.catalog.find_backup_by_prefix(&prefix).await?.id),
                None => None,
            };
            let progress = Arc::new(Progress::default());
            let bar = progress::start(progress.clone(), "copying");
            let report =
                backup_engine::replicate::run_replication(&engine, only, progress, cancel).await;
            progress::finish(bar);
            let report = report?;
            output::replicate(&report, json.json);
            if report.failed().next().is_some() {
                return Ok(exit::FAILED);
            }
        }
        Command::Replication {
            command: ReplicationCommand::Status { json },
        } => {
            let status = backup_engine::replicate::replication_status(&engine).await?;
            output::replication_status(&status, json.json);
        }
        Command::Thaw {
            command: ThawCommand::Status { backup_id, json },
        } => {
            let only = match backup_id {
                Some(prefix) => Some(engine.catalog.find_backup_by_prefix(&prefix).await?.id),
                None => None,
            };
            let reports = backup_engine::thaw::thaw_status(&engine, only, cancel).await?;
            output::thaw_status(&reports, json.json);
        }
        Command::List { source, json } => {
            let backups = engine
                .catalog
                .list_backups(&BackupFilter {
                    source: source.clone(),
                    status: None,
                })
                .await?;
            let places = backup_engine::replicate::copy_places(&engine, source.as_deref()).await?;
            output::list(&backups, &places, json.json);
        }
        Command::Show { backup_id, json } => {
            let record = engine.catalog.find_backup_by_prefix(&backup_id).await?;
            let artifacts = engine.catalog.backup_artifacts(record.id).await?;
            output::show(&record, &artifacts, json.json);
        }
        Command::Restore {
            backup_id,
            target,
            source,
            latest: _,
            force,
            from,
            thaw,
            thaw_only,
            json,
        } => {
            let selector = match (backup_id, source) {
                (Some(id), _) => BackupSelector::Id(id),
                (None, Some(source)) => BackupSelector::Latest(source),
                (None, None) => {
                    return Err(EngineError::Usage(
                        "give a BACKUP_ID or --source S --latest".into(),
                    ))
                }
            };
            let options = backup_engine::restore::RestoreOptions {
                force,
                from,
                thaw: thaw.options(),
            };
            if thaw_only {
                let report =
                    backup_engine::restore::request_thaw(&engine, &selector, &options, cancel)
                        .await?;
                output::thaw_status(std::slice::from_ref(&report), json.json);
                return Ok(exit::OK);
            }
            let progress = Arc::new(Progress::default());
            let bar = progress::start(progress.clone(), "restoring");
            let outcome = backup_engine::restore::run_restore(
                &engine, &selector, &target, &options, progress, cancel,
            )
            .await;
            progress::finish(bar);
            output::restore(&outcome?, json.json);
        }
        Command::Verify {
            backup_id,
            all,
            quick,
            json,
        } => {
            let scope = match (backup_id, all) {
                (Some(id), false) => VerifyScope::One(id),
                _ => VerifyScope::All,
            };
            let progress = Arc::new(Progress::default());
            let bar = progress::start(progress.clone(), "verifying");
            let report =
                backup_engine::verify::run_verify(&engine, &scope, quick, progress, cancel).await;
            progress::finish(bar);
            let report = report?;
            output::verify(&report, json.json);
            return Ok(report.exit_code());
        }
        Command::Schedule {
            source,
            count,
            json,
        } => {
            let report = backup_engine::schedule::schedule_report(
                &engine,
                &source,
                chrono::Utc::now(),
                count,
            )
            .await?;
            schedule::schedule(&report, json.json);
        }
        Command::Jobs {
            source,
            status,
            limit,
            json,
        } => {
            let filter = JobFilter {
                source,
                status,
                limit: Some(limit),
            };
            let jobs = backup_engine::schedule::list_jobs(&engine, &filter).await?;
            schedule::jobs(&jobs, json.json);
        }
        Command::Catalog {
            command: CatalogCommand::Rebuild { json },
        } => {
            let report = backup_engine::rebuild::run_rebuild(&engine, cancel).await?;
            output::rebuild(&report, json.json);
        }
        Command::Prune {
            source,
            dry_run,
            force,
            json,
        } => {
            let options = backup_engine::prune::PruneOptions {
                source,
                dry_run,
                force,
            };
            let report = backup_engine::prune::run_prune(&engine, &options, cancel).await?;
            output::prune(&report, json.json);
            return Ok(report.exit_code());
        }
        Command::Hold { backup_id, json } => {
            let record =
                backup_engine::prune::set_legal_hold(&engine, &backup_id, true, cancel).await?;
            output::hold(&record, json.json);
        }
        Command::Unhold { backup_id, json } => {
            let record =
                backup_engine::prune::set_legal_hold(&engine, &backup_id, false, cancel).await?;
            output::hold(&record, json.json);
        }
        Command::Gc { grace, json } => {
            let report = backup_engine::gc::run_gc(&engine, grace, cancel).await?;
            output::gc(&report, json.json);
        }
    }
    Ok(exit::OK)
}
