//! With an SQLite catalog backupd is single-node: a lock file next to the
//! database keeps a second instance from starting.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another backupd (pid {pid}) is already running with the SQLite catalog {catalog}; an SQLite catalog serves one backupd only — stop the other one, or use a PostgreSQL catalog to run several replicas")]
    Held { catalog: String, pid: String },
    #[error("cannot create the instance lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Holds the lock for as long as it lives.
pub struct InstanceLock {
    _file: File,
}

/// Locks `<db>.backupd.lock` for SQLite catalogs; `None` for PostgreSQL (leases coordinate replicas).
pub fn lock_for_catalog(url: &str) -> Result<Option<InstanceLock>, LockError> {
    let Some(path) = url.strip_prefix("sqlite://") else {
        return Ok(None);
    };
    if path.contains(":memory:") {
        return Ok(None);
    }
    let lock_path = PathBuf::from(format!(
        "{}.backupd.lock",
        path.split('?').next().unwrap_or(path)
    ));
    let io = |source| LockError::Io {
        path: lock_path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0).map_err(io)?;
            file.rewind().map_err(io)?;
            write!(file, "{}", std::process::id()).map_err(io)?;
            Ok(Some(InstanceLock { _file: file }))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Err(LockError::Held {
                catalog: url.to_owned(),
                pid: pid.trim().to_owned(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}
