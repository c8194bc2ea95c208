//! `cargo xtask bench-pg`: backupd vs pgBackRest on a PostgreSQL 15 cluster, in one run.
//!
//! Setup: a stopped data directory (the reference corpus's `pgdata/`, or a fresh cluster
//! filled by `pgbench -i -s N`) is started once with `archive_command = 'cp %p STAGE/%f'`
//! and loaded with pgbench until enough complete 16 MiB WAL segments are staged; stopped,
//! it becomes the template of every round.
//!
//! Each round, for each tool in alternating order, on a fresh copy of the template whose
//! `archive_command` is that tool's (`backupctl wal-push %p`, `pgbackrest archive-push %p`):
//! init the repository; push the staged segments one at a time with the archive command
//! (wal-push latency); a full online base backup; pgbench for `--load-seconds` (archive
//! throughput, from `pg_stat_archiver`); a PITR target between two marker rows; stop; a
//! restore of the base backup; a point-in-time restore to the target, started until
//! promoted, and the marker rows checked.
//!
//! Every tool command runs as the OS user that runs PostgreSQL (`postgres` when root), as
//! archive_command does. pgBackRest runs with the settings of
//! `/work/shared/bench/peer-pgbackrest.sh`: zstd-3, aes-256-cbc, process-max 2, a local posix
//! repository. Peak RSS is the largest sum over the tool's processes (pgBackRest's workers
//! included), sampled every 50 ms, or the largest single process from `/usr/bin/time` if
//! that is higher.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backup_testing::postgres::{free_port, PgCluster, PgClusterOptions, PgbenchLength};

use crate::{du_bytes, machine, reference_corpus, sync, Measured};

const HEADING: &str = "## PostgreSQL: backupd vs pgBackRest";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PGBACKREST: &str = "/usr/bin/pgbackrest";
const SEGMENT_BYTES: u64 = 16 << 20;
/// The reference script's passphrase: a benchmark repository, not a secret.
const CIPHER_PASS: &str = "peer-bench-passphrase-not-secret";
/// Longest wait for an archiver backlog, a restore or a recovery.
const LONG_WAIT: Duration = Duration::from_secs(900);

enum DataSource {
    /// `pgdata/` of the reference corpus (`make-corpus.sh DIR SCALE`).
    Corpus { scale: String, dir: Option<PathBuf> },
    /// A new cluster filled by `pgbench -i -s N`.
    Pgbench(u32),
}

struct Options {
    data: DataSource,
    rounds: usize,
    segments: usize,
    load_seconds: u32,
    clients: u32,
    write_docs: bool,
}

const USAGE: &str = "usage: bench-pg [--scale S | --corpus DIR | --pgbench-scale N] [--rounds N] \
                     [--segments N] [--load-seconds S] [--clients N] [--no-docs]";

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        data: DataSource::Corpus {
            scale: "1".into(),
            dir: None,
        },
        rounds: 2,
        segments: 50,
        load_seconds: 30,
        clients: 4,
        write_docs: true,
    };
    let mut it = args.iter();
    let value = |name: &str, it: &mut std::slice::Iter<'_, String>| -> Result<String> {
        it.next()
            .cloned()
            .with_context(|| format!("{name} needs a value ({USAGE})"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--scale" => {
                let scale = value(a, &mut it)?;
                options.data = match options.data {
                    DataSource::Corpus { dir, .. } => DataSource::Corpus { scale, dir },
                    DataSource::Pgbench(_) => {
                        bail!("--scale and --pgbench-scale exclude each other")
                    }
                }
            }
            "--corpus" => {
                let dir = Some(PathBuf::from(value(a, &mut it)?));
                options.data = match options.data {
                    DataSource::Corpus { scale, .. } => DataSource::Corpus { scale, dir },
                    DataSource::Pgbench(_) => {
                        bail!("--corpus and --pgbench-scale exclude each other")
                    }
                }
            }
            "--pgbench-scale" => {
                options.data = DataSource::Pgbench(value(a, &mut it)?.parse()?);
            }
            "--rounds" => options.rounds = value(a, &mut it)?.parse()?,
            "--segments" => options.segments = value(a, &mut it)?.parse()?,
            "--load-seconds" => options.load_seconds = value(a, &mut it)?.parse()?,
            "--clients" => options.clients = value(a, &mut it)?.parse()?,
            "--no-docs" => options.write_docs = false,
            other => bail!("unknown bench-pg option {other} ({USAGE})"),
        }
    }
    if options.rounds == 0 || options.segments == 0 || options.load_seconds == 0 {
        bail!("--rounds, --segments and --load-seconds must be at least 1");
    }
    Ok(options)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Backupd,
    PgBackRest,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Backupd => "backupd",
            Tool::PgBackRest => "pgBackRest",
        }
    }

    /// The process name (`/proc/PID/comm`) whose RSS is counted.
    fn comm(self) -> &'static str {
        match self {
            Tool::Backupd => "backupctl",
            Tool::PgBackRest => "pgbackrest",
        }
    }
}

/// One tool's figures from one round.
struct RoundResult {
    tool: Tool,
    /// Data directory bytes (without pg_wal) when the base backup started.
    data_bytes: u64,
    backup: Measured,
    /// Repository bytes holding the base backup (WAL archive excluded).
    stored: u64,
    restore: Measured,
    push_ms: Vec<f64>,
    load: ArchiveLoad,
    pitr: Pitr,
}

impl RoundResult {
    fn backup_mb_s(&self) -> f64 {
        self.data_bytes as f64 / 1e6 / self.backup.seconds
    }

    fn restore_mb_s(&self) -> f64 {
        self.data_bytes as f64 / 1e6 / self.restore.seconds
    }
}

/// WAL archiving while pgbench runs.
#[derive(Clone)]
struct ArchiveLoad {
    seconds: f64,
    tps: f64,
    /// Segments completed while pgbench ran (current WAL file before and after).
    written: u64,
    /// `pg_stat_archiver.archived_count` growth while pgbench ran.
    archived: u64,
    /// Segments waiting (`.ready`) when pgbench ended.
    backlog: u64,
    /// `last_archived_wal` behind the current segment when pgbench ended.
    behind: u64,
    /// Until no segment waited any more, after pgbench ended.
    drain_seconds: f64,
    /// `pg_stat_archiver.failed_count` growth (archive_command failures).
    failed: u64,
}

impl ArchiveLoad {
    fn archived_per_s(&self) -> f64 {
        self.archived as f64 / self.seconds
    }

    fn written_per_s(&self) -> f64 {
        self.written as f64 / self.seconds
    }

    /// More than the segment being archived right now was waiting.
    fn fell_behind(&self) -> bool {
        self.backlog > 1
    }
}

/// A point-in-time restore to the target, started until promoted.
#[derive(Clone)]
struct Pitr {
    seconds: f64,
    restore_seconds: f64,
    recovery_seconds: f64,
    /// WAL segments from the start of the base backup to the target.
    replayed_segments: u64,
}

pub fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    for (path, install) in [
        (PGBACKREST, "apt-get install -y pgbackrest"),
        ("/usr/bin/time", "apt-get install -y time"),
        (
            "/usr/lib/postgresql/15/bin/postgres",
            "apt-get install -y postgresql-15",
        ),
    ] {
        if !Path::new(path).exists() {
            bail!("{path} is missing: {install}");
        }
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load.split_whitespace().next().unwrap_or("?").to_owned();
    let pgbackrest_version = text(Command::new(PGBACKREST).arg("version"))?
        .trim()
        .to_owned();
    let release = crate::cargo_build_backupctl(true)?;
    let work = PgCluster::scratch_dir("bench-pg");
    // The release binary sits under the cargo target dir, which `postgres` may not reach.
    let bin = PgCluster::accessible_binary(&release, work.path());
    let (template, staged, data_note) = prepare(&options, work.path())?;
    println!(
        "data: {data_note}; {} staged WAL segments; {} rounds; load average {load}; {pgbackrest_version}",
        staged.len(),
        options.rounds
    );

    let bench = Bench {
        bin,
        template,
        staged,
        options: &options,
        user: PgUser::detect()?,
    };
    let mut results: Vec<RoundResult> = Vec::new();
    for round in 1..=options.rounds {
        // Alternate which tool goes first: neither always meets the warmer page cache.
        let order = if round % 2 == 1 {
            [Tool::Backupd, Tool::PgBackRest]
        } else {
            [Tool::PgBackRest, Tool::Backupd]
        };
        for tool in order {
            println!("round {round}: {}", tool.name());
            let result = bench
                .round(tool, round)
                .with_context(|| format!("round {round}, {}", tool.name()))?;
            println!("round {round}: {}", describe(&result));
            results.push(result);
        }
    }
    drop(bench);
    drop(work);

    let ours = Best::of(&results, Tool::Backupd);
    let peer = Best::of(&results, Tool::PgBackRest);
    let section = report(
        &options,
        &data_note,
        &load,
        &pgbackrest_version,
        &ours,
        &peer,
    );
    println!("\n{section}");
    if options.write_docs {
        crate::write_bench_section(HEADING, &section)?;
    } else {
        println!("(--no-docs: docs/benchmarks.md left as it is)");
    }
    Ok(())
}

/// The template data directory (stopped, archiving to a staging dir), the staged WAL
/// segments for the push latency, and what the data is.
fn prepare(options: &Options, work: &Path) -> Result<(PathBuf, Vec<PathBuf>, String)> {
    let stage = work.join("stage");
    fs::create_dir(&stage)?;
    PgCluster::make_accessible(&stage);
    let template = work.join("template");
    let archive_command = format!("cp %p {}/%f", stage.display());
    let settings = [
        "wal_level = replica".to_owned(),
        "archive_mode = on".to_owned(),
        format!("archive_command = {}", quote(&archive_command)),
        // The server's own durability is not what is measured; both tools sync their writes.
        "fsync = off".to_owned(),
    ];
    let wanted = options.segments + 1;
    let note = match &options.data {
        DataSource::Corpus { scale, dir } => {
            let (corpus, _) = reference_corpus(dir.clone(), scale)?;
            let pgdata = corpus.join("pgdata");
            println!("copying {} to {}", pgdata.display(), template.display());
            copy_tree(&pgdata, &template)?;
            PgCluster::make_accessible(&template);
            append_conf(&template, &settings)?;
            let mut cluster = PgCluster::start_existing(&template, free_port());
            stage_segments(&cluster, &stage, wanted)?;
            cluster.stop();
            format!(
                "the reference corpus's `pgdata/` ({}: pgbench scale 20 plus an `events` table)",
                pgdata.display()
            )
        }
        DataSource::Pgbench(scale) => {
            let mut cluster = PgCluster::init(PgClusterOptions {
                archive_command: Some(archive_command.clone()),
                extra_settings: settings.to_vec(),
                ..PgClusterOptions::default()
            });
            cluster.start();
            println!("pgbench -i -s {scale}");
            cluster.pgbench_init(*scale);
            stage_segments(&cluster, &stage, wanted)?;
            cluster.stop();
            copy_tree(cluster.data_dir(), &template)?;
            PgCluster::make_accessible(&template);
            format!("a new cluster filled by `pgbench -i -s {scale}`")
        }
    };
    let mut staged: Vec<PathBuf> = fs::read_dir(&stage)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    staged.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(segment_index)
            .is_some()
            && fs::metadata(p).is_ok_and(|m| m.len() == SEGMENT_BYTES)
    });
    staged.sort();
    staged.truncate(options.segments);
    Ok((template, staged, note))
}

/// Runs pgbench (after a checkpoint, so pages are written in full again) until `wanted`
/// complete segments were archived into `stage`.
fn stage_segments(cluster: &PgCluster, stage: &Path, wanted: usize) -> Result<()> {
    for attempt in 0.. {
        let staged = fs::read_dir(stage)?.count();
        println!("staging WAL segments: {staged}/{wanted}");
        if staged >= wanted {
            return Ok(());
        }
        if attempt >= 200 {
            bail!("pgbench wrote only {staged} WAL segments in {attempt} runs");
        }
        cluster.psql("CHECKPOINT");
        cluster.pgbench_run(2, PgbenchLength::Seconds(5));
        cluster.wait_for(
            "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
            "0",
            LONG_WAIT,
        );
    }
    unreachable!("the loop returns or bails")
}

/// The OS user PostgreSQL and the tools run as: `postgres` (by uid/gid) when we are root.
struct PgUser {
    ids: Option<(u32, u32)>,
}

impl PgUser {
    fn detect() -> Result<PgUser> {
        if text(Command::new("id").arg("-u"))?.trim() != "0" {
            return Ok(PgUser { ids: None });
        }
        let user = PgCluster::os_user();
        let uid = text(Command::new("id").args(["-u", user]))?
            .trim()
            .parse()?;
        let gid = text(Command::new("id").args(["-g", user]))?
            .trim()
            .parse()?;
        Ok(PgUser {
            ids: Some((uid, gid)),
        })
    }

    /// `program` as that user, directly (no runuser/PAM in the measured time).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.ids {
            command.uid(uid).gid(gid).env("HOME", "/var/lib/postgresql");
        }
        command.current_dir(cwd).stdin(Stdio::null());
        command
    }
}

struct Bench<'a> {
    /// backupctl, where the postgres user can run it.
    bin: PathBuf,
    template: PathBuf,
    staged: Vec<PathBuf>,
    options: &'a Options,
    user: PgUser,
}

/// One tool's repository and configuration in a round directory.
struct Setup {
    tool: Tool,
    program: PathBuf,
    /// Arguments before the subcommand (config, stanza).
    base: Vec<String>,
    dir: PathBuf,
    data: PathBuf,
}

impl Setup {
    fn args(&self, more: &[&str]) -> Vec<String> {
        let mut args = self.base.clone();
        args.extend(more.iter().map(|s| s.to_string()));
        args
    }

    fn archive_command(&self) -> String {
        let verb = match self.tool {
            Tool::Backupd => "wal-push",
            Tool::PgBackRest => "archive-push",
        };
        format!(
            "{} {} {verb} %p",
            self.program.display(),
            self.base.join(" ")
        )
    }

    /// Bytes of the repository holding base backups (not the WAL archive).
    fn stored_backup_bytes(&self) -> Result<u64> {
        match self.tool {
            Tool::Backupd => {
                let repo = self.dir.join("var/repo");
                let wal = repo.join("wal");
                let wal_bytes = if wal.exists() { du_bytes(&wal)? } else { 0 };
                Ok(du_bytes(&repo)?.saturating_sub(wal_bytes))
            }
            Tool::PgBackRest => du_bytes(&self.dir.join("repo/backup")),
        }
    }
}

impl Bench<'_> {
    fn setup(&self, tool: Tool, dir: &Path, port: u16) -> Result<Setup> {
        let data = dir.join("data");
        let setup = match tool {
            Tool::Backupd => {
                let config = dir.join("backupd.toml");
                fs::write(
                    &config,
                    format!(
                        "[catalog]\nurl = \"sqlite://{root}/var/catalog.db\"\n\
                         [encryption]\nkey-file = \"{root}/var/keys/repo.key\"\n\
                         [pipeline]\ncompression-level = 3\n\
                         [[repository]]\nname = \"local\"\nkind = \"local\"\npath = \"{root}/var/repo\"\n\
                         [[source]]\nname = \"pg\"\nkind = \"postgres\"\n\
                         connection = \"postgres://postgres@127.0.0.1:{port}/postgres\"\n\
                         data-directory = \"{data}\"\npg-bin-dir = \"{PG_BIN}\"\nrepository = \"local\"\n",
                        root = dir.display(),
                        data = data.display(),
                    ),
                )?;
                PgCluster::make_accessible(&config);
                Setup {
                    tool,
                    program: self.bin.clone(),
                    base: vec!["--config".into(), config.display().to_string()],
                    dir: dir.to_path_buf(),
                    data,
                }
            }
            Tool::PgBackRest => {
                let config = dir.join("pgbackrest.conf");
                for sub in ["repo", "lock", "log"] {
                    fs::create_dir_all(dir.join(sub))?;
                }
                // As peer-pgbackrest.sh; pg1-port and pg1-socket-path are added once the
                // server runs (its socket directory is only known then).
                fs::write(
                    &config,
                    format!(
                        "[global]\nrepo1-path={root}/repo\nrepo1-cipher-type=aes-256-cbc\n\
                         repo1-cipher-pass={CIPHER_PASS}\nrepo1-retention-full=1\n\
                         compress-type=zst\ncompress-level=3\nprocess-max=2\nstart-fast=y\n\
                         log-level-console=warn\nlog-level-file=info\n\
                         lock-path={root}/lock\nlog-path={root}/log\n\
                         [bench]\npg1-path={data}\n",
                        root = dir.display(),
                        data = data.display(),
                    ),
                )?;
                for path in [
                    &config,
                    &dir.join("repo"),
                    &dir.join("lock"),
                    &dir.join("log"),
                ] {
                    PgCluster::make_accessible(path);
                }
                Setup {
                    tool,
                    program: PathBuf::from(PGBACKREST),
                    base: vec![
                        format!("--config={}", config.display()),
                        "--stanza=bench".into(),
                    ],
                    dir: dir.to_path_buf(),
                    data,
                }
            }
        };
        Ok(setup)
    }

    fn round(&self, tool: Tool, round: usize) -> Result<RoundResult> {
        let scratch = PgCluster::scratch_dir(&format!("bench-pg-{round}-{}", tool.comm()));
        let dir = scratch.path();
        let port = free_port();
        let setup = self.setup(tool, dir, port)?;
        copy_tree(&self.template, &setup.data)?;
        PgCluster::make_accessible(&setup.data);
        append_conf(
            &setup.data,
            &[format!(
                "archive_command = {}",
                quote(&setup.archive_command())
            )],
        )?;
        if tool == Tool::Backupd {
            // Before the server starts: its first archive_command must find the repository.
            self.ok(&setup, &["init"])?;
        }
        let mut cluster = PgCluster::start_existing(&setup.data, port);
        if tool == Tool::PgBackRest {
            let socket = socket_dir(&setup.data)?;
            let config = dir.join("pgbackrest.conf");
            let mut conf = fs::read_to_string(&config)?;
            conf.push_str(&format!(
                "pg1-port={port}\npg1-socket-path={}\n",
                socket.display()
            ));
            fs::write(&config, conf)?;
            self.ok(&setup, &["stanza-create"])?;
        }

        // 3. wal-push latency: the archive command on each staged segment, one at a time.
        let mut push_ms = Vec::with_capacity(self.staged.len());
        for segment in &self.staged {
            let verb = match tool {
                Tool::Backupd => "wal-push",
                Tool::PgBackRest => "archive-push",
            };
            let path = segment.display().to_string();
            let started = Instant::now();
            self.ok_in(&setup, &setup.data, &[verb, &path])?;
            push_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }

        // 1. Full online base backup.
        let start_segment = current_segment(&cluster)?;
        let data_bytes = data_dir_bytes(&setup.data)?;
        sync();
        let backup_args = match tool {
            Tool::Backupd => setup.args(&["backup", "pg"]),
            Tool::PgBackRest => setup.args(&["--type=full", "backup"]),
        };
        let (backup, _) = self.measure(&setup, &backup_args)?;
        let stored = setup.stored_backup_bytes()?;

        // 4. Archiving under pgbench load.
        let load = archive_under_load(&cluster, self.options.clients, self.options.load_seconds)?;

        // The recovery target, between a row that must be there and one that must not.
        cluster.psql(
            "DROP TABLE IF EXISTS bench_pitr; CREATE TABLE bench_pitr (n int); \
             INSERT INTO bench_pitr VALUES (1)",
        );
        thread::sleep(Duration::from_millis(1100));
        let target = cluster.psql(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        );
        let target_segment = current_segment(&cluster)?;
        thread::sleep(Duration::from_millis(1100));
        cluster.psql("INSERT INTO bench_pitr VALUES (2)");
        let last = cluster.switch_wal();
        cluster.wait_archived(&last, LONG_WAIT);
        cluster.stop();
        drop(cluster);

        // 2. Restore of the base backup (no recovery).
        let restored = dir.join("restored");
        let restore_args = match tool {
            Tool::Backupd => setup.args(&[
                "restore",
                "--source",
                "pg",
                "--target",
                &restored.display().to_string(),
            ]),
            Tool::PgBackRest => {
                self.empty_dir(&restored)?;
                setup.args(&[&format!("--pg1-path={}", restored.display()), "restore"])
            }
        };
        sync();
        let (restore, _) = self.measure(&setup, &restore_args)?;
        let restored_bytes = data_dir_bytes(&restored)?;
        if restored_bytes < data_bytes * 9 / 10 {
            bail!(
                "{} restored only {restored_bytes} bytes of a {data_bytes}-byte data directory",
                tool.name()
            );
        }
        fs::remove_dir_all(&restored)?;

        // 5. Point-in-time restore, started until promoted.
        let mut pitr = self.pitr(&setup, &target)?;
        pitr.replayed_segments = target_segment.saturating_sub(start_segment) + 1;
        drop(scratch);
        Ok(RoundResult {
            tool,
            data_bytes,
            backup,
            stored,
            restore,
            push_ms,
            load,
            pitr,
        })
    }

    fn pitr(&self, setup: &Setup, target: &str) -> Result<Pitr> {
        let dir = setup.dir.join("pitr");
        let port = free_port();
        sync();
        let pitr = match setup.tool {
            Tool::Backupd => {
                let _stop = StopServer {
                    user: &self.user,
                    data: dir.clone(),
                };
                let (m, json) = self.measure(
                    setup,
                    &setup.args(&[
                        "restore",
                        "--source",
                        "pg",
                        "--point-in-time",
                        target,
                        "--target",
                        &dir.display().to_string(),
                        "--start",
                        &port.to_string(),
                        "--json",
                    ]),
                )?;
                let outcome: serde_json::Value = serde_json::from_str(&json)
                    .with_context(|| format!("backupctl restore --json printed {json:?}"))?;
                check_marker(port)?;
                Pitr {
                    seconds: m.seconds,
                    restore_seconds: outcome["restore_seconds"].as_f64().unwrap_or(f64::NAN),
                    recovery_seconds: outcome["recovery_seconds"].as_f64().unwrap_or(f64::NAN),
                    replayed_segments: 0,
                }
            }
            Tool::PgBackRest => {
                self.empty_dir(&dir)?;
                let (restore, _) = self.measure(
                    setup,
                    &setup.args(&[
                        &format!("--pg1-path={}", dir.display()),
                        "--type=time",
                        &format!("--target={target}"),
                        "--target-action=promote",
                        "restore",
                    ]),
                )?;
                let started = Instant::now();
                let cluster = PgCluster::start_existing(&dir, port);
                cluster.wait_for("SELECT pg_is_in_recovery()", "f", LONG_WAIT);
                let recovery_seconds = started.elapsed().as_secs_f64();
                check_marker(port)?;
                drop(cluster);
                Pitr {
                    seconds: restore.seconds + recovery_seconds,
                    restore_seconds: restore.seconds,
                    recovery_seconds,
                    replayed_segments: 0,
                }
            }
        };
        Ok(pitr)
    }

    /// An empty directory (mode 0700) owned by the postgres user, for pgBackRest to restore into.
    fn empty_dir(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        PgCluster::make_accessible(dir);
        Ok(())
    }

    /// Runs a tool command in its round directory; fails with its output.
    fn ok(&self, setup: &Setup, args: &[&str]) -> Result<String> {
        self.ok_in(setup, &setup.dir, args)
    }

    fn ok_in(&self, setup: &Setup, cwd: &Path, args: &[&str]) -> Result<String> {
        let mut command = self.user.command(&setup.program, cwd);
        command.args(setup.args(args));
        text(&mut command)
    }

    /// Runs a tool command under `/usr/bin/time`, sampling the summed RSS of the tool's
    /// processes every 50 ms; returns the measure and the command's stdout.
    fn measure(&self, setup: &Setup, args: &[String]) -> Result<(Measured, String)> {
        let rss_file = setup.dir.join(".rss");
        let mut command = self.user.command("/usr/bin/time", &setup.dir);
        command
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&rss_file)
            .arg(&setup.program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let child = command
            .spawn()
            .with_context(|| format!("running {}", setup.program.display()))?;
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (done, root, comm) = (done.clone(), child.id(), setup.tool.comm());
            thread::spawn(move || {
                let mut peak = 0;
                while !done.load(Ordering::Relaxed) {
                    peak = peak.max(tree_rss_kib(root, comm));
                    thread::sleep(Duration::from_millis(50));
                }
                peak
            })
        };
        let out = child.wait_with_output();
        let seconds = started.elapsed().as_secs_f64();
        done.store(true, Ordering::Relaxed);
        let summed = sampler.join().unwrap_or(0);
        let out = out?;
        if !out.status.success() {
            bail!(
                "{} {} failed ({}): {}{}",
                setup.program.display(),
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let single: u64 = fs::read_to_string(&rss_file)?
            .trim()
            .lines()
            .last()
            .unwrap_or("0")
            .parse()?;
        Ok((
            Measured {
                seconds,
                peak_rss_kib: summed.max(single),
                // Not reported by this benchmark.
                cpu_seconds: f64::NAN,
            },
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }
}

/// Stops the server `backupctl restore --start` left running, however the round ends.
struct StopServer<'a> {
    user: &'a PgUser,
    data: PathBuf,
}

impl Drop for StopServer<'_> {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = self
                .user
                .command(Path::new(PG_BIN).join("pg_ctl"), Path::new("/"))
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// pgbench for `seconds` with the tool's archive_command, then until the backlog drains.
fn archive_under_load(cluster: &PgCluster, clients: u32, seconds: u32) -> Result<ArchiveLoad> {
    let stats = || -> Result<(u64, u64, String, String, u64)> {
        let row = cluster.psql(
            "SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), \
             pg_walfile_name(pg_current_wal_lsn()), \
             (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') \
             FROM pg_stat_archiver",
        );
        let f: Vec<&str> = row.split('|').collect();
        if f.len() != 5 {
            bail!("unexpected pg_stat_archiver row {row:?}");
        }
        Ok((
            f[0].parse()?,
            f[1].parse()?,
            f[2].to_owned(),
            f[3].to_owned(),
            f[4].parse()?,
        ))
    };
    let (archived0, failed0, _, current0, _) = stats()?;
    let started = Instant::now();
    let report = cluster.pgbench_run(clients, PgbenchLength::Seconds(seconds));
    let load_seconds = started.elapsed().as_secs_f64();
    let (archived1, _, last1, current1, ready1) = stats()?;
    let ended = Instant::now();
    let mut drained = stats()?;
    while drained.4 > 0 {
        if ended.elapsed() > LONG_WAIT {
            bail!(
                "the archiver still had {} segments waiting {LONG_WAIT:?} after pgbench ended",
                drained.4
            );
        }
        thread::sleep(Duration::from_millis(100));
        drained = stats()?;
    }
    let drain_seconds = if ready1 == 0 {
        0.0
    } else {
        ended.elapsed().as_secs_f64()
    };
    let index = |name: &str| segment_index(name).unwrap_or(0);
    let tps = report
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    Ok(ArchiveLoad {
        seconds: load_seconds,
        tps,
        written: index(&current1).saturating_sub(index(&current0)),
        archived: archived1 - archived0,
        backlog: ready1,
        behind: index(&current1).saturating_sub(index(&last1) + 1),
        drain_seconds,
        failed: drained.1.saturating_sub(failed0),
    })
}

/// The restored server has the row written before the target and not the one after.
fn check_marker(port: u16) -> Result<()> {
    let rows = text(
        Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(port.to_string())
            .args([
                "-d",
                "postgres",
                "-c",
                "SELECT string_agg(n::text, ',' ORDER BY n) || '|' || pg_is_in_recovery()::text FROM bench_pitr",
            ]),
    )?;
    if rows.trim() != "1|false" {
        bail!("the point-in-time restore on port {port} has bench_pitr rows|in recovery = {rows:?}, expected 1|false");
    }
    Ok(())
}

fn current_segment(cluster: &PgCluster) -> Result<u64> {
    let name = cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    segment_index(&name).with_context(|| format!("not a WAL segment name: {name:?}"))
}

/// `TTTTTTTTLLLLLLLLSSSSSSSS` (16 MiB segments) as a number that counts segments.
fn segment_index(name: &str) -> Option<u64> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some(log * (0x1_0000_0000 / SEGMENT_BYTES) + seg)
}

/// Data directory bytes without pg_wal (neither tool copies it into a base backup).
fn data_dir_bytes(dir: &Path) -> Result<u64> {
    let wal = dir.join("pg_wal");
    let wal_bytes = if wal.exists() { du_bytes(&wal)? } else { 0 };
    Ok(du_bytes(dir)?.saturating_sub(wal_bytes))
}

/// The server's Unix socket directory, from line 5 of postmaster.pid.
fn socket_dir(data: &Path) -> Result<PathBuf> {
    let pid_file = fs::read_to_string(data.join("postmaster.pid"))?;
    pid_file
        .lines()
        .nth(4)
        .filter(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .context("postmaster.pid names no socket directory")
}

/// Summed VmRSS (KiB) of the processes named `comm` at or below `root`.
fn tree_rss_kib(root: u32, comm: &str) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
        let ppid = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut total = 0;
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        frontier.extend(parents.iter().filter(|p| p.1 == pid).map(|p| p.0));
        let named = fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm);
        if named {
            total += fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .unwrap_or(0);
        }
    }
    total
}

/// `cp -a`: keeps owners and modes (a data directory must stay 0700 and the server's).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .context("running cp -a")?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}

/// Appends settings to postgresql.conf; later lines win.
fn append_conf(data: &Path, lines: &[String]) -> Result<()> {
    let path = data.join("postgresql.conf");
    let mut conf = fs::read_to_string(&path)?;
    conf.push_str("\n# cargo xtask bench-pg\n");
    for line in lines {
        conf.push_str(line);
        conf.push('\n');
    }
    fs::write(&path, conf)?;
    Ok(())
}

/// A single-quoted postgresql.conf string.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Runs `command`, failing with its output; returns stdout.
fn text(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Nearest-rank percentile of `values` (unsorted).
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn describe(r: &RoundResult) -> String {
    format!(
        "{} backup {:.0} MB/s ({:.1} s, {:.0} MiB, stored {:.1} MB) restore {:.0} MB/s ({:.1} s, {:.0} MiB) \
         push p50 {:.0} ms p99 {:.0} ms | load {:.0} tps, {} segments written, {} archived, backlog {} (behind {}), \
         drain {:.1} s, {} failures | PITR {:.1} s (restore {:.1} s + recovery {:.1} s, {} segments)",
        r.tool.name(),
        r.backup_mb_s(),
        r.backup.seconds,
        r.backup.peak_rss_kib as f64 / 1024.0,
        r.stored as f64 / 1e6,
        r.restore_mb_s(),
        r.restore.seconds,
        r.restore.peak_rss_kib as f64 / 1024.0,
        percentile(&r.push_ms, 50.0),
        percentile(&r.push_ms, 99.0),
        r.load.tps,
        r.load.written,
        r.load.archived,
        r.load.backlog,
        r.load.behind,
        r.load.drain_seconds,
        r.load.failed,
        r.pitr.seconds,
        r.pitr.restore_seconds,
        r.pitr.recovery_seconds,
        r.pitr.replayed_segments,
    )
}

/// A tool's best figures over the rounds: fastest backup, restore and PITR, the load round
/// that archived fastest, the highest peak RSS, every wal-push latency pooled.
struct Best {
    data_bytes: u64,
    backup_mb_s: f64,
    backup_rss_mib: f64,
    stored: u64,
    restore_mb_s: f64,
    restore_rss_mib: f64,
    push_p50: f64,
    push_p99: f64,
    pushes: usize,
    load: ArchiveLoad,
    /// Any round's archiver fell behind.
    fell_behind: bool,
    pitr: Pitr,
}

impl Best {
    fn of(results: &[RoundResult], tool: Tool) -> Best {
        let mine: Vec<&RoundResult> = results.iter().filter(|r| r.tool == tool).collect();
        let pushes: Vec<f64> = mine
            .iter()
            .flat_map(|r| r.push_ms.iter().copied())
            .collect();
        let max = |f: &dyn Fn(&RoundResult) -> f64| mine.iter().map(|r| f(r)).fold(0.0, f64::max);
        let load = mine
            .iter()
            .max_by(|a, b| a.load.archived_per_s().total_cmp(&b.load.archived_per_s()))
            .map(|r| r.load.clone())
            .expect("every tool ran at least one round");
        let pitr = mine
            .iter()
            .min_by(|a, b| a.pitr.seconds.total_cmp(&b.pitr.seconds))
            .map(|r| r.pitr.clone())
            .expect("every tool ran at least one round");
        Best {
            data_bytes: mine.iter().map(|r| r.data_bytes).max().unwrap_or(0),
            backup_mb_s: max(&|r| r.backup_mb_s()),
            backup_rss_mib: max(&|r| r.backup.peak_rss_kib as f64 / 1024.0),
            stored: mine.iter().map(|r| r.stored).min().unwrap_or(0),
            restore_mb_s: max(&|r| r.restore_mb_s()),
            restore_rss_mib: max(&|r| r.restore.peak_rss_kib as f64 / 1024.0),
            push_p50: percentile(&pushes, 50.0),
            push_p99: percentile(&pushes, 99.0),
            pushes: pushes.len(),
            load,
            fell_behind: mine.iter().any(|r| r.load.fell_behind()),
            pitr,
        }
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

fn report(
    options: &Options,
    data_note: &str,
    load: &str,
    pgbackrest_version: &str,
    ours: &Best,
    peer: &Best,
) -> String {
    let (cores, cpu) = machine();
    let rounds = options.rounds;
    let backup_ratio = ours.backup_mb_s / peer.backup_mb_s;
    let restore_ratio = ours.restore_mb_s / peer.restore_mb_s;
    let behind = |b: &Best| {
        format!(
            "{} waiting at the end, drained in {:.1} s{}{}",
            b.load.backlog,
            b.load.drain_seconds,
            if b.fell_behind {
                "; **fell behind**"
            } else {
                ""
            },
            if b.load.failed > 0 {
                format!("; {} archive_command failures", b.load.failed)
            } else {
                String::new()
            }
        )
    };
    let table = format!(
        "| measure | backupd | {pgbackrest_version} | backupd / pgBackRest | target |\n\
         |---|---:|---:|---:|---|\n\
         | full base backup, MB/s | {:.0} | {:.0} | **{backup_ratio:.2}x** | >= 2x: {} |\n\
         | base backup peak RSS | {:.0} MiB | {:.0} MiB | {:.2}x | |\n\
         | base backup stored | {:.1} MB | {:.1} MB | {:.2}x | |\n\
         | restore of the base backup, MB/s | {:.0} | {:.0} | **{restore_ratio:.2}x** | >= 2x: {} |\n\
         | restore peak RSS | {:.0} MiB | {:.0} MiB | {:.2}x | |\n\
         | wal-push per 16 MiB segment, p50 | {:.0} ms | {:.0} ms | {:.2}x (lower is better) | < 100 ms: {} |\n\
         | wal-push per 16 MiB segment, p99 | {:.0} ms | {:.0} ms | {:.2}x (lower is better) | |\n\
         | archived under pgbench load, segments/s (written/s) | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.2}x | keeps up: {} |\n\
         | pgbench during the load, tps | {:.0} | {:.0} | {:.2}x | |\n\
         | archiver backlog when pgbench ended | {} | {} | | |\n\
         | PITR end to end (restore + recovery until promoted) | {:.1} s ({:.1} + {:.1}) | {:.1} s ({:.1} + {:.1}) | {:.2}x (lower is better) | |\n\
         | WAL replayed by that PITR | {} segments | {} segments | | |\n",
        ours.backup_mb_s,
        peer.backup_mb_s,
        verdict(backup_ratio >= 2.0),
        ours.backup_rss_mib,
        peer.backup_rss_mib,
        ours.backup_rss_mib / peer.backup_rss_mib,
        ours.stored as f64 / 1e6,
        peer.stored as f64 / 1e6,
        ours.stored as f64 / peer.stored as f64,
        ours.restore_mb_s,
        peer.restore_mb_s,
        verdict(restore_ratio >= 2.0),
        ours.restore_rss_mib,
        peer.restore_rss_mib,
        ours.restore_rss_mib / peer.restore_rss_mib,
        ours.push_p50,
        peer.push_p50,
        ours.push_p50 / peer.push_p50,
        verdict(ours.push_p50 < 100.0),
        ours.push_p99,
        peer.push_p99,
        ours.push_p99 / peer.push_p99,
        ours.load.archived_per_s(),
        ours.load.written_per_s(),
        peer.load.archived_per_s(),
        peer.load.written_per_s(),
        ours.load.archived_per_s() / peer.load.archived_per_s(),
        verdict(!ours.fell_behind),
        ours.load.tps,
        peer.load.tps,
        ours.load.tps / peer.load.tps,
        behind(ours),
        behind(peer),
        ours.pitr.seconds,
        ours.pitr.restore_seconds,
        ours.pitr.recovery_seconds,
        peer.pitr.seconds,
        peer.pitr.restore_seconds,
        peer.pitr.recovery_seconds,
        ours.pitr.seconds / peer.pitr.seconds,
        ours.pitr.replayed_segments,
        peer.pitr.replayed_segments,
    );
    format!(
        "{HEADING} ({})\n\n\
         Cluster: PostgreSQL 15, {data_note}, {:.2} GB without pg_wal; `fsync = off` on the server, both tools \
         sync their own writes. backupd: a `postgres` source, local repository (zstd-3, AES-256-GCM); pgBackRest: \
         the settings of `peer-pgbackrest.sh` (zstd-3, aes-256-cbc, process-max 2, local posix repository). Every \
         command runs as the `postgres` OS user, as archive_command does. Each round, for each tool in \
         alternating order, on a fresh copy of the data directory whose `archive_command` is that tool's: \
         {segments} complete 16 MiB segments (written by pgbench before) pushed one at a time with the archive \
         command (`backupctl wal-push PATH`, `pgbackrest archive-push PATH`, wall time per call); a full online \
         base backup (`backupctl backup pg`, `pgbackrest backup --type=full`; MB/s = data directory bytes / wall \
         time); pgbench -c {clients} for {load_s} s with the tool archiving (`pg_stat_archiver` before and \
         after, `.ready` files left when pgbench ended); then the server is stopped and the base backup restored \
         (`backupctl restore --source pg --target DIR`, `pgbackrest restore`; same numerator); finally a \
         point-in-time restore to a time after the load, timed until the server has promoted \
         (`backupctl restore --point-in-time T --start PORT`; `pgbackrest restore --type=time --target=T \
         --target-action=promote`, then the server started and polled until `pg_is_in_recovery()` is false), \
         checked against marker rows written before and after T. Warm page cache, repositories on the same \
         disk. Best of {rounds} rounds for MB/s and PITR, highest peak RSS of any round (summed over the tool's \
         processes, sampled every 50 ms), wal-push percentiles over all {pushes} pushes of all rounds, the load \
         round that archived fastest. Machine: {cores} cores, {cpu}, load average {load} at the start. \
         Generated by `cargo xtask bench-pg`.\n\n{table}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        ours.data_bytes as f64 / 1e9,
        segments = options.segments,
        clients = options.clients,
        load_s = options.load_seconds,
        pushes = ours.pushes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_count_segments() {
        assert_eq!(segment_index("000000010000000000000003"), Some(3));
        assert_eq!(segment_index("000000010000000100000000"), Some(256));
        assert_eq!(segment_index("0000000100000000000000FF"), Some(255));
        assert_eq!(segment_index("00000002.history"), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
