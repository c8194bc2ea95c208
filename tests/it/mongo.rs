//! MongoDB sources on real MongoDB wire-protocol servers (SecantusDB, a one-member replica
//! set with an oplog) started by the tests: logical backups through the driver, exact
//! restores (compared by a content hash of every document), namespace subsets and renames,
//! catalog rebuild, oplog archiving that survives a server restart, and point-in-time
//! restore with its range check. `BACKUPD_SKIP_MONGO_TESTS=1` skips them.

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use backup_testing::servers::{skip_mongo_tests, SecantusDb};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Client;
use sha2::{Digest, Sha256};

use crate::support::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client(rt: &tokio::runtime::Runtime, uri: &str) -> Client {
    rt.block_on(Client::with_uri_str(uri)).unwrap()
}

/// A work dir whose `mongo` source reads its URI from a file (as a secret is given).
fn mongo_work(uri: &str, extra: &str) -> Work {
    let work = Work::new();
    let uri_file = work.path("mongo-uri");
    std::fs::write(&uri_file, format!("{uri}\n")).unwrap();
    work.write_config(&format!(
        r#"[catalog]
url = "sqlite://var/catalog.db"
[encryption]
key-file = "var/keys/repo.key"
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "mongo"
kind = "mongodb"
uri-file = "{}"
repository = "region-a"
{extra}
"#,
        uri_file.display()
    ));
    work.init();
    work
}

/// `db.coll` -> (document count, SHA-256 over every document's BSON in `_id` order).
type Hashes = BTreeMap<String, (u64, String)>;

async fn content_hashes(client: &Client, dbs: &[&str]) -> Hashes {
    let mut out = BTreeMap::new();
    for db in dbs {
        let database = client.database(db);
        let mut names = database.list_collection_names().await.unwrap();
        names.sort();
        for name in names {
            let collection = database.collection::<RawDocumentBuf>(&name);
            let mut cursor = collection
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap();
            let mut hash = Sha256::new();
            let mut count = 0;
            while cursor.advance().await.unwrap() {
                hash.update(cursor.current().as_bytes());
                count += 1;
            }
            out.insert(format!("{db}.{name}"), (count, hex(&hash.finalize())));
        }
    }
    out
}

/// The documents of `db.coll` that differ between two servers, as extended JSON (at most
/// `limit`), to say what a hash mismatch is.
async fn differing_documents(a: &Client, b: &Client, ns: &str, limit: usize) -> Vec<String> {
    let (db, coll) = ns.split_once('.').unwrap();
    let all = |c: &Client| {
        let collection = c.database(db).collection::<Document>(coll);
        async move {
            let mut cursor = collection
                .find(doc! {})
                .sort(doc! { "_id": 1 })
                .await
                .unwrap();
            let mut out = BTreeMap::new();
            while cursor.advance().await.unwrap() {
                let d = cursor.deserialize_current().unwrap();
                out.insert(d.get("_id").unwrap().to_string(), d);
            }
            out
        }
    };
    let (left, right) = (all(a).await, all(b).await);
    let mut out = Vec::new();
    for (id, d) in &left {
        if right.get(id) != Some(d) {
            out.push(format!(
                "{id}: {d} vs {:?}",
                right.get(id).map(|r| r.to_string())
            ));
        }
    }
    for (id, d) in &right {
        if !left.contains_key(id) {
            out.push(format!("{id}: missing vs {d}"));
        }
    }
    out.truncate(limit);
    out
}

/// Index name -> (key, unique) of `db.coll`.
async fn indexes(client: &Client, db: &str, coll: &str) -> BTreeMap<String, (Document, bool)> {
    let mut cursor = client
        .database(db)
        .collection::<Document>(coll)
        .list_indexes()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    while cursor.advance().await.unwrap() {
        let index = cursor.deserialize_current().unwrap();
        out.insert(
            index
                .keys
                .iter()
                .map(|(k, _)| k.clone())
                .collect::<Vec<_>>()
                .join(",")
                + "|"
                + &index
                    .options
                    .as_ref()
                    .and_then(|o| o.name.clone())
                    .unwrap_or_default(),
            (
                index.keys.clone(),
                index
                    .options
                    .as_ref()
                    .and_then(|o| o.unique)
                    .unwrap_or(false),
            ),
        );
    }
    out
}

/// Collections of several shapes and BSON types, indexes, a capped collection and a view.
async fn seed(client: &Client) {
    let app = client.database("app");
    let users: Vec<Document> = (0..500)
        .map(|i| {
            doc! {
                "_id": i,
                "name": format!("user-{i}"),
                "email": format!("u{i}@example.com"),
                "score": f64::from(i) * 1.5,
                "big": i64::from(i) << 40,
                "tags": ["a", format!("t{}", i % 7)],
                "profile": { "age": i % 90, "nested": { "deep": [1, 2, { "x": i }] } },
                "blob": Bson::Binary(mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![i as u8; 64] }),
                "at": mongodb::bson::DateTime::from_millis(1_700_000_000_000 + i64::from(i)),
                "dec": Bson::Decimal128("12.50".parse().unwrap()),
                "nothing": Bson::Null,
            }
        })
        .collect();
    app.collection::<Document>("users")
        .insert_many(users)
        .await
        .unwrap();
    app.run_command(doc! { "createIndexes": "users", "indexes": [
        { "key": { "email": 1 }, "name": "email_1", "unique": true },
        { "key": { "profile.age": -1, "name": 1 }, "name": "age_name" },
    ] })
    .await
    .unwrap();
    let orders: Vec<Document> = (0..300)
        .map(|i| doc! { "user": i % 50, "total": i * 3, "lines": (0..(i % 5)).map(|l| doc! { "sku": l }).collect::<Vec<_>>() })
        .collect();
    app.collection::<Document>("orders")
        .insert_many(orders)
        .await
        .unwrap();
    app.run_command(doc! { "create": "events", "capped": true, "size": 1_048_576 })
        .await
        .unwrap();
    app.collection::<Document>("events")
        .insert_many((0..20).map(|i| doc! { "_id": i, "kind": "seed" }))
        .await
        .unwrap();
    app.run_command(doc! { "create": "rich_users", "viewOn": "users", "pipeline": [{ "$match": { "score": { "$gt": 100.0 } } }] })
        .await
        .unwrap();
    client
        .database("crm")
        .collection::<Document>("contacts")
        .insert_many((0..50).map(|i| doc! { "_id": format!("c{i}"), "n": i }))
        .await
        .unwrap();
}

/// Inserts, updates of several kinds, replacements and deletes.
async fn workload(client: &Client, round: i32) {
    let users = client.database("app").collection::<Document>("users");
    let base = 10_000 * round;
    users
        .insert_many((0..40).map(|i| doc! { "_id": base + i, "name": format!("new-{round}-{i}"), "email": format!("n{round}-{i}@example.com"), "tags": ["x"] }))
        .await
        .unwrap();
    for i in 0..20 {
        users
            .update_one(
                doc! { "_id": i + round },
                doc! { "$set": { "profile.age": 99, "flag": round }, "$inc": { "score": 1.0 } },
            )
            .await
            .unwrap();
        users
            .update_one(
                doc! { "_id": base + i },
                doc! { "$push": { "tags": format!("p{i}") }, "$unset": { "name": "" } },
            )
            .await
            .unwrap();
    }
    users
        .replace_one(
            doc! { "_id": 30 + round },
            // Keeps an email: the unique index allows one document without.
            doc! { "name": "replaced", "round": round, "email": format!("r{round}@example.com") },
        )
        .await
        .unwrap();
    users
        .delete_many(doc! { "_id": { "$gte": 100 + round * 10, "$lt": 105 + round * 10 } })
        .await
        .unwrap();
    client
        .database("crm")
        .collection::<Document>("contacts")
        .update_many(doc! {}, doc! { "$set": { "round": round } })
        .await
        .unwrap();
}

async fn last_ts(client: &Client) -> String {
    let entry = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! { "$natural": -1 })
        .await
        .unwrap()
        .unwrap();
    let ts = entry.get_timestamp("ts").unwrap();
    format!("{}.{}", ts.time, ts.increment)
}

#[test]
fn logical_backup_restores_every_document_index_and_option_exactly() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let target = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let expected = rt.block_on(content_hashes(&src, &["app", "crm"]));
    assert_eq!(expected["app.users"].0, 500);

    let work = mongo_work(&source.uri(), "");
    let id = work.backup_of("mongo");
    // The URI is a secret: it never shows, not even without a password.
    assert!(!work
        .ok(&["show", &id, "--json"])
        .text()
        .contains("127.0.0.1"));
    work.ok(&["verify", &id]);

    // Restore into another server: every document exactly, indexes, options, the view.
    let out = work.ok(&[
        "restore",
        "mongo",
        "--latest",
        "--target-uri",
        &target.uri(),
    ]);
    out.expect_mentions(&[&id, "documents"]);
    let dst = client(&rt, &target.uri());
    let restored = rt.block_on(content_hashes(&dst, &["app", "crm"]));
    for (ns, hash) in &expected {
        if ns == "app.rich_users" {
            continue;
        }
        assert_eq!(restored.get(ns), Some(hash), "{ns}");
    }
    let source_indexes = rt.block_on(indexes(&src, "app", "users"));
    assert_eq!(source_indexes.len(), 3);
    assert_eq!(rt.block_on(indexes(&dst, "app", "users")), source_indexes);
    let info = rt
        .block_on(dst.database("app").run_command(doc! { "listCollections": 1, "filter": { "name": { "$in": ["events", "rich_users"] } } }).into_future())
        .unwrap();
    let batch = info
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let by_name: BTreeMap<&str, &Document> = batch
        .iter()
        .filter_map(Bson::as_document)
        .map(|d| (d.get_str("name").unwrap(), d))
        .collect();
    let events = by_name["events"].get_document("options").unwrap();
    assert_eq!(events.get_bool("capped"), Ok(true), "{events}");
    assert_eq!(by_name["rich_users"].get_str("type"), Ok("view"));
    // A unique index really is unique in the restored server.
    assert!(rt
        .block_on(
            dst.database("app")
                .collection::<Document>("users")
                .insert_one(doc! { "_id": -1, "email": "u1@example.com" })
                .into_future()
        )
        .is_err());

    // A non-empty target is refused, naming what is there; --drop replaces it.
    work.run(&[
        "restore",
        "mongo",
        "--latest",
        "--target-uri",
        &target.uri(),
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["app.users", "--drop"]);
    work.ok(&[
        "restore",
        "mongo",
        "--backup",
        &id,
        "--target-uri",
        &target.uri(),
        "--drop",
    ]);
    assert_eq!(
        rt.block_on(content_hashes(&dst, &["app"]))["app.users"],
        expected["app.users"]
    );

    // A subset under another name, into the source server itself.
    work.ok(&[
        "restore",
        "mongo",
        "--latest",
        "--target-uri",
        &source.uri(),
        "--namespace",
        "app.users",
        "--rename-to",
        "app2",
    ]);
    let renamed = rt.block_on(content_hashes(&src, &["app2"]));
    assert_eq!(renamed.len(), 1, "{renamed:?}");
    assert_eq!(renamed["app2.users"], expected["app.users"]);
    // A password in --target-uri is refused (argv is visible to every user).
    work.run(&[
        "restore",
        "mongo",
        "--latest",
        "--target-uri",
        "mongodb://u:secret@127.0.0.1:1/",
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["--target-uri-file"]);

    // The catalog alone is rebuilt from the repository; the backup restores again.
    std::fs::remove_file(work.path("var/catalog.db")).unwrap();
    work.ok(&["catalog", "rebuild"]);
    let third = SecantusDb::start();
    work.ok(&["restore", "mongo", "--latest", "--target-uri", &third.uri()]);
    let again = rt.block_on(content_hashes(&client(&rt, &third.uri()), &["app", "crm"]));
    assert_eq!(again["app.users"], expected["app.users"]);
    assert_eq!(again["crm.contacts"], expected["crm.contacts"]);
    work.ok(&["oplog-status", "mongo"]).expect_mentions(&[&id]);
}

/// The `_id`s of `app.live` at oplog position `end` (`SECONDS.INCREMENT`), from the
/// source's own oplog: its inserts and deletes up to and including `end`.
async fn live_ids_at(client: &Client, end: &str) -> std::collections::BTreeSet<i64> {
    let (t, i) = end.split_once('.').unwrap();
    let end = mongodb::bson::Timestamp {
        time: t.parse().unwrap(),
        increment: i.parse().unwrap(),
    };
    let mut entries = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! { "ns": "app.live", "ts": { "$lte": end } })
        .sort(doc! { "$natural": 1 })
        .await
        .unwrap();
    let mut ids = std::collections::BTreeSet::new();
    while entries.advance().await.unwrap() {
        let entry = entries.deserialize_current().unwrap();
        let id = entry.get_document("o").unwrap().get_i64("_id").unwrap();
        match entry.get_str("op").unwrap() {
            "i" => assert!(ids.insert(id), "{entry}"),
            "d" => assert!(ids.remove(&id), "{entry}"),
            other => panic!("unexpected op {other}: {entry}"),
        }
    }
    ids
}

#[test]
fn a_backup_taken_during_writes_restores_to_exactly_its_end() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let work = mongo_work(&source.uri(), "");

    // Inserts and deletes go on, on their own connection, for the whole backup.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, uri) = (stop.clone(), source.uri());
        std::thread::spawn(move || {
            let rt = runtime();
            let live = client(&rt, &uri)
                .database("app")
                .collection::<Document>("live");
            let mut i = 0_i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                rt.block_on(live.insert_one(doc! { "_id": i, "n": i }).into_future())
                    .unwrap();
                if i % 4 == 3 {
                    rt.block_on(live.delete_one(doc! { "_id": i - 2 }).into_future())
                        .unwrap();
                }
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let id = work.backup_of("mongo");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();

    let target = SecantusDb::start();
    let out = work.ok(&[
        "restore",
        "mongo",
        "--backup",
        &id,
        "--target-uri",
        &target.uri(),
        "--json",
    ]);
    let outcome = out.json();
    // Writes landed during the copy: the backup held oplog entries to replay.
    assert!(
        outcome["oplog_entries_applied"].as_u64() > Some(0),
        "no write during the copy: {outcome:#}"
    );
    let end = outcome["restored_to"].as_str().unwrap().to_owned();
    let expected = rt.block_on(live_ids_at(&src, &end));
    assert!(
        !expected.is_empty() && (expected.len() as i64) < written,
        "{} of {written} documents at {end}",
        expected.len()
    );
    let dst = client(&rt, &target.uri());
    let restored: std::collections::BTreeSet<i64> = rt
        .block_on(async {
            let mut cursor = dst
                .database("app")
                .collection::<Document>("live")
                .find(doc! {})
                .await?;
            let mut ids = std::collections::BTreeSet::new();
            while cursor.advance().await? {
                ids.insert(cursor.deserialize_current()?.get_i64("_id").unwrap());
            }
            Ok::<_, mongodb::error::Error>(ids)
        })
        .unwrap();
    assert_eq!(
        restored.symmetric_difference(&expected).collect::<Vec<_>>(),
        Vec::<&i64>::new(),
        "restored to {end}: {} documents, {} expected",
        restored.len(),
        expected.len()
    );
    // The rest of the source is there too, exactly.
    let source_users = rt.block_on(content_hashes(&src, &["app"]))["app.users"].clone();
    assert_eq!(
        rt.block_on(content_hashes(&dst, &["app"]))["app.users"],
        source_users
    );
}

/// A restore loads collections while later files are still being restored: damage found
/// part-way stops it as an integrity failure naming the damaged artifact (not as a failed
/// load), after the collections before the damage went in.
#[test]
fn damage_found_part_way_through_a_restore_is_an_integrity_failure() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let work = mongo_work(&source.uri(), "\n[pipeline]\nsegment-size-kib = 64\n");
    let id = work.backup_of("mongo");
    let (artifact, path) = work.artifact(&id, "data");
    let original = std::fs::read(&path).unwrap();
    let layout = Layout::parse(&original);
    let segments = layout.segments();
    assert!(segments.len() >= 3, "expected several segments: {layout:?}");
    // The last segment holds the last collection and the backup's end position.
    let last = segments[segments.len() - 1];
    let mut damaged = original.clone();
    damaged[last.body().start + last.len / 2] ^= 1 << 4;
    std::fs::write(&path, &damaged).unwrap();

    let target = SecantusDb::start();
    let out = work.run(&[
        "restore",
        "mongo",
        "--backup",
        &id,
        "--target-uri",
        &target.uri(),
    ]);
    assert_eq!(out.code, EXIT_INTEGRITY, "{}", out.dump());
    out.expect_mentions(&[&artifact, "segment"]);
    assert!(
        !out.dump().contains("restoring the backup's files failed"),
        "the load's error hid the staging's: {}",
        out.dump()
    );

    // Undamaged, the same backup restores completely.
    std::fs::write(&path, &original).unwrap();
    work.ok(&[
        "restore",
        "mongo",
        "--backup",
        &id,
        "--target-uri",
        &target.uri(),
        "--drop",
    ]);
    let dst = client(&rt, &target.uri());
    assert_eq!(
        rt.block_on(content_hashes(&dst, &["app", "crm"])),
        rt.block_on(content_hashes(&src, &["app", "crm"]))
    );
}

/// A backup skips its oplog read only when its change stream proves nothing was written
/// after its start: any data write or DDL in between must count, and so must a start
/// taken before the stream opened (whose writes the stream could not have seen).
#[test]
fn the_write_watch_proves_a_write_free_copy_and_sees_every_kind_of_write() {
    use backup_sources::mongodb::{backup_start, watch::WriteWatch, OpTime};
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let app = src.database("app");
    let users = app.collection::<Document>("users");
    // (what happens after the start, whether the watch may call the copy write-free)
    let cases: Vec<(&str, bool)> = vec![
        ("nothing", true),
        ("an insert", false),
        ("an update", false),
        ("a delete", false),
        ("an index build", false),
        ("a collection created", false),
        ("a collection dropped", false),
        ("a write in another database", false),
    ];
    for (what, write_free) in cases {
        let proven = rt.block_on(async {
            let watch = WriteWatch::open(&src).await.expect("SecantusDB has change streams");
            let start = backup_start(&src).await.unwrap();
            match what {
                "nothing" => {}
                "an insert" => {
                    users.insert_one(doc! { "_id": 90_000, "email": "w@example.com" }).await.unwrap();
                }
                "an update" => {
                    users.update_one(doc! { "_id": 1 }, doc! { "$set": { "w": 1 } }).await.unwrap();
                }
                "a delete" => {
                    users.delete_one(doc! { "_id": 2 }).await.unwrap();
                }
                "an index build" => {
                    app.run_command(doc! { "createIndexes": "orders", "indexes": [{ "key": { "total": 1 }, "name": "total_1" }] })
                        .await
                        .unwrap();
                }
                "a collection created" => {
                    app.run_command(doc! { "create": "empty_new" }).await.unwrap();
                }
                "a collection dropped" => {
                    app.collection::<Document>("empty_new").drop().await.unwrap();
                }
                "a write in another database" => {
                    src.database("crm")
                        .collection::<Document>("contacts")
                        .insert_one(doc! { "_id": "w", "n": 0 })
                        .await
                        .unwrap();
                }
                other => unreachable!("{other}"),
            }
            watch.nothing_written_since(&src, start).await
        });
        assert_eq!(proven, write_free, "after {what}");
    }
    // A start older than the stream: writes between the two are out of its sight.
    let proven = rt.block_on(async {
        let watch = WriteWatch::open(&src).await.unwrap();
        watch.nothing_written_since(&src, OpTime::new(1, 0)).await
    });
    assert!(
        !proven,
        "a start before the watch opened was called write-free"
    );
}

#[test]
fn point_in_time_restore_replays_the_archived_oplog_to_exactly_that_point() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let work = mongo_work(
        &source.uri(),
        "exclude = [\"app.orders\"]\nkeep = { last = 1 }",
    );
    let id = work.backup_of("mongo");

    rt.block_on(workload(&src, 1));
    let ts = rt.block_on(last_ts(&src));
    let at_ts = rt.block_on(content_hashes(&src, &["app", "crm"]));
    // After the point: more writes, and a dropped collection.
    rt.block_on(workload(&src, 2));
    rt.block_on(
        src.database("crm")
            .collection::<Document>("contacts")
            .drop()
            .into_future(),
    )
    .unwrap();
    let out = work.ok(&["oplog-archive", "mongo", "--once", "--json"]);
    let report = out.json();
    assert!(
        report["slices"].as_u64() == Some(1) && report["entries"].as_u64() > Some(100),
        "{}",
        out.dump()
    );

    let target = SecantusDb::start();
    let out = work.ok(&[
        "restore",
        "mongo",
        "--point-in-time",
        &ts,
        "--target-uri",
        &target.uri(),
        "--json",
    ]);
    let outcome = out.json();
    assert_eq!(outcome["backup_id"].as_str(), Some(id.as_str()));
    assert_eq!(outcome["restored_to"].as_str(), Some(ts.as_str()));
    let restored = rt.block_on(content_hashes(&client(&rt, &target.uri()), &["app", "crm"]));
    for ns in ["app.users", "app.events", "crm.contacts"] {
        assert_eq!(restored.get(ns), at_ts.get(ns), "{ns}");
    }
    assert!(
        !restored.contains_key("app.orders"),
        "excluded: {restored:?}"
    );

    // Outside the range: refused, naming the range.
    let (t, _) = ts.split_once('.').unwrap();
    let before = format!("{}.1", t.parse::<u64>().unwrap() - 3600);
    let other = SecantusDb::start();
    work.run(&[
        "restore",
        "mongo",
        "--point-in-time",
        &before,
        "--target-uri",
        &other.uri(),
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["outside the restorable range", &id]);
    let after = format!("{}.1", t.parse::<u64>().unwrap() + 3600);
    work.run(&[
        "restore",
        "mongo",
        "--point-in-time",
        &after,
        "--target-uri",
        &other.uri(),
    ])
    .expect_code(EXIT_USAGE)
    .expect_mentions(&["outside the restorable range"]);

    // Retention: once a newer backup is the only one kept, the slice before it goes (no
    // kept backup can replay it), the backup's own range stays restorable.
    let slices_before = files_below(&work.path("var/repo/region-a/oplog"));
    assert_eq!(slices_before.len(), 1, "{slices_before:?}");
    let newer = work.backup_of("mongo");
    work.ok(&["prune", "--dry-run"])
        .expect_mentions(&["1 archived oplog slices"]);
    assert_eq!(files_below(&work.path("var/repo/region-a/oplog")).len(), 1);
    work.ok(&["prune"]);
    assert!(files_below(&work.path("var/repo/region-a/oplog")).is_empty());
    let status = work.ok(&["oplog-status", "mongo", "--json"]).json();
    assert_eq!(status.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(status[0]["backup_id"].as_str(), Some(newer.as_str()));
}

/// A running `oplog-archive`, killed if the test fails before it is interrupted.
struct Archiver(Option<std::process::Child>);

impl Archiver {
    /// `backupctl oplog-archive mongo` in `work`, its output kept.
    fn spawn(work: &Work) -> Archiver {
        let mut archiver = work.command(&["oplog-archive", "mongo"]);
        archiver
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Archiver(Some(archiver.spawn().unwrap()))
    }

    /// Sends it `signal` (`-INT`, `-STOP`, ...).
    fn signal(&self, signal: &str) {
        let pid = self.0.as_ref().unwrap().id().to_string();
        let _ = std::process::Command::new("kill")
            .args([signal, &pid])
            .status();
    }

    /// Ctrl-C, then waits for it to stop.
    fn interrupt(mut self) -> std::process::Output {
        self.signal("-INT");
        self.0.take().unwrap().wait_with_output().unwrap()
    }

    /// Waits up to `limit` for it to stop on its own; panics with `why` if it does not.
    fn exit_within(mut self, limit: Duration, why: &str) -> std::process::Output {
        let deadline = Instant::now() + limit;
        let child = self.0.as_mut().unwrap();
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{why}");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

/// 5000 inserts into `app.burst`, in batches of 100.
async fn burst(src: &Client) {
    let coll = src.database("app").collection::<Document>("burst");
    for chunk in 0..50 {
        let docs: Vec<Document> = (0..100).map(|i| doc! { "n": chunk * 100 + i }).collect();
        coll.insert_many(docs).await.unwrap();
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn oplog_archiving_resumes_across_a_server_restart_without_losing_an_entry() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let mut source = SecantusDb::start();
    let uri = source.uri();
    let src = client(&rt, &uri);
    rt.block_on(seed(&src));
    let work = mongo_work(&uri, "oplog-interval = \"1s\"");
    work.ok(&["backup", "mongo"]);

    let child = Archiver::spawn(&work);
    rt.block_on(workload(&src, 1));
    drop(src);
    source.restart();
    let src = client(&rt, &uri);
    rt.block_on(workload(&src, 2));
    let ts = rt.block_on(last_ts(&src));
    let expected = rt.block_on(content_hashes(&src, &["app", "crm"]));

    // The archiver reconnects and catches up to the newest entry.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = work.ok(&["oplog-status", "mongo", "--json"]).json();
        let to = status[0]["to"].as_str().unwrap_or_default().to_owned();
        let reached = |a: &str| {
            a.split_once('.')
                .map(|(t, i)| (t.parse::<u64>().unwrap(), i.parse::<u64>().unwrap()))
        };
        if reached(&to) >= reached(&ts) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "archiving did not reach {ts}: {status}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let output = child.interrupt();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "oplog-archive: {stderr}");

    let target = SecantusDb::start();
    work.ok(&[
        "restore",
        "mongo",
        "--point-in-time",
        &ts,
        "--target-uri",
        &target.uri(),
    ]);
    let dst = client(&rt, &target.uri());
    let restored = rt.block_on(content_hashes(&dst, &["app", "crm"]));
    for ns in ["app.users", "app.orders", "app.events", "crm.contacts"] {
        if restored.get(ns) != expected.get(ns) {
            let diffs = rt.block_on(differing_documents(&src, &dst, ns, 5));
            panic!(
                "{ns}: {:?} restored, {:?} expected; differing: {diffs:#?}",
                restored.get(ns),
                expected.get(ns)
            );
        }
    }
}

#[test]
fn oplog_archiving_stops_when_the_oplog_rolled_past_its_position_and_asks_for_a_full_backup() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    // An oplog of 1500 entries: pruned (every 1000 writes) well before 5000 inserts end.
    let source = SecantusDb::start_with_args(&["--oplog-max-entries", "1500"]);
    let uri = source.uri();
    let src = client(&rt, &uri);
    rt.block_on(seed(&src));
    let work = mongo_work(&uri, "");
    work.ok(&["backup", "mongo"]);
    // Archiving right after the backup works: the position is still in the oplog.
    work.ok(&["oplog-archive", "mongo", "--once"]);
    rt.block_on(burst(&src));
    work.run(&["oplog-archive", "mongo", "--once"])
        .expect_code(1)
        .expect_mentions(&["rolled past", "take a new full backup"]);
    // A new full backup starts a position archiving can continue from.
    work.ok(&["backup", "mongo"]);
    work.ok(&["oplog-archive", "mongo", "--once"]);
}

#[test]
fn oplog_archiving_notices_when_the_oplog_rolls_past_it_while_it_follows() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start_with_args(&["--oplog-max-entries", "1500"]);
    let uri = source.uri();
    let src = client(&rt, &uri);
    rt.block_on(seed(&src));
    let work = mongo_work(&uri, "oplog-interval = \"1s\"");
    work.ok(&["backup", "mongo"]);
    let child = Archiver::spawn(&work);
    // It follows the oplog: a write is archived.
    rt.block_on(async {
        let coll = src.database("app").collection::<Document>("burst");
        coll.insert_one(doc! { "n": -1 }).await
    })
    .unwrap();
    let ts = rt.block_on(last_ts(&src));
    let deadline = Instant::now() + Duration::from_secs(60);
    while work.ok(&["oplog-status", "mongo", "--json"]).json()[0]["to"].as_str() != Some(&ts) {
        assert!(
            Instant::now() < deadline,
            "the write at {ts} was not archived"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Frozen while 5000 entries go in: the oplog drops the ones after its position before
    // its cursor reaches them. It must stop, not archive past the gap.
    child.signal("-STOP");
    rt.block_on(burst(&src));
    child.signal("-CONT");
    let output = child.exit_within(
        Duration::from_secs(60),
        "oplog-archive went on after the oplog rolled past its position",
    );
    let status = output.status;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "oplog-archive: {stderr}");
    assert!(
        stderr.contains("rolled past") && stderr.contains("take a new full backup"),
        "{stderr}"
    );
}

/// The databases of `client` a drill made (their names start with its scratch prefix).
async fn drill_databases(client: &Client) -> Vec<String> {
    client
        .list_database_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("backupd_drill_"))
        .collect()
}

#[test]
fn a_mongodb_drill_restores_into_scratch_databases_counts_them_and_drops_them() {
    if skip_mongo_tests() {
        return;
    }
    let rt = runtime();
    let source = SecantusDb::start();
    let src = client(&rt, &source.uri());
    rt.block_on(seed(&src));
    let expected = rt.block_on(content_hashes(&src, &["app", "crm"]));
    let work = mongo_work(&source.uri(), "[source.drill]\ntarget = \"./scratch\"\n");
    let id = work.backup_of("mongo");

    // Into the source's own server under the scratch prefix: counted, then dropped.
    let out = work.ok(&["drill", "mongo", "--now", "--json"]);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    assert_eq!(drill["backup_id"], id.as_str());
    let checks = drill["checks"].as_array().unwrap();
    let counts = checks.iter().find(|c| c["name"] == "counts").unwrap();
    assert_eq!(counts["passed"], true, "{drill:#}");
    // Every collection but the view was counted.
    let collections = expected.len() - 1;
    assert!(
        counts["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{collections} collections")),
        "{drill:#}"
    );
    assert!(drill["restored_bytes"].as_u64().unwrap() > 0, "{drill:#}");
    assert!(rt.block_on(drill_databases(&src)).is_empty());
    assert_eq!(rt.block_on(content_hashes(&src, &["app", "crm"])), expected);

    // Into another server named by the drill (--keep leaves the scratch databases there):
    // the same documents, under the prefix.
    let scratch = SecantusDb::start();
    let uri_file = work.path("scratch-uri");
    std::fs::write(&uri_file, scratch.uri()).unwrap();
    let config = std::fs::read_to_string(work.path("backupd.toml")).unwrap();
    work.write_config(&format!(
        "{config}server-uri-file = \"{}\"\n",
        uri_file.display()
    ));
    let kept = work
        .ok(&["drill", "mongo", "--now", "--keep", "--json"])
        .json();
    assert_eq!(kept["status"], "passed", "{kept:#}");
    let dst = client(&rt, &scratch.uri());
    let made = rt.block_on(drill_databases(&dst));
    assert_eq!(made.len(), 2, "{made:?}");
    assert!(rt.block_on(drill_databases(&src)).is_empty());
    let prefix = made[0].strip_suffix("app").expect("app first").to_owned();
    let users = rt.block_on(content_hashes(&dst, &[&format!("{prefix}app")]));
    assert_eq!(
        users[&format!("{prefix}app.users")],
        expected["app.users"],
        "the drill restored other documents"
    );

    // A damaged backup fails its drill (exit 1) and leaves no scratch database.
    for entry in std::fs::read_dir(work.repo().join("backups").join(&id)).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("data-")
        {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&path, bytes).unwrap();
        }
    }
    rt.block_on(async {
        for db in drill_databases(&dst).await {
            dst.database(&db).drop().await.unwrap();
        }
    });
    let out = work.run(&["drill", "mongo", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    assert_eq!(out.json()["status"], "failed", "{}", out.dump());
    assert!(rt.block_on(drill_databases(&dst)).is_empty());
}
