//! Opening configured repositories, and the small repository marker object
//! that remembers which key a repository belongs to.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use backup_core::keys::{KeyId, KeyLookup, Keyring};
use backup_sinks::LocalSink;
use backup_sinks::{put_bytes, read_object, AnySink, Sink, SinkError};

use crate::config::{Config, RepositoryConfig, RepositoryKindConfig};
use crate::error::{EngineError, Result};

pub const MARKER_KEY: &str = "backupd-repository.json";
/// `backupd-repository-keys/KEY.json`: written when a key rotation brought every envelope of
/// the repository under KEY.
pub const KEY_RECORDS_PREFIX: &str = "backupd-repository-keys/";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryMarker {
    pub format: u32,
    pub name: String,
    pub key_id: KeyId,
    pub created_at: DateTime<Utc>,
}

pub struct Repository {
    pub name: String,
    pub sink: AnySink,
}

impl Repository {
    /// Opens the repository the config names `name`.
    pub async fn open_named(config: &Config, name: &str) -> Result<Repository> {
        Self::open(config, config.repository(name)?).await
    }

    /// Opens an existing repository.
    pub async fn open(config: &Config, repo: &RepositoryConfig) -> Result<Repository> {
        Self::open_with_class(config, repo, None).await
    }

    /// Opens an existing repository whose new objects get `storage_class` (S3 only) instead
    /// of the configured one: the data objects of an archive copy.
    pub async fn open_with_class(
        config: &Config,
        repo: &RepositoryConfig,
        storage_class: Option<&str>,
    ) -> Result<Repository> {
        let sink = match &repo.kind {
            RepositoryKindConfig::Local { path } => {
                AnySink::Local(LocalSink::open(&repo.name, path).map_err(|e| {
                    EngineError::Failed(format!(
                        "repository {} ({}): {e}; run `backupctl init` (config {}) to create it",
                        repo.name,
                        path.display(),
                        config.origin
                    ))
                })?)
            }
            RepositoryKindConfig::S3 { .. } => AnySink::S3(s3_sink(repo, storage_class).await?),
        };
        Ok(Repository {
            name: repo.name.clone(),
            sink,
        })
    }

    /// Creates the repository if needed and writes its marker. Returns true if it was new.
    pub async fn init(
        repo: &RepositoryConfig,
        key: &Keyring,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let sink = match &repo.kind {
            RepositoryKindConfig::Local { path } => {
                AnySink::Local(LocalSink::create(&repo.name, path)?)
            }
            // The bucket must exist already; checking it now catches bad credentials early.
            RepositoryKindConfig::S3 { .. } => {
                let sink = s3_sink(repo, None).await?;
                sink.verify(cancel).await?;
                AnySink::S3(sink)
            }
        };
        let repository = Repository {
            name: repo.name.clone(),
            sink,
        };
        if repository.check_key(key, cancel).await? {
            return Ok(false);
        }
        let marker = RepositoryMarker {
            format: 1,
            name: repo.name.clone(),
            key_id: key.active().id().clone(),
            created_at: Utc::now(),
        };
        let body = serde_json::to_vec_pretty(&marker).expect("marker serializes");
        put_bytes(&repository.sink, MARKER_KEY, body, cancel).await?;
        Ok(true)
    }

    /// Checks the repository's key (the one it was created or last rotated to) is in the key
    /// file. Ok(false) if it has no marker yet.
    pub async fn check_key(&self, key: &Keyring, cancel: &CancellationToken) -> Result<bool> {
        let bytes = match read_object(&self.sink, MARKER_KEY, cancel).await {
            Ok(b) => b,
            Err(SinkError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let marker: RepositoryMarker = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Integrity(format!(
                "repository {}: {MARKER_KEY} is not valid: {e}",
                self.name
            ))
        })?;
        if key.key_for(&marker.key_id).is_none()
            && !self
                .recorded_keys(cancel)
                .await?
                .iter()
                .any(|id| key.key_for(id).is_some())
        {
            return Err(EngineError::Key(format!(
                "repository {} was created with key {}, but the key file holds key {}: use the key file this repository was created with",
                self.name,
                marker.key_id,
                key.held_ids()
            )));
        }
        Ok(true)
    }

    /// Records that the repository's envelopes are now all wrapped under `key` (after a
    /// rotation), so the repository is recognised once the key it was created with is
    /// retired. An immutable object of its own, like every object.
    pub async fn record_key(&self, key: &KeyId, cancel: &CancellationToken) -> Result<()> {
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "format": 1,
            "name": self.name,
            "key_id": key,
        }))
        .expect("key record serializes");
        put_bytes(
            &self.sink,
            &format!("{KEY_RECORDS_PREFIX}{key}.json"),
            body,
            cancel,
        )
        .await?;
        Ok(())
    }

    /// The keys rotations recorded for this repository.
    async fn recorded_keys(&self, cancel: &CancellationToken) -> Result<Vec<KeyId>> {
        Ok(self
            .sink
            .list(KEY_RECORDS_PREFIX, cancel)
            .await?
            .into_iter()
            .filter_map(|o| {
                o.key
                    .strip_prefix(KEY_RECORDS_PREFIX)?
                    .strip_suffix(".json")
                    .map(KeyId::new)
            })
            .collect())
    }
}

/// How long a temp file of an interrupted write is left alone by default.
pub const DEFAULT_SWEEP_GRACE: Duration = Duration::from_secs(15 * 60);

/// The S3 sink of an `kind = "s3"` repository.
async fn s3_sink(
    repo: &RepositoryConfig,
    storage_class_override: Option<&str>,
) -> Result<backup_sinks::S3Sink> {
    use backup_sinks::{S3Credentials, S3Options, S3Sink, SecretSource};
    let RepositoryKindConfig::S3 {
        bucket,
        region,
        prefix,
        endpoint,
        force_path_style,
        part_size_mib,
        concurrency,
        storage_class,
        access_key_id_env,
        access_key_id_file,
        secret_access_key_env,
        secret_access_key_file,
        object_lock,
    } = &repo.kind
    else {
        unreachable!("called for S3 repositories only")
    };
    let source = |env: &Option<String>, file: &Option<std::path::PathBuf>| match (env, file) {
        (Some(var), _) => Some(SecretSource::Env(var.clone())),
        (None, Some(path)) => Some(SecretSource::File(path.clone())),
        (None, None) => None,
    };
    let credentials = match (
        source(access_key_id_env, access_key_id_file),
        source(secret_access_key_env, secret_access_key_file),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => S3Credentials::Static {
            access_key_id,
            secret_access_key,
        },
        _ => S3Credentials::Default,
    };
    let mut options = S3Options::new(&repo.name, bucket, region);
    options.prefix = prefix.clone();
    options.endpoint = endpoint.clone();
    options.force_path_style = *force_path_style;
    options.part_size = part_size_mib.saturating_mul(1 << 20);
    options.concurrency = *concurrency;
    options.storage_class = storage_class_override
        .map(str::to_owned)
        .or_else(|| storage_class.clone());
    options.credentials = credentials;
    options.object_lock = *object_lock;
    Ok(S3Sink::new(options).await?)
}
