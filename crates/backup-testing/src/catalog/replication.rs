//! Conformance checks of the replication queue and thaw requests, part of
//! [`catalog_conformance`](super::catalog_conformance).

use std::time::Duration;

use backup_catalog::{Catalog, CatalogError, CopyTarget, ThawRequest};
use chrono::TimeDelta;

use super::{at, complete_backup_of, copy, get, stored_backup, unique};

/// Runs every replication check.
pub async fn replication_conformance(catalog: &Catalog) {
    queued_copies_are_claimed_once_and_taken_over(catalog).await;
    failed_copies_wait_for_their_retry(catalog).await;
    lag_counts_pending_copies_of_complete_backups(catalog).await;
    forgetting_copies_never_drops_the_last_one(catalog).await;
    queue_rows_go_with_the_backup_but_survive_reimport(catalog).await;
    thaw_requests_round_trip(catalog).await;
}

const LEASE: Duration = Duration::from_secs(60);

fn target(destination: &str, class: Option<&str>) -> CopyTarget {
    CopyTarget {
        destination: destination.into(),
        storage_class: class.map(Into::into),
    }
}

pub async fn queued_copies_are_claimed_once_and_taken_over(catalog: &Catalog) {
    let source = unique("repl-claim");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-01-01T00:00:00Z");
    let (b, done) = stored_backup(catalog, &source, t0).await;
    let dest = unique("region-b");
    let targets = [target(&dest, None), target("archive", Some("DEEP_ARCHIVE"))];
    catalog.enqueue_copies(b.id, &targets, t0).await.unwrap();
    // Queuing again (a retried backup step) adds nothing.
    catalog.enqueue_copies(b.id, &targets, t0).await.unwrap();
    // Not claimable while the backup is running.
    let now = t0 + TimeDelta::minutes(1);
    assert_eq!(
        catalog
            .claim_copy("a", now, LEASE, Some(b.id))
            .await
            .unwrap(),
        None
    );
    catalog.complete_backup(b.id, &done).await.unwrap();
    let first = catalog
        .claim_copy("a", now, LEASE, Some(b.id))
        .await
        .unwrap()
        .expect("a pending copy of a complete backup is claimable");
    assert_eq!(first.backup_id, b.id);
    assert_eq!(first.lease_owner.as_deref(), Some("a"));
    assert_eq!(first.status, "pending");
    let second = catalog
        .claim_copy("a", now, LEASE, Some(b.id))
        .await
        .unwrap()
        .expect("the other destination");
    assert_ne!(first.destination, second.destination);
    let archive = [&first, &second]
        .into_iter()
        .find(|t| t.destination == "archive")
        .unwrap();
    assert_eq!(archive.storage_class.as_deref(), Some("DEEP_ARCHIVE"));
    // Both leased: nobody else gets them until the leases expire.
    assert_eq!(
        catalog
            .claim_copy("b", now, LEASE, Some(b.id))
            .await
            .unwrap(),
        None
    );
    assert!(catalog
        .renew_copy_lease(b.id, &first.destination, "a", now, LEASE)
        .await
        .unwrap());
    assert!(!catalog
        .renew_copy_lease(b.id, &first.destination, "b", now, LEASE)
        .await
        .unwrap());
    let later = now + TimeDelta::minutes(5);
    let taken = catalog
        .claim_copy("b", later, LEASE, Some(b.id))
        .await
        .unwrap()
        .expect("an expired lease is taken over");
    assert_eq!(taken.lease_owner.as_deref(), Some("b"));
    assert_eq!(taken.attempts, 0, "a takeover is not an attempt");
    // The old owner can no longer finish it; the new one can, once.
    assert!(!catalog
        .finish_copy(b.id, &taken.destination, "a", later, 10)
        .await
        .unwrap());
    assert!(catalog
        .finish_copy(b.id, &taken.destination, "b", later, 10)
        .await
        .unwrap());
    assert!(!catalog
        .finish_copy(b.id, &taken.destination, "b", later, 10)
        .await
        .unwrap());
    let tasks: Vec<_> = catalog
        .copy_tasks(false)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.backup_id == b.id)
        .collect();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    let finished = tasks
        .iter()
        .find(|t| t.destination == taken.destination)
        .unwrap();
    assert_eq!(finished.status, "done");
    assert_eq!(finished.bytes_copied, 10);
    assert_eq!(finished.finished_at, Some(later));
    assert_eq!(finished.lease_owner, None);
    // A released copy (its owner died) is claimable at once.
    let other = tasks
        .iter()
        .find(|t| t.destination != taken.destination)
        .unwrap();
    let owner = other.lease_owner.clone().expect("still leased by a");
    assert!(catalog
        .release_copy(b.id, &other.destination, &owner)
        .await
        .unwrap());
    let again = catalog
        .claim_copy("c", now + TimeDelta::seconds(1), LEASE, Some(b.id))
        .await
        .unwrap()
        .expect("released");
    assert_eq!(again.destination, other.destination);
}

pub async fn failed_copies_wait_for_their_retry(catalog: &Catalog) {
    let source = unique("repl-fail");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-02-01T00:00:00Z");
    let b = complete_backup_of(catalog, &source, t0).await;
    let dest = unique("region-b");
    catalog
        .enqueue_copies(b.id, &[target(&dest, None)], t0)
        .await
        .unwrap();
    let task = catalog
        .claim_copy("a", t0, LEASE, Some(b.id))
        .await
        .unwrap()
        .unwrap();
    let retry_at = t0 + TimeDelta::minutes(10);
    assert!(catalog
        .fail_copy(b.id, &task.destination, "a", "endpoint down", retry_at)
        .await
        .unwrap());
    assert_eq!(
        catalog
            .claim_copy("a", t0 + TimeDelta::minutes(9), LEASE, Some(b.id))
            .await
            .unwrap(),
        None,
        "not before its retry time"
    );
    let retried = catalog
        .claim_copy("a", retry_at, LEASE, Some(b.id))
        .await
        .unwrap()
        .expect("due again");
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.error.as_deref(), Some("endpoint down"));
}

pub async fn lag_counts_pending_copies_of_complete_backups(catalog: &Catalog) {
    let source = unique("repl-lag");
    catalog.upsert_source(&source, "files").await.unwrap();
    let dest = unique("lagging");
    let t0 = at("2025-03-01T00:00:00Z");
    let old = complete_backup_of(catalog, &source, t0).await;
    let new = complete_backup_of(catalog, &source, t0 + TimeDelta::hours(1)).await;
    let (running, _) = stored_backup(catalog, &source, t0 + TimeDelta::hours(2)).await;
    for b in [old.id, new.id, running.id] {
        catalog
            .enqueue_copies(b, &[target(&dest, None)], t0)
            .await
            .unwrap();
    }
    let lag_of = |lags: Vec<backup_catalog::DestinationLag>| {
        lags.into_iter()
            .find(|l| l.destination == dest)
            .expect("destination listed")
    };
    let lag = lag_of(catalog.replication_lag().await.unwrap());
    assert_eq!(lag.pending, 2, "the running backup does not count: {lag:?}");
    assert_eq!(lag.pending_bytes, old.stored_bytes + new.stored_bytes);
    assert_eq!(lag.oldest_pending_since, old.finished_at);
    assert_eq!((lag.done, lag.failing, lag.last_copied_at), (0, 0, None));

    let task = catalog
        .claim_copy("a", t0, LEASE, Some(old.id))
        .await
        .unwrap()
        .unwrap();
    let copied_at = t0 + TimeDelta::hours(3);
    catalog
        .finish_copy(old.id, &task.destination, "a", copied_at, 1)
        .await
        .unwrap();
    let task = catalog
        .claim_copy("a", t0, LEASE, Some(new.id))
        .await
        .unwrap()
        .unwrap();
    catalog
        .fail_copy(new.id, &task.destination, "a", "boom", t0)
        .await
        .unwrap();
    let lag = lag_of(catalog.replication_lag().await.unwrap());
    assert_eq!((lag.pending, lag.done, lag.failing), (1, 1, 1), "{lag:?}");
    assert_eq!(lag.oldest_pending_since, new.finished_at);
    assert_eq!(lag.last_copied_at, Some(copied_at));
    let destinations = catalog.copy_destinations(old.id).await.unwrap();
    assert_eq!(destinations, vec![dest.clone()]);
}

pub async fn forgetting_copies_never_drops_the_last_one(catalog: &Catalog) {
    let source = unique("repl-forget");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-04-01T00:00:00Z");
    let b = complete_backup_of(catalog, &source, t0).await;
    let err = catalog.forget_copies(b.id, "primary").await.unwrap_err();
    assert!(
        matches!(err, CatalogError::InvalidValue { .. }) && err.to_string().contains("last copy"),
        "{err}"
    );
    let artifacts = catalog.backup_artifacts(b.id).await.unwrap();
    // Only one artifact copied to region-b: still the last copy of the other.
    catalog
        .record_copy(&copy(artifacts[0].artifact.id, "region-b", t0))
        .await
        .unwrap();
    catalog.forget_copies(b.id, "primary").await.unwrap_err();
    catalog
        .record_copy(&copy(artifacts[1].artifact.id, "region-b", t0))
        .await
        .unwrap();
    catalog.set_legal_hold(b.id, true).await.unwrap();
    assert!(matches!(
        catalog.forget_copies(b.id, "region-b").await,
        Err(CatalogError::LegalHold { .. })
    ));
    catalog.set_legal_hold(b.id, false).await.unwrap();
    assert_eq!(catalog.forget_copies(b.id, "region-b").await.unwrap(), 2);
    for a in catalog.backup_artifacts(b.id).await.unwrap() {
        let repos: Vec<_> = a.copies.iter().map(|c| c.repository.as_str()).collect();
        assert_eq!(repos, ["primary"]);
    }
}

pub async fn queue_rows_go_with_the_backup_but_survive_reimport(catalog: &Catalog) {
    let source = unique("repl-delete");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-05-01T00:00:00Z");
    let b = complete_backup_of(catalog, &source, t0).await;
    let dest = unique("region-b");
    catalog
        .enqueue_copies(b.id, &[target(&dest, None)], t0)
        .await
        .unwrap();
    catalog
        .record_thaw(&ThawRequest {
            backup_id: b.id,
            repository: "archive".into(),
            tier: "bulk".into(),
            days: 2,
            requested_at: t0,
        })
        .await
        .unwrap();
    catalog.mark_deleting(b.id).await.unwrap();
    catalog.delete_backup(b.id).await.unwrap();
    assert!(catalog.copy_destinations(b.id).await.unwrap().is_empty());
    assert!(!catalog
        .thaw_requests()
        .await
        .unwrap()
        .iter()
        .any(|t| t.backup_id == b.id));
    assert!(get_opt(catalog, b.id).await.is_none());
}

async fn get_opt(
    catalog: &Catalog,
    id: backup_core::BackupId,
) -> Option<backup_catalog::BackupRecord> {
    catalog.get_backup(id).await.unwrap()
}

pub async fn thaw_requests_round_trip(catalog: &Catalog) {
    let source = unique("repl-thaw");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-06-01T00:00:00Z");
    let b = complete_backup_of(catalog, &source, t0).await;
    let mut request = ThawRequest {
        backup_id: b.id,
        repository: "archive".into(),
        tier: "standard".into(),
        days: 3,
        requested_at: t0,
    };
    catalog.record_thaw(&request).await.unwrap();
    request.tier = "bulk".into();
    request.requested_at = t0 + TimeDelta::hours(1);
    catalog.record_thaw(&request).await.unwrap();
    let mine: Vec<_> = catalog
        .thaw_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.backup_id == b.id)
        .collect();
    assert_eq!(mine, vec![request]);
    assert_eq!(get(catalog, b.id).await.id, b.id);
}
