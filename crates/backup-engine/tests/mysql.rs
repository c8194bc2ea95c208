//! MySQL dumps that meet DDL: a table altered (or dropped) after the snapshot began but
//! before its rows are read fails the backup by name, and nothing is recorded complete.
//! Runs on the local MariaDB (127.0.0.1:3306), a fresh database per test; skipped with a
//! message under BACKUPD_SKIP_MYSQL_TESTS=1.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupFilter, BackupStatus};
use backup_engine::policy::BackupType;
use backup_engine::{Config, Engine, Progress};
use backup_testing::mysql::{self, FreshDb};

fn config(dir: &std::path::Path, database: &str) -> Config {
    let root = dir.display();
    Config::parse(
        &format!(
            r#"[catalog]
url = "sqlite://{root}/catalog.db"
[encryption]
key-file = "{root}/repo.key"
[[repository]]
name = "local"
kind = "local"
path = "{root}/repo"
[[source]]
name = "shop"
kind = "mysql"
url = "mysql://root@127.0.0.1:3306/"
databases = ["{database}"]
repository = "local"
"#
        ),
        "test.toml",
    )
    .unwrap()
}

/// Runs a backup of `db` whose dump runs `ddl` (on another connection) just before it reads
/// table `b`; returns the backup's error and the catalog's backups.
async fn backup_with_ddl(db: &FreshDb, ddl: &'static str) -> (String, Vec<BackupStatus>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &db.name);
    let cancel = CancellationToken::new();
    backup_engine::init::run_init(&config, &cancel)
        .await
        .unwrap();
    let engine = Engine::open(config).await.unwrap();
    let name = db.name.clone();
    backup_engine::mysql::set_before_table_data_hook(Some(Arc::new(move |database, table| {
        let name = name.clone();
        Box::pin(async move {
            if database == name && table == "b" {
                tokio::task::spawn_blocking(move || mysql::sql(3306, Some(&name), ddl))
                    .await
                    .unwrap();
            }
        })
    })));
    let result = backup_engine::backup::run_backup(
        &engine,
        "shop",
        None,
        BackupType::Full,
        Arc::new(Progress::default()),
        &cancel,
    )
    .await;
    backup_engine::mysql::set_before_table_data_hook(None);
    let err = result
        .expect_err("a dump that met DDL must fail")
        .to_string();
    let statuses = engine
        .catalog
        .list_backups(&BackupFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.status)
        .collect();
    (err, statuses)
}

fn fill(db: &FreshDb) {
    db.sql(
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20)); \
         INSERT INTO a VALUES (1, 'one'), (2, 'two'); \
         CREATE TABLE b (id INT PRIMARY KEY, w INT, x VARCHAR(10)); \
         INSERT INTO b VALUES (1, 10, 'p'), (2, 20, 'q');",
    );
}

// One test function: the hook is process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_altered_or_dropped_during_the_dump_fails_the_backup() {
    if mysql::skip("a_table_altered_or_dropped_during_the_dump_fails_the_backup") {
        return;
    }
    for (ddl, what) in [
        ("ALTER TABLE b ADD COLUMN extra INT", "added column"),
        ("ALTER TABLE b DROP COLUMN x", "dropped column"),
        (
            "ALTER TABLE b MODIFY w BIGINT, ALGORITHM=COPY",
            "table rebuilt",
        ),
        ("DROP TABLE b", "table dropped"),
    ] {
        let db = FreshDb::local("ddl");
        fill(&db);
        let (err, statuses) = backup_with_ddl(&db, ddl).await;
        assert!(
            err.contains(&format!("table {}.b was altered during the dump", db.name))
                && err.contains("not complete"),
            "{what}: {err}"
        );
        assert_eq!(statuses, vec![BackupStatus::Failed], "{what}");
    }
}
