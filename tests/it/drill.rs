//! Restore drills (`backupctl drill`): a drill restores a backup into a scratch target,
//! checks it, records its RTO and removes the target; a damaged backup fails its drill.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::postgres::archiving_cluster_with;
use crate::support::*;

/// The data objects of backup `id` below the repository root `repo`.
fn data_objects(repo: &Path, id: &str) -> Vec<PathBuf> {
    let dir = repo.join("backups").join(id);
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("data-"))
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "backup {id} has no data object");
    found
}

fn flip_middle_byte(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn check<'a>(drill: &'a Value, name: &str) -> &'a Value {
    drill["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
        .unwrap_or_else(|| panic!("drill has no {name} check: {drill:#}"))
}

fn scratch_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("backupd-drill-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_files_drill_passes_and_a_damaged_backup_fails_its_drill() {
    let work = Work::new();
    let mut config = config_toml(&ConfigOpts::default());
    config.push_str("[source.drill]\ntarget = \"./scratch\"\n");
    work.write_config(&config);
    write_file(&work.data().join("a.txt"), b"alpha\n", 0o644);
    write_file(
        &work.data().join("sub/b.bin"),
        &random_bytes(300_000, 7),
        0o600,
    );
    work.init();
    let id = work.backup();

    let out = work.ok(&["drill", "files", "--now", "--json"]);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    assert_eq!(drill["backup_id"], id.as_str());
    assert_eq!(drill["trigger"], "manual");
    assert_eq!(check(&drill, "integrity")["passed"], true, "{drill:#}");
    let counts = check(&drill, "counts");
    assert_eq!(counts["passed"], true, "{drill:#}");
    assert!(
        counts["detail"]
            .as_str()
            .unwrap()
            .contains("2 files restored"),
        "{drill:#}"
    );
    assert!(drill["rto_millis"].is_u64(), "{drill:#}");
    assert!(
        scratch_dirs(&work.path("scratch")).is_empty(),
        "the scratch target is removed"
    );

    // The report now has a measured RTO instead of "no drill yet".
    let list = work.ok(&["drill", "--list", "--json"]).json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["id"], drill["id"]);

    // Damage the backup: the drill fails (exit 1), names the integrity failure, and is
    // recorded as failed.
    for object in data_objects(&work.repo(), &id) {
        flip_middle_byte(&object);
    }
    let out = work.run(&["drill", "files", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    let failed = out.json();
    assert_eq!(failed["status"], "failed", "{}", out.dump());
    assert_eq!(check(&failed, "integrity")["passed"], false, "{failed:#}");
    assert!(failed["error"].as_str().is_some(), "{failed:#}");
    assert!(scratch_dirs(&work.path("scratch")).is_empty());
    let list = work.ok(&["drill", "--list", "--json"]).json();
    assert_eq!(list[0]["status"], "failed", "{list:#}");
    assert_eq!(list[1]["status"], "passed", "{list:#}");

    // Bad input is named.
    work.run(&["drill", "nosuch", "--now"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["nosuch"]);
    work.run(&["drill", "files", "--pick", "sometimes", "--now"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["latest, random or oldest"]);
}

#[test]
fn drill_config_errors_name_the_key() {
    let work = Work::new();
    for (extra, key, needle) in [
        ("cron = \"61 * * * *\"\n", "drill.cron", ""),
        ("checks = [\"rows\"]\n", "", "unknown drill check"),
        (
            "checks = [{ query = \"SELECT 1\", expect = \"1\" }]\n",
            "drill.checks[0]",
            "files sources",
        ),
        (
            "row-count-tolerance = 2.0\n",
            "drill.row-count-tolerance",
            "",
        ),
    ] {
        let mut config = config_toml(&ConfigOpts::default());
        config.push_str("[source.drill]\n");
        config.push_str(extra);
        work.write_config(&config);
        let out = work.run(&["list"]);
        out.expect_code(EXIT_USAGE);
        let mut needles = vec!["drill"];
        if !key.is_empty() {
            needles.push(key);
        }
        if !needle.is_empty() {
            needles.push(needle);
        }
        out.expect_mentions(&needles);
    }
}

#[test]
fn a_postgres_drill_recovers_a_scratch_server_and_checks_rows_and_queries() {
    // The scratch parent is inside the work dir, which the server's user owns.
    let scratch_rel = "scratch";
    let drill = format!(
        "[source.drill]\ntarget = \"{scratch_rel}\"\ntimeout = \"120s\"\nchecks = [\"integrity\", \"counts\", \
         {{ query = \"SELECT count(*) FROM pgbench_accounts\", expect = \"100000\" }}, \
         {{ query = \"SELECT note FROM drill_marker\", expect = \"before\" }}]\n"
    );
    let (work, cluster) = archiving_cluster_with(&drill);
    let scratch = work.path(scratch_rel);
    let config = fs::read_to_string(&work.config).unwrap();
    cluster.pgbench_init(1);
    cluster
        .psql("CREATE TABLE drill_marker (note text); INSERT INTO drill_marker VALUES ('before')");
    cluster.psql("CREATE DATABASE second; ");
    cluster.psql_db(
        "second",
        "CREATE SCHEMA app; CREATE TABLE app.items AS SELECT generate_series(1, 777) AS n",
    );
    let base = work.ok(&["backup", "pg"]).stdout.trim().to_owned();
    // Written after the backup: a drill restores the backup's end, not the newest WAL.
    cluster.psql("UPDATE drill_marker SET note = 'after'; INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 1, now())");
    let last = cluster.switch_wal();
    cluster.wait_archived(&last, Duration::from_secs(60));

    let out = work.ok(&["drill", "pg", "--now", "--json"]);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    assert_eq!(drill["backup_id"], base.as_str());
    let counts = check(&drill, "counts");
    assert_eq!(counts["passed"], true, "{drill:#}");
    // pgbench's 4 tables, the marker, and the second database's table.
    assert!(
        counts["detail"].as_str().unwrap().starts_with("6 tables"),
        "{drill:#}"
    );
    assert_eq!(
        check(&drill, "query (postgres): SELECT note")["passed"],
        true,
        "{drill:#}"
    );
    assert!(drill["recovery_millis"].as_u64().unwrap() > 0, "{drill:#}");
    assert!(
        drill["rto_millis"].as_u64().unwrap() >= drill["restore_millis"].as_u64().unwrap(),
        "{drill:#}"
    );
    assert!(
        scratch_dirs(&scratch).is_empty(),
        "scratch server and data removed"
    );

    let report = work.ok(&["report", "recovery", "--format", "json"]).json();
    let row = &report["sources"][0];
    assert!(row["last_drill_rto_seconds"].is_u64(), "{report:#}");
    assert!(row["last_drill_at"].is_string(), "{report:#}");

    // A query whose answer is wrong fails the drill and says what it got.
    let wrong = config.replace("expect = \"100000\"", "expect = \"99\"");
    work.write_config(&wrong);
    let out = work.run(&["drill", "pg", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    let drill = out.json();
    let query = check(&drill, "query (postgres): SELECT count(*)");
    assert_eq!(query["passed"], false, "{drill:#}");
    assert!(
        query["detail"].as_str().unwrap().contains("\"100000\""),
        "{drill:#}"
    );
    assert!(scratch_dirs(&scratch).is_empty());

    // A damaged base backup fails its drill on integrity and on the restore itself.
    work.write_config(&config);
    for object in data_objects(&work.path("var/repo"), &base) {
        flip_middle_byte(&object);
    }
    let out = work.run(&["drill", "pg", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    let drill = out.json();
    assert_eq!(check(&drill, "integrity")["passed"], false, "{drill:#}");
    assert!(drill["error"].as_str().is_some(), "{drill:#}");
    assert!(scratch_dirs(&scratch).is_empty());
}
