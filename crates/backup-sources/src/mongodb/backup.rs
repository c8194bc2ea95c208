//! Reading a collection's documents or a range of the oplog as one byte stream of
//! concatenated BSON documents (the layout of mongodump's `.bson` files), for the blocking
//! backup pipeline: [`DocumentStream`] implements [`std::io::Read`] over the driver's
//! async cursor. A task drains the cursor ahead of the reader into a few batches of about
//! a MiB, so the server answers the next `getMore` while the pipeline compresses and seals
//! the last one; memory stays bounded by the channel.

use std::future::IntoFuture;
use std::io::{self, Read};

use mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf};
use mongodb::options::{ReadPreference, SelectionCriteria};
use mongodb::{Client, ClientSession, Cursor, SessionCursor};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::{MongoError, NamespaceFilter, OpTime, Result};

/// A prefetched batch is handed over once it holds this many bytes.
const PREFETCH_BATCH_BYTES: usize = 1 << 20;
/// Batches read ahead of the reader (about this many MiB in memory per stream).
const PREFETCH_BATCHES: usize = 4;

/// Concatenated documents read ahead, and how many.
struct Batch {
    bytes: Vec<u8>,
    documents: u64,
    /// Oplog reads: the newest entry read so far (entries the filter leaves out too).
    newest: Option<OpTime>,
    /// Oplog reads: whether the entry at the range's own start position was read.
    start_seen: bool,
}

/// Documents of a cursor as concatenated BSON, pulled as the reader asks for bytes.
pub struct DocumentStream {
    batches: mpsc::Receiver<Result<Batch>>,
    reader: tokio::task::JoinHandle<()>,
    /// The current batch and how much of it has been read.
    current: Vec<u8>,
    pos: usize,
    done: bool,
    documents: u64,
    newest: Option<OpTime>,
    start_seen: bool,
}

/// A cursor read on its own, or in the session whose reads must see a position.
enum ReadCursor {
    Plain(Cursor<RawDocumentBuf>),
    InSession(SessionCursor<RawDocumentBuf>, Box<ClientSession>),
}

impl ReadCursor {
    async fn advance(&mut self) -> mongodb::error::Result<bool> {
        match self {
            ReadCursor::Plain(c) => c.advance().await,
            ReadCursor::InSession(c, session) => c.advance(session).await,
        }
    }

    fn current(&self) -> &RawDocument {
        match self {
            ReadCursor::Plain(c) => c.current(),
            ReadCursor::InSession(c, _) => c.current(),
        }
    }
}

impl DocumentStream {
    /// Every document of `db.coll`, in natural order, read by a server that has applied
    /// every write up to `applied` (a secondary first catches up to it: the read carries it
    /// as `afterClusterTime`). Must be called from a thread that is not an async executor's
    /// (it blocks on `handle`).
    pub fn collection(
        handle: Handle,
        client: &Client,
        db: &str,
        coll: &str,
        applied: OpTime,
    ) -> Result<Self> {
        let what = format!("reading {db}.{coll}");
        let collection = client.database(db).collection::<RawDocumentBuf>(coll);
        let cursor = handle
            .block_on(async {
                let mut session = client.start_session().await?;
                session.advance_operation_time(applied.0);
                let cursor = collection
                    .find(doc! {})
                    .batch_size(1000)
                    .session(&mut session)
                    .await?;
                Ok(ReadCursor::InSession(cursor, Box::new(session)))
            })
            .map_err(MongoError::driver(what.clone()))?;
        Ok(Self::new(&handle, cursor, what, None))
    }

    /// The oplog entries after `after` that `filter` covers, up to the newest one the read
    /// finds (always from the primary, whose oplog holds every write). The read starts at
    /// `after`'s own entry when there is one: [`DocumentStream::start_seen`] then proves the
    /// oplog had not rolled past `after`. [`DocumentStream::newest`] is the position reached.
    pub fn oplog(
        handle: Handle,
        client: &Client,
        after: OpTime,
        filter: NamespaceFilter,
    ) -> Result<Self> {
        let what = format!("reading the oplog after {after}");
        let cursor = handle
            .block_on(
                client
                    .database("local")
                    .collection::<RawDocumentBuf>("oplog.rs")
                    .find(doc! { "ts": { "$gte": after.0 } })
                    .sort(doc! { "$natural": 1 })
                    .batch_size(1000)
                    .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                    .into_future(),
            )
            .map_err(MongoError::driver(what.clone()))?;
        let oplog = OplogRange { after, filter };
        Ok(Self::new(
            &handle,
            ReadCursor::Plain(cursor),
            what,
            Some(oplog),
        ))
    }

    fn new(handle: &Handle, cursor: ReadCursor, what: String, oplog: Option<OplogRange>) -> Self {
        let (tx, batches) = mpsc::channel(PREFETCH_BATCHES);
        let reader = handle.spawn(read_ahead(cursor, what, oplog, tx));
        DocumentStream {
            batches,
            reader,
            current: Vec::new(),
            pos: 0,
            done: false,
            documents: 0,
            newest: None,
            start_seen: false,
        }
    }

    /// Documents read so far.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// An oplog read: the newest entry read (of any namespace), `None` when there was none
    /// after the start.
    pub fn newest(&self) -> Option<OpTime> {
        self.newest
    }

    /// An oplog read: whether the oplog still held the entry at the start position.
    pub fn start_seen(&self) -> bool {
        self.start_seen
    }

    /// Moves to the next batch; false at the end of the cursor.
    fn next_batch(&mut self) -> Result<bool> {
        match self.batches.blocking_recv() {
            Some(batch) => {
                let batch = batch?;
                self.documents += batch.documents;
                self.newest = batch.newest.or(self.newest);
                self.start_seen |= batch.start_seen;
                self.current = batch.bytes;
                self.pos = 0;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Drop for DocumentStream {
    fn drop(&mut self) {
        // A stream dropped early (an error downstream) stops reading; the cursor is
        // killed when the task drops it.
        self.reader.abort();
    }
}

/// The oplog range a [`DocumentStream`] reads: entries after `after` that `filter` covers.
struct OplogRange {
    after: OpTime,
    filter: NamespaceFilter,
}

/// Drains `cursor` into `tx` in batches of about [`PREFETCH_BATCH_BYTES`], keeping only the
/// oplog entries after the range's start that its filter covers when reading the oplog; a
/// read error is sent as the last item.
async fn read_ahead(
    mut cursor: ReadCursor,
    what: String,
    oplog: Option<OplogRange>,
    tx: mpsc::Sender<Result<Batch>>,
) {
    let mut newest: Option<OpTime> = None;
    loop {
        let mut batch = Batch {
            bytes: Vec::with_capacity(PREFETCH_BATCH_BYTES + (64 << 10)),
            documents: 0,
            newest: None,
            start_seen: false,
        };
        let mut finished = false;
        while batch.bytes.len() < PREFETCH_BATCH_BYTES {
            match cursor.advance().await {
                Ok(true) => {}
                Ok(false) => {
                    finished = true;
                    break;
                }
                Err(e) => {
                    let _ = tx.send(Err(MongoError::driver(what.clone())(e))).await;
                    return;
                }
            }
            let raw = cursor.current();
            if let Some(range) = &oplog {
                let entry = Document::try_from(raw)
                    .map_err(|e| format!("an entry is not valid BSON: {e}"))
                    .and_then(|entry| {
                        let ts = super::entry_ts(&entry).map_err(|e| e.to_string())?;
                        Ok((entry, ts))
                    });
                let (entry, ts) = match entry {
                    Ok(read) => read,
                    Err(e) => {
                        let _ = tx
                            .send(Err(MongoError::Invalid(format!("{what}: {e}"))))
                            .await;
                        return;
                    }
                };
                if newest.is_some_and(|n| ts <= n) {
                    let message = format!(
                        "{what}: the server returned entry {ts} after {}, out of order",
                        newest.unwrap_or(ts)
                    );
                    let _ = tx.send(Err(MongoError::Invalid(message))).await;
                    return;
                }
                if ts == range.after {
                    batch.start_seen = true;
                    continue;
                }
                newest = Some(ts);
                batch.newest = newest;
                if !oplog_entry_covered(&entry, &range.filter) {
                    continue;
                }
            }
            batch.bytes.extend_from_slice(raw.as_bytes());
            batch.documents += 1;
        }
        let worth_sending = batch.documents > 0 || batch.newest.is_some() || batch.start_seen;
        if worth_sending && tx.send(Ok(batch)).await.is_err() {
            return;
        }
        if finished {
            return;
        }
    }
}

/// Whether an oplog entry can touch a namespace `filter` covers. Commands on a covered
/// database are kept (their target is checked again when replayed), and so are the
/// `admin.$cmd` entries that carry transactions (`applyOps`) and renames.
pub fn oplog_entry_covered(entry: &Document, filter: &NamespaceFilter) -> bool {
    let op = entry.get_str("op").unwrap_or_default();
    let ns = entry.get_str("ns").unwrap_or_default();
    if op == "n" || ns.is_empty() {
        return false;
    }
    let Some((db, coll)) = ns.split_once('.') else {
        return false;
    };
    if coll == "$cmd" {
        return db == "admin" || filter.covers_database(db);
    }
    filter.covers(db, coll)
}

impl Read for DocumentStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.current.len() {
            if self.done {
                return Ok(0);
            }
            if !self.next_batch().map_err(io::Error::other)? {
                self.done = true;
                return Ok(0);
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Reads concatenated BSON documents (a collection's or the oplog's file) one at a time.
pub struct BsonFileReader<R: Read> {
    input: R,
    offset: u64,
}

impl<R: Read> BsonFileReader<R> {
    pub fn new(input: R) -> Self {
        BsonFileReader { input, offset: 0 }
    }

    /// The next document's bytes, `None` at a clean end.
    pub fn next_raw(&mut self) -> Result<Option<RawDocumentBuf>> {
        let mut len = [0u8; 4];
        match read_full(&mut self.input, &mut len)? {
            0 => return Ok(None),
            4 => {}
            n => {
                return Err(MongoError::Invalid(format!(
                    "BSON data ends inside a document length at byte {} ({n} of 4 bytes)",
                    self.offset
                )))
            }
        }
        let size = u32::from_le_bytes(len) as usize;
        if !(5..=48 << 20).contains(&size) {
            return Err(MongoError::Invalid(format!(
                "a BSON document at byte {} claims {size} bytes",
                self.offset
            )));
        }
        let mut bytes = vec![0u8; size];
        bytes[..4].copy_from_slice(&len);
        if read_full(&mut self.input, &mut bytes[4..])? != size - 4 {
            return Err(MongoError::Invalid(format!(
                "BSON data ends inside the document at byte {}",
                self.offset
            )));
        }
        self.offset += size as u64;
        RawDocumentBuf::from_bytes(bytes)
            .map(Some)
            .map_err(|e| MongoError::Invalid(format!("a BSON document is not valid: {e}")))
    }
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bson_files_read_back_and_truncation_is_an_error() {
        let mut bytes = Vec::new();
        for i in 0..3 {
            let d = doc! { "_id": i, "s": "x".repeat(i as usize * 10) };
            d.to_writer(&mut bytes).unwrap();
        }
        let mut r = BsonFileReader::new(&bytes[..]);
        let mut n = 0;
        while let Some(d) = r.next_raw().unwrap() {
            assert_eq!(d.get_i32("_id").unwrap(), n);
            n += 1;
        }
        assert_eq!(n, 3);
        let mut r = BsonFileReader::new(&bytes[..bytes.len() - 3]);
        r.next_raw().unwrap();
        r.next_raw().unwrap();
        assert!(r.next_raw().is_err());
    }

    #[test]
    fn oplog_entries_are_kept_by_namespace() {
        let f = NamespaceFilter {
            include: vec!["app".into()],
            exclude: vec!["app.cache".into()],
        };
        let e = |op: &str, ns: &str| doc! { "op": op, "ns": ns };
        assert!(oplog_entry_covered(&e("i", "app.users"), &f));
        assert!(!oplog_entry_covered(&e("i", "app.cache"), &f));
        assert!(!oplog_entry_covered(&e("i", "crm.x"), &f));
        assert!(oplog_entry_covered(&e("c", "app.$cmd"), &f));
        assert!(oplog_entry_covered(&e("c", "admin.$cmd"), &f));
        assert!(!oplog_entry_covered(&e("n", ""), &f));
        assert!(!oplog_entry_covered(&e("c", "crm.$cmd"), &f));
    }
}
