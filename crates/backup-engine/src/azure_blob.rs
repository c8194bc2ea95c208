//! The Azure Blob Storage source: containers (names, metadata) and their blobs (names,
//! content type, metadata, content) copied into our repositories and restored into a
//! container. Each blob's content streams through the pipeline as one entry of the data
//! artifact, named by its position (blob names are not safe file paths); the last entry is
//! the index that maps entries back to containers, names and properties.
//! See docs/sources/azure-blob.md.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use backup_sources::azure::blob::{BlobClient, BlobCredential, BlobError, PutBlobOptions};
use backup_sources::Secret;

use crate::error::{EngineError, Result};
use crate::mysql::DumpEvent;
use crate::restore::BackupSelector;
use crate::{Engine, Progress};

/// The last entry of a backup's data artifact: its [`BlobIndex`].
pub const INDEX_PATH: &str = "azure-blob/index.json";
const INDEX_FORMAT: u32 = 1;

/// `[[source]] kind = "azure-blob"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureBlobSourceConfig {
    /// The storage account name.
    pub account: String,
    /// The Blob service endpoint; default `https://{account}.blob.core.windows.net`
    /// (Azurite: `http://127.0.0.1:10000/devstoreaccount1`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Shared Key: the account key in an environment variable or a file.
    #[serde(default)]
    pub account_key_env: Option<String>,
    #[serde(default)]
    pub account_key_file: Option<PathBuf>,
    /// Or a SAS token (account SAS, or a container SAS with one container) likewise.
    #[serde(default)]
    pub sas_token_env: Option<String>,
    #[serde(default)]
    pub sas_token_file: Option<PathBuf>,
    /// Containers backed up; empty: every container of the account.
    #[serde(default)]
    pub containers: Vec<String>,
    /// Only blobs whose names start with this.
    #[serde(default)]
    pub prefix: Option<String>,
}

impl AzureBlobSourceConfig {
    /// Checked at config load: `(key, message)` on failure.
    pub fn validate(&self) -> std::result::Result<(), (String, String)> {
        let account_ok = (3..=24).contains(&self.account.len())
            && self
                .account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !account_ok {
            return Err((
                "account".into(),
                "a storage account name is 3-24 lowercase letters and digits".into(),
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err((
                    "endpoint".into(),
                    "must be an http:// or https:// URL".into(),
                ));
            }
            if endpoint.contains('?') {
                return Err((
                    "endpoint".into(),
                    "must not carry a query: put a SAS token in sas-token-env or sas-token-file"
                        .into(),
                ));
            }
        }
        let given = [
            self.account_key_env.is_some(),
            self.account_key_file.is_some(),
            self.sas_token_env.is_some(),
            self.sas_token_file.is_some(),
        ]
        .into_iter()
        .filter(|g| *g)
        .count();
        if given != 1 {
            return Err((
                "account-key-env".into(),
                "give exactly one of account-key-env, account-key-file, sas-token-env or \
                 sas-token-file (a secret, so never the key or token itself)"
                    .into(),
            ));
        }
        for (j, c) in self.containers.iter().enumerate() {
            if let Err(why) = check_container_name(c) {
                return Err((format!("containers[{j}]"), why));
            }
        }
        Ok(())
    }

    /// A client of the account, with the credential read from its env var or file.
    pub fn client(&self) -> Result<BlobClient> {
        let usage = |e: String| EngineError::Usage(e);
        let credential = if self.account_key_env.is_some() || self.account_key_file.is_some() {
            let (key, _) = crate::config::read_secret(
                self.account_key_env.as_deref(),
                self.account_key_file.as_deref(),
                "the storage account key",
                "`account-key-env` or `account-key-file`",
            )
            .map_err(usage)?;
            BlobCredential::SharedKey(Secret::new(key))
        } else {
            let (token, _) = crate::config::read_secret(
                self.sas_token_env.as_deref(),
                self.sas_token_file.as_deref(),
                "the SAS token",
                "`sas-token-env` or `sas-token-file`",
            )
            .map_err(usage)?;
            BlobCredential::Sas(Secret::new(token))
        };
        let endpoint = self
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{}.blob.core.windows.net", self.account));
        BlobClient::new(&endpoint, &self.account, credential).map_err(blob_error)
    }
}

/// Container names: 3-63 lowercase letters, digits and single hyphens, starting and ending
/// with a letter or digit.
pub fn check_container_name(name: &str) -> std::result::Result<(), String> {
    let ok = (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a container name (3-63 lowercase letters, digits and single \
             hyphens, starting and ending with a letter or digit)"
        ))
    }
}

/// A Blob service failure as an engine error: settings and credentials are the operator's
/// to fix (exit 2), the rest a failed operation.
pub fn blob_error(e: BlobError) -> EngineError {
    match e {
        BlobError::Config { .. } | BlobError::InvalidMetadata { .. } => {
            EngineError::Usage(e.to_string())
        }
        BlobError::Corrupt { .. } => EngineError::Integrity(e.to_string()),
        _ => EngineError::Failed(e.to_string()),
    }
}

/// What a backup holds: every container and blob, and the entry each blob's content is in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobIndex {
    pub format: u32,
    pub account: String,
    pub endpoint: String,
    #[serde(default)]
    pub prefix: Option<String>,
    pub containers: Vec<ContainerRecord>,
    /// Blobs listed but deleted before they could be read (not in the backup).
    #[serde(default)]
    pub vanished: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub public_access: Option<String>,
    pub blobs: Vec<BlobRecord>,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BlobRecord {
    pub name: String,
    /// The data artifact entry holding the content.
    pub entry: String,
    pub size: u64,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub content_md5: Option<String>,
    /// SHA-256 of the content as read (hex).
    pub sha256: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub blob_type: Option<String>,
    #[serde(default)]
    pub access_tier: Option<String>,
    #[serde(default)]
    pub last_modified: Option<String>,
}

impl BlobIndex {
    pub fn blob_count(&self) -> u64 {
        self.containers.iter().map(|c| c.blobs.len() as u64).sum()
    }
    pub fn bytes(&self) -> u64 {
        self.containers.iter().map(|c| c.bytes).sum()
    }
}

/// Entry path of the `n`th blob of container `container`.
fn entry_path(container: &str, n: usize) -> String {
    format!("azure-blob/{container}/{n:010}")
}

async fn send(tx: &mpsc::Sender<DumpEvent>, event: DumpEvent) -> Result<()> {
    tx.send(event)
        .await
        .map_err(|_| EngineError::Failed(crate::mysql::PIPELINE_GONE.into()))
}

/// Reads the account's containers and blobs into `tx` (the pipeline), one entry per blob
/// and then the index. Holds one chunk of one blob at a time.
pub async fn dump(
    cfg: &AzureBlobSourceConfig,
    tx: mpsc::Sender<DumpEvent>,
    cancel: &CancellationToken,
) -> Result<BlobIndex> {
    let client = cfg.client()?;
    let listed = client.list_containers(None).await.map_err(blob_error)?;
    let containers = if cfg.containers.is_empty() {
        listed
    } else {
        let mut chosen = Vec::new();
        for name in &cfg.containers {
            match listed.iter().find(|c| &c.name == name) {
                Some(c) => chosen.push(c.clone()),
                None => {
                    return Err(EngineError::Failed(format!(
                        "container {name} does not exist in storage account {}; create it or \
                         remove it from `containers`",
                        cfg.account
                    )))
                }
            }
        }
        chosen
    };
    let mut index = BlobIndex {
        format: INDEX_FORMAT,
        account: cfg.account.clone(),
        endpoint: client.endpoint(),
        prefix: cfg.prefix.clone(),
        containers: Vec::new(),
        vanished: Vec::new(),
    };
    for container in containers {
        let blobs = client
            .list_blobs(&container.name, cfg.prefix.as_deref())
            .await
            .map_err(blob_error)?;
        let mut record = ContainerRecord {
            name: container.name.clone(),
            metadata: container.metadata.clone(),
            public_access: container.public_access.clone(),
            blobs: Vec::with_capacity(blobs.len()),
            bytes: 0,
        };
        for (n, blob) in blobs.into_iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(EngineError::Failed("backup cancelled".into()));
            }
            let mut download = match client.get_blob(&container.name, &blob.name).await {
                Ok(d) => d,
                // Deleted since the listing: not part of this backup, and said so.
                Err(BlobError::NotFound { .. }) => {
                    tracing::warn!(container = %container.name, blob = %blob.name, "blob deleted while the backup ran; not in this backup");
                    index
                        .vanished
                        .push(format!("{}/{}", container.name, blob.name));
                    continue;
                }
                Err(e) => return Err(blob_error(e)),
            };
            let entry = entry_path(&container.name, n);
            send(&tx, DumpEvent::Start(entry.clone())).await?;
            let mut sha = Sha256::new();
            loop {
                match download.next_chunk().await {
                    Ok(Some(chunk)) => {
                        sha.update(&chunk);
                        send(&tx, DumpEvent::Chunk(chunk.to_vec())).await?;
                    }
                    Ok(None) => break,
                    // Dropping `tx` mid-entry makes the pipeline fail too; this error is
                    // the cause reported.
                    Err(e) => return Err(blob_error(e)),
                }
            }
            send(&tx, DumpEvent::End).await?;
            let props = &download.properties;
            record.bytes += props.size;
            record.blobs.push(BlobRecord {
                name: blob.name,
                entry,
                size: props.size,
                content_type: props.content_type.clone(),
                content_md5: props.content_md5.clone(),
                sha256: hex::encode(sha.finalize()),
                metadata: props.metadata.clone(),
                blob_type: props.blob_type.clone(),
                access_tier: blob.access_tier,
                last_modified: props.last_modified.clone(),
            });
        }
        index.containers.push(record);
    }
    let json = serde_json::to_vec_pretty(&index)
        .map_err(|e| EngineError::Failed(format!("encoding the blob index: {e}")))?;
    send(&tx, DumpEvent::Start(INDEX_PATH.into())).await?;
    send(&tx, DumpEvent::Chunk(json)).await?;
    send(&tx, DumpEvent::End).await?;
    Ok(index)
}

/// `backupctl restore SOURCE --target-container NAME | --original-containers`.
#[derive(Debug, Clone)]
pub struct BlobRestoreOptions {
    /// The azure-blob source the backup must belong to.
    pub source: String,
    /// Only these containers of the backup (all when empty).
    pub containers: Vec<String>,
    /// Restore into this container (several source containers then keep apart under
    /// `{container}/`); `None`: each container into its own name.
    pub target_container: Option<String>,
    /// Put restored blobs under this name prefix.
    pub target_prefix: Option<String>,
    /// Replace blobs of the same name in a non-empty target (others are left).
    pub overwrite: bool,
    /// Delete every blob under the target prefix first.
    pub drop: bool,
    pub restore: crate::restore::RestoreOptions,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoredContainer {
    pub from: String,
    pub to: String,
    pub prefix: String,
    pub blobs: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BlobRestoreOutcome {
    pub backup_id: backup_core::BackupId,
    pub source: String,
    pub repository: String,
    pub account: String,
    pub containers: Vec<RestoredContainer>,
    pub blobs: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// The source's config, or a usage error naming its actual kind.
pub fn blob_source<'a>(engine: &'a Engine, name: &str) -> Result<&'a AzureBlobSourceConfig> {
    let (_, source) = engine.config.source(name)?;
    match &source.kind {
        crate::config::SourceKindConfig::AzureBlob(cfg) => Ok(cfg),
        other => Err(EngineError::Usage(format!(
            "source {name} is a {} source; --target-container and --original-containers \
             restore azure-blob sources",
            other.kind_name()
        ))),
    }
}

/// Restores an azure-blob backup into containers of the source's account.
pub async fn run_blob_restore(
    engine: &Engine,
    selector: &BackupSelector,
    options: &BlobRestoreOptions,
    progress: Arc<Progress>,
    cancel: &CancellationToken,
) -> Result<BlobRestoreOutcome> {
    let started = std::time::Instant::now();
    let cfg = blob_source(engine, &options.source)?;
    if let Some(target) = &options.target_container {
        check_container_name(target).map_err(EngineError::Usage)?;
    }
    let record = crate::restore::select_backup(engine, selector).await?;
    if record.source != options.source {
        return Err(EngineError::Usage(format!(
            "backup {} belongs to source {}, not {}",
            record.id, record.source, options.source
        )));
    }
    let client = cfg.client()?;
    // Reachable and the credential accepted before anything is fetched.
    client
        .list_containers_page(None, None, Some(1))
        .await
        .map_err(blob_error)?;
    let staging = crate::mysql::Staging::new("azure-blob-restore", record.id)?;
    let fetched = crate::restore::run_restore(
        engine,
        &BackupSelector::Id(record.id.to_string()),
        staging.path(),
        &options.restore,
        progress,
        cancel,
    )
    .await?;
    let index: BlobIndex = serde_json::from_slice(
        &std::fs::read(staging.path().join(INDEX_PATH)).map_err(|e| {
            EngineError::Integrity(format!(
                "backup {}: no blob index ({e}); it is not a complete azure-blob backup",
                record.id
            ))
        })?,
    )
    .map_err(|e| EngineError::Integrity(format!("backup {}: blob index: {e}", record.id)))?;

    for wanted in &options.containers {
        if !index.containers.iter().any(|c| &c.name == wanted) {
            return Err(EngineError::Usage(format!(
                "backup {} holds no container {wanted} (it holds {:?})",
                record.id,
                index
                    .containers
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
            )));
        }
    }
    let chosen: Vec<&ContainerRecord> = index
        .containers
        .iter()
        .filter(|c| options.containers.is_empty() || options.containers.contains(&c.name))
        .collect();
    let base_prefix = options.target_prefix.clone().unwrap_or_default();
    let plan: Vec<(&ContainerRecord, String, String)> = chosen
        .iter()
        .map(|c| match &options.target_container {
            Some(target) if chosen.len() > 1 => {
                (*c, target.clone(), format!("{base_prefix}{}/", c.name))
            }
            Some(target) => (*c, target.clone(), base_prefix.clone()),
            None => (*c, c.name.clone(), base_prefix.clone()),
        })
        .collect();

    // Refuse before changing anything.
    for (from, to, prefix) in &plan {
        if options.overwrite || options.drop {
            continue;
        }
        let page = match client
            .list_blobs_page(to, Some(prefix.as_str()), None, Some(1))
            .await
        {
            Ok(page) => page,
            Err(BlobError::NotFound { .. }) => continue,
            Err(e) => return Err(blob_error(e)),
        };
        if let Some(first) = page.items.first() {
            let under = if prefix.is_empty() {
                String::new()
            } else {
                format!(" under {prefix:?}")
            };
            return Err(EngineError::Usage(format!(
                "target container {to}{under} is not empty (it holds {:?}, and maybe more); \
                 restore container {from} into an empty or new container (--target-container) \
                 or prefix (--target-prefix), or pass --overwrite to replace blobs of the same \
                 name or --drop to delete what is there first",
                first.name,
                from = from.name
            )));
        }
    }

    let mut restored = Vec::new();
    for (from, to, prefix) in &plan {
        let created = client
            .create_container(to, &from.metadata)
            .await
            .map_err(blob_error)?;
        if options.drop && !created {
            for blob in client
                .list_blobs(to, Some(prefix.as_str()))
                .await
                .map_err(blob_error)?
            {
                client
                    .delete_blob(to, &blob.name)
                    .await
                    .map_err(blob_error)?;
            }
        }
        for blob in &from.blobs {
            if cancel.is_cancelled() {
                return Err(EngineError::Failed("restore cancelled".into()));
            }
            let path = staging.path().join(&blob.entry);
            let file = tokio::fs::File::open(&path).await.map_err(|e| {
                EngineError::Integrity(format!(
                    "backup {}: the content of blob {}/{} ({}): {e}",
                    record.id, from.name, blob.name, blob.entry
                ))
            })?;
            let name = format!("{prefix}{}", blob.name);
            let put = client
                .put_blob(
                    to,
                    &name,
                    tokio::io::BufReader::new(file),
                    &PutBlobOptions {
                        content_type: blob.content_type.clone(),
                        metadata: blob.metadata.clone(),
                    },
                )
                .await
                .map_err(blob_error)?;
            if put.size != blob.size || put.sha256 != blob.sha256 {
                return Err(EngineError::Integrity(format!(
                    "backup {}: blob {}/{} restored as {} bytes (SHA-256 {}) but was backed up \
                     as {} bytes (SHA-256 {})",
                    record.id, from.name, blob.name, put.size, put.sha256, blob.size, blob.sha256
                )));
            }
        }
        // What the service now lists must be what the backup holds.
        let listed: HashMap<String, u64> = client
            .list_blobs(to, Some(prefix.as_str()))
            .await
            .map_err(blob_error)?
            .into_iter()
            .map(|b| (b.name, b.size))
            .collect();
        for blob in &from.blobs {
            let name = format!("{prefix}{}", blob.name);
            if listed.get(&name) != Some(&blob.size) {
                return Err(EngineError::Failed(format!(
                    "after the restore, container {to} lists blob {name:?} with size {:?}, not {} \
                     bytes as backed up",
                    listed.get(&name),
                    blob.size
                )));
            }
        }
        restored.push(RestoredContainer {
            from: from.name.clone(),
            to: to.clone(),
            prefix: prefix.clone(),
            blobs: from.blobs.len() as u64,
            bytes: from.bytes,
        });
    }
    Ok(BlobRestoreOutcome {
        backup_id: record.id,
        source: options.source.clone(),
        repository: fetched.repository,
        account: cfg.account.clone(),
        blobs: restored.iter().map(|c| c.blobs).sum(),
        bytes: restored.iter().map(|c| c.bytes).sum(),
        containers: restored,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> AzureBlobSourceConfig {
        toml::from_str(&format!("account = \"acct1\"\n{extra}")).unwrap()
    }

    #[test]
    fn exactly_one_credential_is_required() {
        assert!(config("").validate().is_err());
        assert!(config("account-key-env = \"K\"").validate().is_ok());
        let both = config("account-key-env = \"K\"\nsas-token-file = \"/t\"");
        assert_eq!(both.validate().unwrap_err().0, "account-key-env");
    }

    #[test]
    fn names_are_checked() {
        let bad = config("account-key-env = \"K\"\ncontainers = [\"Bad_Name\"]");
        assert_eq!(bad.validate().unwrap_err().0, "containers[0]");
        let mut upper = config("account-key-env = \"K\"");
        upper.account = "Acct".into();
        assert_eq!(upper.validate().unwrap_err().0, "account");
        assert!(check_container_name("a-b-1").is_ok());
        for bad in ["ab", "-ab", "ab-", "a--b", "aBc"] {
            assert!(check_container_name(bad).is_err(), "{bad}");
        }
        let sas_in_url = config("sas-token-env = \"T\"\nendpoint = \"https://x/?sig=1\"");
        assert_eq!(sas_in_url.validate().unwrap_err().0, "endpoint");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let parsed: std::result::Result<AzureBlobSourceConfig, _> =
            toml::from_str("account = \"acct1\"\naccount-key = \"secret\"");
        assert!(parsed.is_err());
    }
}
