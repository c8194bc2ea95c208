//! Conformance checks of the MongoDB tables (oplog ranges of backups, archived oplog slices),
//! part of [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{Catalog, CatalogError, MongoBackupRecord, OplogSliceRecord, OplogTs};
use chrono::TimeDelta;

use super::{at, complete_backup_of, stored_backup, unique};

pub async fn mongodb_conformance(catalog: &Catalog) {
    backup_ranges_round_trip(catalog).await;
    oplog_slices_order_by_position_and_resume_from_the_newest(catalog).await;
}

fn ts(t: u32, i: u32) -> OplogTs {
    OplogTs { t, i }
}

pub async fn backup_ranges_round_trip(catalog: &Catalog) {
    let source = unique("mongo-backups");
    catalog.upsert_source(&source, "mongodb").await.unwrap();
    let t0 = at("2025-09-01T00:00:00Z");
    let older = complete_backup_of(catalog, &source, t0).await;
    let newer = complete_backup_of(catalog, &source, t0 + TimeDelta::hours(6)).await;
    let (running, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(7)).await;
    // Positions past i32 and with a large increment order as numbers, not text.
    let record = |id, end: OplogTs| MongoBackupRecord {
        backup_id: id,
        start: ts(end.t - 1, 1),
        end,
        start_time: t0,
        end_time: t0 + TimeDelta::seconds(5),
    };
    let newer_record = record(newer.id, ts(3_000_000_000, 10));
    let older_record = record(older.id, ts(3_000_000_000, 9));
    for r in [
        &newer_record,
        &older_record,
        &record(running.id, ts(3_000_000_001, 1)),
    ] {
        catalog.record_mongo_backup(r).await.unwrap();
    }
    // Recording again (catalog rebuild) replaces the row.
    catalog.record_mongo_backup(&older_record).await.unwrap();
    assert_eq!(
        catalog.mongo_backup(older.id).await.unwrap(),
        Some(older_record.clone())
    );
    // Only complete backups count, oldest end first.
    assert_eq!(
        catalog.mongo_backups(&source).await.unwrap(),
        vec![older_record.clone(), newer_record]
    );
    let mut reversed = older_record.clone();
    reversed.start = ts(3_000_000_001, 0);
    let err = catalog.record_mongo_backup(&reversed).await.unwrap_err();
    assert!(matches!(err, CatalogError::InvalidValue { .. }), "{err}");
    catalog.mark_deleting(older.id).await.unwrap();
    catalog.delete_backup(older.id).await.unwrap();
    assert_eq!(catalog.mongo_backup(older.id).await.unwrap(), None);
}

fn slice(source: &str, after: OplogTs, last: OplogTs) -> OplogSliceRecord {
    OplogSliceRecord {
        source: source.into(),
        after,
        last,
        entries: 42,
        repository: "primary".into(),
        object_key: format!(
            "oplog/{source}/{}.{}-{}.{}.bkpd",
            after.t, after.i, last.t, last.i
        ),
        plaintext_size: 4096,
        plaintext_sha256: "a".repeat(64),
        stored_size: 1000,
        stored_sha256: "e".repeat(64),
        archived_at: at("2025-09-01T00:01:00Z"),
    }
}

pub async fn oplog_slices_order_by_position_and_resume_from_the_newest(catalog: &Catalog) {
    let source = unique("mongo-slices");
    assert_eq!(catalog.last_oplog_slice(&source).await.unwrap(), None);
    let first = slice(&source, ts(100, 1), ts(100, 9));
    let second = slice(&source, ts(100, 9), ts(100, 10));
    let third = slice(&source, ts(100, 10), ts(2_500_000_000, 2));
    for s in [&third, &first, &second] {
        assert!(catalog.record_oplog_slice(s).await.unwrap());
    }
    // The same slice again (a retried write) is no new row.
    assert!(!catalog.record_oplog_slice(&second).await.unwrap());
    assert_eq!(
        catalog.oplog_slices(&source).await.unwrap(),
        vec![first.clone(), second, third.clone()]
    );
    assert_eq!(
        catalog.last_oplog_slice(&source).await.unwrap(),
        Some(third)
    );
    assert!(catalog
        .oplog_slices(&unique("other"))
        .await
        .unwrap()
        .is_empty());
    for bad in [
        slice(&source, ts(200, 5), ts(200, 5)),
        OplogSliceRecord {
            plaintext_sha256: "xyz".into(),
            ..slice(&source, ts(300, 1), ts(300, 2))
        },
        OplogSliceRecord {
            object_key: String::new(),
            ..slice(&source, ts(300, 1), ts(300, 2))
        },
    ] {
        let err = catalog.record_oplog_slice(&bad).await.unwrap_err();
        assert!(matches!(err, CatalogError::InvalidValue { .. }), "{err}");
    }
}
