//! The repository key file: created once by `backupctl init`, never overwritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use backup_core::keys::{Keyring, MasterKey};

use crate::config::Config;
use crate::error::{EngineError, Result};

/// Loads the keys of `encryption.key-file` (active first).
pub fn load(config: &Config) -> Result<Keyring> {
    let path = &config.encryption.key_file;
    let text = fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "run `backupctl init` to create a new key, or point encryption.key-file at the key the repository was created with"
        } else {
            "check the file's permissions"
        };
        EngineError::Key(format!(
            "encryption.key-file ({}): cannot read key file {}: {e}; {hint}",
            config.origin,
            path.display()
        ))
    })?;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "key file is readable by other users; chmod 600 it");
        }
    }
    Keyring::parse(&text).map_err(|e| EngineError::Key(format!("key file {}: {e}", path.display())))
}

/// Replaces the key file with `ring` atomically (temp file, fsync, rename, fsync of the
/// directory), keeping it private: a crash leaves the old file or the new one, never half.
pub fn replace(path: &Path, ring: &Keyring) -> Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temp = parent.join(format!(
        ".{}.backupd-new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key")
    ));
    let failed = |e: std::io::Error| {
        EngineError::Failed(format!("rewriting key file {}: {e}", path.display()))
    };
    let _ = fs::remove_file(&temp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(failed)?;
    f.write_all(ring.to_text().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(failed)?;
    fs::rename(&temp, path).map_err(failed)?;
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(failed)?;
    Ok(())
}

/// Creates a new key file (0600, parent 0700). Refuses to overwrite an existing one.
pub fn create(path: &Path) -> Result<Keyring> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(|e| {
                EngineError::Failed(format!("creating key directory {}: {e}", parent.display()))
            })?;
            let _ = fs::set_permissions(parent, fs::Permissions::from_mode(0o700));
        }
    }
    let key = MasterKey::generate();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                EngineError::Usage(format!(
                    "key file {} already exists; refusing to overwrite it",
                    path.display()
                ))
            } else {
                EngineError::Failed(format!("creating key file {}: {e}", path.display()))
            }
        })?;
    f.write_all(key.to_base64().as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| EngineError::Failed(format!("writing key file {}: {e}", path.display())))?;
    Ok(Keyring::new(key))
}
