//! AWS RDS snapshots, for backupd's `rds` sources: manual snapshots of one DB instance or one
//! Aurora DB cluster, waited for until `available`, copied to another region, listed,
//! deleted and restored into a new instance or cluster.
//!
//! The data never leaves AWS: a backup of an RDS source is an RDS-native snapshot (and its
//! copies), which backupd creates, tags, tracks and deletes, but does not read. What backupd
//! keeps of it is the snapshot's identity ([`SnapshotInfo`]).
//!
//! [`RdsSnapshots`] is bound to one region and one resource ([`RdsResource`]); instance and
//! cluster snapshots go through the same calls, the resource deciding which RDS operation
//! (`CreateDBSnapshot` or `CreateDBClusterSnapshot`, ...) is sent. The client is built like
//! the S3 sink's: rustls on ring, an optional endpoint (moto), static or default credentials,
//! the SDK's standard retries.
//!
//! Every long operation waits by polling (interval and timeout in a [`WaitPolicy`]) and
//! stops when its `CancellationToken` fires. Errors ([`RdsError`]) name the AWS error code
//! and say what to do; credentials never appear in them, in `Debug` or in logs.

mod client;
mod error;
mod restore;
mod snapshot;
mod wait;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

pub use client::RdsSnapshots;
pub use error::{ErrorKind, RdsError};
pub use restore::{RestoreRequest, RestoredDatabase};
pub use snapshot::{CopyRequest, Deletion, SnapshotInfo, SnapshotMatch, SnapshotRequest};
pub use wait::WaitPolicy;

/// Tag naming the backupd backup a snapshot belongs to.
pub const TAG_BACKUP_ID: &str = "backupd:backup-id";
/// Tag naming the backupd source that made a snapshot; [`SnapshotMatch::source`] lists by it.
pub const TAG_SOURCE: &str = "backupd:source";

/// The tags backupd gives every snapshot it makes for `backup_id` of `source`.
pub fn backupd_tags(source: &str, backup_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (TAG_SOURCE.to_owned(), source.to_owned()),
        (TAG_BACKUP_ID.to_owned(), backup_id.to_owned()),
    ])
}

/// What is snapshotted: one DB instance, or one Aurora (or Multi-AZ) DB cluster, by its
/// identifier.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RdsResource {
    /// `db-instance = "..."`: DB snapshots (`CreateDBSnapshot`).
    Instance(String),
    /// `db-cluster = "..."`: DB cluster snapshots (`CreateDBClusterSnapshot`).
    Cluster(String),
}

impl RdsResource {
    pub fn identifier(&self) -> &str {
        match self {
            RdsResource::Instance(id) | RdsResource::Cluster(id) => id,
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, RdsResource::Cluster(_))
    }
}

impl fmt::Display for RdsResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RdsResource::Instance(id) => write!(f, "DB instance {id}"),
            RdsResource::Cluster(id) => write!(f, "DB cluster {id}"),
        }
    }
}

/// Where a secret comes from. Secrets are read once, by [`RdsSnapshots::new`], and never
/// logged; there is deliberately no way to put one in the configuration itself (the same
/// rule as for S3 repositories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of the backupd process.
    Env(String),
    /// A file holding only the secret (surrounding whitespace is ignored).
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(var) => write!(f, "environment variable {var}"),
            SecretSource::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// How backupd authenticates to RDS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RdsCredentials {
    /// The standard AWS chain: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, the shared
    /// config and credentials files (`AWS_PROFILE`), web identity (EKS), ECS and EC2
    /// instance roles.
    #[default]
    Default,
    /// A fixed access key, read from the named sources.
    Static {
        access_key_id: SecretSource,
        secret_access_key: SecretSource,
    },
}

/// Request attempts (the first one included) for throttling, 5xx and connection errors.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Which RDS resource to snapshot, where, and how to reach RDS there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RdsTarget {
    /// Region of the resource, e.g. `eu-west-1`.
    pub region: String,
    /// Endpoint URL of an RDS-compatible API (e.g. moto's `http://127.0.0.1:5000`); `None`
    /// = AWS. The same endpoint serves every region (copies go through it too).
    pub endpoint: Option<String>,
    pub resource: RdsResource,
    pub credentials: RdsCredentials,
    /// Request attempts per call, the first included ([`DEFAULT_MAX_ATTEMPTS`]).
    pub max_attempts: u32,
}

impl RdsTarget {
    /// A target in `region` on AWS with the default credential chain.
    pub fn new(region: impl Into<String>, resource: RdsResource) -> RdsTarget {
        RdsTarget {
            region: region.into(),
            endpoint: None,
            resource,
            credentials: RdsCredentials::Default,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Checks an identifier RDS would accept for a snapshot, instance or cluster: 1 to `max`
/// ASCII letters, digits and hyphens, starting with a letter, without a trailing hyphen or
/// two consecutive hyphens. Checked before any request so the error names the setting.
pub(crate) fn validate_identifier(what: &str, identifier: &str, max: usize) -> Result<(), String> {
    let problem = if identifier.is_empty() || identifier.len() > max {
        Some(format!("must be 1 to {max} characters long"))
    } else if !identifier.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("must start with a letter".to_owned())
    } else if !identifier
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        Some("may hold only ASCII letters, digits and hyphens".to_owned())
    } else if identifier.ends_with('-') || identifier.contains("--") {
        Some("must not end with a hyphen or hold two consecutive hyphens".to_owned())
    } else {
        None
    };
    match problem {
        Some(problem) => Err(format!("the {what} {identifier:?} {problem}")),
        None => Ok(()),
    }
}

/// Longest DB snapshot and DB cluster snapshot identifier RDS takes.
pub(crate) const MAX_SNAPSHOT_ID: usize = 255;
/// Longest DB instance and DB cluster identifier RDS takes.
pub(crate) const MAX_DATABASE_ID: usize = 63;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_rds_rules() {
        assert!(validate_identifier("snapshot", "backupd-orders-2026-01-01", 255).is_ok());
        assert!(validate_identifier("snapshot", "a", 255).is_ok());
        for (bad, problem) in [
            ("", "1 to 63"),
            ("1abc", "start with a letter"),
            ("abc_def", "letters, digits and hyphens"),
            ("abc-", "end with a hyphen"),
            ("ab--c", "consecutive hyphens"),
        ] {
            let err = validate_identifier("DB instance", bad, 63).unwrap_err();
            assert!(err.contains(problem), "{bad:?}: {err}");
            assert!(err.contains("DB instance"), "{err}");
        }
        assert!(validate_identifier("DB instance", &"a".repeat(64), 63).is_err());
    }

    #[test]
    fn tags_name_source_and_backup() {
        let tags = backupd_tags("orders", "0190-abc");
        assert_eq!(tags[TAG_SOURCE], "orders");
        assert_eq!(tags[TAG_BACKUP_ID], "0190-abc");
    }
}
