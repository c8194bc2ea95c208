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
    work.write_config(&pg_config(
        &work,
        &cluster.url("postgres"),
        cluster.data_dir(),
    ));
    cluster.start();
    work.init();
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
    let config = pg_config(&work, &cluster.url("postgres"), cluster.data_dir());
    work.write_config(&config);
    cluster.start();
    work.init();
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
