//! PostgreSQL WAL beyond one synchronous push: `wal-push --async` (archive_command returns
//! once the segment is safely spooled; a background drainer pushes spooled segments, several
//! at once), and archived WAL copied to the source's `copy-to` repositories, where
//! `wal-fetch` finds it when the primary copy is gone.

use std::fs;
use std::time::{Duration, Instant};

use backup_testing::postgres::PgCluster;

use crate::support::*;

#[test]
fn async_pushes_return_once_spooled_and_the_drainer_archives_them() {
    let mut work = Work::new();
    work.run_as(PgCluster::os_user());
    let root = work.root().display().to_string();
    work.write_config(&format!(
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
connection = "postgres://postgres@127.0.0.1:1/postgres"
data-directory = "{root}/data"
repository = "region-a"
spool-directory = "{root}/spool"
"#
    ));
    work.init();
    let pg_wal = work.path("pg_wal");
    fs::create_dir_all(&pg_wal).unwrap();
    set_mode(&pg_wal, 0o777);
    let names: Vec<String> = (1..=6)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let path = pg_wal.join(name);
        write_file(&path, &mixed_bytes(16 << 20, i as u64), 0o644);
        work.ok(&["wal-push", "--async", path.to_str().unwrap()]);
    }
    // Pushing a spooled or archived file again is fine; other content is refused.
    work.ok(&[
        "wal-push",
        "--async",
        pg_wal.join(&names[0]).to_str().unwrap(),
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let spooled: Vec<_> = fs::read_dir(work.path("spool"))
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        if spooled.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool was not drained: {spooled:?}; drainer log:\n{}",
            fs::read_to_string(work.path("spool/.drain.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, name) in names.iter().enumerate() {
        let fetched = work.path(&format!("pg_wal/fetched-{i}"));
        work.ok(&["wal-fetch", name, fetched.to_str().unwrap()]);
        assert!(
            fs::read(&fetched).unwrap() == mixed_bytes(16 << 20, i as u64),
            "{name}"
        );
    }
    write_file(&pg_wal.join(&names[2]), &mixed_bytes(16 << 20, 99), 0o644);
    work.run(&[
        "wal-push",
        "--async",
        pg_wal.join(&names[2]).to_str().unwrap(),
    ])
    .expect_code(EXIT_INTEGRITY)
    .expect_mentions(&[&names[2]]);
    work.ok(&["check", "pg"]).expect_mentions(&["continuous"]);
}

#[test]
fn archived_wal_is_copied_to_the_other_region_and_fetched_from_there() {
    let work = Work::new();
    let root = work.root().display().to_string();
    work.write_config(&format!(
        r#"[catalog]
url = "sqlite://{root}/var/catalog.db"
[encryption]
key-file = "{root}/var/keys/repo.key"
[[repository]]
name = "region-a"
kind = "local"
path = "{root}/var/repo-a"
[[repository]]
name = "region-b"
kind = "local"
path = "{root}/var/repo-b"
[[source]]
name = "pg"
kind = "postgres"
connection = "postgres://postgres@127.0.0.1:1/postgres"
data-directory = "{root}/data"
repository = "region-a"
copy-to = ["region-b"]
"#
    ));
    work.init();
    let pg_wal = work.path("pg_wal");
    fs::create_dir_all(&pg_wal).unwrap();
    let names: Vec<String> = (1..=3)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let path = pg_wal.join(name);
        write_file(&path, &mixed_bytes(16 << 20, i as u64), 0o644);
        work.ok(&["wal-push", path.to_str().unwrap()]);
    }
    // Until copied, region B lags behind by the three segments.
    let status = work.ok(&["replication", "status", "--json"]).json();
    let wal = &status["wal"][0];
    assert_eq!(
        (
            wal["source"].as_str(),
            wal["destination"].as_str(),
            wal["pending"].as_u64()
        ),
        (Some("pg"), Some("region-b"), Some(3)),
        "{status}"
    );
    work.ok(&["replicate"])
        .expect_mentions(&["3 WAL files copied"]);
    let status = work.ok(&["replication", "status", "--json"]).json();
    let wal = &status["wal"][0];
    assert_eq!(
        (
            wal["pending"].as_u64(),
            wal["done"].as_u64(),
            wal["lag_seconds"].as_u64()
        ),
        (Some(0), Some(3), Some(0)),
        "{status}"
    );
    work.ok(&["replicate"])
        .expect_mentions(&["0 copies made, 0 failed"]);
    assert_eq!(files_below(&work.path("var/repo-b/wal/pg")).len(), 3);
    // Region A loses a segment: wal-fetch says so and uses region B's copy.
    fs::remove_file(work.path(&format!("var/repo-a/wal/pg/{}.bkpd", names[1]))).unwrap();
    let fetched = work.path("pg_wal/RECOVERYXLOG");
    work.ok(&["wal-fetch", &names[1], fetched.to_str().unwrap()])
        .expect_mentions(&["region-a"]);
    assert!(fs::read(&fetched).unwrap() == mixed_bytes(16 << 20, 1));
}
