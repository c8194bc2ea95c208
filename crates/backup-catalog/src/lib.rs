//! The backupd catalog: the only crate that knows the catalog schema.
//!
//! It records sources, backups, the artifacts each backup wrote and the copies of those
//! artifacts in repositories, in SQLite (the embedded default) or PostgreSQL behind one
//! [`Catalog`] type. Migrations (`migrations/sqlite`, `migrations/postgres` at the workspace
//! root) are embedded and applied by [`Catalog::connect`].
//!
//! Queries are checked at runtime (`sqlx::query_as` with `FromRow`) rather than by the
//! `query!` macros, so building needs no database; the conformance suite in
//! `backup-testing` runs every method against both backends instead.

mod atlas;
mod azure_sql;
mod catalog;
mod drills;
mod elasticsearch;
mod error;
mod jobs;
mod model;
mod mongodb;
mod postgres;
mod rds;
mod replication;
mod retention;
mod shreds;
mod usage;

pub use atlas::AtlasSnapshotRecord;
pub use azure_sql::AzureSqlBackupRecord;
pub use catalog::{Backend, Catalog};
pub use drills::{DrillCheckResult, DrillCompletion, DrillRecord, DrillStatus, DrillTrigger};
pub use elasticsearch::ElasticsearchSnapshotRecord;
pub use error::{redact_url, CatalogError, ErrorKind, Result};
pub use jobs::*;
pub use model::{
    ArtifactRecord, ArtifactWithCopies, BackupCompletion, BackupFilter, BackupRecord, BackupStatus,
    CopyRecord, ImportedBackup, NewBackup, ParseBackupStatusError, SourceRecord, ARTIFACT_ROLES,
};
pub use mongodb::{MongoBackupRecord, OplogSliceRecord, OplogTs};
pub use postgres::{PostgresBackupRecord, WalCopyLag, WalFileCopy, WalFileRecord, WalRecorded};
pub use rds::{RdsSnapshotRecord, RDS_ROLE_COPY, RDS_ROLE_SOURCE};
pub use replication::{CopyTarget, CopyTask, DestinationLag, ThawRequest};
pub use retention::StoredCopy;
pub use shreds::ShredRecord;
pub use usage::{ObjectRequests, RequestOperation, UsageObject};
