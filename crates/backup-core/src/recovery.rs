//! The RPO/RTO report (`backupctl report recovery`): for each source, how old its newest
//! restorable point is against its recovery point objective, what the last restore drill
//! measured against its recovery time objective, and a verdict. Pure: the caller finds the
//! newest restorable point (for PostgreSQL, the end of the continuous archived WAL) and the
//! last drill.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The newest point a source can be restored to, and what provides it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    pub at: DateTime<Utc>,
    /// e.g. "backup 0193…" or "WAL 000000010000000000000042 after backup 0193…".
    pub from: String,
}

/// A finished restore drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrillResult {
    pub finished_at: DateTime<Utc>,
    /// Measured time to restore (the drill's RTO).
    #[serde(with = "secs")]
    pub rto: Duration,
    pub succeeded: bool,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryInputs {
    pub source: String,
    pub kind: String,
    pub tier: Option<String>,
    pub target_rpo: Option<Duration>,
    pub target_rto: Option<Duration>,
    pub newest_point: Option<RestorePoint>,
    pub last_drill: Option<DrillResult>,
}

/// Worst first: the verdict of a source is the first that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Nothing can be restored.
    NoRestorablePoint,
    /// The newest restorable point is older than the RPO.
    RpoBreached,
    /// The last drill failed to restore.
    DrillFailed,
    /// The last drill took longer than the RTO.
    RtoBreached,
    /// RPO met, but no drill ever measured the RTO: the RTO is a promise, not a fact.
    Untested,
    /// RPO met and the last drill restored within the RTO.
    Ok,
    /// The source has no tier, rpo or rto: nothing to judge against.
    NoTargets,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NoRestorablePoint => "no-restorable-point",
            Verdict::RpoBreached => "rpo-breached",
            Verdict::DrillFailed => "drill-failed",
            Verdict::RtoBreached => "rto-breached",
            Verdict::Untested => "untested",
            Verdict::Ok => "ok",
            Verdict::NoTargets => "no-targets",
        }
    }

    /// A breach `backupctl report recovery` exits 1 for (`untested` and `no-targets` are
    /// not: they say what is unknown, and alerting on them is a policy choice).
    pub fn is_breach(self) -> bool {
        matches!(
            self,
            Verdict::NoRestorablePoint
                | Verdict::RpoBreached
                | Verdict::DrillFailed
                | Verdict::RtoBreached
        )
    }

    pub const ALL: [Verdict; 7] = [
        Verdict::NoRestorablePoint,
        Verdict::RpoBreached,
        Verdict::DrillFailed,
        Verdict::RtoBreached,
        Verdict::Untested,
        Verdict::Ok,
        Verdict::NoTargets,
    ];
}

/// The text shown for the RTO when no drill has run.
pub const NO_DRILL_YET: &str = "no drill yet";

/// One row of the report. Times in seconds so JSON, CSV and metrics agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecoveryRow {
    pub source: String,
    pub kind: String,
    pub tier: Option<String>,
    pub target_rpo_seconds: Option<u64>,
    pub target_rto_seconds: Option<u64>,
    /// The newest restorable point (`None`: nothing restorable).
    pub restorable_point: Option<DateTime<Utc>>,
    pub restorable_from: Option<String>,
    /// Age of the restorable point now: what a disaster now would lose.
    pub achieved_rpo_seconds: Option<u64>,
    pub last_drill_at: Option<DateTime<Utc>>,
    pub last_drill_rto_seconds: Option<u64>,
    /// "measured", "failed", or [`NO_DRILL_YET`].
    pub rto_status: String,
    pub verdict: Verdict,
    /// Why, in words, one line per finding.
    pub reasons: Vec<String>,
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

pub fn recovery_row(i: &RecoveryInputs, now: DateTime<Utc>) -> RecoveryRow {
    let achieved = i
        .newest_point
        .as_ref()
        .map(|p| (now - p.at).to_std().unwrap_or(Duration::ZERO));
    let mut reasons = Vec::new();
    let mut verdicts = Vec::new();
    match (achieved, i.target_rpo) {
        (None, _) => {
            verdicts.push(Verdict::NoRestorablePoint);
            reasons.push("no complete backup: nothing can be restored".to_owned());
        }
        (Some(age), Some(rpo)) if age > rpo => {
            verdicts.push(Verdict::RpoBreached);
            reasons.push(format!(
                "newest restorable point is {} old, over the RPO of {}",
                human(age),
                human(rpo)
            ));
        }
        (Some(age), Some(rpo)) => reasons.push(format!(
            "newest restorable point is {} old, within the RPO of {}",
            human(age),
            human(rpo)
        )),
        (Some(_), None) => {}
    }
    let rto_status = match &i.last_drill {
        None => {
            if i.target_rto.is_some() {
                verdicts.push(Verdict::Untested);
                reasons.push(format!(
                    "{NO_DRILL_YET}: the RTO has never been measured by a restore"
                ));
            }
            NO_DRILL_YET.to_owned()
        }
        Some(d) if !d.succeeded => {
            verdicts.push(Verdict::DrillFailed);
            reasons.push(format!("the last drill ({}) failed", d.finished_at));
            "failed".to_owned()
        }
        Some(d) => {
            if let Some(rto) = i.target_rto {
                if d.rto > rto {
                    verdicts.push(Verdict::RtoBreached);
                    reasons.push(format!(
                        "the last drill took {}, over the RTO of {}",
                        human(d.rto),
                        human(rto)
                    ));
                } else {
                    reasons.push(format!(
                        "the last drill took {}, within the RTO of {}",
                        human(d.rto),
                        human(rto)
                    ));
                }
            }
            "measured".to_owned()
        }
    };
    let has_targets = i.target_rpo.is_some() || i.target_rto.is_some();
    let verdict = if !has_targets {
        if achieved.is_none() {
            Verdict::NoRestorablePoint
        } else {
            reasons.push("no tier, rpo or rto configured".to_owned());
            Verdict::NoTargets
        }
    } else {
        verdicts.into_iter().min().unwrap_or(Verdict::Ok)
    };
    RecoveryRow {
        source: i.source.clone(),
        kind: i.kind.clone(),
        tier: i.tier.clone(),
        target_rpo_seconds: i.target_rpo.map(|d| d.as_secs()),
        target_rto_seconds: i.target_rto.map(|d| d.as_secs()),
        restorable_point: i.newest_point.as_ref().map(|p| p.at),
        restorable_from: i.newest_point.as_ref().map(|p| p.from.clone()),
        achieved_rpo_seconds: achieved.map(|d| d.as_secs()),
        last_drill_at: i.last_drill.as_ref().map(|d| d.finished_at),
        last_drill_rto_seconds: i.last_drill.as_ref().map(|d| d.rto.as_secs()),
        rto_status,
        verdict,
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn inputs(point: Option<&str>, drill: Option<(u64, bool)>) -> RecoveryInputs {
        RecoveryInputs {
            source: "pg".into(),
            kind: "postgres".into(),
            tier: Some("premium".into()),
            target_rpo: Some(Duration::from_secs(15 * 60)),
            target_rto: Some(Duration::from_secs(3600)),
            newest_point: point.map(|p| RestorePoint {
                at: t(p),
                from: "backup x".into(),
            }),
            last_drill: drill.map(|(secs, ok)| DrillResult {
                finished_at: t("2026-11-30T00:00:00Z"),
                rto: Duration::from_secs(secs),
                succeeded: ok,
            }),
        }
    }

    #[test]
    fn verdicts() {
        let now = t("2026-12-01T12:00:00Z");
        let v = |p, d| recovery_row(&inputs(p, d), now).verdict;
        assert_eq!(v(None, None), Verdict::NoRestorablePoint);
        assert_eq!(v(Some("2026-12-01T11:00:00Z"), None), Verdict::RpoBreached);
        assert_eq!(v(Some("2026-12-01T11:50:00Z"), None), Verdict::Untested);
        assert_eq!(
            v(Some("2026-12-01T11:50:00Z"), Some((600, true))),
            Verdict::Ok
        );
        assert_eq!(
            v(Some("2026-12-01T11:50:00Z"), Some((7200, true))),
            Verdict::RtoBreached
        );
        assert_eq!(
            v(Some("2026-12-01T11:50:00Z"), Some((60, false))),
            Verdict::DrillFailed
        );
        // The worst finding wins.
        assert_eq!(
            v(Some("2026-12-01T10:00:00Z"), Some((7200, true))),
            Verdict::RpoBreached
        );
        let row = recovery_row(&inputs(Some("2026-12-01T11:50:00Z"), None), now);
        assert_eq!(row.achieved_rpo_seconds, Some(600));
        assert_eq!(row.rto_status, NO_DRILL_YET);
        assert!(
            row.reasons.iter().any(|r| r.contains(NO_DRILL_YET)),
            "{row:?}"
        );
        assert!(!row.verdict.is_breach());

        let mut none = inputs(Some("2026-12-01T11:50:00Z"), None);
        none.target_rpo = None;
        none.target_rto = None;
        assert_eq!(recovery_row(&none, now).verdict, Verdict::NoTargets);
    }
}
