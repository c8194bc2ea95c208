//! Conformance checks of restore drills, the row counts backups record for them, and shred
//! records (migrations 0009 and 0010), part of [`catalog_conformance`](super::catalog_conformance).

use std::collections::BTreeMap;

use backup_catalog::{
    Catalog, DrillCheckResult, DrillCompletion, DrillStatus, DrillTrigger, JobKind, NewJob,
    ShredRecord,
};
use chrono::TimeDelta;

use super::{at, complete_backup_of, unique};

pub async fn drills_conformance(catalog: &Catalog) {
    drills_round_trip_and_the_last_finished_one_counts(catalog).await;
    row_counts_are_replaced_and_deleted_with_the_backup(catalog).await;
    shreds_are_recorded_once_per_backup(catalog).await;
    drill_jobs_can_be_queued(catalog).await;
}

pub async fn drills_round_trip_and_the_last_finished_one_counts(catalog: &Catalog) {
    let source = unique("drills");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let t0 = at("2026-11-01T04:00:00Z");
    let first = catalog
        .begin_drill(&source, DrillTrigger::Schedule, "latest", t0)
        .await
        .unwrap();
    assert!(catalog
        .last_finished_drill(&source)
        .await
        .unwrap()
        .is_none());
    let b = complete_backup_of(catalog, &source, t0 - TimeDelta::hours(1)).await;
    let passed = DrillCompletion {
        finished_at: t0 + TimeDelta::seconds(90),
        backup_id: Some(b.id),
        rto_millis: Some(85_250),
        restore_millis: Some(60_000),
        recovery_millis: Some(25_000),
        restored_bytes: Some(1 << 30),
        checks: vec![DrillCheckResult {
            name: "integrity".into(),
            passed: true,
            detail: "2 artifacts".into(),
        }],
        error: None,
    };
    assert_eq!(
        catalog.finish_drill(&first, &passed).await.unwrap(),
        DrillStatus::Passed
    );
    // A drill cannot be finished twice.
    assert!(catalog.finish_drill(&first, &passed).await.is_err());

    let second = catalog
        .begin_drill(
            &source,
            DrillTrigger::Manual,
            "random",
            t0 + TimeDelta::days(1),
        )
        .await
        .unwrap();
    let failed = DrillCompletion {
        finished_at: t0 + TimeDelta::days(1) + TimeDelta::seconds(5),
        checks: vec![DrillCheckResult {
            name: "counts".into(),
            passed: false,
            detail: "public.t: 3 rows, the backup counted 4".into(),
        }],
        ..passed.clone()
    };
    assert_eq!(
        catalog.finish_drill(&second, &failed).await.unwrap(),
        DrillStatus::Failed,
        "a failed check fails the drill"
    );
    // A running drill is listed but is not the last finished one.
    let running = catalog
        .begin_drill(
            &source,
            DrillTrigger::Manual,
            "oldest",
            t0 + TimeDelta::days(2),
        )
        .await
        .unwrap();

    let last = catalog.last_finished_drill(&source).await.unwrap().unwrap();
    assert_eq!(last.id, second);
    assert_eq!(last.status, DrillStatus::Failed);
    assert_eq!(last.trigger, DrillTrigger::Manual);
    assert_eq!(last.pick, "random");
    assert_eq!(last.checks, failed.checks);
    assert_eq!(last.rto_millis, Some(85_250));
    assert_eq!(last.restored_bytes, Some(1 << 30));
    assert_eq!(last.backup_id, Some(b.id));

    let listed = catalog.list_drills(Some(&source), 10).await.unwrap();
    let ids: Vec<_> = listed.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, [running.as_str(), second.as_str(), first.as_str()]);
    assert_eq!(listed[0].status, DrillStatus::Running);
    assert_eq!(listed[2].finished_at, Some(passed.finished_at));
    assert_eq!(
        catalog.list_drills(Some(&source), 1).await.unwrap().len(),
        1
    );
    assert!(catalog
        .list_drills(None, 1000)
        .await
        .unwrap()
        .iter()
        .any(|d| d.id == first));
}

pub async fn row_counts_are_replaced_and_deleted_with_the_backup(catalog: &Catalog) {
    let source = unique("rowcounts");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let b = complete_backup_of(catalog, &source, at("2026-11-02T00:00:00Z")).await;
    let mut counts = BTreeMap::from([
        ("app.public.orders".to_owned(), 1200u64),
        ("app.public.empty".to_owned(), 0),
    ]);
    catalog.record_row_counts(b.id, &counts).await.unwrap();
    assert_eq!(catalog.row_counts(b.id).await.unwrap(), counts);
    counts.remove("app.public.empty");
    catalog.record_row_counts(b.id, &counts).await.unwrap();
    assert_eq!(catalog.row_counts(b.id).await.unwrap(), counts);
    catalog.delete_backup(b.id).await.unwrap();
    assert!(catalog.row_counts(b.id).await.unwrap().is_empty());
}

pub async fn shreds_are_recorded_once_per_backup(catalog: &Catalog) {
    let source = unique("shreds");
    catalog.upsert_source(&source, "postgres").await.unwrap();
    let b = complete_backup_of(catalog, &source, at("2026-11-03T00:00:00Z")).await;
    let mut record = ShredRecord {
        backup_id: b.id,
        source: source.clone(),
        backup_started_at: b.started_at,
        repositories: vec!["primary".into()],
        shredded_at: at("2026-11-04T00:00:00Z"),
    };
    catalog.record_shred(&record).await.unwrap();
    record.repositories.push("archive".into());
    record.shredded_at = at("2026-11-04T00:05:00Z");
    catalog.record_shred(&record).await.unwrap();
    let mine: Vec<_> = catalog
        .list_shreds()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.source == source)
        .collect();
    assert_eq!(mine, vec![record]);
}

pub async fn drill_jobs_can_be_queued(catalog: &Catalog) {
    let source = unique("drilljob");
    let now = at("2026-11-05T00:00:00Z");
    let id = catalog
        .enqueue_manual(&NewJob {
            source: source.clone(),
            repository: "primary".into(),
            kind: JobKind::Drill,
            backup_type: "drill".into(),
            tag: None,
            scheduled_for: None,
            due_at: now,
            max_attempts: 1,
            created_at: now,
        })
        .await
        .unwrap();
    let job = catalog.get_job(id).await.unwrap().unwrap();
    assert_eq!(job.kind, JobKind::Drill);
}
