//! Conformance checks of the Elasticsearch snapshot records, part of
//! [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{Catalog, CatalogError, ElasticsearchSnapshotRecord};
use chrono::TimeDelta;

use super::{at, complete_backup_of, stored_backup, unique};

pub async fn elasticsearch_conformance(catalog: &Catalog) {
    snapshot_records_round_trip_and_go_with_their_backup(catalog).await;
}

pub async fn snapshot_records_round_trip_and_go_with_their_backup(catalog: &Catalog) {
    let source = unique("es");
    catalog
        .upsert_source(&source, "elasticsearch")
        .await
        .unwrap();
    let t0 = at("2025-09-01T00:00:00Z");
    let done = complete_backup_of(catalog, &source, t0).await;
    let (running, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(1)).await;
    let record = |id, name: &str| ElasticsearchSnapshotRecord {
        backup_id: id,
        es_repository: "nightly".into(),
        snapshot: name.into(),
        snapshot_uuid: "u".repeat(22),
        state: "SUCCESS".into(),
        indices: vec!["logs-1".into(), "metrics \"x\"".into()],
        shards_total: 7,
        shards_failed: 0,
        size_bytes: u64::MAX >> 2,
        started_at: t0,
        finished_at: t0 + TimeDelta::milliseconds(1500),
    };
    let first = record(done.id, &format!("{source}-a"));
    catalog.record_elasticsearch_snapshot(&first).await.unwrap();
    // Recording again replaces.
    catalog.record_elasticsearch_snapshot(&first).await.unwrap();
    let second = record(running.id, &format!("{source}-b"));
    catalog
        .record_elasticsearch_snapshot(&second)
        .await
        .unwrap();
    assert_eq!(
        catalog.elasticsearch_snapshot(done.id).await.unwrap(),
        Some(first.clone())
    );
    // Only complete backups are listed.
    assert_eq!(
        catalog.elasticsearch_snapshots(&source).await.unwrap(),
        vec![first.clone()]
    );
    let bad = ElasticsearchSnapshotRecord {
        snapshot: String::new(),
        ..first.clone()
    };
    assert!(matches!(
        catalog.record_elasticsearch_snapshot(&bad).await,
        Err(CatalogError::InvalidValue { .. })
    ));
    catalog.mark_deleting(done.id).await.unwrap();
    catalog.delete_backup(done.id).await.unwrap();
    assert_eq!(catalog.elasticsearch_snapshot(done.id).await.unwrap(), None);
    assert_eq!(
        catalog.elasticsearch_snapshot(running.id).await.unwrap(),
        Some(second)
    );
}
