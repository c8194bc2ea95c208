//! Conformance checks of the PostgreSQL tables (archived WAL files, base backup positions),
//! part of [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{
    Catalog, CatalogError, PostgresBackupRecord, WalFileCopy, WalFileRecord, WalRecorded,
};
use chrono::TimeDelta;

use super::{at, complete_backup_of, stored_backup, unique};

pub async fn postgres_conformance(catalog: &Catalog) {
    wal_files_are_recorded_once_and_conflicts_refused(catalog).await;
    wal_copies_are_tracked_per_repository(catalog).await;
    base_backup_positions_round_trip(catalog).await;
}

fn wal(source: &str, name: &str, sha: char) -> WalFileRecord {
    WalFileRecord {
        source: source.into(),
        file_name: name.into(),
        timeline: 1,
        repository: "primary".into(),
        object_key: format!("wal/{source}/{name}"),
        plaintext_size: 16 << 20,
        plaintext_sha256: sha.to_string().repeat(64),
        stored_size: 1000,
        stored_sha256: "e".repeat(64),
        archived_at: at("2025-07-01T00:00:00Z"),
    }
}

pub async fn wal_files_are_recorded_once_and_conflicts_refused(catalog: &Catalog) {
    let source = unique("pg-wal");
    let second = wal(&source, "000000010000000000000002", 'b');
    let first = wal(&source, "000000010000000000000001", 'a');
    assert_eq!(
        catalog.record_wal_file(&second).await.unwrap(),
        WalRecorded::New
    );
    assert_eq!(
        catalog.record_wal_file(&first).await.unwrap(),
        WalRecorded::New
    );
    // A repeated push of the same file is fine; other content under its name is not.
    assert_eq!(
        catalog.record_wal_file(&first).await.unwrap(),
        WalRecorded::AlreadyArchived
    );
    let err = catalog
        .record_wal_file(&wal(&source, "000000010000000000000001", 'c'))
        .await
        .unwrap_err();
    assert!(matches!(err, CatalogError::WalConflict { .. }), "{err}");
    assert!(
        err.to_string().contains("000000010000000000000001"),
        "{err}"
    );
    assert_eq!(
        catalog.wal_files(&source).await.unwrap(),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        catalog.wal_file(&source, &first.file_name).await.unwrap(),
        Some(first.clone())
    );
    assert!(catalog
        .wal_files(&unique("other"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        catalog
            .forget_wal_files(&source, std::slice::from_ref(&first.file_name))
            .await
            .unwrap(),
        1
    );
    assert_eq!(catalog.wal_files(&source).await.unwrap(), vec![second]);
}

pub async fn base_backup_positions_round_trip(catalog: &Catalog) {
    let source = unique("pg-base");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let t0 = at("2025-08-01T00:00:00Z");
    let full = complete_backup_of(catalog, &source, t0).await;
    let (running, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(2)).await;
    let record = |id, parent| PostgresBackupRecord {
        backup_id: id,
        start_lsn: "0/2000028".into(),
        stop_lsn: "0/2000100".into(),
        timeline: 1,
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        start_time: t0,
        stop_time: t0 + TimeDelta::seconds(5),
        parent_backup_id: parent,
    };
    catalog
        .record_postgres_backup(&record(full.id, None))
        .await
        .unwrap();
    catalog
        .record_postgres_backup(&record(running.id, Some(full.id)))
        .await
        .unwrap();
    assert_eq!(
        catalog.postgres_backup(running.id).await.unwrap(),
        Some(record(running.id, Some(full.id)))
    );
    // Only complete backups count as restorable bases.
    assert_eq!(
        catalog.postgres_backups(&source).await.unwrap(),
        vec![record(full.id, None)]
    );
    catalog.mark_deleting(full.id).await.unwrap();
    catalog.delete_backup(full.id).await.unwrap();
    assert_eq!(catalog.postgres_backup(full.id).await.unwrap(), None);
}

pub async fn wal_copies_are_tracked_per_repository(catalog: &Catalog) {
    let source = unique("pg-wal-copies");
    let a = wal(&source, "000000010000000000000001", 'a');
    let mut b = wal(&source, "000000010000000000000002", 'b');
    b.archived_at = at("2025-07-01T00:05:00Z");
    b.stored_size = 2000;
    for w in [&a, &b] {
        catalog.record_wal_file(w).await.unwrap();
    }
    let lag = catalog.wal_copy_lag(&source, "region-b").await.unwrap();
    assert_eq!(
        (lag.pending, lag.pending_bytes, lag.done, lag.last_copied_at),
        (2, 3000, 0, None)
    );
    assert_eq!(lag.oldest_pending_since, Some(a.archived_at));
    assert_eq!(lag.lag_seconds(at("2025-07-01T01:00:00Z")), 3600);
    let names = |files: Vec<WalFileRecord>| -> Vec<String> {
        files.into_iter().map(|f| f.file_name).collect()
    };
    assert_eq!(
        names(
            catalog
                .wal_files_without_copy(&source, "region-b")
                .await
                .unwrap()
        ),
        vec![a.file_name.clone(), b.file_name.clone()]
    );
    // The repository holding the original needs no copy.
    assert!(catalog
        .wal_files_without_copy(&source, "primary")
        .await
        .unwrap()
        .is_empty());
    let copy = WalFileCopy {
        source: source.clone(),
        file_name: a.file_name.clone(),
        repository: "region-b".into(),
        object_key: a.object_key.clone(),
        stored_size: a.stored_size,
        stored_sha256: a.stored_sha256.clone(),
        copied_at: at("2025-07-02T00:00:00Z"),
    };
    catalog.record_wal_copy(&copy).await.unwrap();
    catalog.record_wal_copy(&copy).await.unwrap();
    let lag = catalog.wal_copy_lag(&source, "region-b").await.unwrap();
    assert_eq!(
        (lag.pending, lag.pending_bytes, lag.done),
        (1, 2000, 1),
        "{lag:?}"
    );
    assert_eq!(lag.oldest_pending_since, Some(b.archived_at));
    assert_eq!(lag.last_copied_at, Some(copy.copied_at));
    // The repository holding the originals is never behind.
    let primary = catalog.wal_copy_lag(&source, "primary").await.unwrap();
    assert_eq!(
        (
            primary.pending,
            primary.lag_seconds(at("2030-01-01T00:00:00Z"))
        ),
        (0, 0)
    );
    assert_eq!(
        names(
            catalog
                .wal_files_without_copy(&source, "region-b")
                .await
                .unwrap()
        ),
        vec![b.file_name.clone()]
    );
    assert_eq!(
        catalog.wal_copies(&source, &a.file_name).await.unwrap(),
        vec![copy]
    );
    catalog
        .forget_wal_files(&source, std::slice::from_ref(&a.file_name))
        .await
        .unwrap();
    assert!(catalog
        .wal_copies(&source, &a.file_name)
        .await
        .unwrap()
        .is_empty());
}
