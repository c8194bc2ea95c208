//! backupd archives every MongoDB source's oplog continuously, under a catalog lease: two
//! replicas on one PostgreSQL catalog, one archives; when it is killed with SIGKILL the
//! other takes the lease over once it passes and goes on from the last recorded slice, so
//! the slices stay contiguous and cover every write. `BACKUPD_SKIP_MONGO_TESTS=1` skips it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use backup_catalog::OplogSliceRecord;
use backup_testing::servers::{skip_mongo_tests, SecantusDb};
use mongodb::bson::{doc, Document};
use support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Inserts `count` documents into `app.live` from `first` on; returns the oplog position of
/// the last one (`(seconds, increment)`).
async fn insert(client: &mongodb::Client, first: i64, count: i64) -> (u32, u32) {
    let live = client.database("app").collection::<Document>("live");
    for i in first..first + count {
        live.insert_one(doc! { "_id": i }).await.unwrap();
    }
    let entry = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! { "ns": "app.live", "o._id": first + count - 1 })
        .await
        .unwrap()
        .expect("the insert's oplog entry");
    let ts = entry.get_timestamp("ts").unwrap();
    (ts.time, ts.increment)
}

fn slices(engine: &backup_engine::Engine, rt: &tokio::runtime::Runtime) -> Vec<OplogSliceRecord> {
    rt.block_on(engine.catalog.oplog_slices("mongo")).unwrap()
}

/// Waits until the archived slices reach `position`; returns them.
fn wait_archived(
    engine: &backup_engine::Engine,
    rt: &tokio::runtime::Runtime,
    position: (u32, u32),
    replicas: &[&Daemon],
) -> Vec<OplogSliceRecord> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let slices = slices(engine, rt);
        if slices
            .last()
            .is_some_and(|s| (s.last.t, s.last.i) >= position)
        {
            return slices;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = replicas.iter().map(|d| d.log_text()).collect();
            panic!(
                "the oplog was not archived up to {position:?}; slices {slices:?}\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn oplog_archiving_moves_to_another_replica_when_its_archiver_is_killed() {
    if skip_mongo_tests() {
        return;
    }
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let mongo = SecantusDb::start();
    let mongo_source = "\n[[source]]\nname = \"mongo\"\nkind = \"mongodb\"\n\
         uri-file = \"mongo-uri\"\nrepository = \"local\"\noplog-interval = \"1s\"\n";
    let work = Work::new(&config(&db.url(), mongo_source, &tokens_config()));
    std::fs::write(work.path("mongo-uri"), format!("{}\n", mongo.uri())).unwrap();
    work.init();

    let rt = runtime();
    let client = rt
        .block_on(mongodb::Client::with_uri_str(mongo.uri()))
        .unwrap();
    rt.block_on(insert(&client, 0, 20));
    // A first backup: archiving continues from its end.
    let engine = {
        let _cwd = CwdGuard::enter(work.dir.path());
        let config = backup_engine::Config::load(Some(&work.config_path())).unwrap();
        let engine = rt.block_on(backup_engine::Engine::open(config)).unwrap();
        rt.block_on(backup_engine::backup::run_backup(
            &engine,
            "mongo",
            None,
            backup_engine::policy::BackupType::Full,
            Arc::new(backup_engine::Progress::default()),
            &tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap();
        engine
    };
    assert!(slices(&engine, &rt).is_empty());

    let mut replicas: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|r| work.start(free_port(), r))
        .collect();
    for r in &mut replicas {
        r.wait_healthy();
    }
    let first = rt.block_on(insert(&client, 1000, 30));
    wait_archived(&engine, &rt, first, &[&replicas[0], &replicas[1]]);

    // Exactly one replica archives; kill it.
    let archived = |d: &Daemon| d.log_text().contains("oplog slice archived");
    let owners: Vec<usize> = (0..2).filter(|&i| archived(&replicas[i])).collect();
    assert_eq!(owners.len(), 1, "one archiver at a time: {owners:?}");
    let victim = owners[0];
    replicas[victim].kill9();
    let survivor = &replicas[1 - victim];

    // Writes while nobody archives, and after: the survivor takes the lease over (3 s) and
    // archives them all, from where the killed one's last recorded slice ended.
    let during = rt.block_on(insert(&client, 2000, 30));
    let slices = wait_archived(&engine, &rt, during, &[survivor]);
    assert!(archived(survivor), "{}", survivor.log_text());
    let after = rt.block_on(insert(&client, 3000, 10));
    let slices = {
        let more = wait_archived(&engine, &rt, after, &[survivor]);
        assert!(more.len() >= slices.len());
        more
    };
    // Contiguous: each slice starts where the one before it ended.
    for pair in slices.windows(2) {
        assert_eq!(
            (pair[1].after.t, pair[1].after.i),
            (pair[0].last.t, pair[0].last.i),
            "a gap between slices: {slices:?}"
        );
    }
    // Every insert since the backup is in one slice or another.
    let archived_entries: u64 = slices.iter().map(|s| s.entries).sum();
    assert!(
        archived_entries >= 70,
        "{archived_entries} entries: {slices:?}"
    );
}
