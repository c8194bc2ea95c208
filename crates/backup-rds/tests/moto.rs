//! backup-rds against moto: instance and cluster snapshots taken, listed, copied to another
//! region (encrypted with a KMS key of that region), restored and deleted; and the faults
//! an operator meets first: an unreachable endpoint, rejected credentials, an encrypted copy
//! without a key. Two regions are two region names on one moto server.

use std::time::Duration;

use backup_rds::*;
use backup_testing::servers::{free_ports, Moto};
use tokio_util::sync::CancellationToken;

const SOURCE_REGION: &str = "eu-west-1";
const COPY_REGION: &str = "us-east-1";

fn quick() -> WaitPolicy {
    WaitPolicy::new(Duration::from_millis(50), Duration::from_secs(30))
}

async fn snapshots_of(endpoint: String, resource: RdsResource) -> RdsSnapshots {
    RdsSnapshots::new(RdsTarget {
        endpoint: Some(endpoint),
        credentials: static_credentials(),
        max_attempts: 1,
        ..RdsTarget::new(SOURCE_REGION, resource)
    })
    .await
    .unwrap()
}

/// Credentials from files of a temp dir that lives as long as the test process.
fn static_credentials() -> RdsCredentials {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("id"), "AKIAIOSFODNN7EXAMPLE").unwrap();
    std::fs::write(dir.join("secret"), "wJalrXUtnFEMI-very-secret-key").unwrap();
    RdsCredentials::Static {
        access_key_id: SecretSource::File(dir.join("id")),
        secret_access_key: SecretSource::File(dir.join("secret")),
    }
}

#[tokio::test]
async fn instance_snapshots_are_taken_copied_restored_and_deleted() {
    let moto = Moto::start();
    moto.create_db_instance(SOURCE_REGION, "orders", None);
    let copy_key = moto.create_kms_key(COPY_REGION);
    let rds = snapshots_of(moto.endpoint(), RdsResource::Instance("orders".into())).await;
    let cancel = CancellationToken::new();

    let taken = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-orders-1".into(),
                tags: backupd_tags("orders", "b1"),
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert!(taken.is_available(), "{taken:?}");
    assert_eq!(taken.region, SOURCE_REGION);
    assert!(
        taken.arn.starts_with("arn:aws:rds:eu-west-1:"),
        "{}",
        taken.arn
    );
    assert_eq!(taken.tags[TAG_BACKUP_ID], "b1");
    assert_eq!(taken.source, RdsResource::Instance("orders".into()));
    assert!(!taken.encrypted);

    // A snapshot taken by hand is not listed as ours.
    moto.rds(
        SOURCE_REGION,
        "CreateDBSnapshot",
        &[
            ("DBInstanceIdentifier", "orders"),
            ("DBSnapshotIdentifier", "before-migration"),
        ],
    );
    let ours = rds
        .list_snapshots(&SnapshotMatch::source("orders"))
        .await
        .unwrap();
    assert_eq!(
        ours.iter()
            .map(|s| s.identifier.as_str())
            .collect::<Vec<_>>(),
        ["backupd-orders-1"]
    );

    let copy = rds
        .copy_snapshot(
            "backupd-orders-1",
            &CopyRequest {
                region: COPY_REGION.into(),
                identifier: "backupd-orders-1".into(),
                kms_key_id: Some(copy_key.clone()),
                tags: Default::default(),
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(copy.region, COPY_REGION);
    assert!(
        copy.arn.starts_with("arn:aws:rds:us-east-1:"),
        "{}",
        copy.arn
    );
    assert!(copy.encrypted, "{copy:?}");
    assert_eq!(copy.kms_key_id.as_deref(), Some(copy_key.as_str()));
    assert_eq!(
        copy.tags.get(TAG_SOURCE).map(String::as_str),
        Some("orders")
    );
    assert_eq!(moto.db_snapshot_ids(COPY_REGION), ["backupd-orders-1"]);

    // The copy restores in its region.
    let in_copy_region = rds.in_region(COPY_REGION);
    let restored = in_copy_region
        .restore(
            &copy.arn,
            &RestoreRequest {
                identifier: "orders-restored".into(),
                ..Default::default()
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(
        restored.resource,
        RdsResource::Instance("orders-restored".into())
    );
    assert_eq!(restored.status, "available");
    assert_eq!(moto.db_instance_ids(COPY_REGION), ["orders-restored"]);
    // Restoring over an existing database is refused, by name.
    let err = in_copy_region
        .restore(
            &copy.arn,
            &RestoreRequest {
                identifier: "orders-restored".into(),
                ..Default::default()
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RdsError::AlreadyExists { .. }), "{err:?}");
    in_copy_region
        .delete_database(&restored.resource)
        .await
        .unwrap();
    assert!(moto.db_instance_ids(COPY_REGION).is_empty());
    // Deleting again is no error.
    in_copy_region
        .delete_database(&restored.resource)
        .await
        .unwrap();

    assert_eq!(
        in_copy_region
            .delete_snapshot("backupd-orders-1")
            .await
            .unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        rds.delete_snapshot("backupd-orders-1").await.unwrap(),
        Deletion::Deleted
    );
    assert_eq!(
        rds.delete_snapshot("backupd-orders-1").await.unwrap(),
        Deletion::AlreadyAbsent
    );
    let err = rds.describe_snapshot("backupd-orders-1").await.unwrap_err();
    assert!(err.is_snapshot_not_found(), "{err:?}");
    // What is left: the snapshot taken by hand, and moto's automated one (`rds:...`).
    let manual: Vec<String> = moto
        .db_snapshot_ids(SOURCE_REGION)
        .into_iter()
        .filter(|s| !s.starts_with("rds:"))
        .collect();
    assert_eq!(manual, ["before-migration"]);
}

#[tokio::test]
async fn an_encrypted_snapshot_needs_a_key_of_the_copy_region() {
    let moto = Moto::start();
    let key = moto.create_kms_key(SOURCE_REGION);
    moto.create_db_instance(SOURCE_REGION, "billing", Some(&key));
    let rds = snapshots_of(moto.endpoint(), RdsResource::Instance("billing".into())).await;
    let cancel = CancellationToken::new();
    let taken = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-billing-1".into(),
                tags: backupd_tags("billing", "b1"),
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert!(taken.encrypted, "{taken:?}");
    let request = CopyRequest {
        region: COPY_REGION.into(),
        identifier: "backupd-billing-1".into(),
        kms_key_id: None,
        tags: Default::default(),
    };
    let err = rds
        .copy_snapshot("backupd-billing-1", &request, quick(), &cancel)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RdsError::EncryptedCopyNeedsKmsKey { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("set `copy-kms-key-id`"), "{err}");
    // Nothing was sent: no copy exists.
    assert!(moto.db_snapshot_ids(COPY_REGION).is_empty());

    let copy_key = moto.create_kms_key(COPY_REGION);
    let copy = rds
        .copy_snapshot(
            "backupd-billing-1",
            &CopyRequest {
                kms_key_id: Some(copy_key.clone()),
                ..request
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert!(copy.encrypted);
    assert_eq!(copy.kms_key_id.as_deref(), Some(copy_key.as_str()));
}

#[tokio::test]
async fn cluster_snapshots_are_taken_copied_and_restored_with_a_writer() {
    let moto = Moto::start();
    moto.create_db_cluster(SOURCE_REGION, "ledger");
    let rds = snapshots_of(moto.endpoint(), RdsResource::Cluster("ledger".into())).await;
    let cancel = CancellationToken::new();
    let taken = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-ledger-1".into(),
                tags: backupd_tags("ledger", "b1"),
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert!(taken.arn.contains(":cluster-snapshot:"), "{}", taken.arn);
    assert_eq!(taken.source, RdsResource::Cluster("ledger".into()));
    assert_eq!(taken.engine.as_deref(), Some("aurora-postgresql"));
    let copy = rds
        .copy_snapshot(
            "backupd-ledger-1",
            &CopyRequest {
                region: COPY_REGION.into(),
                identifier: "backupd-ledger-1".into(),
                kms_key_id: None,
                tags: Default::default(),
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(copy.region, COPY_REGION);
    let listed = rds
        .in_region(COPY_REGION)
        .list_snapshots(&SnapshotMatch::IdentifierPrefix("backupd-".into()))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");

    let restored = rds
        .restore(
            "backupd-ledger-1",
            &RestoreRequest {
                identifier: "ledger-restored".into(),
                instance_class: Some("db.r6g.large".into()),
                ..Default::default()
            },
            quick(),
            &cancel,
        )
        .await
        .unwrap();
    assert_eq!(
        restored.resource,
        RdsResource::Cluster("ledger-restored".into())
    );
    assert_eq!(
        restored.writer_instance.as_deref(),
        Some("ledger-restored-1")
    );
    assert!(moto
        .db_instance_ids(SOURCE_REGION)
        .contains(&"ledger-restored-1".to_owned()));
    rds.delete_database(&restored.resource).await.unwrap();
    assert!(!moto
        .db_instance_ids(SOURCE_REGION)
        .contains(&"ledger-restored-1".to_owned()));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_named_error() {
    let port = free_ports(1)[0];
    let endpoint = format!("http://127.0.0.1:{port}");
    let rds = snapshots_of(endpoint.clone(), RdsResource::Instance("orders".into())).await;
    let err = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-orders-1".into(),
                tags: backupd_tags("orders", "b1"),
            },
            quick(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RdsError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Temporary);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot reach RDS at {endpoint} for CreateDBSnapshot in eu-west-1"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn rejected_credentials_are_a_named_error_without_the_secret() {
    // With this, moto checks every request's access key (none is known to it).
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let rds = snapshots_of(moto.endpoint(), RdsResource::Instance("orders".into())).await;
    let err = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-orders-1".into(),
                tags: backupd_tags("orders", "b1"),
            },
            quick(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RdsError::BadCredentials { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    let text = format!("{err} {err:?}");
    assert!(text.contains("InvalidClientTokenId"), "{text}");
    assert!(text.contains("check the source's access key id"), "{text}");
    assert!(!text.contains("very-secret"), "{text}");
}

#[tokio::test]
async fn a_missing_instance_is_named() {
    let moto = Moto::start();
    let rds = snapshots_of(moto.endpoint(), RdsResource::Instance("nosuch".into())).await;
    let err = rds
        .create_snapshot(
            &SnapshotRequest {
                identifier: "backupd-nosuch-1".into(),
                tags: backupd_tags("nosuch", "b1"),
            },
            quick(),
            &CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RdsError::ResourceNotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("DB instance nosuch not found in eu-west-1"),
        "{err}"
    );
}
