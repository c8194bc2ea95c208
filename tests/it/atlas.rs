//! `kind = "atlas"` sources against an HTTP double of the Atlas Admin API (no Atlas here):
//! on-demand snapshots taken, waited for and recorded; their files downloaded into our
//! repository (restorable, verifiable, rebuildable); retention and legal holds deleting or
//! keeping the Atlas snapshots; restore jobs into a cluster; and the failures (bad key,
//! unknown cluster, failed and stuck snapshots, expired download links) named, alerted as
//! failures and never recorded as complete backups.

use backup_testing::atlas::{download_content, AtlasDouble};

use crate::support::*;

const PROJECT: &str = "5f1b2c3d4e5f60718293a4b5";
const PUBLIC_KEY: &str = "abcdwxyz";
const PRIVATE_KEY: &str = "0b3f5e7a-1c2d-4e5f-8a9b-secretsecret";

fn atlas_work(atlas: &AtlasDouble, extra: &str) -> Work {
    let work = Work::new();
    let key_file = work.path("atlas-private-key");
    std::fs::write(&key_file, format!("{PRIVATE_KEY}\n")).unwrap();
    work.write_config(&format!(
        r#"{CONFIG_HEAD}[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "atlas"
kind = "atlas"
project-id = "{PROJECT}"
cluster = "Cluster0"
public-key = "{PUBLIC_KEY}"
private-key-file = "{}"
base-url = "{}"
poll-interval = "20ms"
repository = "region-a"
{extra}
"#,
        key_file.display(),
        atlas.url()
    ));
    work.init();
    work
}

#[test]
fn atlas_snapshots_are_taken_exported_restored_and_deleted_by_retention() {
    let atlas = AtlasDouble::start(PROJECT, "Cluster0", PUBLIC_KEY, PRIVATE_KEY);
    let scheduled = atlas.add_scheduled_snapshot();
    let work = atlas_work(&atlas, "export = true\nkeep = { last = 1 }");

    let first = work.backup_of("atlas");
    let snapshot = {
        let s = atlas.state();
        let ours: Vec<_> = s
            .snapshots
            .values()
            .filter(|x| x.snapshot_type == "onDemand")
            .collect();
        assert_eq!(ours.len(), 1, "{:?}", s.snapshots);
        assert_eq!(ours[0].status, "completed");
        assert_eq!(ours[0].description, format!("backupd {first}"));
        assert_eq!(ours[0].retention_days, 400, "the default safety net");
        // A download restore job fetched the snapshot's files.
        assert!(s
            .restore_jobs
            .values()
            .any(|j| j.delivery_type == "download"));
        // Every API call was authenticated by Digest (one challenge, then answered).
        assert!(s.requests.iter().any(|r| r.starts_with("POST ")));
        ours[0].id.clone()
    };
    work.ok(&["verify", &first]);

    // The export restores as a file: exactly the bytes Atlas served.
    work.ok(&["restore", &first, "--target", "out"]);
    let restored = std::fs::read(work.path(&format!("out/atlas/{snapshot}.tar.gz"))).unwrap();
    assert_eq!(restored, download_content(&snapshot, 300 * 1024));
    let described: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path("out/atlas/snapshot.json")).unwrap())
            .unwrap();
    assert_eq!(described["snapshot"]["id"], snapshot.as_str());
    assert_eq!(described["cluster"], "Cluster0");
    // Nothing stored in the repository holds the private key or the link's signature.
    for file in files_below(&work.path("var")) {
        let bytes = std::fs::read(work.path("var").join(&file)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PRIVATE_KEY),
            "{file} holds the private key"
        );
    }

    // The listing shows ours with its backup, and Atlas's scheduled one as not ours.
    let listing = work.ok(&["atlas-snapshots", "atlas", "--json"]).json();
    let rows = listing.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{listing:#}");
    let of = |id: &str| rows.iter().find(|r| r["id"] == id).unwrap().clone();
    assert_eq!(of(&snapshot)["backup_id"], first.as_str());
    assert!(of(&scheduled)["backup_id"].is_null());
    work.ok(&["atlas-snapshots", "atlas"])
        .expect_mentions(&[&snapshot, "not taken by backupd"]);

    // Restore job of the backup's snapshot into another cluster, waited for.
    let out = work.ok(&[
        "restore",
        "atlas",
        "--latest",
        "--target-cluster",
        "scratch",
        "--json",
    ]);
    let restore = out.json();
    assert_eq!(restore["finished"], true, "{restore:#}");
    assert_eq!(restore["snapshot_id"], snapshot.as_str());
    {
        let s = atlas.state();
        let job = s
            .restore_jobs
            .values()
            .find(|j| j.delivery_type == "automated")
            .expect("an automated restore job");
        assert_eq!(job.target_cluster.as_deref(), Some("scratch"));
        assert_eq!(job.target_group.as_deref(), Some(PROJECT));
        assert_eq!(job.snapshot_id.as_deref(), Some(snapshot.as_str()));
    }
    // Point in time, and an unknown target cluster named in the error.
    work.ok(&[
        "restore",
        "atlas",
        "--point-in-time",
        "2026-11-30 10:00:00+00",
        "--target-cluster",
        "scratch",
    ]);
    assert!(atlas
        .state()
        .restore_jobs
        .values()
        .any(|j| j.point_in_time == Some(1_796_032_800)));
    work.run(&["restore", "atlas", "--latest", "--target-cluster", "nope"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["CLUSTER_NOT_FOUND", "nope"]);

    // Retention keeps the last one: the first backup's snapshot is deleted in Atlas too, but
    // not while it is under legal hold.
    let second = work.backup_of("atlas");
    work.ok(&["hold", &first]);
    work.ok(&["prune"]);
    assert!(atlas.state().snapshots.contains_key(&snapshot));
    work.ok(&["unhold", &first]);
    work.ok(&["prune"]);
    assert!(
        !atlas.state().snapshots.contains_key(&snapshot),
        "pruning the backup deletes its Atlas snapshot"
    );
    assert!(
        atlas.state().snapshots.contains_key(&scheduled),
        "Atlas's own snapshots are never ours to delete"
    );
    assert!(work.listed(&first).is_none());
    assert_eq!(work.status_of(&second), "complete");

    // The catalog is rebuilt from the repository alone, snapshot reference included.
    std::fs::remove_file(work.path("var/catalog.db")).unwrap();
    work.ok(&["catalog", "rebuild"]);
    work.ok(&[
        "restore",
        "atlas",
        "--backup",
        &second,
        "--target-cluster",
        "scratch",
    ]);
}

#[test]
fn atlas_failures_are_named_and_never_complete_backups() {
    let atlas = AtlasDouble::start(PROJECT, "Cluster0", PUBLIC_KEY, PRIVATE_KEY);
    let work = atlas_work(&atlas, "snapshot-timeout = \"1s\"");

    // A failed snapshot: the backup fails, naming it; nothing is complete.
    atlas.state().fail_snapshots = true;
    work.run(&["backup", "atlas"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["failed", "Cluster0"]);
    atlas.state().fail_snapshots = false;
    // A snapshot stuck in `queued` past snapshot-timeout: failed, and the snapshot deleted.
    atlas.state().stuck_snapshots = true;
    work.run(&["backup", "atlas"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["still not done", "snapshot-timeout"]);
    atlas.state().stuck_snapshots = false;
    assert!(
        atlas.state().snapshots.is_empty(),
        "failed backups leave no snapshot behind: {:?}",
        atlas.state().snapshots
    );
    let backups = work.list();
    assert_eq!(backups.len(), 2);
    assert!(
        backups.iter().all(|b| b["status"] == "failed"),
        "{backups:?}"
    );

    // An expired download link fails an exporting backup.
    let exporting = {
        let text = std::fs::read_to_string(work.path("backupd.toml")).unwrap();
        text.replace("snapshot-timeout = \"1s\"", "export = true")
    };
    std::fs::write(work.path("backupd.toml"), exporting).unwrap();
    atlas.state().expired_links = true;
    work.run(&["backup", "atlas"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["download", "expired"]);
    atlas.state().expired_links = false;

    // A wrong private key: the public key is named, the private key never shows.
    std::fs::write(work.path("atlas-private-key"), "wrong-key\n").unwrap();
    let out = work.run(&["backup", "atlas"]);
    out.expect_code(EXIT_FAILED)
        .expect_mentions(&[PUBLIC_KEY, "Project Backup Manager"]);
    assert!(!out.dump().contains("wrong-key"), "{}", out.dump());
    std::fs::write(work.path("atlas-private-key"), format!("{PRIVATE_KEY}\n")).unwrap();

    // An unknown cluster and an unreachable API are named.
    let text = std::fs::read_to_string(work.path("backupd.toml")).unwrap();
    std::fs::write(
        work.path("backupd.toml"),
        text.replace("cluster = \"Cluster0\"", "cluster = \"Cluster9\""),
    )
    .unwrap();
    work.run(&["backup", "atlas"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["CLUSTER_NOT_FOUND", "Cluster9"]);
    let url = atlas.url();
    std::fs::write(
        work.path("backupd.toml"),
        text.replace(&url, "http://127.0.0.1:9"),
    )
    .unwrap();
    work.run(&["backup", "atlas"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["cannot reach the Atlas Admin API", "base-url"]);
    assert!(work.list().iter().all(|b| b["status"] == "failed"));

    // Config errors name their key.
    for (from, to, key) in [
        (PROJECT, "not-a-project", "project-id"),
        ("cluster = \"Cluster0\"", "cluster = \"-x\"", "cluster"),
        (
            "private-key-file",
            "private-key = \"x\"\nprivate-key-file",
            "private-key",
        ),
    ] {
        std::fs::write(work.path("backupd.toml"), text.replace(from, to)).unwrap();
        work.run(&["list"])
            .expect_code(EXIT_USAGE)
            .expect_mentions(&[key]);
    }
}
