//! Conformance checks of what retention needs from the catalog: backup tags, legal holds,
//! the `deleting` status (`mark_deleting`) and `stored_copies`, part of
//! [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{
    BackupStatus, Catalog, CatalogError, CopyRecord, ErrorKind, NewBackup, StoredCopy,
};
use backup_core::BackupId;
use chrono::TimeDelta;

use super::{
    at, complete_backup_of, completion, copy, get, ids, imported, list, new_backup, running_record,
    status_of, stored_backup, unique,
};

/// Runs every retention check.
pub async fn retention_conformance(catalog: &Catalog) {
    tags_round_trip(catalog).await;
    legal_holds_protect_backups(catalog).await;
    mark_deleting_lifecycle(catalog).await;
    stored_copies_know_where_and_since_when(catalog).await;
}

pub async fn tags_round_trip(catalog: &Catalog) {
    let source = unique("tags");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2024-09-01T00:00:00Z");
    let tagged = NewBackup {
        tag: Some("pre-upgrade ünïcode".into()),
        ..new_backup(&source, t0)
    };
    catalog.begin_backup(&tagged).await.unwrap();
    assert_eq!(get(catalog, tagged.id).await, running_record(&tagged));
    // Retrying is fine; the same id with another tag is another backup.
    catalog.begin_backup(&tagged).await.unwrap();
    assert_err!(
        catalog
            .begin_backup(&NewBackup {
                tag: None,
                ..tagged.clone()
            })
            .await,
        CatalogError::BackupExists { .. }
    );
    catalog
        .fail_backup(tagged.id, t0, "test over")
        .await
        .unwrap();
    assert_eq!(
        get(catalog, tagged.id).await.tag.as_deref(),
        Some("pre-upgrade ünïcode")
    );

    // Completed and imported backups keep their tag too.
    let (b, done) = stored_backup(catalog, &source, t0 + TimeDelta::hours(1)).await;
    assert_eq!(get(catalog, b.id).await.tag, None);
    catalog.complete_backup(b.id, &done).await.unwrap();
    let mut import = imported(&source, BackupId::new(), t0 + TimeDelta::hours(2));
    import.backup.tag = Some("weekly".into());
    catalog.import_backup(&import).await.unwrap();
    let record = get(catalog, import.backup.id).await;
    assert_eq!(record.tag.as_deref(), Some("weekly"));
    assert!(!record.legal_hold);
}

pub async fn legal_holds_protect_backups(catalog: &Catalog) {
    let source = unique("hold");
    catalog.upsert_source(&source, "files").await.unwrap();
    let held = complete_backup_of(catalog, &source, at("2024-09-02T00:00:00Z")).await;
    assert!(!held.legal_hold);

    let record = catalog.set_legal_hold(held.id, true).await.unwrap();
    assert!(record.legal_hold);
    assert_eq!(
        record,
        backup_catalog::BackupRecord {
            legal_hold: true,
            ..held.clone()
        }
    );
    assert_eq!(get(catalog, held.id).await, record);
    // Setting it again changes nothing.
    assert_eq!(catalog.set_legal_hold(held.id, true).await.unwrap(), record);
    assert!(list(catalog, Some(&source), None).await[0].legal_hold);

    // Neither step of a deletion touches a held backup.
    let e = assert_err!(
        catalog.mark_deleting(held.id).await,
        CatalogError::LegalHold { .. }
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(
        e.to_string().contains(&held.id.to_string()) && e.to_string().contains("unhold"),
        "{e}"
    );
    assert_err!(
        catalog.delete_backup(held.id).await,
        CatalogError::LegalHold { .. }
    );
    assert_eq!(get(catalog, held.id).await, record, "held backup unchanged");

    // A rebuild (re-import) keeps the hold.
    let mut import = imported(&source, BackupId::new(), at("2024-09-03T00:00:00Z"));
    catalog.import_backup(&import).await.unwrap();
    catalog
        .set_legal_hold(import.backup.id, true)
        .await
        .unwrap();
    import.completion.stored_bytes += 1;
    catalog.import_backup(&import).await.unwrap();
    let reimported = get(catalog, import.backup.id).await;
    assert!(reimported.legal_hold, "re-import dropped the legal hold");
    assert_eq!(reimported.stored_bytes, import.completion.stored_bytes);

    // Running and failed backups can be held too.
    let running = new_backup(&source, at("2024-09-04T00:00:00Z"));
    catalog.begin_backup(&running).await.unwrap();
    assert!(
        catalog
            .set_legal_hold(running.id, true)
            .await
            .unwrap()
            .legal_hold
    );
    catalog
        .fail_backup(running.id, at("2024-09-04T00:01:00Z"), "test over")
        .await
        .unwrap();
    let failed = get(catalog, running.id).await;
    assert!(failed.legal_hold && failed.status == BackupStatus::Failed);

    // Releasing makes them deletable again.
    for id in [held.id, import.backup.id, running.id] {
        assert!(!catalog.set_legal_hold(id, false).await.unwrap().legal_hold);
    }
    assert_eq!(
        catalog.mark_deleting(held.id).await.unwrap().status,
        BackupStatus::Deleting
    );
    catalog.delete_backup(held.id).await.unwrap();
    catalog.delete_backup(running.id).await.unwrap();

    assert_err!(
        catalog.set_legal_hold(BackupId::new(), true).await,
        CatalogError::BackupNotFound { .. }
    );
}

pub async fn mark_deleting_lifecycle(catalog: &Catalog) {
    let source = unique("deleting");
    catalog.upsert_source(&source, "files").await.unwrap();
    let older = complete_backup_of(catalog, &source, at("2024-09-10T00:00:00Z")).await;
    let newer = complete_backup_of(catalog, &source, at("2024-09-11T00:00:00Z")).await;
    let failed = new_backup(&source, at("2024-09-12T00:00:00Z"));
    catalog.begin_backup(&failed).await.unwrap();
    catalog
        .fail_backup(failed.id, at("2024-09-12T00:01:00Z"), "boom")
        .await
        .unwrap();
    // Old heartbeat, so abandoning it does not disturb other checks' running backups.
    let abandoned = new_backup(&source, at("2000-01-01T00:00:00Z"));
    catalog.begin_backup(&abandoned).await.unwrap();
    let gone: Vec<_> = catalog
        .abandon_stale_backups(at("2000-01-02T00:00:00Z"))
        .await
        .unwrap()
        .into_iter()
        .filter(|b| b.source == source)
        .collect();
    assert_eq!(ids(&gone), vec![abandoned.id]);
    let running = new_backup(&source, at("2024-09-13T00:00:00Z"));
    catalog.begin_backup(&running).await.unwrap();

    // complete, failed and abandoned -> deleting; every other field stays.
    for id in [newer.id, failed.id, abandoned.id] {
        let before = get(catalog, id).await;
        let marked = catalog.mark_deleting(id).await.unwrap();
        assert_eq!(
            marked,
            backup_catalog::BackupRecord {
                status: BackupStatus::Deleting,
                ..before
            }
        );
        assert_eq!(get(catalog, id).await, marked);
        // Repeating it (a re-run after a crash) is fine.
        assert_eq!(catalog.mark_deleting(id).await.unwrap(), marked);
    }
    let e = assert_err!(
        catalog.mark_deleting(running.id).await,
        CatalogError::BackupRunning { .. }
    );
    assert!(e.to_string().contains(&running.id.to_string()), "{e}");
    assert_eq!(status_of(catalog, running.id).await, BackupStatus::Running);
    assert_err!(
        catalog.mark_deleting(BackupId::new()).await,
        CatalogError::BackupNotFound { .. }
    );

    // A deleting backup is no longer restorable: not the latest, not holdable, not
    // importable, not writable.
    assert_eq!(
        catalog.latest_complete_backup(&source).await.unwrap(),
        Some(older.clone())
    );
    assert_eq!(
        ids(&list(catalog, Some(&source), Some(BackupStatus::Deleting)).await),
        vec![failed.id, newer.id, abandoned.id]
    );
    let e = assert_err!(
        catalog.set_legal_hold(newer.id, true).await,
        CatalogError::BackupDeleting { .. }
    );
    assert!(e.to_string().contains("deleting"), "{e}");
    let import = imported(&source, newer.id, newer.started_at);
    assert_err!(
        catalog.import_backup(&import).await,
        CatalogError::BackupDeleting { .. }
    );
    assert_eq!(status_of(catalog, newer.id).await, BackupStatus::Deleting);
    let e = assert_err!(
        catalog
            .heartbeat_backup(newer.id, at("2024-09-14T00:00:00Z"))
            .await,
        CatalogError::BackupNotRunning {
            status: BackupStatus::Deleting,
            ..
        }
    );
    assert!(e.to_string().contains("deleting"), "{e}");
    assert_err!(
        catalog
            .complete_backup(
                newer.id,
                &completion(newer.manifest_artifact.unwrap(), newer.started_at)
            )
            .await,
        CatalogError::BackupNotRunning { .. }
    );

    // The last step removes the rows; its artifacts go with them.
    for id in [newer.id, failed.id, abandoned.id] {
        catalog.delete_backup(id).await.unwrap();
        assert_eq!(catalog.get_backup(id).await.unwrap(), None);
    }
    assert_err!(
        catalog.backup_artifacts(newer.id).await,
        CatalogError::BackupNotFound { .. }
    );
    catalog
        .fail_backup(running.id, at("2024-09-13T00:01:00Z"), "test over")
        .await
        .unwrap();
    assert_eq!(
        ids(&list(catalog, Some(&source), None).await),
        vec![running.id, older.id]
    );
}

pub async fn stored_copies_know_where_and_since_when(catalog: &Catalog) {
    let source = unique("stored");
    let other = unique("stored-other");
    catalog.upsert_source(&source, "files").await.unwrap();
    catalog.upsert_source(&other, "files").await.unwrap();
    let t0 = at("2024-09-20T00:00:00.000001Z");
    let (b, done) = stored_backup(catalog, &source, t0).await;
    catalog.complete_backup(b.id, &done).await.unwrap();
    complete_backup_of(catalog, &other, t0).await;
    let artifacts = catalog.backup_artifacts(b.id).await.unwrap();
    let data = &artifacts[0].artifact;
    let archived = CopyRecord {
        storage_class: Some("DEEP_ARCHIVE".into()),
        ..copy(data.id, "vault", at("2024-10-01T00:00:00Z"))
    };
    catalog.record_copy(&archived).await.unwrap();

    let expected = |created_vault| {
        let mut all: Vec<StoredCopy> = artifacts
            .iter()
            .flat_map(|a| &a.copies)
            .map(|c| StoredCopy {
                backup_id: b.id,
                artifact_id: c.artifact_id,
                repository: c.repository.clone(),
                object_key: c.object_key.clone(),
                storage_class: c.storage_class.clone(),
                stored_size: c.stored_size,
                created_at: c.verified_at,
            })
            .collect();
        all.push(StoredCopy {
            backup_id: b.id,
            artifact_id: data.id,
            repository: "vault".into(),
            object_key: archived.object_key.clone(),
            storage_class: Some("DEEP_ARCHIVE".into()),
            stored_size: archived.stored_size,
            created_at: created_vault,
        });
        all.sort_by(|x, y| {
            (x.artifact_id.to_string(), &x.repository)
                .cmp(&(y.artifact_id.to_string(), &y.repository))
        });
        all
    };
    let first = expected(archived.verified_at);
    assert_eq!(catalog.stored_copies(&source).await.unwrap(), first);

    // Re-verifying or re-recording a copy does not move its creation time.
    catalog
        .mark_copy_verified(data.id, "vault", at("2025-01-01T00:00:00Z"))
        .await
        .unwrap();
    catalog
        .record_copy(&CopyRecord {
            verified_at: at("2025-02-01T00:00:00Z"),
            ..archived.clone()
        })
        .await
        .unwrap();
    assert_eq!(catalog.stored_copies(&source).await.unwrap(), first);
    assert!(catalog
        .stored_copies(&unique("nobody"))
        .await
        .unwrap()
        .is_empty());
}
