//! Waiting for RDS: poll a status until it is final, within a timeout, unless cancelled.
//!
//! The loop reads its clock and sleeps through `tokio::time`, and reads statuses through a
//! closure, so tests drive it with a fake status source on tokio's paused clock: a
//! 30-minute timeout passes in no real time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{RdsError, RdsResource};

/// How often RDS is asked how something is getting on, and how long to wait at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    pub poll_interval: Duration,
    pub timeout: Duration,
}

impl WaitPolicy {
    /// A snapshot's first copy is a full copy of the volume: hours for a large database.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

    pub fn new(poll_interval: Duration, timeout: Duration) -> WaitPolicy {
        WaitPolicy {
            poll_interval,
            timeout,
        }
    }

    pub(crate) fn check(&self) -> Result<(), RdsError> {
        if self.poll_interval.is_zero() || self.poll_interval > self.timeout {
            return Err(RdsError::Config {
                problem: format!(
                    "the poll interval ({}) must be above zero and at most the timeout ({})",
                    humantime::format_duration(self.poll_interval),
                    humantime::format_duration(self.timeout)
                ),
            });
        }
        Ok(())
    }
}

impl Default for WaitPolicy {
    fn default() -> Self {
        WaitPolicy::new(Self::DEFAULT_POLL_INTERVAL, Self::DEFAULT_TIMEOUT)
    }
}

/// Where a status stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    Done,
    Pending,
    Failed,
}

/// What is waited for: says which statuses are final and names it in errors.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Awaited<'a> {
    Snapshot {
        identifier: &'a str,
        region: &'a str,
    },
    Database {
        resource: &'a RdsResource,
        region: &'a str,
    },
}

impl Awaited<'_> {
    fn progress(&self, status: &str) -> Progress {
        match self {
            Awaited::Snapshot { .. } => snapshot_progress(status),
            Awaited::Database { .. } => database_progress(status),
        }
    }

    fn failed(&self, status: String) -> RdsError {
        match *self {
            Awaited::Snapshot { identifier, region } => RdsError::SnapshotFailed {
                snapshot: identifier.to_owned(),
                region: region.to_owned(),
                status,
            },
            Awaited::Database { resource, region } => RdsError::RestoreFailed {
                database: resource.clone(),
                region: region.to_owned(),
                status,
            },
        }
    }

    fn timed_out(&self, status: String, waited: Duration) -> RdsError {
        match *self {
            Awaited::Snapshot { identifier, region } => RdsError::SnapshotTimedOut {
                snapshot: identifier.to_owned(),
                region: region.to_owned(),
                status,
                waited,
            },
            Awaited::Database { resource, region } => RdsError::RestoreTimedOut {
                database: resource.clone(),
                region: region.to_owned(),
                status,
                waited,
            },
        }
    }

    fn cancelled(&self) -> RdsError {
        match *self {
            Awaited::Snapshot { identifier, region } => RdsError::Cancelled {
                operation: "waiting for a snapshot",
                region: region.to_owned(),
                left_behind: format!(
                    "; snapshot {identifier} is left in place (it may still complete): delete \
                     it if it is not wanted"
                ),
            },
            Awaited::Database { resource, region } => RdsError::Cancelled {
                operation: "waiting for a restore",
                region: region.to_owned(),
                left_behind: format!(
                    "; the restored {resource} is left in place: delete it if it is not wanted"
                ),
            },
        }
    }
}

/// Snapshot statuses: `available` is done; these end a snapshot for good (`deleting`: someone
/// is removing it); anything else (`creating`, `copying`, `pending`, ...) may still finish.
fn snapshot_progress(status: &str) -> Progress {
    match status {
        "available" => Progress::Done,
        "failed"
        | "error"
        | "deleted"
        | "deleting"
        | "incompatible-restore"
        | "incompatible-parameters" => Progress::Failed,
        _ => Progress::Pending,
    }
}

/// Instance and cluster statuses after a restore: `available` is done; these need an operator
/// (and the new database deleting); the rest (`creating`, `backing-up`, `modifying`,
/// `configuring-*`, `resetting-master-credentials`, ...) settle by themselves.
fn database_progress(status: &str) -> Progress {
    match status {
        "available" => Progress::Done,
        "failed"
        | "restore-error"
        | "deleting"
        | "deleted"
        | "storage-full"
        | "inaccessible-encryption-credentials"
        | "inaccessible-encryption-credentials-recoverable"
        | "incompatible-network"
        | "incompatible-option-group"
        | "incompatible-parameters"
        | "incompatible-restore"
        | "insufficient-capacity" => Progress::Failed,
        _ => Progress::Pending,
    }
}

/// Polls `status_of` until `awaited` is done (its value is returned), has failed, or
/// `policy.timeout` has passed since the first poll (the last poll is at the deadline).
/// `status_of` gives the current status and what to return once it is final.
pub(crate) async fn wait_until<T, F, Fut>(
    awaited: Awaited<'_>,
    policy: WaitPolicy,
    cancel: &CancellationToken,
    mut status_of: F,
) -> Result<T, RdsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(String, T), RdsError>>,
{
    policy.check()?;
    let start = Instant::now();
    let deadline = start + policy.timeout;
    loop {
        let (status, value) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(awaited.cancelled()),
            observed = status_of() => observed?,
        };
        match awaited.progress(&status) {
            Progress::Done => {
                tracing::debug!(?awaited, waited = ?start.elapsed(), "done");
                return Ok(value);
            }
            Progress::Failed => return Err(awaited.failed(status)),
            Progress::Pending => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(awaited.timed_out(status, policy.timeout));
        }
        tracing::debug!(?awaited, status, "not done yet");
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Err(awaited.cancelled()),
            () = tokio::time::sleep(policy.poll_interval.min(deadline - now)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fake status sources here stand in for RDS: moto makes every snapshot `available`
    //! at once, so a snapshot that stays `creating`, or fails, can only be tested this way.

    use std::cell::Cell;
    use std::collections::VecDeque;

    use super::*;

    const SNAPSHOT: Awaited<'static> = Awaited::Snapshot {
        identifier: "backupd-orders-1",
        region: "eu-west-1",
    };

    fn policy(poll_secs: u64, timeout_secs: u64) -> WaitPolicy {
        WaitPolicy::new(
            Duration::from_secs(poll_secs),
            Duration::from_secs(timeout_secs),
        )
    }

    /// Answers the statuses in turn, the last one for ever, counting the polls.
    struct FakeStatuses {
        statuses: std::cell::RefCell<VecDeque<&'static str>>,
        polls: Cell<u32>,
    }

    impl FakeStatuses {
        fn new(statuses: &[&'static str]) -> FakeStatuses {
            FakeStatuses {
                statuses: std::cell::RefCell::new(statuses.iter().copied().collect()),
                polls: Cell::new(0),
            }
        }

        async fn next(&self) -> Result<(String, u32), RdsError> {
            self.polls.set(self.polls.get() + 1);
            let mut statuses = self.statuses.borrow_mut();
            let status = if statuses.len() > 1 {
                statuses.pop_front().unwrap()
            } else {
                statuses[0]
            };
            Ok((status.to_owned(), self.polls.get()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_still_creating_at_the_timeout_is_a_named_error() {
        let fake = FakeStatuses::new(&["creating"]);
        let start = Instant::now();
        let err = wait_until(
            SNAPSHOT,
            policy(30, 30 * 60),
            &CancellationToken::new(),
            || fake.next(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RdsError::SnapshotTimedOut { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(
                "snapshot backupd-orders-1 in eu-west-1 still creating after 30m (raise \
                 `snapshot-timeout` if RDS needs longer)"
            ),
            "{err}"
        );
        // One poll at the start, one every 30 s, the last one at the deadline.
        assert_eq!(fake.polls.get(), 61);
        assert_eq!(start.elapsed(), Duration::from_secs(30 * 60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_becoming_available_ends_the_wait_with_its_value() {
        let fake = FakeStatuses::new(&["creating", "creating", "available"]);
        let start = Instant::now();
        let polls = wait_until(SNAPSHOT, policy(5, 60), &CancellationToken::new(), || {
            fake.next()
        })
        .await
        .unwrap();
        assert_eq!(polls, 3);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_snapshot_is_a_named_error_at_once() {
        for status in ["failed", "error", "deleting"] {
            let fake = FakeStatuses::new(&["creating", status]);
            let err = wait_until(SNAPSHOT, policy(5, 3600), &CancellationToken::new(), || {
                fake.next()
            })
            .await
            .unwrap_err();
            assert!(matches!(err, RdsError::SnapshotFailed { .. }), "{err:?}");
            assert!(
                err.to_string().contains(&format!("went to `{status}`")),
                "{err}"
            );
            assert_eq!(fake.polls.get(), 2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restore_has_its_own_errors() {
        let resource = RdsResource::Instance("orders-restored".into());
        let awaited = Awaited::Database {
            resource: &resource,
            region: "eu-west-1",
        };
        let fake = FakeStatuses::new(&["creating", "backing-up"]);
        let err = wait_until(awaited, policy(10, 60), &CancellationToken::new(), || {
            fake.next()
        })
        .await
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "restored DB instance orders-restored in eu-west-1 still backing-up after 1m"
            ),
            "{err}"
        );
        let fake = FakeStatuses::new(&["creating", "incompatible-network"]);
        let err = wait_until(awaited, policy(10, 60), &CancellationToken::new(), || {
            fake.next()
        })
        .await
        .unwrap_err();
        assert!(matches!(err, RdsError::RestoreFailed { .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_the_wait_and_says_what_is_left() {
        let fake = FakeStatuses::new(&["creating"]);
        let cancel = CancellationToken::new();
        let cancel_later = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(95)).await;
            cancel_later.cancel();
        });
        let start = Instant::now();
        let err = wait_until(SNAPSHOT, policy(30, 3600), &cancel, || fake.next())
            .await
            .unwrap_err();
        assert!(err.is_cancelled(), "{err:?}");
        assert!(
            err.to_string()
                .contains("snapshot backupd-orders-1 is left in place"),
            "{err}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(95));
        assert_eq!(fake.polls.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_of_the_status_source_end_the_wait() {
        let polls = Cell::new(0);
        let err =
            wait_until::<(), _, _>(SNAPSHOT, policy(1, 60), &CancellationToken::new(), || {
                polls.set(polls.get() + 1);
                async {
                    Err(RdsError::Config {
                        problem: "boom".into(),
                    })
                }
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert_eq!(polls.get(), 1);
    }

    #[tokio::test]
    async fn a_poll_interval_longer_than_the_timeout_is_refused() {
        let err = wait_until(
            SNAPSHOT,
            policy(60, 30),
            &CancellationToken::new(),
            || async { Ok(("available".to_owned(), ())) },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, RdsError::Config { .. }), "{err:?}");
        assert!(
            err.to_string().contains("at most the timeout (30s)"),
            "{err}"
        );
    }
}
