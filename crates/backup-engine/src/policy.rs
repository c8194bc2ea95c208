//! Per-source policy: when to back up (cron schedules in a time zone), what to
//! keep (GFS retention) and which recovery targets apply (tier or RPO/RTO).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `schedule = [...]` entry.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScheduleEntry {
    /// Standard 5-field cron, evaluated in the source's `timezone`.
    pub cron: String,
    #[serde(default, rename = "type")]
    pub backup_type: BackupType,
    /// A label recorded on backups this entry makes (e.g. "weekly"); copy rules can select on it.
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackupType {
    #[default]
    Full,
    Incr,
}

impl std::str::FromStr for BackupType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Self::Full),
            "incr" => Ok(Self::Incr),
            other => Err(format!("unknown backup type {other:?}: use full or incr")),
        }
    }
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incr => "incr",
        }
    }
}

/// `keep = { last = 4, hourly = 24, daily = 7, weekly = 4, monthly = 12, yearly = 3, within = "2d" }`:
/// defined next to the retention planner that applies it.
pub use backup_core::retention::KeepPolicy;

/// Service tiers of the seeds: standard RTO 4h / RPO 1h, premium 1h / 15m, enterprise 30m / 5m.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Standard,
    Premium,
    Enterprise,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct RecoveryTargets {
    #[serde(with = "humantime_serde")]
    pub rpo: Duration,
    #[serde(with = "humantime_serde")]
    pub rto: Duration,
}

impl Tier {
    pub fn targets(self) -> RecoveryTargets {
        let m = |minutes: u64| Duration::from_secs(minutes * 60);
        match self {
            Self::Standard => RecoveryTargets {
                rpo: m(60),
                rto: m(240),
            },
            Self::Premium => RecoveryTargets {
                rpo: m(15),
                rto: m(60),
            },
            Self::Enterprise => RecoveryTargets {
                rpo: m(5),
                rto: m(30),
            },
        }
    }
}

/// The 1-based line of the first occurrence of `needle` in `text`, for error messages.
pub(crate) fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.find(needle)
        .map(|at| text[..at].matches('\n').count() + 1)
}
