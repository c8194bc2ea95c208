//! `backupctl backup SOURCE`: stream a source through the pipeline into a
//! repository, then record it in the catalog only once every object is
//! durable and its checksum matches what the pipeline produced.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_catalog::{ArtifactRecord, BackupCompletion, CopyRecord, NewBackup};
use backup_core::envelope::KeyEnvelope;
use backup_core::format::{ArtifactKind, ArtifactSummary, ArtifactWriter, WriteOptions};
use backup_core::keys::{DataKey, KeyId};
use backup_core::manifest::{
    layout, FileEntry, ManifestFooter, ManifestHeader, ManifestWriter, SkippedEntry,
    MANIFEST_FORMAT,
};
use backup_core::{ArtifactId, BackupId, TOOL_VERSION};
use backup_sinks::{ChannelWriter, PutReceipt, Sink, SinkError};
use backup_sources::files::{self, EntryRecorder, TreeStats};

use crate::config::SourceKindConfig;
use crate::error::{EngineError, Result};
use crate::policy::BackupType;
use crate::repo::Repository;
use crate::{Engine, Progress};
use backup_sinks::put_bytes;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// The name a PostgreSQL data directory is stored under in a base backup.
pub const PGDATA_LABEL: &str = "pgdata";
/// Chunks buffered between the pipeline and the sink (each up to one segment).
const SINK_QUEUE: usize = 4;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupOutcome {
    pub backup_id: BackupId,
    pub source: String,
    pub repository: String,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub skipped: u64,
    pub plaintext_bytes: u64,
    pub stored_bytes: u64,
    pub seconds: f64,
}

struct Produced {
    data: ArtifactSummary,
    manifest: ArtifactSummary,
    stats: TreeStats,
    mongo: Option<backup_core::manifest::MongoPosition>,
    atlas: Option<backup_core::manifest::AtlasSnapshotRef>,
}

/// Backs up `source_name` under a new backup id, labelled with `tag` if given.
pub async fn run_backup(
    engine: &Engine,
    source_name: &str,
    tag: Option<String>,
    backup_type: BackupType,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupOutcome> {
    run_backup_with_id(
        engine,
        source_name,
        tag,
        backup_type,
        BackupId::new(),
        progress,
        cancel,
    )
    .await
}

/// Like [`run_backup`], with an id chosen by the caller (e.g. a job that records it first).
pub async fn run_backup_with_id(
    engine: &Engine,
    source_name: &str,
    tag: Option<String>,
    backup_type: BackupType,
    backup_id: BackupId,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BackupOutcome> {
    if let Some(tag) = &tag {
        check_tag(tag)?;
    }
    let config = &engine.config;
    let (index, source) = config.source(source_name)?;
    config.check_source_paths(index)?;
    let previous = match backup_type {
        BackupType::Full => None,
        BackupType::Incr => Some(previous_backup(engine, source, cancel).await?),
    };
    let repo = Repository::open(config, config.repository(&source.repository)?).await?;
    let key = engine.key()?;
    if !repo.check_key(&key, cancel).await? {
        return Err(EngineError::Failed(format!(
            "repository {} has not been initialised; run `backupctl init`",
            repo.name
        )));
    }
    // Leftovers of an interrupted earlier run are cleaned before starting a new one.
    crate::gc::reap_interrupted(engine, cancel).await?;

    let started = Instant::now();
    let kind = source.kind.kind_name();
    engine.catalog.upsert_source(source_name, kind).await?;
    engine
        .catalog
        .begin_backup(&NewBackup {
            id: backup_id,
            source: source_name.to_owned(),
            repository: repo.name.clone(),
            backup_type: backup_type.as_str().into(),
            started_at: Utc::now(),
            host: crate::host_name(),
            pid: std::process::id(),
            tool_version: TOOL_VERSION.into(),
            tag: tag.clone(),
        })
        .await?;
    tracing::info!(%backup_id, source = source_name, repository = %repo.name, "backup started");

    let heartbeat = {
        let catalog = engine.catalog.clone();
        let stop = cancel.child_token();
        let guard = stop.clone().drop_guard();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => { let _ = catalog.heartbeat_backup(backup_id, Utc::now()).await; }
                }
            }
        });
        guard
    };

    let result = write_and_record(
        engine,
        &repo,
        backup_id,
        source_name,
        &source.kind,
        tag,
        previous,
        key.active(),
        progress,
        cancel,
    )
    .await;
    drop(heartbeat);
    match result {
        Ok(produced) => {
            let outcome = BackupOutcome {
                backup_id,
                source: source_name.to_owned(),
                repository: repo.name.clone(),
                files: produced.stats.files,
                dirs: produced.stats.dirs,
                symlinks: produced.stats.symlinks,
                skipped: produced.stats.skipped,
                plaintext_bytes: produced.data.plaintext_size,
                stored_bytes: produced.data.stored_size + produced.manifest.stored_size,
                seconds: started.elapsed().as_secs_f64(),
            };
            tracing::info!(%backup_id, files = outcome.files, bytes = outcome.plaintext_bytes, "backup complete");
            Ok(outcome)
        }
        Err(err) => {
            tracing::error!(%backup_id, error = %err, "backup failed");
            let _ = engine
                .catalog
                .fail_backup(backup_id, Utc::now(), &err.to_string())
                .await;
            // Best effort; `backupctl gc` removes whatever this leaves.
            let _ =
                crate::gc::delete_backup_objects(&repo, backup_id, &CancellationToken::new()).await;
            // A snapshot this backup took in Atlas is not kept without it.
            if let Err(e) =
                crate::mongo::atlas::delete_backup_snapshot(engine, source_name, backup_id).await
            {
                tracing::warn!(%backup_id, error = %e, "could not delete the failed backup's Atlas snapshot; `backupctl gc` retries");
            }
            // A snapshot this backup made is not kept without it.
            let _ =
                crate::elasticsearch::delete_backup_snapshot(engine, source_name, backup_id).await;
            // RDS: nor are its snapshots (one still `creating` may refuse: it says so).
            if let Err(e) =
                crate::rds::delete_backup_snapshots(engine, source_name, backup_id).await
            {
                tracing::warn!(%backup_id, error = %e, "could not delete the failed backup's RDS snapshots; delete them by their backupd:backup-id tag");
            }
            // Azure SQL: nor is a bacpac its export may have started (Azure's own backups are
            // never touched).
            if let Err(e) =
                crate::azure_sql::delete_backup_export(engine, source_name, backup_id).await
            {
                tracing::warn!(%backup_id, error = %e, "could not delete the failed backup's bacpac; delete it by hand");
            }
            Err(err)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn write_and_record(
    engine: &Engine,
    repo: &Repository,
    backup_id: BackupId,
    source_name: &str,
    source: &SourceKindConfig,
    tag: Option<String>,
    previous: Option<PreviousBackup>,
    key: &backup_core::keys::MasterKey,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Produced> {
    let backup_type = if previous.is_some() { "incr" } else { "full" };
    let parent = previous.as_ref().map(|p| p.id);
    let source_config = engine.config.source(source_name)?.1;
    let copy_targets = crate::replicate::copy_targets(source_config, tag.as_deref());
    let mut envelope = KeyEnvelope::new(backup_id, key);
    let data_id = ArtifactId::new();
    let manifest_id = ArtifactId::new();
    let data_dek = envelope.new_data_key(key, data_id);
    let manifest_dek = envelope.new_data_key(key, manifest_id);
    let data_key = layout::data_key(backup_id, data_id);
    let manifest_key = layout::manifest_key(backup_id, manifest_id);

    let (data_tx, data_rx) = mpsc::channel(SINK_QUEUE);
    let (manifest_tx, manifest_rx) = mpsc::channel(SINK_QUEUE);
    let header = ManifestHeader {
        format: MANIFEST_FORMAT,
        backup_id,
        source_name: source_name.to_owned(),
        source_kind: source.kind_name().to_owned(),
        backup_type: backup_type.into(),
        repository: repo.name.clone(),
        started_at: Utc::now(),
        host: crate::host_name(),
        tool_version: TOOL_VERSION.into(),
        key_id: key.id().clone(),
        tag,
    };
    let mut session = match source {
        SourceKindConfig::Postgres { connection, .. } => Some(
            crate::pgbackup::BaseBackupSession::start(
                connection,
                &format!("backupd {backup_id}"),
                source.wal_segment_size().unwrap_or_default(),
            )
            .await?,
        ),
        _ => None,
    };
    let mongo = match source {
        SourceKindConfig::Mongodb(_) => {
            Some(crate::mongo::MongoSnapshot::start(source_config).await?)
        }
        _ => None,
    };
    let atlas = match source {
        SourceKindConfig::Atlas(_) => Some(
            crate::mongo::atlas::take_snapshot(engine, source_config, backup_id, cancel).await?,
        ),
        _ => None,
    };
    // MySQL and Elasticsearch: the dump (or the snapshot's record) comes from a task of its
    // own and feeds the producer through a bounded channel.
    let (dump_task, dump_rx) = match source {
        SourceKindConfig::Mysql(mysql) => {
            let (tx, rx) = mpsc::channel(crate::mysql::DUMP_QUEUE);
            let (mysql, cancel) = (mysql.clone(), cancel.clone());
            // On a runtime of its own: sqlx's borrowed executors make the dump's future
            // not provably `Send`, so it cannot be a task of the shared runtime.
            let task = tokio::task::spawn_blocking(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| EngineError::Failed(format!("starting the MySQL dump: {e}")))?
                    .block_on(crate::mysql::dump(&mysql, tx, &cancel))
                    .map(Dumped::Mysql)
            });
            (Some(task), Some(rx))
        }
        SourceKindConfig::Elasticsearch(es) => {
            let (tx, rx) = mpsc::channel(crate::mysql::DUMP_QUEUE);
            let (es, cancel) = (es.clone(), cancel.clone());
            let count_documents = source_config
                .drill
                .as_ref()
                .is_some_and(|d| d.wants_row_counts());
            let task = tokio::spawn(async move {
                crate::elasticsearch::snapshot(&es, backup_id, count_documents, tx, &cancel)
                    .await
                    .map(Dumped::Elasticsearch)
            });
            (Some(task), Some(rx))
        }
        SourceKindConfig::Rds(rds) => {
            let (tx, rx) = mpsc::channel(crate::mysql::DUMP_QUEUE);
            let (rds, cancel, source) = (rds.clone(), cancel.clone(), source_name.to_owned());
            let task = tokio::spawn(async move {
                crate::rds::snapshot(&rds, &source, backup_id, tx, &cancel)
                    .await
                    .map(Dumped::Rds)
            });
            (Some(task), Some(rx))
        }
        SourceKindConfig::AzureBlob(blob) => {
            let (tx, rx) = mpsc::channel(crate::mysql::DUMP_QUEUE);
            let (blob, cancel) = (blob.clone(), cancel.clone());
            let task = tokio::spawn(async move {
                crate::azure_blob::dump(&blob, tx, &cancel)
                    .await
                    .map(Dumped::AzureBlob)
            });
            (Some(task), Some(rx))
        }
        SourceKindConfig::AzureSql(sql) => {
            let (tx, rx) = mpsc::channel(crate::mysql::DUMP_QUEUE);
            let (sql, cancel, source) = (sql.clone(), cancel.clone(), source_name.to_owned());
            let task = tokio::spawn(async move {
                crate::azure_sql::backup(&sql, &source, backup_id, tx, &cancel)
                    .await
                    .map(Dumped::AzureSql)
            });
            (Some(task), Some(rx))
        }
        _ => (None, None),
    };
    let (handshake, stop_parts) = match session.take() {
        Some(session) => {
            let (tree_done, tree_done_rx) = tokio::sync::oneshot::channel();
            let (stop_tx, stop_files) = std::sync::mpsc::channel();
            (
                Some(PostgresHandshake {
                    tree_done,
                    stop_files,
                }),
                Some((session, tree_done_rx, stop_tx)),
            )
        }
        None => (None, None),
    };
    let stopper = async move {
        let Some((session, tree_done_rx, stop_tx)) = stop_parts else {
            return Ok::<_, EngineError>(None);
        };
        // Also when the producer failed before reading everything: end the backup mode.
        let _ = tree_done_rx.await;
        let stopped = session.stop().await.map(|mut files| {
            files.position.parent_backup_id = parent;
            files
        });
        let _ = stop_tx.send(
            stopped
                .as_ref()
                .map(Clone::clone)
                .map_err(|e| e.to_string()),
        );
        let files = stopped?;
        // Right after the stop, so the counts match the backup's end as closely as a live
        // database allows (a drill restores to exactly that end).
        let row_counts = match (source, &source_config.drill) {
            (SourceKindConfig::Postgres { connection, .. }, Some(drill))
                if drill.wants_row_counts() =>
            {
                match crate::drill::count_rows(connection).await {
                    Ok(counts) => Some(counts),
                    Err(e) => {
                        tracing::warn!(source = source_name, error = %e, "counting rows for the drill failed; drills of this backup will fail their counts check");
                        None
                    }
                }
            }
            _ => None,
        };
        // The producer writes the label meanwhile; the backup counts only once the WAL it
        // needs is in our archive.
        crate::pgbackup::wait_for_wal(
            &engine.catalog,
            source_name,
            &files.position.stop_wal,
            source.archive_timeout().unwrap_or_default(),
        )
        .await?;
        Ok(Some((files.position, row_counts)))
    };
    let job = ProduceJob {
        source: source.clone(),
        options: WriteOptions {
            segment_size: engine.config.pipeline.segment_size_kib * 1024,
            zstd_level: engine.config.pipeline.compression_level,
            ..WriteOptions::default()
        },
        key_id: key.id().clone(),
        data: (data_id, data_dek, ChannelWriter::new(data_tx)),
        manifest: (manifest_id, manifest_dek, ChannelWriter::new(manifest_tx)),
        header,
        progress,
        postgres: handshake,
        previous: previous.map(|p| p.files),
        mongo,
        atlas,
        mysql: dump_rx,
    };
    let producer = tokio::task::spawn_blocking(move || job.run());
    let (data_put, manifest_put, produced, position) = tokio::join!(
        repo.sink.put(&data_key, data_rx, cancel),
        repo.sink.put(&manifest_key, manifest_rx, cancel),
        producer,
        stopper
    );
    let position = position?;
    let produced =
        produced.map_err(|e| EngineError::Failed(format!("backup pipeline crashed: {e}")))?;
    let mut dumped = None;
    if let Some(task) = dump_task {
        let result = task.await.map_err(|e| {
            EngineError::Failed(format!("{} dump crashed: {e}", source.kind_name()))
        })?;
        match result {
            // The dump's own failure is the cause of whatever the pipeline saw.
            Err(e) if !crate::mysql::is_pipeline_gone(&e) => return Err(e),
            // The pipeline stopped first: its error (below) says why.
            Err(e) if produced.is_ok() => return Err(e),
            Err(_) => {}
            Ok(d) => dumped = Some(d),
        }
    }
    // Either side failing breaks the other: report the cause. A sink that failed only
    // because the pipeline abandoned its stream (`Body`) is a consequence, not a cause.
    let sink_failure = |r: &Result<PutReceipt, SinkError>| matches!(r, Err(e) if !matches!(e, SinkError::Body { .. }));
    let produced = match produced {
        Err(e) if !sink_failure(&data_put) && !sink_failure(&manifest_put) => return Err(e),
        other => other,
    };
    let data_put = data_put?;
    let manifest_put = manifest_put?;
    let produced = produced?;
    check_receipt(repo, &data_key, &data_put, &produced.data)?;
    check_receipt(repo, &manifest_key, &manifest_put, &produced.manifest)?;

    // The envelope goes last: its presence marks a backup whose objects are all written.
    put_bytes(
        &repo.sink,
        &layout::envelope_key(backup_id),
        envelope.to_json(),
        cancel,
    )
    .await?;

    let now = Utc::now();
    for (summary, object_key, role) in [
        (&produced.data, &data_key, "data"),
        (&produced.manifest, &manifest_key, "manifest"),
    ] {
        engine
            .catalog
            .record_artifact(&ArtifactRecord {
                id: summary.artifact_id,
                backup_id,
                role: role.into(),
                plaintext_size: summary.plaintext_size,
                plaintext_sha256: hex::encode(summary.plaintext_sha256),
                segment_count: summary.segment_count,
                created_at: now,
            })
            .await?;
        engine
            .catalog
            .record_copy(&CopyRecord {
                artifact_id: summary.artifact_id,
                repository: repo.name.clone(),
                object_key: object_key.clone(),
                stored_size: summary.stored_size,
                stored_sha256: hex::encode(summary.stored_sha256),
                storage_class: None,
                verified_at: now,
            })
            .await?;
    }
    if let Some((p, row_counts)) = &position {
        engine
            .catalog
            .record_postgres_backup(&postgres_record(backup_id, p))
            .await?;
        if let Some(counts) = row_counts {
            engine.catalog.record_row_counts(backup_id, counts).await?;
        }
    }
    if let Some(p) = &produced.mongo {
        engine
            .catalog
            .record_mongo_backup(&crate::mongo::mongo_record(backup_id, p)?)
            .await?;
        if !p.document_counts.is_empty() {
            engine
                .catalog
                .record_row_counts(backup_id, &p.document_counts)
                .await?;
        }
    }
    if let Some(a) = &produced.atlas {
        engine
            .catalog
            .record_atlas_snapshot(&crate::mongo::atlas::atlas_record(backup_id, a, Utc::now()))
            .await?;
    }
    match &dumped {
        Some(Dumped::Elasticsearch(snapshot)) => {
            engine
                .catalog
                .record_elasticsearch_snapshot(&snapshot.catalog_record(backup_id))
                .await?;
            if !snapshot.doc_counts.is_empty() {
                engine
                    .catalog
                    .record_row_counts(backup_id, &snapshot.doc_counts)
                    .await?;
            }
        }
        Some(Dumped::Rds(record)) => {
            for row in record.catalog_records(backup_id) {
                engine.catalog.record_rds_snapshot(&row).await?;
            }
        }
        Some(Dumped::AzureSql(record)) => {
            engine
                .catalog
                .record_azure_sql_backup(&record.catalog_record(backup_id))
                .await?;
        }
        Some(Dumped::Mysql(summary)) => tracing::info!(
            %backup_id,
            tables = summary.tables.len(),
            rows = summary.tables.iter().map(|t| t.rows).sum::<u64>(),
            "MySQL dump stored"
        ),
        Some(Dumped::AzureBlob(index)) => tracing::info!(
            %backup_id,
            containers = index.containers.len(),
            blobs = index.blob_count(),
            bytes = index.bytes(),
            vanished = index.vanished.len(),
            "Azure blobs stored"
        ),
        None => {}
    }
    // Queued before completion: a complete backup always has its copies queued.
    engine
        .catalog
        .enqueue_copies(backup_id, &copy_targets, now)
        .await?;
    engine
        .catalog
        .complete_backup(
            backup_id,
            &BackupCompletion {
                finished_at: Utc::now(),
                file_count: produced.stats.files,
                skipped_count: produced.stats.skipped,
                plaintext_bytes: produced.data.plaintext_size,
                stored_bytes: produced.data.stored_size + produced.manifest.stored_size,
                manifest_artifact: manifest_id,
            },
        )
        .await?;
    Ok(produced)
}

/// The catalog row of a base backup's WAL position.
pub fn postgres_record(
    backup_id: BackupId,
    p: &backup_core::manifest::PostgresPosition,
) -> backup_catalog::PostgresBackupRecord {
    backup_catalog::PostgresBackupRecord {
        backup_id,
        start_lsn: p.start_lsn.clone(),
        stop_lsn: p.stop_lsn.clone(),
        timeline: p.timeline,
        start_wal: p.start_wal.clone(),
        stop_wal: p.stop_wal.clone(),
        start_time: p.start_time,
        stop_time: p.stop_time,
        parent_backup_id: p.parent_backup_id,
    }
}

/// Tags are labels for people and scripts: 1-64 letters, digits, '-', '_', '.' or ':'.
pub fn check_tag(tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(EngineError::Usage(format!(
            "invalid tag {tag:?}: use 1-64 letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

/// The sink hashed what it stored independently of the pipeline; both must agree.
fn check_receipt(
    repo: &Repository,
    key: &str,
    receipt: &PutReceipt,
    summary: &ArtifactSummary,
) -> Result<()> {
    if receipt.size != summary.stored_size || receipt.sha256 != summary.stored_sha256 {
        return Err(EngineError::Integrity(format!(
            "repository {} stored {} bytes (SHA-256 {}) for {key}, but the pipeline produced {} bytes (SHA-256 {}); the object is not recorded",
            repo.name,
            receipt.size,
            hex::encode(receipt.sha256),
            summary.stored_size,
            hex::encode(summary.stored_sha256)
        )));
    }
    Ok(())
}

type Stream = (ArtifactId, DataKey, ChannelWriter);

/// The blocking half of a backup: reads the source and feeds both artifacts.
struct ProduceJob {
    source: SourceKindConfig,
    options: WriteOptions,
    key_id: KeyId,
    data: Stream,
    manifest: Stream,
    header: ManifestHeader,
    progress: Arc<Progress>,
    /// For PostgreSQL: says when the data directory has been read, then gets the files
    /// `pg_backup_stop` returned (or why it failed).
    postgres: Option<PostgresHandshake>,
    /// Incremental: the files of the previous backup of the chain, by entry path.
    previous: Option<HashMap<Vec<u8>, files::PreviousFile>>,
    /// For MongoDB: the connection, start position and collections to copy.
    mongo: Option<crate::mongo::MongoSnapshot>,
    /// For Atlas: the completed snapshot (and its download, when exported).
    atlas: Option<crate::mongo::atlas::AtlasSnapshotTaken>,
    /// MySQL and Elasticsearch: the dump's entries.
    mysql: Option<mpsc::Receiver<crate::mysql::DumpEvent>>,
}

/// What a dump task produced, recorded with the backup.
enum Dumped {
    Mysql(backup_sources::mysql::DumpSummary),
    Elasticsearch(crate::elasticsearch::SnapshotRecord),
    Rds(crate::rds::SnapshotRecord),
    AzureBlob(crate::azure_blob::BlobIndex),
    AzureSql(crate::azure_sql::AzureSqlRecord),
}

/// The backup an incremental one builds on, with what it recorded of each file.
pub struct PreviousBackup {
    pub id: BackupId,
    pub files: HashMap<Vec<u8>, files::PreviousFile>,
}

/// The newest complete base backup of a postgres `source`, read from its manifest.
async fn previous_backup(
    engine: &Engine,
    source: &crate::config::SourceConfig,
    cancel: &CancellationToken,
) -> Result<PreviousBackup> {
    if !matches!(source.kind, SourceKindConfig::Postgres { .. }) {
        return Err(EngineError::Usage(format!(
            "{} sources take full backups only; drop `--type incr`",
            source.kind.kind_name()
        )));
    }
    let no_base = || {
        EngineError::Usage(format!(
            "source {} has no complete base backup to build an incremental one on; take a full \
             one first (`backupctl backup {} --type full`)",
            source.name, source.name
        ))
    };
    let latest = engine
        .catalog
        .postgres_backups(&source.name)
        .await?
        .into_iter()
        .max_by_key(|b| b.stop_time)
        .ok_or_else(no_base)?;
    let record = engine
        .catalog
        .get_backup(latest.backup_id)
        .await?
        .ok_or_else(no_base)?;
    let entries = crate::restore::manifest_entries(engine, &record, cancel).await?;
    let files = entries
        .into_iter()
        .filter(|e| e.kind == backup_core::manifest::EntryKind::File)
        .filter_map(|e| {
            Some((
                e.path.to_bytes().ok()?,
                files::PreviousFile {
                    size: e.size,
                    mtime: e.mtime,
                    mtime_nsec: e.mtime_nsec,
                    blake3: e.blake3?,
                    stored_in: e.unchanged_from.unwrap_or(record.id),
                },
            ))
        })
        .collect();
    Ok(PreviousBackup {
        id: record.id,
        files,
    })
}

struct PostgresHandshake {
    tree_done: tokio::sync::oneshot::Sender<()>,
    stop_files: std::sync::mpsc::Receiver<Result<crate::pgbackup::StopFiles, String>>,
}

struct ManifestRecorder<'a, W: io::Write> {
    manifest: &'a mut ManifestWriter<W>,
    progress: &'a Progress,
}

impl<W: io::Write> EntryRecorder for ManifestRecorder<'_, W> {
    fn entry(&mut self, entry: &FileEntry) -> io::Result<()> {
        self.progress
            .files
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.manifest.entry(entry)
    }
    fn skipped(&mut self, skipped: SkippedEntry) -> io::Result<()> {
        self.manifest.skipped(skipped)
    }
}

impl ProduceJob {
    fn run(self) -> Result<Produced> {
        let fmt = |what: &str, e| EngineError::from_format(what, e);
        let (data_id, data_dek, data_out) = self.data;
        let (manifest_id, manifest_dek, manifest_out) = self.manifest;
        let mut data = ArtifactWriter::new(
            data_out,
            data_id,
            ArtifactKind::Data,
            &self.key_id,
            &data_dek,
            &self.options,
        )
        .map_err(|e| fmt("data artifact", e))?;
        let manifest_writer = ArtifactWriter::new(
            manifest_out,
            manifest_id,
            ArtifactKind::Manifest,
            &self.key_id,
            &manifest_dek,
            &self.options,
        )
        .map_err(|e| fmt("manifest artifact", e))?;
        let mut manifest =
            ManifestWriter::new(manifest_writer, &self.header).map_err(output_error)?;
        let progress = self.progress.clone();
        let mut recorder = ManifestRecorder {
            manifest: &mut manifest,
            progress: &progress,
        };
        let mut on_bytes = |n| progress.add_bytes(n);
        let mut postgres_position = None;
        let mut mongo_position = None;
        let mut atlas_snapshot = None;
        let stats = match &self.source {
            SourceKindConfig::Atlas(_) => {
                let taken = self.atlas.expect("atlas backups come with their snapshot");
                let mut tree = files::TreeBackup::new(
                    files::UnreadablePolicy::Fail,
                    &mut data,
                    &mut recorder,
                    &mut on_bytes,
                );
                atlas_snapshot = Some(taken.write(&mut tree)?);
                tree.finish()
            }
            SourceKindConfig::Mongodb(_) => {
                let snapshot = self
                    .mongo
                    .expect("mongodb backups come with their snapshot");
                let mut tree = files::TreeBackup::new(
                    files::UnreadablePolicy::Fail,
                    &mut data,
                    &mut recorder,
                    &mut on_bytes,
                );
                mongo_position = Some(snapshot.write(&mut tree)?);
                tree.finish()
            }
            SourceKindConfig::Files {
                paths,
                on_unreadable,
            } => files::backup_tree(
                paths,
                *on_unreadable,
                &mut data,
                &mut recorder,
                &mut on_bytes,
            )?,
            SourceKindConfig::Postgres { data_directory, .. } => {
                let handshake = self
                    .postgres
                    .expect("postgres backups come with their handshake");
                let mut tree = files::TreeBackup::new(
                    files::UnreadablePolicy::Fail,
                    &mut data,
                    &mut recorder,
                    &mut on_bytes,
                );
                // The server deletes files (temporary relations, old WAL) while we read.
                tree.tolerate_vanished_files();
                tree.read_ahead();
                if let Some(previous) = self.previous {
                    tree.incremental_since(previous);
                }
                tree.add_root(
                    data_directory,
                    PGDATA_LABEL,
                    Some(&crate::pgbackup::excluded),
                )?;
                let _ = handshake.tree_done.send(());
                let stop = handshake
                    .stop_files
                    .recv()
                    .map_err(|_| EngineError::Failed("pg_backup_stop never answered".into()))?
                    .map_err(EngineError::Failed)?;
                tree.add_file(
                    &format!("{PGDATA_LABEL}/backup_label"),
                    stop.backup_label.as_bytes(),
                    0o600,
                )?;
                if !stop.tablespace_map.is_empty() {
                    tree.add_file(
                        &format!("{PGDATA_LABEL}/tablespace_map"),
                        stop.tablespace_map.as_bytes(),
                        0o600,
                    )?;
                }
                postgres_position = Some(stop.position);
                tree.finish()
            }
            SourceKindConfig::Mysql(_)
            | SourceKindConfig::Elasticsearch(_)
            | SourceKindConfig::Rds(_)
            | SourceKindConfig::AzureBlob(_)
            | SourceKindConfig::AzureSql(_) => {
                let rx = self.mysql.expect("dump sources come with their dump");
                let last = match &self.source {
                    SourceKindConfig::Mysql(_) => backup_sources::mysql::SUMMARY_PATH,
                    SourceKindConfig::Rds(_) => crate::rds::RECORD_PATH,
                    SourceKindConfig::AzureBlob(_) => crate::azure_blob::INDEX_PATH,
                    SourceKindConfig::AzureSql(_) => crate::azure_sql::RECORD_PATH,
                    _ => crate::elasticsearch::RECORD_PATH,
                };
                crate::mysql::write_dump(rx, last, &mut data, &mut recorder, &mut on_bytes)?
            }
        };
        let (data_out, data_summary) = data.finish().map_err(|e| fmt("data artifact", e))?;
        data_out.finish().map_err(output_error)?;
        let footer = ManifestFooter {
            finished_at: Utc::now(),
            file_count: stats.files,
            skipped_count: stats.skipped,
            plaintext_bytes: data_summary.plaintext_size,
            artifacts: vec![data_summary.clone()],
            postgres: postgres_position,
            mongodb: mongo_position.clone(),
            atlas: atlas_snapshot.clone(),
        };
        let manifest_writer = manifest.finish(footer).map_err(output_error)?;
        let (manifest_out, manifest_summary) = manifest_writer
            .finish()
            .map_err(|e| fmt("manifest artifact", e))?;
        manifest_out.finish().map_err(output_error)?;
        Ok(Produced {
            data: data_summary,
            manifest: manifest_summary,
            stats,
            mongo: mongo_position,
            atlas: atlas_snapshot,
        })
    }
}

fn output_error(e: io::Error) -> EngineError {
    EngineError::Failed(format!("writing backup data: {e}"))
}
