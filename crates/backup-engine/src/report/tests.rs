//! The reports over a real (SQLite) catalog: what is derived from which records, and the
//! JSON each report prints, compared with the snapshots in `snapshots/` (the JSON is the
//! interface of `--format json` and `/api/v1/report/recovery`; a change to it must show up
//! in review). A missing snapshot is written; `BACKUPD_UPDATE_SNAPSHOTS=1` rewrites them.

use std::path::PathBuf;

use backup_catalog::{
    ArtifactRecord, BackupCompletion, Catalog, CopyRecord, NewBackup, ObjectRequests,
    PostgresBackupRecord, RequestOperation, WalFileRecord,
};
use backup_core::recovery::Verdict;
use backup_core::{ArtifactId, BackupId};
use chrono::{DateTime, TimeDelta, Utc};

use super::*;
use crate::{Config, Engine};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config_text(url: &str) -> String {
    format!(
        r#"
[catalog]
url = "{url}"
[encryption]
key-file = "var/keys/repo.key"
[cost]
regions = {{ region-a = "us-east-1", region-b = "us-west-2", archive = "us-east-1" }}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[repository]]
name = "region-b"
kind = "local"
path = "var/repo/region-b"
[[repository]]
name = "archive"
kind = "s3"
bucket = "backups-archive"
region = "us-east-1"
[[source]]
name = "app"
kind = "files"
paths = ["./data"]
repository = "region-a"
tier = "premium"
keep = {{ last = 3 }}
copy-to = ["region-b", {{ to = "archive", storage-class = "DEEP_ARCHIVE" }}]
[[source]]
name = "pg"
kind = "postgres"
connection = "postgres://postgres@127.0.0.1:5432/postgres"
data-directory = "/var/lib/postgresql/data"
repository = "region-a"
tier = "enterprise"
[[source]]
name = "stale"
kind = "files"
paths = ["./stale"]
repository = "region-a"
tier = "standard"
[[source]]
name = "legacy"
kind = "files"
paths = ["./legacy"]
repository = "region-a"
"#
    )
}

/// Fixed ids, so the snapshots are stable.
fn backup_id(n: u128) -> BackupId {
    BackupId::from_uuid(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_8000_0000_0000_0000 + n,
    ))
}

fn artifact_id(n: u128) -> ArtifactId {
    ArtifactId::from_uuid(uuid::Uuid::from_u128(
        0x0193_0000_0000_7000_9000_0000_0000_0000 + n,
    ))
}

/// A copy to record: repository, storage class, data and manifest stored sizes, when.
type CopySpec<'a> = (&'a str, Option<&'a str>, u64, u64, DateTime<Utc>);

/// A complete backup with a data and a manifest artifact, each with a copy in `copies`
/// (repository, storage class, stored size, when recorded).
async fn backup(
    catalog: &Catalog,
    n: u128,
    source: &str,
    finished: DateTime<Utc>,
    copies: &[CopySpec<'_>],
) -> BackupId {
    let id = backup_id(n);
    catalog.upsert_source(source, "files").await.unwrap();
    catalog
        .begin_backup(&NewBackup {
            id,
            source: source.into(),
            repository: "region-a".into(),
            backup_type: "full".into(),
            started_at: finished - TimeDelta::minutes(5),
            host: "test".into(),
            pid: 1,
            tool_version: "test".into(),
            tag: None,
        })
        .await
        .unwrap();
    let mut manifest = None;
    for (i, role) in ["data", "manifest"].into_iter().enumerate() {
        let aid = artifact_id(n * 10 + i as u128);
        catalog
            .record_artifact(&ArtifactRecord {
                id: aid,
                backup_id: id,
                role: role.into(),
                plaintext_size: 100,
                plaintext_sha256: "a".repeat(64),
                segment_count: 1,
                created_at: finished - TimeDelta::minutes(1),
            })
            .await
            .unwrap();
        for (repo, class, data_size, manifest_size, at) in copies {
            catalog
                .record_copy(&CopyRecord {
                    artifact_id: aid,
                    repository: (*repo).into(),
                    object_key: format!("{repo}/{aid}"),
                    stored_size: if role == "data" {
                        *data_size
                    } else {
                        *manifest_size
                    },
                    stored_sha256: "b".repeat(64),
                    storage_class: if role == "data" {
                        class.map(str::to_owned)
                    } else {
                        None
                    },
                    verified_at: *at,
                })
                .await
                .unwrap();
        }
        manifest = Some(aid);
    }
    catalog
        .complete_backup(
            id,
            &BackupCompletion {
                finished_at: finished,
                file_count: 1,
                skipped_count: 0,
                plaintext_bytes: 100,
                stored_bytes: 100,
                manifest_artifact: manifest.unwrap(),
            },
        )
        .await
        .unwrap();
    id
}

async fn wal(catalog: &Catalog, segno: u32, archived_at: DateTime<Utc>) {
    let name = format!("0000000100000000{segno:08X}");
    catalog
        .record_wal_file(&WalFileRecord {
            source: "pg".into(),
            file_name: name.clone(),
            timeline: 1,
            repository: "region-a".into(),
            object_key: format!("wal/{name}"),
            plaintext_size: 16 << 20,
            plaintext_sha256: "c".repeat(64),
            stored_size: 1 << 20,
            stored_sha256: "d".repeat(64),
            archived_at,
        })
        .await
        .unwrap();
}

async fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let config = Config::parse(&config_text(&url), "report.toml").unwrap();
    let catalog = Catalog::connect(&url).await.unwrap();
    (dir, Engine { config, catalog })
}

const GIB: u64 = 1 << 30;

/// The catalog of the examples: see each step.
async fn populate(engine: &Engine) {
    let c = &engine.catalog;
    // app: a backup of November 16 copied to region-b (another region) and to the archive
    // (same region, Deep Archive), and one of December 1 11:50.
    let nov16 = t("2026-11-16T00:00:00Z");
    backup(
        c,
        1,
        "app",
        nov16,
        &[
            ("region-a", None, 4 * GIB, 1 << 20, nov16),
            (
                "region-b",
                None,
                4 * GIB,
                1 << 20,
                nov16 + TimeDelta::hours(1),
            ),
            (
                "archive",
                Some("DEEP_ARCHIVE"),
                4 * GIB,
                1 << 20,
                nov16 + TimeDelta::hours(2),
            ),
        ],
    )
    .await;
    let dec1 = t("2026-12-01T11:50:00Z");
    backup(c, 2, "app", dec1, &[("region-a", None, GIB, 1 << 20, dec1)]).await;
    // A restore of the November backup read 3 objects (envelope, manifest, data) on Nov 20.
    c.record_requests(&ObjectRequests {
        source: "app".into(),
        repository: "region-a".into(),
        storage_class: None,
        operation: RequestOperation::Get,
        tier: None,
        requests: 3,
        bytes: 4 * GIB + (1 << 20),
        requested_at: t("2026-11-20T09:00:00Z"),
    })
    .await
    .unwrap();

    // pg: a base backup ending at 11:00 (its WAL: segments 2-3), then segments 4 and 5
    // archived without a gap, then 7 after a gap (6 missing).
    let base = backup(
        c,
        3,
        "pg",
        t("2026-12-01T11:00:00Z"),
        &[("region-a", None, GIB, 1 << 10, t("2026-12-01T11:00:00Z"))],
    )
    .await;
    c.record_postgres_backup(&PostgresBackupRecord {
        backup_id: base,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/3000100".into(),
        timeline: 1,
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000003".into(),
        start_time: t("2026-12-01T10:55:00Z"),
        stop_time: t("2026-12-01T11:00:00Z"),
        parent_backup_id: None,
    })
    .await
    .unwrap();
    for (segno, at) in [
        (2, "2026-12-01T10:58:00Z"),
        (3, "2026-12-01T11:00:01Z"),
        (4, "2026-12-01T11:30:00Z"),
        (5, "2026-12-01T11:57:00Z"),
        (7, "2026-12-01T11:59:00Z"),
    ] {
        wal(c, segno, t(at)).await;
    }

    // stale: its newest backup is 6 hours old.
    backup(
        c,
        4,
        "stale",
        t("2026-12-01T06:00:00Z"),
        &[("region-a", None, GIB, 1 << 10, t("2026-12-01T06:00:00Z"))],
    )
    .await;
}

fn sorted_keys(value: &serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(sorted_keys).collect())
        }
        other => other.clone(),
    }
}

fn snapshot(name: &str, actual: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/report/snapshots")
        .join(name);
    // Keys sorted whatever serde_json's `preserve_order` feature (a dependency may turn it
    // on for the whole build), so the text does not depend on which crates are linked.
    let text = serde_json::to_string_pretty(&sorted_keys(actual)).unwrap() + "\n";
    // A new snapshot is written (review and commit it); an existing one must match.
    if std::env::var_os("BACKUPD_UPDATE_SNAPSHOTS").is_some() || !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        eprintln!("wrote snapshot {}: review and commit it", path.display());
        return;
    }
    // Text, not parsed values: serde_json's default float parsing does not always round-trip.
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(
        expected == text,
        "report JSON differs from {} (run with BACKUPD_UPDATE_SNAPSHOTS=1 to accept, then \
         review the diff):\n{text}",
        path.display()
    );
}

#[tokio::test]
async fn recovery_report_includes_archived_wal_and_says_no_drill_yet() {
    let (_dir, engine) = engine().await;
    populate(&engine).await;
    let now = t("2026-12-01T12:00:00Z");
    let report = recovery_report(&engine, now).await.unwrap();
    let by = |name: &str| report.sources.iter().find(|s| s.source == name).unwrap();

    // app: backup at 11:50, premium RPO 15 min: met; no drill: untested.
    let app = by("app");
    assert_eq!(app.achieved_rpo_seconds, Some(600));
    assert_eq!(app.target_rpo_seconds, Some(15 * 60));
    assert_eq!(app.rto_status, "no drill yet");
    assert_eq!(app.verdict, Verdict::Untested);

    // pg: the base backup alone would be an hour old (over the 5-minute enterprise RPO);
    // its WAL runs on without a gap to segment 5, archived at 11:57: 3 minutes.
    let pg = by("pg");
    assert_eq!(pg.restorable_point, Some(t("2026-12-01T11:57:00Z")));
    assert_eq!(pg.achieved_rpo_seconds, Some(180));
    assert!(
        pg.restorable_from
            .as_deref()
            .unwrap()
            .ends_with("WAL to 000000010000000000000005"),
        "{pg:?}"
    );
    assert_eq!(pg.verdict, Verdict::Untested);

    assert_eq!(by("stale").verdict, Verdict::RpoBreached);
    assert_eq!(by("legacy").verdict, Verdict::NoRestorablePoint);
    assert!(report.any_breach());

    let json = serde_json::to_value(&report).unwrap();
    snapshot("recovery.json", &json);

    let csv = render_recovery(&report, ReportFormat::Csv);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("source,kind,tier,target_rpo_seconds"));
    let table = render_recovery(&report, ReportFormat::Table);
    assert!(table.contains("no drill yet"), "{table}");
}

#[tokio::test]
async fn a_gap_in_the_base_backups_own_wal_falls_back_to_an_older_base() {
    let (_dir, engine) = engine().await;
    populate(&engine).await;
    // Forget segment 3 (the base's stop segment): the base can no longer be made
    // consistent, and no older base exists.
    engine
        .catalog
        .forget_wal_files("pg", &["000000010000000000000003".to_owned()])
        .await
        .unwrap();
    let pg = &engine.config.sources[1];
    assert_eq!(newest_restorable_point(&engine, pg).await.unwrap(), None);
}

#[tokio::test]
async fn cost_report_is_derived_from_the_catalog() {
    let (_dir, engine) = engine().await;
    populate(&engine).await;
    let report = cost_report(&engine, "2026-11".parse().unwrap())
        .await
        .unwrap();
    let by = |repo: &str| report.rows.iter().find(|r| r.repository == repo).unwrap();
    // November holds only the Nov 16 backup: 4 GiB + 1 MiB per repository for 15 of 30
    // days.
    let half = (4.0 + 1.0 / 1024.0) / 2.0;
    let a = by("region-a");
    assert!((a.stored_gb_month - half).abs() < 1e-9, "{a:?}");
    // One PUT each for the data and manifest objects (local repositories: no multipart),
    // plus the key envelope.
    assert_eq!(a.put_requests, 3);
    assert_eq!(a.get_requests, 3);
    assert_eq!(a.region, "us-east-1");
    assert_eq!(a.inter_region_transfer_gb, 0.0);
    let b = by("region-b");
    assert_eq!(b.region, "us-west-2");
    assert!((b.inter_region_transfer_gb - (4.0 + 1.0 / 1024.0)).abs() < 1e-9);
    // The archive is in region-a's region: no transfer; its data object is Deep Archive and
    // its manifest STANDARD, so two rows.
    let archive: Vec<_> = report
        .rows
        .iter()
        .filter(|r| r.repository == "archive")
        .map(|r| (r.storage_class.as_str(), r.inter_region_transfer_gb))
        .collect();
    assert_eq!(archive, [("DEEP_ARCHIVE", 0.0), ("STANDARD", 0.0)]);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    snapshot("cost-2026-11.json", &serde_json::to_value(&report).unwrap());

    let csv = render_cost(&report, ReportFormat::Csv);
    assert!(csv.starts_with("month,source,repository,region,storage_class,stored_gb_month,"));
    assert_eq!(csv.lines().count(), 1 + report.rows.len() + 3);
}

#[tokio::test]
async fn cost_config_names_only_configured_repositories() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let text = config_text(&url).replace("archive = \"us-east-1\"", "nowhere = \"us-east-1\"");
    let config = Config::parse(&text, "report.toml").unwrap();
    let engine = Engine {
        config,
        catalog: Catalog::connect(&url).await.unwrap(),
    };
    let e = cost_report(&engine, "2026-11".parse().unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("nowhere"), "{e}");
    assert_eq!(e.exit_code(), crate::exit::USAGE);
}
