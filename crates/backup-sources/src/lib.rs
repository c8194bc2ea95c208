//! Data sources for backupd. Each source turns something that exists (a
//! directory tree, a database) into a data stream plus manifest entries, and
//! back again on restore. Sources do plain blocking I/O; callers run them off
//! the async executor.

#[cfg(feature = "atlas")]
pub mod atlas;
#[cfg(feature = "azure")]
pub mod azure;
pub mod files;
#[cfg(feature = "mongodb")]
pub mod mongodb;
pub mod mysql;
pub mod postgres;
mod secret;

pub use secret::Secret;
