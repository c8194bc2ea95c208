//! Conformance checks of the RDS snapshot records, part of
//! [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{Catalog, CatalogError, RdsSnapshotRecord, RDS_ROLE_COPY, RDS_ROLE_SOURCE};
use chrono::TimeDelta;

use super::{at, complete_backup_of, stored_backup, unique};

pub async fn rds_conformance(catalog: &Catalog) {
    rds_snapshots_round_trip_and_go_with_their_backup(catalog).await;
}

pub async fn rds_snapshots_round_trip_and_go_with_their_backup(catalog: &Catalog) {
    let source = unique("rds");
    catalog.upsert_source(&source, "rds").await.unwrap();
    let t0 = at("2025-09-01T00:00:00Z");
    let done = complete_backup_of(catalog, &source, t0).await;
    let (other, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(1)).await;
    let record = |id, role: &str, region: &str, name: &str| RdsSnapshotRecord {
        backup_id: id,
        role: role.into(),
        region: region.into(),
        resource_kind: "instance".into(),
        resource: "orders".into(),
        identifier: name.into(),
        arn: format!("arn:aws:rds:{region}:123456789012:snapshot:{name}"),
        encrypted: role == RDS_ROLE_COPY,
        kms_key_id: (role == RDS_ROLE_COPY).then(|| "arn:aws:kms:us-east-1:1:key/k".into()),
        engine: Some("postgres".into()),
        allocated_storage_gb: Some(u64::MAX >> 2),
        created_at: t0 + TimeDelta::milliseconds(1500),
    };
    let copy = record(done.id, RDS_ROLE_COPY, "us-east-1", &format!("{source}-a"));
    let original = record(
        done.id,
        RDS_ROLE_SOURCE,
        "eu-west-1",
        &format!("{source}-a"),
    );
    // Recorded copy first: the source's snapshot is still listed first.
    catalog.record_rds_snapshot(&copy).await.unwrap();
    catalog.record_rds_snapshot(&original).await.unwrap();
    // Recording again replaces.
    catalog.record_rds_snapshot(&original).await.unwrap();
    let second = record(
        other.id,
        RDS_ROLE_SOURCE,
        "eu-west-1",
        &format!("{source}-b"),
    );
    catalog.record_rds_snapshot(&second).await.unwrap();
    assert_eq!(
        catalog.rds_snapshots(done.id).await.unwrap(),
        vec![original.clone(), copy.clone()]
    );
    for bad in [
        RdsSnapshotRecord {
            arn: String::new(),
            ..original.clone()
        },
        RdsSnapshotRecord {
            role: "backup".into(),
            ..original.clone()
        },
        RdsSnapshotRecord {
            resource_kind: "table".into(),
            ..original.clone()
        },
    ] {
        assert!(matches!(
            catalog.record_rds_snapshot(&bad).await,
            Err(CatalogError::InvalidValue { .. })
        ));
    }
    catalog.mark_deleting(done.id).await.unwrap();
    catalog.delete_backup(done.id).await.unwrap();
    assert_eq!(catalog.rds_snapshots(done.id).await.unwrap(), vec![]);
    assert_eq!(catalog.rds_snapshots(other.id).await.unwrap(), vec![second]);
}
