//! Continuous oplog archiving: `backupctl oplog-archive SOURCE` (and backupd) follows
//! `local.oplog.rs` and writes what it read as sealed slices
//! (`oplog/<source>/<after>-<last>.bkpd`, each the entries after `after` up to `last`)
//! every `oplog-interval`.
//!
//! The position is the catalog itself: archiving resumes after the newest recorded slice
//! (or, for a source with none yet, at the end of its newest backup), so a restart or a
//! network drop re-reads from there and never skips an entry; a slice is recorded only once
//! stored and its checksum matched.
//!
//! Following the oplog takes a tailable cursor opened on the entries after the primary's
//! newest write, then one range read from the position (the backlog, and the check that
//! the oplog still holds the position), then the cursor's `getMore`s. The cursor may repeat
//! entries the range read returned; an entry it returns that is older than the newest
//! already read and was not among them means the server made it visible late, and
//! archiving re-reads from its recorded position rather than store a slice with a gap.
//! Every range read starts at the position's own entry: when the oplog no longer holds it,
//! it has rolled past the position, the entries in between are lost, and archiving stops
//! with an error asking for a new full backup. A backup's end is not always an entry
//! (nothing written during a backup leaves it at its start, a position the primary
//! reported): from there, the first read that finds entries checks the oplog's oldest entry
//! instead. A cursor that fell behind (a full `getMore`) has the oldest entry checked before
//! its slice is recorded: some servers drop entries under a cursor without saying so.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use backup_catalog::{OplogSliceRecord, OplogTs};
use backup_core::format::{ArtifactKind, ReadOptions, WriteOptions};
use backup_core::sealed::{open_sealed, seal};
use backup_sinks::{put_bytes, read_object, Sink};
use backup_sources::mongodb::backup::oplog_entry_covered;
use backup_sources::mongodb::bson::{doc, Document, RawDocument, RawDocumentBuf};
use backup_sources::mongodb::mongodb::options::{ReadPreference, SelectionCriteria};
use backup_sources::mongodb::tail::OplogTail;
use backup_sources::mongodb::{self as mongo, MongoError, NamespaceFilter, OpTime};

use super::{mongo_error, mongo_source};
use crate::config::SourceConfig;
use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::Engine;

/// Where slices live in a repository.
pub const OPLOG_PREFIX: &str = "oplog/";
/// A slice is cut early once it holds this much.
const MAX_SLICE_BYTES: usize = 64 << 20;
/// The longest one `getMore` waits for new entries.
const TAIL_WAIT: Duration = Duration::from_secs(1);
/// Waits between reconnection attempts after a network drop, doubling up to a minute.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

pub fn slice_key(source: &str, after: OpTime, last: OpTime) -> String {
    format!("{OPLOG_PREFIX}{source}/{after}-{last}.bkpd")
}

pub(crate) fn to_ts(t: OpTime) -> OplogTs {
    OplogTs {
        t: t.0.time,
        i: t.0.increment,
    }
}

pub(crate) fn from_ts(t: OplogTs) -> OpTime {
    OpTime::new(t.t, t.i)
}

/// What an archiving run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ArchiveReport {
    pub source: String,
    pub slices: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Where archiving stands now (`SECONDS.INCREMENT`).
    pub position: Option<String>,
    /// Network drops or server restarts recovered from.
    pub reconnects: u64,
}

/// Where archiving continues, and whether the oplog held an entry at that very position
/// (a slice's last entry does; a backup's end may be a position with no entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchivePosition {
    pub at: OpTime,
    pub is_entry: bool,
}

/// Where archiving of `source` continues: after its newest slice, else at the end of its
/// newest complete backup.
pub async fn resume_position(engine: &Engine, source: &SourceConfig) -> Result<ArchivePosition> {
    if let Some(last) = engine.catalog.last_oplog_slice(&source.name).await? {
        return Ok(ArchivePosition {
            at: from_ts(last.last),
            is_entry: true,
        });
    }
    let newest = engine
        .catalog
        .mongo_backups(&source.name)
        .await?
        .into_iter()
        .max_by_key(|b| b.end);
    match newest {
        Some(b) => Ok(ArchivePosition {
            at: from_ts(b.end),
            is_entry: false,
        }),
        None => Err(EngineError::Usage(format!(
            "source {} has no complete backup to archive the oplog after: take one first \
             (`backupctl backup {}`)",
            source.name, source.name
        ))),
    }
}

/// The end of the newest complete backup of `source` that ended after `position`.
async fn newer_backup_end(
    engine: &Engine,
    source: &SourceConfig,
    position: OpTime,
) -> Result<Option<OpTime>> {
    Ok(engine
        .catalog
        .mongo_backups(&source.name)
        .await?
        .into_iter()
        .map(|b| from_ts(b.end))
        .filter(|end| *end > position)
        .max())
}

/// Archives `source_name`'s oplog: with `once`, everything up to the newest entry now, as
/// one slice; otherwise a slice every `oplog-interval` until `cancel`.
pub async fn run_oplog_archive(
    engine: &Engine,
    source_name: &str,
    once: bool,
    cancel: &CancellationToken,
) -> Result<ArchiveReport> {
    let (_, source) = engine.config.source(source_name)?;
    let m = mongo_source(source)?;
    let repo = Repository::open(
        &engine.config,
        engine.config.repository(&source.repository)?,
    )
    .await?;
    let key = engine.key()?;
    if !repo.check_key(&key, cancel).await? {
        return Err(EngineError::Failed(format!(
            "repository {} has not been initialised; run `backupctl init`",
            repo.name
        )));
    }
    let filter = m.filter();
    let mut report = ArchiveReport {
        source: source.name.clone(),
        ..ArchiveReport::default()
    };
    let ArchivePosition {
        at: mut after,
        is_entry: mut after_is_entry,
    } = resume_position(engine, source).await?;
    report.position = Some(after.to_string());
    let uri = m
        .uri()
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
    let mut client = None;
    let mut follow: Option<Follow> = None;
    // With `once`: where the oplog ended when archiving began.
    let mut once_upto = None;
    let mut retry = RETRY_FIRST;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        let step = async {
            if client.is_none() {
                client = Some(
                    mongo::connect(&uri, m.read_preference)
                        .await
                        .map_err(Step::Mongo)?,
                );
            }
            let c = client.as_ref().expect("connected above");
            if once {
                let upto = match once_upto {
                    Some(upto) => upto,
                    None => *once_upto.insert(mongo::oplog_last(c).await.map_err(Step::Mongo)?),
                };
                let mut slice = Slice::new(after);
                let range = Range {
                    after,
                    after_is_entry,
                    upto: Some(upto),
                };
                read_range(c, range, &filter, &mut slice, None, cancel).await?;
                return Ok(slice);
            }
            if follow.is_none() {
                follow = Some(Follow {
                    tail: OplogTail::open(c, after).await.map_err(Step::Mongo)?,
                    catching_up: true,
                    seen: HashSet::new(),
                    behind: false,
                });
            }
            let f = follow.as_mut().expect("opened above");
            let deadline = Instant::now() + m.oplog_interval;
            follow_slice(c, f, after, after_is_entry, deadline, &filter, cancel).await
        };
        let stepped = step.await;
        if stepped.is_err() {
            // The next step re-reads from the recorded position with a new cursor. The old
            // one is closed only when the server is known to answer (else the server drops it).
            if let (Some(f), Some(c), Err(Step::Reread(_))) =
                (follow.take(), client.as_ref(), &stepped)
            {
                f.tail.close(c).await;
            }
        }
        match stepped {
            // Stopping: what this slice read is read again by the next run.
            Ok(_) if cancel.is_cancelled() => break,
            Ok(slice) => {
                retry = RETRY_FIRST;
                let advanced = slice.last > after;
                if advanced {
                    let record = store_slice(engine, &repo, source, after, &slice, cancel).await?;
                    report.slices += 1;
                    report.entries += record.entries;
                    report.bytes += record.plaintext_size;
                    after = slice.last;
                    after_is_entry = true;
                    report.position = Some(after.to_string());
                    tracing::info!(source = %source.name, position = %after, entries = record.entries, "oplog slice archived");
                }
                // A slice cut at its size limit leaves more to read up to where `once` ends.
                if once && (!advanced || once_upto.is_some_and(|upto| after >= upto)) {
                    break;
                }
            }
            Err(Step::Reread(why)) => {
                tracing::warn!(source = %source.name, position = %after, "{why}; re-reading from the archived position");
                report.reconnects += 1;
            }
            Err(Step::Mongo(e)) if e.is_temporary() && !once => {
                // Re-read from the recorded position: nothing read since is lost.
                tracing::warn!(source = %source.name, error = %e, retry_in = ?retry, "oplog tailing interrupted; reconnecting");
                eprintln!(
                    "oplog tailing of {} interrupted ({e}); reconnecting in {retry:?}",
                    source.name
                );
                client = None;
                report.reconnects += 1;
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(retry) => {}
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(Step::Mongo(MongoError::OplogRolledOver { position, oldest })) => {
                // A full backup taken since (as the error asks) is a position to go on from;
                // the time between the two stays without point-in-time cover.
                match newer_backup_end(engine, source, position).await? {
                    Some(end) => {
                        tracing::warn!(source = %source.name, %position, %oldest, continue_at = %end, "the oplog rolled past the archived position; archiving continues at the end of a newer backup");
                        eprintln!(
                            "the oplog of {} rolled past {position} (oldest entry now {oldest}); \
                             archiving continues at {end}, the end of a newer backup: there is \
                             no point-in-time restore between the two",
                            source.name
                        );
                        after = end;
                        after_is_entry = false;
                        report.position = Some(after.to_string());
                    }
                    None => {
                        return Err(mongo_error(MongoError::OplogRolledOver {
                            position,
                            oldest,
                        }))
                    }
                }
            }
            Err(Step::Mongo(e)) => return Err(mongo_error(e)),
            Err(Step::Engine(e)) => return Err(e),
        }
    }
    if let (Some(f), Some(c)) = (follow, client.as_ref()) {
        f.tail.close(c).await;
    }
    Ok(report)
}

/// Why one archiving step failed: the server (maybe temporarily), a read that must be
/// done again, or anything else.
enum Step {
    Mongo(MongoError),
    /// The entries read may have a gap (the reason says why): read them again.
    Reread(String),
    Engine(EngineError),
}

/// Entries read for one slice.
struct Slice {
    bytes: Vec<u8>,
    entries: u64,
    /// The newest position read (entries the filter leaves out count too).
    last: OpTime,
}

impl Slice {
    fn new(after: OpTime) -> Slice {
        Slice {
            bytes: Vec::new(),
            entries: 0,
            last: after,
        }
    }

    /// Takes the entry at `ts` (kept only when `filter` covers it; `last` moves either way).
    fn add(&mut self, raw: &RawDocument, entry: &Document, ts: OpTime, filter: &NamespaceFilter) {
        if oplog_entry_covered(entry, filter) {
            self.bytes.extend_from_slice(raw.as_bytes());
            self.entries += 1;
        }
        self.last = ts;
    }
}

/// An oplog entry as a document, and its position; `what` names the read in errors.
fn read_entry(raw: &RawDocument, what: &str) -> std::result::Result<(Document, OpTime), Step> {
    let entry = Document::try_from(raw).map_err(|e| {
        Step::Engine(EngineError::Failed(format!(
            "{what}: an entry is not valid BSON: {e}"
        )))
    })?;
    let ts = mongo::entry_ts(&entry).map_err(Step::Mongo)?;
    Ok((entry, ts))
}

/// The oplog as archiving follows it.
struct Follow {
    tail: OplogTail,
    /// The range reads from the position have not reached the cursor's start yet.
    catching_up: bool,
    /// Entries the range reads returned after the cursor's start: the cursor may return
    /// them again. Emptied once it returns a newer one.
    seen: HashSet<OpTime>,
    /// A `getMore` came back full since the oldest entry was last checked.
    behind: bool,
}

/// Reads the entries after `after` until `deadline` or `MAX_SLICE_BYTES`: first the range
/// from `after` on while `follow` is catching up, then what its cursor returns.
async fn follow_slice(
    client: &mongo::mongodb::Client,
    follow: &mut Follow,
    after: OpTime,
    after_is_entry: bool,
    deadline: Instant,
    filter: &NamespaceFilter,
    cancel: &CancellationToken,
) -> std::result::Result<Slice, Step> {
    let mut slice = Slice::new(after);
    if follow.catching_up {
        let range = Range {
            after,
            after_is_entry,
            upto: None,
        };
        let seen = (follow.tail.opened_after, &mut follow.seen);
        read_range(client, range, filter, &mut slice, Some(seen), cancel).await?;
        if slice.bytes.len() >= MAX_SLICE_BYTES || cancel.is_cancelled() {
            return Ok(slice);
        }
        follow.catching_up = false;
    }
    while slice.bytes.len() < MAX_SLICE_BYTES {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(TAIL_WAIT);
        let batch = tokio::select! {
            batch = follow.tail.next_batch(client, wait) => batch.map_err(Step::Mongo)?,
            _ = cancel.cancelled() => return Ok(slice),
        };
        follow.behind |= batch.full;
        for raw in batch.entries {
            let (entry, ts) = read_entry(&raw, "following the oplog")?;
            if ts <= slice.last {
                if follow.seen.contains(&ts) {
                    continue;
                }
                return Err(Step::Reread(format!(
                    "the oplog cursor returned entry {ts} after {}, which was read before it",
                    slice.last
                )));
            }
            follow.seen.clear();
            slice.add(&raw, &entry, ts, filter);
        }
    }
    if follow.behind && slice.last > after {
        // Entries the cap dropped before the cursor reached them: `after` went first.
        mongo::check_not_rolled_past(client, after)
            .await
            .map_err(Step::Mongo)?;
        follow.behind = false;
    }
    Ok(slice)
}

/// A range of the oplog to read: the entries after `after` (up to `upto` when given).
#[derive(Clone, Copy)]
struct Range {
    after: OpTime,
    /// The oplog held an entry at `after` itself.
    after_is_entry: bool,
    upto: Option<OpTime>,
}

/// Appends the covered entries of `range` to `slice`, stopping early at `MAX_SLICE_BYTES`,
/// and moves `slice.last` to each entry read (entries the filter leaves out move it too);
/// the positions of the entries after `seen.0` go into `seen.1`.
///
/// The read starts at `after`'s own entry, which must still be there when `after_is_entry`:
/// that it is proves the oplog has not rolled past the position, without a read of the
/// oplog's oldest entry (which costs a scan of the whole oplog on some servers). A position
/// that is not an entry is checked against the oldest entry once a read finds newer entries
/// (an empty read proves nothing rolled: a rollover needs newer entries).
async fn read_range(
    client: &mongo::mongodb::Client,
    Range {
        after,
        after_is_entry,
        upto,
    }: Range,
    filter: &NamespaceFilter,
    slice: &mut Slice,
    mut seen: Option<(OpTime, &mut HashSet<OpTime>)>,
    cancel: &CancellationToken,
) -> std::result::Result<(), Step> {
    let oplog = mongo::oplog(client).clone_with_type::<RawDocumentBuf>();
    let what = format!("reading the oplog after {after}");
    let mut range = doc! { "$gte": after.0 };
    if let Some(upto) = upto {
        range.insert("$lte", upto.0);
    }
    let mut cursor = oplog
        .find(doc! { "ts": range })
        .sort(doc! { "$natural": 1 })
        .batch_size(1000)
        .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        .await
        .map_err(|e| Step::Mongo(MongoError::driver(what.clone())(e)))?;
    let mut position_seen = false;
    while cursor
        .advance()
        .await
        .map_err(|e| Step::Mongo(MongoError::driver(what.clone())(e)))?
    {
        let raw = cursor.current();
        let (entry, ts) = read_entry(raw, &what)?;
        if !position_seen {
            position_seen = true;
            if ts == after {
                continue;
            }
            if after_is_entry {
                return Err(position_lost(client, after).await);
            }
            mongo::check_not_rolled_past(client, after)
                .await
                .map_err(Step::Mongo)?;
        }
        if ts <= slice.last {
            return Err(Step::Engine(EngineError::Failed(format!(
                "{what}: the server returned entry {ts} after {}, out of order; archiving \
                 stops rather than store a slice with a gap",
                slice.last
            ))));
        }
        slice.add(raw, &entry, ts, filter);
        if let Some((from, seen)) = seen.as_mut() {
            if ts > *from {
                seen.insert(ts);
            }
        }
        if slice.bytes.len() >= MAX_SLICE_BYTES || cancel.is_cancelled() {
            break;
        }
    }
    if !position_seen && after_is_entry {
        return Err(position_lost(client, after).await);
    }
    Ok(())
}

/// Why the oplog no longer holds the entry at `position`: it rolled past it (the usual
/// case, with the oldest entry named), or it lost entries at its end (a rollback).
async fn position_lost(client: &mongo::mongodb::Client, position: OpTime) -> Step {
    match mongo::oplog_first(client).await {
        Ok(oldest) if oldest > position => {
            Step::Mongo(MongoError::OplogRolledOver { position, oldest })
        }
        Ok(oldest) => Step::Mongo(MongoError::Invalid(format!(
            "the oplog no longer holds the entry at {position} although its oldest entry \
             ({oldest}) is older: the server rolled back or lost writes, so what was archived \
             after {position} may not match it; take a new full backup (`backupctl backup \
             SOURCE`) and archiving continues from it"
        ))),
        Err(e) => Step::Mongo(e),
    }
}

/// Seals and stores one slice, checks the stored checksum, then records it.
async fn store_slice(
    engine: &Engine,
    repo: &Repository,
    source: &SourceConfig,
    after: OpTime,
    slice: &Slice,
    cancel: &CancellationToken,
) -> Result<OplogSliceRecord> {
    let key = engine.key()?;
    let options = WriteOptions {
        zstd_level: engine.config.pipeline.compression_level,
        ..WriteOptions::default()
    };
    let plain = slice.bytes.clone();
    let (sealed, summary) = tokio::task::spawn_blocking(move || -> Result<_> {
        use std::io::Write;
        let mut writer = seal(Vec::new(), key.active(), ArtifactKind::Wal, &options)
            .map_err(|e| EngineError::from_format("sealing an oplog slice", e))?;
        writer
            .write_all(&plain)
            .map_err(|e| EngineError::Failed(format!("sealing an oplog slice: {e}")))?;
        writer
            .finish()
            .map_err(|e| EngineError::from_format("sealing an oplog slice", e))
    })
    .await
    .map_err(|e| EngineError::Failed(format!("sealing an oplog slice crashed: {e}")))??;
    let stored_sha: [u8; 32] = Sha256::digest(&sealed).into();
    let stored_size = sealed.len() as u64;
    let object_key = slice_key(&source.name, after, slice.last);
    let receipt = match put_bytes(&repo.sink, &object_key, sealed, cancel).await {
        Ok(r) => r,
        // Stored by an earlier run that died before recording it: it is re-written under
        // the same name only if its content is the same, which the sink checks.
        Err(e) => return Err(e.into()),
    };
    if receipt.size != stored_size || receipt.sha256 != stored_sha {
        return Err(EngineError::Integrity(format!(
            "repository {} stored {} bytes for {object_key}, but {stored_size} were sent; the slice is not recorded",
            repo.name, receipt.size
        )));
    }
    let record = OplogSliceRecord {
        source: source.name.clone(),
        after: to_ts(after),
        last: to_ts(slice.last),
        entries: slice.entries,
        repository: repo.name.clone(),
        object_key,
        plaintext_size: summary.plaintext_size,
        plaintext_sha256: hex::encode(summary.plaintext_sha256),
        stored_size,
        stored_sha256: hex::encode(stored_sha),
        archived_at: Utc::now(),
    };
    engine.catalog.record_oplog_slice(&record).await?;
    Ok(record)
}

/// Reads a slice back (decrypting and checking its content's checksum) into `path`.
pub(crate) async fn fetch_slice(
    engine: &Engine,
    slice: &OplogSliceRecord,
    path: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<()> {
    let repo = Repository::open_named(&engine.config, &slice.repository).await?;
    let sealed = read_object(&repo.sink, &slice.object_key, cancel).await?;
    let key = engine.key()?;
    let what = format!(
        "oplog slice {} in repository {}",
        slice.object_key, repo.name
    );
    let expected = slice.plaintext_sha256.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<()> {
        use std::io::Read;
        let (mut reader, _) = open_sealed(&sealed[..], &key, &ReadOptions::default())
            .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
        let mut plain = Vec::new();
        reader
            .read_to_end(&mut plain)
            .map_err(|e| crate::restore::stream_error(&what, e))?;
        let sha = hex::encode(Sha256::digest(&plain));
        if sha != expected {
            return Err(EngineError::Integrity(format!(
                "{what}: content SHA-256 {sha} is not the {expected} recorded when it was archived"
            )));
        }
        std::fs::write(&path, &plain)
            .map_err(|e| EngineError::Failed(format!("writing {}: {e}", path.display())))
    })
    .await
    .map_err(|e| EngineError::Failed(format!("reading an oplog slice crashed: {e}")))?
}

/// Records the slices of `repo` the catalog does not know (catalog rebuild): each is
/// decrypted to learn its content's checksum and entry count.
pub(crate) async fn rebuild_slices(
    engine: &Engine,
    repo: &Repository,
    cancel: &CancellationToken,
) -> Result<u64> {
    let mut imported = 0;
    for object in repo.sink.list(OPLOG_PREFIX, cancel).await? {
        let Some((source, file)) = object
            .key
            .strip_prefix(OPLOG_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let Some((after, last)) = file
            .strip_suffix(".bkpd")
            .and_then(|n| n.split_once('-'))
            .and_then(|(a, l)| Some((a.parse::<OpTime>().ok()?, l.parse::<OpTime>().ok()?)))
        else {
            tracing::warn!(key = %object.key, "not an oplog slice");
            continue;
        };
        if engine
            .catalog
            .oplog_slices(source)
            .await?
            .iter()
            .any(|s| s.last == to_ts(last))
        {
            continue;
        }
        let sealed = read_object(&repo.sink, &object.key, cancel).await?;
        let key = engine.key()?;
        let what = format!("{} in repository {}", object.key, repo.name);
        let stored_sha = hex::encode(Sha256::digest(&sealed));
        let stored_size = sealed.len() as u64;
        let (plain_size, plain_sha, entries) =
            tokio::task::spawn_blocking(move || -> Result<(u64, String, u64)> {
                use std::io::Read;
                let (mut reader, _) = open_sealed(&sealed[..], &key, &ReadOptions::default())
                    .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
                let mut plain = Vec::new();
                reader
                    .read_to_end(&mut plain)
                    .map_err(|e| crate::restore::stream_error(&what, e))?;
                let mut docs = mongo::backup::BsonFileReader::new(&plain[..]);
                let mut entries = 0;
                while docs
                    .next_raw()
                    .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?
                    .is_some()
                {
                    entries += 1;
                }
                Ok((
                    plain.len() as u64,
                    hex::encode(Sha256::digest(&plain)),
                    entries,
                ))
            })
            .await
            .map_err(|e| EngineError::Failed(format!("reading {} crashed: {e}", object.key)))??;
        engine
            .catalog
            .record_oplog_slice(&OplogSliceRecord {
                source: source.to_owned(),
                after: to_ts(after),
                last: to_ts(last),
                entries,
                repository: repo.name.clone(),
                object_key: object.key.clone(),
                plaintext_size: plain_size,
                plaintext_sha256: plain_sha,
                stored_size,
                stored_sha256: stored_sha,
                archived_at: object.modified.into(),
            })
            .await?;
        imported += 1;
    }
    Ok(imported)
}
