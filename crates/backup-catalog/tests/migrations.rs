//! Upgrades: a catalog written by schema v1 (migration 0001 only) must open with every later
//! migration applied, with its rows intact and its foreign keys still enforced. SQLite
//! rebuilds `backups` (and the tables that reference it) in 0002 to change a CHECK constraint,
//! which is where data or constraints could be lost.

use std::borrow::Cow;
use std::path::Path;

use backup_catalog::{BackupStatus, Catalog, CatalogError};
use backup_core::{ArtifactId, BackupId};
use backup_testing::catalog::{at, PostgresTestDatabase};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::Row;

/// The migrator of `backend` holding only migration 0001.
async fn v1_migrator(backend: &str) -> Migrator {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../migrations/{backend}"));
    let mut migrator = Migrator::new(dir).await.expect("reading migrations");
    let v1: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version == 1)
        .cloned()
        .collect();
    assert_eq!(v1.len(), 1);
    migrator.migrations = Cow::Owned(v1);
    migrator
}

/// What the v1 catalog holds: a complete backup with a data artifact copied to two
/// repositories (one archive) and a manifest, and a failed backup with no artifacts.
struct V1 {
    complete: BackupId,
    failed: BackupId,
    data: ArtifactId,
    manifest: ArtifactId,
    verified: DateTime<Utc>,
}

const SHA: &str = "abababababababababababababababababababababababababababababababab";

macro_rules! write_v1 {
    ($pool:expr) => {{
        let pool = $pool;
        let v1 = V1 {
            complete: BackupId::new(),
            failed: BackupId::new(),
            data: ArtifactId::new(),
            manifest: ArtifactId::new(),
            verified: at("2024-05-02T00:00:00.123456Z"),
        };
        let t0 = at("2024-05-01T00:00:00Z");
        sqlx::query("INSERT INTO sources (name, kind, created_at) VALUES ('files', 'files', $1)")
            .bind(t0)
            .execute(pool)
            .await
            .unwrap();
        for (id, status) in [(v1.complete, "complete"), (v1.failed, "failed")] {
            sqlx::query(
                "INSERT INTO backups (id, source, repository, backup_type, status, started_at, \
                 finished_at, heartbeat_at, host, pid, tool_version, file_count, stored_bytes, \
                 manifest_artifact, error) \
                 VALUES ($1, 'files', 'region-a', 'full', $2, $3, $3, $3, 'h', 7, 'v1', 3, 99, \
                 $4, $5)",
            )
            .bind(id.to_string())
            .bind(status)
            .bind(t0)
            .bind((status == "complete").then(|| v1.manifest.to_string()))
            .bind((status == "failed").then_some("disk full"))
            .execute(pool)
            .await
            .unwrap();
        }
        for (artifact, role) in [(v1.data, "data"), (v1.manifest, "manifest")] {
            sqlx::query(
                "INSERT INTO artifacts (id, backup_id, role, plaintext_size, plaintext_sha256, \
                 segment_count, created_at) VALUES ($1, $2, $3, 10, $4, 1, $5)",
            )
            .bind(artifact.to_string())
            .bind(v1.complete.to_string())
            .bind(role)
            .bind(SHA)
            .bind(t0)
            .execute(pool)
            .await
            .unwrap();
        }
        for (artifact, repository, class) in [
            (v1.data, "region-a", None),
            (v1.data, "vault", Some("DEEP_ARCHIVE")),
            (v1.manifest, "region-a", None),
        ] {
            sqlx::query(
                "INSERT INTO copies (artifact_id, repository, object_key, stored_size, \
                 stored_sha256, storage_class, verified_at) VALUES ($1, $2, 'k', 33, $3, $4, $5)",
            )
            .bind(artifact.to_string())
            .bind(repository)
            .bind(SHA)
            .bind(class)
            .bind(v1.verified)
            .execute(pool)
            .await
            .unwrap();
        }
        v1
    }};
}

/// Opens the upgraded catalog and checks that the v1 rows survived and constraints hold.
async fn check_upgraded(catalog: &Catalog, v1: &V1) {
    let complete = catalog.get_backup(v1.complete).await.unwrap().unwrap();
    assert_eq!(complete.status, BackupStatus::Complete);
    assert_eq!(complete.manifest_artifact, Some(v1.manifest));
    assert_eq!((complete.file_count, complete.stored_bytes), (3, 99));
    assert_eq!((complete.tag, complete.legal_hold), (None, false));
    let failed = catalog.get_backup(v1.failed).await.unwrap().unwrap();
    assert_eq!(failed.status, BackupStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("disk full"));

    let artifacts = catalog.backup_artifacts(v1.complete).await.unwrap();
    assert_eq!(artifacts.len(), 2);
    let copies = catalog.stored_copies("files").await.unwrap();
    assert_eq!(copies.len(), 3);
    assert!(copies.iter().all(|c| c.created_at == v1.verified));
    assert!(copies
        .iter()
        .any(|c| c.repository == "vault" && c.storage_class.as_deref() == Some("DEEP_ARCHIVE")));

    // Foreign keys still hold: the catalog reports their violations as these errors.
    let mut orphan = catalog.backup_artifacts(v1.complete).await.unwrap()[0].copies[0].clone();
    orphan.artifact_id = ArtifactId::new();
    assert!(matches!(
        catalog.record_copy(&orphan).await,
        Err(CatalogError::ArtifactNotFound { .. })
    ));
    let mut new = backup_catalog::NewBackup {
        id: BackupId::new(),
        source: "unregistered".into(),
        repository: "region-a".into(),
        backup_type: "full".into(),
        started_at: Utc::now(),
        host: "h".into(),
        pid: 1,
        tool_version: "v2".into(),
        tag: Some("t".into()),
    };
    assert!(matches!(
        catalog.begin_backup(&new).await,
        Err(CatalogError::UnknownSource { .. })
    ));
    new.source = "files".into();
    catalog.begin_backup(&new).await.unwrap();

    // The new status and columns work.
    catalog.set_legal_hold(v1.failed, true).await.unwrap();
    catalog.set_legal_hold(v1.failed, false).await.unwrap();
    let marked = catalog.mark_deleting(v1.complete).await.unwrap();
    assert_eq!(marked.status, BackupStatus::Deleting);
    catalog.delete_backup(v1.complete).await.unwrap();
    assert!(catalog.stored_copies("files").await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_v1_catalog_upgrades_with_data_and_foreign_keys() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/catalog.db", dir.path().display());
    let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true).foreign_keys(true))
        .await
        .unwrap();
    v1_migrator("sqlite").await.run(&pool).await.unwrap();
    let v1 = write_v1!(&pool);
    pool.close().await;

    let catalog = Catalog::connect(&url).await.unwrap();
    check_upgraded(&catalog, &v1).await;
    catalog.close().await;

    // Nothing dangles and the REFERENCES clauses name the final tables.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let violations = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(violations.is_empty(), "{} violations", violations.len());
    for (table, parent) in [("artifacts", "backups"), ("copies", "artifacts")] {
        let row = sqlx::query(&format!("PRAGMA foreign_key_list({table})"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(row.get::<String, _>("table"), parent, "{table}");
    }
    let leftovers: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name LIKE '%_new'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_v1_catalog_upgrades_with_data_and_foreign_keys() {
    let Some(db) = PostgresTestDatabase::create().await else {
        return;
    };
    let url = db.url().to_owned();
    let outcome = tokio::spawn(async move {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        v1_migrator("postgres").await.run(&pool).await.unwrap();
        let v1 = write_v1!(&pool);
        pool.close().await;
        let catalog = Catalog::connect(&url).await.unwrap();
        check_upgraded(&catalog, &v1).await;
        catalog.close().await;
    })
    .await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
