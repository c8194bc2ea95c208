//! The sans-IO heart of backupd: identifiers, keys, the artifact format,
//! the parallel compress/encrypt pipeline, backup manifests and retention planning.
//!
//! Nothing here talks to the network or a database; all I/O goes through
//! `std::io::Read`/`Write` supplied by the caller.

pub mod cost;
pub mod envelope;
pub mod format;
pub mod ids;
pub mod keys;
pub mod manifest;
pub mod pool;
pub mod recovery;
pub mod retention;
pub mod sealed;

pub use ids::{ArtifactId, BackupId};

/// The version recorded in manifests and the catalog.
pub const TOOL_VERSION: &str = concat!("backupd ", env!("CARGO_PKG_VERSION"));
