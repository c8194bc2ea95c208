//! Elasticsearch sources against the HTTP double of the snapshot API
//! (`backup_testing::elasticsearch`): snapshots driven on schedule-equivalent `backup` runs,
//! recorded, verified, pruned with the snapshot, restored with an indices filter and a rename;
//! and every fault (bad credentials, missing, read-only and unwritable repositories, PARTIAL
//! and FAILED snapshots, an unreachable cluster, a snapshot deleted behind backupd's back)
//! failing by name with nothing marked complete. A real cluster is tested when
//! BACKUPD_TEST_ELASTICSEARCH_URL is set.

use serde_json::json;

use backup_testing::elasticsearch::{EsAuth, EsDouble};

use crate::support::*;

const PASSWORD: &str = "es-Secret-42";

fn es_config(url: &str, extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "search"
kind = "elasticsearch"
url = "{url}"
snapshot-repository = "nightly"
indices = ["logs-*"]
poll-interval = "20ms"
repository = "region-a"
{extra}"#
    )
}

const AUTH: &str = "username = \"backup\"\npassword-env = \"ES_PASSWORD\"\n";

fn double() -> EsDouble {
    let es = EsDouble::start();
    es.state().auth = EsAuth {
        basic: Some(("backup".into(), PASSWORD.into())),
        api_key: None,
    };
    es.add_index("logs-1", 2, 100);
    es.add_index("logs-2", 1, 40);
    es.add_index("metrics", 1, 7);
    es
}

fn run_with_password(work: &Work, password: &str, args: &[&str]) -> Out {
    let mut cmd = work.command(args);
    cmd.env("ES_PASSWORD", password);
    let output = cmd.output().expect("run backupctl");
    Out {
        args: args.join(" "),
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn elasticsearch_snapshots_are_recorded_verified_pruned_and_restored() {
    let es = double();
    let work = Work::new();
    work.write_config(&es_config(
        &es.url(),
        &format!(
            "{AUTH}repository-type = \"fs\"\nrepository-settings = {{ location = \"/mnt/snapshots\" }}\nkeep = {{ last = 1 }}\n"
        ),
    ));
    work.init();
    let first = run_with_password(&work, PASSWORD, &["backup", "search"]);
    first.expect_code(EXIT_OK);
    let first = first.stdout.trim().to_owned();
    assert_eq!(work.status_of(&first), "complete");
    let requests = es.requests();
    for expected in [
        "PUT /_snapshot/nightly",
        "POST /_snapshot/nightly/_verify",
        "?wait_for_completion=false",
        "/_status",
    ] {
        assert!(
            requests.iter().any(|r| r.contains(expected)),
            "no {expected} in {requests:#?}"
        );
    }
    let shown = work.ok(&["show", &first, "--json"]).json();
    let snapshot = &shown["elasticsearch_snapshot"];
    let name = snapshot["snapshot"].as_str().unwrap().to_owned();
    assert_eq!(name, format!("backupd-{first}").to_lowercase());
    assert_eq!(snapshot["state"], "SUCCESS");
    assert_eq!(snapshot["indices"], json!(["logs-1", "logs-2"]));
    assert_eq!(snapshot["shards_total"], 3);
    assert!(snapshot["size_bytes"].as_u64().unwrap() > 100_000);
    assert_eq!(es.snapshot_names("nightly"), vec![name.clone()]);
    assert!(!work.ok(&["show", &first]).text().contains(PASSWORD));

    // verify says what it covered: the record, and the snapshot's state in the cluster.
    run_with_password(&work, PASSWORD, &["verify", &first])
        .expect_code(EXIT_OK)
        .expect_mentions(&["is SUCCESS in the cluster", "record"]);

    // Retention deletes the older backup together with its snapshot.
    let second = run_with_password(&work, PASSWORD, &["backup", "search"]);
    second.expect_code(EXIT_OK);
    let second = second.stdout.trim().to_owned();
    let second_name = format!("backupd-{second}").to_lowercase();
    assert_eq!(es.snapshot_names("nightly").len(), 2);
    run_with_password(&work, PASSWORD, &["prune", "--source", "search"]).expect_code(EXIT_OK);
    assert_eq!(es.snapshot_names("nightly"), vec![second_name.clone()]);
    assert!(work.listed(&first).is_none(), "pruned backup still listed");

    // Restore with an indices filter and a rename; the original index is left alone.
    let restored = run_with_password(
        &work,
        PASSWORD,
        &[
            "restore",
            "search",
            "--snapshot",
            &second_name,
            "--indices",
            "logs-1",
            "--rename-pattern",
            "(.+)",
            "--rename-replacement",
            "restored-$1",
            "--json",
        ],
    );
    restored.expect_code(EXIT_OK);
    assert_eq!(restored.json()["indices"], json!(["restored-logs-1"]));
    {
        let state = es.state();
        assert_eq!(state.indices["restored-logs-1"].docs, 100);
        assert!(!state.indices.contains_key("restored-logs-2"));
    }
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "search", "--snapshot"];
        args.extend_from_slice(extra);
        run_with_password(&work, PASSWORD, &args)
    };
    // Over open indices of the same name: Elasticsearch's refusal is shown.
    restore(&[&second_name])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["snapshot_restore_exception", "open index with same name"]);
    // A snapshot no backup of this source made.
    restore(&["backupd-someone-else"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["no complete backup with snapshot"]);

    // A snapshot deleted behind backupd's back: verify and restore say so.
    es.state().snapshots.get_mut("nightly").unwrap().clear();
    run_with_password(&work, PASSWORD, &["verify", &second])
        .expect_code(EXIT_INTEGRITY)
        .expect_mentions(&["missing from the cluster"]);
    restore(&[
        &second_name,
        "--rename-pattern",
        "(.+)",
        "--rename-replacement",
        "again-$1",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["snapshot_missing_exception", "deleted outside backupd"]);
}

/// Runs a backup that must fail; checks the message and that nothing is complete.
#[track_caller]
fn expect_failed_backup(work: &Work, password: &str, needles: &[&str]) {
    let out = run_with_password(work, password, &["backup", "search"]);
    out.expect_code(EXIT_FAILED).expect_mentions(needles);
    assert!(
        !out.text().contains(PASSWORD),
        "password leaked: {}",
        out.dump()
    );
    let listed = work.list();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|b| b["status"] == "failed"),
        "a failed snapshot left a backup that is not failed: {listed:?}"
    );
}

#[test]
fn elasticsearch_faults_fail_by_name_and_nothing_is_complete() {
    let es = double();
    let work = Work::new();
    work.write_config(&es_config(&es.url(), AUTH));
    work.init();

    expect_failed_backup(
        &work,
        "wrong",
        &["authentication failed", "security_exception"],
    );
    expect_failed_backup(
        &work,
        PASSWORD,
        &[
            "snapshot repository nightly is missing",
            "repository_missing_exception",
        ],
    );

    es.add_repository(
        "nightly",
        json!({ "location": "/mnt/ro", "readonly": true }),
    );
    expect_failed_backup(
        &work,
        PASSWORD,
        &["snapshot repository nightly is read-only"],
    );

    es.add_repository("nightly", json!({ "location": "/mnt/unshared" }));
    es.state()
        .unwritable_locations
        .insert("/mnt/unshared".into());
    expect_failed_backup(
        &work,
        PASSWORD,
        &["failed verification", "repository_verification_exception"],
    );

    es.add_repository("nightly", json!({ "location": "/mnt/snapshots" }));
    es.state().failing_indices.insert(
        "logs-2".into(),
        "IndexShardSnapshotFailedException[disk full]".into(),
    );
    expect_failed_backup(
        &work,
        PASSWORD,
        &[
            "ended PARTIAL",
            "1 of 3 shards failed",
            "[logs-2][0]: IndexShardSnapshotFailedException[disk full]",
            "not complete",
        ],
    );
    assert!(
        es.snapshot_names("nightly").is_empty(),
        "the PARTIAL snapshot was not deleted"
    );

    es.state()
        .failing_indices
        .insert("logs-1".into(), "node left".into());
    expect_failed_backup(&work, PASSWORD, &["ended FAILED", "3 of 3 shards failed"]);
    assert!(es.snapshot_names("nightly").is_empty());

    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    work.write_config(&es_config(&format!("http://127.0.0.1:{port}"), AUTH));
    expect_failed_backup(
        &work,
        PASSWORD,
        &["cluster unreachable", &format!("127.0.0.1:{port}")],
    );
    // Credentials in the URL are refused.
    work.write_config(&es_config(
        &format!("http://backup:{PASSWORD}@127.0.0.1:{port}"),
        "",
    ));
    let out = work.run(&["backup", "search"]);
    out.expect_code(EXIT_USAGE)
        .expect_mentions(&["must not contain credentials"]);
    assert!(!out.text().contains(PASSWORD));
}

#[test]
fn elasticsearch_api_keys_and_a_catalog_rebuild_keep_the_snapshot_record() {
    let es = EsDouble::start();
    es.state().auth = EsAuth {
        basic: None,
        api_key: Some(("key-id".into(), "key-secret".into())),
    };
    es.add_index("logs-a", 1, 5);
    es.add_repository("nightly", json!({ "location": "/mnt/snapshots" }));
    let work = Work::new();
    work.write_config(&es_config(&es.url(), "api-key-env = \"ES_API_KEY\"\n"));
    work.init();
    let mut cmd = work.command(&["backup", "search"]);
    cmd.env("ES_API_KEY", "key-id:key-secret");
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let before = work.ok(&["show", &id, "--json"]).json()["elasticsearch_snapshot"].clone();
    assert_eq!(before["indices"], json!(["logs-a"]));

    for e in std::fs::read_dir(work.path("var")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with("catalog.db") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    work.ok(&["catalog", "rebuild"]);
    let after = work.ok(&["show", &id, "--json"]).json()["elasticsearch_snapshot"].clone();
    assert_eq!(before, after, "rebuild lost the snapshot record");
}

/// Against a real cluster: `BACKUPD_TEST_ELASTICSEARCH_URL` (e.g. http://127.0.0.1:9200, no
/// credentials in it; `BACKUPD_TEST_ELASTICSEARCH_PASSWORD` for user `elastic`) whose
/// `path.repo` includes `BACKUPD_TEST_ELASTICSEARCH_LOCATION` (default /tmp/es-snapshots).
#[test]
fn elasticsearch_real_cluster_round_trip() {
    let Ok(url) = std::env::var("BACKUPD_TEST_ELASTICSEARCH_URL") else {
        eprintln!("skipping elasticsearch_real_cluster_round_trip: BACKUPD_TEST_ELASTICSEARCH_URL is not set (no cluster can run here; the double covers the API)");
        return;
    };
    let location = std::env::var("BACKUPD_TEST_ELASTICSEARCH_LOCATION")
        .unwrap_or_else(|_| "/tmp/es-snapshots".into());
    let password = std::env::var("BACKUPD_TEST_ELASTICSEARCH_PASSWORD").ok();
    let auth = if password.is_some() {
        "username = \"elastic\"\npassword-env = \"ES_PASSWORD\"\n"
    } else {
        ""
    };
    let work = Work::new();
    work.write_config(&es_config(
        &url,
        &format!(
            "{auth}repository-type = \"fs\"\nrepository-settings = {{ location = \"{location}\" }}\n"
        )
        .replace("indices = [\"logs-*\"]", "indices = [\"backupd-it-*\"]"),
    ));
    work.init();
    let http = |method: &str, path: &str, body: &str| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "-X", method, "-H", "Content-Type: application/json"]);
        if let Some(p) = &password {
            cmd.args(["-u", &format!("elastic:{p}")]);
        }
        cmd.arg(format!("{url}{path}")).args(["-d", body]);
        String::from_utf8_lossy(&cmd.output().expect("curl").stdout).into_owned()
    };
    http("PUT", "/backupd-it-logs", "{}");
    http(
        "POST",
        "/backupd-it-logs/_doc?refresh=true",
        "{\"msg\":\"hello\"}",
    );
    let out = run_with_password(
        &work,
        password.as_deref().unwrap_or(""),
        &["backup", "search"],
    );
    out.expect_code(EXIT_OK);
    let id = out.stdout.trim().to_owned();
    let name = format!("backupd-{id}").to_lowercase();
    run_with_password(&work, password.as_deref().unwrap_or(""), &["verify", &id])
        .expect_code(EXIT_OK);
    run_with_password(
        &work,
        password.as_deref().unwrap_or(""),
        &[
            "restore",
            "search",
            "--snapshot",
            &name,
            "--rename-pattern",
            "backupd-it-(.+)",
            "--rename-replacement",
            "backupd-restored-$1",
        ],
    )
    .expect_code(EXIT_OK);
    let count = http("GET", "/backupd-restored-logs/_count", "{}");
    assert!(count.contains("\"count\":1"), "{count}");
    http("DELETE", "/backupd-restored-logs", "");
    http("DELETE", "/backupd-it-logs", "");
    http("DELETE", &format!("/_snapshot/nightly/{name}"), "");
}

#[test]
fn an_elasticsearch_drill_restores_renamed_indices_counts_them_and_deletes_them() {
    let es = double();
    let work = Work::new();
    work.write_config(&es_config(
        &es.url(),
        &format!(
            "{AUTH}repository-type = \"fs\"\nrepository-settings = {{ location = \"/mnt/snapshots\" }}\n[source.drill]\ntarget = \"./scratch\"\n"
        ),
    ));
    work.init();
    let backup = run_with_password(&work, PASSWORD, &["backup", "search"]);
    backup.expect_code(EXIT_OK);
    let id = backup.stdout.trim().to_owned();
    // Documents written after the snapshot do not change what the drill expects.
    es.state().indices.get_mut("logs-1").unwrap().docs = 150;

    let out = run_with_password(&work, PASSWORD, &["drill", "search", "--now", "--json"]);
    out.expect_code(EXIT_OK);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    assert_eq!(drill["backup_id"], id.as_str());
    let counts = drill["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "counts")
        .unwrap()
        .clone();
    assert_eq!(counts["passed"], true, "{drill:#}");
    assert!(
        counts["detail"].as_str().unwrap().starts_with("2 indices"),
        "{drill:#}"
    );
    let requests = es.requests();
    let restore = requests
        .iter()
        .find(|r| r.contains("/_restore"))
        .expect("a restore request");
    assert!(restore.starts_with("POST /_snapshot/nightly/"), "{restore}");
    // Restored under the prefix, then deleted one by one; the real indices are untouched.
    let deletes: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("DELETE /backupd-drill-"))
        .collect();
    assert_eq!(deletes.len(), 2, "{requests:#?}");
    let left: Vec<String> = es.state().indices.keys().cloned().collect();
    assert_eq!(left, ["logs-1", "logs-2", "metrics"]);

    // A restored index with other documents than the backup counted fails the drill: here
    // the snapshot itself is changed behind backupd's back.
    {
        let mut state = es.state();
        for snapshots in state.snapshots.values_mut() {
            for snapshot in snapshots.values_mut() {
                snapshot.indices.get_mut("logs-2").unwrap().docs = 1;
            }
        }
    }
    let out = run_with_password(&work, PASSWORD, &["drill", "search", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    let failed = out.json();
    assert_eq!(failed["status"], "failed", "{}", out.dump());
    let detail = failed["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "counts")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("logs-2: 1 documents, the backup counted 40"),
        "{detail}"
    );
    let left: Vec<String> = es.state().indices.keys().cloned().collect();
    assert_eq!(left, ["logs-1", "logs-2", "metrics"]);
}
