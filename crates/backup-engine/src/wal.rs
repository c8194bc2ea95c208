//! `backupctl wal-push %p` (PostgreSQL's archive_command) and `backupctl wal-fetch %f %p`
//! (its restore_command): WAL files go through the same compressed, encrypted, checksummed
//! format as backups, each as one sealed object (it carries its own wrapped key), and are
//! recorded in the catalog only once durable and verified.
//!
//! A push returns success only after the object is durable and recorded, so PostgreSQL never
//! recycles a segment that is not safely archived. Pushing a file again is a success when its
//! content is identical (PostgreSQL retries after a crash) and a loud failure when it differs.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::{CatalogError, WalFileRecord, WalRecorded};
use backup_core::format::{ArtifactKind, ReadOptions, WriteOptions};
use backup_core::manifest::layout;
use backup_core::sealed::{open_sealed, seal, SealedError};
use backup_sinks::{ChannelReader, ChannelWriter, Sink, SinkError};
use backup_sources::postgres::wal::WalFileName;

use crate::config::{SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::streams::HashingReader;
use crate::Engine;

#[derive(Debug, Clone, Serialize)]
pub struct WalPushOutcome {
    pub source: String,
    pub file_name: String,
    pub repository: String,
    pub plaintext_size: u64,
    pub stored_size: u64,
    /// It was archived before with the same content: nothing was uploaded.
    pub already_archived: bool,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WalFetchOutcome {
    pub source: String,
    pub file_name: String,
    pub repository: String,
    pub destination: PathBuf,
    pub size: u64,
}

/// The PostgreSQL source to archive for: `name`, or the only postgres source configured.
pub fn postgres_source<'a>(engine: &'a Engine, name: Option<&str>) -> Result<&'a SourceConfig> {
    let config = &engine.config;
    let source = match name {
        Some(name) => config.source(name)?.1,
        None => {
            let mut postgres = config
                .sources
                .iter()
                .filter(|s| matches!(s.kind, SourceKindConfig::Postgres { .. }));
            match (postgres.next(), postgres.next()) {
                (Some(only), None) => only,
                (None, _) => {
                    return Err(EngineError::Usage(format!(
                        "no source of kind \"postgres\" in {}",
                        config.origin
                    )))
                }
                (Some(_), Some(_)) => {
                    return Err(EngineError::Usage(
                        "several postgres sources are configured: name one with --source".into(),
                    ))
                }
            }
        }
    };
    if !matches!(source.kind, SourceKindConfig::Postgres { .. }) {
        return Err(EngineError::Usage(format!(
            "source {} is of kind {}, not postgres",
            source.name,
            source.kind.kind_name()
        )));
    }
    Ok(source)
}

fn parse_name(source: &SourceConfig, name: &str) -> Result<WalFileName> {
    let size = source.kind.wal_segment_size().unwrap_or_default();
    WalFileName::parse(name, size).map_err(|e| EngineError::Usage(e.to_string()))
}

/// The timeline a WAL file belongs to.
fn timeline_of(name: &WalFileName) -> u32 {
    match name {
        WalFileName::Segment(s) | WalFileName::Partial(s) => s.timeline,
        WalFileName::BackupHistory { segment, .. } => segment.timeline,
        WalFileName::History { timeline } => *timeline,
    }
}

/// SHA-256 and size of a local file.
fn hash_file(path: &Path) -> io::Result<(u64, [u8; 32])> {
    let mut reader = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut reader, &mut io::sink())?;
    Ok(reader.finish())
}

fn sealed_error(what: &str, e: SealedError) -> EngineError {
    match e {
        SealedError::WrongKey { .. } => EngineError::Key(format!("{what}: {e}")),
        e if e.is_integrity_failure() => EngineError::Integrity(format!("{what}: {e}")),
        e => EngineError::Failed(format!("{what}: {e}")),
    }
}

/// `backupctl wal-push PATH`: archives one WAL file of `source`.
pub async fn wal_push(
    engine: &Engine,
    source: &SourceConfig,
    path: &Path,
    cancel: &CancellationToken,
) -> Result<WalPushOutcome> {
    let started = Instant::now();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Usage(format!("{}: not a WAL file path", path.display())))?
        .to_owned();
    let parsed = parse_name(source, &file_name)?;
    let local = path.to_path_buf();
    let (plaintext_size, plaintext_sha) = tokio::task::spawn_blocking(move || hash_file(&local))
        .await
        .map_err(|e| EngineError::Failed(format!("hashing {file_name} crashed: {e}")))?
        .map_err(|e| EngineError::Failed(format!("reading {}: {e}", path.display())))?;
    let mut outcome = WalPushOutcome {
        source: source.name.clone(),
        file_name: file_name.clone(),
        repository: source.repository.clone(),
        plaintext_size,
        stored_size: 0,
        already_archived: false,
        seconds: 0.0,
    };
    if let Some(existing) =
        archived_already(engine, source, &file_name, (plaintext_size, plaintext_sha)).await?
    {
        outcome.already_archived = true;
        outcome.stored_size = existing.stored_size;
        outcome.seconds = started.elapsed().as_secs_f64();
        return Ok(outcome);
    }

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
    let object_key = layout::wal_key(&source.name, &file_name);
    let options = WriteOptions {
        zstd_level: engine.config.pipeline.compression_level,
        ..WriteOptions::default()
    };
    let (tx, rx) = mpsc::channel(4);
    let local = path.to_path_buf();
    let producer = {
        let key = engine.key()?;
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut input = std::fs::File::open(&local)
                .map_err(|e| EngineError::Failed(format!("reading {}: {e}", local.display())))?;
            let mut writer = seal(
                ChannelWriter::new(tx),
                key.active(),
                ArtifactKind::Wal,
                &options,
            )
            .map_err(|e| EngineError::from_format("sealing WAL", e))?;
            io::copy(&mut input, &mut writer)
                .map_err(|e| EngineError::Failed(format!("reading {}: {e}", local.display())))?;
            let (out, summary) = writer
                .finish()
                .map_err(|e| EngineError::from_format("sealing WAL", e))?;
            out.finish()
                .map_err(|e| EngineError::Failed(format!("writing WAL: {e}")))?;
            Ok(summary)
        })
    };
    let (put, produced) = tokio::join!(repo.sink.put(&object_key, rx, cancel), producer);
    let summary =
        produced.map_err(|e| EngineError::Failed(format!("sealing {object_key} crashed: {e}")))?;
    let (stored_size, stored_sha) = match (put, summary) {
        (Ok(receipt), Ok(summary)) => {
            if summary.plaintext_sha256 != plaintext_sha {
                // Not what was hashed first: drop it, so the retry stores the final content.
                let _ = repo.sink.delete(&object_key, cancel).await;
                return Err(EngineError::Failed(format!(
                    "{}: the file changed while it was being archived; PostgreSQL will retry",
                    path.display()
                )));
            }
            // The sink hashed what it stored; that is the object's checksum (the sealed
            // prefix is outside the artifact summary's stored hash).
            (receipt.size, receipt.sha256)
        }
        // Stored by an earlier push that died before recording it: keep it if it holds
        // exactly this file.
        (Err(SinkError::AlreadyExists { .. }), _) => {
            adopt_existing(&repo, engine.key()?, &object_key, plaintext_sha, cancel).await?
        }
        (Err(e), _) if !matches!(e, SinkError::Body { .. }) => return Err(e.into()),
        (_, Err(e)) => return Err(e),
        (Err(e), Ok(_)) => return Err(e.into()),
    };
    let recorded = engine
        .catalog
        .record_wal_file(&WalFileRecord {
            source: source.name.clone(),
            file_name: file_name.clone(),
            timeline: timeline_of(&parsed),
            repository: repo.name.clone(),
            object_key,
            plaintext_size,
            plaintext_sha256: hex::encode(plaintext_sha),
            stored_size,
            stored_sha256: hex::encode(stored_sha),
            archived_at: Utc::now(),
        })
        .await
        .map_err(conflict)?;
    outcome.already_archived = recorded == WalRecorded::AlreadyArchived;
    outcome.repository = repo.name;
    outcome.stored_size = stored_size;
    outcome.seconds = started.elapsed().as_secs_f64();
    tracing::info!(source = %source.name, file = %outcome.file_name, bytes = plaintext_size, "WAL archived");
    Ok(outcome)
}

/// The catalog's record of `file_name` when it was archived with exactly this content
/// (`(size, SHA-256)`); `None` when it is not archived; a loud error when it was archived with
/// other content, since PostgreSQL never rewrites a WAL file.
async fn archived_already(
    engine: &Engine,
    source: &SourceConfig,
    file_name: &str,
    (size, sha): (u64, [u8; 32]),
) -> Result<Option<WalFileRecord>> {
    let Some(existing) = engine.catalog.wal_file(&source.name, file_name).await? else {
        return Ok(None);
    };
    if existing.plaintext_sha256 == hex::encode(sha) && existing.plaintext_size == size {
        return Ok(Some(existing));
    }
    Err(conflict(CatalogError::WalConflict {
        source_name: source.name.clone(),
        file_name: file_name.to_owned(),
        archived_sha256: existing.plaintext_sha256,
        new_sha256: hex::encode(sha),
    }))
}

fn conflict(e: CatalogError) -> EngineError {
    match e {
        e @ CatalogError::WalConflict { .. } => EngineError::Integrity(e.to_string()),
        other => other.into(),
    }
}

/// Reads an existing sealed WAL object: Ok((stored size, stored SHA-256)) if it decrypts to
/// exactly `plaintext_sha`, an error otherwise.
async fn adopt_existing(
    repo: &Repository,
    key: backup_core::keys::Keyring,
    object_key: &str,
    plaintext_sha: [u8; 32],
    cancel: &CancellationToken,
) -> Result<(u64, [u8; 32])> {
    let rx = repo.sink.get(object_key, cancel).await?;
    let what = format!("repository {} object {object_key}", repo.name);
    let (plain, stored) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut input = HashingReader::new(ChannelReader::new(rx));
        let plain = {
            let (reader, _) = open_sealed(&mut input, &key, &ReadOptions::default())
                .map_err(|e| sealed_error(&what, e))?;
            let mut hashing = HashingReader::new(reader);
            io::copy(&mut hashing, &mut io::sink())
                .map_err(|e| crate::restore::stream_error(&what, e))?;
            hashing.finish().1
        };
        Ok((plain, input.finish()))
    })
    .await
    .map_err(|e| EngineError::Failed(format!("reading {object_key} crashed: {e}")))??;
    if plain != plaintext_sha {
        return Err(EngineError::Integrity(format!(
            "repository {} already holds {object_key} with different content; PostgreSQL never \
             rewrites a WAL file, so two clusters may be archiving to the same source",
            repo.name
        )));
    }
    Ok(stored)
}

/// `backupctl wal-fetch FILE DEST`: restores one archived WAL file of `source` to `dest`
/// (written beside it and renamed into place, so PostgreSQL never sees a partial file).
pub async fn wal_fetch(
    engine: &Engine,
    source: &SourceConfig,
    file_name: &str,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<WalFetchOutcome> {
    parse_name(source, file_name)?;
    let record = engine
        .catalog
        .wal_file(&source.name, file_name)
        .await?
        .ok_or_else(|| {
            EngineError::Failed(format!(
                "WAL file {file_name} of source {} is not archived",
                source.name
            ))
        })?;
    // The original first, then its copies in other repositories.
    let mut places = vec![(record.repository.clone(), record.object_key.clone())];
    places.extend(
        engine
            .catalog
            .wal_copies(&source.name, file_name)
            .await?
            .into_iter()
            .map(|c| (c.repository, c.object_key)),
    );
    let mut last_error = None;
    for (repository, object_key) in &places {
        match fetch_from(
            engine, source, &record, repository, object_key, dest, cancel,
        )
        .await
        {
            Ok(outcome) => return Ok(outcome),
            Err(e @ EngineError::Key(_)) => return Err(e),
            Err(e) => {
                if places.len() > 1 {
                    eprintln!("wal-fetch {file_name} from repository {repository} failed: {e}");
                }
                last_error = Some(e);
            }
        }
    }
    Err(last_error.expect("at least the original was tried"))
}

async fn fetch_from(
    engine: &Engine,
    source: &SourceConfig,
    record: &WalFileRecord,
    repository: &str,
    object_key: &str,
    dest: &Path,
    cancel: &CancellationToken,
) -> Result<WalFetchOutcome> {
    let file_name = record.file_name.as_str();
    let repo = Repository::open_named(&engine.config, repository).await?;
    let key = engine.key()?;
    let rx = repo.sink.get(object_key, cancel).await.map_err(|e| {
        if e.is_not_found() {
            EngineError::Integrity(format!(
                "WAL file {file_name} of source {} is recorded but its object {object_key} is missing from repository {}",
                source.name, repo.name
            ))
        } else {
            e.into()
        }
    })?;
    let partial = dest.with_file_name(format!(
        ".{}.backupd-partial",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal")
    ));
    let what = format!(
        "WAL file {file_name} ({object_key} in repository {})",
        repo.name
    );
    let (dest_owned, expected) = (dest.to_path_buf(), record.clone());
    let size = tokio::task::spawn_blocking(move || -> Result<u64> {
        let result = (|| {
            let mut input = HashingReader::new(ChannelReader::new(rx));
            let (mut reader, _) = open_sealed(&mut input, &key, &ReadOptions::default())
                .map_err(|e| sealed_error(&what, e))?;
            let mut out = std::fs::File::create(&partial)
                .map_err(|e| EngineError::Failed(format!("creating {}: {e}", partial.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = reader
                    .read(&mut buf)
                    .map_err(|e| crate::restore::stream_error(&what, e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(|e| {
                    EngineError::Failed(format!("writing {}: {e}", partial.display()))
                })?;
                size += n as u64;
            }
            if hex::encode(hasher.finalize()) != expected.plaintext_sha256
                || size != expected.plaintext_size
            {
                return Err(EngineError::Integrity(format!(
                    "{what}: decoded content does not match the checksum recorded at push time"
                )));
            }
            out.sync_all()
                .map_err(|e| EngineError::Failed(format!("syncing {}: {e}", partial.display())))?;
            std::fs::rename(&partial, &dest_owned).map_err(|e| {
                EngineError::Failed(format!("renaming into {}: {e}", dest_owned.display()))
            })?;
            Ok(size)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    })
    .await
    .map_err(|e| EngineError::Failed(format!("fetching {file_name} crashed: {e}")))??;
    let stored = if repository == record.repository {
        record.stored_size
    } else {
        engine
            .catalog
            .wal_copies(&source.name, file_name)
            .await
            .ok()
            .and_then(|c| c.into_iter().find(|c| c.repository == repository))
            .map_or(record.stored_size, |c| c.stored_size)
    };
    crate::report::record_gets(engine, &source.name, &repo.name, vec![(None, 1, stored)]).await;
    Ok(WalFetchOutcome {
        source: source.name.clone(),
        file_name: file_name.to_owned(),
        repository: repo.name.clone(),
        destination: dest.to_path_buf(),
        size,
    })
}

/// `backupctl check SOURCE`: whether the archived WAL is continuous from the oldest base
/// backup's start to the newest archived segment.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveCheck {
    pub source: String,
    pub ok: bool,
    /// The first segment replay needs (the oldest base backup's start, or the oldest archived
    /// segment without a base backup) and the newest archived one.
    pub from: Option<String>,
    pub to: Option<String>,
    pub timeline: Option<u32>,
    pub files_archived: u64,
    /// Missing segments in replay order (the first few), with their timelines.
    pub missing: Vec<MissingSegment>,
    /// Why the range cannot be checked, when it cannot (e.g. a timeline history is missing).
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MissingSegment {
    pub file_name: String,
    pub timeline: u32,
}

/// How many missing segments a check lists.
const MISSING_SHOWN: usize = 20;

pub async fn check_archive(
    engine: &Engine,
    source: &SourceConfig,
    cancel: &CancellationToken,
) -> Result<ArchiveCheck> {
    use backup_sources::postgres::wal::{missing_segments, SegmentName, TimelineHistory};
    let size = source.kind.wal_segment_size().unwrap_or_default();
    let files = engine.catalog.wal_files(&source.name).await?;
    let segments: Vec<SegmentName> = files
        .iter()
        .filter_map(|f| match WalFileName::parse(&f.file_name, size) {
            Ok(WalFileName::Segment(s)) => Some(s),
            _ => None,
        })
        .collect();
    let mut check = ArchiveCheck {
        source: source.name.clone(),
        ok: true,
        from: None,
        to: None,
        timeline: None,
        files_archived: files.len() as u64,
        missing: Vec::new(),
        problem: None,
    };
    let Some(to) = segments
        .iter()
        .max_by_key(|s| (s.segno, s.timeline))
        .copied()
    else {
        check.ok = false;
        check.problem = Some(format!(
            "no WAL segment of {} is archived: check archive_mode and archive_command \
             (`backupctl wal-push %p`)",
            source.name
        ));
        return Ok(check);
    };
    let bases = engine.catalog.postgres_backups(&source.name).await?;
    let from = match bases.first() {
        Some(base) => SegmentName::parse(&base.start_wal, size)
            .map_err(|e| EngineError::Integrity(format!("base backup {}: {e}", base.backup_id)))?,
        None => *segments
            .iter()
            .filter(|s| s.timeline == to.timeline)
            .min()
            .expect("`to` is on its own timeline"),
    };
    check.from = Some(from.file_name(size));
    check.to = Some(to.file_name(size));
    check.timeline = Some(to.timeline);
    let history = if to.timeline > 1 {
        let name = format!("{:08X}.history", to.timeline);
        match files.iter().find(|f| f.file_name == name) {
            Some(record) => {
                let text = read_wal_file(engine, record, cancel).await?;
                Some(
                    TimelineHistory::parse(to.timeline, &String::from_utf8_lossy(&text))
                        .map_err(|e| EngineError::Integrity(format!("{name}: {e}")))?,
                )
            }
            None => None,
        }
    } else {
        None
    };
    match missing_segments(
        segments.iter().copied(),
        from,
        to,
        history.as_ref(),
        size,
        MISSING_SHOWN,
    ) {
        Ok(missing) => {
            check.ok = missing.is_empty();
            check.missing = missing
                .into_iter()
                .map(|s| MissingSegment {
                    file_name: s.file_name(size),
                    timeline: s.timeline,
                })
                .collect();
        }
        Err(e) => {
            check.ok = false;
            check.problem = Some(e.to_string());
        }
    }
    Ok(check)
}

/// The content of a (small) archived WAL file, such as a timeline history.
async fn read_wal_file(
    engine: &Engine,
    record: &WalFileRecord,
    cancel: &CancellationToken,
) -> Result<Vec<u8>> {
    let repo = Repository::open_named(&engine.config, &record.repository).await?;
    let bytes = backup_sinks::read_object(&repo.sink, &record.object_key, cancel).await?;
    let key = engine.key()?;
    let what = format!("{} in repository {}", record.object_key, repo.name);
    let (mut reader, _) = open_sealed(io::Cursor::new(bytes), &key, &ReadOptions::default())
        .map_err(|e| sealed_error(&what, e))?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(|e| crate::restore::stream_error(&what, e))?;
    Ok(out)
}

/// Spooled files the background pusher works on, oldest name first.
fn spooled_files(spool: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(spool)
        .map_err(|e| EngineError::Failed(format!("reading spool {}: {e}", spool.display())))?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && e.file_type().is_ok_and(|t| t.is_file())
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

fn spool_of(source: &SourceConfig) -> Result<&Path> {
    source.kind.spool_directory().ok_or_else(|| {
        EngineError::Usage(format!(
            "wal-push --async needs `spool-directory` on source {}",
            source.name
        ))
    })
}

/// `wal-push --async PATH`: copies the file into the source's spool (fsynced, renamed into
/// place, directory fsynced) and returns; a background `wal-push --drain-spool` pushes it.
/// Identical files are accepted again; different content under a spooled or archived name is
/// refused, as in the synchronous mode.
pub async fn wal_push_async(
    engine: &Engine,
    source: &SourceConfig,
    path: &Path,
) -> Result<WalPushOutcome> {
    let started = Instant::now();
    let spool = spool_of(source)?.to_path_buf();
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Usage(format!("{}: not a WAL file path", path.display())))?
        .to_owned();
    parse_name(source, &file_name)?;
    let (size, sha) = hash_file(path)
        .map_err(|e| EngineError::Failed(format!("reading {}: {e}", path.display())))?;
    let mut outcome = WalPushOutcome {
        source: source.name.clone(),
        file_name: file_name.clone(),
        repository: source.repository.clone(),
        plaintext_size: size,
        stored_size: 0,
        already_archived: false,
        seconds: 0.0,
    };
    if archived_already(engine, source, &file_name, (size, sha))
        .await?
        .is_some()
    {
        outcome.already_archived = true;
        return Ok(outcome);
    }
    std::fs::create_dir_all(&spool)
        .map_err(|e| EngineError::Failed(format!("creating spool {}: {e}", spool.display())))?;
    let spooled = spool.join(&file_name);
    if spooled.exists() {
        let (_, spooled_sha) = hash_file(&spooled)
            .map_err(|e| EngineError::Failed(format!("reading {}: {e}", spooled.display())))?;
        if spooled_sha != sha {
            return Err(EngineError::Integrity(format!(
                "{} is already spooled with different content; PostgreSQL never rewrites a WAL file",
                spooled.display()
            )));
        }
    } else {
        let temp = spool.join(format!(".{file_name}.spooling"));
        let io = |what: &str, e: io::Error| EngineError::Failed(format!("{what}: {e}"));
        std::fs::copy(path, &temp).map_err(|e| io(&format!("spooling {file_name}"), e))?;
        std::fs::File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing the spooled file", e))?;
        std::fs::rename(&temp, &spooled).map_err(|e| io("spooling", e))?;
        std::fs::File::open(&spool)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing the spool directory", e))?;
    }
    start_drainer(engine, source, &spool);
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Starts a detached `wal-push --drain-spool` unless one is running (it takes the lock).
fn start_drainer(engine: &Engine, source: &SourceConfig, spool: &Path) {
    if drain_lock(spool).is_none() {
        return; // held: a drainer runs, and it rechecks the spool before it exits
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spool.join(".drain.log"));
    let mut command = std::process::Command::new(exe);
    if let Ok(config) = std::fs::canonicalize(&engine.config.origin) {
        command.arg("--config").arg(config);
    }
    command
        .args(["wal-push", "--drain-spool", "--source", &source.name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    if let Ok(log) = log {
        command.stderr(log);
    }
    use std::os::unix::process::CommandExt;
    // Its own process group: the archiver's exit must not take it down.
    command.process_group(0);
    if let Err(e) = command.spawn() {
        tracing::warn!(error = %e, "starting the spool drainer failed; the next push retries");
    }
}

/// The spool's drainer lock, if free.
fn drain_lock(spool: &Path) -> Option<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(spool.join(".drain.lock"))
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// What a drainer pushed.
#[derive(Debug, Clone, Serialize, Default)]
pub struct DrainReport {
    pub pushed: u64,
    pub failed: u64,
}

/// Pushes to push in parallel from a spool.
const DRAIN_PARALLEL: usize = 4;
/// Failed rounds before a drainer gives up (the next `wal-push --async` starts another).
const DRAIN_ROUNDS: u32 = 5;

/// `wal-push --drain-spool`: pushes every spooled file (several at once), deleting each once
/// it is archived, until the spool is empty. One drainer per spool (a lock file).
pub async fn drain_spool(
    engine: std::sync::Arc<Engine>,
    source: SourceConfig,
    cancel: &CancellationToken,
) -> Result<DrainReport> {
    let spool = spool_of(&source)?.to_path_buf();
    let mut report = DrainReport::default();
    let mut failed_rounds = 0;
    loop {
        let Some(lock) = drain_lock(&spool) else {
            return Ok(report);
        };
        loop {
            let files = spooled_files(&spool)?;
            if files.is_empty() || cancel.is_cancelled() {
                break;
            }
            let mut round_failed = false;
            for chunk in files.chunks(DRAIN_PARALLEL) {
                let mut tasks = tokio::task::JoinSet::new();
                for file in chunk {
                    let (engine, source, file, cancel) =
                        (engine.clone(), source.clone(), file.clone(), cancel.clone());
                    tasks.spawn(async move {
                        let result = wal_push(&engine, &source, &file, &cancel).await;
                        (file, result)
                    });
                }
                while let Some(joined) = tasks.join_next().await {
                    let Ok((file, result)) = joined else {
                        round_failed = true;
                        continue;
                    };
                    match result {
                        Ok(_) => {
                            let _ = std::fs::remove_file(&file);
                            report.pushed += 1;
                        }
                        Err(e) => {
                            eprintln!("wal-push --drain-spool: {}: {e}", file.display());
                            report.failed += 1;
                            round_failed = true;
                        }
                    }
                }
            }
            if round_failed {
                failed_rounds += 1;
                if failed_rounds >= DRAIN_ROUNDS {
                    return Ok(report);
                }
                tokio::time::sleep(std::time::Duration::from_secs(1 << failed_rounds)).await;
            }
        }
        drop(lock);
        // A file spooled while we were releasing the lock would wait for the next push.
        if spooled_files(&spool)?.is_empty() || cancel.is_cancelled() {
            return Ok(report);
        }
    }
}
