//! `catalog rebuild`: the repository alone is enough to recreate the catalog.

use std::fs;

use serde_json::Value;

use crate::support::*;

/// The fields a rebuild must reproduce.
fn essentials(b: &Value) -> Value {
    serde_json::json!({
        "id": b["id"],
        "source": b["source"],
        "repository": b["repository"],
        "status": b["status"],
        "file_count": b["file_count"],
        "skipped_count": b["skipped_count"],
        "plaintext_bytes": b["plaintext_bytes"],
        "stored_bytes": b["stored_bytes"],
        "manifest_artifact": b["manifest_artifact"],
    })
}

fn sorted_essentials(list: &[Value]) -> Vec<Value> {
    let mut v: Vec<Value> = list.iter().map(essentials).collect();
    v.sort_by_key(|b| b["id"].as_str().unwrap().to_owned());
    v
}

#[test]
fn rebuild_imports_complete_backups_and_reports_incomplete_ones() {
    let work = Work::new();
    write_file(&work.data().join("one.txt"), b"first\n", 0o644);
    write_file(
        &work.data().join("dir/blob"),
        &mixed_bytes(300 << 10, 3),
        0o600,
    );
    work.init();
    let a = work.backup();
    write_file(&work.data().join("two.txt"), b"second\n", 0o644);
    let b = work.backup();
    let snap_b = snapshot(&work.data());
    write_file(&work.data().join("three.txt"), b"third\n", 0o644);
    let c = work.backup();
    let before: Vec<Value> = work
        .list()
        .into_iter()
        .filter(|x| x["id"] != c.as_str())
        .collect();
    assert_eq!(before.len(), 2);

    // C loses its key envelope: it looks like an interrupted backup now.
    fs::remove_file(work.repo().join(format!("backups/{c}/keys.json"))).unwrap();

    let mut removed = 0;
    for e in fs::read_dir(work.path("var")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("catalog.db") {
            fs::remove_file(e.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed >= 1, "the sqlite catalog file exists");
    assert!(work.list().is_empty(), "a fresh catalog knows no backups");

    let out = work.ok(&["catalog", "rebuild", "--json"]);
    let report = out.json();
    let mut imported: Vec<&str> = report["imported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    imported.sort();
    let mut expected = vec![a.as_str(), b.as_str()];
    expected.sort();
    assert_eq!(imported, expected, "{report:#}");
    let incomplete = report["incomplete"].as_array().unwrap();
    assert_eq!(incomplete.len(), 1, "{report:#}");
    assert_eq!(incomplete[0][0], c.as_str(), "{report:#}");

    let after = work.list();
    assert_eq!(
        sorted_essentials(&after),
        sorted_essentials(&before),
        "rebuilt catalog differs"
    );
    assert!(
        work.listed(&c).is_none(),
        "an incomplete backup is not imported"
    );

    work.ok(&["verify", "--all"]).expect_mentions(&[&a, &b]);
    work.ok(&["verify", "--all", "--quick"]);
    let target = work.path("restored");
    work.ok(&[
        "restore",
        "--source",
        "files",
        "--latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_same_tree(&snap_b, &snapshot(&target.join("data")), true);

    // Human output names the incomplete one too; a second rebuild imports nothing new.
    let again = work.ok(&["catalog", "rebuild"]);
    again.expect_mentions(&[&c]);
    assert_eq!(sorted_essentials(&work.list()), sorted_essentials(&before));
}

/// A database of its own on the local PostgreSQL, dropped at the end.
struct PgDatabase {
    name: String,
}

impl PgDatabase {
    fn create() -> Option<PgDatabase> {
        let name = format!(
            "backupd_it_{}_{}",
            std::process::id(),
            Rng::new(7).next_u64() % 1_000_000
        );
        let out = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qXc"])
            .arg(format!("CREATE DATABASE {name}"))
            .output();
        match out {
            Ok(o) if o.status.success() => Some(PgDatabase { name }),
            other => {
                if std::env::var_os("BACKUPD_SKIP_POSTGRES_TESTS").is_some() {
                    eprintln!(
                        "SKIPPED: PostgreSQL unavailable and BACKUPD_SKIP_POSTGRES_TESTS is set"
                    );
                    return None;
                }
                panic!(
                    "PostgreSQL at 127.0.0.1:5432 (database test, trust auth) is needed: {other:?}; \
                     start it or set BACKUPD_SKIP_POSTGRES_TESTS=1"
                )
            }
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qXc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

#[test]
fn a_postgres_catalog_works_like_the_sqlite_one() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let work = Work::with_config(&ConfigOpts {
        catalog_url: Some(db.url()),
        ..ConfigOpts::default()
    });
    write_file(
        &work.data().join("a/hello.txt"),
        b"hello postgres catalog\n",
        0o644,
    );
    write_file(
        &work.data().join("blob.bin"),
        &mixed_bytes(300_000, 3),
        0o600,
    );
    let source = snapshot(&work.data());
    work.init();
    let id = work.backup();
    assert_eq!(work.status_of(&id), "complete");
    work.ok(&["verify", &id]);
    let target = work.path("out");
    work.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(snapshot(&target.join("data")), source);

    // Rebuild into the same (emptied) Postgres catalog from the repository alone.
    let out = std::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &db.name, "-qXc"])
        .arg("DELETE FROM copies; DELETE FROM artifacts; DELETE FROM backups;")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(work.list().is_empty());
    work.ok(&["catalog", "rebuild"]).expect_mentions(&[&id]);
    assert_eq!(work.status_of(&id), "complete");
    work.ok(&["verify", "--all"]);
}
