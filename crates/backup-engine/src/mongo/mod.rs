//! MongoDB sources: logical backups through the driver into the normal artifact pipeline,
//! and restores of them into a server, replaying the oplog to a consistent point.
//!
//! A backup holds, under `mongodb/` in its data stream (each an entry of its manifest,
//! checksummed like any file):
//!
//! - `mongodb/collections.json`: every collection's metadata below, as one array, first in
//!   the stream (backups before 2026-12-06 lack it);
//! - `mongodb/<db>/<collection>.metadata.json`: type, options and index definitions
//!   (canonical extended JSON);
//! - `mongodb/<db>/<collection>.bson`: every document, concatenated BSON (no file for views);
//! - `mongodb/oplog.bson`: the oplog entries after `start` up to `end`;
//! - `mongodb/position.json`: the [`MongoPosition`], also kept in the manifest footer.
//!
//! A restore restores those files into a staging directory (with every check and failover
//! of a file restore) and writes them into the target server as they arrive: once
//! `collections.json` is there it prepares every target, and it loads each collection as
//! soon as its `.bson` file is restored and checked, while later files are still coming;
//! then it replays the oplog up to the chosen point.

pub mod archive;
pub mod atlas;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, TimeZone, Utc};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use backup_catalog::{MongoBackupRecord, OplogSliceRecord};
use backup_core::manifest::MongoPosition;
use backup_sources::files::{EntryRecorder, TreeBackup};
use backup_sources::mongodb::backup::{BsonFileReader, DocumentStream};
use backup_sources::mongodb::bson::Document;
use backup_sources::mongodb::oplog::{apply_entry, Applied, RestoreTarget};
use backup_sources::mongodb::watch::WriteWatch;
pub use backup_sources::mongodb::OpTime;
use backup_sources::mongodb::{
    self as mongo, entry_ts, file_stem, CollectionSpec, MongoError, NamespaceFilter,
};

use crate::config::{MongoSourceConfig, SourceConfig, SourceKindConfig};
use crate::error::{EngineError, Result};
use crate::restore::BackupSelector;
use crate::{Engine, Progress};

/// Where a backup's MongoDB files live in its tree.
pub const MONGODB_LABEL: &str = "mongodb";
const POSITION_FILE: &str = "mongodb/position.json";
const COLLECTIONS_FILE: &str = "mongodb/collections.json";
const OPLOG_FILE: &str = "mongodb/oplog.bson";

pub(crate) fn mongo_error(e: MongoError) -> EngineError {
    match e {
        MongoError::Invalid(_) | MongoError::OplogRolledOver { .. } => {
            EngineError::Failed(e.to_string())
        }
        other => EngineError::Failed(other.to_string()),
    }
}

/// The catalog row of a backup's oplog range.
pub fn mongo_record(
    backup_id: backup_core::BackupId,
    p: &MongoPosition,
) -> Result<MongoBackupRecord> {
    let parse = |t: &str| -> Result<OpTime> {
        t.parse()
            .map_err(|e| EngineError::Integrity(format!("backup {backup_id}: {e}")))
    };
    Ok(MongoBackupRecord {
        backup_id,
        start: archive::to_ts(parse(&p.start)?),
        end: archive::to_ts(parse(&p.end)?),
        start_time: p.start_time,
        end_time: p.end_time,
    })
}

/// The mongodb settings of `source`, or a usage error naming its kind.
pub fn mongo_source(source: &SourceConfig) -> Result<&MongoSourceConfig> {
    match &source.kind {
        SourceKindConfig::Mongodb(m) => Ok(m),
        other => Err(EngineError::Usage(format!(
            "source {} is a {} source, not a mongodb one",
            source.name,
            other.kind_name()
        ))),
    }
}

/// Connects to a source's server with its (secret) URI.
pub async fn connect_source(
    source: &SourceConfig,
    m: &MongoSourceConfig,
) -> Result<mongo::mongodb::Client> {
    let uri = m
        .uri()
        .map_err(|e| EngineError::Usage(format!("source {}: {e}", source.name)))?;
    mongo::connect(&uri, m.read_preference)
        .await
        .map_err(|e| EngineError::Failed(format!("source {}: {e}", source.name)))
}

/// A logical backup in progress: the position it starts from and what it will copy.
pub struct MongoSnapshot {
    client: mongo::mongodb::Client,
    handle: tokio::runtime::Handle,
    filter: NamespaceFilter,
    start: OpTime,
    start_time: DateTime<Utc>,
    /// Opened before `start`: proves a copy during which nothing was written.
    watch: Option<WriteWatch>,
    collections: Vec<CollectionSpec>,
    /// Count each collection's documents at the end (the source's drill checks counts).
    count_documents: bool,
}

impl MongoSnapshot {
    /// Takes the position the copy starts from, then lists the collections to copy.
    pub async fn start(source: &SourceConfig) -> Result<MongoSnapshot> {
        let m = mongo_source(source)?;
        let client = connect_source(source, m).await?;
        let start_time = Utc::now();
        let watch = WriteWatch::open(&client).await;
        let start = mongo::backup_start(&client).await.map_err(mongo_error)?;
        let filter = m.filter();
        let collections = mongo::list_collections(&client, &filter)
            .await
            .map_err(mongo_error)?;
        tracing::info!(source = %source.name, %start, collections = collections.len(), "MongoDB backup started");
        Ok(MongoSnapshot {
            client,
            handle: tokio::runtime::Handle::current(),
            filter,
            start,
            start_time,
            watch,
            collections,
            count_documents: source.drill.as_ref().is_some_and(|d| d.wants_row_counts()),
        })
    }

    /// Blocking (off the executor): copies every collection, then the oplog up to the
    /// position reached at the end, into `tree`.
    pub fn write<W: std::io::Write, R: EntryRecorder>(
        mut self,
        tree: &mut TreeBackup<'_, W, R>,
    ) -> Result<MongoPosition> {
        // First in the stream: a restore prepares every target from it and loads each
        // collection while the later files are still being restored.
        tree.add_file(
            COLLECTIONS_FILE,
            &collections_json(&self.collections),
            0o600,
        )?;
        let mut documents = 0;
        for spec in &self.collections {
            let stem = format!("{MONGODB_LABEL}/{}/{}", spec.db, file_stem(&spec.name));
            tree.add_file(
                &format!("{stem}.metadata.json"),
                &spec.metadata_json(),
                0o600,
            )?;
            if spec.kind == "view" {
                continue;
            }
            let mut stream = DocumentStream::collection(
                self.handle.clone(),
                &self.client,
                &spec.db,
                &spec.name,
                self.start,
            )
            .map_err(mongo_error)?;
            tree.add_stream(&format!("{stem}.bson"), &mut stream, 0o600)?;
            documents += stream.documents();
        }
        let nothing_written = match self.watch.take() {
            Some(watch) => self
                .handle
                .block_on(watch.nothing_written_since(&self.client, self.start)),
            None => false,
        };
        tracing::info!(
            nothing_written,
            "the write watch {}",
            if nothing_written {
                "shows no write during the copy: no oplog read"
            } else {
                "did not prove the copy write-free: reading the oplog"
            }
        );
        let (end, oplog_entries) = if nothing_written {
            // An empty range: no oplog read, and nothing to check for a rollover.
            tree.add_file(OPLOG_FILE, &[], 0o600)?;
            (self.start, 0)
        } else {
            self.copy_oplog(tree)?
        };
        // Right after the end position, so the counts match the backup's end as closely as
        // a live server allows (a drill restores to exactly that end).
        let mut document_counts = std::collections::BTreeMap::new();
        if self.count_documents {
            for spec in self.collections.iter().filter(|s| s.kind != "view") {
                let n = self
                    .handle
                    .block_on(mongo::restore::count_documents(
                        &self.client,
                        &spec.db,
                        &spec.name,
                    ))
                    .map_err(mongo_error)?;
                document_counts.insert(spec.namespace(), n);
            }
        }
        let position = MongoPosition {
            document_counts,
            start: self.start.to_string(),
            end: end.to_string(),
            start_time: self.start_time,
            end_time: Utc::now(),
            collections: self.collections.len() as u64,
            documents,
            oplog_entries,
        };
        let mut json = serde_json::to_vec_pretty(&position).expect("positions serialise");
        json.push(b'\n');
        tree.add_file(POSITION_FILE, &json, 0o600)?;
        tracing::info!(start = %self.start, %end, documents, "MongoDB backup copied");
        Ok(position)
    }

    /// Copies the oplog entries after `start` into `tree`; returns the newest entry read
    /// (the backup's end; `start` when there was none) and how many were kept.
    fn copy_oplog<W: std::io::Write, R: EntryRecorder>(
        &self,
        tree: &mut TreeBackup<'_, W, R>,
    ) -> Result<(OpTime, u64)> {
        // The end is the newest entry this one read finds: a server that answers any oplog
        // read with a scan of all of it (SecantusDB) scans it once per backup.
        let mut oplog = DocumentStream::oplog(
            self.handle.clone(),
            &self.client,
            self.start,
            self.filter.clone(),
        )
        .map_err(mongo_error)?;
        tree.add_stream(OPLOG_FILE, &mut oplog, 0o600)?;
        // Entries lost to a rollover during the copy would make the backup inconsistent. An
        // empty range cannot have lost any (a rollover needs newer entries), and the start's
        // own entry, when read, proves nothing before it went either.
        if oplog.newest().is_some() && !oplog.start_seen() {
            self.handle
                .block_on(mongo::check_not_rolled_past(&self.client, self.start))
                .map_err(mongo_error)?;
        }
        Ok((oplog.newest().unwrap_or(self.start), oplog.documents()))
    }
}

/// Up to where a restore replays the oplog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// The backup's own consistent end.
    BackupEnd,
    /// This oplog position (entries up to and including it).
    At(OpTime),
}

/// How to restore a MongoDB backup.
#[derive(Debug, Clone, Default)]
pub struct MongoRestoreOptions {
    /// Where to restore (a secret: never logged).
    pub target_uri: String,
    /// Only these namespaces (`db`, `db.*`, `db.coll`); everything when empty.
    pub namespaces: Vec<String>,
    /// Restore under this database name (the backup, or the namespaces chosen, must be of
    /// one database).
    pub rename_to: Option<String>,
    /// Restore each database `db` as `{prefix}{db}` (a drill's scratch databases).
    pub database_prefix: Option<String>,
    /// Drop target collections that exist instead of refusing.
    pub drop: bool,
    /// Collections loaded at once (0 or 1: one after another). mongorestore loads 4, which
    /// helps a server that inserts into several collections in parallel (mongod) and slows
    /// one that does not (SecantusDB: a quarter of the speed in docs/benchmarks.md).
    pub parallel_collections: usize,
    /// Where the backup's files are staged (default: a temp dir, removed afterwards).
    pub staging: Option<PathBuf>,
    pub restore: crate::restore::RestoreOptions,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MongoRestoreOutcome {
    pub backup_id: backup_core::BackupId,
    pub source: String,
    pub repository: String,
    pub collections: u64,
    pub documents: u64,
    pub indexes: u64,
    pub oplog_entries_applied: u64,
    /// Bytes of the backup fetched and staged.
    pub bytes: u64,
    /// The databases written to, as named in the target.
    pub databases: Vec<String>,
    /// The oplog position the target now reflects.
    pub restored_to: String,
    pub restored_to_time: DateTime<Utc>,
    pub seconds: f64,
}

/// Restores the backup `selector` names into `options.target_uri`, replaying its oplog to
/// `point` (which must lie within the backup's range).
pub async fn run_mongo_restore(
    engine: &Engine,
    selector: &BackupSelector,
    point: RestorePoint,
    options: &MongoRestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<MongoRestoreOutcome> {
    restore_inner(engine, selector, point, &[], options, progress, cancel).await
}

/// One stretch of oplog a source can be restored to: from the end of `backup` through the
/// archived slices that continue it without a gap.
#[derive(Debug, Clone)]
pub struct RestorableRange {
    pub backup: MongoBackupRecord,
    pub from: OpTime,
    pub to: OpTime,
    pub slices: Vec<OplogSliceRecord>,
}

impl RestorableRange {
    fn describe(&self) -> String {
        format!(
            "{} ({}) to {} ({}) from backup {}",
            self.from,
            optime_time(self.from).to_rfc3339(),
            self.to,
            optime_time(self.to).to_rfc3339(),
            self.backup.backup_id
        )
    }
}

/// The ranges `source` can be restored to, oldest backup first.
pub async fn restorable_ranges(engine: &Engine, source: &str) -> Result<Vec<RestorableRange>> {
    let slices = engine.catalog.oplog_slices(source).await?;
    let mut ranges = Vec::new();
    for backup in engine.catalog.mongo_backups(source).await? {
        let from = archive::from_ts(backup.end);
        let mut to = from;
        let mut chain = Vec::new();
        for slice in &slices {
            let (after, last) = (archive::from_ts(slice.after), archive::from_ts(slice.last));
            if last <= to {
                continue;
            }
            if after > to {
                break;
            }
            chain.push(slice.clone());
            to = last;
        }
        ranges.push(RestorableRange {
            backup,
            from,
            to,
            slices: chain,
        });
    }
    Ok(ranges)
}

/// `restore SOURCE --point-in-time TS`: restores the newest backup whose range holds `at`
/// (or `backup`, when given) and replays the oplog (its own, then the archived slices) up to
/// `at`. A time outside every range is refused, naming the ranges.
pub async fn run_mongo_pitr(
    engine: &Engine,
    source: &str,
    at: OpTime,
    backup: Option<&str>,
    options: &MongoRestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<MongoRestoreOutcome> {
    let only = match backup {
        Some(prefix) => Some(engine.catalog.find_backup_by_prefix(prefix).await?.id),
        None => None,
    };
    let ranges: Vec<RestorableRange> = restorable_ranges(engine, source)
        .await?
        .into_iter()
        .filter(|r| only.is_none_or(|id| r.backup.backup_id == id))
        .collect();
    let Some(range) = ranges
        .iter()
        .filter(|r| r.from <= at && at <= r.to)
        .max_by_key(|r| r.from)
    else {
        let known = if ranges.is_empty() {
            "none: take a backup first".to_owned()
        } else {
            ranges
                .iter()
                .map(RestorableRange::describe)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(EngineError::Usage(format!(
            "{at} ({}) is outside the restorable range of source {source}: {known}",
            optime_time(at).to_rfc3339()
        )));
    };
    let slices: Vec<OplogSliceRecord> = range
        .slices
        .iter()
        .filter(|s| archive::from_ts(s.after) < at)
        .cloned()
        .collect();
    restore_inner(
        engine,
        &BackupSelector::Id(range.backup.backup_id.to_string()),
        RestorePoint::At(at),
        &slices,
        options,
        progress,
        cancel,
    )
    .await
}

async fn restore_inner(
    engine: &Engine,
    selector: &BackupSelector,
    point: RestorePoint,
    slices: &[OplogSliceRecord],
    options: &MongoRestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<MongoRestoreOutcome> {
    let started = Instant::now();
    let record = crate::restore::select_backup(engine, selector).await?;
    let target = RestoreTarget {
        only: NamespaceFilter {
            include: options.namespaces.clone(),
            exclude: vec![],
        },
        rename_to: options.rename_to.clone(),
        prefix: options.database_prefix.clone(),
    };
    target
        .only
        .check()
        .map_err(|e| EngineError::Usage(format!("--namespace: {e}")))?;
    let client = mongo::connect_target(&options.target_uri)
        .await
        .map_err(|e| EngineError::Failed(format!("restore target: {e}")))?;

    let (staging, _staging_guard) = match &options.staging {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("backupd-mongo-restore-")
                .tempdir()
                .map_err(|e| EngineError::Failed(format!("creating a staging directory: {e}")))?;
            (dir.path().to_path_buf(), Some(dir))
        }
    };
    // The files are restored into `staging` while they are loaded: each collection as soon
    // as its file is complete and checked. A failed staging stops the load (its error is the
    // one reported); a failed load cancels the staging.
    let files = Arc::new(StagedFiles::default());
    let mut staging_options = options.restore.clone();
    staging_options.on_file_restored = Some(files.hook());
    let staging_cancel = cancel.child_token();
    let staging_run = async {
        let result = crate::restore::run_restore(
            engine,
            &BackupSelector::Id(record.id.to_string()),
            &staging,
            &staging_options,
            progress.clone(),
            &staging_cancel,
        )
        .await;
        files.finish(result.is_ok());
        result
    };
    let load_stopped_staging = std::sync::atomic::AtomicBool::new(false);
    let load = async {
        let result = load_staged(&client, &staging, &files, point, &target, options, cancel).await;
        if result.is_err() && !files.finished() {
            load_stopped_staging.store(true, std::sync::atomic::Ordering::Relaxed);
            staging_cancel.cancel();
        }
        result
    };
    let (staged, loaded) = tokio::join!(staging_run, load);
    let (staged, loaded) = match (staged, loaded) {
        // A load that failed while the staging went on stopped it: its error is the cause.
        (_, Err(e)) if load_stopped_staging.load(std::sync::atomic::Ordering::Relaxed) => {
            return Err(e)
        }
        (Err(e), _) => return Err(e),
        (Ok(staged), loaded) => (staged, loaded?),
    };
    let Loaded {
        specs,
        mapped,
        documents,
        indexes,
        end,
        upto,
    } = loaded;

    let mut applied =
        replay_file(&client, &staging.join(OPLOG_FILE), upto, &target, cancel).await?;
    let mut reached = upto.min(end);
    for (n, slice) in slices.iter().enumerate() {
        let path = staging.join(format!("oplog-slice-{n}.bson"));
        archive::fetch_slice(engine, slice, &path, cancel).await?;
        applied += replay_file(&client, &path, upto, &target, cancel).await?;
        let _ = std::fs::remove_file(&path);
        reached = upto.min(archive::from_ts(slice.last));
    }
    tracing::info!(backup_id = %record.id, documents, applied, restored_to = %upto, "MongoDB restore done");
    Ok(MongoRestoreOutcome {
        backup_id: record.id,
        source: record.source.clone(),
        repository: staged.repository,
        collections: specs.len() as u64,
        documents,
        indexes,
        oplog_entries_applied: applied,
        bytes: staged.bytes,
        databases: mapped
            .iter()
            .map(|(db, _)| db.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
        restored_to: reached.to_string(),
        restored_to_time: optime_time(reached),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`load_staged`] wrote into the target.
struct Loaded {
    specs: Vec<CollectionSpec>,
    mapped: Vec<(String, String)>,
    documents: u64,
    indexes: u64,
    /// The backup's consistent end, and the point to replay the oplog to.
    end: OpTime,
    upto: OpTime,
}

/// Prepares the targets and loads every collection (documents, then indexes; views last)
/// as the staging restores their files, and returns once the staging has finished too.
async fn load_staged(
    client: &mongo::mongodb::Client,
    staging: &Path,
    files: &StagedFiles,
    point: RestorePoint,
    target: &RestoreTarget,
    options: &MongoRestoreOptions,
    cancel: &CancellationToken,
) -> Result<Loaded> {
    let root = staging.join(MONGODB_LABEL);
    // A backup that lists its collections up front is loaded as its files arrive; an older
    // one once all of it is staged.
    let listed = staging.join(COLLECTIONS_FILE);
    let mut specs = if files.wait_for(&listed).await? {
        read_collections_json(&listed)?
    } else {
        read_specs(&root)?
    };
    specs.retain(|s| target.map(&s.db, &s.name).is_some());
    if options.rename_to.is_some() {
        let dbs: std::collections::BTreeSet<&str> = specs.iter().map(|s| s.db.as_str()).collect();
        if dbs.len() > 1 {
            return Err(EngineError::Usage(format!(
                "--rename-to needs the namespaces restored to be of one database, but they are \
                 of {dbs:?}: choose one with --namespace"
            )));
        }
    }
    // Views last: they may be on collections restored here.
    specs.sort_by_key(|s| (s.kind == "view", s.db.clone(), s.name.clone()));
    let mapped: Vec<(String, String)> = specs
        .iter()
        .filter_map(|s| target.map(&s.db, &s.name))
        .collect();
    mongo::restore::prepare_targets(client, &mapped, options.drop)
        .await
        .map_err(|e| match e {
            MongoError::Invalid(m) => EngineError::Usage(m),
            other => mongo_error(other),
        })?;

    // Collections are created first and views last (they may be on them); the documents
    // and indexes of up to `parallel_collections` collections go in at once (mongorestore's
    // --numParallelCollections).
    let targets: Vec<_> = specs.iter().zip(&mapped).collect();
    for (spec, (db, coll)) in targets.iter().filter(|(s, _)| s.kind != "view") {
        mongo::restore::create_collection(client, spec, db, coll)
            .await
            .map_err(mongo_error)?;
    }
    // Collected first: a lazy iterator of closures inside the stream would make this
    // future not `Send` for every lifetime (rust-lang/rust#102211).
    let mut loads = Vec::new();
    for &(spec, (db, coll)) in &targets {
        if spec.kind == "view" {
            continue;
        }
        let file = root
            .join(&spec.db)
            .join(format!("{}.bson", file_stem(&spec.name)));
        loads.push(async move {
            if !files.wait_for(&file).await? {
                return Err(EngineError::Integrity(format!(
                    "{}: listed in the backup's collections but not in its files",
                    file.display()
                )));
            }
            let documents = mongo::restore::insert_file(client, file, db, coll)
                .await
                .map_err(mongo_error)?;
            mongo::restore::create_indexes(client, spec, db, coll)
                .await
                .map_err(mongo_error)?;
            Ok::<_, EngineError>((documents, spec.indexes.len() as u64))
        });
    }
    let mut loads =
        futures_util::stream::iter(loads).buffer_unordered(options.parallel_collections.max(1));
    let mut documents = 0;
    let mut indexes = 0;
    while let Some(loaded) = loads.next().await {
        if cancel.is_cancelled() {
            return Err(EngineError::Failed("restore cancelled".into()));
        }
        let (collection_documents, collection_indexes) = loaded?;
        documents += collection_documents;
        indexes += collection_indexes;
    }
    drop(loads);

    files.wait_finished().await?;
    let position: MongoPosition = read_json(&staging.join(POSITION_FILE))?;
    let end: OpTime = position.end.parse().map_err(mongo_error)?;
    let upto = match point {
        RestorePoint::BackupEnd => end,
        // Not reached from `restore --point-in-time`, which picks a backup that ends by `at`.
        RestorePoint::At(at) if at < end => {
            return Err(EngineError::Usage(format!(
                "the backup is consistent from {} ({}) on; {at} is before that",
                position.end, position.end_time
            )))
        }
        RestorePoint::At(at) => at,
    };
    for (spec, (db, coll)) in targets.iter().filter(|(s, _)| s.kind == "view") {
        mongo::restore::create_collection(client, spec, db, coll)
            .await
            .map_err(mongo_error)?;
    }
    Ok(Loaded {
        specs,
        mapped,
        documents,
        indexes,
        end,
        upto,
    })
}

/// The files a staging restore has completed so far, for loads that wait for theirs.
#[derive(Default)]
struct StagedFiles {
    state: std::sync::Mutex<Staged>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct Staged {
    paths: std::collections::HashSet<PathBuf>,
    /// Set when the staging ended: whether it succeeded.
    finished: Option<bool>,
}

impl StagedFiles {
    /// The callback that tells `self` about each restored file.
    fn hook(self: &Arc<Self>) -> crate::restore::FileRestoredHook {
        let files = self.clone();
        crate::restore::FileRestoredHook(Arc::new(move |path: &Path| {
            files.update(|s| {
                s.paths.insert(path.to_path_buf());
            })
        }))
    }

    fn finished(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finished
            .is_some()
    }

    fn finish(&self, succeeded: bool) {
        self.update(|s| s.finished = Some(succeeded));
    }

    fn update(&self, change: impl FnOnce(&mut Staged)) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_waiters();
    }

    /// Waits until `path` is restored (true), or the staging ended without it (false).
    async fn wait_for(&self, path: &Path) -> Result<bool> {
        self.wait(|s| s.paths.contains(path).then_some(true)).await
    }

    /// Waits until the staging has restored everything.
    async fn wait_finished(&self) -> Result<()> {
        self.wait(|_| None).await.map(|_| ())
    }

    /// Waits until `ready` answers or the staging ends; a failed staging is an error (the
    /// staging's own error is the one reported).
    async fn wait(&self, ready: impl Fn(&Staged) -> Option<bool>) -> Result<bool> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between still wakes it.
            changed.as_mut().enable();
            {
                let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(answer) = ready(&state) {
                    return Ok(answer);
                }
                match state.finished {
                    Some(true) => return Ok(false),
                    Some(false) => {
                        return Err(EngineError::Failed(
                            "restoring the backup's files failed".into(),
                        ))
                    }
                    None => {}
                }
            }
            changed.await;
        }
    }
}

/// `mongodb/collections.json`: every collection's metadata, as one JSON array.
fn collections_json(specs: &[CollectionSpec]) -> Vec<u8> {
    let mut json = b"[\n".to_vec();
    for (i, spec) in specs.iter().enumerate() {
        if i > 0 {
            json.extend_from_slice(b",\n");
        }
        json.extend_from_slice(spec.metadata_json().trim_ascii_end());
    }
    json.extend_from_slice(b"\n]\n");
    json
}

fn read_collections_json(path: &Path) -> Result<Vec<CollectionSpec>> {
    let bad = |why: String| EngineError::Integrity(format!("{}: {why}", path.display()));
    let list: Vec<serde_json::Value> = read_json(path)?;
    list.iter()
        .map(|value| {
            let bytes = serde_json::to_vec(value).map_err(|e| bad(e.to_string()))?;
            CollectionSpec::from_metadata_json(&bytes).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// The wall-clock time of an oplog position.
pub fn optime_time(t: OpTime) -> DateTime<Utc> {
    Utc.timestamp_opt(i64::from(t.seconds()), 0)
        .single()
        .unwrap_or_default()
}

/// Replays the entries of the oplog file at `path` up to `upto`; returns how many applied.
pub(crate) async fn replay_file(
    client: &mongo::mongodb::Client,
    path: &Path,
    upto: OpTime,
    target: &RestoreTarget,
    cancel: &CancellationToken,
) -> Result<u64> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::result::Result<Document, MongoError>>(256);
    let path = path.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(MongoError::Io(e)));
                return;
            }
        };
        let mut input = BsonFileReader::new(std::io::BufReader::with_capacity(1 << 20, file));
        loop {
            let next = input.next_raw().and_then(|raw| match raw {
                Some(raw) => Document::try_from(raw.as_ref()).map(Some).map_err(|e| {
                    MongoError::Invalid(format!("an oplog entry is not valid BSON: {e}"))
                }),
                None => Ok(None),
            });
            match next {
                Ok(Some(doc)) => {
                    if tx.blocking_send(Ok(doc)).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut applied = 0;
    while let Some(entry) = rx.recv().await {
        let entry = entry.map_err(mongo_error)?;
        if entry_ts(&entry).map_err(mongo_error)? > upto {
            break;
        }
        if cancel.is_cancelled() {
            return Err(EngineError::Failed("restore cancelled".into()));
        }
        if apply_entry(client, &entry, target)
            .await
            .map_err(mongo_error)?
            == Applied::Applied
        {
            applied += 1;
        }
    }
    drop(rx);
    let _ = reader.await;
    Ok(applied)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| {
        EngineError::Integrity(format!(
            "{}: {e}; this backup is not a complete MongoDB backup",
            path.display()
        ))
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Integrity(format!("{}: {e}", path.display())))
}

/// Every collection's metadata in a staged backup.
fn read_specs(root: &Path) -> Result<Vec<CollectionSpec>> {
    let mut specs = Vec::new();
    let dbs = std::fs::read_dir(root).map_err(|e| {
        EngineError::Integrity(format!("{}: {e}; not a MongoDB backup", root.display()))
    })?;
    for db in dbs {
        let db = db.map_err(|e| EngineError::Failed(format!("{}: {e}", root.display())))?;
        if !db.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        for file in std::fs::read_dir(db.path())
            .map_err(|e| EngineError::Failed(format!("{}: {e}", db.path().display())))?
        {
            let file = file.map_err(|e| EngineError::Failed(e.to_string()))?;
            let path = file.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".metadata.json"))
            {
                let bytes = std::fs::read(&path)
                    .map_err(|e| EngineError::Failed(format!("{}: {e}", path.display())))?;
                specs.push(
                    CollectionSpec::from_metadata_json(&bytes)
                        .map_err(|e| EngineError::Integrity(format!("{}: {e}", path.display())))?,
                );
            }
        }
    }
    Ok(specs)
}

/// Parses a `--point-in-time` for MongoDB: an oplog position `SECONDS.INCREMENT`, or a
/// time (RFC 3339 or `YYYY-MM-DD HH:MM:SS[+ZZ]`), meaning every entry up to the end of
/// that second.
pub fn parse_point(text: &str) -> Result<OpTime> {
    if let Ok(t) = text.parse::<OpTime>() {
        return Ok(t);
    }
    let time = DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%#z"))
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            EngineError::Usage(format!(
                "--point-in-time {text:?}: give an oplog position SECONDS.INCREMENT \
                 (1796160775.5) or a time like 2026-11-23T10:15:00Z"
            ))
        })?;
    let seconds = u32::try_from(time.timestamp())
        .map_err(|_| EngineError::Usage(format!("--point-in-time {text:?} is out of range")))?;
    Ok(OpTime::end_of_second(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_in_time_parse() {
        assert_eq!(
            parse_point("1796160775.5").unwrap(),
            OpTime::new(1796160775, 5)
        );
        let t = parse_point("2026-12-01T21:32:55Z").unwrap();
        assert_eq!(t, OpTime::end_of_second(1796160775));
        assert_eq!(parse_point("2026-12-01 21:32:55+00").unwrap(), t);
        assert!(parse_point("yesterday").is_err());
        assert_eq!(
            optime_time(OpTime::new(1796160775, 9)).timestamp(),
            1796160775
        );
    }
}
