//! Proving that nothing was written while a backup copied the collections, without reading
//! the oplog (some servers answer any oplog read with a scan of the whole oplog: a few
//! seconds per 100 000 entries on SecantusDB).
//!
//! A cluster-wide change stream is opened before the backup takes its start position. After
//! the copy, one `getMore` on it returns every write since it opened; when it returns none,
//! and the server's answers show that the stream had looked at every write up to the
//! primary's last one, the backup ends at its start: its oplog range is empty. Whenever the
//! proof is not complete (no change streams, a write the stream cannot see yet, an error),
//! the backup reads the oplog as before, so the watch can only save work, never lose writes.

use std::time::Duration;

use mongodb::bson::{Document, Timestamp};
use mongodb::change_stream::session::SessionChangeStream;
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::{Client, ClientSession};

use super::{primary_hello, LastWrite, OpTime};

/// How long the one `getMore` waits for an event (nothing is expected).
const POLL_WAIT: Duration = Duration::from_millis(10);
/// Polls before giving up on a proof (a server's answer may lag its last write).
const POLLS: usize = 3;

/// A change stream over the whole deployment, opened before a backup's start position.
pub struct WriteWatch {
    stream: SessionChangeStream<Document>,
    session: ClientSession,
    /// The server's time when the stream opened: it sees every write after it.
    opened_at: Timestamp,
    /// The stream's first batch already held an event.
    early_event: bool,
}

impl WriteWatch {
    /// Opens the watch. `None` when the server has no cluster-wide change stream to offer (a
    /// standalone server, a version before 6.0 without expanded events, a user without the
    /// `changeStream` privilege on the cluster): the backup then reads the oplog.
    pub async fn open(client: &Client) -> Option<WriteWatch> {
        let opened = async {
            let mut session = client.start_session().await?;
            // Expanded events report index builds, collMod and creates too: every kind of
            // oplog entry a restore replays for a user namespace.
            let mut stream = client
                .watch()
                .show_expanded_events(true)
                .max_await_time(POLL_WAIT)
                .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                .session(&mut session)
                .await?
                .with_type::<Document>();
            // Takes the first batch the aggregate returned, so that the next poll is a
            // `getMore` sent after it was asked for.
            let early_event = stream.next_if_any(&mut session).await?.is_some();
            Ok::<_, mongodb::error::Error>((stream, session, early_event))
        }
        .await;
        match opened {
            Ok((stream, session, early_event)) => {
                let opened_at = session.operation_time()?;
                Some(WriteWatch {
                    stream,
                    session,
                    opened_at,
                    early_event,
                })
            }
            Err(e) => {
                tracing::debug!(error = %e, "no change stream to watch for writes during the backup; its end comes from an oplog read");
                None
            }
        }
    }

    /// Whether the deployment provably had no write after `start` (which was taken after
    /// the watch opened). False whenever that is not proven.
    pub async fn nothing_written_since(mut self, client: &Client, start: OpTime) -> bool {
        if self.early_event || self.opened_at > start.0 {
            tracing::debug!(early_event = self.early_event, opened_at = ?self.opened_at, %start, "the write watch cannot cover the backup's start");
            return false;
        }
        // The primary's last write, and whether it is majority-committed (a change stream
        // shows only majority-committed writes).
        let last = match primary_hello(client).await {
            Ok(hello) => last_write_committed(&hello),
            Err(e) => {
                tracing::debug!(error = %e, "hello failed after the copy");
                None
            }
        };
        let Some(last) = last else {
            tracing::debug!("the primary's last write is not majority-committed yet");
            return false;
        };
        // Each poll is one `getMore`; its answer's time says up to where the stream looked.
        for _ in 0..POLLS {
            match self.stream.next_if_any(&mut self.session).await {
                Ok(None) => {}
                Ok(Some(event)) => {
                    tracing::debug!(
                        operation = event.get_str("operationType").unwrap_or("?"),
                        "a write during the backup"
                    );
                    return false;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the write watch failed; the backup reads the oplog");
                    return false;
                }
            }
            if self.session.operation_time().is_some_and(|t| t >= last) {
                return true;
            }
        }
        tracing::debug!(answered_at = ?self.session.operation_time(), last_write = ?last, "the write watch did not reach the last write");
        false
    }
}

/// The primary's last write from a `hello` answer, when it is majority-committed.
fn last_write_committed(hello: &Document) -> Option<Timestamp> {
    let LastWrite { newest, majority } = LastWrite::of(hello);
    let (newest, majority) = (newest?, majority?);
    (majority >= newest).then_some(newest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn only_a_majority_committed_last_write_counts() {
        let hello = |newest: u32, majority: u32| {
            doc! { "lastWrite": {
                "opTime": { "ts": Timestamp { time: newest, increment: 1 }, "t": 1_i64 },
                "majorityOpTime": { "ts": Timestamp { time: majority, increment: 1 }, "t": 1_i64 },
            } }
        };
        assert_eq!(
            last_write_committed(&hello(10, 10)),
            Some(Timestamp {
                time: 10,
                increment: 1
            })
        );
        assert_eq!(last_write_committed(&hello(10, 9)), None);
        assert_eq!(last_write_committed(&doc! { "ok": 1 }), None);
    }
}
