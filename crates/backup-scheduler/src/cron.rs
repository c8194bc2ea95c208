//! Cron expressions evaluated in a time zone (DST-aware), standard 5-field
//! syntax: minute hour day-of-month month day-of-week (0-7, Sunday = 0 or 7,
//! names like SAT), plus `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {reason} (expected 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 */6 * * *\")")]
    InvalidCron { expr: String, reason: String },
    #[error("unknown time zone {0:?} (use an IANA name such as \"UTC\" or \"Europe/Rome\")")]
    UnknownTimezone(String),
}

pub fn parse_timezone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimezone(name.to_owned()))
}

#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?} in {})", self.expr, self.tz)
    }
}

impl CronSchedule {
    pub fn parse(expr: &str, tz: Tz) -> Result<Self, ScheduleError> {
        let trimmed = expr.trim();
        let expanded = match trimmed {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other => other,
        };
        let fields = expanded.split_whitespace().count();
        if fields != 5 {
            return Err(ScheduleError::InvalidCron {
                expr: expr.to_owned(),
                reason: format!("it has {fields} fields"),
            });
        }
        let cron = Cron::from_str(expanded).map_err(|e| ScheduleError::InvalidCron {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            expr: trimmed.to_owned(),
            cron,
            tz,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first run strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The latest run at or before `at`.
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = at.with_timezone(&self.tz);
        self.cron
            .find_previous_occurrence(&local, true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` runs after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_six_hours_and_saturday_weekly() {
        let s = CronSchedule::parse("0 */6 * * *", Tz::UTC).unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-23T05:59:00Z")),
            Some(utc("2026-11-23T06:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-23T06:00:00Z")),
            Some(utc("2026-11-23T12:00:00Z"))
        );
        let w = CronSchedule::parse("0 3 * * SAT", Tz::UTC).unwrap();
        // 2026-11-23 is a Monday.
        assert_eq!(
            w.next_after(utc("2026-11-23T00:00:00Z")),
            Some(utc("2026-11-28T03:00:00Z"))
        );
        let n = CronSchedule::parse("0 3 * * 6", Tz::UTC).unwrap();
        assert_eq!(
            n.next_after(utc("2026-11-23T00:00:00Z")),
            Some(utc("2026-11-28T03:00:00Z"))
        );
        let sunday = CronSchedule::parse("0 3 * * 0", Tz::UTC).unwrap();
        assert_eq!(
            sunday.next_after(utc("2026-11-23T00:00:00Z")),
            Some(utc("2026-11-29T03:00:00Z"))
        );
    }

    #[test]
    fn daylight_saving_time_in_rome() {
        let rome: Tz = parse_timezone("Europe/Rome").unwrap();
        let daily = CronSchedule::parse("30 2 * * *", rome).unwrap();
        // 2026-03-29 02:30 does not exist in Rome (clocks jump 02:00 -> 03:00): no double or lost day.
        let runs = daily.upcoming(utc("2026-03-27T12:00:00Z"), 4);
        let local: Vec<_> = runs
            .iter()
            .map(|t| t.with_timezone(&rome).date_naive())
            .collect();
        let mut days = local.clone();
        days.dedup();
        assert_eq!(days.len(), local.len(), "one run per day: {runs:?}");
        // Autumn: 2026-10-25 02:30 happens twice; it must run once.
        let runs = daily.upcoming(utc("2026-10-24T12:00:00Z"), 3);
        assert_eq!(runs.len(), 3);
        assert!(runs[1] - runs[0] >= chrono::Duration::hours(23), "{runs:?}");
        // Winter offset is +01:00.
        assert_eq!(
            daily.next_after(utc("2026-12-01T00:00:00Z")).unwrap(),
            rome.with_ymd_and_hms(2026, 12, 1, 2, 30, 0)
                .unwrap()
                .with_timezone(&Utc)
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert!(matches!(
            CronSchedule::parse("0 */6 * *", Tz::UTC),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            CronSchedule::parse("61 * * * *", Tz::UTC),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(CronSchedule::parse("@daily", Tz::UTC).is_ok());
        assert_eq!(
            parse_timezone("Mars/Olympus"),
            Err(ScheduleError::UnknownTimezone("Mars/Olympus".into()))
        );
    }
}
