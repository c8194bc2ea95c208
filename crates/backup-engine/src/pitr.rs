//! `backupctl restore --source PG --point-in-time T --target DIR [--start --port N]`: restores
//! the newest base backup that ended before the target, configures PostgreSQL to replay the
//! archived WAL (through `backupctl wal-fetch`) up to the target, and optionally starts the
//! server and waits until recovery reached the target and it promoted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::PostgresBackupRecord;
use backup_sources::postgres::wal::Lsn;

use crate::config::{SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::restore::{BackupSelector, RestoreOptions};
use crate::{Engine, Progress};

/// Where recovery should stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay everything archived.
    Latest,
    /// Stop as soon as the base backup is consistent (its end): what a restore drill checks.
    Immediate,
    Time(DateTime<Utc>),
    Lsn(Lsn),
}

#[derive(Debug, Clone)]
pub struct PitrOptions {
    pub target: RecoveryTarget,
    /// `recovery_target_timeline` (default `latest`).
    pub timeline: Option<String>,
    /// Use this base backup instead of picking one.
    pub backup: Option<String>,
    /// Start the server on this port and wait for recovery to finish.
    pub start_port: Option<u16>,
    pub start_timeout: Duration,
    pub restore: RestoreOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct PitrOutcome {
    pub source: String,
    pub base_backup: String,
    pub base_backup_stop_time: DateTime<Utc>,
    pub target: String,
    pub data_directory: PathBuf,
    pub files: u64,
    pub bytes: u64,
    pub restore_seconds: f64,
    /// With `--start`: when the server finished recovery, what it reports.
    pub reached_lsn: Option<String>,
    pub reached_time: Option<String>,
    pub recovery_seconds: Option<f64>,
    pub server_log: Option<PathBuf>,
}

pub(crate) fn postgres_parts(source: &SourceConfig) -> Result<Option<&PathBuf>> {
    match &source.kind {
        SourceKindConfig::Postgres { pg_bin_dir, .. } => Ok(pg_bin_dir.as_ref()),
        other => Err(EngineError::Usage(format!(
            "--point-in-time needs a postgres source; {} is of kind {}",
            source.name,
            other.kind_name()
        ))),
    }
}

/// Picks the base backup for `target`, refusing targets outside what the archive covers.
fn pick_base(
    source: &str,
    bases: &[PostgresBackupRecord],
    newest_wal: Option<DateTime<Utc>>,
    target: &RecoveryTarget,
) -> Result<PostgresBackupRecord> {
    let oldest = bases.first().ok_or_else(|| {
        EngineError::Failed(format!(
            "source {source} has no complete base backup; run `backupctl backup {source}`"
        ))
    })?;
    let range = || {
        format!(
            "restorable range of {source}: {} to {}",
            oldest.stop_time.to_rfc3339(),
            newest_wal.map_or("(no WAL archived)".into(), |t| t.to_rfc3339())
        )
    };
    let chosen = match target {
        RecoveryTarget::Latest | RecoveryTarget::Immediate => bases.last(),
        RecoveryTarget::Time(t) => {
            if *t < oldest.stop_time {
                return Err(EngineError::Usage(format!(
                    "target time {} is before the oldest restorable point; {}",
                    t.to_rfc3339(),
                    range()
                )));
            }
            if newest_wal.is_none_or(|newest| *t > newest) {
                return Err(EngineError::Usage(format!(
                    "target time {} is after the newest archived WAL; {}",
                    t.to_rfc3339(),
                    range()
                )));
            }
            bases.iter().rev().find(|b| b.stop_time <= *t)
        }
        RecoveryTarget::Lsn(lsn) => {
            let stop = |b: &PostgresBackupRecord| b.stop_lsn.parse::<Lsn>().ok();
            bases
                .iter()
                .rev()
                .find(|b| stop(b).is_some_and(|s| s <= *lsn))
                // A stop LSN the catalog cannot parse: fall back on the oldest base.
                .or_else(|| stop(oldest).is_none().then_some(oldest))
        }
    };
    chosen.cloned().ok_or_else(|| {
        EngineError::Usage(format!(
            "no base backup ends before the target; {}",
            range()
        ))
    })
}

pub async fn run_pitr_restore(
    engine: &Engine,
    source: &SourceConfig,
    target_dir: &Path,
    options: &PitrOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<PitrOutcome> {
    let pg_bin_dir = postgres_parts(source)?.cloned();
    let bases = engine.catalog.postgres_backups(&source.name).await?;
    let wal = engine.catalog.wal_files(&source.name).await?;
    let newest_wal = wal.iter().map(|w| w.archived_at).max();
    let base = match &options.backup {
        Some(prefix) => {
            let record = engine.catalog.find_backup_by_prefix(prefix).await?;
            bases
                .iter()
                .find(|b| b.backup_id == record.id)
                .cloned()
                .ok_or_else(|| {
                    EngineError::Usage(format!(
                        "backup {} is not a complete base backup of {}",
                        record.id, source.name
                    ))
                })?
        }
        None => pick_base(&source.name, &bases, newest_wal, &options.target)?,
    };
    if target_dir.exists()
        && std::fs::read_dir(target_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(EngineError::Usage(format!(
            "{} exists and is not empty: restore a data directory into a new or empty directory",
            target_dir.display()
        )));
    }
    // Restore next to the target, then move the data directory into place.
    let parent = target_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| EngineError::Failed(format!("creating {}: {e}", parent.display())))?;
    let staging = parent.join(format!(
        ".{}.backupd-restore",
        target_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("pgdata")
    ));
    let _ = std::fs::remove_dir_all(&staging);
    let outcome = crate::restore::run_restore(
        engine,
        &BackupSelector::Id(base.backup_id.to_string()),
        &staging,
        &options.restore,
        progress,
        cancel,
    )
    .await?;
    if target_dir.exists() {
        std::fs::remove_dir(target_dir)
            .map_err(|e| EngineError::Failed(format!("replacing {}: {e}", target_dir.display())))?;
    }
    std::fs::rename(staging.join(crate::backup::PGDATA_LABEL), target_dir).map_err(|e| {
        EngineError::Failed(format!(
            "moving the restored data directory to {}: {e}",
            target_dir.display()
        ))
    })?;
    let _ = std::fs::remove_dir_all(&staging);
    write_recovery_settings(engine, source, target_dir, options)?;

    let mut result = PitrOutcome {
        source: source.name.clone(),
        base_backup: base.backup_id.to_string(),
        base_backup_stop_time: base.stop_time,
        target: describe(&options.target),
        data_directory: target_dir.to_path_buf(),
        files: outcome.files,
        bytes: outcome.bytes,
        restore_seconds: outcome.seconds,
        reached_lsn: None,
        reached_time: None,
        recovery_seconds: None,
        server_log: None,
    };
    if let Some(port) = options.start_port {
        start_and_wait(
            source,
            pg_bin_dir.as_deref(),
            target_dir,
            port,
            options.start_timeout,
            &mut result,
            cancel,
        )
        .await?;
    }
    Ok(result)
}

/// The backupctl that PostgreSQL's restore_command runs: this program when it is backupctl,
/// else the backupctl beside it (backupd runs drills), else the one on PATH.
fn backupctl_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| EngineError::Failed(format!("locating backupctl: {e}")))?;
    if exe.file_name().is_some_and(|n| n == "backupctl") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("backupctl");
    if beside.is_file() {
        return Ok(beside);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("backupctl"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            EngineError::Failed(format!(
                "restore_command needs backupctl, which is neither beside {} nor on PATH",
                exe.display()
            ))
        })
}

fn describe(target: &RecoveryTarget) -> String {
    match target {
        RecoveryTarget::Latest => "latest".into(),
        RecoveryTarget::Immediate => "immediate (end of the base backup)".into(),
        RecoveryTarget::Time(t) => t.to_rfc3339(),
        RecoveryTarget::Lsn(l) => format!("lsn {l}"),
    }
}

/// Shell-quotes for postgresql.conf values (single quotes doubled).
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

fn write_recovery_settings(
    engine: &Engine,
    source: &SourceConfig,
    data_dir: &Path,
    options: &PitrOptions,
) -> Result<()> {
    let exe = backupctl_exe()?;
    let config_arg = match std::fs::canonicalize(&engine.config.origin) {
        Ok(path) => format!(" --config {}", shell_quote(&path.display().to_string())),
        Err(_) => String::new(),
    };
    let restore_command = format!(
        "{}{config_arg} wal-fetch --source {} %f %p",
        shell_quote(&exe.display().to_string()),
        shell_quote(&source.name)
    );
    let mut settings = format!(
        "\n# Added by `backupctl restore` for point-in-time recovery.\nrestore_command = {}\n",
        conf_quote(&restore_command)
    );
    match &options.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Immediate => settings.push_str("recovery_target = 'immediate'\n"),
        RecoveryTarget::Time(t) => settings.push_str(&format!(
            "recovery_target_time = {}\n",
            conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        RecoveryTarget::Lsn(l) => settings.push_str(&format!(
            "recovery_target_lsn = {}\n",
            conf_quote(&l.to_string())
        )),
    }
    if options.target != RecoveryTarget::Latest {
        settings.push_str("recovery_target_action = 'promote'\n");
    }
    settings.push_str(&format!(
        "recovery_target_timeline = {}\n",
        conf_quote(options.timeline.as_deref().unwrap_or("latest"))
    ));
    let conf = data_dir.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&conf)
        .map_err(|e| EngineError::Failed(format!("writing {}: {e}", conf.display())))?;
    file.write_all(settings.as_bytes())
        .map_err(|e| EngineError::Failed(format!("writing {}: {e}", conf.display())))?;
    let signal = data_dir.join("recovery.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| EngineError::Failed(format!("writing {}: {e}", signal.display())))?;
    // Owned like the rest of the data directory, or the server refuses to start.
    let meta = std::fs::metadata(data_dir)
        .map_err(|e| EngineError::Failed(format!("{}: {e}", data_dir.display())))?;
    use std::os::unix::fs::MetadataExt;
    for path in [&conf, &signal] {
        let _ = std::os::unix::fs::chown(path, Some(meta.uid()), Some(meta.gid()));
    }
    std::fs::create_dir_all(data_dir.join("pg_wal"))
        .map_err(|e| EngineError::Failed(format!("creating pg_wal: {e}")))?;
    Ok(())
}

/// `pg_ctl`, run as the owner of `data_dir` when we are root (the server refuses to run as
/// root); returns the program's path too, for messages.
fn pg_ctl_command(pg_bin_dir: Option<&Path>, data_dir: &Path) -> Result<(PathBuf, Command)> {
    use std::os::unix::fs::MetadataExt;
    let pg_ctl = pg_bin_dir.map_or_else(|| PathBuf::from("pg_ctl"), |d| d.join("pg_ctl"));
    let owner = std::fs::metadata(data_dir)
        .map_err(|e| EngineError::Failed(format!("{}: {e}", data_dir.display())))?
        .uid();
    let command = if backup_sources::files::is_root() && owner != 0 {
        let user = user_name(owner).ok_or_else(|| {
            EngineError::Failed(format!(
                "no user with uid {owner} owns {}",
                data_dir.display()
            ))
        })?;
        let mut c = Command::new("runuser");
        c.args(["-u", &user, "--"]).arg(&pg_ctl);
        c
    } else {
        Command::new(&pg_ctl)
    };
    Ok((pg_ctl, command))
}

/// Stops a server started by [`start_and_wait`] (fast shutdown: a drill's scratch server has
/// nothing worth a checkpoint).
pub(crate) fn stop_server(pg_bin_dir: Option<&Path>, data_dir: &Path) -> Result<()> {
    let (pg_ctl, mut command) = pg_ctl_command(pg_bin_dir, data_dir)?;
    let out = command
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .map_err(|e| EngineError::Failed(format!("running {}: {e}", pg_ctl.display())))?;
    if !out.status.success() {
        return Err(EngineError::Failed(format!(
            "pg_ctl stop failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Starts the restored server (as the data directory's owner when run as root), waits until
/// it has finished recovery and promoted, and reads from its log where recovery stopped.
pub(crate) async fn start_and_wait(
    source: &SourceConfig,
    pg_bin_dir: Option<&Path>,
    data_dir: &Path,
    port: u16,
    timeout: Duration,
    result: &mut PitrOutcome,
    cancel: &CancellationToken,
) -> Result<()> {
    let (pg_ctl, mut command) = pg_ctl_command(pg_bin_dir, data_dir)?;
    let log = data_dir.with_extension("log");
    let socket_dir = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    command
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .arg("-o")
        .arg(format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {}",
            socket_dir.display()
        ))
        .args(["-w", "-t", &timeout.as_secs().to_string(), "start"]);
    let started = Instant::now();
    let out = command
        .output()
        .map_err(|e| EngineError::Failed(format!("running {}: {e}", pg_ctl.display())))?;
    result.server_log = Some(log.clone());
    if !out.status.success() {
        return Err(EngineError::Failed(format!(
            "pg_ctl start failed ({}): {}{}; server log {}:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display(),
            tail(&log, 20)
        )));
    }
    let user = connection_user(source);
    let url = format!("postgres://{user}@127.0.0.1:{port}/postgres");
    let deadline = started + timeout;
    loop {
        if cancel.is_cancelled() {
            return Err(EngineError::Failed(
                "interrupted while waiting for recovery".into(),
            ));
        }
        if let Ok(mut conn) = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await {
            let in_recovery: Option<bool> = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await
                .ok();
            if in_recovery == Some(false) {
                let lsn: Option<String> = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
                    .fetch_one(&mut conn)
                    .await
                    .ok();
                result.reached_lsn = lsn;
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(EngineError::Failed(format!(
                "recovery did not finish within {timeout:?}; server log {}:\n{}",
                log.display(),
                tail(&log, 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    result.recovery_seconds = Some(started.elapsed().as_secs_f64());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    result.reached_time = recovery_stop_time(&text);
    if let Some(lsn) = recovery_stop_lsn(&text) {
        result.reached_lsn = Some(lsn);
    }
    Ok(())
}

/// From the server log: the commit time recovery stopped at or last replayed.
fn recovery_stop_time(log: &str) -> Option<String> {
    for line in log.lines().rev() {
        for marker in [", time ", "last completed transaction was at log time "] {
            if line.contains("recovery stopping") || line.contains("last completed transaction") {
                if let Some((_, rest)) = line.split_once(marker) {
                    return Some(rest.trim().to_owned());
                }
            }
        }
    }
    None
}

/// From the server log: `redo done at X/Y`.
fn recovery_stop_lsn(log: &str) -> Option<String> {
    log.lines().rev().find_map(|line| {
        let rest = line.split_once("redo done at ")?.1;
        Some(rest.split_whitespace().next()?.to_owned())
    })
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(crate) fn connection_user(source: &SourceConfig) -> String {
    match &source.kind {
        SourceKindConfig::Postgres { connection, .. } => connection
            .split_once("://")
            .and_then(|(_, rest)| rest.split_once('@'))
            .map(|(user, _)| user.split(':').next().unwrap_or(user).to_owned())
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "postgres".into()),
        _ => "postgres".into(),
    }
}

/// The login name of `uid`, from /etc/passwd.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id: u32 = fields.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_tells_where_recovery_stopped() {
        let log = "2026-11-23 10:00:01 UTC [1] LOG:  redo starts at 0/2000028\n\
            2026-11-23 10:00:02 UTC [1] LOG:  recovery stopping before commit of transaction 745, time 2026-11-23 10:15:00.123456+00\n\
            2026-11-23 10:00:02 UTC [1] LOG:  redo done at 0/3000100 system usage: CPU\n";
        assert_eq!(
            recovery_stop_time(log).as_deref(),
            Some("2026-11-23 10:15:00.123456+00")
        );
        assert_eq!(recovery_stop_lsn(log).as_deref(), Some("0/3000100"));
    }

    #[test]
    fn targets_outside_the_archive_are_refused_with_the_range() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let base = |stop: &str| PostgresBackupRecord {
            backup_id: backup_core::BackupId::new(),
            start_lsn: "0/2000028".into(),
            stop_lsn: "0/2000100".into(),
            timeline: 1,
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            start_time: t(stop),
            stop_time: t(stop),
            parent_backup_id: None,
        };
        let bases = [base("2026-11-23T10:00:00Z"), base("2026-11-23T12:00:00Z")];
        let newest = Some(t("2026-11-23T13:00:00Z"));
        let early = pick_base(
            "pg",
            &bases,
            newest,
            &RecoveryTarget::Time(t("2026-11-23T09:00:00Z")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            early.contains("before the oldest") && early.contains("10:00:00"),
            "{early}"
        );
        let late = pick_base(
            "pg",
            &bases,
            newest,
            &RecoveryTarget::Time(t("2026-11-23T14:00:00Z")),
        )
        .unwrap_err()
        .to_string();
        assert!(
            late.contains("after the newest") && late.contains("13:00:00"),
            "{late}"
        );
        let mid = pick_base(
            "pg",
            &bases,
            newest,
            &RecoveryTarget::Time(t("2026-11-23T11:00:00Z")),
        )
        .unwrap();
        assert_eq!(mid.backup_id, bases[0].backup_id);
        let last = pick_base(
            "pg",
            &bases,
            newest,
            &RecoveryTarget::Time(t("2026-11-23T12:30:00Z")),
        )
        .unwrap();
        assert_eq!(last.backup_id, bases[1].backup_id);
        assert!(pick_base("pg", &[], newest, &RecoveryTarget::Latest).is_err());
    }
}
