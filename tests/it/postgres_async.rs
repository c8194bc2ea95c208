//! `wal-push --async`: archive_command returns once the segment is safely spooled; a
//! background drainer pushes spooled segments, several at once, and empties the spool.

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
