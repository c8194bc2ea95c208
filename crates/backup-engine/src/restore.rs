//! `backupctl restore`: fetch a backup's manifest and data from its
//! repository, authenticate and decode them, and recreate the tree.

use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use backup_catalog::{ArtifactWithCopies, BackupRecord, BackupStatus};
use backup_core::envelope::EnvelopeError;
use backup_core::format::{ArtifactReader, FormatError, ReadOptions};
use backup_core::keys::{DataKey, Keyring};
use backup_core::manifest::{ManifestLine, ManifestReader};
use backup_core::{ArtifactId, BackupId};
use backup_sinks::{ChannelReader, Sink};
use backup_sources::files::{FileRestored, FilesError, TreeRestorer};

use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::{Engine, Progress};

/// Which backup to restore.
#[derive(Debug, Clone)]
pub enum BackupSelector {
    /// A backup id or unique prefix of one.
    Id(String),
    /// The newest complete backup of a source.
    Latest(String),
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoreOutcome {
    pub backup_id: BackupId,
    pub source: String,
    /// The repository the backup was restored from.
    pub repository: String,
    pub target: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// Copies tried before `repository`, with why each was given up.
    pub failovers: Vec<String>,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Write into a non-empty target.
    pub force: bool,
    /// Repositories to restore from, in order of preference; empty = the backup's own
    /// repository first, then its other copies in config order, archived copies last.
    pub from: Vec<String>,
    /// What to do when the only copies left are archived.
    pub thaw: crate::thaw::ThawOptions,
    /// Told each file's path as soon as it is restored and checked (a database restore
    /// loads it while later files are still coming).
    pub on_file_restored: Option<FileRestoredHook>,
}

/// A [`FileRestored`] callback in [`RestoreOptions`].
#[derive(Clone)]
pub struct FileRestoredHook(pub FileRestored);

impl std::fmt::Debug for FileRestoredHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileRestoredHook")
    }
}

/// Resolves a selector to a complete backup.
pub async fn select_backup(engine: &Engine, selector: &BackupSelector) -> Result<BackupRecord> {
    let record = match selector {
        BackupSelector::Id(prefix) => engine.catalog.find_backup_by_prefix(prefix).await?,
        BackupSelector::Latest(source) => {
            engine.config.source(source)?;
            engine.catalog.latest_complete_backup(source).await?.ok_or_else(|| {
                EngineError::Failed(format!("source {source} has no complete backup yet; run `backupctl backup {source}`"))
            })?
        }
    };
    if record.status == BackupStatus::Deleting {
        return Err(EngineError::Failed(format!(
            "backup {} is being deleted by retention (status deleting): its objects may already \
             be gone, so it cannot be restored or verified; `backupctl prune` or `backupctl gc` \
             finishes the deletion; pick another backup from `backupctl list`",
            record.id
        )));
    }
    if record.status != BackupStatus::Complete {
        return Err(EngineError::Failed(format!(
            "backup {} is {} and cannot be restored; pick a complete backup from `backupctl list`",
            record.id,
            record.status.as_str()
        )));
    }
    Ok(record)
}

/// A backup's artifacts as stored in one repository, with their data keys.
pub(crate) struct OpenedBackup {
    pub repo: Repository,
    pub manifest: (ArtifactWithCopies, DataKey),
    pub data: Vec<(ArtifactWithCopies, DataKey)>,
}

impl OpenedBackup {
    /// Opens the backup's copy in `repository`.
    pub async fn open(
        engine: &Engine,
        record: &BackupRecord,
        repository: &str,
        key: &Keyring,
        cancel: &CancellationToken,
    ) -> Result<OpenedBackup> {
        let repo = Repository::open_named(&engine.config, repository).await?;
        let envelope = crate::keys::read_envelope(&repo, record.id, key, cancel).await?;
        let mut manifest = None;
        let mut data = Vec::new();
        for artifact in engine.catalog.backup_artifacts(record.id).await? {
            let dek = envelope
                .data_key(key, artifact.artifact.id)
                .map_err(|e| envelope_error(record.id, e))?;
            if artifact.artifact.role == "manifest" {
                manifest = Some((artifact, dek));
            } else {
                data.push((artifact, dek));
            }
        }
        let manifest = manifest.ok_or_else(|| {
            EngineError::Integrity(format!(
                "backup {}: the catalog lists no manifest",
                record.id
            ))
        })?;
        Ok(OpenedBackup {
            repo,
            manifest,
            data,
        })
    }
}

/// Every file entry of a backup's manifest (read from its own repository).
pub(crate) async fn manifest_entries(
    engine: &Engine,
    record: &BackupRecord,
    cancel: &CancellationToken,
) -> Result<Vec<backup_core::manifest::FileEntry>> {
    let key = engine.key()?;
    let opened = OpenedBackup::open(engine, record, &record.repository, &key, cancel).await?;
    let (artifact, dek) = opened.manifest;
    let rx = opened
        .repo
        .sink
        .get(&object_key(&opened.repo, &artifact)?, cancel)
        .await?;
    let (id, what) = (
        artifact.artifact.id,
        format!(
            "backup {} manifest artifact {}",
            record.id, artifact.artifact.id
        ),
    );
    tokio::task::spawn_blocking(move || -> Result<_> {
        let (reader, _) = ArtifactReader::open(
            ChannelReader::new(rx),
            Some(id),
            &dek,
            &ReadOptions::default(),
        )
        .map_err(|e| EngineError::from_format(&what, e))?;
        let (mut manifest, _) = ManifestReader::open(BufReader::with_capacity(1 << 20, reader))
            .map_err(|e| manifest_error(&what, e))?;
        let mut entries = Vec::new();
        while let Some(line) = manifest.next_item().map_err(|e| manifest_error(&what, e))? {
            match line {
                ManifestLine::Entry(e) => entries.push(e),
                ManifestLine::Footer(_) => break,
                _ => {}
            }
        }
        io::copy(&mut manifest.into_inner(), &mut io::sink())
            .map_err(|e| stream_error(&what, e))?;
        Ok(entries)
    })
    .await
    .map_err(|e| EngineError::Failed(format!("reading a manifest crashed: {e}")))?
}

/// The backups to restore, oldest first, to recreate `record`: itself, preceded by the
/// backups an incremental one builds on.
async fn backup_chain(engine: &Engine, record: &BackupRecord) -> Result<Vec<BackupRecord>> {
    let mut chain = vec![record.clone()];
    let mut current = record.id;
    while let Some(parent) = engine
        .catalog
        .postgres_backup(current)
        .await?
        .and_then(|p| p.parent_backup_id)
    {
        let parent_record = engine
            .catalog
            .get_backup(parent)
            .await?
            .filter(|b| b.status == BackupStatus::Complete)
            .ok_or_else(|| {
                EngineError::Integrity(format!(
                    "backup {current} is incremental on backup {parent}, which is not a complete \
                     backup any more; restore a full backup instead"
                ))
            })?;
        if chain.len() > 10_000 || chain.iter().any(|b| b.id == parent) {
            return Err(EngineError::Integrity(format!(
                "the incremental chain of backup {} loops",
                record.id
            )));
        }
        current = parent;
        chain.push(parent_record);
    }
    chain.reverse();
    Ok(chain)
}

/// The object key of `artifact` in repository `repo`.
pub(crate) fn object_key(repo: &Repository, artifact: &ArtifactWithCopies) -> Result<String> {
    artifact
        .copies
        .iter()
        .find(|c| c.repository == repo.name)
        .map(|c| c.object_key.clone())
        .ok_or_else(|| {
            EngineError::Failed(format!(
                "artifact {} has no copy in repository {}",
                artifact.artifact.id, repo.name
            ))
        })
}

pub(crate) fn envelope_error(backup: BackupId, e: EnvelopeError) -> EngineError {
    match e {
        EnvelopeError::WrongKey { .. } => EngineError::Key(e.to_string()),
        other => EngineError::Integrity(format!("backup {backup}: {other}")),
    }
}

/// Maps an I/O error from a decoding stream: integrity failures carry a `FormatError`.
pub(crate) fn stream_error(what: &str, e: io::Error) -> EngineError {
    EngineError::from_format(what, FormatError::from_io(e))
}

/// The file `path` of backup `backup_id`, restored into a private staging directory: the
/// record a service-side source (Elasticsearch, RDS) keeps in its backup. `what` names the
/// record in errors.
pub(crate) async fn read_backup_file(
    engine: &Engine,
    backup_id: backup_core::BackupId,
    path: &str,
    what: &str,
    cancel: &CancellationToken,
) -> Result<Vec<u8>> {
    let staging = crate::mysql::Staging::new("record", backup_id)?;
    run_restore(
        engine,
        &BackupSelector::Id(backup_id.to_string()),
        staging.path(),
        &RestoreOptions::default(),
        std::sync::Arc::new(crate::Progress::default()),
        cancel,
    )
    .await?;
    std::fs::read(staging.path().join(path))
        .map_err(|e| EngineError::Integrity(format!("backup {backup_id}: no {what} ({e})")))
}

/// The JSON record a backup stores as entry `path` (`what`, for errors): the data artifact
/// of sources whose data stays in the service (Elasticsearch, RDS, Azure SQL).
pub(crate) async fn read_backup_record<T: serde::de::DeserializeOwned>(
    engine: &Engine,
    backup_id: backup_core::BackupId,
    path: &str,
    what: &str,
    cancel: &CancellationToken,
) -> Result<T> {
    let bytes = read_backup_file(engine, backup_id, path, what, cancel).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Integrity(format!("backup {backup_id}: {what}: {e}")))
}

pub async fn run_restore(
    engine: &Engine,
    selector: &BackupSelector,
    target: &Path,
    options: &RestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<RestoreOutcome> {
    let record = select_backup(engine, selector).await?;
    let key = engine.key()?;
    let artifacts = engine.catalog.backup_artifacts(record.id).await?;
    let candidates = restore_order(engine, &record, &artifacts, &options.from)?;
    prepare_target(target, options.force)?;
    let mut failovers = Vec::new();
    let mut last_error = None;
    for (i, candidate) in candidates.iter().enumerate() {
        let is_last = i + 1 == candidates.len();
        if candidate.archived {
            // Only worth a thaw when nothing readable is left to try.
            if !is_last && options.from.is_empty() {
                failovers.push(format!(
                    "{}: archived ({}), kept as the last resort",
                    candidate.repository,
                    candidate.storage_class.as_deref().unwrap_or("archive")
                ));
                continue;
            }
            crate::thaw::ensure_thawed(
                engine,
                &record,
                &candidate.repository,
                &options.thaw,
                cancel,
            )
            .await?;
        }
        let into = RestoreInto {
            target,
            on_file_restored: options.on_file_restored.as_ref().map(|h| h.0.clone()),
            progress: progress.clone(),
        };
        match restore_from(engine, &record, &candidate.repository, &key, &into, cancel).await {
            Ok(mut outcome) => {
                outcome.failovers = failovers;
                return Ok(outcome);
            }
            // Not a problem of this copy: another copy will not do better.
            Err(e @ (EngineError::Key(_) | EngineError::Usage(_) | EngineError::Config(_))) => {
                return Err(e)
            }
            Err(e) if cancel.is_cancelled() => return Err(e),
            Err(e) => {
                let next = candidates.get(i + 1).map(|c| c.repository.as_str());
                tracing::warn!(backup_id = %record.id, repository = %candidate.repository,
                    error = %e, next = ?next, "restore from this copy failed");
                if let Some(next) = next {
                    eprintln!(
                        "restore from repository {} failed ({e}); trying the copy in {next}",
                        candidate.repository
                    );
                }
                failovers.push(format!("{}: {e}", candidate.repository));
                last_error = Some(e);
            }
        }
    }
    let last_error = last_error.expect("at least one candidate was tried");
    if failovers.len() <= 1 {
        return Err(last_error);
    }
    let summary = failovers.join("; ");
    Err(match last_error {
        EngineError::Integrity(_) => EngineError::Integrity(format!(
            "backup {}: no copy could be restored ({summary})",
            record.id
        )),
        _ => EngineError::Failed(format!(
            "backup {}: no copy could be restored ({summary})",
            record.id
        )),
    })
}

/// `restore --thaw-only`: requests the restore of a backup's archived copy (the first of
/// `options.from`, or its first archived copy) and reports where it stands, without waiting.
pub async fn request_thaw(
    engine: &Engine,
    selector: &BackupSelector,
    options: &RestoreOptions,
    cancel: &CancellationToken,
) -> Result<crate::thaw::ThawReport> {
    let record = select_backup(engine, selector).await?;
    let artifacts = engine.catalog.backup_artifacts(record.id).await?;
    let candidates = restore_order(engine, &record, &artifacts, &options.from)?;
    let archived = if options.from.is_empty() {
        candidates.iter().find(|c| c.archived)
    } else {
        candidates.first().filter(|c| c.archived)
    };
    let Some(copy) = archived else {
        let readable = candidates
            .first()
            .map(|c| c.repository.as_str())
            .unwrap_or("-");
        return Err(EngineError::Usage(format!(
            "backup {}: the copy in {readable} is not archived and can be restored directly;              nothing to thaw",
            record.id
        )));
    };
    crate::thaw::thaw_copy(
        engine,
        &record,
        &copy.repository,
        &options.thaw,
        true,
        cancel,
    )
    .await
}

/// A repository holding a complete copy of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyLocation {
    pub repository: String,
    pub storage_class: Option<String>,
    /// Some object must be thawed before it can be read.
    pub archived: bool,
}

/// The repositories holding every artifact of a backup: its own first, then the others in
/// config order, then repositories no longer configured.
pub(crate) fn complete_copies(
    engine: &Engine,
    record: &BackupRecord,
    artifacts: &[ArtifactWithCopies],
) -> Vec<CopyLocation> {
    let mut names: Vec<&str> = vec![record.repository.as_str()];
    names.extend(engine.config.repositories.iter().map(|r| r.name.as_str()));
    names.extend(
        artifacts
            .iter()
            .flat_map(|a| a.copies.iter().map(|c| c.repository.as_str())),
    );
    let mut seen = std::collections::HashSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(*name))
        .filter_map(|name| {
            let copies: Option<Vec<_>> = artifacts
                .iter()
                .map(|a| a.copies.iter().find(|c| c.repository == name))
                .collect();
            let copies = copies.filter(|c| !c.is_empty())?;
            let archived_class = copies
                .iter()
                .filter_map(|c| c.storage_class.as_deref())
                .find(|class| crate::replicate::is_archive_class(Some(class)));
            Some(CopyLocation {
                repository: name.to_owned(),
                storage_class: archived_class
                    .map(str::to_owned)
                    .or_else(|| copies.iter().find_map(|c| c.storage_class.clone())),
                archived: archived_class.is_some(),
            })
        })
        .collect()
}

/// The copies to try, in order: `from` as given, or readable copies before archived ones.
fn restore_order(
    engine: &Engine,
    record: &BackupRecord,
    artifacts: &[ArtifactWithCopies],
    from: &[String],
) -> Result<Vec<CopyLocation>> {
    let copies = complete_copies(engine, record, artifacts);
    let held = || {
        copies
            .iter()
            .map(|c| c.repository.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if from.is_empty() {
        let (archived, readable): (Vec<_>, Vec<_>) =
            copies.iter().cloned().partition(|c| c.archived);
        let ordered: Vec<_> = readable.into_iter().chain(archived).collect();
        if ordered.is_empty() {
            return Err(EngineError::Integrity(format!(
                "backup {}: no repository holds a copy of every artifact",
                record.id
            )));
        }
        return Ok(ordered);
    }
    from.iter()
        .map(|name| {
            engine.config.repository(name)?;
            copies
                .iter()
                .find(|c| &c.repository == name)
                .cloned()
                .ok_or_else(|| {
                    EngineError::Usage(format!(
                        "backup {} has no complete copy in repository {name}; it has copies in: {}",
                        record.id,
                        held()
                    ))
                })
        })
        .collect()
}

/// Where and how a restore writes: the target directory, who is told of each file
/// restored, and the progress counters.
struct RestoreInto<'a> {
    target: &'a Path,
    on_file_restored: Option<FileRestored>,
    progress: Arc<Progress>,
}

async fn restore_from(
    engine: &Engine,
    record: &BackupRecord,
    repository: &str,
    key: &Keyring,
    into: &RestoreInto<'_>,
    cancel: &CancellationToken,
) -> Result<RestoreOutcome> {
    let chain = backup_chain(engine, record).await?;
    let started = Instant::now();
    let mut bytes = 0;
    let mut last = None;
    for (i, layer) in chain.iter().enumerate() {
        let outcome = restore_layer(engine, layer, repository, key, into, i > 0, cancel).await?;
        bytes += outcome.bytes;
        last = Some(outcome);
    }
    let mut outcome = last.expect("a chain holds at least the backup itself");
    outcome.backup_id = record.id;
    outcome.bytes = bytes;
    outcome.seconds = started.elapsed().as_secs_f64();
    Ok(outcome)
}

/// Restores one backup of a chain; `overlay` for the incremental ones after the first.
async fn restore_layer(
    engine: &Engine,
    record: &BackupRecord,
    repository: &str,
    key: &Keyring,
    into: &RestoreInto<'_>,
    overlay: bool,
    cancel: &CancellationToken,
) -> Result<RestoreOutcome> {
    let progress = &into.progress;
    let OpenedBackup {
        repo,
        manifest,
        data,
    } = OpenedBackup::open(engine, record, repository, key, cancel).await?;
    let [(data_artifact, data_dek)] = <[_; 1]>::try_from(data).map_err(|_| {
        EngineError::Integrity(format!(
            "backup {}: expected exactly one data artifact",
            record.id
        ))
    })?;
    progress.total_bytes.store(
        data_artifact.artifact.plaintext_size,
        std::sync::atomic::Ordering::Relaxed,
    );
    progress
        .bytes
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let (manifest_artifact, manifest_dek) = manifest;
    let manifest_rx = repo
        .sink
        .get(&object_key(&repo, &manifest_artifact)?, cancel)
        .await?;
    let data_rx = repo
        .sink
        .get(&object_key(&repo, &data_artifact)?, cancel)
        .await?;

    let reads = crate::report::reads_of(&repo.name, &[&manifest_artifact, &data_artifact]);
    let started = Instant::now();
    let job = RestoreJob {
        backup_id: record.id,
        overlay,
        repository: repo.name.clone(),
        target: into.target.to_path_buf(),
        manifest: (
            manifest_artifact.artifact.id,
            manifest_dek,
            ChannelReader::new(manifest_rx),
        ),
        data: (
            data_artifact.artifact.id,
            data_dek,
            ChannelReader::new(data_rx),
        ),
        on_file_restored: into.on_file_restored.clone(),
        progress: progress.clone(),
    };
    let stats = tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(|e| EngineError::Failed(format!("restore crashed: {e}")))??;
    crate::report::record_gets(engine, &record.source, &repo.name, reads).await;
    Ok(RestoreOutcome {
        backup_id: record.id,
        source: record.source.clone(),
        repository: repo.name.clone(),
        target: into.target.to_path_buf(),
        files: stats.files,
        dirs: stats.dirs,
        symlinks: stats.symlinks,
        bytes: stats.bytes,
        seconds: started.elapsed().as_secs_f64(),
        failovers: Vec::new(),
    })
}

fn prepare_target(target: &Path, force: bool) -> Result<()> {
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(EngineError::Usage(format!(
                    "restore target {} is not empty; choose an empty directory or pass --force to write into it",
                    target.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(target).map_err(|e| {
                EngineError::Failed(format!("creating restore target {}: {e}", target.display()))
            })
        }
        Err(e) => Err(EngineError::Usage(format!(
            "restore target {}: {e}",
            target.display()
        ))),
    }
}

struct RestoreJob {
    backup_id: BackupId,
    /// A later backup of an incremental chain, restored over the earlier ones.
    overlay: bool,
    repository: String,
    target: PathBuf,
    manifest: (ArtifactId, DataKey, ChannelReader),
    data: (ArtifactId, DataKey, ChannelReader),
    on_file_restored: Option<FileRestored>,
    progress: Arc<Progress>,
}

impl RestoreJob {
    fn run(self) -> Result<backup_sources::files::RestoreStats> {
        let (manifest_id, manifest_dek, manifest_in) = self.manifest;
        let (data_id, data_dek, data_in) = self.data;
        let what_m = format!(
            "backup {} manifest artifact {manifest_id} in repository {}",
            self.backup_id, self.repository
        );
        let what_d = format!(
            "backup {} data artifact {data_id} in repository {}",
            self.backup_id, self.repository
        );
        let options = ReadOptions::default();
        let (manifest_reader, _) =
            ArtifactReader::open(manifest_in, Some(manifest_id), &manifest_dek, &options)
                .map_err(|e| EngineError::from_format(&what_m, e))?;
        let (mut manifest, header) =
            ManifestReader::open(BufReader::with_capacity(1 << 20, manifest_reader))
                .map_err(|e| manifest_error(&what_m, e))?;
        if header.backup_id != self.backup_id {
            return Err(EngineError::Integrity(format!(
                "{what_m} belongs to backup {}",
                header.backup_id
            )));
        }
        // Each restored file's BLAKE3 is checked against the manifest (and every segment is
        // authenticated), so the data's whole-stream SHA-256 is left to `verify`.
        let data_options = ReadOptions {
            check_plaintext_sha256: false,
            ..options.clone()
        };
        let (mut data, _) = ArtifactReader::open(data_in, Some(data_id), &data_dek, &data_options)
            .map_err(|e| EngineError::from_format(&what_d, e))?;
        let progress = self.progress.clone();
        let mut on_bytes = |n| progress.add_bytes(n);
        let mut restorer = TreeRestorer::new(&self.target, &mut data, &mut on_bytes);
        if self.overlay {
            restorer = restorer.overlay();
        }
        if let Some(hook) = self.on_file_restored {
            restorer = restorer.on_file_restored(hook);
        }
        loop {
            match manifest
                .next_item()
                .map_err(|e| manifest_error(&what_m, e))?
            {
                Some(ManifestLine::Entry(e)) => {
                    restorer.entry(e).map_err(|e| files_error(&what_d, e))?
                }
                Some(ManifestLine::Skipped(s)) => {
                    tracing::warn!(path = %s.path.display(), error = %s.error, "not in backup (skipped at backup time)")
                }
                Some(ManifestLine::Footer(_)) | None => break,
                Some(ManifestLine::Header(_)) => unreachable!("reader rejects a second header"),
            }
        }
        let stats = restorer.finish().map_err(|e| files_error(&what_d, e))?;
        // Read both artifacts to their verified ends: each trailer's length and SHA-256 must match.
        io::copy(&mut data, &mut io::sink()).map_err(|e| stream_error(&what_d, e))?;
        io::copy(&mut manifest.into_inner(), &mut io::sink())
            .map_err(|e| stream_error(&what_m, e))?;
        Ok(stats)
    }
}

fn manifest_error(what: &str, e: backup_core::manifest::ManifestError) -> EngineError {
    match e {
        backup_core::manifest::ManifestError::Io(io) => stream_error(what, io),
        other => EngineError::Integrity(format!("{what}: {other}")),
    }
}

fn files_error(what: &str, e: FilesError) -> EngineError {
    match e {
        FilesError::Input { path, source } => {
            let inner = stream_error(what, source);
            match inner {
                EngineError::Integrity(m) => {
                    EngineError::Integrity(format!("{m} (while restoring {path})"))
                }
                other => other,
            }
        }
        other => other.into(),
    }
}
