//! Retention planning: which backups of one source to keep and which to delete.
//!
//! [`plan`] is a pure function of the backups, a [`KeepPolicy`], the time zone the source's
//! calendar lives in and `now`; it decides, and says why, for every backup. Doing the
//! deletions (and reading the catalog) is the caller's job (`backup-engine`'s `prune`).
//!
//! # Keep rules (GFS, as restic and borg define them)
//!
//! Only `complete` backups are selected by rules, newest first (by `finished_at`, ties broken
//! by id):
//!
//! * `last = N` keeps the N newest.
//! * `hourly`, `daily`, `weekly`, `monthly`, `yearly = N` keep the newest backup of each of
//!   the N most recent hours / days / ISO weeks / months / years that contain a backup. The
//!   calendar is the wall clock of the source's time zone: a backup at 00:30 in Rome belongs
//!   to that Rome day even though it is the previous day in UTC, and when clocks go back the
//!   repeated hour is one hourly bucket.
//! * `within = D` keeps every backup that finished less than D before `now`.
//!
//! A backup is kept if any rule selects it. A policy whose rules select nothing (all counts
//! absent or 0, no `within`) keeps every complete backup: an empty policy must never delete
//! everything.
//!
//! # Protections (whatever the policy says)
//!
//! * the newest complete backup is kept;
//! * running backups are kept (failed and abandoned ones are deleted);
//! * a legal hold, an object lock that has not expired, or a pin (`pinned_by`, e.g. a
//!   point-in-time-recovery window that needs its base backup) keeps a backup;
//! * keeping a backup keeps its whole chain: every backup it `depends_on`, transitively;
//! * a backup with a copy in an archive storage class whose minimum storage duration has not
//!   passed is kept, unless `force`; with `force` it is deleted and the estimated
//!   early-deletion charge is reported;
//! * a backup already `deleting` (an earlier prune decided and started) is deleted, unless a
//!   hold, lock, pin or a kept backup's chain protects it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::ids::BackupId;

/// `keep = { last = 4, hourly = 24, daily = 7, weekly = 4, monthly = 12, yearly = 3, within = "2d" }`
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KeepPolicy {
    #[serde(default)]
    pub last: Option<u32>,
    #[serde(default)]
    pub hourly: Option<u32>,
    #[serde(default)]
    pub daily: Option<u32>,
    #[serde(default)]
    pub weekly: Option<u32>,
    #[serde(default)]
    pub monthly: Option<u32>,
    #[serde(default)]
    pub yearly: Option<u32>,
    /// Keep everything newer than this.
    #[serde(default, with = "humantime_serde")]
    pub within: Option<Duration>,
}

impl KeepPolicy {
    /// True when no rule can select anything; such a policy keeps every complete backup.
    pub fn is_empty(&self) -> bool {
        let counts = [
            self.last,
            self.hourly,
            self.daily,
            self.weekly,
            self.monthly,
            self.yearly,
        ];
        counts.iter().all(|c| c.unwrap_or(0) == 0) && self.within.is_none_or(|d| d.is_zero())
    }
}

impl fmt::Display for KeepPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, value) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ] {
            if let Some(n) = value {
                parts.push(format!("{name} = {n}"));
            }
        }
        if let Some(d) = self.within {
            parts.push(format!("within = \"{}\"", humantime::format_duration(d)));
        }
        write!(f, "{{ {} }}", parts.join(", "))
    }
}

/// Where a backup is in its life, as far as retention cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Complete,
    /// Still being written: always kept.
    Running,
    /// Failed or abandoned: never restorable, so deleted unless protected.
    Failed,
    /// An earlier prune marked it for deletion: the deletion is finished.
    Deleting,
}

/// One stored copy (of one artifact) of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyInfo {
    pub repository: String,
    /// E.g. "DEEP_ARCHIVE"; `None` for storage without classes (local directories).
    pub storage_class: Option<String>,
    pub created_at: DateTime<Utc>,
    pub bytes: u64,
}

/// What the planner knows about one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    pub id: BackupId,
    /// When it finished (a running backup: when it started). Rules and "newest" use this.
    pub finished_at: DateTime<Utc>,
    pub state: BackupState,
    pub tag: Option<String>,
    pub legal_hold: bool,
    /// The storage refuses deletion until then (S3 Object Lock and the like).
    pub object_lock_until: Option<DateTime<Utc>>,
    /// The backup an incremental builds on; keeping this backup keeps that one.
    pub depends_on: Option<BackupId>,
    /// Why something else needs this backup (e.g. "base of the PITR window"); keeps it.
    pub pinned_by: Option<String>,
    pub copies: Vec<CopyInfo>,
}

impl BackupInfo {
    /// A complete backup with no holds, pins, parent or copies.
    pub fn complete(id: BackupId, finished_at: DateTime<Utc>) -> BackupInfo {
        BackupInfo {
            id,
            finished_at,
            state: BackupState::Complete,
            tag: None,
            legal_hold: false,
            object_lock_until: None,
            depends_on: None,
            pinned_by: None,
            copies: Vec::new(),
        }
    }
}

/// A storage class with a minimum storage duration: deleting earlier is charged as if the
/// object had been stored for the rest of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StorageClassPrice {
    pub class: String,
    pub minimum_days: u32,
    pub usd_per_gb_month: f64,
}

/// Storage prices used to estimate early-deletion charges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceTable {
    pub classes: Vec<StorageClassPrice>,
}

impl Default for PriceTable {
    /// S3 list prices (us-east-1): DEEP_ARCHIVE 180 days at $0.00099/GB-month, GLACIER 90
    /// days at $0.0036, GLACIER_IR 90 days at $0.004, STANDARD_IA 30 days at $0.0125,
    /// ONEZONE_IA 30 days at $0.01.
    fn default() -> Self {
        let class = |class: &str, minimum_days, usd_per_gb_month| StorageClassPrice {
            class: class.to_owned(),
            minimum_days,
            usd_per_gb_month,
        };
        PriceTable {
            classes: vec![
                class("DEEP_ARCHIVE", 180, 0.00099),
                class("GLACIER", 90, 0.0036),
                class("GLACIER_IR", 90, 0.004),
                class("STANDARD_IA", 30, 0.0125),
                class("ONEZONE_IA", 30, 0.01),
            ],
        }
    }
}

impl PriceTable {
    /// The price of `class` (case-insensitive); `None` for classes without a minimum.
    pub fn get(&self, class: &str) -> Option<&StorageClassPrice> {
        self.classes
            .iter()
            .find(|c| c.class.eq_ignore_ascii_case(class.trim()))
    }
}

/// Bytes per GB in storage prices (providers bill binary gigabytes).
const BYTES_PER_GB: f64 = (1u64 << 30) as f64;
/// Storage is priced per 30-day month.
const SECONDS_PER_MONTH: f64 = 30.0 * 86_400.0;

/// Everything besides the backups and the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    pub now: DateTime<Utc>,
    /// The source's time zone: calendar buckets follow its wall clock.
    pub timezone: Tz,
    /// Delete even where a minimum storage duration has not passed (the charge is reported).
    pub force: bool,
    pub prices: PriceTable,
}

impl PlanOptions {
    pub fn new(now: DateTime<Utc>, timezone: Tz) -> PlanOptions {
        PlanOptions {
            now,
            timezone,
            force: false,
            prices: PriceTable::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Keep,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Delete => "delete",
        }
    }
}

/// Why a backup is kept or deleted. Calendar buckets are labelled in the source's time zone:
/// `2024-10-27 02h`, `2024-10-27`, `2024-W43`, `2024-10`, `2024`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum Reason {
    /// Among the `last` newest: its rank (1 = newest).
    Last(u32),
    Hourly(String),
    Daily(String),
    Weekly(String),
    Monthly(String),
    Yearly(String),
    /// Finished within the `within` window.
    Within,
    /// The policy has no rules, so every complete backup is kept.
    NoKeepRules,
    /// The newest complete backup is always kept.
    NewestComplete,
    /// Still being written.
    Running,
    LegalHold,
    ObjectLock {
        until: DateTime<Utc>,
    },
    /// A kept backup (this child) depends on this one.
    ChainOf(BackupId),
    Pinned(String),
    /// Copies in `class` in `repository` reach their minimum storage duration at `until`;
    /// deleting now costs about `charge_usd`. Keeps the backup unless forced.
    MinimumStorage {
        repository: String,
        class: String,
        until: DateTime<Utc>,
        charge_usd: f64,
    },
    /// Complete, but no keep rule selects it.
    NotSelected,
    /// Failed or abandoned: it cannot be restored.
    NotComplete,
    /// An earlier prune started deleting it.
    Deleting,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Last(n) => write!(f, "last #{n}"),
            Reason::Hourly(b) => write!(f, "hourly {b}"),
            Reason::Daily(b) => write!(f, "daily {b}"),
            Reason::Weekly(b) => write!(f, "weekly {b}"),
            Reason::Monthly(b) => write!(f, "monthly {b}"),
            Reason::Yearly(b) => write!(f, "yearly {b}"),
            Reason::Within => f.write_str("within"),
            Reason::NoKeepRules => f.write_str("no keep rules (keep everything)"),
            Reason::NewestComplete => f.write_str("newest complete"),
            Reason::Running => f.write_str("running"),
            Reason::LegalHold => f.write_str("legal hold"),
            Reason::ObjectLock { until } => {
                write!(f, "object lock until {}", until.format("%Y-%m-%d %H:%M UTC"))
            }
            Reason::ChainOf(child) => write!(f, "chain of {child}"),
            Reason::Pinned(why) => write!(f, "pinned: {why}"),
            Reason::MinimumStorage {
                repository,
                class,
                until,
                charge_usd,
            } => write!(
                f,
                "minimum storage of {class} in {repository} until {} (early deletion ~${charge_usd:.2})",
                until.format("%Y-%m-%d")
            ),
            Reason::NotSelected => f.write_str("no keep rule selects it"),
            Reason::NotComplete => f.write_str("not complete"),
            Reason::Deleting => f.write_str("deletion started earlier"),
        }
    }
}

/// The decision for one backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub backup: BackupId,
    pub action: Action,
    /// Never empty.
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// The early-deletion charge this decision incurs (0 unless it deletes a backup whose
    /// minimum storage has not passed).
    pub fn early_deletion_charge_usd(&self) -> f64 {
        if self.action == Action::Keep {
            return 0.0;
        }
        self.reasons
            .iter()
            .map(|r| match r {
                Reason::MinimumStorage { charge_usd, .. } => *charge_usd,
                _ => 0.0,
            })
            .sum()
    }
}

/// One decision per backup, newest first (by `finished_at`, then id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetentionPlan {
    pub decisions: Vec<Decision>,
}

impl RetentionPlan {
    pub fn decision(&self, id: BackupId) -> Option<&Decision> {
        self.decisions.iter().find(|d| d.backup == id)
    }

    pub fn kept(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Keep)
    }

    pub fn deleted(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| d.action == Action::Delete)
    }

    /// The estimated early-deletion charge of carrying the plan out.
    pub fn early_deletion_charge_usd(&self) -> f64 {
        self.decisions
            .iter()
            .map(Decision::early_deletion_charge_usd)
            .sum()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("backup {0} is listed twice; each backup must appear once in a retention plan")]
    DuplicateBackup(BackupId),
}

/// A calendar bucket kind of the GFS rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketKind {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl BucketKind {
    pub const ALL: [BucketKind; 5] = [
        BucketKind::Hourly,
        BucketKind::Daily,
        BucketKind::Weekly,
        BucketKind::Monthly,
        BucketKind::Yearly,
    ];

    /// The bucket `at` falls in on `tz`'s wall clock, as its label.
    pub fn bucket(self, at: DateTime<Utc>, tz: Tz) -> String {
        let local = at.with_timezone(&tz);
        match self {
            BucketKind::Hourly => local.format("%Y-%m-%d %Hh").to_string(),
            BucketKind::Daily => local.format("%Y-%m-%d").to_string(),
            BucketKind::Weekly => {
                let week = local.iso_week();
                format!("{}-W{:02}", week.year(), week.week())
            }
            BucketKind::Monthly => local.format("%Y-%m").to_string(),
            BucketKind::Yearly => format!("{}", local.year()),
        }
    }

    fn count(self, policy: &KeepPolicy) -> u32 {
        match self {
            BucketKind::Hourly => policy.hourly,
            BucketKind::Daily => policy.daily,
            BucketKind::Weekly => policy.weekly,
            BucketKind::Monthly => policy.monthly,
            BucketKind::Yearly => policy.yearly,
        }
        .unwrap_or(0)
    }

    fn reason(self, bucket: String) -> Reason {
        match self {
            BucketKind::Hourly => Reason::Hourly(bucket),
            BucketKind::Daily => Reason::Daily(bucket),
            BucketKind::Weekly => Reason::Weekly(bucket),
            BucketKind::Monthly => Reason::Monthly(bucket),
            BucketKind::Yearly => Reason::Yearly(bucket),
        }
    }
}

/// Decides, for every backup of one source, whether to keep or delete it, and why. See the
/// module documentation for the rules. Deterministic: the order of `backups` does not matter.
pub fn plan(
    backups: &[BackupInfo],
    policy: &KeepPolicy,
    options: &PlanOptions,
) -> Result<RetentionPlan, PlanError> {
    let mut seen = HashSet::new();
    for b in backups {
        if !seen.insert(b.id) {
            return Err(PlanError::DuplicateBackup(b.id));
        }
    }
    // Newest first; ids break ties so equal times still give one order.
    let mut order: Vec<&BackupInfo> = backups.iter().collect();
    order.sort_by(|a, b| {
        b.finished_at
            .cmp(&a.finished_at)
            .then_with(|| b.id.cmp(&a.id))
    });
    let index: HashMap<BackupId, usize> =
        order.iter().enumerate().map(|(i, b)| (b.id, i)).collect();
    let mut keep = vec![false; order.len()];
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); order.len()];
    let mut select = |i: usize, reason: Reason| {
        keep[i] = true;
        reasons[i].push(reason);
    };

    let complete: Vec<usize> = (0..order.len())
        .filter(|&i| order[i].state == BackupState::Complete)
        .collect();
    let now = options.now;

    // Protections that hold whatever the policy.
    for (i, b) in order.iter().enumerate() {
        if b.state == BackupState::Running {
            select(i, Reason::Running);
        }
    }
    if let Some(&newest) = complete.first() {
        select(newest, Reason::NewestComplete);
    }
    for (i, b) in order.iter().enumerate() {
        if b.legal_hold {
            select(i, Reason::LegalHold);
        }
        if let Some(until) = b.object_lock_until.filter(|until| *until > now) {
            select(i, Reason::ObjectLock { until });
        }
        if let Some(why) = &b.pinned_by {
            select(i, Reason::Pinned(why.clone()));
        }
    }

    // Keep rules, over complete backups only.
    if policy.is_empty() {
        for &i in &complete {
            select(i, Reason::NoKeepRules);
        }
    } else {
        for (rank, &i) in complete
            .iter()
            .take(policy.last.unwrap_or(0) as usize)
            .enumerate()
        {
            select(i, Reason::Last(rank as u32 + 1));
        }
        if let Some(within) = policy.within.filter(|d| !d.is_zero()) {
            let cutoff = TimeDelta::from_std(within)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            for &i in &complete {
                if order[i].finished_at >= cutoff {
                    select(i, Reason::Within);
                }
            }
        }
        for kind in BucketKind::ALL {
            let wanted = kind.count(policy) as usize;
            let mut buckets = HashSet::new();
            for &i in &complete {
                if buckets.len() == wanted {
                    break;
                }
                let bucket = kind.bucket(order[i].finished_at, options.timezone);
                // The first backup met in a bucket is its newest.
                if buckets.insert(bucket.clone()) {
                    select(i, kind.reason(bucket));
                }
            }
        }
    }

    // Deleting backups are finished unless something above (or a chain) protects them, so
    // minimum storage is only weighed for backups that would be deleted now for the first time.
    close_chains(&order, &index, &mut keep, &mut reasons);
    for (i, b) in order.iter().enumerate() {
        if keep[i] || b.state == BackupState::Deleting {
            continue;
        }
        let pending = minimum_storage(b, options);
        if pending.is_empty() {
            continue;
        }
        if !options.force {
            keep[i] = true;
        }
        reasons[i].extend(pending);
    }
    close_chains(&order, &index, &mut keep, &mut reasons);

    let decisions = order
        .iter()
        .zip(keep)
        .zip(reasons)
        .map(|((b, kept), mut reasons)| {
            let action = if kept { Action::Keep } else { Action::Delete };
            if action == Action::Delete {
                let why = match b.state {
                    BackupState::Complete => Reason::NotSelected,
                    BackupState::Failed => Reason::NotComplete,
                    BackupState::Deleting => Reason::Deleting,
                    BackupState::Running => unreachable!("running backups are always kept"),
                };
                reasons.insert(0, why);
            }
            Decision {
                backup: b.id,
                action,
                reasons,
            }
        })
        .collect();
    Ok(RetentionPlan { decisions })
}

/// Keeps every backup a kept backup depends on, transitively, noting which kept child needs
/// it. Tolerates parents outside the set (already gone) and cycles.
fn close_chains(
    order: &[&BackupInfo],
    index: &HashMap<BackupId, usize>,
    keep: &mut [bool],
    reasons: &mut [Vec<Reason>],
) {
    let mut pending: Vec<usize> = (0..order.len()).filter(|&i| keep[i]).collect();
    // Process oldest-first children last so reasons come out in plan order.
    pending.reverse();
    while let Some(child) = pending.pop() {
        let Some(parent) = order[child].depends_on.and_then(|p| index.get(&p).copied()) else {
            continue;
        };
        if parent == child {
            continue;
        }
        let reason = Reason::ChainOf(order[child].id);
        if !reasons[parent].contains(&reason) {
            reasons[parent].push(reason);
        }
        if !keep[parent] {
            keep[parent] = true;
            pending.push(parent);
        }
    }
}

/// The minimum-storage reasons of a backup: one per (repository, class) with copies whose
/// minimum storage duration has not passed at `options.now`.
fn minimum_storage(b: &BackupInfo, options: &PlanOptions) -> Vec<Reason> {
    let mut pending: BTreeMap<(String, String), (DateTime<Utc>, f64)> = BTreeMap::new();
    for copy in &b.copies {
        let Some(price) = copy
            .storage_class
            .as_deref()
            .and_then(|c| options.prices.get(c))
        else {
            continue;
        };
        let until = copy.created_at + TimeDelta::days(i64::from(price.minimum_days));
        if until <= options.now {
            continue;
        }
        let remaining = (until - options.now).num_seconds() as f64 / SECONDS_PER_MONTH;
        let charge = copy.bytes as f64 / BYTES_PER_GB * price.usd_per_gb_month * remaining;
        let entry = pending
            .entry((copy.repository.clone(), price.class.clone()))
            .or_insert((until, 0.0));
        entry.0 = entry.0.max(until);
        entry.1 += charge;
    }
    pending
        .into_iter()
        .map(
            |((repository, class), (until, charge_usd))| Reason::MinimumStorage {
                repository,
                class,
                until,
                charge_usd,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests;
