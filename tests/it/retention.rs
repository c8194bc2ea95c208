//! Retention: `prune` applies the `keep` policy, legal holds (`hold`/`unhold`) protect
//! backups, tags are recorded, and a deletion interrupted at any step is finished later.

use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// A work dir whose source keeps `keep` (e.g. `{ last = 2 }`).
fn work_with_keep(keep: &str) -> Work {
    let work = Work::new();
    work.write_config(&format!(
        "{}keep = {keep}\n",
        config_toml(&ConfigOpts::default())
    ));
    work
}

fn backup_folder(work: &Work, id: &str) -> std::path::PathBuf {
    work.repo().join("backups").join(id)
}

/// Writes a file that makes this backup's tree differ from the previous ones.
fn change_data(work: &Work, n: u32) {
    write_file(
        &work.data().join(format!("file-{n}.txt")),
        format!("generation {n}\n").as_bytes(),
        0o644,
    );
}

/// Plan entries of `prune --json` by backup id: (action, reason kinds).
fn planned(report: &Value) -> Vec<(String, String, Vec<String>)> {
    report["sources"]
        .as_array()
        .expect("sources")
        .iter()
        .flat_map(|s| s["backups"].as_array().expect("backups").iter())
        .map(|b| {
            (
                b["backup_id"].as_str().unwrap().to_owned(),
                b["action"].as_str().unwrap().to_owned(),
                b["reasons"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["kind"].as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

fn action_of(report: &Value, id: &str) -> (String, Vec<String>) {
    planned(report)
        .into_iter()
        .find(|(b, _, _)| b == id)
        .map(|(_, action, reasons)| (action, reasons))
        .unwrap_or_else(|| panic!("{id} is not in the plan: {report:#}"))
}

#[track_caller]
fn restores_exactly(work: &Work, id: &str, expected: &Snapshot, name: &str) {
    let target = work.path(name);
    work.ok(&["restore", id, "--target", target.to_str().unwrap()]);
    assert_same_tree(expected, &snapshot(&target.join("data")), true);
}

#[test]
fn prune_deletes_what_the_plan_says_and_never_a_held_backup() {
    let work = work_with_keep("{ last = 2 }");
    work.init();
    let mut ids = Vec::new();
    let mut trees = Vec::new();
    for n in 0..4 {
        change_data(&work, n);
        trees.push(snapshot(&work.data()));
        ids.push(work.backup());
    }
    let [b1, b2, b3, b4] = [&ids[0], &ids[1], &ids[2], &ids[3]];

    // Hold the oldest: printed, listed, in JSON.
    work.ok(&["hold", b1])
        .expect_mentions(&[b1.as_str(), "legal hold"]);
    assert_eq!(work.listed(b1).unwrap()["legal_hold"], true);
    assert_eq!(work.listed(b2).unwrap()["legal_hold"], false);
    let list = work.ok(&["list"]);
    let line = list
        .stdout
        .lines()
        .find(|l| l.contains(b1.as_str()))
        .unwrap();
    assert!(line.contains("HOLD"), "{}", list.dump());

    // A dry run prints the plan and deletes nothing.
    let files_before = work.repo_files();
    let catalog_before = work.list();
    let dry = work.ok(&["prune", "--dry-run"]);
    dry.expect_mentions(&["dry run", b2.as_str(), "delete", "legal hold", "last #1"]);
    let report = work.ok(&["prune", "--dry-run", "--json"]).json();
    assert_eq!(report["planned_deletions"], 1, "{report:#}");
    assert_eq!(report["deleted"], 0);
    assert_eq!(
        action_of(&report, b1),
        ("keep".into(), vec!["legal_hold".into()])
    );
    assert_eq!(
        action_of(&report, b2),
        ("delete".into(), vec!["not_selected".into()])
    );
    assert_eq!(action_of(&report, b3), ("keep".into(), vec!["last".into()]));
    assert_eq!(
        action_of(&report, b4),
        ("keep".into(), vec!["newest_complete".into(), "last".into()])
    );
    assert_eq!(work.repo_files(), files_before, "a dry run deleted objects");
    assert_eq!(work.list(), catalog_before, "a dry run changed the catalog");

    // The real run deletes exactly b2: its folder and its rows.
    let out = work.ok(&["prune"]);
    out.expect_mentions(&[b2.as_str(), "deleted"]);
    assert!(!backup_folder(&work, b2).exists(), "{}", out.dump());
    assert!(work.listed(b2).is_none());
    for id in [b1, b3, b4] {
        assert!(backup_folder(&work, id).join("keys.json").is_file());
        assert_eq!(work.status_of(id), "complete");
    }
    assert_eq!(
        backup_files_of(&work.repo_files(), b2),
        Vec::<String>::new()
    );
    work.ok(&["verify", "--all"]);
    restores_exactly(&work, b1, &trees[0], "restore-held");
    restores_exactly(&work, b4, &trees[3], "restore-newest");
    work.run(&[
        "restore",
        b2,
        "--target",
        work.path("restore-gone").to_str().unwrap(),
    ])
    .expect_code(EXIT_FAILED);

    // Nothing left to do: a second prune deletes nothing.
    let again = work.ok(&["prune", "--json"]).json();
    assert_eq!(again["planned_deletions"], 0, "{again:#}");

    // A held backup cannot be deleted behind prune's back either; released, it goes.
    work.ok(&["unhold", b1])
        .expect_mentions(&[b1.as_str(), "not under legal hold"]);
    assert_eq!(work.listed(b1).unwrap()["legal_hold"], false);
    let report = work.ok(&["prune", "--json"]).json();
    assert_eq!(report["deleted"], 1, "{report:#}");
    assert!(!backup_folder(&work, b1).exists());
    let left: Vec<String> = work
        .list()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, vec![b4.clone(), b3.clone()]);
    restores_exactly(&work, b3, &trees[2], "restore-b3");
}

#[test]
fn sources_without_keep_are_skipped_and_bad_arguments_are_usage_errors() {
    let work = Work::new();
    work.init();
    change_data(&work, 0);
    let a = work.backup();
    let b = work.backup();
    work.ok(&["prune"])
        .expect_mentions(&["skipped source files", "no `keep` policy"]);
    assert_eq!(work.list().len(), 2);
    assert!(backup_folder(&work, &a).exists() && backup_folder(&work, &b).exists());

    work.run(&["prune", "--source", "nope"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["nope"]);
    work.run(&["backup", "files", "--tag", "has space"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["tag"]);
    work.run(&["hold", "00000000"]).expect_code(EXIT_FAILED);
}

#[test]
fn tags_are_listed_and_survive_a_catalog_rebuild() {
    let work = Work::new();
    work.init();
    change_data(&work, 0);
    let id = work
        .ok(&["backup", "files", "--tag", "pre-upgrade"])
        .stdout
        .trim()
        .to_owned();
    let untagged = work.backup();
    assert_eq!(work.listed(&id).unwrap()["tag"], "pre-upgrade");
    assert_eq!(work.listed(&untagged).unwrap()["tag"], Value::Null);
    let list = work.ok(&["list"]);
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains(id.as_str()) && l.contains("pre-upgrade")),
        "{}",
        list.dump()
    );
    work.ok(&["show", &id])
        .expect_mentions(&["tag", "pre-upgrade"]);

    for e in fs::read_dir(work.path("var")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("catalog.db") {
            fs::remove_file(e.path()).unwrap();
        }
    }
    work.ok(&["catalog", "rebuild"]);
    assert_eq!(work.listed(&id).unwrap()["tag"], "pre-upgrade");
    assert_eq!(work.listed(&untagged).unwrap()["tag"], Value::Null);
}

/// Runs `f` on the work dir's catalog, the way a test pokes at state no command produces.
fn with_catalog<F, Fut>(work: &Work, f: F)
where
    F: FnOnce(backup_catalog::Catalog) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let url = format!("sqlite://{}", work.path("var/catalog.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let catalog = backup_catalog::Catalog::connect(&url).await.unwrap();
            f(catalog.clone()).await;
            catalog.close().await;
        });
}

/// Marks a backup `deleting` in the work dir's catalog, as a prune that crashed right after
/// the first step would leave it.
fn mark_deleting(work: &Work, id: &str) {
    let id: backup_core::BackupId = id.parse().unwrap();
    with_catalog(work, |catalog| async move {
        catalog.mark_deleting(id).await.unwrap();
    });
}

fn remove_dir(path: &Path) {
    fs::remove_dir_all(path).unwrap_or_else(|e| panic!("rm -r {}: {e}", path.display()));
}

#[test]
fn an_interrupted_deletion_is_finished_by_the_next_prune_or_gc() {
    let work = work_with_keep("{ last = 1 }");
    work.init();
    let mut ids = Vec::new();
    for n in 0..3 {
        change_data(&work, n);
        ids.push(work.backup());
    }
    let tree = snapshot(&work.data());
    let [c1, c2, c3] = [&ids[0], &ids[1], &ids[2]];

    // Crash after step 2 started: c1 is `deleting` and its key envelope is gone.
    mark_deleting(&work, c1);
    fs::remove_file(backup_folder(&work, c1).join("keys.json")).unwrap();
    assert_eq!(work.status_of(c1), "deleting");
    let target = work.path("restore-c1");
    work.run(&["restore", c1, "--target", target.to_str().unwrap()])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["being deleted"]);
    assert!(
        !target.exists(),
        "restore of a deleting backup wrote something"
    );
    work.run(&["verify", c1])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["being deleted"]);
    work.run(&["hold", c1])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["deleting"]);
    // verify --all is about complete backups: c1 is not one any more.
    work.ok(&["verify", "--all"]);

    let report = work.ok(&["prune", "--dry-run", "--json"]).json();
    assert_eq!(
        action_of(&report, c1),
        ("delete".into(), vec!["deleting".into()])
    );
    let report = work.ok(&["prune", "--json"]).json();
    assert_eq!(report["deleted"], 2, "{report:#}");
    for id in [c1, c2] {
        assert!(!backup_folder(&work, id).exists(), "{id} left objects");
        assert!(work.listed(id).is_none(), "{id} left rows");
    }

    // Crash after step 2 finished: c3's objects are gone, its rows are `deleting`. gc finishes
    // it (and so would prune); a newer backup is untouched.
    change_data(&work, 3);
    let c4 = work.backup();
    let tree4 = snapshot(&work.data());
    mark_deleting(&work, c3);
    remove_dir(&backup_folder(&work, c3));
    let gc = work.ok(&["gc", "--json"]).json();
    assert_eq!(gc["deletions_finished"], serde_json::json!([c3]), "{gc:#}");
    assert!(work.listed(c3).is_none());
    assert_eq!(work.status_of(&c4), "complete");
    restores_exactly(&work, &c4, &tree4, "restore-c4");
    assert_ne!(tree, tree4);
    work.ok(&["prune"]);
    assert_eq!(work.list().len(), 1);
}

/// Records the data artifact's copy of `id` in region-a as stored in `class` (as an archive
/// repository would), keeping its creation time.
fn set_storage_class(work: &Work, id: &str, class: &str) {
    let id: backup_core::BackupId = id.parse().unwrap();
    with_catalog(work, |catalog| async move {
        for a in catalog.backup_artifacts(id).await.unwrap() {
            for mut c in a.copies {
                c.storage_class = Some(class.to_owned());
                catalog.record_copy(&c).await.unwrap();
            }
        }
    });
}

#[test]
fn archive_copies_are_kept_for_their_minimum_storage_unless_forced() {
    let work = work_with_keep("{ last = 1 }");
    work.init();
    change_data(&work, 0);
    let old = work.backup();
    change_data(&work, 1);
    let new = work.backup();
    set_storage_class(&work, &old, "DEEP_ARCHIVE");

    let report = work.ok(&["prune", "--json"]).json();
    assert_eq!(report["planned_deletions"], 0, "{report:#}");
    assert_eq!(
        action_of(&report, &old),
        ("keep".into(), vec!["minimum_storage".into()])
    );
    work.ok(&["prune", "--dry-run"])
        .expect_mentions(&["minimum storage of DEEP_ARCHIVE in region-a until"]);
    assert!(backup_folder(&work, &old).exists());

    let forced = work.ok(&["prune", "--force", "--json"]).json();
    assert_eq!(forced["deleted"], 1, "{forced:#}");
    assert_eq!(
        action_of(&forced, &old),
        (
            "delete".into(),
            vec!["not_selected".into(), "minimum_storage".into()]
        )
    );
    assert!(forced["early_deletion_charge_usd"].as_f64().unwrap() > 0.0);
    assert!(!backup_folder(&work, &old).exists());
    assert_eq!(work.status_of(&new), "complete");
}
