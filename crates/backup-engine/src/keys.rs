//! Repository key management: `backupctl key add | list | rotate` and `backupctl shred`.
//!
//! Every artifact has its own data key, stored only wrapped by a repository key: in the
//! backup's key envelope, or (WAL files) in the sealed object's prefix. So a new repository key
//! never means rewriting data: `key add` makes a new key active for everything written from
//! then on, `key rotate` re-wraps every envelope in every repository under it (objects are
//! immutable: the re-wrapped envelope is written as a new object before the old one is
//! deleted, so a crash leaves at least one readable envelope, and running rotate again carries
//! on), and a key is retired from the key file only once
//! nothing in any repository is wrapped under it any more. Sealed WAL files keep their key until
//! WAL retention deletes them; `key list` shows how many still reference each key.
//!
//! `shred` deletes a backup's envelope from every repository holding a copy, which makes the
//! data unreadable even where it cannot be deleted at once (an archive copy, a copy held by a
//! provider's versioning), records that in the catalog, then deletes the rest of the backup.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::{BackupFilter, BackupStatus, CatalogError};
use backup_core::envelope::KeyEnvelope;
use backup_core::keys::{KeyId, KeyLookup, Keyring, MasterKey};
use backup_core::manifest::layout;
use backup_core::sealed::{sealed_key_id, SEALED_KEY_ID_PREFIX};
use backup_core::BackupId;
use backup_sinks::{put_bytes, read_object, Sink};

use crate::error::{EngineError, Result};
use crate::repo::Repository;
use crate::Engine;

/// Every key envelope object of `backup` in `repo`: `keys.json`, and `keys-KEY.json` after
/// rotations (two at once only while a rotation of this backup is under way).
pub async fn envelope_objects(
    repo: &Repository,
    backup: BackupId,
    cancel: &CancellationToken,
) -> Result<Vec<String>> {
    Ok(repo
        .sink
        .list(&layout::backup_prefix(backup), cancel)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| layout::is_envelope_key(backup, k))
        .collect())
}

/// Reads envelope object `key` of `backup`; `None` if it is gone (a rotation finishing).
async fn read_envelope_object(
    repo: &Repository,
    backup: BackupId,
    key: &str,
    cancel: &CancellationToken,
) -> Result<Option<KeyEnvelope>> {
    match read_object(&repo.sink, key, cancel).await {
        Ok(bytes) => KeyEnvelope::from_json(&backup.to_string(), &bytes)
            .map(Some)
            .map_err(|e| crate::restore::envelope_error(backup, e)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Every envelope of `backup` in `repo` with its object key.
async fn read_envelopes(
    repo: &Repository,
    backup: BackupId,
    cancel: &CancellationToken,
) -> Result<Vec<(String, KeyEnvelope)>> {
    let mut found = Vec::new();
    for key in envelope_objects(repo, backup, cancel).await? {
        if let Some(envelope) = read_envelope_object(repo, backup, &key, cancel).await? {
            found.push((key, envelope));
        }
    }
    Ok(found)
}

/// Of `found`, the envelope wrapped under `ring`'s active key, else one under a key it holds,
/// else any (opening it then names the key it needs).
fn best_envelope<'a>(
    found: &'a [(String, KeyEnvelope)],
    ring: &Keyring,
) -> Option<&'a (String, KeyEnvelope)> {
    found
        .iter()
        .find(|(_, e)| e.key_id == *ring.active().id())
        .or_else(|| {
            found
                .iter()
                .find(|(_, e)| ring.key_for(&e.key_id).is_some())
        })
        .or(found.first())
}

fn missing_envelope(repo: &Repository, backup: BackupId) -> EngineError {
    EngineError::Integrity(format!(
        "backup {backup}: its key envelope is missing from repository {}; the backup cannot be decrypted",
        repo.name
    ))
}

/// Reads the key envelope of `backup` in `repo` that `keys` can open (any envelope when none
/// can, so that opening it names the key it needs).
pub async fn read_envelope(
    repo: &Repository,
    backup: BackupId,
    keys: &Keyring,
    cancel: &CancellationToken,
) -> Result<KeyEnvelope> {
    // The common case without a LIST: the original envelope, under a key we hold.
    let original = layout::envelope_key(backup);
    if let Some(envelope) = read_envelope_object(repo, backup, &original, cancel).await? {
        if keys.key_for(&envelope.key_id).is_some() {
            return Ok(envelope);
        }
    }
    let found = read_envelopes(repo, backup, cancel).await?;
    best_envelope(&found, keys)
        .map(|(_, envelope)| envelope.clone())
        .ok_or_else(|| missing_envelope(repo, backup))
}

/// Deletes every key envelope of `backup` in `repo`: from then on nothing of it there is
/// readable.
pub async fn delete_envelopes(
    repo: &Repository,
    backup: BackupId,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut keys = envelope_objects(repo, backup, cancel).await?;
    let original = layout::envelope_key(backup);
    if !keys.contains(&original) {
        keys.push(original);
    }
    for key in keys {
        repo.sink.delete(&key, cancel).await?;
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyUsage {
    pub key_id: String,
    pub active: bool,
    /// Backup key envelopes wrapped under it (one per backup and repository).
    pub envelopes: u64,
    /// Archived WAL files (and copies) sealed under it.
    pub wal_files: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    pub key_file: String,
    pub active: String,
    pub keys: Vec<KeyUsage>,
    /// Envelopes re-wrapped under the active key by this run.
    pub rewrapped: u64,
    /// Keys removed from the key file by this run.
    pub retired: Vec<String>,
    /// Why a key that is not active was kept.
    pub kept: Vec<String>,
    /// Objects that could not be read or re-wrapped (nothing was changed for them).
    pub problems: Vec<String>,
}

/// `backupctl key add`: a new random key becomes the active one; the old ones stay in the key
/// file to read what they wrap.
pub fn add_key(engine: &Engine) -> Result<KeyReport> {
    let mut ring = engine.key()?;
    let key = MasterKey::generate();
    let id = key.id().to_string();
    ring.add_active(key);
    crate::keyfile::replace(&engine.config.encryption.key_file, &ring)?;
    tracing::info!(key_id = %id, "new active repository key");
    Ok(KeyReport {
        key_file: engine.config.encryption.key_file.display().to_string(),
        active: id,
        keys: ring
            .keys()
            .iter()
            .enumerate()
            .map(|(i, k)| KeyUsage {
                key_id: k.id().to_string(),
                active: i == 0,
                envelopes: 0,
                wal_files: 0,
            })
            .collect(),
        rewrapped: 0,
        retired: Vec::new(),
        kept: Vec::new(),
        problems: Vec::new(),
    })
}

/// `backupctl key list` (`rewrap = false`: only counts what each key wraps) and
/// `backupctl key rotate` (`rewrap = true`: re-wraps, updates repository markers, retires
/// keys nothing references).
pub async fn scan_keys(
    engine: &Engine,
    rewrap: bool,
    cancel: &CancellationToken,
) -> Result<KeyReport> {
    let mut ring = engine.key()?;
    let active = ring.active().id().clone();
    let mut envelopes: BTreeMap<KeyId, u64> = BTreeMap::new();
    let mut wal: BTreeMap<KeyId, u64> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut rewrapped = 0;
    let mut repos: HashMap<String, Repository> = HashMap::new();
    // Repositories where something could not be read or re-wrapped.
    let mut unchecked_repos: BTreeSet<String> = BTreeSet::new();

    let backups = engine
        .catalog
        .list_backups(&BackupFilter::default())
        .await?;
    // Where each backup has copies (its own repository among them), in one query.
    let places = crate::replicate::copy_places(engine, None).await?;
    let running = backups
        .iter()
        .filter(|b| b.status == BackupStatus::Running)
        .count();
    for b in backups
        .iter()
        .filter(|b| b.status == BackupStatus::Complete)
    {
        for name in places
            .get(&b.id)
            .into_iter()
            .flatten()
            .map(|p| &p.repository)
        {
            let repo = open(engine, &mut repos, name).await?;
            match envelope_in(repo, b.id, &ring, rewrap, cancel).await {
                Ok((under, changed)) => {
                    *envelopes.entry(under).or_default() += 1;
                    if changed {
                        rewrapped += 1;
                        tracing::info!(backup_id = %b.id, repository = %name, to = %active, "key envelope re-wrapped");
                    }
                }
                Err(e) => {
                    unchecked_repos.insert(name.clone());
                    problems.push(format!("backup {} in repository {name}: {e}", b.id));
                }
            }
        }
    }

    for source in engine
        .config
        .sources
        .iter()
        .filter(|s| s.kind.kind_name() == "postgres")
    {
        for file in engine.catalog.wal_files(&source.name).await? {
            let mut places = vec![(file.repository.clone(), file.object_key.clone())];
            for c in engine
                .catalog
                .wal_copies(&source.name, &file.file_name)
                .await?
            {
                places.push((c.repository, c.object_key));
            }
            for (name, key) in places {
                let repo = open(engine, &mut repos, &name).await?;
                match sealed_key_of(repo, &key, cancel).await {
                    Ok(id) => *wal.entry(id).or_default() += 1,
                    Err(e) => {
                        unchecked_repos.insert(name.clone());
                        problems.push(format!("repository {name} object {key}: {e}"));
                    }
                }
            }
        }
    }

    // MongoDB oplog slices are sealed one by one too, and counted with the WAL files.
    for source in engine
        .config
        .sources
        .iter()
        .filter(|s| s.kind.kind_name() == "mongodb")
    {
        for slice in engine.catalog.oplog_slices(&source.name).await? {
            let repo = open(engine, &mut repos, &slice.repository).await?;
            match sealed_key_of(repo, &slice.object_key, cancel).await {
                Ok(id) => *wal.entry(id).or_default() += 1,
                Err(e) => {
                    unchecked_repos.insert(slice.repository.clone());
                    problems.push(format!(
                        "repository {} object {}: {e}",
                        slice.repository, slice.object_key
                    ));
                }
            }
        }
    }

    let mut retired = Vec::new();
    let mut kept = Vec::new();
    if rewrap {
        // Every configured repository, so one without backups (yet) accepts the new key too.
        for r in &engine.config.repositories {
            if unchecked_repos.contains(&r.name) {
                continue;
            }
            let repo = open(engine, &mut repos, &r.name).await?;
            if repo.check_key(&ring, cancel).await? {
                repo.record_key(&active, cancel).await?;
            }
        }
        let old: Vec<KeyId> = ring.keys()[1..].iter().map(|k| k.id().clone()).collect();
        for id in old {
            let (e, w) = (
                envelopes.get(&id).copied().unwrap_or(0),
                wal.get(&id).copied().unwrap_or(0),
            );
            if e > 0 || w > 0 {
                kept.push(format!(
                    "{id}: still wraps {e} envelopes and {w} WAL files{}",
                    if e == 0 {
                        " (WAL keeps its key until WAL retention deletes it; run rotate again then)"
                    } else {
                        ""
                    }
                ));
            } else if running > 0 {
                kept.push(format!(
                    "{id}: {running} backups are running and may have started under it; run rotate again when they end"
                ));
            } else if !problems.is_empty() {
                kept.push(format!(
                    "{id}: some objects could not be checked (see problems); nothing is retired until every one is"
                ));
            } else {
                ring.retire(&id);
                retired.push(id.to_string());
            }
        }
        if !retired.is_empty() {
            crate::keyfile::replace(&engine.config.encryption.key_file, &ring)?;
            tracing::info!(retired = ?retired, "retired repository keys nothing references");
        }
    }
    Ok(KeyReport {
        key_file: engine.config.encryption.key_file.display().to_string(),
        active: active.to_string(),
        keys: ring
            .keys()
            .iter()
            .map(|k| KeyUsage {
                key_id: k.id().to_string(),
                active: *k.id() == active,
                envelopes: envelopes.get(k.id()).copied().unwrap_or(0),
                wal_files: wal.get(k.id()).copied().unwrap_or(0),
            })
            .collect(),
        rewrapped,
        retired,
        kept,
        problems,
    })
}

async fn open<'a>(
    engine: &Engine,
    repos: &'a mut HashMap<String, Repository>,
    name: &str,
) -> Result<&'a Repository> {
    if !repos.contains_key(name) {
        let repo = Repository::open_named(&engine.config, name).await?;
        repos.insert(name.to_owned(), repo);
    }
    Ok(&repos[name])
}

/// Brings `backup`'s envelope in `repo` under the active key (when `rewrap`): writes the
/// re-wrapped envelope as a new object, then deletes the older ones, so a crash at any point
/// leaves at least one readable envelope and running again finishes the job. Returns the key
/// its envelope is wrapped under now and whether this call re-wrapped it.
async fn envelope_in(
    repo: &Repository,
    backup: BackupId,
    ring: &Keyring,
    rewrap: bool,
    cancel: &CancellationToken,
) -> Result<(KeyId, bool)> {
    let active = ring.active().id().clone();
    let found = read_envelopes(repo, backup, cancel).await?;
    let current = best_envelope(&found, ring).ok_or_else(|| missing_envelope(repo, backup))?;
    if !rewrap {
        return Ok((current.1.key_id.clone(), false));
    }
    let mut changed = false;
    let keep = if current.1.key_id == active {
        current.0.clone()
    } else {
        let new = current
            .1
            .rewrap(ring, ring.active())
            .map_err(|e| crate::restore::envelope_error(backup, e))?;
        let key = layout::rotated_envelope_key(backup, &active);
        put_bytes(&repo.sink, &key, new.to_json(), cancel).await?;
        changed = true;
        key
    };
    for (key, _) in &found {
        if *key != keep {
            repo.sink.delete(key, cancel).await?;
        }
    }
    Ok((active, changed))
}

/// Reads just enough of a sealed object to know its key.
async fn sealed_key_of(repo: &Repository, key: &str, cancel: &CancellationToken) -> Result<KeyId> {
    let mut stream = repo.sink.get(key, cancel).await?;
    let mut prefix = Vec::new();
    while prefix.len() < SEALED_KEY_ID_PREFIX {
        match stream.recv().await {
            Some(chunk) => prefix.extend_from_slice(
                &chunk.map_err(|e| EngineError::Failed(format!("reading {key}: {e}")))?,
            ),
            None => break,
        }
    }
    sealed_key_id(&prefix).map_err(|e| EngineError::Integrity(format!("{key}: {e}")))
}

#[derive(Debug, Clone, Serialize)]
pub struct ShredReport {
    pub backup_id: String,
    pub source: String,
    /// Repositories the key envelope was deleted from.
    pub repositories: Vec<String>,
    pub objects_deleted: u64,
}

/// `backupctl shred BACKUP_ID`: makes a backup unreadable everywhere, then deletes it.
pub async fn shred(
    engine: &Engine,
    backup: &str,
    cancel: &CancellationToken,
) -> Result<ShredReport> {
    let record = engine.catalog.find_backup_by_prefix(backup).await?;
    let id = record.id;
    if record.legal_hold {
        return Err(EngineError::Usage(format!(
            "backup {id} is under legal hold; `backupctl unhold {id}` first if it really must go"
        )));
    }
    if record.status == BackupStatus::Running {
        return Err(EngineError::Usage(format!(
            "backup {id} is still running; shred it once it has finished"
        )));
    }
    let dependents: Vec<String> = engine
        .catalog
        .postgres_backups(&record.source)
        .await?
        .into_iter()
        .filter(|b| b.parent_backup_id == Some(id))
        .map(|b| b.backup_id.to_string())
        .collect();
    if !dependents.is_empty() {
        return Err(EngineError::Usage(format!(
            "incremental backups {} build on backup {id}; shred them first",
            dependents.join(", ")
        )));
    }
    let artifacts = engine.catalog.backup_artifacts(id).await?;
    let names: BTreeSet<String> = std::iter::once(record.repository.clone())
        .chain(
            artifacts
                .iter()
                .flat_map(|a| a.copies.iter().map(|c| c.repository.clone())),
        )
        .chain(engine.config.repositories.iter().map(|r| r.name.clone()))
        .collect();
    let mut repositories = Vec::new();
    for name in &names {
        let repo = Repository::open_named(&engine.config, name).await?;
        if let Err(e) = delete_envelopes(&repo, id, cancel).await {
            return Err(EngineError::Failed(format!(
                "deleting the key envelope of backup {id} from repository {name}: {e}; the shred is not recorded until every copy's envelope is gone: run shred again"
            )));
        }
        repositories.push(name.clone());
    }
    engine
        .catalog
        .record_shred(&backup_catalog::ShredRecord {
            backup_id: id,
            source: record.source.clone(),
            backup_started_at: record.started_at,
            repositories: repositories.clone(),
            shredded_at: chrono::Utc::now(),
        })
        .await?;
    tracing::warn!(backup_id = %id, source = %record.source, "backup shredded: its key envelopes are deleted everywhere");
    let removed = match crate::prune::finish_deletion(engine, id, cancel).await {
        Ok(r) => r.objects,
        Err(EngineError::Catalog(CatalogError::BackupNotFound { .. })) => 0,
        Err(e) => {
            return Err(EngineError::Failed(format!(
                "backup {id} is shredded (unreadable), but deleting its objects failed: {e}; `backupctl prune` finishes it"
            )))
        }
    };
    Ok(ShredReport {
        backup_id: id.to_string(),
        source: record.source,
        repositories,
        objects_deleted: removed,
    })
}
