//! backupd operations shared by `backupctl` and `backupd`: configuration,
//! backup, restore, verify, catalog rebuild, retention (prune) and garbage collection.
//!
//! Binaries stay thin: they parse arguments, build an [`Engine`] and call one
//! of these functions, then map [`EngineError::exit_code`] to the process exit.

pub mod azure_blob;
pub mod azure_sql;
pub mod backup;
pub mod config;
pub mod drill;
pub mod elasticsearch;
pub mod error;
pub mod gc;
pub mod init;
pub mod keyfile;
pub mod keys;
pub mod mongo;
pub mod mysql;
pub mod pgbackup;
pub mod pitr;
pub mod policy;
pub mod prune;
pub mod rds;
pub mod rebuild;
pub mod replicate;
pub mod repo;
pub mod report;
pub mod restore;
pub mod schedule;
pub mod service;
mod streams;
pub mod thaw;
pub mod verify;
pub mod wal;

use std::sync::atomic::{AtomicU64, Ordering};

use backup_catalog::Catalog;
use backup_core::keys::Keyring;

pub use config::Config;
pub use error::{exit, EngineError, Result};

/// Everything an operation needs: the validated config and an open catalog.
pub struct Engine {
    pub config: Config,
    pub catalog: Catalog,
}

impl Engine {
    /// Connects to (and migrates) the configured catalog.
    pub async fn open(config: Config) -> Result<Engine> {
        if let Some(path) = config.catalog.url.strip_prefix("sqlite://") {
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() && !parent.exists() {
                    return Err(EngineError::Failed(format!(
                        "catalog {}: directory {} does not exist; run `backupctl init` first (config {})",
                        config.catalog.url,
                        parent.display(),
                        config.origin
                    )));
                }
            }
        }
        let catalog = Catalog::connect(&config.catalog.url).await?;
        Ok(Engine { config, catalog })
    }

    /// The key file's keys: `.active()` encrypts, any of them decrypts.
    pub fn key(&self) -> Result<Keyring> {
        keyfile::load(&self.config)
    }
}

/// Counters that long operations update and a UI may poll.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes: AtomicU64,
    pub files: AtomicU64,
    /// Total bytes expected, when known (0 = unknown).
    pub total_bytes: AtomicU64,
}

impl Progress {
    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// `1536` -> "1.5 KiB", for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
