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
use backup_core::envelope::KeyEnvelope;
use backup_core::format::{ArtifactReader, ArtifactSummary, ReadOptions, VerifiedArtifact};
use backup_core::manifest::{layout, ManifestFooter, ManifestHeader, ManifestReader};
use backup_core::{ArtifactId, BackupId};
use backup_sinks::{ChannelReader, ObjectInfo, Sink};

use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::restore::envelope_error;
use crate::streams::HashingReader;
use crate::Engine;
use backup_sinks::read_object;

#[derive(Debug, Clone, Serialize, Default)]
pub struct RebuildReport {
    pub imported: Vec<String>,
    /// (backup id, reason) of backup folders that are not complete backups.
    pub incomplete: Vec<(String, String)>,
}

pub async fn run_rebuild(engine: &Engine, cancel: &CancellationToken) -> Result<RebuildReport> {
    let key = engine.key()?;
    let mut report = RebuildReport::default();
    for repo_config in &engine.config.repositories {
        let repo = Repository::open(&engine.config, repo_config).await?;
        repo.check_key(&key, cancel).await?;
        let mut by_backup: BTreeMap<BackupId, Vec<ObjectInfo>> = BTreeMap::new();
        for object in repo.sink.list(layout::BACKUPS_PREFIX, cancel).await? {
            if let Some(id) = layout::backup_of_key(&object.key) {
                by_backup.entry(id).or_default().push(object);
            }
        }
        for (backup_id, objects) in by_backup {
            match import_one(engine, &repo, &key, backup_id, &objects, cancel).await {
                Ok(()) => report.imported.push(backup_id.to_string()),
                Err(e @ EngineError::Key(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(%backup_id, repository = %repo.name, "not imported: {e}");
                    report
                        .incomplete
                        .push((backup_id.to_string(), e.to_string()));
                }
            }
        }
    }
    Ok(report)
}

async fn import_one(
    engine: &Engine,
    repo: &Repository,
    key: &backup_core::keys::MasterKey,
    backup_id: BackupId,
    objects: &[ObjectInfo],
    cancel: &CancellationToken,
) -> Result<()> {
    let envelope_key = layout::envelope_key(backup_id);
    if !objects.iter().any(|o| o.key == envelope_key) {
        return Err(EngineError::Failed(
            "no key envelope: the backup was interrupted (`backupctl gc` removes it)".into(),
        ));
    }
    let (manifest_id, manifest_key) = objects
        .iter()
        .find_map(|o| layout::manifest_artifact_of_key(&o.key).map(|id| (id, o.key.clone())))
        .ok_or_else(|| EngineError::Failed("no manifest: the backup was interrupted".into()))?;
    let envelope = KeyEnvelope::from_json(
        &backup_id.to_string(),
        &read_object(&repo.sink, &envelope_key, cancel).await?,
    )
    .map_err(|e| envelope_error(backup_id, e))?;
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
    engine
        .catalog
        .import_backup(&imported(
            repo,
            &header,
            &footer,
            manifest_id,
            &manifest_key,
            verified,
            stored,
        ))
        .await?;
    Ok(())
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
