//! PostgreSQL sources: `wal-push` / `wal-fetch` as archive_command and restore_command, online
//! base backups, and point-in-time restore on real PostgreSQL 15 clusters started by the tests.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use backup_testing::postgres::{PgCluster, PgClusterOptions, PgbenchLength};

use crate::support::*;

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A config with absolute paths: archive_command runs with the data directory as its cwd.
fn pg_config(work: &Work, connection: &str, data_dir: &Path) -> String {
    let root = work.root().display();
    format!(
        r#"[catalog]
url = "sqlite://{root}/var/catalog.db"
[encryption]
key-file = "{root}/var/keys/repo.key"
[[repository]]
name = "region-a"
kind = "local"
path = "{root}/var/repo"
[[source]]
name = "pg"
kind = "postgres"
connection = "{connection}"
data-directory = "{}"
pg-bin-dir = "{PG_BIN}"
repository = "region-a"
"#,
        data_dir.display()
    )
}

/// A work dir whose backupctl runs as the user PostgreSQL runs as, so the archive_command
/// (run by the server) and the test share one catalog and repository.
fn pg_work() -> Work {
    let mut work = Work::new();
    work.run_as(PgCluster::os_user());
    work
}

/// A started cluster whose archive_command is `backupctl wal-push` into an initialised work
/// dir (config with absolute paths, backupctl running as the server's user).
fn archiving_cluster() -> (Work, PgCluster) {
    archiving_cluster_with("")
}

/// [`archiving_cluster`] with more lines appended to the config (e.g. a `[source.drill]`).
pub(crate) fn archiving_cluster_with(config_extra: &str) -> (Work, PgCluster) {
    let work = pg_work();
    let exe = work.path("bin/backupctl");
    let mut cluster = PgCluster::init(PgClusterOptions {
        archive_command: Some(format!(
            "{} --config {} wal-push %p",
            exe.display(),
            work.config.display()
        )),
        ..PgClusterOptions::default()
    });
    let mut config = pg_config(&work, &cluster.url("postgres"), cluster.data_dir());
    config.push_str(config_extra);
    work.write_config(&config);
    cluster.start();
    work.init();
    (work, cluster)
}

fn wal_segment(dir: &Path, name: &str, seed: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    write_file(&path, &mixed_bytes(16 << 20, seed), 0o644);
    path
}

#[test]
fn wal_push_is_idempotent_refuses_different_content_and_wal_fetch_restores_it() {
    let work = pg_work();
    work.write_config(&pg_config(
        &work,
        "postgres://postgres@127.0.0.1:1/postgres",
        &work.data(),
    ));
    work.init();
    let spool = work.path("pg_wal");
    fs::create_dir_all(&spool).unwrap();
    set_mode(&spool, 0o777);
    let name = "000000010000000000000003";
    let segment = wal_segment(&spool, name, 1);
    let segment_arg = segment.to_str().unwrap();

    work.ok(&["wal-push", segment_arg]);
    // PostgreSQL retries a push after a crash: the same content again is a success.
    work.ok(&["wal-push", segment_arg]);
    let stored = files_below(&work.path("var/repo/wal/pg"));
    assert_eq!(stored.len(), 1, "{stored:?}");

    // Different content under an archived name is refused, loudly.
    write_file(&segment, &mixed_bytes(16 << 20, 2), 0o644);
    work.run(&["wal-push", segment_arg])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&[name, "different content"]);
    write_file(&segment, &mixed_bytes(16 << 20, 1), 0o644);

    let fetched = work.path("pg_wal/RECOVERYXLOG");
    work.ok(&["wal-fetch", name, fetched.to_str().unwrap()]);
    assert_eq!(fs::read(&fetched).unwrap(), mixed_bytes(16 << 20, 1));
    // A file that was never archived: exit 1, which restore_command must return.
    work.run(&[
        "wal-fetch",
        "000000010000000000000009",
        fetched.to_str().unwrap(),
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["not archived"]);
    // Names are checked before they become object keys or paths.
    work.run(&["wal-fetch", "../../etc/passwd", fetched.to_str().unwrap()])
        .expect_code(EXIT_USAGE);
    // A gap in the archive is named, with its timeline.
    work.ok(&["check", "pg"]).expect_mentions(&["continuous"]);
    for (seg, seed) in [
        ("000000010000000000000004", 5),
        ("000000010000000000000006", 6),
    ] {
        work.ok(&["wal-push", wal_segment(&spool, seg, seed).to_str().unwrap()]);
    }
    let gap = work.run(&["check", "pg", "--json"]);
    gap.expect_code(EXIT_FAILED);
    let report = gap.json();
    assert_eq!(
        report["missing"][0]["file_name"],
        "000000010000000000000005"
    );
    assert_eq!(report["missing"][0]["timeline"], 1);
    work.run(&["check", "pg"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["missing WAL segment 000000010000000000000005 (timeline 1)"]);

    let history = wal_segment(&spool, "00000002.history", 3);
    work.ok(&["wal-push", history.to_str().unwrap()]);
    let bogus = wal_segment(&spool, "00000001000000000000000g", 4);
    work.run(&["wal-push", bogus.to_str().unwrap()])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["00000001000000000000000g"]);

    // A damaged archived object is an integrity failure, and nothing partial is left.
    let object = work.path(&format!("var/repo/wal/pg/{name}.bkpd"));
    let mut bytes = fs::read(&object).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&object, bytes).unwrap();
    let again = work.path("pg_wal/RECOVERYXLOG2");
    work.run(&["wal-fetch", name, again.to_str().unwrap()])
        .expect_code(EXIT_INTEGRITY);
    assert!(!again.exists());
    let leftovers: Vec<_> = fs::read_dir(&spool)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("backupd-partial"))
        .collect();
    assert!(leftovers.is_empty());
}

/// Stops a server started by `restore --start` when the test ends, however it ends.
struct StopOnDrop(std::path::PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let mut stop = if PgCluster::os_user() == "postgres" && is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c.arg(format!("{PG_BIN}/pg_ctl"));
            c
        } else {
            Command::new(format!("{PG_BIN}/pg_ctl"))
        };
        let _ = stop
            .arg("-D")
            .arg(&self.0)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn psql_at(port: u16, sql: &str) -> String {
    let out = Command::new("/usr/bin/psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
        ])
        .arg(port.to_string())
        .args(["-d", "postgres", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn point_in_time_restore_recovers_exactly_to_the_target() {
    let (work, cluster) = archiving_cluster();
    cluster.pgbench_init(1);

    let out = work.ok(&["backup", "pg"]);
    let base = out.stdout.trim().to_owned();
    cluster.psql("CREATE TABLE marker (note text); INSERT INTO marker VALUES ('kept')");
    cluster.pgbench_run(2, PgbenchLength::Transactions(100));
    let history_at_target = cluster.psql("SELECT count(*) FROM pgbench_history");
    let balance_at_target = cluster.psql("SELECT sum(abalance) FROM pgbench_accounts");
    std::thread::sleep(Duration::from_millis(1100));
    let target = cluster.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    // After the target: more writes, and the table is dropped. (Not pgbench: it truncates
    // pgbench_history when it starts.)
    cluster.psql(
        "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= 5000; \
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         SELECT 1, 1, g, 7, now() FROM generate_series(1, 500) g; DROP TABLE marker",
    );
    let last = cluster.switch_wal();
    cluster.wait_archived(&last, Duration::from_secs(60));
    assert_ne!(
        cluster.psql("SELECT count(*) FROM pgbench_history"),
        history_at_target
    );
    assert_ne!(
        cluster.psql("SELECT sum(abalance) FROM pgbench_accounts"),
        balance_at_target
    );

    // Outside the archive: refused with the valid range.
    let restored = work.path("restored");
    work.run(&[
        "restore",
        "--source",
        "pg",
        "--point-in-time",
        "2001-01-01 00:00:00+00",
        "--target",
        restored.to_str().unwrap(),
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["before the oldest restorable point", "restorable range"]);

    let port = backup_testing::postgres::free_port();
    let _stop = StopOnDrop(restored.clone());
    let out = work.ok(&[
        "restore",
        "--source",
        "pg",
        "--point-in-time",
        &target,
        "--target",
        restored.to_str().unwrap(),
        "--start",
        &port.to_string(),
        "--json",
    ]);
    let outcome = out.json();
    assert_eq!(outcome["base_backup"], base.as_str(), "{}", out.dump());
    assert!(outcome["reached_lsn"].is_string(), "{}", out.dump());
    assert_eq!(
        psql_at(port, "SELECT count(*) FROM pgbench_history"),
        history_at_target
    );
    assert_eq!(
        psql_at(port, "SELECT sum(abalance) FROM pgbench_accounts"),
        balance_at_target
    );
    assert_eq!(psql_at(port, "SELECT note FROM marker"), "kept");
    assert_eq!(psql_at(port, "SELECT pg_is_in_recovery()"), "f");
    work.ok(&["check", "pg"]).expect_mentions(&["continuous"]);

    // The restored server promoted to timeline 2 and archives into the same source. Restore
    // again, to a point on timeline 2: recovery follows the archived history file.
    assert_eq!(
        psql_at(port, "SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    psql_at(
        port,
        "CREATE TABLE after_switch AS SELECT generate_series(1, 321) AS n",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second_target = psql_at(
        port,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
    );
    std::thread::sleep(Duration::from_millis(1100));
    psql_at(
        port,
        "INSERT INTO after_switch SELECT generate_series(1, 1000)",
    );
    let switched = psql_at(port, "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while psql_at(
        port,
        "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    ) < switched
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{switched} not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let again = work.path("restored-again");
    let port2 = backup_testing::postgres::free_port();
    let _stop2 = StopOnDrop(again.clone());
    work.ok(&[
        "restore",
        "--source",
        "pg",
        "--point-in-time",
        &second_target,
        "--target",
        again.to_str().unwrap(),
        "--start",
        &port2.to_string(),
    ]);
    assert_eq!(psql_at(port2, "SELECT count(*) FROM after_switch"), "321");
    assert_eq!(psql_at(port2, "SELECT note FROM marker"), "kept");
    assert_eq!(
        psql_at(port2, "SELECT count(*) FROM pgbench_history"),
        history_at_target
    );
}

#[test]
fn expiring_a_base_backup_expires_only_the_wal_it_alone_needed() {
    let (work, cluster) = archiving_cluster();
    let config = pg_config(&work, &cluster.url("postgres"), cluster.data_dir());
    cluster.pgbench_init(1);
    let first = work.ok(&["backup", "pg"]).stdout.trim().to_owned();
    cluster.pgbench_run(2, PgbenchLength::Transactions(50));
    for _ in 0..3 {
        cluster.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 1)");
        let name = cluster.switch_wal();
        cluster.wait_archived(&name, Duration::from_secs(60));
    }
    let second = work.ok(&["backup", "pg"]).stdout.trim().to_owned();
    cluster.psql("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (2, 2, 2, 424242)");
    let name = cluster.switch_wal();
    cluster.wait_archived(&name, Duration::from_secs(60));
    let wal_before = files_below(&work.path("var/repo/wal/pg")).len();

    work.write_config(&format!("{config}keep = {{ last = 1 }}\n"));
    let plan = work.ok(&["prune", "--dry-run", "--json"]).json();
    let expiring = plan["sources"][0]["wal_files_expired"].as_u64().unwrap();
    assert!(expiring >= 3, "{plan:#}");
    assert_eq!(files_below(&work.path("var/repo/wal/pg")).len(), wal_before);
    work.ok(&["prune"])
        .expect_mentions(&["archived WAL files no kept base backup needs deleted"]);
    assert_eq!(work.listed(&first), None, "the older base backup is gone");
    assert_eq!(
        files_below(&work.path("var/repo/wal/pg")).len(),
        wal_before - expiring as usize
    );
    // What is left still replays from the kept base backup to the end.
    work.ok(&["check", "pg"]).expect_mentions(&["continuous"]);
    let restored = work.path("restored");
    let port = backup_testing::postgres::free_port();
    let _stop = StopOnDrop(restored.clone());
    let out = work.ok(&[
        "restore",
        "--source",
        "pg",
        "--target",
        restored.to_str().unwrap(),
        "--start",
        &port.to_string(),
        "--json",
    ]);
    assert_eq!(out.json()["base_backup"], second.as_str());
    assert_eq!(
        psql_at(
            port,
            "SELECT count(*) FROM pgbench_history WHERE delta = 424242"
        ),
        "1"
    );
}

#[test]
fn an_incremental_chain_restores_the_same_database_as_a_full_backup() {
    let (work, cluster) = archiving_cluster();
    cluster.pgbench_init(2);
    cluster.psql("CREATE TABLE doomed AS SELECT generate_series(1, 50000) AS n");
    let doomed_file = cluster.psql("SELECT pg_relation_filepath('doomed')");
    assert!(cluster.data_dir().join(&doomed_file).exists());

    let full = work.ok(&["backup", "pg"]).stdout.trim().to_owned();
    cluster.pgbench_run(2, PgbenchLength::Transactions(100));
    cluster.psql("CREATE TABLE added AS SELECT generate_series(1, 1000) AS n; DROP TABLE doomed");
    cluster.psql("CHECKPOINT");
    let incr1 = work
        .ok(&["backup", "pg", "--type", "incr"])
        .stdout
        .trim()
        .to_owned();
    cluster.psql("INSERT INTO added SELECT generate_series(1, 500)");
    let incr2 = work
        .ok(&["backup", "pg", "--type", "incr"])
        .stdout
        .trim()
        .to_owned();
    let full2 = work
        .ok(&["backup", "pg", "--type", "full"])
        .stdout
        .trim()
        .to_owned();
    let last = cluster.switch_wal();
    cluster.wait_archived(&last, Duration::from_secs(60));

    // Incrementals store only what changed.
    let stored = |id: &str| work.listed(id).unwrap()["stored_bytes"].as_u64().unwrap();
    assert_eq!(work.listed(&incr1).unwrap()["backup_type"], "incr");
    assert!(
        stored(&incr1) * 2 < stored(&full) && stored(&incr2) * 2 < stored(&full2),
        "full {} incr1 {} incr2 {} full2 {}",
        stored(&full),
        stored(&incr1),
        stored(&incr2),
        stored(&full2)
    );

    let queries = [
        "SELECT count(*) FROM added",
        "SELECT sum(abalance) FROM pgbench_accounts",
        "SELECT count(*) FROM pgbench_history",
        "SELECT count(*) FROM pg_class WHERE relname = 'doomed'",
    ];
    let expected: Vec<String> = queries.iter().map(|q| cluster.psql(q)).collect();
    let mut results = Vec::new();
    for (id, dir) in [(&incr2, "from-incr"), (&full2, "from-full")] {
        let restored = work.path(dir);
        let port = backup_testing::postgres::free_port();
        let stop = StopOnDrop(restored.clone());
        let out = work.ok(&[
            "restore",
            id,
            "--target",
            restored.to_str().unwrap(),
            "--start",
            &port.to_string(),
            "--json",
        ]);
        assert_eq!(out.json()["base_backup"], id.as_str(), "{}", out.dump());
        // The dropped table's file is gone from the restored chain, not left behind.
        assert!(
            !restored.join(&doomed_file).exists(),
            "{doomed_file} came back"
        );
        results.push(queries.iter().map(|q| psql_at(port, q)).collect::<Vec<_>>());
        drop(stop);
    }
    assert_eq!(results[0], expected, "incremental chain");
    assert_eq!(results[1], expected, "full backup");

    // The repository alone is enough: a rebuilt catalog knows the chain, its WAL positions
    // and the archived WAL, and restores the same database again.
    for f in ["catalog.db", "catalog.db-wal", "catalog.db-shm"] {
        let _ = fs::remove_file(work.path(&format!("var/{f}")));
    }
    let rebuilt = work.ok(&["catalog", "rebuild", "--json"]).json();
    assert!(
        rebuilt["wal_files_imported"].as_u64().unwrap() > 0,
        "{rebuilt:#}"
    );
    assert_eq!(work.listed(&incr2).unwrap()["backup_type"], "incr");
    work.ok(&["check", "pg"]).expect_mentions(&["continuous"]);
    let restored = work.path("after-rebuild");
    let port = backup_testing::postgres::free_port();
    let _stop = StopOnDrop(restored.clone());
    work.ok(&[
        "restore",
        &incr2,
        "--target",
        restored.to_str().unwrap(),
        "--start",
        &port.to_string(),
    ]);
    let again: Vec<String> = queries.iter().map(|q| psql_at(port, q)).collect();
    assert_eq!(again, expected, "after catalog rebuild");
}

// ---- wal-push / wal-fetch killed mid-write -------------------------------------------------

/// The name of a 1 GiB segment: with 1 GiB segments there are 4 per xlogid, so 1 is valid.
const BIG_SEGMENT: &str = "000000010000000000000001";

/// A work dir (backupctl as the PostgreSQL user) whose source has 1 GiB WAL segments, the
/// largest PostgreSQL allows, so pushing or fetching one takes long enough to be killed.
/// Returns it with its spool directory (PostgreSQL's pg_wal, writable by that user).
fn big_segment_work() -> (Work, std::path::PathBuf) {
    let work = pg_work();
    let config = pg_config(
        &work,
        "postgres://postgres@127.0.0.1:1/postgres",
        &work.data(),
    );
    // The [[source]] table comes last.
    work.write_config(&format!("{config}wal-segment-size-mib = 1024\n"));
    work.init();
    let spool = work.path("pg_wal");
    fs::create_dir_all(&spool).unwrap();
    set_mode(&spool, 0o777);
    (work, spool)
}

/// Writes `mib` MiB to `path` a MiB at a time (random, text and zeros, all written out, no
/// holes; fresh random bytes in every MiB, so it neither compresses nor deduplicates away)
/// and returns the SHA-256 of what it wrote.
fn write_big_wal_segment(path: &Path, mib: u64, seed: u64) -> String {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut out = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut hasher = Sha256::new();
    for i in 0..mib {
        let block = mixed_bytes(1 << 20, (seed << 32) | i);
        hasher.update(&block);
        out.write_all(&block).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    set_mode(path, 0o644);
    hex(&hasher.finalize())
}

/// SHA-256 of a (big) file, read in pieces.
fn sha256_of_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex(&hasher.finalize())
}

/// The in-progress upload (`.<file>.tmp-<uuid>`, already holding data) in `dir`, if any.
fn in_progress_temp_file(dir: &Path) -> Option<String> {
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        let started = entry.metadata().is_ok_and(|m| m.len() > 0);
        (name.starts_with('.') && name.contains(".tmp-") && started).then_some(name)
    })
}

/// (parent pid, command name) of a process, from /proc.
fn proc_parent_and_name(pid: u32) -> Option<(u32, String)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((ppid, name))
}

fn sigkill(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid}: {status}");
}

/// A `backupctl` started in the background through [`Work::command`]. When run as another
/// user the child is `runuser` and backupctl is its child: killing the child alone would
/// leave backupctl running, so this finds and kills backupctl itself. Dropping it kills
/// both, so a failing test leaves no process behind.
struct Running {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl Running {
    fn start(work: &Work, args: &[&str], label: &str) -> Running {
        let stderr = work.path(&format!("{label}.stderr"));
        let mut cmd = work.command(args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting backupctl {args:?}: {e}"));
        Running { child, stderr }
    }

    /// The pid of backupctl itself: the child, or the child's child under `runuser`.
    fn backupctl_pid(&self) -> Option<u32> {
        let child = self.child.id();
        if proc_parent_and_name(child)?.1 == "backupctl" {
            return Some(child);
        }
        fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|&pid| {
                proc_parent_and_name(pid)
                    .is_some_and(|(ppid, name)| ppid == child && name == "backupctl")
            })
    }

    /// Polls `ready` until it yields; panics if backupctl ends first or it takes a minute.
    fn wait_for<T>(&mut self, what: &str, mut ready: impl FnMut() -> Option<T>) -> T {
        let started = std::time::Instant::now();
        loop {
            if let Some(found) = ready() {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "backupctl ended ({status}) before {what} appeared; make the file bigger\n{}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no {what} within a minute"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILLs backupctl and waits until it (and any runuser around it) is gone.
    fn kill_backupctl(&mut self) {
        let pid = self
            .backupctl_pid()
            .expect("backupctl should still be running");
        sigkill(pid);
        let status = self.child.wait().unwrap();
        assert!(
            !status.success(),
            "backupctl was killed, yet {status}\n{}",
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "backupctl ({pid}) survived SIGKILL"
        );
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.backupctl_pid() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn wal_push_killed_mid_write_leaves_nothing_visible_and_the_retry_succeeds() {
    let (work, spool) = big_segment_work();
    let name = BIG_SEGMENT;
    let segment = spool.join(name);
    let sha = write_big_wal_segment(&segment, 1024, 7);
    let segment_arg = segment.to_str().unwrap();
    let wal_dir = work.path("var/repo/wal/pg");
    let object = wal_dir.join(format!("{name}.bkpd"));
    let fetched = spool.join("RECOVERYXLOG");
    let fetched_arg = fetched.to_str().unwrap();

    let mut push = Running::start(&work, &["wal-push", segment_arg], "killed-push");
    let temp = push.wait_for("an upload under var/repo/wal/pg", || {
        in_progress_temp_file(&wal_dir)
    });
    push.kill_backupctl();
    assert!(
        wal_dir.join(&temp).exists(),
        "{temp} should be left behind by the kill"
    );

    // Nothing is visible: no object under the name (only the dot-file listings skip), no
    // catalog record, nothing for restore_command, nothing counted by check.
    assert!(!object.exists(), "a killed push published {name}");
    assert_eq!(files_below(&wal_dir), vec![temp.clone()]);
    work.run(&["wal-fetch", name, fetched_arg])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["not archived"]);
    assert!(!fetched.exists());
    let check = work.run(&["check", "pg", "--json"]);
    check.expect_code(EXIT_FAILED);
    let report = check.json();
    assert_eq!(report["files_archived"], 0, "{report:#}");
    assert!(report["to"].is_null(), "{report:#}");

    // PostgreSQL retries the archive_command: the retry stores and records the segment.
    work.ok(&["wal-push", segment_arg]);
    assert!(object.is_file());
    let report = work.ok(&["check", "pg", "--json"]).json();
    assert_eq!(report["files_archived"], 1, "{report:#}");
    assert_eq!(report["to"], name, "{report:#}");

    // gc sweeps the whole repository: the killed push's temp file goes, the object stays.
    let gc = work.ok(&["gc", "--grace", "0s", "--json"]).json();
    assert_eq!(gc["temp_files_removed"], 1, "{gc:#}");
    assert_eq!(files_below(&wal_dir), vec![format!("{name}.bkpd")]);

    work.ok(&["wal-fetch", name, fetched_arg]);
    assert!(
        sha256_of_file(&fetched) == sha,
        "wal-fetch returned other bytes than were pushed"
    );
    fs::remove_file(&fetched).unwrap();
    fs::remove_file(&segment).unwrap();
}

#[test]
fn a_push_that_died_after_storing_is_adopted_by_the_retry() {
    use std::os::unix::fs::MetadataExt;
    let work = pg_work();
    let config = pg_config(
        &work,
        "postgres://postgres@127.0.0.1:1/postgres",
        &work.data(),
    );
    work.write_config(&config);
    work.init();
    let spool = work.path("pg_wal");
    fs::create_dir_all(&spool).unwrap();
    set_mode(&spool, 0o777);
    let (a, b) = ("000000010000000000000001", "000000010000000000000002");
    let segment_a = wal_segment(&spool, a, 11);
    let segment_b = wal_segment(&spool, b, 12);
    let (arg_a, arg_b) = (segment_a.to_str().unwrap(), segment_b.to_str().unwrap());
    let wal_dir = work.path("var/repo/wal/pg");
    let (object_a, object_b) = (
        wal_dir.join(format!("{a}.bkpd")),
        wal_dir.join(format!("{b}.bkpd")),
    );
    let both = vec![format!("{a}.bkpd"), format!("{b}.bkpd")];
    let fetched = spool.join("RECOVERYXLOG");
    let fetched_arg = fetched.to_str().unwrap();
    work.ok(&["wal-push", arg_a]);

    // An object for B that decrypts to A's content (e.g. a second cluster archiving into
    // this source): a retry must refuse it, not adopt it.
    fs::copy(&object_a, &object_b).unwrap();
    let owner = fs::metadata(&object_a).unwrap();
    std::os::unix::fs::chown(&object_b, Some(owner.uid()), Some(owner.gid())).unwrap();
    work.run(&["wal-push", arg_b])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&[&format!("wal/pg/{b}.bkpd"), "different content"]);
    assert!(
        fs::read(&object_b).unwrap() == fs::read(&object_a).unwrap(),
        "the refused push changed the object"
    );
    assert_eq!(files_below(&wal_dir), both, "the refused push left a file");
    work.run(&["wal-fetch", b, fetched_arg])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["not archived"]);

    // An object for B holding exactly B, not in the catalog: what a push that died between
    // storing and recording leaves. Made by pushing B through a second catalog that shares
    // the repository and the key.
    fs::remove_file(&object_b).unwrap();
    work.write_config(&config.replace("/var/catalog.db", "/var/other-catalog.db"));
    work.init();
    work.ok(&["wal-push", arg_b]);
    work.write_config(&config);
    let stored = fs::read(&object_b).unwrap();
    work.run(&["wal-fetch", b, fetched_arg])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["not archived"]);

    work.ok(&["wal-push", arg_b]);
    assert!(
        fs::read(&object_b).unwrap() == stored,
        "the retry must adopt the stored object, not replace it"
    );
    assert_eq!(files_below(&wal_dir), both);
    work.ok(&["wal-fetch", b, fetched_arg]);
    assert!(
        sha256_of_file(&fetched) == sha256_of_file(&segment_b),
        "wal-fetch of the adopted object returned other bytes than B"
    );
    // Recorded now: pushing B again is an ordinary already-archived success.
    work.ok(&["wal-push", arg_b]);
    let report = work.ok(&["check", "pg", "--json"]).json();
    assert_eq!(report["files_archived"], 2, "{report:#}");
    assert_eq!(report["to"], b, "{report:#}");
}

#[test]
fn wal_fetch_killed_mid_write_leaves_no_partial_file_under_the_requested_name() {
    let (work, spool) = big_segment_work();
    let name = BIG_SEGMENT;
    let segment = spool.join(name);
    let sha = write_big_wal_segment(&segment, 1024, 8);
    work.ok(&["wal-push", segment.to_str().unwrap()]);
    fs::remove_file(&segment).unwrap();

    let dest = spool.join("RECOVERYXLOG");
    let dest_arg = dest.to_str().unwrap();
    let partial = spool.join(".RECOVERYXLOG.backupd-partial");
    let mut fetch = Running::start(&work, &["wal-fetch", name, dest_arg], "killed-fetch");
    fetch.wait_for("a partial file being written", || {
        fs::metadata(&partial).ok().filter(|m| m.len() > 0)
    });
    fetch.kill_backupctl();
    assert!(
        partial.exists(),
        "killed mid-write, the partial file should still be there"
    );
    assert!(
        !dest.exists(),
        "PostgreSQL must never find a partial WAL file under the name it asked for"
    );

    work.ok(&["wal-fetch", name, dest_arg]);
    assert!(
        sha256_of_file(&dest) == sha,
        "wal-fetch returned other bytes than were pushed"
    );
    assert!(
        !partial.exists(),
        "the retry writes the same partial file and renames it into place"
    );
    fs::remove_file(&dest).unwrap();
}

#[test]
fn a_key_rotation_keeps_the_old_key_while_archived_wal_is_sealed_under_it() {
    let (work, cluster) = archiving_cluster();
    cluster.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");
    let first = cluster.switch_wal();
    cluster.wait_archived(&first, Duration::from_secs(60));
    work.ok(&["backup", "pg"]);
    let listed = work.ok(&["key", "list", "--json"]).json();
    let old_key = listed["active"].as_str().unwrap().to_owned();
    assert!(
        listed["keys"][0]["wal_files"].as_u64().unwrap() >= 1,
        "{listed:#}"
    );

    work.ok(&["key", "add"]);
    cluster.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let second = cluster.switch_wal();
    cluster.wait_archived(&second, Duration::from_secs(60));
    let rotated = work.ok(&["key", "rotate", "--json"]).json();
    assert_eq!(rotated["rewrapped"], 1, "{rotated:#}");
    assert!(
        rotated["retired"].as_array().unwrap().is_empty(),
        "{rotated:#}"
    );
    let kept = rotated["kept"][0].as_str().unwrap();
    assert!(
        kept.contains(&old_key) && kept.contains("WAL"),
        "{rotated:#}"
    );
    let keys = rotated["keys"].as_array().unwrap();
    assert!(
        keys[0]["wal_files"].as_u64().unwrap() >= 1,
        "new WAL is sealed under the new key: {rotated:#}"
    );
    assert!(keys[1]["wal_files"].as_u64().unwrap() >= 1, "{rotated:#}");
    // Both generations of WAL still fetch.
    for name in [&first, &second] {
        let to = work.path(&format!("fetched-{name}"));
        work.ok(&["wal-fetch", name, to.to_str().unwrap()]);
    }
}
