//! The engine's error type, with the CLI exit code each failure maps to.

use backup_catalog::CatalogError;
use backup_core::format::FormatError;
use backup_sinks::SinkError;
use backup_sources::files::FilesError;

use crate::config::ConfigError;

/// Documented exit codes of `backupctl`.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const INTEGRITY: i32 = 3;
    /// Waiting on something outside backupd (an archive restore): run again later.
    pub const PENDING: i32 = 4;
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Key(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Boxed: remote-store errors carry several strings, and every `Result` would pay for them.
    #[error(transparent)]
    Sink(Box<SinkError>),
    #[error(transparent)]
    Source(#[from] FilesError),
    #[error("integrity failure: {0}")]
    Integrity(String),
    #[error("{0}")]
    Failed(String),
    /// Not done yet, through no fault: e.g. archived objects are still being restored.
    #[error("{0}")]
    Pending(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<SinkError> for EngineError {
    fn from(e: SinkError) -> Self {
        Self::Sink(Box::new(e))
    }
}

impl EngineError {
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Config(_) | Self::Usage(_) | Self::Key(_) => exit::USAGE,
            Self::Integrity(_) => exit::INTEGRITY,
            Self::Pending(_) => exit::PENDING,
            Self::Source(e) if e.is_integrity_failure() => exit::INTEGRITY,
            _ => exit::FAILED,
        }
    }

    /// A format error met while reading `what` (e.g. "backup X artifact Y").
    pub fn from_format(what: &str, e: FormatError) -> Self {
        if e.is_integrity_failure() {
            Self::Integrity(format!("{what}: {e}"))
        } else {
            Self::Failed(format!("{what}: {e}"))
        }
    }
}
