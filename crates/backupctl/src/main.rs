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
// Parsed once per run; boxing the restore options would only add noise.
#[allow(clippy::large_enum_variant)]
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
        /// full, or incr (PostgreSQL: only files changed since the previous base backup).
        #[arg(long = "type", default_value = "full", value_name = "TYPE")]
        backup_type: backup_engine::policy::BackupType,
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
    /// PostgreSQL archive_command: archive one WAL file (`wal-push %p`). Exits 0 only once
    /// the file is durable in the repository.
    WalPush {
        /// Path of the WAL file (%p).
        #[arg(required_unless_present = "drain_spool")]
        path: Option<PathBuf>,
        /// The postgres source (default: the only one configured).
        #[arg(long)]
        source: Option<String>,
        /// Return once the file is safely in the source's `spool-directory`; a background
        /// process pushes spooled files, several at once.
        #[arg(long)]
        r#async: bool,
        /// Push everything in the spool, then exit (started by --async).
        #[arg(long, conflicts_with = "path")]
        drain_spool: bool,
    },
    /// MongoDB: archive the oplog of SOURCE as slices (every `oplog-interval`, until
    /// Ctrl-C), resuming after the last slice archived; `--once` archives what is there now.
    OplogArchive {
        source: String,
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// MongoDB: the oplog ranges SOURCE can be restored to (`restore --point-in-time`).
    OplogStatus {
        source: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Atlas: the snapshots Atlas holds of SOURCE's cluster, and which backup took each.
    AtlasSnapshots {
        source: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// PostgreSQL restore_command: restore one archived WAL file (`wal-fetch %f %p`).
    /// Exits 1 when the file is not archived, as restore_command must.
    WalFetch {
        /// WAL file name (%f).
        file_name: String,
        /// Where to write it (%p).
        destination: PathBuf,
        #[arg(long)]
        source: Option<String>,
    },
    /// PostgreSQL: check that the archived WAL is continuous from the oldest base backup to
    /// the newest segment; names the first missing segments and their timeline (exit 1).
    Check {
        source: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Restore drills: `drill SOURCE --now` restores a backup of SOURCE into a scratch target,
    /// checks it, measures the RTO, removes the target and records the result (exit 1 if the
    /// drill failed); `drill SOURCE` queues one for backupd; `drill --list` shows past drills.
    Drill {
        #[arg(required_unless_present = "list")]
        source: Option<String>,
        /// Run the drill here and now instead of queueing it for backupd.
        #[arg(long)]
        now: bool,
        /// Which backup: latest, random or oldest (default: the source's drill.pick).
        #[arg(long, value_name = "PICK")]
        pick: Option<backup_engine::drill::DrillPick>,
        /// Drill this backup (id or unique prefix).
        #[arg(long, value_name = "BACKUP_ID", conflicts_with = "pick")]
        backup: Option<String>,
        /// Leave the scratch target (and a PostgreSQL scratch server) running for inspection.
        #[arg(long, requires = "now")]
        keep: bool,
        /// List recorded drills (of SOURCE, or all), newest first.
        #[arg(long, conflicts_with_all = ["now", "pick", "backup", "keep"])]
        list: bool,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Repository keys: add a new active key, list keys and what they wrap, rotate.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Crypto-shred a backup: delete its key envelope from every repository (so no copy can
    /// ever be read again), record that in the catalog, then delete its objects.
    Shred {
        #[arg(required_unless_present = "list")]
        backup_id: Option<String>,
        /// Required: shredding cannot be undone.
        #[arg(long)]
        yes: bool,
        /// List the shredded backups the catalog recorded.
        #[arg(long, conflicts_with_all = ["backup_id", "yes"])]
        list: bool,
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
    /// Restore a backup into a directory (MongoDB and MySQL: into a server, `restore SOURCE
    /// --latest|--backup ID|--point-in-time TS --target-uri URI` or `--target-url URL`;
    /// Elasticsearch: a snapshot in the cluster, `restore SOURCE --snapshot NAME`; RDS: a new
    /// database, `restore SOURCE --backup ID|--latest --target-instance NAME`; Azure SQL: a
    /// new database, `restore SOURCE --backup ID|--latest|--point-in-time TS --target-database
    /// NAME`).
    #[command(group(clap::ArgGroup::new("restore_waitable").args(["target_cluster", "target_database"]).multiple(true)))]
    Restore {
        /// Backup id (or unique prefix); omit with --source S --latest or --source S
        /// --point-in-time T. MongoDB, MySQL, Elasticsearch: the source's name.
        #[arg(required_unless_present_any = ["latest", "source"])]
        backup_id: Option<String>,
        #[arg(long, value_name = "DIR", required_unless_present_any = ["target_uri", "target_uri_file", "target_cluster", "target_url", "snapshot", "target_instance", "target_container", "original_containers", "target_database"])]
        target: Option<PathBuf>,
        #[arg(long, conflicts_with = "backup_id")]
        source: Option<String>,
        /// Restore the newest complete backup of --source.
        #[arg(long)]
        latest: bool,
        #[command(flatten)]
        mongo: MongoRestoreArgs,
        #[command(flatten)]
        atlas: AtlasRestoreArgs,
        #[command(flatten)]
        mysql: MysqlRestoreArgs,
        #[command(flatten)]
        elasticsearch: EsRestoreArgs,
        #[command(flatten)]
        rds: RdsRestoreArgs,
        #[command(flatten)]
        azure_blob: BlobRestoreArgs,
        #[command(flatten)]
        azure_sql: AzureSqlRestoreArgs,
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
        /// PostgreSQL: recover to this time (e.g. "2026-11-23 10:15:00+00"); with --source,
        /// the newest base backup that ended before it is restored into --target.
        #[arg(long, value_name = "TIME", conflicts_with = "lsn")]
        point_in_time: Option<String>,
        /// PostgreSQL: recover to this WAL position (e.g. 0/3000028).
        #[arg(long, value_name = "LSN")]
        lsn: Option<String>,
        /// PostgreSQL: recovery_target_timeline (default latest).
        #[arg(long, value_name = "TIMELINE")]
        timeline: Option<String>,
        /// PostgreSQL: start the restored server on this port and wait until it has recovered
        /// to the target and promoted; prints the position and time reached.
        #[arg(long, value_name = "PORT")]
        start: Option<u16>,
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
    /// Reports: recovery objectives met (RPO/RTO) and what storage costs.
    Report {
        #[command(subcommand)]
        command: ReportCommand,
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
enum ReportCommand {
    /// Per source: tier, target RPO/RTO, achieved RPO (age of the newest restorable point,
    /// archived WAL included), the last drill's RTO and a verdict. Exit 1 if any source
    /// breaches its objectives.
    Recovery {
        /// table, json or csv.
        #[arg(long, default_value = "table", value_name = "FORMAT")]
        format: backup_engine::report::ReportFormat,
    },
    /// One month's storage, requests, retrieval, transfer and early-deletion costs per
    /// source x repository x region x storage class, and a 3-month forecast.
    Cost {
        /// YYYY-MM (UTC); default: the current month.
        #[arg(long, value_name = "MONTH")]
        month: Option<String>,
        /// table, json or csv.
        #[arg(long, default_value = "table", value_name = "FORMAT")]
        format: backup_engine::report::ReportFormat,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a new key and make it the active one (new backups use it); the old keys stay
    /// in the key file until `key rotate` retires them.
    Add {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// The key file's keys, and how many envelopes and WAL files each wraps.
    List {
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Re-wrap every backup's key envelope in every repository under the active key, then
    /// retire the old keys nothing references. Safe to interrupt and run again.
    Rotate {
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

/// Restoring an Atlas source: an Atlas restore job into a cluster.
#[derive(Args)]
struct AtlasRestoreArgs {
    /// Atlas: restore into this cluster (Atlas overwrites its data).
    #[arg(long, value_name = "CLUSTER", conflicts_with_all = ["target", "target_uri", "target_uri_file"])]
    target_cluster: Option<String>,
    /// Atlas: the target cluster's project id (default: the source's project).
    #[arg(long, value_name = "PROJECT_ID", requires = "target_cluster")]
    target_project: Option<String>,
    /// Atlas, Azure SQL: return once the restore is accepted instead of waiting for it.
    #[arg(long, requires = "restore_waitable")]
    no_wait: bool,
}

/// Restoring a MongoDB source into a server.
#[derive(Args)]
struct MongoRestoreArgs {
    /// MongoDB: restore into this server (a URI without a password; use --target-uri-file
    /// for one with credentials).
    #[arg(long, value_name = "URI", conflicts_with_all = ["target", "target_uri_file"])]
    target_uri: Option<String>,
    /// MongoDB: read the target URI (a secret) from this file.
    #[arg(long, value_name = "PATH", conflicts_with = "target")]
    target_uri_file: Option<PathBuf>,
    /// MongoDB, MySQL: restore this backup (id or unique prefix) of SOURCE.
    #[arg(long = "backup", value_name = "ID", conflicts_with = "latest")]
    backup: Option<String>,
    /// MongoDB: only these namespaces (`db`, `db.*` or `db.coll`; repeat or comma-separate).
    #[arg(long, value_name = "NS", value_delimiter = ',')]
    namespace: Vec<String>,
    /// MongoDB: restore under this database name.
    #[arg(long, value_name = "DB")]
    rename_to: Option<String>,
    /// MongoDB: drop target collections that exist; MySQL: drop and recreate target databases
    /// that are not empty (otherwise a non-empty target is refused).
    #[arg(long)]
    drop: bool,
    /// MongoDB: stage the backup's files here (default: a temp dir, removed afterwards).
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    /// MongoDB: load this many collections at once (mongorestore loads 4; worth it on mongod).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel_collections: u16,
}

/// The backup `--backup ID` or `--latest` (of source `name`) chose.
fn chosen_backup(
    backup: Option<&str>,
    latest: bool,
    name: &str,
) -> Result<BackupSelector, EngineError> {
    match (backup, latest) {
        (Some(id), _) => Ok(BackupSelector::Id(id.to_owned())),
        (None, true) => Ok(BackupSelector::Latest(name.to_owned())),
        (None, false) => Err(EngineError::Usage("give --backup ID or --latest".into())),
    }
}

impl MongoRestoreArgs {
    fn wanted(&self) -> bool {
        self.target_uri.is_some() || self.target_uri_file.is_some()
    }

    /// The target URI; never from argv when it carries a password.
    fn uri(&self) -> Result<String, EngineError> {
        let uri = match (&self.target_uri, &self.target_uri_file) {
            (Some(uri), _) => {
                if backup_catalog::redact_url(uri) != *uri {
                    return Err(EngineError::Usage(
                        "--target-uri must not carry a password (command lines are visible to \
                         other users): put the URI in a file and pass --target-uri-file"
                            .into(),
                    ));
                }
                uri.clone()
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| {
                    EngineError::Usage(format!("--target-uri-file {}: {e}", path.display()))
                })?
                .trim()
                .to_owned(),
            (None, None) => unreachable!("checked by wanted()"),
        };
        Ok(uri)
    }
}

/// `restore` options of a mysql source (`--backup`, `--drop` are shared with MongoDB).
#[derive(Args)]
struct MysqlRestoreArgs {
    /// MySQL: load the backup into this server (`mysql://user@host:port/`, no password).
    #[arg(long, value_name = "URL", conflicts_with_all = ["target", "target_uri", "target_uri_file"])]
    target_url: Option<String>,
    /// MySQL: environment variable holding the target server's password.
    #[arg(long, value_name = "VAR", requires = "target_url")]
    target_password_env: Option<String>,
    /// MySQL: restore a single-database backup under this database name.
    #[arg(long, value_name = "NAME", requires = "target_url")]
    database: Option<String>,
}

/// `restore` options of an elasticsearch source.
#[derive(Args)]
struct EsRestoreArgs {
    /// Elasticsearch: restore this snapshot (of a complete backup of SOURCE) in the cluster.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["target", "target_url", "target_uri", "target_uri_file"])]
    snapshot: Option<String>,
    /// Elasticsearch: only these indices (comma-separated; wildcards allowed).
    #[arg(
        long,
        value_name = "INDICES",
        value_delimiter = ',',
        requires = "snapshot"
    )]
    indices: Vec<String>,
    /// Elasticsearch: rename restored indices matching this regex...
    #[arg(long, value_name = "REGEX", requires_all = ["snapshot", "rename_replacement"])]
    rename_pattern: Option<String>,
    /// ...to this replacement ($1 for the first group).
    #[arg(long, value_name = "REPLACEMENT", requires_all = ["snapshot", "rename_pattern"])]
    rename_replacement: Option<String>,
}

/// `restore` options of an rds source (`--backup` is shared with MongoDB and MySQL).
#[derive(Args)]
struct RdsRestoreArgs {
    /// RDS: restore into a new DB instance (a new DB cluster for cluster sources) of this
    /// identifier; RDS never restores over an existing database.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["target", "target_url", "target_uri", "target_uri_file", "target_cluster", "snapshot"])]
    target_instance: Option<String>,
    /// RDS: DB instance class of the new instance (of a cluster's writer, which is only
    /// created when given); default: the snapshot's.
    #[arg(long, value_name = "CLASS", requires = "target_instance")]
    instance_class: Option<String>,
    /// RDS: DB subnet group (VPC) of the new database; default: the default VPC.
    #[arg(long, value_name = "NAME", requires = "target_instance")]
    subnet_group: Option<String>,
    /// RDS: `source` restores the snapshot in the source's region, `copy` its copy in
    /// `copy-region` (into that region).
    #[arg(long, value_name = "source|copy", requires = "target_instance", value_parser = ["source", "copy"], default_value = "source")]
    from_region: String,
}

/// `restore` options of an azure-sql source (`--backup`, `--latest`, `--point-in-time` are
/// shared; `--no-wait` with Atlas).
#[derive(Args)]
struct AzureSqlRestoreArgs {
    /// Azure SQL: restore into this new database on the source's server (a point-in-time
    /// restore never overwrites a database).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["target", "target_url", "target_uri", "target_uri_file", "target_cluster", "target_instance", "snapshot", "target_container", "original_containers"])]
    target_database: Option<String>,
}

/// `restore` options of an azure-blob source (`--backup`, `--drop` are shared with MongoDB).
#[derive(Args)]
struct BlobRestoreArgs {
    /// Azure Blob: restore into this container of the source's account (several
    /// containers of the backup each go under `CONTAINER/` in it).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["target", "target_url", "target_uri", "target_uri_file", "original_containers"])]
    target_container: Option<String>,
    /// Azure Blob: restore each container under its own name.
    #[arg(long, conflicts_with_all = ["target", "target_url", "target_uri", "target_uri_file"])]
    original_containers: bool,
    /// Azure Blob: only these containers of the backup (repeat or comma-separate).
    #[arg(long, value_name = "NAME", value_delimiter = ',')]
    container: Vec<String>,
    /// Azure Blob: put restored blobs under this name prefix (e.g. `restored/`).
    #[arg(long, value_name = "PREFIX")]
    target_prefix: Option<String>,
    /// Azure Blob: replace blobs of the same name in a non-empty target.
    #[arg(long)]
    overwrite: bool,
}

impl BlobRestoreArgs {
    fn wanted(&self) -> bool {
        self.target_container.is_some() || self.original_containers
    }
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

/// `2026-11-23 10:15:00+00`, RFC 3339, or a time without offset (taken as UTC).
/// A MongoDB `--point-in-time`: an oplog position `SECONDS.INCREMENT`, or a time (every
/// entry up to the end of that second).
fn mongo_point(text: &str) -> Result<backup_engine::mongo::OpTime, EngineError> {
    if let Ok(t) = text.parse() {
        return Ok(t);
    }
    let time = parse_time(text)?;
    let seconds = u32::try_from(time.timestamp())
        .map_err(|_| EngineError::Usage(format!("--point-in-time {text:?} is out of range")))?;
    Ok(backup_engine::mongo::OpTime::end_of_second(seconds))
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, EngineError> {
    let t = text.trim();
    let with_t = t.replacen(' ', "T", 1);
    let normalized = match with_t.rfind(['+', '-']) {
        // "+00" -> "+00:00"
        Some(i) if i > 10 && with_t.len() - i == 3 => format!("{with_t}:00"),
        _ => with_t.clone(),
    };
    if let Ok(parsed) = chrono::DateTime::parse_from_rfc3339(&normalized) {
        return Ok(parsed.with_timezone(&chrono::Utc));
    }
    if let Ok(naive) = chrono::NaiveDateTime::parse_from_str(&with_t, "%Y-%m-%dT%H:%M:%S%.f") {
        return Ok(naive.and_utc());
    }
    Err(EngineError::Usage(format!(
        "--point-in-time {text:?}: use a time like \"2026-11-23 10:15:00+00\" (UTC if no offset)"
    )))
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
            backup_type,
            json,
        } => {
            let progress = Arc::new(Progress::default());
            let bar = progress::start(progress.clone(), "backing up");
            let outcome = backup_engine::backup::run_backup(
                &engine,
                &source,
                tag,
                backup_type,
                progress,
                cancel,
            )
            .await;
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
            if report.any_failed() {
                return Ok(exit::FAILED);
            }
        }
        Command::WalPush {
            path,
            source,
            r#async,
            drain_spool,
        } => {
            let source = backup_engine::wal::postgres_source(&engine, source.as_deref())?.clone();
            if drain_spool {
                let report =
                    backup_engine::wal::drain_spool(Arc::new(engine), source, cancel).await?;
                return Ok(if report.failed > 0 {
                    exit::FAILED
                } else {
                    exit::OK
                });
            }
            let path = path.expect("clap requires a path without --drain-spool");
            let outcome = if r#async {
                backup_engine::wal::wal_push_async(&engine, &source, &path).await?
            } else {
                backup_engine::wal::wal_push(&engine, &source, &path, cancel).await?
            };
            tracing::info!(file = %outcome.file_name, already = outcome.already_archived,
                seconds = outcome.seconds, "wal-push done");
        }
        Command::OplogArchive { source, once, json } => {
            let report =
                backup_engine::mongo::archive::run_oplog_archive(&engine, &source, once, cancel)
                    .await?;
            output::oplog_archive(&report, json.json);
        }
        Command::AtlasSnapshots { source, json } => {
            let listing = backup_engine::mongo::atlas::list_snapshots(&engine, &source).await?;
            output::atlas_snapshots(&listing, json.json);
        }
        Command::OplogStatus { source, json } => {
            backup_engine::mongo::mongo_source(engine.config.source(&source)?.1)?;
            let ranges = backup_engine::mongo::restorable_ranges(&engine, &source).await?;
            output::oplog_status(&source, &ranges, json.json);
        }
        Command::WalFetch {
            file_name,
            destination,
            source,
        } => {
            let source = backup_engine::wal::postgres_source(&engine, source.as_deref())?;
            backup_engine::wal::wal_fetch(&engine, source, &file_name, &destination, cancel)
                .await?;
        }
        Command::Check { source, json } => {
            let source = backup_engine::wal::postgres_source(&engine, Some(&source))?;
            let check = backup_engine::wal::check_archive(&engine, source, cancel).await?;
            output::archive_check(&check, json.json);
            if !check.ok {
                return Ok(exit::FAILED);
            }
        }
        Command::Drill {
            source,
            now,
            pick,
            backup,
            keep,
            list,
            json,
        } => {
            if list {
                let drills = engine.catalog.list_drills(source.as_deref(), 50).await?;
                output::drills(&drills, json.json);
                return Ok(exit::OK);
            }
            let source = source.expect("clap requires SOURCE without --list");
            let (_, config) = engine.config.source(&source)?;
            if !now {
                if pick.is_some() || backup.is_some() {
                    return Err(EngineError::Usage(
                        "--pick and --backup apply to a drill run here (--now); a queued drill uses the source's drill settings".into(),
                    ));
                }
                let job = backup_engine::schedule::drill_job(
                    &engine.config,
                    config,
                    None,
                    chrono::Utc::now(),
                );
                let id = engine.catalog.enqueue_manual(&job).await?;
                output::queued_drill(&source, &id.to_string(), json.json);
                return Ok(exit::OK);
            }
            let options = backup_engine::drill::DrillOptions { pick, backup, keep };
            let report = backup_engine::drill::run_drill(
                &engine,
                &source,
                backup_catalog::DrillTrigger::Manual,
                &options,
                cancel,
            )
            .await?;
            output::drill(&report, json.json);
            if !report.passed() {
                return Ok(exit::FAILED);
            }
        }
        Command::Key { command } => {
            let (report, json) = match command {
                KeyCommand::Add { json } => (backup_engine::keys::add_key(&engine)?, json),
                KeyCommand::List { json } => (
                    backup_engine::keys::scan_keys(&engine, false, cancel).await?,
                    json,
                ),
                KeyCommand::Rotate { json } => (
                    backup_engine::keys::scan_keys(&engine, true, cancel).await?,
                    json,
                ),
            };
            output::keys(&report, json.json);
            if !report.problems.is_empty() {
                return Ok(exit::FAILED);
            }
        }
        Command::Shred {
            backup_id,
            yes,
            list,
            json,
        } => {
            if list {
                output::shreds(&engine.catalog.list_shreds().await?, json.json);
                return Ok(exit::OK);
            }
            let backup_id = backup_id.expect("clap requires BACKUP_ID without --list");
            if !yes {
                return Err(EngineError::Usage(format!(
                    "shredding backup {backup_id} cannot be undone: no copy of it will ever be readable again; add --yes"
                )));
            }
            let report = backup_engine::keys::shred(&engine, &backup_id, cancel).await?;
            output::shred(&report, json.json);
        }
        Command::Report {
            command: ReportCommand::Recovery { format },
        } => {
            let report =
                backup_engine::report::recovery_report(&engine, chrono::Utc::now()).await?;
            print!(
                "{}",
                backup_engine::report::render_recovery(&report, format)
            );
            if report.any_breach() {
                return Ok(exit::FAILED);
            }
        }
        Command::Report {
            command: ReportCommand::Cost { month, format },
        } => {
            let month = match month {
                Some(m) => m.parse().map_err(|e: backup_core::cost::CostError| {
                    EngineError::Usage(format!("--month: {e}"))
                })?,
                None => backup_core::cost::Month::of(chrono::Utc::now()),
            };
            let report = backup_engine::report::cost_report(&engine, month).await?;
            print!("{}", backup_engine::report::render_cost(&report, format));
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
            let snapshot = engine.catalog.elasticsearch_snapshot(record.id).await?;
            let rds = engine.catalog.rds_snapshots(record.id).await?;
            let azure_sql = engine.catalog.azure_sql_backup(record.id).await?;
            output::show(
                &record,
                &artifacts,
                snapshot.as_ref(),
                &rds,
                azure_sql.as_ref(),
                json.json,
            );
        }
        Command::Restore {
            backup_id,
            target,
            source,
            latest,
            mongo,
            atlas,
            mysql,
            elasticsearch,
            rds,
            azure_blob,
            azure_sql,
            force,
            from,
            thaw,
            thaw_only,
            point_in_time,
            lsn,
            timeline,
            start,
            json,
        } => {
            if let Some(snapshot) = elasticsearch.snapshot {
                let name = backup_id.or(source).ok_or_else(|| {
                    EngineError::Usage("give the elasticsearch SOURCE to restore".into())
                })?;
                let options = backup_engine::elasticsearch::EsRestoreOptions {
                    source: name,
                    snapshot: Some(snapshot),
                    indices: elasticsearch.indices,
                    rename_pattern: elasticsearch.rename_pattern,
                    rename_replacement: elasticsearch.rename_replacement,
                };
                let outcome =
                    backup_engine::elasticsearch::run_es_restore(&engine, &options).await?;
                output::es_restore(&outcome, json.json);
                return Ok(exit::OK);
            }
            if let Some(target) = rds.target_instance {
                let name = backup_id
                    .or(source)
                    .ok_or_else(|| EngineError::Usage("give the rds SOURCE to restore".into()))?;
                let backup = chosen_backup(mongo.backup.as_deref(), latest, &name)?;
                let options = backup_engine::rds::RdsRestoreOptions {
                    source: name,
                    backup,
                    target,
                    instance_class: rds.instance_class,
                    subnet_group: rds.subnet_group,
                    from_copy: rds.from_region == "copy",
                };
                let outcome =
                    backup_engine::rds::run_rds_restore(&engine, &options, cancel).await?;
                output::rds_restore(&outcome, json.json);
                return Ok(exit::OK);
            }
            if let Some(target_database) = azure_sql.target_database {
                let name = backup_id.or(source).ok_or_else(|| {
                    EngineError::Usage("give the azure-sql SOURCE to restore".into())
                })?;
                let point = match (&mongo.backup, latest, &point_in_time) {
                    (Some(id), false, None) => {
                        backup_engine::azure_sql::RestorePointChoice::Backup(BackupSelector::Id(
                            id.clone(),
                        ))
                    }
                    (None, true, None) => backup_engine::azure_sql::RestorePointChoice::Backup(
                        BackupSelector::Latest(name.clone()),
                    ),
                    (None, false, Some(t)) => {
                        backup_engine::azure_sql::RestorePointChoice::Time(parse_time(t)?)
                    }
                    _ => {
                        return Err(EngineError::Usage(
                            "give one of --latest, --backup ID or --point-in-time TS".into(),
                        ))
                    }
                };
                let options = backup_engine::azure_sql::AzureSqlRestoreOptions {
                    source: name,
                    point,
                    target_database,
                    wait: !atlas.no_wait,
                };
                let outcome =
                    backup_engine::azure_sql::run_azure_sql_restore(&engine, &options, cancel)
                        .await?;
                output::azure_sql_restore(&outcome, json.json);
                return Ok(exit::OK);
            }
            if azure_blob.wanted() {
                let name = backup_id.or(source).ok_or_else(|| {
                    EngineError::Usage("give the azure-blob SOURCE to restore".into())
                })?;
                let selector = chosen_backup(mongo.backup.as_deref(), latest, &name)?;
                let options = backup_engine::azure_blob::BlobRestoreOptions {
                    source: name,
                    containers: azure_blob.container,
                    target_container: azure_blob.target_container,
                    target_prefix: azure_blob.target_prefix,
                    overwrite: azure_blob.overwrite,
                    drop: mongo.drop,
                    restore: backup_engine::restore::RestoreOptions {
                        force: false,
                        from,
                        thaw: thaw.options(),
                        on_file_restored: None,
                    },
                };
                let progress = Arc::new(Progress::default());
                let bar = progress::start(progress.clone(), "restoring");
                let outcome = backup_engine::azure_blob::run_blob_restore(
                    &engine, &selector, &options, progress, cancel,
                )
                .await;
                progress::finish(bar);
                output::blob_restore(&outcome?, json.json);
                return Ok(exit::OK);
            }
            if let Some(target_url) = mysql.target_url {
                let name = backup_id
                    .or(source)
                    .ok_or_else(|| EngineError::Usage("give the mysql SOURCE to restore".into()))?;
                let selector = chosen_backup(mongo.backup.as_deref(), latest, &name)?;
                let options = backup_engine::mysql::MysqlRestoreOptions {
                    source: name,
                    target_url,
                    password: backup_engine::mysql::read_password(
                        mysql.target_password_env.as_deref(),
                        None,
                    )?,
                    database: mysql.database,
                    database_prefix: None,
                    drop: mongo.drop,
                    restore: backup_engine::restore::RestoreOptions {
                        force: false,
                        from,
                        thaw: thaw.options(),
                        on_file_restored: None,
                    },
                };
                let progress = Arc::new(Progress::default());
                let bar = progress::start(progress.clone(), "restoring");
                let outcome = backup_engine::mysql::run_mysql_restore(
                    &engine, &selector, &options, progress, cancel,
                )
                .await;
                progress::finish(bar);
                output::mysql_restore(&outcome?, json.json);
                return Ok(exit::OK);
            }
            if let Some(target_cluster) = atlas.target_cluster {
                let source = source.or(backup_id.clone()).ok_or_else(|| {
                    EngineError::Usage(
                        "name the atlas source: restore SOURCE --target-cluster NAME".into(),
                    )
                })?;
                backup_engine::mongo::atlas::atlas_source(engine.config.source(&source)?.1)?;
                let selector = match (&mongo.backup, latest) {
                    (Some(id), _) => Some(BackupSelector::Id(id.clone())),
                    (None, true) => Some(BackupSelector::Latest(source.clone())),
                    (None, false) => None,
                };
                let point_in_time = point_in_time.as_deref().map(parse_time).transpose()?;
                if selector.is_some() == point_in_time.is_some() {
                    return Err(EngineError::Usage(
                        "give one of --latest, --backup ID or --point-in-time TIME".into(),
                    ));
                }
                let options = backup_engine::mongo::atlas::AtlasRestoreOptions {
                    target_cluster,
                    target_project: atlas.target_project,
                    point_in_time,
                    wait: !atlas.no_wait,
                };
                let outcome = backup_engine::mongo::atlas::run_atlas_restore(
                    &engine,
                    &source,
                    selector.as_ref(),
                    &options,
                    cancel,
                )
                .await?;
                output::atlas_restore(&outcome, json.json);
                return Ok(exit::OK);
            }
            if mongo.wanted() {
                let source = source.or(backup_id).ok_or_else(|| {
                    EngineError::Usage(
                        "name the MongoDB source: restore SOURCE --target-uri URI".into(),
                    )
                })?;
                let (_, config) = engine.config.source(&source)?;
                backup_engine::mongo::mongo_source(config)?;
                let (selector, point) = match (&mongo.backup, latest, &point_in_time) {
                    (Some(id), _, None) => (BackupSelector::Id(id.clone()), None),
                    (None, true, None) => (BackupSelector::Latest(source.clone()), None),
                    (_, false, Some(t)) => (
                        BackupSelector::Latest(source.clone()),
                        Some(mongo_point(t)?),
                    ),
                    _ => {
                        return Err(EngineError::Usage(
                            "give one of --latest, --backup ID or --point-in-time TS".into(),
                        ))
                    }
                };
                let options = backup_engine::mongo::MongoRestoreOptions {
                    target_uri: mongo.uri()?,
                    namespaces: mongo.namespace.clone(),
                    rename_to: mongo.rename_to.clone(),
                    database_prefix: None,
                    drop: mongo.drop,
                    parallel_collections: usize::from(mongo.parallel_collections),
                    staging: mongo.staging.clone(),
                    restore: backup_engine::restore::RestoreOptions {
                        force: false,
                        from,
                        thaw: thaw.options(),
                        on_file_restored: None,
                    },
                };
                let progress = Arc::new(Progress::default());
                let bar = progress::start(progress.clone(), "restoring");
                let outcome = match point {
                    None => {
                        backup_engine::mongo::run_mongo_restore(
                            &engine,
                            &selector,
                            backup_engine::mongo::RestorePoint::BackupEnd,
                            &options,
                            progress,
                            cancel,
                        )
                        .await
                    }
                    Some(at) => {
                        backup_engine::mongo::run_mongo_pitr(
                            &engine,
                            &source,
                            at,
                            mongo.backup.as_deref(),
                            &options,
                            progress,
                            cancel,
                        )
                        .await
                    }
                };
                progress::finish(bar);
                output::mongo_restore(&outcome?, json.json);
                return Ok(exit::OK);
            }
            let Some(target) = target else {
                return Err(EngineError::Usage("--target DIR is needed".into()));
            };
            if latest && source.is_none() {
                return Err(EngineError::Usage("--latest needs --source S".into()));
            }
            let postgres_source = match (&backup_id, &source) {
                (Some(id), _) => {
                    let record = engine.catalog.find_backup_by_prefix(id).await?;
                    engine
                        .config
                        .source(&record.source)
                        .ok()
                        .map(|(_, s)| s)
                        .filter(|s| s.kind.kind_name() == "postgres")
                }
                (None, Some(name)) => {
                    Some(engine.config.source(name)?.1).filter(|s| s.kind.kind_name() == "postgres")
                }
                (None, None) => None,
            };
            if let Some(pg) = postgres_source {
                let target_spec = match (&point_in_time, &lsn) {
                    (Some(t), _) => backup_engine::pitr::RecoveryTarget::Time(parse_time(t)?),
                    (None, Some(l)) => backup_engine::pitr::RecoveryTarget::Lsn(
                        l.parse()
                            .map_err(|e| EngineError::Usage(format!("--lsn: {e}")))?,
                    ),
                    (None, None) => backup_engine::pitr::RecoveryTarget::Latest,
                };
                let options = backup_engine::pitr::PitrOptions {
                    target: target_spec,
                    timeline,
                    backup: backup_id,
                    start_port: start,
                    start_timeout: Duration::from_secs(600),
                    restore: backup_engine::restore::RestoreOptions {
                        force: false,
                        from,
                        thaw: thaw.options(),
                        on_file_restored: None,
                    },
                };
                let progress = Arc::new(Progress::default());
                let bar = progress::start(progress.clone(), "restoring");
                let outcome = backup_engine::pitr::run_pitr_restore(
                    &engine, pg, &target, &options, progress, cancel,
                )
                .await;
                progress::finish(bar);
                output::pitr(&outcome?, json.json);
                return Ok(exit::OK);
            }
            if point_in_time.is_some() || lsn.is_some() || start.is_some() {
                return Err(EngineError::Usage(
                    "--point-in-time, --lsn and --start need a postgres source".into(),
                ));
            }
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
                on_file_restored: None,
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
