use std::collections::{BTreeMap, HashSet};

use chrono_tz::{America, Asia, Australia, Europe};
use proptest::prelude::*;

use super::*;

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("bad test time {rfc3339:?}: {e}"))
        .with_timezone(&Utc)
}

/// A readable, ordered id: `id(1) < id(2)`.
fn id(n: u8) -> BackupId {
    let mut bytes = [0u8; 16];
    bytes[15] = n;
    BackupId::from_bytes(bytes)
}

fn complete(n: u8, finished: &str) -> BackupInfo {
    BackupInfo::complete(id(n), at(finished))
}

fn keep_policy(f: impl FnOnce(&mut KeepPolicy)) -> KeepPolicy {
    let mut p = KeepPolicy::default();
    f(&mut p);
    p
}

fn run(backups: &[BackupInfo], policy: &KeepPolicy, now: &str, tz: Tz) -> RetentionPlan {
    plan(backups, policy, &PlanOptions::new(at(now), tz)).unwrap()
}

fn kept_ids(plan: &RetentionPlan) -> Vec<u8> {
    let mut v: Vec<u8> = plan.kept().map(|d| d.backup.as_bytes()[15]).collect();
    v.sort();
    v
}

fn reasons_of(plan: &RetentionPlan, n: u8) -> &[Reason] {
    &plan.decision(id(n)).expect("decided").reasons
}

// ---- hand-checked GFS across the DST change in Rome --------------------------------------

/// Rome leaves summer time on Sunday 2024-10-27: at 01:00 UTC (03:00 CEST) clocks go back to
/// 02:00 CET, so 02:00-02:59 happens twice.
///
/// | backup | UTC              | Rome                 | Rome day | Rome hour     | ISO week |
/// |--------|------------------|----------------------|----------|---------------|----------|
/// | 1      | 10-26 21:30      | Sat 10-26 23:30 CEST | 10-26    | 10-26 23h     | W43      |
/// | 2      | 10-26 22:30      | Sun 10-27 00:30 CEST | 10-27    | 10-27 00h     | W43      |
/// | 3      | 10-27 00:30      | Sun 10-27 02:30 CEST | 10-27    | 10-27 02h     | W43      |
/// | 4      | 10-27 01:30      | Sun 10-27 02:30 CET  | 10-27    | 10-27 02h     | W43      |
/// | 5      | 10-27 22:30      | Sun 10-27 23:30 CET  | 10-27    | 10-27 23h     | W43      |
/// | 6      | 10-27 23:30      | Mon 10-28 00:30 CET  | 10-28    | 10-28 00h     | W44      |
fn rome_autumn() -> Vec<BackupInfo> {
    vec![
        complete(1, "2024-10-26T21:30:00Z"),
        complete(2, "2024-10-26T22:30:00Z"),
        complete(3, "2024-10-27T00:30:00Z"),
        complete(4, "2024-10-27T01:30:00Z"),
        complete(5, "2024-10-27T22:30:00Z"),
        complete(6, "2024-10-27T23:30:00Z"),
    ]
}

const AUTUMN_NOW: &str = "2024-10-28T12:00:00Z";

#[test]
fn daily_buckets_follow_the_rome_calendar_across_dst() {
    let daily3 = keep_policy(|p| p.daily = Some(3));
    let rome = run(&rome_autumn(), &daily3, AUTUMN_NOW, Europe::Rome);
    // Newest of Rome's 10-28, 10-27 and 10-26.
    assert_eq!(kept_ids(&rome), vec![1, 5, 6]);
    assert_eq!(
        reasons_of(&rome, 6),
        &[Reason::NewestComplete, Reason::Daily("2024-10-28".into())]
    );
    assert_eq!(reasons_of(&rome, 5), &[Reason::Daily("2024-10-27".into())]);
    assert_eq!(reasons_of(&rome, 1), &[Reason::Daily("2024-10-26".into())]);
    for n in [2, 3, 4] {
        assert_eq!(reasons_of(&rome, n), &[Reason::NotSelected]);
    }
    // In UTC the same backups fall on only two days (10-27: 3-6, 10-26: 1-2).
    let utc = run(&rome_autumn(), &daily3, AUTUMN_NOW, Tz::UTC);
    assert_eq!(kept_ids(&utc), vec![2, 6]);
}

#[test]
fn the_repeated_hour_is_one_hourly_bucket() {
    let hourly = keep_policy(|p| p.hourly = Some(10));
    let rome = run(&rome_autumn(), &hourly, AUTUMN_NOW, Europe::Rome);
    // 3 (02:30 CEST) and 4 (02:30 CET) share Rome's 02h; 4 is newer.
    assert_eq!(kept_ids(&rome), vec![1, 2, 4, 5, 6]);
    assert_eq!(
        reasons_of(&rome, 4),
        &[Reason::Hourly("2024-10-27 02h".into())]
    );
    assert_eq!(reasons_of(&rome, 3), &[Reason::NotSelected]);
    let utc = run(&rome_autumn(), &hourly, AUTUMN_NOW, Tz::UTC);
    assert_eq!(kept_ids(&utc), vec![1, 2, 3, 4, 5, 6]);

    // Only the 3 most recent hours that hold a backup: 10-28 00h, 10-27 23h, 10-27 02h.
    let hourly3 = keep_policy(|p| p.hourly = Some(3));
    assert_eq!(
        kept_ids(&run(&rome_autumn(), &hourly3, AUTUMN_NOW, Europe::Rome)),
        vec![4, 5, 6]
    );
}

#[test]
fn weekly_buckets_are_iso_weeks_in_rome() {
    let weekly2 = keep_policy(|p| p.weekly = Some(2));
    let rome = run(&rome_autumn(), &weekly2, AUTUMN_NOW, Europe::Rome);
    assert_eq!(kept_ids(&rome), vec![5, 6]);
    assert_eq!(
        reasons_of(&rome, 6),
        &[Reason::NewestComplete, Reason::Weekly("2024-W44".into())]
    );
    assert_eq!(reasons_of(&rome, 5), &[Reason::Weekly("2024-W43".into())]);
    // In UTC, 6 is still Sunday: one week holds them all.
    let utc = run(&rome_autumn(), &weekly2, AUTUMN_NOW, Tz::UTC);
    assert_eq!(kept_ids(&utc), vec![6]);
}

#[test]
fn spring_forward_months_and_years_in_rome() {
    // Rome enters summer time on 2024-03-31 at 01:00 UTC (02:00 CET -> 03:00 CEST).
    let backups = vec![
        complete(1, "2024-02-29T12:00:00Z"), // Rome 2024-02
        complete(2, "2024-03-31T00:30:00Z"), // 01:30 CET, Rome 2024-03-31 01h
        complete(3, "2024-03-31T01:30:00Z"), // 03:30 CEST, Rome 2024-03-31 03h
        complete(4, "2024-03-31T21:30:00Z"), // 23:30 CEST, Rome 2024-03
        complete(5, "2024-03-31T22:30:00Z"), // 00:30 CEST 04-01, Rome 2024-04
    ];
    let now = "2024-04-02T00:00:00Z";
    let monthly2 = keep_policy(|p| p.monthly = Some(2));
    let rome = run(&backups, &monthly2, now, Europe::Rome);
    assert_eq!(kept_ids(&rome), vec![4, 5]);
    assert_eq!(reasons_of(&rome, 4), &[Reason::Monthly("2024-03".into())]);
    let utc = run(&backups, &monthly2, now, Tz::UTC);
    assert_eq!(kept_ids(&utc), vec![1, 5]);

    // The skipped hour: 01:30 CET and 03:30 CEST are two buckets an hour apart.
    assert_eq!(
        BucketKind::Hourly.bucket(at("2024-03-31T00:30:00Z"), Europe::Rome),
        "2024-03-31 01h"
    );
    assert_eq!(
        BucketKind::Hourly.bucket(at("2024-03-31T01:30:00Z"), Europe::Rome),
        "2024-03-31 03h"
    );
    // New Year's Eve at 23:30 UTC is already next year in Rome.
    assert_eq!(
        BucketKind::Yearly.bucket(at("2024-12-31T23:30:00Z"), Europe::Rome),
        "2025"
    );
    assert_eq!(
        BucketKind::Weekly.bucket(at("2024-12-31T23:30:00Z"), Europe::Rome),
        "2025-W01"
    );
}

// ---- rules and protections -----------------------------------------------------------------

#[test]
fn last_keeps_the_newest_complete_and_failed_ones_go() {
    let mut backups = vec![
        complete(1, "2024-01-01T00:00:00Z"),
        complete(2, "2024-01-02T00:00:00Z"),
        complete(3, "2024-01-03T00:00:00Z"),
        complete(4, "2024-01-04T00:00:00Z"),
        complete(5, "2024-01-05T00:00:00Z"),
    ];
    backups[4].state = BackupState::Failed; // newest, but failed
    backups[1].state = BackupState::Running;
    let last2 = keep_policy(|p| p.last = Some(2));
    let plan = run(&backups, &last2, "2024-02-01T00:00:00Z", Tz::UTC);
    assert_eq!(kept_ids(&plan), vec![2, 3, 4]);
    assert_eq!(
        reasons_of(&plan, 4),
        &[Reason::NewestComplete, Reason::Last(1)]
    );
    assert_eq!(reasons_of(&plan, 3), &[Reason::Last(2)]);
    assert_eq!(reasons_of(&plan, 2), &[Reason::Running]);
    assert_eq!(reasons_of(&plan, 5), &[Reason::NotComplete]);
    assert_eq!(reasons_of(&plan, 1), &[Reason::NotSelected]);
    // Newest first, every backup once.
    let order: Vec<u8> = plan
        .decisions
        .iter()
        .map(|d| d.backup.as_bytes()[15])
        .collect();
    assert_eq!(order, vec![5, 4, 3, 2, 1]);
}

#[test]
fn an_empty_policy_keeps_every_complete_backup() {
    let mut backups = vec![
        complete(1, "2020-01-01T00:00:00Z"),
        complete(2, "2021-01-01T00:00:00Z"),
        complete(3, "2022-01-01T00:00:00Z"),
    ];
    backups[0].state = BackupState::Failed;
    for policy in [
        KeepPolicy::default(),
        keep_policy(|p| {
            p.last = Some(0);
            p.daily = Some(0);
            p.within = Some(Duration::ZERO);
        }),
    ] {
        assert!(policy.is_empty());
        let plan = run(&backups, &policy, "2024-01-01T00:00:00Z", Tz::UTC);
        assert_eq!(kept_ids(&plan), vec![2, 3], "{policy}");
        assert_eq!(reasons_of(&plan, 2), &[Reason::NoKeepRules]);
        assert_eq!(reasons_of(&plan, 1), &[Reason::NotComplete]);
    }
}

#[test]
fn within_keeps_what_finished_inside_the_window() {
    let backups = vec![
        complete(1, "2024-01-01T00:00:00Z"),
        complete(2, "2024-01-08T11:59:59Z"),
        complete(3, "2024-01-08T12:00:00Z"),
        complete(4, "2024-01-09T00:00:00Z"),
    ];
    let within = keep_policy(|p| p.within = Some(Duration::from_secs(2 * 86_400)));
    let plan = run(&backups, &within, "2024-01-10T12:00:00Z", Tz::UTC);
    assert_eq!(kept_ids(&plan), vec![3, 4]);
    assert_eq!(reasons_of(&plan, 3), &[Reason::Within]);
}

#[test]
fn holds_locks_and_pins_keep_backups() {
    let mut backups: Vec<BackupInfo> = (1..=6)
        .map(|n| complete(n, &format!("2024-01-0{n}T00:00:00Z")))
        .collect();
    backups[0].legal_hold = true;
    backups[1].object_lock_until = Some(at("2030-01-01T00:00:00Z"));
    backups[2].object_lock_until = Some(at("2024-01-31T00:00:00Z")); // expired
    backups[3].pinned_by = Some("base of the PITR window".into());
    backups[4].state = BackupState::Failed;
    backups[4].legal_hold = true;
    let last1 = keep_policy(|p| p.last = Some(1));
    let plan = run(&backups, &last1, "2024-02-01T00:00:00Z", Tz::UTC);
    assert_eq!(kept_ids(&plan), vec![1, 2, 4, 5, 6]);
    assert_eq!(reasons_of(&plan, 1), &[Reason::LegalHold]);
    assert_eq!(
        reasons_of(&plan, 2),
        &[Reason::ObjectLock {
            until: at("2030-01-01T00:00:00Z")
        }]
    );
    assert_eq!(reasons_of(&plan, 3), &[Reason::NotSelected]);
    assert_eq!(
        reasons_of(&plan, 4),
        &[Reason::Pinned("base of the PITR window".into())]
    );
    assert_eq!(reasons_of(&plan, 5), &[Reason::LegalHold]);
}

#[test]
fn keeping_an_incremental_keeps_its_chain() {
    let mut backups = vec![
        complete(1, "2024-01-01T00:00:00Z"), // an older full, not needed
        complete(2, "2024-01-02T00:00:00Z"), // full
        complete(3, "2024-01-03T00:00:00Z"), // incr on 2
        complete(4, "2024-01-04T00:00:00Z"), // incr on 3
    ];
    backups[2].depends_on = Some(id(2));
    backups[3].depends_on = Some(id(3));
    let last1 = keep_policy(|p| p.last = Some(1));
    let plan = run(&backups, &last1, "2024-02-01T00:00:00Z", Tz::UTC);
    assert_eq!(kept_ids(&plan), vec![2, 3, 4]);
    assert_eq!(reasons_of(&plan, 3), &[Reason::ChainOf(id(4))]);
    assert_eq!(reasons_of(&plan, 2), &[Reason::ChainOf(id(3))]);
    assert_eq!(reasons_of(&plan, 1), &[Reason::NotSelected]);

    // A cycle or a parent that is gone does not break planning.
    backups[1].depends_on = Some(id(4));
    backups[0].depends_on = Some(id(99));
    let plan = run(&backups, &last1, "2024-02-01T00:00:00Z", Tz::UTC);
    assert_eq!(kept_ids(&plan), vec![2, 3, 4]);
}

fn archived(n: u8, finished: &str) -> BackupInfo {
    let mut b = complete(n, finished);
    b.copies = vec![
        CopyInfo {
            repository: "local".into(),
            storage_class: None,
            created_at: at(finished),
            bytes: 1 << 40,
        },
        CopyInfo {
            repository: "vault".into(),
            storage_class: Some("DEEP_ARCHIVE".into()),
            created_at: at("2024-01-01T00:00:00Z"),
            bytes: 60 << 30,
        },
        CopyInfo {
            repository: "vault".into(),
            storage_class: Some("deep_archive".into()),
            created_at: at("2023-12-31T00:00:00Z"),
            bytes: 40 << 30,
        },
        CopyInfo {
            repository: "cold".into(),
            storage_class: Some("GLACIER".into()),
            created_at: at("2024-02-01T00:00:00Z"),
            bytes: 10 << 30,
        },
        CopyInfo {
            repository: "ia".into(),
            storage_class: Some("STANDARD_IA".into()),
            created_at: at("2024-01-01T00:00:00Z"),
            bytes: 10 << 30,
        },
    ];
    b
}

/// 100 GiB in DEEP_ARCHIVE whose 180 days end on 2024-06-29 (120 days = 4 months after
/// 2024-03-01): 100 * $0.00099 * 4 = $0.396. 10 GiB in GLACIER whose 90 days end on
/// 2024-05-01 (61 days later): 10 * $0.0036 * 61/30 = $0.0732. STANDARD_IA's 30 days are over.
#[test]
fn minimum_storage_keeps_unless_forced_and_prices_the_early_deletion() {
    let backups = vec![
        archived(1, "2023-12-31T00:00:00Z"),
        complete(2, "2024-02-28T00:00:00Z"),
    ];
    let last1 = keep_policy(|p| p.last = Some(1));
    let mut options = PlanOptions::new(at("2024-03-01T00:00:00Z"), Tz::UTC);
    let plan = plan(&backups, &last1, &options).unwrap();
    let d = plan.decision(id(1)).unwrap();
    assert_eq!(d.action, Action::Keep);
    let [Reason::MinimumStorage {
        repository: cold,
        class: glacier,
        until: glacier_until,
        charge_usd: glacier_charge,
    }, Reason::MinimumStorage {
        repository: vault,
        class: deep,
        until: deep_until,
        charge_usd: deep_charge,
    }] = d.reasons.as_slice()
    else {
        panic!("{:?}", d.reasons);
    };
    assert_eq!((cold.as_str(), glacier.as_str()), ("cold", "GLACIER"));
    assert_eq!(*glacier_until, at("2024-05-01T00:00:00Z"));
    assert!((glacier_charge - 0.0732).abs() < 1e-9, "{glacier_charge}");
    assert_eq!((vault.as_str(), deep.as_str()), ("vault", "DEEP_ARCHIVE"));
    assert_eq!(*deep_until, at("2024-06-29T00:00:00Z"));
    // 60 GiB with 120 days left plus 40 GiB with 119 days left.
    let expected = 60.0 * 0.00099 * 4.0 + 40.0 * 0.00099 * 119.0 / 30.0;
    assert!((deep_charge - expected).abs() < 1e-9, "{deep_charge}");
    assert_eq!(d.early_deletion_charge_usd(), 0.0, "kept: nothing charged");
    assert_eq!(plan.early_deletion_charge_usd(), 0.0);

    options.force = true;
    let forced = super::plan(&backups, &last1, &options).unwrap();
    let d = forced.decision(id(1)).unwrap();
    assert_eq!(d.action, Action::Delete);
    assert_eq!(d.reasons[0], Reason::NotSelected);
    assert_eq!(d.reasons.len(), 3);
    let total = forced.early_deletion_charge_usd();
    assert!((total - (expected + 0.0732)).abs() < 1e-9, "{total}");

    // Once the minimum passed, nothing holds it and nothing is charged.
    options.force = false;
    options.now = at("2024-07-01T00:00:00Z");
    let later = super::plan(&backups, &last1, &options).unwrap();
    assert_eq!(
        later.decision(id(1)).unwrap().reasons,
        vec![Reason::NotSelected]
    );
}

#[test]
fn a_deleting_backup_is_finished_unless_held_or_needed() {
    let mut backups = vec![
        archived(1, "2024-02-01T00:00:00Z"),
        complete(2, "2024-02-02T00:00:00Z"),
        complete(3, "2024-02-03T00:00:00Z"),
    ];
    backups[0].state = BackupState::Deleting;
    backups[1].state = BackupState::Deleting;
    backups[1].pinned_by = Some("pitr".into());
    let plan = run(
        &backups,
        &KeepPolicy::default(),
        "2024-03-01T00:00:00Z",
        Tz::UTC,
    );
    // Minimum storage does not stop a deletion that already started.
    assert_eq!(reasons_of(&plan, 1), &[Reason::Deleting]);
    assert_eq!(kept_ids(&plan), vec![2, 3]);
}

#[test]
fn duplicates_are_refused_and_input_order_does_not_matter() {
    let backups = rome_autumn();
    let mut twice = backups.clone();
    twice.push(backups[2].clone());
    let options = PlanOptions::new(at(AUTUMN_NOW), Europe::Rome);
    let policy = keep_policy(|p| p.daily = Some(2));
    assert_eq!(
        plan(&twice, &policy, &options),
        Err(PlanError::DuplicateBackup(id(3)))
    );
    let mut reversed = backups.clone();
    reversed.reverse();
    assert_eq!(
        plan(&backups, &policy, &options),
        plan(&reversed, &policy, &options)
    );
}

#[test]
fn policies_parse_like_the_config_writes_them() {
    let p: KeepPolicy =
        serde_json::from_str(r#"{"last": 4, "daily": 7, "within": "2d 12h"}"#).unwrap();
    assert_eq!(p.last, Some(4));
    assert_eq!(p.within, Some(Duration::from_secs(60 * 3600)));
    assert!(!p.is_empty());
    assert_eq!(
        p.to_string(),
        r#"{ last = 4, daily = 7, within = "2days 12h" }"#
    );
    let err = serde_json::from_str::<KeepPolicy>(r#"{"dayly": 7}"#).unwrap_err();
    assert!(err.to_string().contains("dayly"), "{err}");
}

#[test]
fn reasons_read_well_and_serialize_with_their_kind() {
    let r = Reason::MinimumStorage {
        repository: "vault".into(),
        class: "DEEP_ARCHIVE".into(),
        until: at("2024-06-29T00:00:00Z"),
        charge_usd: 0.396,
    };
    assert_eq!(
        r.to_string(),
        "minimum storage of DEEP_ARCHIVE in vault until 2024-06-29 (early deletion ~$0.40)"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["kind"], "minimum_storage");
    assert_eq!(json["detail"]["class"], "DEEP_ARCHIVE");
    let json = serde_json::to_value(Reason::Daily("2024-10-27".into())).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"kind": "daily", "detail": "2024-10-27"})
    );
    assert_eq!(Reason::Last(2).to_string(), "last #2");
}

// ---- properties ------------------------------------------------------------------------------

const BASE: &str = "2022-01-01T00:00:00Z";

fn arb_tz() -> impl Strategy<Value = Tz> {
    prop_oneof![
        Just(Tz::UTC),
        Just(Europe::Rome),
        Just(America::New_York),
        Just(Australia::Lord_Howe), // 30-minute DST shifts
        Just(Asia::Kathmandu),      // +05:45
    ]
}

fn arb_copy() -> impl Strategy<Value = (usize, i64, u64)> {
    // (class index, age in hours before "now" at most ~250 days, GiB)
    (0usize..6, 0i64..6000, 0u64..500)
}

const CLASSES: [Option<&str>; 6] = [
    None,
    Some("DEEP_ARCHIVE"),
    Some("GLACIER"),
    Some("STANDARD_IA"),
    Some("glacier_ir"),
    Some("TAPE"),
];

#[derive(Debug, Clone)]
struct Spec {
    hours: u32,
    minute: u32,
    state: u8,
    hold: bool,
    lock_days: Option<i64>,
    parent: Option<usize>,
    pinned: bool,
    copies: Vec<(usize, i64, u64)>,
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        // Often close together (bucket collisions), sometimes years apart.
        prop_oneof![0u32..72, 0u32..2_000, 0u32..26_000],
        0u32..60,
        0u8..20,
        prop::bool::weighted(0.08),
        prop::option::weighted(0.08, -30i64..30),
        prop::option::weighted(0.25, 0usize..30),
        prop::bool::weighted(0.05),
        prop::collection::vec(arb_copy(), 0..3),
    )
        .prop_map(
            |(hours, minute, state, hold, lock_days, parent, pinned, copies)| Spec {
                hours,
                minute,
                state,
                hold,
                lock_days,
                parent,
                pinned,
                copies,
            },
        )
}

#[derive(Debug, Clone)]
struct Case {
    backups: Vec<BackupInfo>,
    options: PlanOptions,
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(arb_spec(), 0..25),
        0i64..(40 * 24),
        arb_tz(),
        any::<bool>(),
    )
        .prop_map(|(specs, now_offset_hours, tz, force)| {
            let base = at(BASE);
            let now = base + TimeDelta::hours(26_000 + now_offset_hours);
            let n = specs.len();
            let backups = specs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let finished_at = base
                        + TimeDelta::hours(i64::from(s.hours))
                        + TimeDelta::minutes(i64::from(s.minute));
                    BackupInfo {
                        id: id(i as u8 + 1),
                        finished_at,
                        state: match s.state {
                            0 => BackupState::Running,
                            1 | 2 => BackupState::Failed,
                            3 => BackupState::Deleting,
                            _ => BackupState::Complete,
                        },
                        tag: (s.state % 7 == 0).then(|| "weekly".to_owned()),
                        legal_hold: s.hold,
                        object_lock_until: s.lock_days.map(|d| now + TimeDelta::days(d)),
                        depends_on: s.parent.map(|p| id((p % n.max(1)) as u8 + 1)),
                        pinned_by: s.pinned.then(|| "pitr window".to_owned()),
                        copies: s
                            .copies
                            .iter()
                            .map(|&(class, age_hours, gib)| CopyInfo {
                                repository: format!("repo-{}", class % 2),
                                storage_class: CLASSES[class].map(str::to_owned),
                                created_at: now - TimeDelta::hours(age_hours),
                                bytes: gib << 30,
                            })
                            .collect(),
                    }
                })
                .collect();
            let mut options = PlanOptions::new(now, tz);
            options.force = force;
            Case { backups, options }
        })
}

fn arb_policy() -> impl Strategy<Value = KeepPolicy> {
    let count = || prop::option::of(0u32..6);
    (
        count(),
        count(),
        count(),
        count(),
        count(),
        count(),
        prop::option::of((0u64..3_000).prop_map(|h| Duration::from_secs(h * 3600))),
    )
        .prop_map(
            |(last, hourly, daily, weekly, monthly, yearly, within)| KeepPolicy {
                last,
                hourly,
                daily,
                weekly,
                monthly,
                yearly,
                within,
            },
        )
}

/// `p` with every rule at least as generous (counts raised by `add`, `within` lengthened).
fn larger(p: &KeepPolicy, add: [u32; 7]) -> KeepPolicy {
    let raise = |v: Option<u32>, a: u32| match (v, a) {
        (None, 0) => None,
        (v, a) => Some(v.unwrap_or(0) + a),
    };
    KeepPolicy {
        last: raise(p.last, add[0]),
        hourly: raise(p.hourly, add[1]),
        daily: raise(p.daily, add[2]),
        weekly: raise(p.weekly, add[3]),
        monthly: raise(p.monthly, add[4]),
        yearly: raise(p.yearly, add[5]),
        within: match (p.within, add[6]) {
            (None, 0) => None,
            (w, a) => Some(w.unwrap_or_default() + Duration::from_secs(u64::from(a) * 3600)),
        },
    }
}

fn kept_set(plan: &RetentionPlan) -> HashSet<BackupId> {
    plan.kept().map(|d| d.backup).collect()
}

fn min_storage_pending(b: &BackupInfo, options: &PlanOptions) -> bool {
    b.copies.iter().any(|c| {
        c.storage_class
            .as_deref()
            .and_then(|class| options.prices.get(class))
            .is_some_and(|p| {
                c.created_at + TimeDelta::days(i64::from(p.minimum_days)) > options.now
            })
    })
}

fn check_invariants(case: &Case, policy: &KeepPolicy, plan: &RetentionPlan) {
    let options = &case.options;
    let by_id: BTreeMap<BackupId, &BackupInfo> = case.backups.iter().map(|b| (b.id, b)).collect();
    // Each backup exactly once, with at least one reason.
    assert_eq!(plan.decisions.len(), case.backups.len());
    let decided: HashSet<BackupId> = plan.decisions.iter().map(|d| d.backup).collect();
    assert_eq!(decided.len(), case.backups.len());
    assert!(decided.iter().all(|id| by_id.contains_key(id)));
    assert!(plan.decisions.iter().all(|d| !d.reasons.is_empty()));
    let kept = kept_set(plan);

    let newest = case
        .backups
        .iter()
        .filter(|b| b.state == BackupState::Complete)
        .max_by_key(|b| (b.finished_at, b.id));
    if let Some(newest) = newest {
        assert!(kept.contains(&newest.id), "newest complete deleted");
    }
    for b in &case.backups {
        let keeps = kept.contains(&b.id);
        if b.legal_hold {
            assert!(keeps, "held backup {} deleted", b.id);
        }
        if b.object_lock_until.is_some_and(|u| u > options.now) {
            assert!(keeps, "locked backup {} deleted", b.id);
        }
        if b.pinned_by.is_some() {
            assert!(keeps, "pinned backup {} deleted", b.id);
        }
        if b.state == BackupState::Running {
            assert!(keeps, "running backup {} deleted", b.id);
        }
        if keeps {
            if let Some(parent) = b.depends_on.filter(|p| by_id.contains_key(p)) {
                assert!(
                    kept.contains(&parent),
                    "{} kept without its parent {parent}",
                    b.id
                );
            }
        } else {
            if !options.force && b.state != BackupState::Deleting {
                assert!(
                    !min_storage_pending(b, options),
                    "{} deleted before its minimum storage ended",
                    b.id
                );
            }
            if policy.is_empty() {
                assert_ne!(
                    b.state,
                    BackupState::Complete,
                    "empty policy deleted {}",
                    b.id
                );
            }
        }
    }
    if !options.force {
        assert_eq!(plan.early_deletion_charge_usd(), 0.0);
    }
}

/// The GFS definition, written the obvious way: group complete backups by bucket, order the
/// buckets by their newest backup, take the newest of the first `n`.
fn reference_buckets(
    backups: &[BackupInfo],
    kind: BucketKind,
    n: usize,
    tz: Tz,
) -> HashSet<BackupId> {
    let mut newest: BTreeMap<String, &BackupInfo> = BTreeMap::new();
    for b in backups.iter().filter(|b| b.state == BackupState::Complete) {
        let entry = newest.entry(kind.bucket(b.finished_at, tz)).or_insert(b);
        if (b.finished_at, b.id) > (entry.finished_at, entry.id) {
            *entry = b;
        }
    }
    let mut buckets: Vec<&BackupInfo> = newest.into_values().collect();
    buckets.sort_by_key(|b| std::cmp::Reverse((b.finished_at, b.id)));
    buckets.into_iter().take(n).map(|b| b.id).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_respect_every_invariant(case in arb_case(), policy in arb_policy()) {
        let plan = plan(&case.backups, &policy, &case.options).unwrap();
        check_invariants(&case, &policy, &plan);

        // Deterministic, whatever the input order.
        let mut shuffled = case.backups.clone();
        shuffled.reverse();
        let len = shuffled.len();
        shuffled.rotate_left(len / 3);
        prop_assert_eq!(&super::plan(&shuffled, &policy, &case.options).unwrap(), &plan);
        prop_assert_eq!(&super::plan(&case.backups, &policy, &case.options).unwrap(), &plan);
    }

    #[test]
    fn larger_policies_keep_at_least_as_much(
        case in arb_case(),
        policy in arb_policy(),
        add in prop::array::uniform7(0u32..4),
    ) {
        prop_assume!(!policy.is_empty());
        let bigger = larger(&policy, add);
        let small = kept_set(&plan(&case.backups, &policy, &case.options).unwrap());
        let big = kept_set(&plan(&case.backups, &bigger, &case.options).unwrap());
        prop_assert!(small.is_subset(&big), "{policy} kept {small:?}, {bigger} kept {big:?}");
    }

    #[test]
    fn force_only_adds_deletions(case in arb_case(), policy in arb_policy()) {
        let mut options = case.options.clone();
        options.force = false;
        let careful = kept_set(&plan(&case.backups, &policy, &options).unwrap());
        options.force = true;
        let forced = kept_set(&plan(&case.backups, &policy, &options).unwrap());
        prop_assert!(forced.is_subset(&careful));
    }

    #[test]
    fn bucket_rules_match_the_reference_definition(
        case in arb_case(),
        kind in prop::sample::select(BucketKind::ALL.to_vec()),
        n in 1u32..8,
    ) {
        // Plain complete backups: no protections other than "newest complete".
        let backups: Vec<BackupInfo> = case
            .backups
            .iter()
            .map(|b| BackupInfo { copies: Vec::new(), ..BackupInfo::complete(b.id, b.finished_at) })
            .collect();
        let policy = match kind {
            BucketKind::Hourly => keep_policy(|p| p.hourly = Some(n)),
            BucketKind::Daily => keep_policy(|p| p.daily = Some(n)),
            BucketKind::Weekly => keep_policy(|p| p.weekly = Some(n)),
            BucketKind::Monthly => keep_policy(|p| p.monthly = Some(n)),
            BucketKind::Yearly => keep_policy(|p| p.yearly = Some(n)),
        };
        let kept = kept_set(&plan(&backups, &policy, &case.options).unwrap());
        let mut expected = reference_buckets(&backups, kind, n as usize, case.options.timezone);
        if let Some(newest) = backups.iter().max_by_key(|b| (b.finished_at, b.id)) {
            expected.insert(newest.id);
        }
        prop_assert_eq!(kept, expected);
    }
}
