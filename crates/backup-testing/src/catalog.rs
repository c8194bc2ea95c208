//! Catalog conformance suite: every backend must pass [`catalog_conformance`].
//!
//! The checks assume a database of their own (see [`PostgresTestDatabase`] for Postgres, a
//! tempdir file for SQLite) but still name their sources uniquely and filter what they read
//! by source, so running the suite twice on one database also works.
//!
//! Timestamps are written with at most microsecond precision, because that is what both
//! backends keep; one check asserts that finer values are truncated, not rounded.

use std::time::Duration;

use backup_catalog::{
    ArtifactRecord, ArtifactWithCopies, Backend, BackupCompletion, BackupFilter, BackupRecord,
    BackupStatus, Catalog, CatalogError, CopyRecord, ErrorKind, ImportedBackup, NewBackup,
};
use backup_core::{ArtifactId, BackupId};
use chrono::{DateTime, TimeDelta, Timelike, Utc};
use sqlx::Connection;
use uuid::Uuid;

/// Runs every check against `catalog`. Panics (with the failing check's message) on the
/// first violation.
pub async fn catalog_conformance(catalog: &Catalog) {
    sources_upsert_and_list(catalog).await;
    lifecycle_round_trips_every_field(catalog).await;
    complete_requires_artifacts_copies_and_manifest(catalog).await;
    fail_marks_backup_failed(catalog).await;
    stale_backups_are_abandoned(catalog).await;
    list_filters_and_orders_newest_first(catalog).await;
    prefix_lookup(catalog).await;
    copies_upsert_and_verify(catalog).await;
    import_is_idempotent_and_transactional(catalog).await;
    delete_removes_backup_artifacts_and_copies(catalog).await;
    invalid_input_is_rejected(catalog).await;
    retries_are_idempotent(catalog).await;
    concurrent_writers_succeed(catalog).await;
    retention::retention_conformance(catalog).await;
    jobs::jobs_conformance(catalog).await;
    replication::replication_conformance(catalog).await;
    postgres::postgres_conformance(catalog).await;
    usage::usage_conformance(catalog).await;
    drills::drills_conformance(catalog).await;
    mongodb::mongodb_conformance(catalog).await;
    elasticsearch::elasticsearch_conformance(catalog).await;
    rds::rds_conformance(catalog).await;
    azure_sql::azure_sql_conformance(catalog).await;
}

// ---- helpers ---------------------------------------------------------------------------------

/// Asserts that `$result` is an `Err` matching `$pattern` and returns the error.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err(e @ $pattern) => e,
            other => panic!(
                "expected Err({}), got {:?} at {}:{}",
                stringify!($pattern),
                other,
                file!(),
                line!()
            ),
        }
    };
}

/// A UTC time from RFC 3339 text (use at most 6 fractional digits).
pub fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("bad test timestamp {rfc3339:?}: {e}"))
        .with_timezone(&Utc)
}

/// `t` truncated to the microsecond precision both backends keep.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

/// A source name no other check (or earlier run) uses.
fn unique(label: &str) -> String {
    format!("{label}-{}", Uuid::new_v4().simple())
}

/// A valid lowercase SHA-256 hex digest derived from `seed`.
fn sha(seed: u8) -> String {
    format!("{seed:02x}").repeat(32)
}

fn new_backup(source: &str, started_at: DateTime<Utc>) -> NewBackup {
    NewBackup {
        id: BackupId::new(),
        source: source.to_owned(),
        repository: "primary".into(),
        backup_type: "full".into(),
        started_at,
        host: "db-host-1".into(),
        pid: 4242,
        tool_version: "0.1.0-test".into(),
        tag: None,
    }
}

fn artifact(
    backup_id: BackupId,
    role: &str,
    size: u64,
    created_at: DateTime<Utc>,
) -> ArtifactRecord {
    ArtifactRecord {
        id: ArtifactId::new(),
        backup_id,
        role: role.into(),
        plaintext_size: size,
        plaintext_sha256: sha(size as u8),
        segment_count: size / 1024 + 1,
        created_at,
    }
}

fn copy(artifact_id: ArtifactId, repository: &str, verified_at: DateTime<Utc>) -> CopyRecord {
    CopyRecord {
        artifact_id,
        repository: repository.into(),
        object_key: format!("{repository}/objects/{artifact_id}"),
        stored_size: 777,
        stored_sha256: sha(0xab),
        storage_class: None,
        verified_at,
    }
}

/// What `get_backup` must return right after `begin_backup(b)`.
fn running_record(b: &NewBackup) -> BackupRecord {
    BackupRecord {
        id: b.id,
        source: b.source.clone(),
        repository: b.repository.clone(),
        backup_type: b.backup_type.clone(),
        status: BackupStatus::Running,
        started_at: b.started_at,
        finished_at: None,
        heartbeat_at: b.started_at,
        host: b.host.clone(),
        pid: b.pid,
        tool_version: b.tool_version.clone(),
        file_count: 0,
        skipped_count: 0,
        plaintext_bytes: 0,
        stored_bytes: 0,
        manifest_artifact: None,
        error: None,
        tag: b.tag.clone(),
        legal_hold: false,
    }
}

fn completion(manifest: ArtifactId, finished_at: DateTime<Utc>) -> BackupCompletion {
    BackupCompletion {
        finished_at,
        file_count: 10,
        skipped_count: 1,
        plaintext_bytes: 3000,
        stored_bytes: 1000,
        manifest_artifact: manifest,
    }
}

/// Begins a backup of `source` and records a data and a manifest artifact, each with a
/// copy in "primary"; returns the backup and the completion that finishes it.
async fn stored_backup(
    catalog: &Catalog,
    source: &str,
    started_at: DateTime<Utc>,
) -> (NewBackup, BackupCompletion) {
    let b = new_backup(source, started_at);
    catalog.begin_backup(&b).await.expect("begin_backup");
    let data = artifact(b.id, "data", 4096, started_at + TimeDelta::seconds(1));
    let manifest = artifact(b.id, "manifest", 100, started_at + TimeDelta::seconds(2));
    for a in [&data, &manifest] {
        catalog.record_artifact(a).await.expect("record_artifact");
        catalog
            .record_copy(&copy(a.id, "primary", a.created_at))
            .await
            .expect("record_copy");
    }
    let done = completion(manifest.id, started_at + TimeDelta::seconds(3));
    (b, done)
}

async fn complete_backup_of(
    catalog: &Catalog,
    source: &str,
    started_at: DateTime<Utc>,
) -> BackupRecord {
    let (b, done) = stored_backup(catalog, source, started_at).await;
    catalog
        .complete_backup(b.id, &done)
        .await
        .expect("complete_backup");
    get(catalog, b.id).await
}

async fn get(catalog: &Catalog, id: BackupId) -> BackupRecord {
    catalog
        .get_backup(id)
        .await
        .expect("get_backup")
        .unwrap_or_else(|| panic!("backup {id} missing"))
}

async fn status_of(catalog: &Catalog, id: BackupId) -> BackupStatus {
    get(catalog, id).await.status
}

fn ids(backups: &[BackupRecord]) -> Vec<BackupId> {
    backups.iter().map(|b| b.id).collect()
}

async fn list(
    catalog: &Catalog,
    source: Option<&str>,
    status: Option<BackupStatus>,
) -> Vec<BackupRecord> {
    catalog
        .list_backups(&BackupFilter {
            source: source.map(str::to_owned),
            status,
        })
        .await
        .expect("list_backups")
}

// The job queue checks (after the helpers: they use `assert_err!`).
pub mod drills;
pub mod elasticsearch;
pub mod jobs;
pub mod mongodb;
// Tags, legal holds, `deleting` and stored copies (what `prune` needs).
pub mod postgres;
pub mod rds;
// Azure SQL backup records.
pub mod azure_sql;
pub mod replication;
pub mod retention;
pub mod usage;

// ---- checks ----------------------------------------------------------------------------------

pub async fn sources_upsert_and_list(catalog: &Catalog) {
    let name_b = unique("src-b");
    let name_a = format!("src-a{}", &name_b[5..]);
    let before = micros(Utc::now());
    catalog.upsert_source(&name_b, "postgres").await.unwrap();
    catalog.upsert_source(&name_a, "files").await.unwrap();
    let after = Utc::now();

    let sources = catalog.list_sources().await.unwrap();
    let ours: Vec<_> = sources
        .iter()
        .filter(|s| s.name == name_a || s.name == name_b)
        .collect();
    assert_eq!(ours.len(), 2, "both sources listed: {sources:?}");
    assert_eq!(ours[0].name, name_a, "sources are sorted by name");
    assert_eq!(ours[1].kind, "postgres");
    let created = ours[1].created_at;
    assert!(
        before <= created && created <= after,
        "created_at {created} not within [{before}, {after}]"
    );

    // Upserting again changes the kind but keeps created_at.
    tokio::time::sleep(Duration::from_millis(5)).await;
    catalog.upsert_source(&name_b, "mongodb").await.unwrap();
    let again = catalog.list_sources().await.unwrap();
    let b = again.iter().find(|s| s.name == name_b).unwrap();
    assert_eq!(b.kind, "mongodb");
    assert_eq!(b.created_at, created, "upsert must not reset created_at");
    assert_eq!(
        again.len(),
        sources.len(),
        "upsert must not add a second row"
    );
}

pub async fn lifecycle_round_trips_every_field(catalog: &Catalog) {
    let source = unique("lifecycle");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let b = NewBackup {
        pid: u32::MAX,
        host: "host with spaces & ünïcode".into(),
        ..new_backup(&source, at("2024-03-01T10:00:00.123456Z"))
    };
    catalog.begin_backup(&b).await.unwrap();
    let mut expected = running_record(&b);
    assert_eq!(
        catalog.get_backup(b.id).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(expected.compression_ratio(), None);

    // Heartbeats move heartbeat_at; nanoseconds are truncated (not rounded) to micros.
    let beat = at("2024-03-01T10:05:00.999999Z") + TimeDelta::nanoseconds(999);
    catalog.heartbeat_backup(b.id, beat).await.unwrap();
    expected.heartbeat_at = at("2024-03-01T10:05:00.999999Z");
    assert_eq!(get(catalog, b.id).await, expected, "after heartbeat");

    // Sizes above 2^32 (and up to i64::MAX) must survive exactly.
    let data = ArtifactRecord {
        plaintext_size: 5 * (1 << 32) + 7,
        segment_count: 3_000_000_001,
        plaintext_sha256: sha(0x5a),
        ..artifact(b.id, "data", 0, at("2024-03-01T10:01:00.000001Z"))
    };
    let manifest = artifact(b.id, "manifest", 1234, at("2024-03-01T10:02:00.999999Z"));
    catalog.record_artifact(&data).await.unwrap();
    catalog.record_artifact(&manifest).await.unwrap();

    let data_primary = CopyRecord {
        stored_size: (1 << 40) + 3,
        stored_sha256: sha(0xc3),
        ..copy(data.id, "primary", at("2024-03-01T10:01:30.5Z"))
    };
    let data_offsite = CopyRecord {
        storage_class: Some("DEEP_ARCHIVE".into()),
        object_key: "backups/2024/03/01/data with spaces.bin".into(),
        ..copy(data.id, "offsite", at("2024-03-01T10:01:31Z"))
    };
    let manifest_primary = copy(manifest.id, "primary", at("2024-03-01T10:02:01.000010Z"));
    for c in [&data_primary, &data_offsite, &manifest_primary] {
        catalog.record_copy(c).await.unwrap();
    }

    let done = BackupCompletion {
        finished_at: at("2024-03-01T10:03:00.5Z"),
        file_count: (1 << 33) + 1,
        skipped_count: 2,
        plaintext_bytes: i64::MAX as u64,
        stored_bytes: 1 << 35,
        manifest_artifact: manifest.id,
    };
    catalog.complete_backup(b.id, &done).await.unwrap();
    expected.status = BackupStatus::Complete;
    expected.finished_at = Some(done.finished_at);
    expected.file_count = done.file_count;
    expected.skipped_count = done.skipped_count;
    expected.plaintext_bytes = done.plaintext_bytes;
    expected.stored_bytes = done.stored_bytes;
    expected.manifest_artifact = Some(manifest.id);
    let stored = get(catalog, b.id).await;
    assert_eq!(stored, expected, "after complete");
    let ratio = stored.compression_ratio().unwrap();
    assert!((ratio - (i64::MAX as f64 / (1u64 << 35) as f64)).abs() < 1.0);

    // Artifacts oldest first, copies by repository.
    assert_eq!(
        catalog.backup_artifacts(b.id).await.unwrap(),
        vec![
            ArtifactWithCopies {
                artifact: data.clone(),
                copies: vec![data_offsite, data_primary],
            },
            ArtifactWithCopies {
                artifact: manifest.clone(),
                copies: vec![manifest_primary],
            },
        ]
    );
    assert_eq!(
        catalog.latest_complete_backup(&source).await.unwrap(),
        Some(expected.clone())
    );
    assert_eq!(
        list(catalog, Some(&source), None).await,
        vec![expected.clone()]
    );

    // A finished backup no longer changes.
    let later = at("2024-03-01T11:00:00Z");
    let e = assert_err!(
        catalog.heartbeat_backup(b.id, later).await,
        CatalogError::BackupNotRunning {
            status: BackupStatus::Complete,
            ..
        }
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert!(e.to_string().contains(&b.id.to_string()), "{e}");
    assert_err!(
        catalog
            .record_artifact(&artifact(b.id, "data", 1, later))
            .await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_err!(
        catalog.fail_backup(b.id, later, "late failure").await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_err!(
        catalog
            .complete_backup(
                b.id,
                &BackupCompletion {
                    finished_at: later,
                    ..done.clone()
                }
            )
            .await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_eq!(
        get(catalog, b.id).await,
        expected,
        "finished backup unchanged"
    );

    // Unknown backups are reported as such.
    let unknown = BackupId::new();
    assert_eq!(catalog.get_backup(unknown).await.unwrap(), None);
    assert_err!(
        catalog.heartbeat_backup(unknown, later).await,
        CatalogError::BackupNotFound { .. }
    );
    assert_err!(
        catalog.backup_artifacts(unknown).await,
        CatalogError::BackupNotFound { .. }
    );
    assert_err!(
        catalog.complete_backup(unknown, &done).await,
        CatalogError::BackupNotFound { .. }
    );
    assert_eq!(
        catalog
            .latest_complete_backup(&unique("none"))
            .await
            .unwrap(),
        None
    );
}

pub async fn complete_requires_artifacts_copies_and_manifest(catalog: &Catalog) {
    let source = unique("incomplete");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2024-04-01T00:00:00Z");
    let b = new_backup(&source, t0);
    catalog.begin_backup(&b).await.unwrap();
    let data = artifact(b.id, "data", 10, t0 + TimeDelta::seconds(1));
    let manifest = artifact(b.id, "manifest", 20, t0 + TimeDelta::seconds(2));
    let done = completion(manifest.id, t0 + TimeDelta::seconds(3));

    // No artifacts at all.
    let e = assert_err!(
        catalog.complete_backup(b.id, &done).await,
        CatalogError::Incomplete { .. }
    );
    assert!(e.to_string().contains("no artifacts"), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_eq!(status_of(catalog, b.id).await, BackupStatus::Running);

    // Artifacts, but the data artifact has no copy.
    catalog.record_artifact(&data).await.unwrap();
    catalog.record_artifact(&manifest).await.unwrap();
    catalog
        .record_copy(&copy(manifest.id, "primary", t0))
        .await
        .unwrap();
    let e = assert_err!(
        catalog.complete_backup(b.id, &done).await,
        CatalogError::Incomplete { .. }
    );
    assert!(e.to_string().contains(&data.id.to_string()), "{e}");
    assert_eq!(status_of(catalog, b.id).await, BackupStatus::Running);

    catalog
        .record_copy(&copy(data.id, "primary", t0))
        .await
        .unwrap();

    // The manifest must be this backup's artifact with role "manifest".
    for wrong in [data.id, ArtifactId::new()] {
        let e = assert_err!(
            catalog
                .complete_backup(b.id, &completion(wrong, done.finished_at))
                .await,
            CatalogError::Incomplete { .. }
        );
        assert!(e.to_string().contains("manifest"), "{e}");
    }
    let (other, other_done) = stored_backup(catalog, &source, t0).await;
    assert_err!(
        catalog.complete_backup(b.id, &other_done).await,
        CatalogError::Incomplete { .. }
    );
    assert_eq!(status_of(catalog, b.id).await, BackupStatus::Running);
    assert_eq!(get(catalog, b.id).await.manifest_artifact, None);

    catalog.complete_backup(b.id, &done).await.unwrap();
    assert_eq!(status_of(catalog, b.id).await, BackupStatus::Complete);
    catalog
        .complete_backup(other.id, &other_done)
        .await
        .unwrap();
}

pub async fn fail_marks_backup_failed(catalog: &Catalog) {
    let source = unique("fail");
    catalog.upsert_source(&source, "files").await.unwrap();
    let b = new_backup(&source, at("2024-05-01T08:00:00.000500Z"));
    catalog.begin_backup(&b).await.unwrap();
    catalog
        .record_artifact(&artifact(b.id, "data", 1, b.started_at))
        .await
        .unwrap();
    let finished = at("2024-05-01T08:10:00.250000Z");
    let message = "disk full writing /var/lib/postgres: 'quoted' \"text\"\nsecond line";
    catalog.fail_backup(b.id, finished, message).await.unwrap();

    let expected = BackupRecord {
        status: BackupStatus::Failed,
        finished_at: Some(finished),
        error: Some(message.to_owned()),
        ..running_record(&b)
    };
    assert_eq!(get(catalog, b.id).await, expected);
    assert_eq!(
        list(catalog, Some(&source), Some(BackupStatus::Failed)).await,
        vec![expected]
    );
    assert_eq!(catalog.latest_complete_backup(&source).await.unwrap(), None);
    assert_err!(
        catalog.heartbeat_backup(b.id, finished).await,
        CatalogError::BackupNotRunning {
            status: BackupStatus::Failed,
            ..
        }
    );
    assert_err!(
        catalog.fail_backup(b.id, finished, "again").await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_err!(
        catalog.fail_backup(BackupId::new(), finished, "x").await,
        CatalogError::BackupNotFound { .. }
    );
}

pub async fn stale_backups_are_abandoned(catalog: &Catalog) {
    // Old dates (2001) so no other check's running backup is older than the cut-offs.
    let source = unique("abandon");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let start = at("2001-01-01T00:00:00Z");
    let cutoff = at("2001-06-01T00:00:00Z");

    let stale = new_backup(&source, start);
    let just_before = new_backup(&source, start + TimeDelta::hours(1));
    let at_cutoff = new_backup(&source, start + TimeDelta::hours(2));
    let fresh = new_backup(&source, start + TimeDelta::hours(3));
    for b in [&stale, &just_before, &at_cutoff, &fresh] {
        catalog.begin_backup(b).await.unwrap();
    }
    let finished_old = complete_backup_of(catalog, &source, at("2000-06-01T00:00:00Z")).await;
    catalog
        .heartbeat_backup(just_before.id, at("2001-05-31T23:59:59.999999Z"))
        .await
        .unwrap();
    catalog
        .heartbeat_backup(at_cutoff.id, cutoff)
        .await
        .unwrap();
    catalog
        .heartbeat_backup(fresh.id, at("2001-12-01T00:00:00Z"))
        .await
        .unwrap();

    let ours = |backups: Vec<BackupRecord>| -> Vec<BackupRecord> {
        backups.into_iter().filter(|b| b.source == source).collect()
    };

    // Strictly older than the cut-off, newest first.
    let abandoned = ours(catalog.abandon_stale_backups(cutoff).await.unwrap());
    assert_eq!(ids(&abandoned), vec![just_before.id, stale.id]);
    for b in &abandoned {
        assert_eq!(b.status, BackupStatus::Abandoned);
        assert_eq!(b.finished_at, None);
        let error = b.error.as_deref().unwrap_or_default();
        assert!(error.contains("heartbeat"), "abandon reason: {error:?}");
    }
    assert_eq!(get(catalog, stale.id).await, abandoned[1]);
    assert_eq!(
        get(catalog, just_before.id).await.heartbeat_at,
        at("2001-05-31T23:59:59.999999Z")
    );
    assert_eq!(
        status_of(catalog, at_cutoff.id).await,
        BackupStatus::Running
    );
    assert_eq!(status_of(catalog, fresh.id).await, BackupStatus::Running);
    assert_eq!(
        get(catalog, finished_old.id).await,
        finished_old,
        "complete backups are never abandoned"
    );

    // Half a second later the one at the cut-off is stale too (sub-second comparison).
    let abandoned = ours(
        catalog
            .abandon_stale_backups(cutoff + TimeDelta::milliseconds(500))
            .await
            .unwrap(),
    );
    assert_eq!(ids(&abandoned), vec![at_cutoff.id]);
    assert_eq!(status_of(catalog, fresh.id).await, BackupStatus::Running);

    // An abandoned backup's writer learns it must stop.
    let e = assert_err!(
        catalog.heartbeat_backup(stale.id, cutoff).await,
        CatalogError::BackupNotRunning {
            status: BackupStatus::Abandoned,
            ..
        }
    );
    assert!(e.to_string().contains("abandoned"), "{e}");
    assert_err!(
        catalog
            .record_artifact(&artifact(stale.id, "data", 1, cutoff))
            .await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_err!(
        catalog
            .complete_backup(stale.id, &completion(ArtifactId::new(), cutoff))
            .await,
        CatalogError::BackupNotRunning { .. }
    );
    assert_eq!(
        list(catalog, Some(&source), Some(BackupStatus::Abandoned))
            .await
            .len(),
        3
    );

    // Nothing left to abandon for this source; tidy up the fresh one.
    assert!(ours(catalog.abandon_stale_backups(cutoff).await.unwrap()).is_empty());
    catalog
        .fail_backup(fresh.id, at("2001-12-02T00:00:00Z"), "test over")
        .await
        .unwrap();
}

pub async fn list_filters_and_orders_newest_first(catalog: &Catalog) {
    let a = unique("list-a");
    let b = unique("list-b");
    catalog.upsert_source(&a, "files").await.unwrap();
    catalog.upsert_source(&b, "files").await.unwrap();

    let a1 = complete_backup_of(catalog, &a, at("2023-01-01T00:00:00Z")).await;
    let a2 = new_backup(&a, at("2023-01-01T00:00:00.5Z"));
    catalog.begin_backup(&a2).await.unwrap();
    catalog
        .fail_backup(a2.id, at("2023-01-01T00:00:00.75Z"), "boom")
        .await
        .unwrap();
    let a3 = new_backup(&a, at("2023-01-01T00:00:01Z"));
    catalog.begin_backup(&a3).await.unwrap();
    let a4 = complete_backup_of(catalog, &a, at("2022-12-31T23:59:59.999999Z")).await;
    let b1 = complete_backup_of(catalog, &b, at("2023-01-01T00:00:00.25Z")).await;

    assert_eq!(
        ids(&list(catalog, Some(&a), None).await),
        vec![a3.id, a2.id, a1.id, a4.id]
    );
    assert_eq!(
        ids(&list(catalog, Some(&a), Some(BackupStatus::Complete)).await),
        vec![a1.id, a4.id]
    );
    assert_eq!(
        ids(&list(catalog, Some(&a), Some(BackupStatus::Running)).await),
        vec![a3.id]
    );
    assert!(list(catalog, Some(&b), Some(BackupStatus::Failed))
        .await
        .is_empty());

    let ours = |backups: Vec<BackupRecord>| -> Vec<BackupId> {
        backups
            .into_iter()
            .filter(|r| r.source == a || r.source == b)
            .map(|r| r.id)
            .collect()
    };
    assert_eq!(
        ours(list(catalog, None, None).await),
        vec![a3.id, a2.id, b1.id, a1.id, a4.id]
    );
    assert_eq!(
        ours(list(catalog, None, Some(BackupStatus::Failed)).await),
        vec![a2.id]
    );
    let everything = list(catalog, None, None).await;
    assert!(
        everything
            .windows(2)
            .all(|w| w[0].started_at >= w[1].started_at),
        "list_backups must be newest first"
    );
    for status in BackupStatus::ALL {
        assert!(list(catalog, None, Some(status))
            .await
            .iter()
            .all(|r| r.status == status));
    }
    assert!(list(catalog, Some(&unique("nobody")), None)
        .await
        .is_empty());

    assert_eq!(catalog.latest_complete_backup(&a).await.unwrap(), Some(a1));
    assert_eq!(catalog.latest_complete_backup(&b).await.unwrap(), Some(b1));
    catalog
        .fail_backup(a3.id, at("2023-01-01T00:00:02Z"), "test over")
        .await
        .unwrap();
}

pub async fn prefix_lookup(catalog: &Catalog) {
    let source = unique("prefix");
    catalog.upsert_source(&source, "files").await.unwrap();
    // Two ids that differ only in their last byte, and an unrelated one.
    let mut bytes = *Uuid::new_v4().as_bytes();
    bytes[15] = 0;
    let id1 = BackupId::from_bytes(bytes);
    bytes[15] = 1;
    let id2 = BackupId::from_bytes(bytes);
    let id3 = BackupId::from_uuid(Uuid::new_v4());
    for id in [id1, id2, id3] {
        let b = NewBackup {
            id,
            ..new_backup(&source, at("2024-06-01T00:00:00Z"))
        };
        catalog.begin_backup(&b).await.unwrap();
    }
    let s3 = id3.to_string();
    let found = |prefix: String| async move { catalog.find_backup_by_prefix(&prefix).await };

    assert_eq!(found(s3[..8].to_owned()).await.unwrap().id, id3);
    assert_eq!(found(s3.clone()).await.unwrap().id, id3);
    assert_eq!(found(s3[..13].to_uppercase()).await.unwrap().id, id3);
    assert_eq!(
        found(id3.as_uuid().simple().to_string()[..16].to_owned())
            .await
            .unwrap()
            .id,
        id3,
        "hyphens are optional"
    );
    assert_eq!(found(id1.to_string()).await.unwrap().id, id1);

    let s1 = id1.to_string();
    let e = assert_err!(
        found(s1[..30].to_owned()).await,
        CatalogError::AmbiguousPrefix { .. }
    );
    let text = e.to_string();
    assert!(text.contains("ambiguous"), "{text}");
    assert!(
        text.contains(&s1) && text.contains(&id2.to_string()),
        "{text}"
    );
    assert_eq!(e.kind(), ErrorKind::Permanent);

    let missing = Uuid::new_v4().to_string();
    let e = assert_err!(
        found(missing[..12].to_owned()).await,
        CatalogError::PrefixNotFound { .. }
    );
    assert!(e.to_string().contains(&missing[..12]), "{e}");
    assert_err!(
        found(missing.clone()).await,
        CatalogError::BackupNotFound { .. }
    );

    for bad in ["abc", "0192f0c", "zzzzzzzz", "0192f0c4%", "0192f0c4_"] {
        assert_err!(
            found(bad.to_owned()).await,
            CatalogError::InvalidValue { .. }
        );
    }
    for id in [id1, id2, id3] {
        catalog
            .fail_backup(id, at("2024-06-01T00:00:01Z"), "test over")
            .await
            .unwrap();
    }
}

pub async fn copies_upsert_and_verify(catalog: &Catalog) {
    let source = unique("copies");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2024-07-01T00:00:00Z");
    let b = new_backup(&source, t0);
    catalog.begin_backup(&b).await.unwrap();
    let a = artifact(b.id, "data", 1 << 34, t0);
    catalog.record_artifact(&a).await.unwrap();

    let first = copy(a.id, "primary", t0);
    catalog.record_copy(&first).await.unwrap();
    // Same (artifact, repository): replaced, not duplicated.
    let second = CopyRecord {
        object_key: "moved/elsewhere".into(),
        stored_size: (1 << 33) + 5,
        stored_sha256: sha(0x77),
        storage_class: Some("STANDARD_IA".into()),
        verified_at: at("2024-07-01T00:00:05.000007Z"),
        ..first.clone()
    };
    catalog.record_copy(&second).await.unwrap();
    let replica = copy(a.id, "replica", at("2024-07-01T00:00:06Z"));
    catalog.record_copy(&replica).await.unwrap();
    let copies_of = |id| async move {
        let mut all = catalog.backup_artifacts(id).await.unwrap();
        assert_eq!(all.len(), 1);
        all.remove(0).copies
    };
    assert_eq!(copies_of(b.id).await, vec![second.clone(), replica.clone()]);

    // Storage class can be cleared again.
    let third = CopyRecord {
        storage_class: None,
        ..second.clone()
    };
    catalog.record_copy(&third).await.unwrap();
    assert_eq!(copies_of(b.id).await, vec![third.clone(), replica.clone()]);

    let verified = at("2024-08-01T12:00:00.123457Z");
    catalog
        .mark_copy_verified(a.id, "replica", verified)
        .await
        .unwrap();
    assert_eq!(
        copies_of(b.id).await,
        vec![
            third.clone(),
            CopyRecord {
                verified_at: verified,
                ..replica.clone()
            }
        ]
    );
    assert_err!(
        catalog.mark_copy_verified(a.id, "nowhere", verified).await,
        CatalogError::CopyNotFound { .. }
    );
    assert_err!(
        catalog
            .mark_copy_verified(ArtifactId::new(), "primary", verified)
            .await,
        CatalogError::CopyNotFound { .. }
    );
    assert_err!(
        catalog
            .record_copy(&copy(ArtifactId::new(), "primary", t0))
            .await,
        CatalogError::ArtifactNotFound { .. }
    );

    // Copies can be added after the backup completed (e.g. replication to an archive).
    let manifest = artifact(b.id, "manifest", 10, t0 + TimeDelta::seconds(1));
    catalog.record_artifact(&manifest).await.unwrap();
    catalog
        .record_copy(&copy(manifest.id, "primary", t0))
        .await
        .unwrap();
    catalog
        .complete_backup(b.id, &completion(manifest.id, t0 + TimeDelta::seconds(2)))
        .await
        .unwrap();
    let archive = CopyRecord {
        storage_class: Some("DEEP_ARCHIVE".into()),
        ..copy(a.id, "archive", at("2024-09-01T00:00:00Z"))
    };
    catalog.record_copy(&archive).await.unwrap();
    let all = catalog.backup_artifacts(b.id).await.unwrap();
    let verified_replica = CopyRecord {
        verified_at: verified,
        ..replica
    };
    assert_eq!(all[0].copies, vec![archive, third, verified_replica]);
}

fn imported(source: &str, id: BackupId, t0: DateTime<Utc>) -> ImportedBackup {
    let data = artifact(id, "data", (1 << 36) + 1, t0 + TimeDelta::seconds(1));
    let manifest = artifact(id, "manifest", 512, t0 + TimeDelta::seconds(2));
    let completion = BackupCompletion {
        finished_at: t0 + TimeDelta::seconds(3),
        file_count: 12,
        skipped_count: 0,
        plaintext_bytes: (1 << 36) + 513,
        stored_bytes: 1 << 34,
        manifest_artifact: manifest.id,
    };
    ImportedBackup {
        backup: NewBackup {
            id,
            ..new_backup(source, t0)
        },
        source_kind: "mongodb".into(),
        completion,
        artifacts: vec![
            ArtifactWithCopies {
                copies: vec![
                    copy(data.id, "offsite", t0 + TimeDelta::seconds(4)),
                    copy(data.id, "primary", t0 + TimeDelta::seconds(5)),
                ],
                artifact: data,
            },
            ArtifactWithCopies {
                copies: vec![copy(manifest.id, "primary", t0 + TimeDelta::seconds(6))],
                artifact: manifest,
            },
        ],
    }
}

fn imported_record(i: &ImportedBackup) -> BackupRecord {
    let c = &i.completion;
    BackupRecord {
        status: BackupStatus::Complete,
        finished_at: Some(c.finished_at),
        heartbeat_at: c.finished_at,
        file_count: c.file_count,
        skipped_count: c.skipped_count,
        plaintext_bytes: c.plaintext_bytes,
        stored_bytes: c.stored_bytes,
        manifest_artifact: Some(c.manifest_artifact),
        ..running_record(&i.backup)
    }
}

async fn assert_imported(catalog: &Catalog, i: &ImportedBackup) {
    assert_eq!(get(catalog, i.backup.id).await, imported_record(i));
    assert_eq!(
        catalog.backup_artifacts(i.backup.id).await.unwrap(),
        i.artifacts
    );
}

pub async fn import_is_idempotent_and_transactional(catalog: &Catalog) {
    // The source is not registered: import registers it.
    let source = unique("import");
    let id = BackupId::new();
    let t0 = at("2024-10-01T03:00:00.654321Z");
    let v1 = imported(&source, id, t0);
    catalog.import_backup(&v1).await.unwrap();
    assert_imported(catalog, &v1).await;
    let sources = catalog.list_sources().await.unwrap();
    let registered = sources.iter().find(|s| s.name == source).unwrap();
    assert_eq!(registered.kind, "mongodb");

    // Again: same result, nothing duplicated.
    catalog.import_backup(&v1).await.unwrap();
    assert_imported(catalog, &v1).await;
    assert_eq!(list(catalog, Some(&source), None).await.len(), 1);
    assert_eq!(catalog.list_sources().await.unwrap().len(), sources.len());

    // A different version of the same backup replaces the old one entirely.
    let mut v2 = imported(&source, id, t0);
    v2.completion.stored_bytes = 999;
    v2.backup.host = "rebuilt-host".into();
    let data_id = v2.artifacts[0].artifact.id;
    v2.artifacts[0].copies.remove(0);
    v2.artifacts[0].copies.push(CopyRecord {
        storage_class: Some("GLACIER".into()),
        ..copy(data_id, "vault", t0)
    });
    catalog.import_backup(&v2).await.unwrap();
    assert_imported(catalog, &v2).await;
    assert_eq!(list(catalog, Some(&source), None).await.len(), 1);

    // Imports that would not be restorable are refused and change nothing.
    let mut no_artifacts = imported(&source, id, t0);
    no_artifacts.artifacts.clear();
    let mut no_copies = imported(&source, id, t0);
    no_copies.artifacts[1].copies.clear();
    let mut wrong_manifest = imported(&source, id, t0);
    wrong_manifest.completion.manifest_artifact = wrong_manifest.artifacts[0].artifact.id;
    let mut foreign_artifact = imported(&source, id, t0);
    foreign_artifact.artifacts[0].artifact.backup_id = BackupId::new();
    for bad in [no_artifacts, no_copies, wrong_manifest, foreign_artifact] {
        assert_err!(
            catalog.import_backup(&bad).await,
            CatalogError::Incomplete { .. }
        );
    }
    assert_imported(catalog, &v2).await;

    // A failure half-way (artifact id owned by another backup) rolls everything back,
    // including the deletion of the previous version.
    let other = complete_backup_of(catalog, &source, at("2024-10-02T00:00:00Z")).await;
    let taken = catalog.backup_artifacts(other.id).await.unwrap()[0]
        .artifact
        .clone();
    let mut clash = imported(&source, id, t0);
    clash.artifacts[0].artifact = ArtifactRecord {
        backup_id: id,
        ..taken.clone()
    };
    clash.artifacts[0].copies = vec![copy(taken.id, "primary", t0)];
    assert_err!(
        catalog.import_backup(&clash).await,
        CatalogError::ArtifactConflict { .. }
    );
    assert_imported(catalog, &v2).await;
    assert_eq!(get(catalog, other.id).await, other);

    // Importing over a running backup with the same id completes it.
    let running = new_backup(&source, t0);
    catalog.begin_backup(&running).await.unwrap();
    let over = imported(&source, running.id, t0);
    catalog.import_backup(&over).await.unwrap();
    assert_imported(catalog, &over).await;
}

pub async fn delete_removes_backup_artifacts_and_copies(catalog: &Catalog) {
    let source = unique("delete");
    catalog.upsert_source(&source, "files").await.unwrap();
    let keep = complete_backup_of(catalog, &source, at("2024-11-01T00:00:00Z")).await;
    let kept_artifacts = catalog.backup_artifacts(keep.id).await.unwrap();
    let gone = complete_backup_of(catalog, &source, at("2024-11-02T00:00:00Z")).await;
    let gone_artifacts = catalog.backup_artifacts(gone.id).await.unwrap();
    assert_eq!(gone_artifacts.len(), 2);

    catalog.delete_backup(gone.id).await.unwrap();
    assert_eq!(catalog.get_backup(gone.id).await.unwrap(), None);
    assert_err!(
        catalog.backup_artifacts(gone.id).await,
        CatalogError::BackupNotFound { .. }
    );
    assert_eq!(
        ids(&list(catalog, Some(&source), None).await),
        vec![keep.id]
    );
    assert_eq!(
        catalog.latest_complete_backup(&source).await.unwrap(),
        Some(keep.clone())
    );
    assert_eq!(
        catalog.backup_artifacts(keep.id).await.unwrap(),
        kept_artifacts
    );
    // The copies went too: their artifact ids are free again.
    for a in &gone_artifacts {
        assert_err!(
            catalog
                .mark_copy_verified(a.artifact.id, "primary", at("2024-11-03T00:00:00Z"))
                .await,
            CatalogError::CopyNotFound { .. }
        );
    }
    assert_err!(
        catalog.delete_backup(gone.id).await,
        CatalogError::BackupNotFound { .. }
    );

    // A running backup is refused (fail or abandon it first).
    let running = new_backup(&source, at("2024-11-04T00:00:00Z"));
    catalog.begin_backup(&running).await.unwrap();
    catalog
        .record_artifact(&artifact(running.id, "data", 5, running.started_at))
        .await
        .unwrap();
    let e = assert_err!(
        catalog.delete_backup(running.id).await,
        CatalogError::BackupRunning { .. }
    );
    assert!(e.to_string().contains(&running.id.to_string()), "{e}");
    assert_eq!(status_of(catalog, running.id).await, BackupStatus::Running);
    assert_eq!(catalog.backup_artifacts(running.id).await.unwrap().len(), 1);
    catalog
        .fail_backup(running.id, at("2024-11-04T00:01:00Z"), "cancelled")
        .await
        .unwrap();
    catalog.delete_backup(running.id).await.unwrap();
    assert_eq!(catalog.get_backup(running.id).await.unwrap(), None);
}

pub async fn invalid_input_is_rejected(catalog: &Catalog) {
    let source = unique("invalid");
    let t0 = at("2024-12-01T00:00:00Z");

    // Unknown source.
    let e = assert_err!(
        catalog.begin_backup(&new_backup(&source, t0)).await,
        CatalogError::UnknownSource { .. }
    );
    assert!(e.to_string().contains(&source), "{e}");
    assert_eq!(e.kind(), ErrorKind::Permanent);
    assert_err!(
        catalog.upsert_source("", "files").await,
        CatalogError::InvalidValue { .. }
    );
    assert_err!(
        catalog.upsert_source(&source, " ").await,
        CatalogError::InvalidValue { .. }
    );

    catalog.upsert_source(&source, "files").await.unwrap();
    let b = new_backup(&source, t0);
    catalog.begin_backup(&b).await.unwrap();
    // Same id, different content.
    assert_err!(
        catalog
            .begin_backup(&NewBackup {
                host: "other".into(),
                ..b.clone()
            })
            .await,
        CatalogError::BackupExists { .. }
    );

    let good = artifact(b.id, "data", 1, t0);
    let bad_artifacts = [
        ArtifactRecord {
            plaintext_sha256: sha(0xab).to_uppercase(),
            ..good.clone()
        },
        ArtifactRecord {
            plaintext_sha256: "abc".into(),
            ..good.clone()
        },
        ArtifactRecord {
            role: "index".into(),
            ..good.clone()
        },
        ArtifactRecord {
            plaintext_size: i64::MAX as u64 + 1,
            ..good.clone()
        },
        ArtifactRecord {
            segment_count: u64::MAX,
            ..good.clone()
        },
    ];
    for a in &bad_artifacts {
        let e = assert_err!(
            catalog.record_artifact(a).await,
            CatalogError::InvalidValue { .. }
        );
        assert_eq!(e.kind(), ErrorKind::Permanent);
    }
    assert_err!(
        catalog
            .record_artifact(&artifact(BackupId::new(), "data", 1, t0))
            .await,
        CatalogError::BackupNotFound { .. }
    );
    assert!(
        catalog.backup_artifacts(b.id).await.unwrap().is_empty(),
        "rejected artifacts must not be stored"
    );

    catalog.record_artifact(&good).await.unwrap();
    assert_err!(
        catalog
            .record_artifact(&ArtifactRecord {
                plaintext_size: 2,
                ..good.clone()
            })
            .await,
        CatalogError::ArtifactConflict { .. }
    );
    let bad_copies = [
        CopyRecord {
            stored_sha256: "xyz".into(),
            ..copy(good.id, "primary", t0)
        },
        CopyRecord {
            stored_size: u64::MAX,
            ..copy(good.id, "primary", t0)
        },
        CopyRecord {
            repository: String::new(),
            ..copy(good.id, "primary", t0)
        },
    ];
    for c in &bad_copies {
        assert_err!(
            catalog.record_copy(c).await,
            CatalogError::InvalidValue { .. }
        );
    }
    assert!(catalog.backup_artifacts(b.id).await.unwrap()[0]
        .copies
        .is_empty());

    let manifest = artifact(b.id, "manifest", 2, t0);
    catalog.record_artifact(&manifest).await.unwrap();
    for a in [&good, &manifest] {
        catalog
            .record_copy(&copy(a.id, "primary", t0))
            .await
            .unwrap();
    }
    assert_err!(
        catalog
            .complete_backup(
                b.id,
                &BackupCompletion {
                    plaintext_bytes: u64::MAX,
                    ..completion(manifest.id, t0)
                }
            )
            .await,
        CatalogError::InvalidValue { .. }
    );
    assert_eq!(status_of(catalog, b.id).await, BackupStatus::Running);
    catalog.fail_backup(b.id, t0, "test over").await.unwrap();
}

/// Retry layers repeat calls whose reply was lost; repeating a call that succeeded must
/// succeed again and change nothing.
pub async fn retries_are_idempotent(catalog: &Catalog) {
    let source = unique("retry");
    catalog.upsert_source(&source, "files").await.unwrap();
    let t0 = at("2025-01-01T00:00:00.000001Z");
    let b = new_backup(&source, t0);
    catalog.begin_backup(&b).await.unwrap();
    catalog.begin_backup(&b).await.unwrap();
    let a = artifact(b.id, "manifest", 9, t0);
    catalog.record_artifact(&a).await.unwrap();
    catalog.record_artifact(&a).await.unwrap();
    let c = copy(a.id, "primary", t0);
    catalog.record_copy(&c).await.unwrap();
    catalog.record_copy(&c).await.unwrap();
    let done = completion(a.id, t0 + TimeDelta::seconds(1));
    catalog.complete_backup(b.id, &done).await.unwrap();
    let record = get(catalog, b.id).await;
    catalog.complete_backup(b.id, &done).await.unwrap();
    assert_eq!(get(catalog, b.id).await, record);
    assert_eq!(
        catalog.backup_artifacts(b.id).await.unwrap(),
        vec![ArtifactWithCopies {
            artifact: a,
            copies: vec![c],
        }]
    );
}

/// Several tasks writing at once (SQLite serializes writers; they must wait, not fail).
pub async fn concurrent_writers_succeed(catalog: &Catalog) {
    const WRITERS: usize = 8;
    let source = unique("concurrent");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..WRITERS {
        let catalog = catalog.clone();
        let source = source.clone();
        tasks.spawn(async move {
            catalog.upsert_source(&source, "files").await?;
            let t0 = at("2025-02-01T00:00:00Z") + TimeDelta::seconds(i as i64);
            let b = new_backup(&source, t0);
            catalog.begin_backup(&b).await?;
            let mut last = None;
            for (n, role) in ["data", "data", "manifest"].into_iter().enumerate() {
                let a = artifact(b.id, role, n as u64 + 1, t0);
                catalog.record_artifact(&a).await?;
                catalog.record_copy(&copy(a.id, "primary", t0)).await?;
                catalog
                    .heartbeat_backup(b.id, t0 + TimeDelta::milliseconds(n as i64))
                    .await?;
                last = Some(a.id);
            }
            let manifest = last.expect("three artifacts");
            catalog
                .complete_backup(b.id, &completion(manifest, t0 + TimeDelta::seconds(1)))
                .await?;
            Ok::<BackupId, CatalogError>(b.id)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("writer task panicked") {
            Ok(id) => done.push(id),
            Err(e) => panic!(
                "concurrent writer failed ({} backend): {e} (kind {:?})",
                catalog.backend(),
                e.kind()
            ),
        }
    }
    assert_eq!(done.len(), WRITERS);
    let complete = list(catalog, Some(&source), Some(BackupStatus::Complete)).await;
    assert_eq!(complete.len(), WRITERS);
    for b in &complete {
        assert_eq!(catalog.backup_artifacts(b.id).await.unwrap().len(), 3);
    }
}

// ---- Postgres test databases -----------------------------------------------------------------

/// Env var that skips Postgres tests when no server is available (otherwise they fail).
pub const SKIP_POSTGRES_ENV: &str = "BACKUPD_SKIP_POSTGRES_TESTS";
/// Env var overriding [`DEFAULT_POSTGRES_ADMIN_URL`].
pub const POSTGRES_ADMIN_URL_ENV: &str = "BACKUPD_TEST_POSTGRES_URL";
/// A database on the test server that test databases are created from.
pub const DEFAULT_POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A fresh, uniquely named database on the test Postgres server, so tests running in
/// parallel (or on a shared server) never see each other's rows. Call [`drop_database`]
/// when done; a database left behind by a crashed test is harmless (`backupd_test_*`).
///
/// [`drop_database`]: PostgresTestDatabase::drop_database
#[derive(Debug)]
pub struct PostgresTestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PostgresTestDatabase {
    /// Creates the database, or returns `None` if [`SKIP_POSTGRES_ENV`] is `1`. Panics with
    /// instructions if the server cannot be reached: a missing server must not look like a
    /// passing test.
    pub async fn create() -> Option<PostgresTestDatabase> {
        if std::env::var(SKIP_POSTGRES_ENV).is_ok_and(|v| v == "1") {
            eprintln!("{SKIP_POSTGRES_ENV}=1: skipping Postgres test");
            return None;
        }
        let admin_url = std::env::var(POSTGRES_ADMIN_URL_ENV)
            .unwrap_or_else(|_| DEFAULT_POSTGRES_ADMIN_URL.to_owned());
        let name = format!("backupd_test_{}", Uuid::new_v4().simple());
        let mut admin = connect_admin(&admin_url).await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("creating test database {name}: {e}"));
        let _ = admin.close().await;
        let url = with_database(&admin_url, &name);
        Some(PostgresTestDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// URL of the test database (pass it to `Catalog::connect`).
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database, disconnecting any remaining sessions.
    pub async fn drop_database(self) {
        let mut admin = connect_admin(&self.admin_url).await;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("dropping test database {}: {e}", self.name));
        let _ = admin.close().await;
    }
}

/// `url` with its database (the last path segment) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let Some(scheme_end) = base.find("://").map(|i| i + 3) else {
        panic!(
            "{POSTGRES_ADMIN_URL_ENV} must look like postgres://USER@HOST:PORT/DATABASE, got {}",
            backup_catalog::redact_url(url)
        );
    };
    let server = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{server}/{database}{query}")
}

async fn connect_admin(admin_url: &str) -> sqlx::PgConnection {
    let shown = backup_catalog::redact_url(admin_url);
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(admin_url),
    )
    .await;
    match attempt {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!(
            "cannot connect to the test Postgres server at {shown}: {e}. Start it (e.g. \
             `docker compose up -d postgres`), point {POSTGRES_ADMIN_URL_ENV} at another \
             server, or set {SKIP_POSTGRES_ENV}=1 to skip Postgres tests"
        ),
        Err(_) => panic!(
            "timed out after 10s connecting to the test Postgres server at {shown}. Start \
             it, point {POSTGRES_ADMIN_URL_ENV} at another server, or set \
             {SKIP_POSTGRES_ENV}=1 to skip Postgres tests"
        ),
    }
}

/// Asserts the catalog is on `backend` (guards against a test silently using the wrong one).
pub fn assert_backend(catalog: &Catalog, backend: Backend) {
    assert_eq!(catalog.backend(), backend, "catalog {catalog:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_database_urls_keep_server_and_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
    }
}
