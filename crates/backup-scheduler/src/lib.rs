//! Scheduling for backupd: when jobs are due. Pure functions over explicit
//! times (no clock reads), so tests drive time; the runner lives in backupd.

pub mod cron;

pub use cron::{parse_timezone, CronSchedule, ScheduleError};
