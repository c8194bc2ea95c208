//! `backupctl verify`: prove backups are restorable without restoring them.
//!
//! Quick mode re-hashes every stored object and compares it with the catalog.
//! Full mode reads every artifact back, authenticates and decompresses every
//! segment, and checks the trailer's length and SHA-256 as well.

use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{ArtifactWithCopies, BackupFilter, BackupRecord, BackupStatus};
use backup_core::format::{ArtifactReader, ReadOptions};
use backup_core::keys::DataKey;
use backup_sinks::{ChannelReader, Sink};

use crate::error::{exit, EngineError, Result};
use crate::restore::{complete_copies, object_key, select_backup, BackupSelector, OpenedBackup};
use crate::streams::HashingReader;
use crate::{Engine, Progress};

#[derive(Debug, Clone)]
pub enum VerifyScope {
    One(String),
    All,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// True when stored data is wrong or missing (exit 3), false for errors reaching it (exit 1).
    pub integrity: bool,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupCheck {
    pub backup_id: String,
    pub source: String,
    pub ok: bool,
    /// The repositories whose copy was checked, in order.
    pub repositories: Vec<String>,
    pub artifacts_checked: u64,
    /// Archived (not thawed) objects: only their presence and size could be checked.
    pub archived_size_only: u64,
    pub bytes_read: u64,
    pub problems: Vec<Problem>,
    /// What the check covered beyond the artifacts (e.g. an Elasticsearch snapshot).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct VerifyReport {
    pub quick: bool,
    pub backups: Vec<BackupCheck>,
}

impl VerifyReport {
    pub fn exit_code(&self) -> i32 {
        let problems = self.backups.iter().flat_map(|b| &b.problems);
        let mut code = exit::OK;
        for p in problems {
            if p.integrity {
                return exit::INTEGRITY;
            }
            code = exit::FAILED;
        }
        code
    }
}

pub async fn run_verify(
    engine: &Engine,
    scope: &VerifyScope,
    quick: bool,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<VerifyReport> {
    let backups: Vec<BackupRecord> = match scope {
        VerifyScope::One(id) => vec![select_backup(engine, &BackupSelector::Id(id.clone())).await?],
        VerifyScope::All => {
            engine
                .catalog
                .list_backups(&BackupFilter {
                    source: None,
                    status: Some(BackupStatus::Complete),
                })
                .await?
        }
    };
    let key = engine.key()?;
    let mut report = VerifyReport {
        quick,
        backups: Vec::new(),
    };
    for record in backups {
        let mut check = BackupCheck {
            backup_id: record.id.to_string(),
            source: record.source.clone(),
            ok: true,
            repositories: Vec::new(),
            artifacts_checked: 0,
            archived_size_only: 0,
            bytes_read: 0,
            problems: Vec::new(),
            notes: Vec::new(),
        };
        let artifacts = engine.catalog.backup_artifacts(record.id).await?;
        let locations = complete_copies(engine, &record, &artifacts);
        if locations.is_empty() {
            check.problems.push(problem(EngineError::Integrity(format!(
                "backup {}: no repository holds a copy of every artifact",
                record.id
            ))));
        }
        // Every copy, so a damaged one is found before a restore has to fall back on another.
        for location in locations {
            check.repositories.push(location.repository.clone());
            match OpenedBackup::open(engine, &record, &location.repository, &key, cancel).await {
                // A wrong key is a configuration problem for every backup: stop at once.
                Err(e @ EngineError::Key(_)) => return Err(e),
                Err(e) => check.problems.push(problem(e)),
                Ok(opened) => {
                    let all = std::iter::once(&opened.manifest).chain(opened.data.iter());
                    for (artifact, dek) in all {
                        let result = verify_artifact(
                            engine, &opened, &record, artifact, dek, quick, &progress, cancel,
                        )
                        .await;
                        match result {
                            Ok(Checked::Read(bytes)) => check.bytes_read += bytes,
                            Ok(Checked::SizeOnly) => check.archived_size_only += 1,
                            Err(e) => check.problems.push(problem(e)),
                        }
                        check.artifacts_checked += 1;
                    }
                }
            }
        }
        // Elasticsearch: the artifacts are the snapshot's record; the snapshot is in the cluster.
        if let Some(snapshot) = engine.catalog.elasticsearch_snapshot(record.id).await? {
            match crate::elasticsearch::check_snapshot(engine, &record.source, &snapshot).await {
                Ok(note) => check.notes.push(note),
                Err(e) => check.problems.push(problem(e)),
            }
        }
        // RDS: the artifacts are the snapshots' record; the snapshots are in RDS.
        let rds = engine.catalog.rds_snapshots(record.id).await?;
        if !rds.is_empty() {
            match crate::rds::check_snapshots(engine, &record.source, &rds).await {
                Ok(note) => check.notes.push(note),
                Err(e) => check.problems.push(problem(e)),
            }
        }
        // Azure SQL: the artifact is the backup's record; the data is in Azure.
        if let Some(sql) = engine.catalog.azure_sql_backup(record.id).await? {
            match crate::azure_sql::check_backup(engine, &record.source, &sql).await {
                Ok(note) => check.notes.push(note),
                Err(e) => check.problems.push(problem(e)),
            }
        }
        check.ok = check.problems.is_empty();
        if !check.ok && matches!(scope, VerifyScope::All) {
            // A prune may have started deleting it while we read it: that is not damage.
            let now = engine.catalog.get_backup(record.id).await?;
            if now.is_none_or(|b| b.status == BackupStatus::Deleting) {
                tracing::info!(backup_id = %record.id, "deleted while being verified; skipped");
                continue;
            }
        }
        for p in &check.problems {
            tracing::error!(backup_id = %record.id, "{}", p.message);
        }
        report.backups.push(check);
    }
    Ok(report)
}

fn problem(e: EngineError) -> Problem {
    Problem {
        integrity: e.exit_code() == exit::INTEGRITY,
        message: e.to_string(),
    }
}

enum Checked {
    /// Read back in full (bytes).
    Read(u64),
    /// Archived: present with the recorded size; its content needs a thaw to be read.
    SizeOnly,
}

#[allow(clippy::too_many_arguments)]
async fn verify_artifact(
    engine: &Engine,
    opened: &OpenedBackup,
    record: &BackupRecord,
    artifact: &ArtifactWithCopies,
    dek: &DataKey,
    quick: bool,
    progress: &Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<Checked> {
    let a = &artifact.artifact;
    let what = format!(
        "backup {} artifact {} ({}) in repository {}",
        record.id, a.id, a.role, opened.repo.name
    );
    let key = object_key(&opened.repo, artifact)?;
    let copy = artifact
        .copies
        .iter()
        .find(|c| c.repository == opened.repo.name)
        .expect("object_key found it");
    let missing = |e: backup_sinks::SinkError| {
        if e.is_not_found() {
            EngineError::Integrity(format!("{what}: object {key} is missing"))
        } else {
            e.into()
        }
    };
    if crate::replicate::is_archive_class(copy.storage_class.as_deref()) {
        let info =
            opened.repo.sink.head(&key, cancel).await?.ok_or_else(|| {
                EngineError::Integrity(format!("{what}: object {key} is missing"))
            })?;
        if info.size != copy.stored_size {
            return Err(EngineError::Integrity(format!(
                "{what}: archived object {key} has {} bytes, the catalog recorded {}",
                info.size, copy.stored_size
            )));
        }
        return Ok(Checked::SizeOnly);
    }
    let (stored_size, stored_sha) = if quick {
        backup_sinks::sha256_of_object(&opened.repo.sink, &key, cancel)
            .await
            .map_err(missing)?
    } else {
        let rx = opened.repo.sink.get(&key, cancel).await.map_err(missing)?;
        let (id, dek, what2, progress) = (a.id, dek.clone(), what.clone(), progress.clone());
        let (verified, stored) = tokio::task::spawn_blocking(move || {
            let mut input = HashingReader::new(ProgressReader {
                inner: ChannelReader::new(rx),
                progress,
            });
            let (reader, _) =
                ArtifactReader::open(&mut input, Some(id), &dek, &ReadOptions::default())
                    .map_err(|e| EngineError::from_format(&what2, e))?;
            let verified = reader
                .verify_to_end()
                .map_err(|e| EngineError::from_format(&what2, e))?;
            Ok::<_, EngineError>((verified, input.finish()))
        })
        .await
        .map_err(|e| EngineError::Failed(format!("{what}: verification crashed: {e}")))??;
        if verified.plaintext_size != a.plaintext_size
            || hex::encode(verified.plaintext_sha256) != a.plaintext_sha256
        {
            return Err(EngineError::Integrity(format!(
                "{what}: decoded {} bytes with SHA-256 {}, the catalog recorded {} bytes with SHA-256 {}",
                verified.plaintext_size,
                hex::encode(verified.plaintext_sha256),
                a.plaintext_size,
                a.plaintext_sha256
            )));
        }
        stored
    };
    if stored_size != copy.stored_size || hex::encode(stored_sha) != copy.stored_sha256 {
        return Err(EngineError::Integrity(format!(
            "{what}: stored object {key} has {stored_size} bytes with SHA-256 {}, the catalog recorded {} bytes with SHA-256 {}",
            hex::encode(stored_sha),
            copy.stored_size,
            copy.stored_sha256
        )));
    }
    if quick {
        progress.add_bytes(stored_size);
    }
    engine
        .catalog
        .mark_copy_verified(a.id, &opened.repo.name, chrono::Utc::now())
        .await?;
    Ok(Checked::Read(stored_size))
}

struct ProgressReader<R> {
    inner: R,
    progress: Arc<Progress>,
}

impl<R: std::io::Read> std::io::Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add_bytes(n as u64);
        Ok(n)
    }
}
