//! The PostgreSQL cluster harness against real PostgreSQL 15 servers.

use std::process::Command;
use std::time::Duration;

use backup_testing::postgres::{free_port, PgCluster, PgClusterOptions, PgbenchLength};

#[test]
fn init_start_psql_restart_stop() {
    let mut pg = PgCluster::init(PgClusterOptions {
        data_checksums: true,
        ..PgClusterOptions::default()
    });
    assert!(!pg.is_running());
    pg.start();
    assert!(pg.is_running());
    assert_eq!(
        pg.url("postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port())
    );
    assert_eq!(pg.psql("SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("SHOW data_checksums"), "on");
    assert_eq!(pg.psql("SHOW wal_level"), "replica");
    assert_eq!(pg.psql("SHOW fsync"), "off");
    pg.psql("CREATE TABLE t (id int, name text); INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    assert_eq!(pg.psql("SELECT id, name FROM t ORDER BY id"), "1|a\n2|b");
    let err = pg.try_psql("SELECT * FROM missing").unwrap_err();
    assert!(err.contains("relation \"missing\" does not exist"), "{err}");

    pg.restart();
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "2");
    pg.stop();
    assert!(!pg.is_running());
    assert!(pg.log_tail(5).contains("database system is shut down"));
}

#[test]
fn archive_command_receives_switched_segment() {
    let archive = PgCluster::scratch_dir("archive");
    let mut pg = PgCluster::init(PgClusterOptions {
        archive_command: Some(format!("cp %p {}/%f", archive.path().display())),
        max_wal_size_mb: Some(64),
        ..PgClusterOptions::default()
    });
    pg.start();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    let segment = pg.switch_wal();
    assert_eq!(segment.len(), 24, "{segment}");
    pg.wait_archived(&segment, Duration::from_secs(30));
    assert!(
        archive.path().join(&segment).is_file(),
        "{segment} not in the archive"
    );
    pg.wait_for(
        "SELECT failed_count FROM pg_stat_archiver",
        "0",
        Duration::from_secs(1),
    );
}

#[test]
fn archive_command_runs_an_accessible_copy_of_a_binary() {
    // As root this test binary lives under /root (cargo's target dir), closed to `postgres`.
    let dir = PgCluster::scratch_dir("bin");
    let binary = PgCluster::accessible_binary(&std::env::current_exe().expect("exe"), dir.path());
    let archive = PgCluster::scratch_dir("archive");
    let mut pg = PgCluster::init(PgClusterOptions {
        archive_command: Some(format!(
            "{} --list >/dev/null && cp %p {}/%f",
            binary.display(),
            archive.path().display()
        )),
        ..PgClusterOptions::default()
    });
    pg.start();
    pg.psql("CREATE TABLE t (x int)");
    let segment = pg.switch_wal();
    pg.wait_archived(&segment, Duration::from_secs(30));
    assert!(archive.path().join(&segment).is_file());
}

#[test]
#[should_panic(expected = "was not archived")]
fn failing_archive_command_is_reported() {
    let mut pg = PgCluster::init(PgClusterOptions {
        archive_command: Some("false".to_string()),
        ..PgClusterOptions::default()
    });
    pg.start();
    pg.psql("CREATE TABLE t (x int)");
    let segment = pg.switch_wal();
    pg.wait_archived(&segment, Duration::from_secs(1));
}

#[test]
fn pgbench_creates_and_runs_its_workload() {
    let mut pg = PgCluster::init(PgClusterOptions::default());
    pg.start();
    pg.pgbench_init(1);
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_accounts"), "100000");
    let report = pg.pgbench_run(2, PgbenchLength::Transactions(50));
    assert!(
        report.contains("number of transactions actually processed: 100/100"),
        "{report}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM pgbench_history"), "100");
}

#[test]
fn kill9_then_start_recovers() {
    let mut pg = PgCluster::init(PgClusterOptions::default());
    pg.start();
    pg.psql("CREATE TABLE t (x int); INSERT INTO t SELECT generate_series(1, 500)");
    pg.kill9();
    assert!(!pg.is_running());
    assert!(pg.try_psql("SELECT 1").is_err());
    pg.start();
    assert!(
        pg.log_tail(20).contains("not properly shut down"),
        "{}",
        pg.log_tail(20)
    );
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "500");
}

#[test]
fn start_existing_runs_a_base_backup() {
    let mut pg = PgCluster::init(PgClusterOptions::default());
    pg.start();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 10) AS x");
    // pg_basebackup runs as root here: the copy is root's until start_existing hands it over.
    let restore = tempfile::tempdir().expect("temp dir");
    let data = restore.path().join("data");
    let out = Command::new("/usr/lib/postgresql/15/bin/pg_basebackup")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "stream",
            "-c",
            "fast",
            "-p",
        ])
        .arg(pg.port().to_string())
        .arg("-D")
        .arg(&data)
        .output()
        .expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PgCluster::make_accessible(restore.path());

    let copy = PgCluster::start_existing(&data, free_port());
    assert_ne!(copy.port(), pg.port());
    assert_eq!(copy.psql("SELECT count(*) FROM t"), "10");
    assert_eq!(copy.psql("SELECT pg_is_in_recovery()"), "f");
    drop(copy);
    assert!(
        data.join("PG_VERSION").exists(),
        "the caller's data dir is kept"
    );
}

#[test]
#[should_panic(expected = "invalid value for parameter")]
fn failed_start_shows_the_server_log() {
    let mut pg = PgCluster::init(PgClusterOptions {
        extra_settings: vec!["shared_buffers = 'lots'".to_string()],
        ..PgClusterOptions::default()
    });
    pg.start();
}
