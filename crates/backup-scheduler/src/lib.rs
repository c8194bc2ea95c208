//! Scheduling for backupd: when jobs are due. Pure functions over explicit
//! times (no clock reads), so tests drive time; the runner lives in backupd.

pub mod catchup;
pub mod cron;
pub mod delay;

pub use catchup::catch_up;
pub use chrono_tz::Tz;
pub use cron::{parse_timezone, CronSchedule, ScheduleError};
pub use delay::{backoff, jitter, seed};
