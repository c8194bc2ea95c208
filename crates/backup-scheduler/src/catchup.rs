//! Which cron slot is due now, given the last one planned.
//!
//! A scheduler ticks every few seconds and asks [`catch_up`] for the slot to plan. After
//! downtime many slots may have passed; only the latest runs (a backup taken now covers them
//! all), so a restart never starts a burst of backups.

use chrono::{DateTime, TimeDelta, Utc};

use crate::cron::CronSchedule;

/// How far before `now` the search for the latest slot starts when `last_planned` is older:
/// enough to hold any slot `CronSchedule::last_at_or_before` reports, bounded so a long
/// outage costs at most a day of minutely slots.
const LOOKBACK: TimeDelta = TimeDelta::days(1);

/// The latest slot of `schedule` in `(last_planned, now]`: the one run to plan now, however
/// many slots were missed. `None` when no slot is due, and when `last_planned` is `None`
/// (a schedule seen for the first time has nothing due; callers record `now` as its
/// `last_planned` and plan from there).
///
/// Slots are those [`CronSchedule::next_after`] yields from `last_planned` (so daylight
/// saving gaps and repeated hours behave as in [`CronSchedule::upcoming`]): planning the
/// returned slot and asking again with it as `last_planned` never returns it twice.
pub fn catch_up(
    schedule: &CronSchedule,
    last_planned: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let last_planned = last_planned?;
    let first = schedule.next_after(last_planned)?;
    if first > now {
        return None;
    }
    // Skip most of a long outage: start from a slot shortly before `now` when that is later.
    let mut slot = first;
    if let Some(recent) = now
        .checked_sub_signed(LOOKBACK)
        .and_then(|t| schedule.last_at_or_before(t))
        .filter(|recent| *recent > first)
    {
        slot = recent;
    }
    while let Some(next) = schedule.next_after(slot).filter(|next| *next <= now) {
        slot = next;
    }
    Some(slot)
}

#[cfg(test)]
mod tests {
    use chrono_tz::Tz;
    use proptest::prelude::*;

    use super::*;
    use crate::cron::parse_timezone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn every_six_hours() -> CronSchedule {
        CronSchedule::parse("0 */6 * * *", Tz::UTC).unwrap()
    }

    #[test]
    fn nothing_is_due_before_the_first_plan_or_before_the_next_slot() {
        let s = every_six_hours();
        assert_eq!(catch_up(&s, None, utc("2026-01-01T12:00:00Z")), None);
        assert_eq!(
            catch_up(
                &s,
                Some(utc("2026-01-01T06:00:00Z")),
                utc("2026-01-01T11:59:59Z")
            ),
            None
        );
        // The slot is due exactly at its time, and only once.
        assert_eq!(
            catch_up(
                &s,
                Some(utc("2026-01-01T06:00:00Z")),
                utc("2026-01-01T12:00:00Z")
            ),
            Some(utc("2026-01-01T12:00:00Z"))
        );
        assert_eq!(
            catch_up(
                &s,
                Some(utc("2026-01-01T12:00:00Z")),
                utc("2026-01-01T12:00:00Z")
            ),
            None
        );
    }

    #[test]
    fn a_long_outage_runs_only_the_latest_missed_slot() {
        let s = every_six_hours();
        // Down from Jan 1 07:00 to Jan 9 13:05: 33 slots missed, one run.
        assert_eq!(
            catch_up(
                &s,
                Some(utc("2026-01-01T06:00:00Z")),
                utc("2026-01-09T13:05:00Z")
            ),
            Some(utc("2026-01-09T12:00:00Z"))
        );
        let minutely = CronSchedule::parse("* * * * *", Tz::UTC).unwrap();
        assert_eq!(
            catch_up(
                &minutely,
                Some(utc("2025-01-01T00:00:00Z")),
                utc("2026-01-01T00:00:30Z")
            ),
            Some(utc("2026-01-01T00:00:00Z"))
        );
        // A yearly schedule (slots further apart than the lookback).
        let yearly = CronSchedule::parse("@yearly", Tz::UTC).unwrap();
        assert_eq!(
            catch_up(
                &yearly,
                Some(utc("2020-01-01T00:00:00Z")),
                utc("2026-06-01T00:00:00Z")
            ),
            Some(utc("2026-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn repeated_autumn_hour_runs_once() {
        let rome = parse_timezone("Europe/Rome").unwrap();
        let daily = CronSchedule::parse("30 2 * * *", rome).unwrap();
        let mut last = utc("2026-10-24T12:00:00Z");
        let mut planned = Vec::new();
        let mut now = last;
        while now < utc("2026-10-27T00:00:00Z") {
            now += TimeDelta::seconds(37);
            if let Some(slot) = catch_up(&daily, Some(last), now) {
                planned.push(slot);
                last = slot;
            }
        }
        assert_eq!(planned, daily.upcoming(utc("2026-10-24T12:00:00Z"), 2));
    }

    // ---- properties --------------------------------------------------------------------

    /// Random 5-field cron expressions: steps, lists, ranges and fixed values.
    fn cron_expr() -> impl Strategy<Value = String> {
        let minute = prop_oneof![
            Just("*".to_owned()),
            (1u32..=30).prop_map(|k| format!("*/{k}")),
            (0u32..60).prop_map(|m| m.to_string()),
            (0u32..60, 0u32..60).prop_map(|(a, b)| format!("{},{}", a.min(b), a.max(b))),
        ];
        let hour = prop_oneof![
            Just("*".to_owned()),
            (1u32..=12).prop_map(|k| format!("*/{k}")),
            (0u32..24).prop_map(|h| h.to_string()),
            (0u32..24, 0u32..24).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        ];
        let dom = prop_oneof![
            4 => Just("*".to_owned()),
            1 => (1u32..=28).prop_map(|d| d.to_string()),
        ];
        let dow = prop_oneof![
            4 => Just("*".to_owned()),
            1 => Just("1-5".to_owned()),
            1 => (0u32..7).prop_map(|d| d.to_string()),
        ];
        (minute, hour, dom, dow).prop_map(|(m, h, d, w)| format!("{m} {h} {d} * {w}"))
    }

    fn timezone() -> impl Strategy<Value = Tz> {
        prop_oneof![
            Just(Tz::UTC),
            Just(chrono_tz::Europe::Rome),
            Just(chrono_tz::America::New_York),
            Just(chrono_tz::Australia::Lord_Howe),
            Just(chrono_tz::Asia::Kolkata),
        ]
    }

    /// A UTC time in 2024-2027 (includes DST changes), whole seconds.
    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (1_704_067_200i64..1_830_297_600).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap())
    }

    /// The slots in `(from, to]` by walking `next_after` (the definition catch_up must match).
    fn slots_between(
        s: &CronSchedule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = from;
        while let Some(next) = s.next_after(t).filter(|n| *n <= to) {
            out.push(next);
            t = next;
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// catch_up is the last slot `next_after` walks to within (last_planned, now].
        #[test]
        fn catch_up_is_the_latest_slot_in_the_window(
            expr in cron_expr(),
            tz in timezone(),
            start in instant(),
            window_minutes in 0i64..(4 * 24 * 60),
        ) {
            let s = CronSchedule::parse(&expr, tz).unwrap();
            let now = start + TimeDelta::minutes(window_minutes);
            let expected = slots_between(&s, start, now).last().copied();
            prop_assert_eq!(catch_up(&s, Some(start), now), expected, "{:?}", s);
            prop_assert_eq!(catch_up(&s, None, now), None);
        }

        /// A day of ticks every 37 s with a 3-hour outage: every slot outside the outage is
        /// planned exactly once, at the first tick after it; the slots missed during the
        /// outage cause exactly one run, of the latest of them, at the first tick after it.
        #[test]
        fn a_day_of_ticks_with_an_outage(
            expr in cron_expr(),
            tz in timezone(),
            start in instant(),
            outage_start_secs in 3600i64..(20 * 3600),
        ) {
            let s = CronSchedule::parse(&expr, tz).unwrap();
            let tick = TimeDelta::seconds(37);
            let end = start + TimeDelta::days(1);
            let outage = (
                start + TimeDelta::seconds(outage_start_secs),
                start + TimeDelta::seconds(outage_start_secs) + TimeDelta::hours(3),
            );
            let mut last_planned = None;
            let mut planned: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new(); // (tick, slot)
            let mut last_tick_before_outage = start;
            let mut first_tick_after_outage = None;
            let mut now = start;
            while now <= end {
                let down = now >= outage.0 && now < outage.1;
                if !down {
                    if now < outage.0 {
                        last_tick_before_outage = now;
                    } else if first_tick_after_outage.is_none() {
                        first_tick_after_outage = Some(now);
                    }
                    match last_planned {
                        // First start: nothing due, remember now.
                        None => last_planned = Some(now),
                        Some(_) => {
                            if let Some(slot) = catch_up(&s, last_planned, now) {
                                prop_assert!(Some(slot) > last_planned);
                                prop_assert!(slot <= now);
                                planned.push((now, slot));
                                last_planned = Some(slot);
                            }
                        }
                    }
                }
                now += tick;
            }
            let last_tick = now - tick;
            let after = first_tick_after_outage.expect("the day outlasts the outage");
            let all = slots_between(&s, start, last_tick);
            let missed: Vec<_> = all
                .iter()
                .copied()
                .filter(|t| *t > last_tick_before_outage && *t <= after)
                .collect();
            let mut expected: Vec<DateTime<Utc>> = all
                .iter()
                .copied()
                .filter(|t| !missed.contains(t))
                .collect();
            if let Some(latest) = missed.last() {
                expected.push(*latest);
                expected.sort();
            }
            let slots: Vec<_> = planned.iter().map(|(_, slot)| *slot).collect();
            prop_assert_eq!(&slots, &expected, "{:?}, outage {:?}", s, outage);
            for (at, slot) in &planned {
                if missed.contains(slot) {
                    prop_assert_eq!(*at, after, "the catch-up runs at the first tick after the outage");
                } else {
                    prop_assert!(*at - *slot < tick, "slot {} planned late, at {}", slot, at);
                }
            }
            let catch_up_runs = planned.iter().filter(|(at, _)| *at == after).count();
            prop_assert_eq!(catch_up_runs, usize::from(!missed.is_empty()));
        }
    }
}
