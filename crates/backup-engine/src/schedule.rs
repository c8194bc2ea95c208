//! Turning the configured schedules into jobs: [`plan_due_jobs`] runs on every scheduler tick
//! of every backupd replica and enqueues each due cron slot once (the catalog dedupes across
//! replicas), [`upcoming_runs`] and [`schedule_report`] show what will run, and
//! [`SchedulerConfig`] (`[scheduler]`) holds the knobs of the queue.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use backup_catalog::{
    ClaimLimits, JobFilter, JobId, JobKind, JobRecord, JobStatus, NewJob, PlannedSlot,
};
use backup_scheduler::{backoff, catch_up, jitter, seed, CronSchedule};

use crate::config::{Config, SourceConfig};
use crate::error::Result;
use crate::policy::{BackupType, ScheduleEntry};
use crate::Engine;

/// `[scheduler]`: how jobs are planned, claimed and retried. Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SchedulerConfig {
    /// Each job becomes due up to this long after its cron slot (a stable per-source delay),
    /// so sources sharing a slot do not all start at once.
    #[serde(default = "default_jitter", with = "humantime_serde")]
    pub jitter: Duration,
    /// Attempts of a job before it is `dead` (the first run counts).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Delay before the first retry; it doubles with each further retry ...
    #[serde(default = "default_retry_base", with = "humantime_serde")]
    pub retry_base: Duration,
    /// ... up to this.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long a claimed job stays with its replica without a renewal; a job whose lease
    /// expires (its replica died) is taken over by another replica.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How often the scheduler plans due slots and claims jobs.
    #[serde(default = "default_tick", with = "humantime_serde")]
    pub tick: Duration,
    /// Jobs running at once against one repository, across all replicas.
    #[serde(default = "default_max_running_per_repository")]
    pub max_running_per_repository: u32,
    /// Jobs running at once for one source, across all replicas.
    #[serde(default = "default_max_running_per_source")]
    pub max_running_per_source: u32,
}

fn default_jitter() -> Duration {
    Duration::ZERO
}
fn default_max_attempts() -> u32 {
    3
}
fn default_retry_base() -> Duration {
    Duration::from_secs(30)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(30 * 60)
}
fn default_lease() -> Duration {
    Duration::from_secs(60)
}
fn default_tick() -> Duration {
    Duration::from_secs(5)
}
fn default_max_running_per_repository() -> u32 {
    2
}
fn default_max_running_per_source() -> u32 {
    1
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            jitter: default_jitter(),
            max_attempts: default_max_attempts(),
            retry_base: default_retry_base(),
            retry_max: default_retry_max(),
            lease: default_lease(),
            tick: default_tick(),
            max_running_per_repository: default_max_running_per_repository(),
            max_running_per_source: default_max_running_per_source(),
        }
    }
}

impl SchedulerConfig {
    /// The running-job limits to pass to `Catalog::claim_job`.
    pub fn claim_limits(&self) -> ClaimLimits {
        ClaimLimits {
            max_running_per_source: self.max_running_per_source,
            max_running_per_repository: self.max_running_per_repository,
        }
    }

    /// When to retry `job` after its current attempt failed at `now`: exponential backoff
    /// from `retry-base` to `retry-max` (jittered by the job id), or `None` when that attempt
    /// was its last (`max_attempts`). Pass it as `JobOutcome::Failed { retry_at, .. }`.
    pub fn retry_at(&self, job: &JobRecord, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let failed = job.attempts.saturating_add(1);
        if failed >= job.max_attempts {
            return None;
        }
        let delay = backoff(
            failed,
            self.retry_base,
            self.retry_max,
            seed(&job.id.to_string()),
        );
        Some(now + TimeDelta::from_std(delay).unwrap_or(TimeDelta::MAX))
    }

    /// Checks the values; on error returns the offending key (e.g. `scheduler.lease`) and why.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, message: &str| Err((format!("scheduler.{key}"), message.into()));
        if self.max_attempts == 0 {
            return bad("max-attempts", "must be at least 1 (the first run counts)");
        }
        if self.retry_base.is_zero() {
            return bad("retry-base", "must be longer than 0s, e.g. \"30s\"");
        }
        if self.retry_max < self.retry_base {
            return bad("retry-max", "must be at least `retry-base`");
        }
        if self.tick.is_zero() {
            return bad("tick", "must be longer than 0s, e.g. \"5s\"");
        }
        if self.lease <= self.tick {
            return bad(
                "lease",
                "must be longer than `tick` (leases are renewed while a job runs), e.g. \"60s\"",
            );
        }
        if TimeDelta::from_std(self.jitter).is_err() || self.jitter > Duration::from_secs(86_400) {
            return bad("jitter", "must be at most one day");
        }
        if self.max_running_per_repository == 0 {
            return bad("max-running-per-repository", "must be at least 1");
        }
        if self.max_running_per_source == 0 {
            return bad("max-running-per-source", "must be at least 1");
        }
        Ok(())
    }
}

/// The catalog's name for schedule entry `index` of a source: its position, cron text and
/// time zone, so editing an entry makes it a new schedule (planned from the next slot on,
/// without catching up on the old one).
pub fn schedule_key(index: usize, schedule: &CronSchedule) -> String {
    format!("{index}|{}|{}", schedule.expr(), schedule.timezone())
}

/// The job for `slot` of `source`, due at the slot plus jitter. `entries` are the schedule
/// entries due at this slot, in config order; they share one job (the catalog holds one per
/// source and slot): it takes the tag of the last entry that has one (rarer schedules, such
/// as a weekly one, usually come later) and is a full backup if any entry asks for one.
fn scheduled_job(
    config: &Config,
    source: &SourceConfig,
    entries: &[&ScheduleEntry],
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
) -> NewJob {
    let delay = jitter(&source.name, slot, config.scheduler.jitter);
    let backup_type = if entries.iter().any(|e| e.backup_type == BackupType::Full) {
        BackupType::Full
    } else {
        BackupType::Incr
    };
    NewJob {
        source: source.name.clone(),
        repository: source.repository.clone(),
        kind: JobKind::Backup,
        backup_type: backup_type.as_str().to_owned(),
        tag: entries.iter().rev().find_map(|e| e.tag.clone()),
        scheduled_for: Some(slot),
        due_at: slot + TimeDelta::from_std(delay).unwrap_or(TimeDelta::zero()),
        max_attempts: config.scheduler.max_attempts,
        created_at: now,
    }
}

/// The schedule state key of a source's `drill.cron`.
pub const DRILL_SCHEDULE_KEY: &str = "drill";

/// A restore drill job: for the cron `slot`, or requested now (`None`).
pub fn drill_job(
    config: &Config,
    source: &SourceConfig,
    slot: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> NewJob {
    NewJob {
        source: source.name.clone(),
        repository: source.repository.clone(),
        kind: JobKind::Drill,
        backup_type: "drill".into(),
        tag: None,
        scheduled_for: slot,
        due_at: slot.map_or(now, |slot| {
            slot + TimeDelta::from_std(jitter(&source.name, slot, config.scheduler.jitter))
                .unwrap_or(TimeDelta::zero())
        }),
        // A failed drill is a finding to report, not a glitch to retry.
        max_attempts: 1,
        created_at: now,
    }
}

/// Plans what is due at `now`, for every schedule entry of every source: an entry seen for
/// the first time only records `now` (nothing is due yet); otherwise the latest slot since
/// the last planned one (missed slots run once) is enqueued, due at the slot plus jitter.
/// Entries of one source due at the same slot share one job (see `scheduled_job`: every
/// replica builds the same one). Safe to call on every tick of every replica: each slot is
/// enqueued once. Returns the jobs this call enqueued.
#[tracing::instrument(skip_all, fields(%now))]
pub async fn plan_due_jobs(engine: &Engine, now: DateTime<Utc>) -> Result<Vec<JobId>> {
    let config = &engine.config;
    let catalog = &engine.catalog;
    let mut planned = Vec::new();
    let mut slots = Vec::new();
    let last_planned = catalog.all_last_planned().await?;
    for source in &config.sources {
        // (entry index, schedule key, slot) of every entry with a slot due.
        let mut due = Vec::new();
        for (index, schedule) in source.schedules.iter().enumerate() {
            let key = schedule_key(index, schedule);
            match last_planned
                .get(&(source.name.clone(), key.clone()))
                .copied()
            {
                None => {
                    if catalog.init_last_planned(&source.name, &key, now).await? {
                        tracing::info!(source = %source.name, schedule = %key,
                            "new schedule; its first run is its next slot");
                    }
                }
                Some(last) => {
                    if let Some(slot) = catch_up(schedule, Some(last), now) {
                        due.push((index, key, slot));
                    }
                }
            }
        }
        if let Some(drill) = source.drill.as_ref().and_then(|d| d.schedule.as_ref()) {
            let key = DRILL_SCHEDULE_KEY.to_owned();
            match last_planned
                .get(&(source.name.clone(), key.clone()))
                .copied()
            {
                None => {
                    catalog.init_last_planned(&source.name, &key, now).await?;
                }
                Some(last) => {
                    if let Some(slot) = catch_up(drill, Some(last), now) {
                        slots.push(PlannedSlot {
                            source: source.name.clone(),
                            schedule_key: key,
                            slot,
                            job: drill_job(config, source, Some(slot), now),
                        });
                    }
                }
            }
        }
        for (_, key, slot) in &due {
            let entries: Vec<&ScheduleEntry> = due
                .iter()
                .filter(|(_, _, other)| other == slot)
                .map(|(index, _, _)| &source.schedule[*index])
                .collect();
            let job = scheduled_job(config, source, &entries, *slot, now);
            tracing::debug!(source = %source.name, %slot, due_at = %job.due_at, tag = ?job.tag, "slot due");
            slots.push(PlannedSlot {
                source: source.name.clone(),
                schedule_key: key.clone(),
                slot: *slot,
                job,
            });
        }
    }
    if !slots.is_empty() {
        planned = catalog.plan_slots(&slots).await?;
        tracing::info!(
            due = slots.len(),
            planned = planned.len(),
            "planned scheduled backups"
        );
    }
    Ok(planned)
}

/// A run time in UTC and in the schedule's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunTime {
    pub utc: DateTime<Utc>,
    pub local: DateTime<FixedOffset>,
}

/// One schedule entry of a source with its next runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryRuns {
    /// Position in the source's `schedule` list.
    pub index: usize,
    /// The entry's name in the catalog's schedule state.
    pub key: String,
    pub cron: String,
    #[serde(rename = "type")]
    pub backup_type: BackupType,
    pub tag: Option<String>,
    pub timezone: String,
    /// The next runs strictly after `now` (cron slots; jitter may delay each a little).
    pub next_runs: Vec<RunTime>,
}

/// The next `n` runs after `now` of each schedule entry of `source`, in config order.
pub fn upcoming_runs(
    config: &Config,
    source: &str,
    now: DateTime<Utc>,
    n: usize,
) -> Result<Vec<EntryRuns>> {
    let (_, source) = config.source(source)?;
    Ok(source
        .schedule
        .iter()
        .zip(&source.schedules)
        .enumerate()
        .map(|(index, (entry, schedule))| {
            let tz = schedule.timezone();
            EntryRuns {
                index,
                key: schedule_key(index, schedule),
                cron: schedule.expr().to_owned(),
                backup_type: entry.backup_type,
                tag: entry.tag.clone(),
                timezone: tz.to_string(),
                next_runs: schedule
                    .upcoming(now, n)
                    .into_iter()
                    .map(|utc| RunTime {
                        utc,
                        local: utc.with_timezone(&tz).fixed_offset(),
                    })
                    .collect(),
            }
        })
        .collect())
}

/// A schedule entry with the last slot the catalog planned for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    #[serde(flatten)]
    pub entry: EntryRuns,
    /// `None` until a scheduler has seen this entry.
    pub last_planned: Option<DateTime<Utc>>,
}

/// What `backupctl schedule SOURCE` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleReport {
    pub source: String,
    pub repository: String,
    pub timezone: String,
    pub now: DateTime<Utc>,
    pub entries: Vec<EntryReport>,
    /// The source's queued and running jobs, earliest due first.
    pub jobs: Vec<JobRecord>,
}

/// The schedule of `source`: its entries with their next `n` runs and last planned slot, and
/// its queued and running jobs.
pub async fn schedule_report(
    engine: &Engine,
    source: &str,
    now: DateTime<Utc>,
    n: usize,
) -> Result<ScheduleReport> {
    let entries = upcoming_runs(&engine.config, source, now, n)?;
    let (_, config) = engine.config.source(source)?;
    let mut report = ScheduleReport {
        source: config.name.clone(),
        repository: config.repository.clone(),
        timezone: config.timezone.clone(),
        now,
        entries: Vec::with_capacity(entries.len()),
        jobs: Vec::new(),
    };
    for entry in entries {
        let last_planned = engine.catalog.last_planned(source, &entry.key).await?;
        report.entries.push(EntryReport {
            entry,
            last_planned,
        });
    }
    for status in [JobStatus::Running, JobStatus::Queued] {
        report.jobs.extend(
            engine
                .catalog
                .list_jobs(&JobFilter {
                    source: Some(source.to_owned()),
                    status: Some(status),
                    limit: None,
                })
                .await?,
        );
    }
    report
        .jobs
        .sort_by(|a, b| a.due_at.cmp(&b.due_at).then(a.id.cmp(&b.id)));
    Ok(report)
}

/// `backupctl jobs`: jobs matching the filter, newest first. A `source` that is neither
/// configured nor has jobs is most likely a typo: that is an error naming the configured
/// sources, rather than an empty list.
pub async fn list_jobs(engine: &Engine, filter: &JobFilter) -> Result<Vec<JobRecord>> {
    if let Some(source) = &filter.source {
        if let Err(unknown) = engine.config.source(source) {
            if !source_has_jobs(engine, source).await? {
                return Err(unknown.into());
            }
        }
    }
    Ok(engine.catalog.list_jobs(filter).await?)
}

async fn source_has_jobs(engine: &Engine, source: &str) -> Result<bool> {
    Ok(!engine
        .catalog
        .list_jobs(&JobFilter {
            source: Some(source.to_owned()),
            status: None,
            limit: Some(1),
        })
        .await?
        .is_empty())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use backup_catalog::{Catalog, JobOutcome};
    use backup_scheduler::parse_timezone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn config_text(catalog_url: &str, scheduler: &str) -> String {
        format!(
            r#"
[catalog]
url = "{catalog_url}"
[encryption]
key-file = "var/keys/repo.key"
{scheduler}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[source]]
name = "db"
kind = "files"
paths = ["./data"]
repository = "region-a"
timezone = "Europe/Rome"
schedule = [{{ cron = "*/10 * * * *" }}, {{ cron = "0 * * * *", tag = "hourly" }}]
[[source]]
name = "uploads"
kind = "files"
paths = ["./uploads"]
repository = "region-a"
schedule = [{{ cron = "5 * * * *" }}]
[[source]]
name = "manual-only"
kind = "files"
paths = ["./manual"]
repository = "region-a"
"#
        )
    }

    fn config(scheduler: &str) -> Config {
        Config::parse(
            &config_text("sqlite://var/catalog.db", scheduler),
            "test.toml",
        )
        .unwrap()
    }

    #[test]
    fn scheduler_section_defaults_and_overrides() {
        let c = config("");
        assert_eq!(c.scheduler, SchedulerConfig::default());
        assert_eq!(c.scheduler.jitter, Duration::ZERO);
        assert_eq!(c.scheduler.max_attempts, 3);
        assert_eq!(c.scheduler.retry_base, Duration::from_secs(30));
        assert_eq!(c.scheduler.retry_max, Duration::from_secs(1800));
        assert_eq!(c.scheduler.lease, Duration::from_secs(60));
        assert_eq!(c.scheduler.tick, Duration::from_secs(5));
        assert_eq!(
            c.scheduler.claim_limits(),
            ClaimLimits {
                max_running_per_source: 1,
                max_running_per_repository: 2
            }
        );
        let c = config(
            "[scheduler]\njitter = \"90s\"\nmax-attempts = 5\nretry-base = \"1m\"\n\
             retry-max = \"2h\"\nlease = \"5m\"\ntick = \"10s\"\n\
             max-running-per-repository = 4\nmax-running-per-source = 2\n",
        );
        assert_eq!(
            c.scheduler,
            SchedulerConfig {
                jitter: Duration::from_secs(90),
                max_attempts: 5,
                retry_base: Duration::from_secs(60),
                retry_max: Duration::from_secs(7200),
                lease: Duration::from_secs(300),
                tick: Duration::from_secs(10),
                max_running_per_repository: 4,
                max_running_per_source: 2,
            }
        );
    }

    #[test]
    fn bad_scheduler_values_name_the_key() {
        let cases = [
            ("bogus = 1", "bogus"),
            ("max-attempts = 0", "scheduler.max-attempts"),
            ("retry-base = \"0s\"", "scheduler.retry-base"),
            (
                "retry-base = \"1h\"\nretry-max = \"1m\"",
                "scheduler.retry-max",
            ),
            ("tick = \"0s\"", "scheduler.tick"),
            ("lease = \"5s\"", "scheduler.lease"),
            ("jitter = \"2days\"", "scheduler.jitter"),
            (
                "max-running-per-source = 0",
                "scheduler.max-running-per-source",
            ),
            (
                "max-running-per-repository = 0",
                "scheduler.max-running-per-repository",
            ),
            ("lease = \"soon\"", "lease"),
        ];
        for (body, key) in cases {
            let text = config_text("sqlite://var/catalog.db", &format!("[scheduler]\n{body}\n"));
            let err = Config::parse(&text, "bad.toml").unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("bad.toml"),
                "{body}: {err}"
            );
        }
    }

    #[test]
    fn retries_back_off_until_the_last_attempt() {
        let s = SchedulerConfig::default();
        let now = utc("2026-01-01T00:00:00Z");
        let mut job = JobRecord {
            id: JobId::new(),
            source: "db".into(),
            repository: "region-a".into(),
            kind: JobKind::Backup,
            backup_type: "full".into(),
            tag: None,
            scheduled_for: Some(now),
            due_at: now,
            status: JobStatus::Running,
            attempts: 0,
            max_attempts: 3,
            next_attempt_at: now,
            lease_owner: Some("a".into()),
            lease_expires_at: Some(now),
            takeovers: 0,
            backup_id: None,
            error: None,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            finished_at: None,
        };
        let first = s.retry_at(&job, now).expect("two attempts left") - now;
        assert!(
            first >= TimeDelta::seconds(15) && first <= TimeDelta::seconds(30),
            "{first}"
        );
        job.attempts = 1;
        let second = s.retry_at(&job, now).expect("one attempt left") - now;
        assert!(
            second >= TimeDelta::seconds(30) && second <= TimeDelta::seconds(60),
            "{second}"
        );
        job.attempts = 2;
        assert_eq!(
            s.retry_at(&job, now),
            None,
            "the third attempt was the last"
        );
    }

    #[test]
    fn upcoming_runs_show_utc_and_local_times() {
        let c = config("");
        let now = utc("2026-03-29T00:52:00Z"); // Rome switches to summer time at 01:00Z.
        let runs = upcoming_runs(&c, "db", now, 3).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].cron, "*/10 * * * *");
        assert_eq!(runs[0].timezone, "Europe/Rome");
        assert_eq!(runs[0].key, "0|*/10 * * * *|Europe/Rome");
        let utcs: Vec<_> = runs[0].next_runs.iter().map(|r| r.utc).collect();
        assert_eq!(
            utcs,
            vec![
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:10:00Z"),
                utc("2026-03-29T01:20:00Z")
            ]
        );
        assert_eq!(
            runs[0].next_runs[0].local.to_rfc3339(),
            "2026-03-29T03:00:00+02:00"
        );
        assert_eq!(runs[1].tag.as_deref(), Some("hourly"));
        assert_eq!(runs[1].next_runs[0].utc, utc("2026-03-29T01:00:00Z"));
        assert!(upcoming_runs(&c, "manual-only", now, 3).unwrap().is_empty());
        let err = upcoming_runs(&c, "nope", now, 3).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("db"), "{err}");
    }

    /// Three replicas share one catalog and tick at the same instants for 12 hours, with a
    /// 3-hour outage of all of them: every slot outside the outage is planned exactly once,
    /// the missed slots of each entry cause exactly one catch-up job, and jitter delays each
    /// job by less than its maximum.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_plan_each_slot_once_and_catch_up_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/catalog.db", dir.path().display());
        let config = Config::parse(
            &config_text(&url, "[scheduler]\njitter = \"2m\"\n"),
            "replicas.toml",
        )
        .unwrap();
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(Engine {
                config: config.clone(),
                catalog: Catalog::connect(&url).await.unwrap(),
            });
        }
        let start = utc("2026-03-28T20:03:17Z"); // spans Rome's change to summer time
        let end = start + TimeDelta::hours(12);
        let outage = (start + TimeDelta::hours(4), start + TimeDelta::hours(7));
        let tick = TimeDelta::seconds(97);
        let mut last_tick_before_outage = start;
        let mut first_tick_after_outage = None;
        let mut now = start;
        let mut planned_by_tick: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
        while now <= end {
            if now < outage.0 || now >= outage.1 {
                if now < outage.0 {
                    last_tick_before_outage = now;
                } else {
                    first_tick_after_outage.get_or_insert(now);
                }
                let (a, b, c) = tokio::join!(
                    plan_due_jobs(&replicas[0], now),
                    plan_due_jobs(&replicas[1], now),
                    plan_due_jobs(&replicas[2], now)
                );
                let n = a.unwrap().len() + b.unwrap().len() + c.unwrap().len();
                if n > 0 {
                    planned_by_tick.insert(now, n);
                }
            }
            now += tick;
        }
        let last_tick = now - tick;
        let after = first_tick_after_outage.unwrap();
        let catalog = &replicas[0].catalog;

        for source in &config.sources {
            let jobs = catalog
                .list_jobs(&JobFilter {
                    source: Some(source.name.clone()),
                    ..JobFilter::default()
                })
                .await
                .unwrap();
            // slot -> tag of the job expected for it (entries sharing a slot share a job,
            // tagged like the last tagged entry).
            let mut expected: BTreeMap<DateTime<Utc>, Option<String>> = BTreeMap::new();
            for (index, (entry, schedule)) in
                source.schedule.iter().zip(&source.schedules).enumerate()
            {
                let mut all = Vec::new();
                let mut t = start;
                while let Some(next) = schedule.next_after(t).filter(|n| *n <= last_tick) {
                    all.push(next);
                    t = next;
                }
                let missed: Vec<_> = all
                    .iter()
                    .copied()
                    .filter(|t| *t > last_tick_before_outage && *t <= after)
                    .collect();
                assert!(missed.len() > 1, "the outage misses slots of {schedule:?}");
                let mut slots: Vec<_> = all
                    .iter()
                    .copied()
                    .filter(|t| !missed.contains(t))
                    .collect();
                slots.extend(missed.last().copied()); // the one catch-up run
                slots.sort();
                assert_eq!(
                    catalog
                        .last_planned(&source.name, &schedule_key(index, schedule))
                        .await
                        .unwrap(),
                    slots.last().copied()
                );
                for slot in slots {
                    let tag = expected.entry(slot).or_default();
                    if entry.tag.is_some() {
                        tag.clone_from(&entry.tag);
                    }
                }
            }
            let got: BTreeMap<DateTime<Utc>, Option<String>> = jobs
                .iter()
                .map(|j| (j.scheduled_for.expect("scheduled"), j.tag.clone()))
                .collect();
            assert_eq!(got.len(), jobs.len(), "{}: one job per slot", source.name);
            assert_eq!(got, expected, "{}", source.name);
            if source.name == "db" {
                assert!(got.values().any(|t| t.as_deref() == Some("hourly")));
            }
            for j in &jobs {
                let slot = j.scheduled_for.unwrap();
                let delay = j.due_at - slot;
                assert!(
                    delay >= TimeDelta::zero() && delay < TimeDelta::minutes(2),
                    "jitter {delay} of {slot}"
                );
                let jittered = jitter(&source.name, slot, Duration::from_secs(120));
                assert_eq!(delay, TimeDelta::from_std(jittered).unwrap());
                assert_eq!(j.repository, "region-a");
                assert_eq!(j.backup_type, "full");
                assert_eq!(j.max_attempts, 3);
                assert_eq!(j.status, JobStatus::Queued);
            }
        }
        // Each entry's catch-up happened at the first tick after the outage.
        assert!(planned_by_tick.contains_key(&after));
        // Nothing was planned at the first start (schedules are new then).
        assert!(!planned_by_tick.contains_key(&start));
    }

    #[tokio::test]
    async fn schedule_report_lists_entries_and_active_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/catalog.db", dir.path().display());
        let config = Config::parse(&config_text(&url, ""), "report.toml").unwrap();
        let engine = Engine {
            config,
            catalog: Catalog::connect(&url).await.unwrap(),
        };
        let t0 = utc("2026-06-01T10:01:00Z");
        let report = schedule_report(&engine, "db", t0, 2).await.unwrap();
        assert_eq!(report.entries.len(), 2);
        assert!(report.entries.iter().all(|e| e.last_planned.is_none()));
        assert!(report.jobs.is_empty());

        assert!(plan_due_jobs(&engine, t0).await.unwrap().is_empty());
        let planned = plan_due_jobs(&engine, t0 + TimeDelta::minutes(60))
            .await
            .unwrap();
        assert_eq!(
            planned.len(),
            2,
            "db's */10 and hourly entries share 11:00; uploads 10:05"
        );
        let mut claimed = Vec::new();
        for _ in 0..2 {
            claimed.push(
                engine
                    .catalog
                    .claim_job(
                        "replica-a",
                        t0 + TimeDelta::minutes(61),
                        Duration::from_secs(60),
                        &engine.config.scheduler.claim_limits(),
                    )
                    .await
                    .unwrap()
                    .expect("both jobs are due"),
            );
        }
        assert_eq!(claimed[0].source, "uploads", "oldest slot first");
        let claimed = claimed.pop().unwrap();
        assert_eq!(claimed.source, "db");
        assert_eq!(claimed.scheduled_for, Some(utc("2026-06-01T11:00:00Z")));
        assert_eq!(claimed.tag.as_deref(), Some("hourly"));
        let report = schedule_report(&engine, "db", t0 + TimeDelta::minutes(61), 2)
            .await
            .unwrap();
        assert_eq!(
            report.entries[0].last_planned,
            Some(utc("2026-06-01T11:00:00Z"))
        );
        assert_eq!(
            report.entries[1].last_planned,
            Some(utc("2026-06-01T11:00:00Z"))
        );
        assert_eq!(report.jobs.len(), 1, "the 11:00 slot is one job");
        assert_eq!(report.jobs[0].id, claimed.id);
        assert_eq!(report.jobs[0].status, JobStatus::Running);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["entries"][1]["tag"], "hourly");
        assert_eq!(json["entries"][1]["type"], "full");
        assert!(json["entries"][0]["next_runs"][0]["local"]
            .as_str()
            .unwrap()
            .ends_with("+02:00"));

        engine
            .catalog
            .finish_job(
                claimed.id,
                "replica-a",
                t0 + TimeDelta::minutes(62),
                &JobOutcome::Succeeded { backup_id: None },
            )
            .await
            .unwrap();
        let report = schedule_report(&engine, "db", t0 + TimeDelta::minutes(62), 2)
            .await
            .unwrap();
        assert!(report.jobs.is_empty(), "finished jobs are not shown");

        let listed = list_jobs(
            &engine,
            &JobFilter {
                source: Some("db".into()),
                ..JobFilter::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(listed.len(), 1);
        let err = list_jobs(
            &engine,
            &JobFilter {
                source: Some("dbb".into()),
                ..JobFilter::default()
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("dbb"), "{err}");
        let _ = parse_timezone("UTC").unwrap();
    }
}
