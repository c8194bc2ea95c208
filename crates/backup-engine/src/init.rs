//! `backupctl init`: create the key file (never overwriting one), the catalog
//! and every configured repository. Safe to run again.

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use backup_catalog::Catalog;

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::keyfile;
use crate::repo::Repository;

#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub key_file: String,
    pub key_created: bool,
    pub key_id: String,
    pub catalog: String,
    /// (repository, newly created)
    pub repositories: Vec<(String, bool)>,
}

pub async fn run_init(config: &Config, cancel: &CancellationToken) -> Result<InitReport> {
    let key_path = &config.encryption.key_file;
    let (key, key_created) = if key_path.exists() {
        (keyfile::load(config)?, false)
    } else {
        (keyfile::create(key_path)?, true)
    };
    if let Some(path) = config.catalog.url.strip_prefix("sqlite://") {
        if let Some(parent) = std::path::Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                EngineError::Failed(format!(
                    "creating catalog directory {}: {e}",
                    parent.display()
                ))
            })?;
        }
    }
    Catalog::connect(&config.catalog.url).await?;
    let mut repositories = Vec::new();
    for repo in &config.repositories {
        let created = Repository::init(repo, &key, cancel).await?;
        repositories.push((repo.name.clone(), created));
    }
    Ok(InitReport {
        key_file: key_path.display().to_string(),
        key_created,
        key_id: key.active().id().to_string(),
        catalog: backup_catalog::redact_url(&config.catalog.url),
        repositories,
    })
}
