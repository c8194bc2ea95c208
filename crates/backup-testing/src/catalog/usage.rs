//! Conformance checks of the usage records the cost report reads (migration 0008), part of
//! [`catalog_conformance`](super::catalog_conformance).

use backup_catalog::{
    Catalog, ObjectRequests, RequestOperation, UsageObject, WalFileCopy, WalFileRecord,
};
use chrono::{TimeDelta, Utc};

use super::{at, complete_backup_of, copy, unique};

pub async fn usage_conformance(catalog: &Catalog) {
    live_and_deleted_copies_are_listed(catalog).await;
    forgotten_wal_files_are_recorded(catalog).await;
    requests_round_trip(catalog).await;
}

fn of_source<'a>(objects: &'a [UsageObject], source: &str) -> Vec<&'a UsageObject> {
    objects.iter().filter(|o| o.source == source).collect()
}

pub async fn live_and_deleted_copies_are_listed(catalog: &Catalog) {
    let source = unique("usage");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2026-11-03T10:00:00Z");
    let b = complete_backup_of(catalog, &source, t0).await;
    let artifacts = catalog.backup_artifacts(b.id).await.unwrap();
    // A copy of each artifact in "archive" (recorded a day later, in another class).
    for a in &artifacts {
        let mut c = copy(a.artifact.id, "archive", t0 + TimeDelta::days(1));
        c.storage_class = Some("DEEP_ARCHIVE".into());
        c.stored_size = 500;
        catalog.record_copy(&c).await.unwrap();
    }
    let (from, to) = (at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"));
    let all = catalog.usage_objects(from, to).await.unwrap();
    let objects = of_source(&all, &source);
    assert_eq!(objects.len(), 4, "{objects:#?}");
    for o in &objects {
        assert_eq!(o.kind, "artifact");
        assert_eq!(o.origin_repository, "primary");
        assert_eq!(o.backup_id.as_deref(), Some(b.id.to_string().as_str()));
        assert_eq!(o.deleted_at, None);
    }
    let archived: Vec<_> = objects
        .iter()
        .filter(|o| o.repository == "archive")
        .collect();
    assert_eq!(archived.len(), 2);
    assert!(archived
        .iter()
        .all(|o| o.storage_class.as_deref() == Some("DEEP_ARCHIVE")
            && o.stored_size == 500
            && o.created_at == t0 + TimeDelta::days(1)));
    // Nothing recorded before the range starts is missing, nothing after it is listed.
    let before = catalog
        .usage_objects(at("2026-10-01T00:00:00Z"), at("2026-11-01T00:00:00Z"))
        .await
        .unwrap();
    assert!(of_source(&before, &source).is_empty());

    // Expiring the archive copy keeps a record of it, with its class and when it went.
    let started = Utc::now() - TimeDelta::seconds(5);
    assert_eq!(catalog.forget_copies(b.id, "archive").await.unwrap(), 2);
    let now_range = (from, Utc::now() + TimeDelta::days(1));
    let all = catalog
        .usage_objects(now_range.0, now_range.1)
        .await
        .unwrap();
    let objects = of_source(&all, &source);
    assert_eq!(objects.len(), 4, "{objects:#?}");
    let gone: Vec<_> = objects.iter().filter(|o| o.deleted_at.is_some()).collect();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|o| o.repository == "archive"
        && o.storage_class.as_deref() == Some("DEEP_ARCHIVE")
        && o.origin_repository == "primary"
        && o.created_at == t0 + TimeDelta::days(1)
        && o.deleted_at.unwrap() >= started));
    // A range that ends before the deletion time still lists them (they existed then); one
    // that starts after it does not.
    let later = catalog
        .usage_objects(
            Utc::now() + TimeDelta::days(1),
            Utc::now() + TimeDelta::days(2),
        )
        .await
        .unwrap();
    assert_eq!(
        of_source(&later, &source)
            .iter()
            .filter(|o| o.deleted_at.is_some())
            .count(),
        0
    );

    // Deleting the backup records its remaining copies.
    catalog.mark_deleting(b.id).await.unwrap();
    catalog.delete_backup(b.id).await.unwrap();
    let all = catalog
        .usage_objects(now_range.0, now_range.1)
        .await
        .unwrap();
    let objects = of_source(&all, &source);
    assert_eq!(objects.len(), 4, "{objects:#?}");
    assert!(objects.iter().all(|o| o.deleted_at.is_some()));
    assert_eq!(
        objects.iter().filter(|o| o.repository == "primary").count(),
        2
    );
}

pub async fn forgotten_wal_files_are_recorded(catalog: &Catalog) {
    let source = unique("usage-wal");
    catalog.upsert_source(&source, "files").await.unwrap();
    let name = "000000010000000000000007";
    let archived_at = at("2026-11-05T00:00:00Z");
    catalog
        .record_wal_file(&WalFileRecord {
            source: source.clone(),
            file_name: name.into(),
            timeline: 1,
            repository: "primary".into(),
            object_key: format!("wal/{name}"),
            plaintext_size: 16 << 20,
            plaintext_sha256: "a".repeat(64),
            stored_size: 3000,
            stored_sha256: "b".repeat(64),
            archived_at,
        })
        .await
        .unwrap();
    catalog
        .record_wal_copy(&WalFileCopy {
            source: source.clone(),
            file_name: name.into(),
            repository: "region-b".into(),
            object_key: format!("wal/{name}"),
            stored_size: 3000,
            stored_sha256: "b".repeat(64),
            copied_at: archived_at + TimeDelta::minutes(1),
        })
        .await
        .unwrap();
    let range = (at("2026-11-01T00:00:00Z"), Utc::now() + TimeDelta::days(1));
    let all = catalog.usage_objects(range.0, range.1).await.unwrap();
    let live = of_source(&all, &source);
    assert_eq!(live.len(), 2, "{live:#?}");
    let copy = live.iter().find(|o| o.repository == "region-b").unwrap();
    assert_eq!(copy.origin_repository, "primary");
    assert_eq!(copy.kind, "wal");
    assert_eq!(copy.created_at, archived_at + TimeDelta::minutes(1));

    assert_eq!(
        catalog
            .forget_wal_files(&source, &[name.to_owned()])
            .await
            .unwrap(),
        1
    );
    let all = catalog.usage_objects(range.0, range.1).await.unwrap();
    let gone = of_source(&all, &source);
    assert_eq!(gone.len(), 2, "{gone:#?}");
    assert!(gone
        .iter()
        .all(|o| o.deleted_at.is_some() && o.kind == "wal"));
    assert!(gone
        .iter()
        .any(|o| o.repository == "primary" && o.created_at == archived_at));
    assert!(catalog.wal_files(&source).await.unwrap().is_empty());
}

pub async fn requests_round_trip(catalog: &Catalog) {
    let source = unique("usage-req");
    catalog.upsert_source(&source, "files").await.unwrap();
    let r = ObjectRequests {
        source: source.clone(),
        repository: "archive".into(),
        storage_class: Some("DEEP_ARCHIVE".into()),
        operation: RequestOperation::Restore,
        tier: Some("bulk".into()),
        requests: 3,
        bytes: 12345,
        requested_at: at("2026-11-20T08:00:00.123456Z"),
    };
    catalog.record_requests(&r).await.unwrap();
    let get = ObjectRequests {
        operation: RequestOperation::Get,
        tier: None,
        storage_class: None,
        requested_at: at("2026-12-01T00:00:00Z"),
        ..r.clone()
    };
    catalog.record_requests(&get).await.unwrap();
    let november: Vec<_> = catalog
        .object_requests(at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        .await
        .unwrap()
        .into_iter()
        .filter(|q| q.source == source)
        .collect();
    assert_eq!(november, vec![r], "the range excludes its end");
    let december: Vec<_> = catalog
        .object_requests(at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        .await
        .unwrap()
        .into_iter()
        .filter(|q| q.source == source)
        .collect();
    assert_eq!(december, vec![get]);
    let bad = ObjectRequests {
        source: String::new(),
        ..december[0].clone()
    };
    assert!(catalog.record_requests(&bad).await.is_err());
}
