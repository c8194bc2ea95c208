//! Runs the catalog conformance suite (from `backup-testing`) against every backend, plus
//! connection behaviour that only makes sense per backend.
//!
//! This is an integration test rather than a unit test because `backup-testing` depends on
//! this crate: only here do both see the same copy of its types.
//!
//! The Postgres tests need the server at `postgres://postgres@127.0.0.1:5432/test` (override
//! with `BACKUPD_TEST_POSTGRES_URL`); each creates and drops its own database. They fail if
//! the server is unreachable, unless `BACKUPD_SKIP_POSTGRES_TESTS=1`.

use std::future::Future;

use backup_catalog::{Backend, Catalog, CatalogError, ErrorKind};
use backup_testing::catalog::{assert_backend, catalog_conformance, PostgresTestDatabase};

fn sqlite_url(dir: &tempfile::TempDir, relative: &str) -> String {
    format!("sqlite://{}/{relative}", dir.path().display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::connect(&sqlite_url(&dir, "catalog.db"))
        .await
        .unwrap();
    assert_backend(&catalog, Backend::Sqlite);
    catalog_conformance(&catalog).await;
    catalog.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_memory_passes_conformance() {
    let catalog = Catalog::connect("sqlite::memory:").await.unwrap();
    assert_backend(&catalog, Backend::Sqlite);
    catalog_conformance(&catalog).await;
}

/// Runs `test` against a fresh Postgres database and drops the database afterwards, also
/// when the test panics.
async fn with_postgres<F, Fut>(test: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(db) = PostgresTestDatabase::create().await else {
        return;
    };
    // A spawned task turns a panic into a JoinError, so the database is dropped either way.
    let outcome = tokio::spawn(test(db.url().to_owned())).await;
    db.drop_database().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_conformance() {
    with_postgres(|url| async move {
        let catalog = Catalog::connect(&url).await.unwrap();
        assert_backend(&catalog, Backend::Postgres);
        catalog_conformance(&catalog).await;
        catalog.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_apply_twice() {
    with_postgres(|url| async move {
        let first = Catalog::connect(&url).await.unwrap();
        first.upsert_source("kept", "files").await.unwrap();
        // A second process opening the same catalog (concurrently) must not re-apply or fail.
        let second = Catalog::connect(&url).await.unwrap();
        let third = Catalog::connect(&url.replace("postgres://", "postgresql://"))
            .await
            .unwrap();
        for catalog in [&first, &second, &third] {
            let sources = catalog.list_sources().await.unwrap();
            assert_eq!(sources.len(), 1);
            assert_eq!(sources[0].name, "kept");
            catalog.close().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connect_errors_name_the_url_without_password() {
    // Only to honour BACKUPD_SKIP_POSTGRES_TESTS and fail clearly without a server.
    let Some(db) = PostgresTestDatabase::create().await else {
        return;
    };
    db.drop_database().await;
    let url = "postgres://postgres:hunter2@127.0.0.1:5432/backupd_no_such_database";
    let err = Catalog::connect(url).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CatalogError::Connect { .. }), "{err:?}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(
        !format!("{err:?}").contains("hunter2"),
        "password leaked: {err:?}"
    );
    assert!(
        text.contains("postgres://postgres:***@127.0.0.1:5432/backupd_no_such_database"),
        "{text}"
    );
}

#[tokio::test]
async fn sqlite_migrations_apply_twice() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir, "catalog.db");
    let first = Catalog::connect(&url).await.unwrap();
    first.upsert_source("kept", "files").await.unwrap();
    first.close().await;
    let second = Catalog::connect(&url).await.unwrap();
    // Open while `second` is still open, as a CLI does beside the daemon.
    let third = Catalog::connect(&url).await.unwrap();
    for catalog in [&second, &third] {
        let sources = catalog.list_sources().await.unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].name, "kept");
    }
}

#[tokio::test]
async fn sqlite_connect_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("does/not/exist/yet/catalog.db");
    assert!(!db_path.parent().unwrap().exists());
    let catalog = Catalog::connect(&sqlite_url(&dir, "does/not/exist/yet/catalog.db"))
        .await
        .unwrap();
    assert!(db_path.is_file(), "{} was not created", db_path.display());
    catalog.upsert_source("s", "files").await.unwrap();
    // WAL journal: the -wal file exists while connections are open.
    let wal = dir.path().join("does/not/exist/yet/catalog.db-wal");
    assert!(wal.exists(), "expected WAL journal at {}", wal.display());
    catalog.close().await;
}

#[tokio::test]
async fn sqlite_relative_path_is_relative_to_the_working_directory() {
    // `sqlite://relative/path.db` must not become `/relative/path.db`. Tests run in the crate
    // directory, so the database goes to a temporary directory there (removed on drop).
    let dir = tempfile::Builder::new()
        .prefix(".catalog-test-")
        .tempdir_in(".")
        .unwrap();
    let name = dir.path().file_name().unwrap().to_str().unwrap().to_owned();
    let url = format!("sqlite://{name}/sub/catalog.db");
    let catalog = Catalog::connect(&url).await.unwrap();
    assert!(dir.path().join("sub/catalog.db").is_file());
    catalog.close().await;
}

#[tokio::test]
async fn unsupported_url_scheme_names_the_url() {
    let err = Catalog::connect("mysql://root:hunter2@db.example/catalog")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CatalogError::UnsupportedUrl { .. }),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let text = err.to_string();
    assert!(
        text.contains("mysql://root:***@db.example/catalog"),
        "error should name the URL: {text}"
    );
    assert!(!text.contains("hunter2"), "password leaked: {text}");
    assert!(
        text.contains("sqlite://") && text.contains("postgres://"),
        "{text}"
    );

    let err = Catalog::connect("catalog.db").await.unwrap_err();
    assert!(err.to_string().contains("catalog.db"), "{err}");
}

#[tokio::test]
async fn sqlite_directory_that_cannot_be_created_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let err = Catalog::connect(&sqlite_url(&dir, "file/sub/catalog.db"))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::CreateDir { .. }), "{err:?}");
    assert!(err.to_string().contains("file/sub"), "{err}");
}
