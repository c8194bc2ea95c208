//! Conformance checks of the job queue and schedule state (`Catalog::enqueue_*`,
//! `plan_slot`, `claim_job`, leases, `finish_job`, ...), part of
//! [`catalog_conformance`](super::catalog_conformance).
//!
//! Claims are not scoped to a source, so every check ends with no job of its own left
//! `queued` or `running` (see [`cancel_remaining`]); the next check starts from an idle queue.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backup_catalog::{
    Catalog, CatalogError, ClaimLimits, JobFilter, JobId, JobKind, JobOutcome, JobRecord,
    JobStatus, NewJob,
};
use backup_core::BackupId;
use chrono::{DateTime, TimeDelta, Utc};

use super::{at, unique};

const LEASE: Duration = Duration::from_secs(60);
const NO_LIMITS: ClaimLimits = ClaimLimits {
    max_running_per_source: 1000,
    max_running_per_repository: 1000,
};

/// Runs every job queue check.
pub async fn jobs_conformance(catalog: &Catalog) {
    jobs_enqueue_dedupes_slots(catalog).await;
    jobs_plan_slot_is_idempotent(catalog).await;
    jobs_are_claimed_in_due_order(catalog).await;
    jobs_expired_leases_are_taken_over(catalog).await;
    jobs_claims_respect_limits(catalog).await;
    jobs_retry_with_backoff_until_dead(catalog).await;
    jobs_are_released_on_shutdown(catalog).await;
    jobs_list_filters_and_orders_newest_first(catalog).await;
    jobs_concurrent_claims_are_exclusive(catalog).await;
}

// ---- helpers ---------------------------------------------------------------------------------

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

/// A backup job of `source` in repository "primary", due at `due_at`, 3 attempts.
fn job(source: &str, scheduled_for: Option<DateTime<Utc>>, due_at: DateTime<Utc>) -> NewJob {
    NewJob {
        source: source.to_owned(),
        repository: "primary".into(),
        kind: JobKind::Backup,
        backup_type: "full".into(),
        tag: None,
        scheduled_for,
        due_at,
        max_attempts: 3,
        created_at: due_at,
    }
}

async fn enqueue(catalog: &Catalog, new: &NewJob) -> JobId {
    match new.scheduled_for {
        Some(_) => catalog
            .enqueue_scheduled(new)
            .await
            .expect("enqueue_scheduled")
            .expect("a new slot is enqueued"),
        None => catalog.enqueue_manual(new).await.expect("enqueue_manual"),
    }
}

async fn get(catalog: &Catalog, id: JobId) -> JobRecord {
    catalog
        .get_job(id)
        .await
        .expect("get_job")
        .unwrap_or_else(|| panic!("job {id} missing"))
}

async fn claim(catalog: &Catalog, owner: &str, now: DateTime<Utc>) -> Option<JobRecord> {
    claim_with(catalog, owner, now, &NO_LIMITS).await
}

async fn claim_with(
    catalog: &Catalog,
    owner: &str,
    now: DateTime<Utc>,
    limits: &ClaimLimits,
) -> Option<JobRecord> {
    catalog
        .claim_job(owner, now, LEASE, limits)
        .await
        .unwrap_or_else(|e| panic!("claim_job for {owner} at {now}: {e}"))
}

async fn jobs_of(catalog: &Catalog, source: &str) -> Vec<JobRecord> {
    catalog
        .list_jobs(&JobFilter {
            source: Some(source.to_owned()),
            ..JobFilter::default()
        })
        .await
        .expect("list_jobs")
}

/// Cancels every queued or running job of `sources`, so later checks see an idle queue.
async fn cancel_remaining(catalog: &Catalog, sources: &[&str]) {
    for source in sources {
        for j in jobs_of(catalog, source).await {
            if j.status.is_active() {
                assert!(catalog.cancel_job(j.id, j.due_at).await.unwrap());
            }
        }
    }
}

fn failed(error: &str, retry_at: Option<DateTime<Utc>>) -> JobOutcome {
    JobOutcome::Failed {
        error: error.into(),
        retry_at,
    }
}

// ---- checks ----------------------------------------------------------------------------------

pub async fn jobs_enqueue_dedupes_slots(catalog: &Catalog) {
    let source = unique("jobs-enqueue");
    let other = unique("jobs-enqueue-other");
    let slot = at("2031-01-01T06:00:00Z");
    let new = NewJob {
        tag: Some("weekly".into()),
        backup_type: "incr".into(),
        max_attempts: 5,
        created_at: at("2031-01-01T05:59:58.123456Z") + TimeDelta::nanoseconds(789),
        ..job(&source, Some(slot), slot + secs(17))
    };
    let id = enqueue(catalog, &new).await;
    let record = get(catalog, id).await;
    let created = at("2031-01-01T05:59:58.123456Z");
    assert_eq!(
        record,
        JobRecord {
            id,
            source: source.clone(),
            repository: "primary".into(),
            kind: JobKind::Backup,
            backup_type: "incr".into(),
            tag: Some("weekly".into()),
            scheduled_for: Some(slot),
            due_at: slot + secs(17),
            status: JobStatus::Queued,
            attempts: 0,
            max_attempts: 5,
            next_attempt_at: slot + secs(17),
            lease_owner: None,
            lease_expires_at: None,
            takeovers: 0,
            backup_id: None,
            error: None,
            created_at: created,
            updated_at: created,
            started_at: None,
            finished_at: None,
        },
        "a new job round-trips every field (times truncated to micros)"
    );

    // The same slot again (another replica, another jitter) is not a second job ...
    let again = NewJob {
        due_at: slot + secs(99),
        ..new.clone()
    };
    assert_eq!(catalog.enqueue_scheduled(&again).await.unwrap(), None);
    assert_eq!(jobs_of(catalog, &source).await.len(), 1);
    assert_eq!(get(catalog, id).await, record, "the first one is unchanged");
    // ... but another kind, another source or another slot is.
    let prune = NewJob {
        kind: JobKind::Prune,
        ..new.clone()
    };
    let prune_id = enqueue(catalog, &prune).await;
    assert_eq!(get(catalog, prune_id).await.kind, JobKind::Prune);
    enqueue(catalog, &job(&other, Some(slot), slot)).await;
    enqueue(catalog, &job(&source, Some(slot + secs(3600)), slot)).await;

    // Manual jobs never conflict and have no slot.
    let manual = job(&source, None, slot);
    let m1 = enqueue(catalog, &manual).await;
    let m2 = enqueue(catalog, &manual).await;
    assert_ne!(m1, m2);
    assert_eq!(get(catalog, m1).await.scheduled_for, None);
    let with_slot = catalog
        .enqueue_manual(&job(&source, Some(slot), slot))
        .await
        .unwrap();
    assert_eq!(
        get(catalog, with_slot).await.scheduled_for,
        None,
        "enqueue_manual ignores the slot"
    );
    assert_eq!(jobs_of(catalog, &source).await.len(), 6);

    // Bad input.
    assert_err!(
        catalog.enqueue_scheduled(&job(&source, None, slot)).await,
        CatalogError::InvalidValue { .. }
    );
    for bad in [
        NewJob {
            max_attempts: 0,
            ..new.clone()
        },
        NewJob {
            source: " ".into(),
            ..new.clone()
        },
        NewJob {
            repository: String::new(),
            ..new.clone()
        },
    ] {
        assert_err!(
            catalog.enqueue_manual(&bad).await,
            CatalogError::InvalidValue { .. }
        );
    }
    assert_eq!(catalog.get_job(JobId::new()).await.unwrap(), None);
    cancel_remaining(catalog, &[&source, &other]).await;
}

pub async fn jobs_plan_slot_is_idempotent(catalog: &Catalog) {
    let source = unique("jobs-plan");
    let key = "0|0 */6 * * *|UTC";
    let t0 = at("2031-02-01T01:02:03Z");
    let slot = |h: i64| at("2031-02-01T00:00:00Z") + TimeDelta::hours(h);

    assert_eq!(catalog.last_planned(&source, key).await.unwrap(), None);
    assert!(catalog.init_last_planned(&source, key, t0).await.unwrap());
    assert!(
        !catalog
            .init_last_planned(&source, key, t0 + secs(60))
            .await
            .unwrap(),
        "init only records a first value"
    );
    assert_eq!(catalog.last_planned(&source, key).await.unwrap(), Some(t0));

    // Slots at or before last_planned are not planned.
    for s in [slot(0), t0] {
        assert_eq!(
            catalog
                .plan_slot(&source, key, s, &job(&source, None, s))
                .await
                .unwrap(),
            None
        );
    }
    assert!(jobs_of(catalog, &source).await.is_empty());

    // A later slot is planned once; its slot comes from `slot`, not from the job.
    let planned = catalog
        .plan_slot(
            &source,
            key,
            slot(6),
            &job(&source, None, slot(6) + secs(5)),
        )
        .await
        .unwrap()
        .expect("a later slot is planned");
    let record = get(catalog, planned).await;
    assert_eq!(record.scheduled_for, Some(slot(6)));
    assert_eq!(record.due_at, slot(6) + secs(5));
    assert_eq!(
        catalog.last_planned(&source, key).await.unwrap(),
        Some(slot(6))
    );
    assert_eq!(
        catalog
            .plan_slot(&source, key, slot(6), &job(&source, None, slot(6)))
            .await
            .unwrap(),
        None,
        "planning the same slot again is a no-op"
    );
    assert_eq!(
        catalog
            .plan_slot(&source, key, slot(3), &job(&source, None, slot(3)))
            .await
            .unwrap(),
        None,
        "an earlier slot is not planned"
    );
    assert_eq!(
        catalog.last_planned(&source, key).await.unwrap(),
        Some(slot(6)),
        "last_planned never goes back"
    );

    // A key with no state plans right away.
    let fresh = "1|0 3 * * SAT|UTC";
    assert!(catalog
        .plan_slot(&source, fresh, slot(12), &job(&source, None, slot(12)))
        .await
        .unwrap()
        .is_some());
    // Another entry with the same slot advances its own state, but the slot has its job.
    let third = "2|0 */12 * * *|UTC";
    assert_eq!(
        catalog
            .plan_slot(&source, third, slot(12), &job(&source, None, slot(12)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        catalog.last_planned(&source, third).await.unwrap(),
        Some(slot(12))
    );

    // Bad input.
    assert_err!(
        catalog
            .plan_slot(&source, key, slot(18), &job("someone-else", None, slot(18)))
            .await,
        CatalogError::InvalidValue { .. }
    );
    assert_err!(
        catalog
            .plan_slot(&source, "", slot(18), &job(&source, None, slot(18)))
            .await,
        CatalogError::InvalidValue { .. }
    );
    assert_eq!(
        catalog.last_planned(&source, key).await.unwrap(),
        Some(slot(6)),
        "a rejected plan changes nothing"
    );

    // Replicas planning the same slot at once: exactly one job.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let catalog = catalog.clone();
        let source = source.clone();
        tasks.spawn(async move {
            catalog
                .plan_slot(&source, key, slot(24), &job(&source, None, slot(24)))
                .await
        });
    }
    let mut winners = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined
            .expect("planner panicked")
            .expect("plan_slot")
            .is_some()
        {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "one replica plans a slot");
    let jobs = jobs_of(catalog, &source).await;
    assert_eq!(
        jobs.iter()
            .filter(|j| j.scheduled_for == Some(slot(24)))
            .count(),
        1
    );
    assert_eq!(jobs.len(), 3);
    cancel_remaining(catalog, &[&source]).await;
}

pub async fn jobs_are_claimed_in_due_order(catalog: &Catalog) {
    let source = unique("jobs-order");
    let t0 = at("2031-03-01T00:00:00Z");
    let late = enqueue(catalog, &job(&source, Some(t0), t0 + secs(180))).await;
    let future = enqueue(catalog, &job(&source, Some(t0 + secs(1)), t0 + secs(3600))).await;
    let early = enqueue(catalog, &job(&source, Some(t0 + secs(2)), t0 + secs(60))).await;
    // Same due time as `late`, created earlier: goes first among the two.
    let tie = enqueue(
        catalog,
        &NewJob {
            created_at: t0 - secs(10),
            ..job(&source, None, t0 + secs(180))
        },
    )
    .await;

    assert_eq!(claim(catalog, "a", t0).await, None, "nothing is due yet");
    assert_eq!(catalog.queue_depth(t0).await.unwrap(), 0);
    let now = t0 + secs(300);
    assert_eq!(catalog.queue_depth(now).await.unwrap(), 3);

    let first = claim(catalog, "a", now).await.expect("a due job");
    assert_eq!(first.id, early, "oldest due first");
    assert_eq!(first.status, JobStatus::Running);
    assert_eq!(first.lease_owner.as_deref(), Some("a"));
    assert_eq!(first.lease_expires_at, Some(now + secs(60)));
    assert_eq!(first.started_at, Some(now));
    assert_eq!(first.updated_at, now);
    assert_eq!((first.attempts, first.takeovers), (0, 0));
    assert_eq!(first.backup_id, None);
    assert_eq!(get(catalog, early).await, first, "the claim is stored");

    assert_eq!(claim(catalog, "b", now).await.map(|j| j.id), Some(tie));
    assert_eq!(claim(catalog, "a", now).await.map(|j| j.id), Some(late));
    assert_eq!(
        claim(catalog, "c", now).await,
        None,
        "the last job is not due"
    );
    assert_eq!(catalog.queue_depth(now).await.unwrap(), 0);

    let running: Vec<JobId> = catalog
        .running_jobs()
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    for id in [early, tie, late] {
        assert!(running.contains(&id), "{id} is running: {running:?}");
    }
    assert!(!running.contains(&future));

    // By then the leases above expired; with those jobs gone, the last one is next.
    for id in [early, tie, late] {
        assert!(catalog.cancel_job(id, now).await.unwrap());
    }
    assert_eq!(
        claim(catalog, "c", t0 + secs(3600)).await.map(|j| j.id),
        Some(future)
    );
    assert_err!(
        catalog.claim_job("", now, LEASE, &NO_LIMITS).await,
        CatalogError::InvalidValue { .. }
    );
    assert_err!(
        catalog
            .claim_job("a", now, Duration::ZERO, &NO_LIMITS)
            .await,
        CatalogError::InvalidValue { .. }
    );
    cancel_remaining(catalog, &[&source]).await;
}

pub async fn jobs_expired_leases_are_taken_over(catalog: &Catalog) {
    let source = unique("jobs-lease");
    let t0 = at("2031-04-01T00:00:00Z");
    let id = enqueue(catalog, &job(&source, Some(t0), t0)).await;
    let claimed = claim(catalog, "replica-a", t0).await.expect("due");
    assert_eq!(claimed.id, id);
    let dead_backup = BackupId::new();
    assert!(catalog
        .attach_backup(id, "replica-a", dead_backup)
        .await
        .unwrap());
    assert!(
        !catalog
            .attach_backup(id, "replica-b", BackupId::new())
            .await
            .unwrap(),
        "only the owner attaches"
    );
    assert!(catalog
        .renew_lease(id, "replica-a", t0 + secs(30), LEASE)
        .await
        .unwrap());
    assert!(
        !catalog
            .renew_lease(id, "replica-b", t0 + secs(30), LEASE)
            .await
            .unwrap(),
        "only the owner renews"
    );
    let renewed = get(catalog, id).await;
    assert_eq!(renewed.lease_expires_at, Some(t0 + secs(90)));
    assert_eq!(renewed.backup_id, Some(dead_backup));

    // A live lease (also at its last instant) is not taken over.
    assert_eq!(claim(catalog, "replica-b", t0 + secs(60)).await, None);
    assert_eq!(claim(catalog, "replica-b", t0 + secs(90)).await, None);

    // replica-a died: after its lease expired, replica-b takes the job over.
    let later = t0 + secs(91);
    let taken = claim(catalog, "replica-b", later)
        .await
        .expect("an expired lease is taken over");
    assert_eq!(taken.id, id);
    assert_eq!(taken.status, JobStatus::Running);
    assert_eq!(taken.lease_owner.as_deref(), Some("replica-b"));
    assert_eq!(taken.lease_expires_at, Some(later + secs(60)));
    assert_eq!(
        taken.backup_id,
        Some(dead_backup),
        "the dead owner's backup is exposed for clean-up"
    );
    assert_eq!(taken.attempts, 0, "a takeover is not an attempt");
    assert_eq!(taken.takeovers, 1);
    assert_eq!(taken.started_at, Some(later));

    // The old owner finds out it lost the job; nothing it does changes it.
    assert!(!catalog
        .renew_lease(id, "replica-a", later, LEASE)
        .await
        .unwrap());
    assert!(!catalog
        .attach_backup(id, "replica-a", BackupId::new())
        .await
        .unwrap());
    assert!(!catalog
        .finish_job(
            id,
            "replica-a",
            later,
            &JobOutcome::Succeeded { backup_id: None }
        )
        .await
        .unwrap());
    assert_eq!(catalog.release_jobs("replica-a", later).await.unwrap(), 0);
    assert_eq!(get(catalog, id).await, taken);

    // The new owner finishes it.
    let backup = BackupId::new();
    assert!(catalog
        .attach_backup(id, "replica-b", backup)
        .await
        .unwrap());
    let done_at = later + secs(20);
    assert!(catalog
        .finish_job(
            id,
            "replica-b",
            done_at,
            &JobOutcome::Succeeded { backup_id: None }
        )
        .await
        .unwrap());
    let done = get(catalog, id).await;
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.backup_id, Some(backup), "the attached backup is kept");
    assert_eq!(done.attempts, 1);
    assert_eq!((done.lease_owner, done.lease_expires_at), (None, None));
    assert_eq!(done.finished_at, Some(done_at));
    assert_eq!(done.updated_at, done_at);
    assert_eq!(done.error, None);
    assert!(!catalog
        .renew_lease(id, "replica-b", done_at, LEASE)
        .await
        .unwrap());
    assert!(
        !catalog
            .finish_job(id, "replica-b", done_at, &failed("late", None))
            .await
            .unwrap(),
        "a finished job stays finished"
    );
    assert_eq!(
        claim(catalog, "replica-c", done_at + secs(3600)).await,
        None
    );

    // Succeeded with an explicit backup id replaces the attached one.
    let second = enqueue(catalog, &job(&source, Some(t0 + secs(1)), t0)).await;
    claim(catalog, "replica-c", later).await.expect("due");
    let explicit = BackupId::new();
    assert!(catalog
        .finish_job(
            second,
            "replica-c",
            later,
            &JobOutcome::Succeeded {
                backup_id: Some(explicit)
            }
        )
        .await
        .unwrap());
    assert_eq!(get(catalog, second).await.backup_id, Some(explicit));
    cancel_remaining(catalog, &[&source]).await;
}

pub async fn jobs_claims_respect_limits(catalog: &Catalog) {
    let s1 = unique("jobs-limit-1");
    let s2 = unique("jobs-limit-2");
    let s3 = unique("jobs-limit-3");
    let t0 = at("2031-05-01T00:00:00Z");
    let in_repo = |source: &str, repository: &str, n: i64| NewJob {
        repository: repository.into(),
        ..job(source, Some(t0 + secs(n)), t0 + secs(n))
    };
    let s1a = enqueue(catalog, &in_repo(&s1, "r1", 0)).await;
    let s1b = enqueue(catalog, &in_repo(&s1, "r1", 1)).await;
    let s2a = enqueue(catalog, &in_repo(&s2, "r1", 2)).await;
    let _s1c = enqueue(catalog, &in_repo(&s1, "r1", 3)).await;
    let s3a = enqueue(catalog, &in_repo(&s3, "r2", 4)).await;
    let _s2b = enqueue(catalog, &in_repo(&s2, "r1", 5)).await;
    let _s3b = enqueue(catalog, &in_repo(&s3, "r2", 6)).await;
    let limits = ClaimLimits {
        max_running_per_source: 1,
        max_running_per_repository: 2,
    };
    let now = t0 + secs(60);
    let order: Vec<_> = [
        claim_with(catalog, "a", now, &limits).await,
        claim_with(catalog, "a", now, &limits).await,
        claim_with(catalog, "a", now, &limits).await,
    ]
    .into_iter()
    .map(|j| j.expect("a claimable job").id)
    .collect();
    assert_eq!(
        order,
        vec![s1a, s2a, s3a],
        "s1b waits for s1 (one per source); s1c and s2b for r1 (two per repository)"
    );
    assert_eq!(claim_with(catalog, "a", now, &limits).await, None);
    assert_eq!(catalog.queue_depth(now).await.unwrap(), 4);

    // A finished job frees its source and repository.
    assert!(catalog
        .finish_job(s1a, "a", now, &JobOutcome::Succeeded { backup_id: None })
        .await
        .unwrap());
    assert_eq!(
        claim_with(catalog, "a", now, &limits).await.map(|j| j.id),
        Some(s1b)
    );
    assert_eq!(claim_with(catalog, "a", now, &limits).await, None);

    // Expired leases do not count: the jobs of a dead replica are taken over first (oldest
    // due first), and then the limits hold again.
    let later = now + secs(61);
    let taken = claim_with(catalog, "b", later, &limits)
        .await
        .expect("an expired job is claimable");
    assert_eq!(taken.id, s1b);
    assert_eq!(taken.takeovers, 1);

    for bad in [
        ClaimLimits {
            max_running_per_source: 0,
            ..limits
        },
        ClaimLimits {
            max_running_per_repository: 0,
            ..limits
        },
    ] {
        assert_err!(
            catalog.claim_job("a", now, LEASE, &bad).await,
            CatalogError::InvalidValue { .. }
        );
    }
    cancel_remaining(catalog, &[&s1, &s2, &s3]).await;
}

pub async fn jobs_retry_with_backoff_until_dead(catalog: &Catalog) {
    let source = unique("jobs-retry");
    let t0 = at("2031-06-01T00:00:00Z");
    let id = enqueue(catalog, &job(&source, Some(t0), t0)).await;

    // Attempt 1 fails and asks for a retry in 30 s.
    claim(catalog, "a", t0).await.expect("due");
    let first_backup = BackupId::new();
    assert!(catalog.attach_backup(id, "a", first_backup).await.unwrap());
    assert!(catalog
        .finish_job(
            id,
            "a",
            t0 + secs(5),
            &failed("boom 1", Some(t0 + secs(35)))
        )
        .await
        .unwrap());
    let queued = get(catalog, id).await;
    assert_eq!(queued.status, JobStatus::Queued);
    assert_eq!(queued.attempts, 1);
    assert_eq!(queued.next_attempt_at, t0 + secs(35));
    assert_eq!(queued.error.as_deref(), Some("boom 1"));
    assert_eq!((queued.lease_owner, queued.lease_expires_at), (None, None));
    assert_eq!(
        queued.backup_id, None,
        "the failed attempt's backup was ended"
    );
    assert_eq!(queued.finished_at, None);
    assert_eq!(
        queued.due_at, t0,
        "due_at is the plan; next_attempt_at the retry"
    );

    // Not before the backoff is over.
    assert_eq!(claim(catalog, "a", t0 + secs(34)).await, None);
    assert_eq!(catalog.queue_depth(t0 + secs(34)).await.unwrap(), 0);
    assert_eq!(catalog.queue_depth(t0 + secs(35)).await.unwrap(), 1);

    // Attempt 2 fails too.
    let second = claim(catalog, "b", t0 + secs(35)).await.expect("retry due");
    assert_eq!(second.id, id);
    assert_eq!(second.backup_id, None);
    assert_eq!(
        second.error.as_deref(),
        Some("boom 1"),
        "the last error is kept"
    );
    assert!(catalog
        .finish_job(
            id,
            "b",
            t0 + secs(40),
            &failed("boom 2", Some(t0 + secs(100)))
        )
        .await
        .unwrap());
    assert_eq!(get(catalog, id).await.attempts, 2);

    // Attempt 3 is the last of max_attempts = 3: dead even though a retry was asked for.
    claim(catalog, "c", t0 + secs(100))
        .await
        .expect("retry due");
    let last_backup = BackupId::new();
    assert!(catalog.attach_backup(id, "c", last_backup).await.unwrap());
    assert!(catalog
        .finish_job(
            id,
            "c",
            t0 + secs(110),
            &failed("boom 3", Some(t0 + secs(500)))
        )
        .await
        .unwrap());
    let dead = get(catalog, id).await;
    assert_eq!(dead.status, JobStatus::Dead);
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.error.as_deref(), Some("boom 3"));
    assert_eq!(dead.finished_at, Some(t0 + secs(110)));
    assert_eq!(
        dead.backup_id,
        Some(last_backup),
        "a dead job keeps its last backup"
    );
    assert_eq!(claim(catalog, "a", t0 + secs(1000)).await, None);

    // No retry asked for: dead after one attempt.
    let once = enqueue(catalog, &job(&source, Some(t0 + secs(1)), t0)).await;
    claim(catalog, "a", t0 + secs(1000)).await.expect("due");
    assert!(catalog
        .finish_job(once, "a", t0 + secs(1001), &failed("permanent", None))
        .await
        .unwrap());
    let once = get(catalog, once).await;
    assert_eq!((once.status, once.attempts), (JobStatus::Dead, 1));

    // A retry that succeeds clears the error.
    let flaky = enqueue(catalog, &job(&source, Some(t0 + secs(2)), t0)).await;
    claim(catalog, "a", t0 + secs(1000)).await.expect("due");
    assert!(catalog
        .finish_job(
            flaky,
            "a",
            t0 + secs(1001),
            &failed("flaky", Some(t0 + secs(1002)))
        )
        .await
        .unwrap());
    claim(catalog, "a", t0 + secs(1002))
        .await
        .expect("retry due");
    assert!(catalog
        .finish_job(
            flaky,
            "a",
            t0 + secs(1003),
            &JobOutcome::Succeeded {
                backup_id: Some(first_backup)
            }
        )
        .await
        .unwrap());
    let flaky = get(catalog, flaky).await;
    assert_eq!(
        (flaky.status, flaky.attempts, flaky.error),
        (JobStatus::Succeeded, 2, None)
    );

    // Cancelling: queued and running jobs only.
    let queued = enqueue(catalog, &job(&source, Some(t0 + secs(3)), t0)).await;
    assert!(catalog.cancel_job(queued, t0 + secs(2000)).await.unwrap());
    let cancelled = get(catalog, queued).await;
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    assert_eq!(cancelled.finished_at, Some(t0 + secs(2000)));
    assert!(!catalog.cancel_job(queued, t0 + secs(2001)).await.unwrap());
    assert!(!catalog.cancel_job(dead.id, t0 + secs(2001)).await.unwrap());
    assert!(!catalog.cancel_job(JobId::new(), t0).await.unwrap());
    let running = enqueue(catalog, &job(&source, Some(t0 + secs(4)), t0)).await;
    claim(catalog, "a", t0 + secs(2000)).await.expect("due");
    assert!(catalog.cancel_job(running, t0 + secs(2001)).await.unwrap());
    assert!(
        !catalog
            .renew_lease(running, "a", t0 + secs(2002), LEASE)
            .await
            .unwrap(),
        "the owner of a cancelled job learns it on its next renewal"
    );
    assert_eq!(claim(catalog, "a", t0 + secs(9000)).await, None);

    // Purging history removes ended jobs that finished before the cut-off, nothing else.
    let waiting = enqueue(
        catalog,
        &job(&source, Some(t0 + secs(5)), t0 + secs(99_999)),
    )
    .await;
    let before = jobs_of(catalog, &source).await.len();
    assert_eq!(before, 6);
    let purged = catalog.purge_finished_jobs(t0 + secs(1002)).await.unwrap();
    assert!(
        purged >= 2,
        "the dead jobs finished at +110 s and +1001 s: {purged}"
    );
    let left: Vec<JobId> = jobs_of(catalog, &source)
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(left.len(), 4);
    assert!(!left.contains(&dead.id) && !left.contains(&once.id));
    assert!(left.contains(&flaky.id) && left.contains(&waiting));
    cancel_remaining(catalog, &[&source]).await;
}

pub async fn jobs_are_released_on_shutdown(catalog: &Catalog) {
    let s1 = unique("jobs-release-1");
    let s2 = unique("jobs-release-2");
    let t0 = at("2031-07-01T00:00:00Z");
    let a1 = enqueue(catalog, &job(&s1, Some(t0), t0)).await;
    let a2 = enqueue(catalog, &job(&s2, Some(t0), t0 + secs(1))).await;
    let b1 = enqueue(catalog, &job(&s1, Some(t0 + secs(60)), t0 + secs(2))).await;
    assert_eq!(claim(catalog, "a", t0 + secs(10)).await.unwrap().id, a1);
    assert_eq!(claim(catalog, "a", t0 + secs(10)).await.unwrap().id, a2);
    let backup = BackupId::new();
    assert!(catalog.attach_backup(a1, "a", backup).await.unwrap());
    assert_eq!(claim(catalog, "b", t0 + secs(10)).await.unwrap().id, b1);

    let now = t0 + secs(20);
    assert_eq!(catalog.release_jobs("a", now).await.unwrap(), 2);
    for id in [a1, a2] {
        let j = get(catalog, id).await;
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!((j.lease_owner, j.lease_expires_at), (None, None));
        assert_eq!(j.attempts, 0, "a release is not an attempt");
        assert_eq!(j.updated_at, now);
    }
    assert_eq!(get(catalog, b1).await.lease_owner.as_deref(), Some("b"));
    assert_eq!(catalog.release_jobs("a", now).await.unwrap(), 0);

    // Another replica picks them up at once, with the interrupted backup to clean up.
    let again = claim(catalog, "c", now)
        .await
        .expect("released jobs are claimable");
    assert_eq!(again.id, a1);
    assert_eq!(again.backup_id, Some(backup));
    assert_eq!(again.takeovers, 0);
    assert_eq!(claim(catalog, "c", now).await.map(|j| j.id), Some(a2));
    cancel_remaining(catalog, &[&s1, &s2]).await;
}

pub async fn jobs_list_filters_and_orders_newest_first(catalog: &Catalog) {
    let s1 = unique("jobs-list-1");
    let s2 = unique("jobs-list-2");
    let t0 = at("2031-08-01T00:00:00Z");
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(enqueue(catalog, &job(&s1, Some(t0 + secs(n)), t0 + secs(n))).await);
    }
    let other = enqueue(catalog, &job(&s2, Some(t0), t0)).await;
    assert!(catalog.cancel_job(ids[1], t0).await.unwrap());

    let listed = |source: Option<&str>, status, limit| {
        let filter = JobFilter {
            source: source.map(str::to_owned),
            status,
            limit,
        };
        async move {
            catalog
                .list_jobs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(Some(&s1), None, None).await,
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    assert_eq!(
        listed(Some(&s1), Some(JobStatus::Queued), None).await,
        vec![ids[3], ids[2], ids[0]]
    );
    assert_eq!(
        listed(Some(&s1), Some(JobStatus::Cancelled), None).await,
        vec![ids[1]]
    );
    assert_eq!(listed(Some(&s1), None, Some(2)).await, vec![ids[3], ids[2]]);
    assert_eq!(listed(Some(&s2), None, None).await, vec![other]);
    let all = listed(None, Some(JobStatus::Queued), None).await;
    assert!(all.contains(&other) && all.contains(&ids[0]), "{all:?}");
    assert!(listed(Some(&unique("none")), None, None).await.is_empty());
    cancel_remaining(catalog, &[&s1, &s2]).await;
}

/// Many claimers at once (replicas, or tasks of one): no job is ever held by two owners, and
/// the running-job limits hold.
pub async fn jobs_concurrent_claims_are_exclusive(catalog: &Catalog) {
    const JOBS: usize = 50;
    const CLAIMERS: usize = 8;
    const CLAIMS_EACH: usize = 20;
    let sources: Vec<String> = (0..5).map(|i| unique(&format!("jobs-race-{i}"))).collect();
    let t0 = at("2031-09-01T00:00:00Z");
    let mut all = HashSet::new();
    for n in 0..JOBS {
        let source = &sources[n % sources.len()];
        let slot = t0 + secs(n as i64);
        all.insert(enqueue(catalog, &job(source, Some(slot), slot)).await);
    }

    /// Each of `CLAIMERS` tasks claims `CLAIMS_EACH` times at `now`; returns (owner, job).
    async fn race(
        catalog: &Catalog,
        now: DateTime<Utc>,
        limits: ClaimLimits,
        round: &str,
    ) -> Vec<(String, JobRecord)> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLAIMERS {
            let catalog = catalog.clone();
            let owner = format!("{round}-worker-{i}");
            tasks.spawn(async move {
                let mut claimed = Vec::new();
                for _ in 0..CLAIMS_EACH {
                    match catalog.claim_job(&owner, now, LEASE, &limits).await {
                        Ok(Some(job)) => claimed.push((owner.clone(), job)),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(claimed)
            });
        }
        let mut claimed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.expect("claimer panicked") {
                Ok(c) => claimed.extend(c),
                Err(e) => panic!(
                    "concurrent claim failed ({} backend): {e} (kind {:?})",
                    catalog.backend(),
                    e.kind()
                ),
            }
        }
        claimed
    }

    let check_exclusive = |claimed: &[(String, JobRecord)]| {
        let mut owners: HashMap<JobId, &str> = HashMap::new();
        for (owner, job) in claimed {
            assert_eq!(job.lease_owner.as_deref(), Some(owner.as_str()));
            if let Some(first) = owners.insert(job.id, owner) {
                panic!("job {} claimed by both {first} and {owner}", job.id);
            }
        }
    };

    // Round 1: every job claimed exactly once.
    let now = t0 + secs(3600);
    let claimed = race(catalog, now, NO_LIMITS, "r1").await;
    check_exclusive(&claimed);
    let ids: HashSet<JobId> = claimed.iter().map(|(_, j)| j.id).collect();
    assert_eq!(ids, all, "every job claimed exactly once");
    for (owner, job) in &claimed {
        let stored = get(catalog, job.id).await;
        assert_eq!(stored.lease_owner.as_deref(), Some(owner.as_str()));
        assert_eq!((stored.attempts, stored.takeovers), (0, 0));
    }

    // Round 2: every lease expired; each job is taken over exactly once.
    let later = now + secs(120);
    let claimed = race(catalog, later, NO_LIMITS, "r2").await;
    check_exclusive(&claimed);
    assert_eq!(claimed.len(), JOBS);
    assert!(claimed.iter().all(|(_, j)| j.takeovers == 1));

    // Round 3: released, then claimed under limits: 5 sources in 2 repositories ("primary"
    // for all), at most 1 per source and 2 per repository => exactly 2 run.
    for i in 0..CLAIMERS {
        catalog
            .release_jobs(&format!("r2-worker-{i}"), later)
            .await
            .unwrap();
    }
    assert_eq!(catalog.queue_depth(later).await.unwrap(), JOBS as u64);
    let limits = ClaimLimits {
        max_running_per_source: 1,
        max_running_per_repository: 2,
    };
    let claimed = race(catalog, later, limits, "r3").await;
    check_exclusive(&claimed);
    assert_eq!(claimed.len(), 2, "two per repository");
    let per_source: HashSet<&str> = claimed.iter().map(|(_, j)| j.source.as_str()).collect();
    assert_eq!(per_source.len(), 2, "one per source");
    let refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    cancel_remaining(catalog, &refs).await;
}
