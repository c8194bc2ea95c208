//! A tailable, awaitData cursor on `local.oplog.rs`, driven with explicit `find` and
//! `getMore` commands in one session, so that each `getMore`'s batch is seen as the server
//! sent it (a full batch says the reader may be behind).
//!
//! The cursor is opened on the entries after the primary's newest write, not after the
//! reader's position: its first answer then holds almost nothing, and the entries from the
//! position on come from one range read taken after the cursor opened (see the oplog
//! archiver). Some servers (SecantusDB) answer the opening `find` with a scan of the whole
//! oplog but each `getMore` with a cheap read from where the cursor stands, so following
//! the oplog this way costs one scan per cursor instead of one per poll.

use std::time::Duration;

use mongodb::bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::{Client, ClientSession};

use super::{newest_write, MongoError, OpTime, Result};

/// Entries asked for per `getMore`.
pub const TAIL_BATCH: i32 = 1000;
/// How long closing a cursor may hold up a stop.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// An open tailable cursor on the oplog.
pub struct OplogTail {
    session: ClientSession,
    cursor_id: i64,
    /// The cursor delivers the entries after this.
    pub opened_after: OpTime,
    /// The `find`'s first batch, handed out by the first [`OplogTail::next_batch`].
    first_batch: Vec<RawDocumentBuf>,
}

/// One batch of entries, in the order the server sent them.
pub struct TailBatch {
    pub entries: Vec<RawDocumentBuf>,
    /// The batch was as large as asked for: more entries may be waiting.
    pub full: bool,
}

impl OplogTail {
    /// Opens a cursor on the entries after the primary's newest write, or after `floor`
    /// when that is newer or the server reports no last write.
    pub async fn open(client: &Client, floor: OpTime) -> Result<OplogTail> {
        let opened_after = newest_write(client)
            .await?
            .map_or(floor, |newest| newest.max(floor));
        let mut session = client
            .start_session()
            .await
            .map_err(MongoError::driver("starting a session to tail the oplog"))?;
        let reply = local(client)
            .run_command(doc! {
                "find": "oplog.rs",
                "filter": { "ts": { "$gt": opened_after.0 } },
                "tailable": true,
                "awaitData": true,
                "batchSize": TAIL_BATCH,
            })
            .selection_criteria(primary())
            .session(&mut session)
            .await
            .map_err(MongoError::driver(
                "opening a tailable cursor on local.oplog.rs",
            ))?;
        let (cursor_id, first_batch) = cursor_reply(&reply, "firstBatch")?;
        if cursor_id == 0 {
            return Err(MongoError::Invalid(
                "the server closed the tailable cursor on local.oplog.rs as it opened it".into(),
            ));
        }
        Ok(OplogTail {
            session,
            cursor_id,
            opened_after,
            first_batch,
        })
    }

    /// The next entries, waiting up to `wait` for one to appear.
    pub async fn next_batch(&mut self, client: &Client, wait: Duration) -> Result<TailBatch> {
        if !self.first_batch.is_empty() {
            // The find's own answer: what it held says nothing about being behind.
            return Ok(TailBatch {
                entries: std::mem::take(&mut self.first_batch),
                full: false,
            });
        }
        let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX).max(1);
        let reply = local(client)
            .run_command(doc! {
                "getMore": self.cursor_id,
                "collection": "oplog.rs",
                "batchSize": TAIL_BATCH,
                "maxTimeMS": wait_ms,
            })
            .selection_criteria(primary())
            .session(&mut self.session)
            .await
            .map_err(MongoError::driver("following local.oplog.rs"))?;
        let (cursor_id, entries) = cursor_reply(&reply, "nextBatch")?;
        if cursor_id == 0 {
            return Err(MongoError::Invalid(
                "the server closed the tailable cursor on local.oplog.rs".into(),
            ));
        }
        let full = entries.len() >= TAIL_BATCH as usize;
        Ok(TailBatch { entries, full })
    }

    /// Closes the cursor on the server (best effort, for at most [`CLOSE_WAIT`]: a server
    /// that cannot be reached drops the cursor itself once it times out).
    pub async fn close(mut self, client: &Client) {
        let db = local(client);
        let kill = db
            .run_command(doc! { "killCursors": "oplog.rs", "cursors": [self.cursor_id] })
            .selection_criteria(primary())
            .session(&mut self.session);
        match tokio::time::timeout(CLOSE_WAIT, kill).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing the oplog cursor"),
            Err(_) => tracing::debug!("closing the oplog cursor: no answer, left to the server"),
        }
    }
}

fn local(client: &Client) -> mongodb::Database {
    client.database("local")
}

fn primary() -> SelectionCriteria {
    SelectionCriteria::ReadPreference(ReadPreference::Primary)
}

/// The cursor id and the entries of a `find` or `getMore` answer.
fn cursor_reply(reply: &Document, batch: &str) -> Result<(i64, Vec<RawDocumentBuf>)> {
    let invalid =
        || MongoError::Invalid(format!("a tailable oplog cursor's answer has no {batch}"));
    let cursor = reply.get_document("cursor").map_err(|_| invalid())?;
    let id = cursor.get_i64("id").map_err(|_| invalid())?;
    let entries = cursor
        .get_array(batch)
        .map_err(|_| invalid())?
        .iter()
        .map(|entry| match entry {
            Bson::Document(d) => RawDocumentBuf::from_document(d)
                .map_err(|e| MongoError::Invalid(format!("an oplog entry is not valid BSON: {e}"))),
            _ => Err(MongoError::Invalid(
                "an oplog cursor returned something that is not a document".into(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((id, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_without_a_cursor_are_refused() {
        let reply = doc! { "cursor": { "id": 7_i64, "nextBatch": [{ "ts": mongodb::bson::Timestamp { time: 5, increment: 1 } }] } };
        let (id, entries) = cursor_reply(&reply, "nextBatch").unwrap();
        assert_eq!((id, entries.len()), (7, 1));
        assert!(cursor_reply(&reply, "firstBatch").is_err());
        assert!(cursor_reply(&doc! { "ok": 1 }, "nextBatch").is_err());
        let reply = doc! { "cursor": { "id": 7_i64, "nextBatch": [1] } };
        assert!(cursor_reply(&reply, "nextBatch").is_err());
    }
}
