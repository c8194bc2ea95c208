//! `backupctl catalog rebuild`: recreate the catalog from repository contents
//! alone. Every complete backup carries a key envelope and an encrypted
//! manifest that describes it fully; backups without them were interrupted.

use std::collections::BTreeMap;
use std::io::{self, BufReader};

use chrono::Utc;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{
    ArtifactRecord, ArtifactWithCopies, BackupCompletion, CopyRecord, ImportedBackup, NewBackup,
};
use backup_core::format::{ArtifactReader, ArtifactSummary, ReadOptions, VerifiedArtifact};
use backup_core::manifest::{layout, ManifestFooter, ManifestHeader, ManifestReader};
use backup_core::{ArtifactId, BackupId};
use backup_sinks::{ChannelReader, ObjectInfo, Sink};

use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::restore::envelope_error;
use crate::streams::HashingReader;
use crate::Engine;

#[derive(Debug, Clone, Serialize, Default)]
pub struct RebuildReport {
    pub imported: Vec<String>,
    /// Archived WAL files (and copies of them) recorded again.
    pub wal_files_imported: u64,
    /// Archived MongoDB oplog slices recorded again.
    pub oplog_slices_imported: u64,
    /// (backup id, reason) of backup folders that are not complete backups.
    pub incomplete: Vec<(String, String)>,
}

pub async fn run_rebuild(engine: &Engine, cancel: &CancellationToken) -> Result<RebuildReport> {
    let key = engine.key()?;
    let mut report = RebuildReport::default();
    // A backup replicated to several repositories is found in each: merge their copies.
    let mut found: BTreeMap<BackupId, ImportedBackup> = BTreeMap::new();
    let mut primaries: BTreeMap<BackupId, String> = BTreeMap::new();
    // What each backup's manifest footer says about its source (WAL, oplog, Atlas snapshot).
    let mut footers: BTreeMap<BackupId, backup_core::manifest::ManifestFooter> = BTreeMap::new();
    for repo_config in &engine.config.repositories {
        let repo = Repository::open(&engine.config, repo_config).await?;
        repo.check_key(&key, cancel).await?;
        report.wal_files_imported += rebuild_wal(engine, &repo, cancel).await?;
        report.oplog_slices_imported +=
            crate::mongo::archive::rebuild_slices(engine, &repo, cancel).await?;
        let mut by_backup: BTreeMap<BackupId, Vec<ObjectInfo>> = BTreeMap::new();
        for object in repo.sink.list(layout::BACKUPS_PREFIX, cancel).await? {
            if let Some(id) = layout::backup_of_key(&object.key) {
                by_backup.entry(id).or_default().push(object);
            }
        }
        for (backup_id, objects) in by_backup {
            match import_one(&repo, &key, backup_id, &objects, cancel).await {
                Ok((imported, primary, footer)) => {
                    primaries.insert(backup_id, primary);
                    footers.insert(backup_id, footer);
                    merge(&mut found, imported);
                }
                Err(e @ EngineError::Key(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(%backup_id, repository = %repo.name, "not imported: {e}");
                    report.incomplete.push((
                        backup_id.to_string(),
                        format!("repository {}: {e}", repo.name),
                    ));
                }
            }
        }
    }
    for (backup_id, mut imported) in found {
        // The repository the backup was made in, when it still holds a copy.
        if let Some(primary) = primaries.get(&backup_id) {
            let holds = imported
                .artifacts
                .iter()
                .all(|a| a.copies.iter().any(|c| &c.repository == primary));
            if holds {
                imported.backup.repository = primary.clone();
            }
        }
        engine.catalog.import_backup(&imported).await?;
        let footer = footers.get(&backup_id);
        if let Some(position) = footer.and_then(|f| f.postgres.as_ref()) {
            engine
                .catalog
                .record_postgres_backup(&crate::backup::postgres_record(backup_id, position))
                .await?;
        }
        if let Some(position) = footer.and_then(|f| f.mongodb.as_ref()) {
            engine
                .catalog
                .record_mongo_backup(&crate::mongo::mongo_record(backup_id, position)?)
                .await?;
            if !position.document_counts.is_empty() {
                engine
                    .catalog
                    .record_row_counts(backup_id, &position.document_counts)
                    .await?;
            }
        }
        if let Some(snapshot) = footer.and_then(|f| f.atlas.as_ref()) {
            engine
                .catalog
                .record_atlas_snapshot(&crate::mongo::atlas::atlas_record(
                    backup_id,
                    snapshot,
                    imported.backup.started_at,
                ))
                .await?;
        }
        // Elasticsearch: the snapshot's record is the backup's data; read it back.
        if imported.source_kind == "elasticsearch" {
            if let Err(e) = crate::elasticsearch::reimport_record(engine, backup_id, cancel).await {
                report.incomplete.push((
                    backup_id.to_string(),
                    format!("its Elasticsearch snapshot record could not be read: {e}"),
                ));
            }
        }
        // RDS: likewise, the snapshots' record.
        if imported.source_kind == "rds" {
            if let Err(e) = crate::rds::reimport_record(engine, backup_id, cancel).await {
                report.incomplete.push((
                    backup_id.to_string(),
                    format!("its RDS snapshot record could not be read: {e}"),
                ));
            }
        }
        // Azure SQL: likewise, the backup's record (its point, its bacpac).
        if imported.source_kind == "azure-sql" {
            if let Err(e) = crate::azure_sql::reimport_record(engine, backup_id, cancel).await {
                report.incomplete.push((
                    backup_id.to_string(),
                    format!("its Azure SQL record could not be read: {e}"),
                ));
            }
        }
        // Copies the config asks for and no repository holds yet are queued again.
        if let Ok((_, source)) = engine.config.source(&imported.backup.source) {
            let targets: Vec<_> =
                crate::replicate::copy_targets(source, imported.backup.tag.as_deref())
                    .into_iter()
                    .filter(|t| {
                        !imported
                            .artifacts
                            .iter()
                            .all(|a| a.copies.iter().any(|c| c.repository == t.destination))
                    })
                    .collect();
            engine
                .catalog
                .enqueue_copies(backup_id, &targets, Utc::now())
                .await?;
        }
        report.imported.push(backup_id.to_string());
    }
    Ok(report)
}

/// Records the archived WAL files (`wal/<source>/<name>.bkpd`) of `repo` the catalog does not
/// know: each is decrypted to learn its content's checksum. A file known from another
/// repository is recorded as a copy there.
async fn rebuild_wal(
    engine: &Engine,
    repo: &Repository,
    cancel: &CancellationToken,
) -> Result<u64> {
    use backup_sources::postgres::wal::{WalFileName, WalSegmentSize};
    let mut imported = 0;
    for object in repo.sink.list(layout::WAL_PREFIX, cancel).await? {
        let Some((source, file)) = object
            .key
            .strip_prefix(layout::WAL_PREFIX)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let Some(file_name) = file.strip_suffix(".bkpd") else {
            continue;
        };
        let size = engine
            .config
            .source(source)
            .ok()
            .and_then(|(_, s)| s.kind.wal_segment_size())
            .unwrap_or(WalSegmentSize::DEFAULT);
        let timeline = match WalFileName::parse(file_name, size) {
            Ok(WalFileName::Segment(s) | WalFileName::Partial(s)) => s.timeline,
            Ok(WalFileName::BackupHistory { segment, .. }) => segment.timeline,
            Ok(WalFileName::History { timeline }) => timeline,
            Err(e) => {
                tracing::warn!(key = %object.key, "not a WAL file: {e}");
                continue;
            }
        };
        let known = engine.catalog.wal_file(source, file_name).await?;
        if known.as_ref().is_some_and(|k| k.repository == repo.name) {
            continue;
        }
        let copies = engine.catalog.wal_copies(source, file_name).await?;
        if copies.iter().any(|c| c.repository == repo.name) {
            continue;
        }
        let rx = repo.sink.get(&object.key, cancel).await?;
        let (key, what) = (
            engine.key()?,
            format!("{} in repository {}", object.key, repo.name),
        );
        let ((plain_size, plain_sha), (stored_size, stored_sha)) =
            tokio::task::spawn_blocking(move || -> Result<_> {
                let mut input = HashingReader::new(ChannelReader::new(rx));
                let plain = {
                    let (reader, _) =
                        backup_core::sealed::open_sealed(&mut input, &key, &ReadOptions::default())
                            .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
                    let mut hashing = HashingReader::new(reader);
                    io::copy(&mut hashing, &mut io::sink())
                        .map_err(|e| crate::restore::stream_error(&what, e))?;
                    hashing.finish()
                };
                Ok((plain, input.finish()))
            })
            .await
            .map_err(|e| EngineError::Failed(format!("reading {} crashed: {e}", object.key)))??;
        match known {
            None => {
                engine
                    .catalog
                    .record_wal_file(&backup_catalog::WalFileRecord {
                        source: source.to_owned(),
                        file_name: file_name.to_owned(),
                        timeline,
                        repository: repo.name.clone(),
                        object_key: object.key.clone(),
                        plaintext_size: plain_size,
                        plaintext_sha256: hex::encode(plain_sha),
                        stored_size,
                        stored_sha256: hex::encode(stored_sha),
                        archived_at: object.modified.into(),
                    })
                    .await?;
            }
            Some(original) if original.plaintext_sha256 == hex::encode(plain_sha) => {
                engine
                    .catalog
                    .record_wal_copy(&backup_catalog::WalFileCopy {
                        source: source.to_owned(),
                        file_name: file_name.to_owned(),
                        repository: repo.name.clone(),
                        object_key: object.key.clone(),
                        stored_size,
                        stored_sha256: hex::encode(stored_sha),
                        copied_at: Utc::now(),
                    })
                    .await?;
            }
            Some(_) => {
                tracing::warn!(key = %object.key, repository = %repo.name,
                    "differs from the same WAL file in another repository; not recorded");
                continue;
            }
        }
        imported += 1;
    }
    Ok(imported)
}

/// Adds `imported`'s copies to the same backup found in another repository.
fn merge(found: &mut BTreeMap<BackupId, ImportedBackup>, imported: ImportedBackup) {
    let Some(existing) = found.get_mut(&imported.backup.id) else {
        found.insert(imported.backup.id, imported);
        return;
    };
    for artifact in imported.artifacts {
        match existing
            .artifacts
            .iter_mut()
            .find(|a| a.artifact.id == artifact.artifact.id)
        {
            Some(a) => a.copies.extend(artifact.copies),
            None => existing.artifacts.push(artifact),
        }
    }
}

/// Reads one backup's manifest in `repo` and returns what to import, with the repository
/// the backup was made in (from its manifest).
async fn import_one(
    repo: &Repository,
    key: &backup_core::keys::Keyring,
    backup_id: BackupId,
    objects: &[ObjectInfo],
    cancel: &CancellationToken,
) -> Result<(
    ImportedBackup,
    String,
    backup_core::manifest::ManifestFooter,
)> {
    if !objects
        .iter()
        .any(|o| layout::is_envelope_key(backup_id, &o.key))
    {
        return Err(EngineError::Failed(
            "no key envelope: the backup was interrupted (`backupctl gc` removes it)".into(),
        ));
    }
    let (manifest_id, manifest_key) = objects
        .iter()
        .find_map(|o| layout::manifest_artifact_of_key(&o.key).map(|id| (id, o.key.clone())))
        .ok_or_else(|| EngineError::Failed("no manifest: the backup was interrupted".into()))?;
    let envelope = crate::keys::read_envelope(repo, backup_id, key, cancel).await?;
    let dek = envelope
        .data_key(key, manifest_id)
        .map_err(|e| envelope_error(backup_id, e))?;
    let rx = repo.sink.get(&manifest_key, cancel).await?;
    let what = format!("backup {backup_id} manifest {manifest_key}");
    let (header, footer, verified, stored) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut input = HashingReader::new(ChannelReader::new(rx));
        let (reader, _) =
            ArtifactReader::open(&mut input, Some(manifest_id), &dek, &ReadOptions::default())
                .map_err(|e| EngineError::from_format(&what, e))?;
        let (mut manifest, header) = ManifestReader::open(BufReader::new(reader))
            .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
        let footer = manifest
            .footer()
            .map_err(|e| EngineError::Integrity(format!("{what}: {e}")))?;
        let mut reader = manifest.into_inner().into_inner();
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| crate::restore::stream_error(&what, e))?;
        let verified = reader.verified().expect("read to the end");
        drop(reader);
        Ok((header, footer, verified, input.finish()))
    })
    .await
    .map_err(|e| EngineError::Failed(format!("reading manifest crashed: {e}")))??;
    if header.backup_id != backup_id {
        return Err(EngineError::Integrity(format!(
            "manifest {manifest_key} belongs to backup {}",
            header.backup_id
        )));
    }
    for a in &footer.artifacts {
        let expected = layout::data_key(backup_id, a.artifact_id);
        match objects.iter().find(|o| o.key == expected) {
            Some(o) if o.size == a.stored_size => {}
            Some(o) => {
                return Err(EngineError::Integrity(format!(
                    "{expected} has {} bytes, the manifest says {}",
                    o.size, a.stored_size
                )))
            }
            None => return Err(EngineError::Integrity(format!("{expected} is missing"))),
        }
    }
    let class_of = |key: &str| {
        objects
            .iter()
            .find(|o| o.key == key)
            .and_then(|o| o.storage_class.clone())
            .filter(|class| class != "STANDARD")
    };
    let mut imported = imported(
        repo,
        &header,
        &footer,
        manifest_id,
        &manifest_key,
        verified,
        stored,
    );
    for copy in imported.artifacts.iter_mut().flat_map(|a| &mut a.copies) {
        copy.storage_class = class_of(&copy.object_key);
    }
    Ok((imported, header.repository.clone(), footer))
}

fn imported(
    repo: &Repository,
    header: &ManifestHeader,
    footer: &ManifestFooter,
    manifest_id: ArtifactId,
    manifest_key: &str,
    verified: VerifiedArtifact,
    (stored_size, stored_sha): (u64, [u8; 32]),
) -> ImportedBackup {
    let now = Utc::now();
    let manifest_summary = ArtifactSummary {
        artifact_id: manifest_id,
        kind: backup_core::format::ArtifactKind::Manifest,
        plaintext_size: verified.plaintext_size,
        plaintext_sha256: verified.plaintext_sha256,
        stored_size,
        stored_sha256: stored_sha,
        segment_count: verified.segment_count,
    };
    let artifact = |s: &ArtifactSummary, object_key: String| ArtifactWithCopies {
        artifact: ArtifactRecord {
            id: s.artifact_id,
            backup_id: header.backup_id,
            role: s.kind.as_str().to_owned(),
            plaintext_size: s.plaintext_size,
            plaintext_sha256: hex::encode(s.plaintext_sha256),
            segment_count: s.segment_count,
            created_at: footer.finished_at,
        },
        copies: vec![CopyRecord {
            artifact_id: s.artifact_id,
            repository: repo.name.clone(),
            object_key,
            stored_size: s.stored_size,
            stored_sha256: hex::encode(s.stored_sha256),
            storage_class: None,
            verified_at: now,
        }],
    };
    let mut artifacts: Vec<ArtifactWithCopies> = footer
        .artifacts
        .iter()
        .map(|a| artifact(a, layout::data_key(header.backup_id, a.artifact_id)))
        .collect();
    artifacts.push(artifact(&manifest_summary, manifest_key.to_owned()));
    let stored_bytes = footer.artifacts.iter().map(|a| a.stored_size).sum::<u64>() + stored_size;
    ImportedBackup {
        backup: NewBackup {
            id: header.backup_id,
            source: header.source_name.clone(),
            repository: repo.name.clone(),
            backup_type: header.backup_type.clone(),
            started_at: header.started_at,
            host: header.host.clone(),
            pid: 0,
            tool_version: header.tool_version.clone(),
            tag: header.tag.clone(),
        },
        source_kind: header.source_kind.clone(),
        completion: BackupCompletion {
            finished_at: footer.finished_at,
            file_count: footer.file_count,
            skipped_count: footer.skipped_count,
            plaintext_bytes: footer.plaintext_bytes,
            stored_bytes,
            manifest_artifact: manifest_id,
        },
        artifacts,
    }
}
