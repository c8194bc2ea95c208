//! Replication to other repositories (`copy-to`): copies are verified and recorded once,
//! listed with their storage class, verified per repository, and used by restore when the
//! primary copy is unreachable or damaged; a copier killed mid-way is taken over.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_testing::s3::incomplete_uploads;
use backup_testing::servers::{
    skip_s3_tests, SeaweedFs, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY,
};
use serde_json::Value;

use crate::roundtrip::build_varied_tree;
use crate::s3::{create_bucket_named, runtime, s3_repository_toml, setup_sink, write_s3_keys};
use crate::support::*;

fn s3_repository(name: &str, endpoint: &str, bucket: &str) -> String {
    s3_repository_toml(name, endpoint, bucket, 5, "")
}

fn local_repository(name: &str) -> String {
    format!("[[repository]]\nname = \"{name}\"\nkind = \"local\"\npath = \"var/repo/{name}\"\n")
}

fn files_source(copy_to: &str) -> String {
    files_source_toml("region-a", &format!("copy-to = {copy_to}\n"))
}

/// `(repository, storage class, complete)` of each copy `list --json` shows for `id`.
fn listed_copies(work: &Work, id: &str) -> Vec<(String, Option<String>, bool)> {
    let listed = work.listed(id).expect("backup listed");
    listed["copies"]
        .as_array()
        .expect("copies listed")
        .iter()
        .map(|c| {
            (
                c["repository"].as_str().unwrap().to_owned(),
                c["storage_class"].as_str().map(str::to_owned),
                c["complete"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn destination<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == name)
        .unwrap_or_else(|| panic!("destination {name} in {status:#}"))
}

#[test]
fn copies_are_verified_listed_and_used_when_the_primary_region_is_down() {
    if skip_s3_tests() {
        return;
    }
    let region_a = SeaweedFs::start();
    let region_b = SeaweedFs::start();
    let work = Work::new();
    write_s3_keys(&work, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        s3_repository("region-a", &region_a.endpoint(), "primary"),
        s3_repository("region-b", &region_b.endpoint(), "replica"),
        files_source("[\"region-b\"]")
    ));
    create_bucket_named(&work, &region_a.endpoint(), "primary");
    create_bucket_named(&work, &region_b.endpoint(), "replica");
    build_varied_tree(&work);
    write_file(
        &work.data().join("large.bin"),
        &mixed_bytes(11 << 20, 3),
        0o644,
    );
    let source = snapshot(&work.data());
    work.init();

    let out = work.ok(&["backup", "files"]);
    let id = out.stdout.trim().to_owned();
    out.expect_mentions(&["copied backup", "region-b"]);
    assert_eq!(
        listed_copies(&work, &id),
        vec![
            ("region-a".to_owned(), None, true),
            ("region-b".to_owned(), None, true)
        ]
    );
    let status = work.ok(&["replication", "status", "--json"]).json();
    let b = destination(&status, "region-b");
    assert_eq!(
        (b["pending"].as_u64(), b["done"].as_u64()),
        (Some(0), Some(1)),
        "{status:#}"
    );
    assert_eq!(b["lag_seconds"], 0);

    // Every copy is checked, each in its own region.
    let report = work.ok(&["verify", &id, "--json"]).json();
    assert_eq!(
        report["backups"][0]["repositories"],
        serde_json::json!(["region-a", "region-b"])
    );
    assert_eq!(report["backups"][0]["artifacts_checked"], 4);

    // The primary region goes down: restore says so and uses the copy in region-b.
    drop(region_a);
    let target = work.path("restored");
    let out = work.ok(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--json",
    ]);
    let restored = out.json();
    assert_eq!(restored["repository"], "region-b", "{}", out.dump());
    let failovers = restored["failovers"].as_array().unwrap();
    assert_eq!(failovers.len(), 1, "{}", out.dump());
    assert!(
        failovers[0].as_str().unwrap().starts_with("region-a:"),
        "{}",
        out.dump()
    );
    out.expect_mentions(&["region-a", "trying the copy in region-b"]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);

    // Forcing the unreachable copy fails, naming it.
    let forced = work.run(&[
        "restore",
        &id,
        "--target",
        work.path("forced").to_str().unwrap(),
        "--from",
        "region-a",
    ]);
    forced
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["primary"]);
    // And a repository without a copy is a usage error listing where the copies are.
    let nowhere = work.run(&[
        "restore",
        &id,
        "--target",
        work.path("nowhere").to_str().unwrap(),
        "--from",
        "nope",
    ]);
    nowhere.expect_code(EXIT_USAGE).expect_mentions(&["nope"]);
}

/// Flips one byte in the middle of the backup's data object in local repository `repo`.
fn damage_data_object(work: &Work, repo: &str, id: &str) -> String {
    let dir = work.path(&format!("var/repo/{repo}/backups/{id}"));
    let data = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("data-"))
        .expect("data object")
        .path();
    let mut bytes = fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&data, bytes).unwrap();
    data.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn a_damaged_copy_is_named_by_verify_and_restore_falls_back_to_another() {
    let work = Work::new();
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        local_repository("region-a"),
        local_repository("region-b"),
        files_source("[\"region-b\"]")
    ));
    build_varied_tree(&work);
    write_file(
        &work.data().join("large.bin"),
        &mixed_bytes(6 << 20, 5),
        0o644,
    );
    let source = snapshot(&work.data());
    work.init();
    let id = work.backup();
    work.ok(&["verify", "--all"]);
    let object = damage_data_object(&work, "region-a", &id);

    let out = work.run(&["verify", "--all"]);
    out.expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["region-a", &id]);
    assert!(
        !out.text().contains("in repository region-b"),
        "{}",
        out.dump()
    );
    let quick = work.run(&["verify", "--all", "--quick"]);
    quick
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["region-a", &object]);

    let target = work.path("restored");
    let out = work.ok(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--json",
    ]);
    let restored = out.json();
    assert_eq!(restored["repository"], "region-b", "{}", out.dump());
    assert!(
        restored["failovers"][0]
            .as_str()
            .unwrap()
            .contains("integrity failure"),
        "{}",
        out.dump()
    );
    assert_same_tree(&source, &snapshot(&target.join("data")), true);

    // With no undamaged copy left, restore fails with the integrity exit code.
    damage_data_object(&work, "region-b", &id);
    let out = work.run(&[
        "restore",
        &id,
        "--target",
        work.path("again").to_str().unwrap(),
    ]);
    out.expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["region-a", "region-b"]);
}

/// Incomplete multipart uploads in `bucket`.
fn multipart_uploads(work: &Work, endpoint: &str, bucket: &str) -> usize {
    let rt = runtime();
    let sink = setup_sink(&rt, work, endpoint, bucket, "");
    rt.block_on(incomplete_uploads(&sink)).len()
}

#[test]
fn a_copier_killed_mid_copy_is_taken_over_without_duplicates() {
    if skip_s3_tests() {
        return;
    }
    let region_b = SeaweedFs::start();
    let work = Work::new();
    write_s3_keys(&work, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        local_repository("region-a"),
        s3_repository("region-b", &region_b.endpoint(), "replica"),
        files_source("[\"region-b\"]")
    ));
    create_bucket_named(&work, &region_b.endpoint(), "replica");
    // Incompressible, so the copy takes many 5 MiB parts.
    write_file(
        &work.data().join("big.bin"),
        &random_bytes(120 << 20, 7),
        0o644,
    );
    let source = snapshot(&work.data());
    work.init();
    let out = work.ok(&["backup", "files", "--no-copy"]);
    let id = out.stdout.trim().to_owned();
    let status = work.ok(&["replication", "status", "--json"]).json();
    assert_eq!(destination(&status, "region-b")["pending"], 1, "{status:#}");

    let mut cmd = work.command(&["replicate"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = cmd.spawn().expect("start backupctl replicate");
    let started = Instant::now();
    while multipart_uploads(&work, &region_b.endpoint(), "replica") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no multipart upload started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "replicate ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = work.ok(&["replication", "status", "--json"]).json();
    assert_eq!(destination(&status, "region-b")["pending"], 1, "{status:#}");
    assert_eq!(
        listed_copies(&work, &id),
        vec![("region-a".to_owned(), None, true)],
        "nothing is recorded before it is stored and checked"
    );

    // The next copier sees the dead one's process is gone and takes the copy over at once.
    work.ok(&["replicate"])
        .expect_mentions(&["1 copies made, 0 failed"]);
    let shown = work.show(&id);
    for artifact in shown["artifacts"].as_array().unwrap() {
        let in_b = artifact["copies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["repository"] == "region-b")
            .count();
        assert_eq!(in_b, 1, "{shown:#}");
    }
    let status = work.ok(&["replication", "status", "--json"]).json();
    let b = destination(&status, "region-b");
    assert_eq!(
        (b["pending"].as_u64(), b["done"].as_u64()),
        (Some(0), Some(1))
    );
    // Running again copies nothing more.
    work.ok(&["replicate"]).expect_mentions(&["0 copies made"]);
    work.ok(&["verify", "--all"]);
    // The killed copier's unfinished upload is swept by gc.
    work.ok(&["gc", "--grace", "0s"]);
    assert_eq!(multipart_uploads(&work, &region_b.endpoint(), "replica"), 0);
    let target = work.path("restored");
    work.ok(&[
        "restore",
        &id,
        "--target",
        target.to_str().unwrap(),
        "--from",
        "region-b",
    ]);
    assert_same_tree(&source, &snapshot(&target.join("data")), true);
}

#[test]
fn weekly_backups_are_archived_and_restored_after_a_thaw() {
    if skip_s3_tests() {
        return;
    }
    let moto = backup_testing::servers::Moto::start();
    let work = Work::new();
    write_s3_keys(&work, SEAWEEDFS_ACCESS_KEY, SEAWEEDFS_SECRET_KEY);
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        local_repository("region-a"),
        s3_repository("archive-eu", &moto.endpoint(), "deep"),
        files_source(r#"[{ to = "archive-eu", storage-class = "DEEP_ARCHIVE", only = "weekly" }]"#)
    ));
    create_bucket_named(&work, &moto.endpoint(), "deep");
    build_varied_tree(&work);
    let source = snapshot(&work.data());
    work.init();

    let daily = work.backup();
    assert_eq!(
        listed_copies(&work, &daily),
        vec![("region-a".to_owned(), None, true)],
        "only weekly backups are archived"
    );
    let weekly = work
        .ok(&["backup", "files", "--tag", "weekly"])
        .stdout
        .trim()
        .to_owned();
    assert_eq!(
        listed_copies(&work, &weekly),
        vec![
            ("region-a".to_owned(), None, true),
            (
                "archive-eu".to_owned(),
                Some("DEEP_ARCHIVE".to_owned()),
                true
            )
        ]
    );
    work.ok(&["list"])
        .expect_mentions(&["archive-eu(DEEP_ARCHIVE)"]);
    // The archived data object can only be checked by size; the manifest is readable.
    let report = work.ok(&["verify", &weekly, "--json"]).json();
    assert_eq!(report["backups"][0]["archived_size_only"], 1, "{report:#}");
    assert_eq!(report["backups"][0]["ok"], true);

    // Restoring from the archive: the thaw is requested, with its wait and cost, exit 4.
    let t1 = work.path("t1");
    let out = work.run(&[
        "restore",
        &weekly,
        "--target",
        t1.to_str().unwrap(),
        "--from",
        "archive-eu",
    ]);
    out.expect_code(4).expect_mentions(&[
        "DEEP_ARCHIVE",
        "within 12 hours",
        "$",
        "thaw status",
        "--wait",
    ]);
    let status = work.ok(&["thaw", "status", "--json"]).json();
    let reports = status.as_array().unwrap();
    assert_eq!(reports.len(), 1, "{status:#}");
    assert_eq!(reports[0]["backup_id"], weekly.as_str());
    assert_eq!(reports[0]["tier"], "standard");
    assert_eq!(reports[0]["objects"], 1);

    let expedited = work.run(&[
        "restore",
        &weekly,
        "--target",
        t1.to_str().unwrap(),
        "--from",
        "archive-eu",
        "--tier",
        "expedited",
    ]);
    expedited
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["expedited"]);

    let out = work.ok(&[
        "restore",
        &weekly,
        "--target",
        t1.to_str().unwrap(),
        "--from",
        "archive-eu",
        "--wait",
        "--poll",
        "1s",
        "--json",
    ]);
    assert_eq!(out.json()["repository"], "archive-eu", "{}", out.dump());
    assert_same_tree(&source, &snapshot(&t1.join("data")), true);

    // Without --from the readable copy comes first; a copy that is not archived needs no thaw.
    let t2 = work.path("t2");
    let out = work.ok(&[
        "restore",
        &weekly,
        "--target",
        t2.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.json()["repository"], "region-a");
    let out = work.run(&[
        "restore",
        &daily,
        "--target",
        work.path("t3").to_str().unwrap(),
        "--thaw-only",
    ]);
    out.expect_code(EXIT_USAGE)
        .expect_mentions(&["nothing to thaw"]);
}

#[test]
fn a_damaged_source_copy_is_never_replicated() {
    let work = Work::new();
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        local_repository("region-a"),
        local_repository("region-b"),
        files_source("[\"region-b\"]")
    ));
    build_varied_tree(&work);
    work.init();
    let out = work.ok(&["backup", "files", "--no-copy"]);
    let id = out.stdout.trim().to_owned();
    damage_data_object(&work, "region-a", &id);

    let out = work.run(&["replicate"]);
    out.expect_code(EXIT_FAILED).expect_mentions(&[
        "region-a",
        "damaged",
        &id,
        "0 copies made, 1 failed",
    ]);
    assert_eq!(
        listed_copies(&work, &id),
        vec![("region-a".to_owned(), None, true)]
    );
    let copied: Vec<_> = files_below(&work.path("var/repo/region-b"))
        .into_iter()
        .filter(|f| f.contains("data-"))
        .collect();
    assert!(
        copied.is_empty(),
        "the mismatching object is not kept: {copied:?}"
    );
    let status = work.ok(&["replication", "status", "--json"]).json();
    let failing = status["failing"].as_array().unwrap();
    assert_eq!(failing.len(), 1, "{status:#}");
    assert!(failing[0]["error"].as_str().unwrap().contains("damaged"));
    work.ok(&["replication", "status"])
        .expect_mentions(&["region-b", "failing: backup"]);
}

#[test]
fn a_copy_rule_keeps_its_own_retention() {
    let work = Work::new();
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}",
        local_repository("region-a"),
        local_repository("region-b"),
        files_source(r#"[{ to = "region-b", keep = { last = 1 } }]"#)
    ));
    build_varied_tree(&work);
    work.init();
    let old = work.backup();
    let held = work.backup();
    let newest = work.backup();
    work.ok(&["hold", &held]);

    let plan = work.ok(&["prune", "--dry-run", "--json"]).json();
    let expiring: Vec<&str> = plan["copies_expired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["backup_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        expiring,
        vec![old.as_str()],
        "the held copy stays: {plan:#}"
    );
    assert_eq!(
        listed_copies(&work, &old).len(),
        2,
        "a dry run changes nothing"
    );

    work.ok(&["prune"])
        .expect_mentions(&["expired by its copy rule; deleted"]);
    // The backup itself lives on in region-a; only its copy in region-b is gone.
    assert_eq!(work.status_of(&old), "complete");
    assert_eq!(
        listed_copies(&work, &old),
        vec![("region-a".to_owned(), None, true)]
    );
    assert!(
        !work
            .path(&format!("var/repo/region-b/backups/{old}"))
            .exists()
            || files_below(&work.path(&format!("var/repo/region-b/backups/{old}"))).is_empty()
    );
    for id in [&held, &newest] {
        assert_eq!(listed_copies(&work, id).len(), 2, "{id}");
    }
    work.ok(&["verify", "--all"]);
    // Nothing more expires on a second run.
    let again = work.ok(&["prune", "--json"]).json();
    assert!(
        again["copies_expired"].as_array().unwrap().is_empty(),
        "{again:#}"
    );
}

#[test]
fn a_rebuilt_catalog_knows_every_copy_and_requeues_missing_ones() {
    let work = Work::new();
    work.write_config(&format!(
        "{CONFIG_HEAD}{}{}{}{}",
        local_repository("region-a"),
        local_repository("region-b"),
        local_repository("region-c"),
        files_source("[\"region-b\"]")
    ));
    build_varied_tree(&work);
    work.init();
    let copied = work.backup();
    let queued = work
        .ok(&["backup", "files", "--no-copy"])
        .stdout
        .trim()
        .to_owned();
    fs::remove_file(work.path("var/catalog.db")).unwrap();
    let _ = fs::remove_file(work.path("var/catalog.db-wal"));
    let _ = fs::remove_file(work.path("var/catalog.db-shm"));

    work.ok(&["catalog", "rebuild"]);
    assert_eq!(
        listed_copies(&work, &copied),
        vec![
            ("region-a".to_owned(), None, true),
            ("region-b".to_owned(), None, true)
        ]
    );
    assert_eq!(work.listed(&copied).unwrap()["repository"], "region-a");
    assert_eq!(
        listed_copies(&work, &queued),
        vec![("region-a".to_owned(), None, true)]
    );
    // The copy that was never made is queued again; the one that exists is not.
    let status = work.ok(&["replication", "status", "--json"]).json();
    assert_eq!(destination(&status, "region-b")["pending"], 1, "{status:#}");
    work.ok(&["replicate"])
        .expect_mentions(&["1 copies made, 0 failed"]);
    assert_eq!(listed_copies(&work, &queued).len(), 2);
    work.ok(&["verify", "--all"]);
}
