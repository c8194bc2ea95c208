//! Snapshots: create and wait, describe, list ours, delete, copy to another region.
//!
//! DB instance snapshots and DB cluster snapshots are different RDS objects with different
//! operations; every call here sends the instance or the cluster variant according to the
//! [`RdsResource`] of the [`RdsSnapshots`], and answers in one shape, [`SnapshotInfo`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use aws_sdk_rds::types::{DbClusterSnapshot, DbSnapshot, Tag};
use tokio_util::sync::CancellationToken;

use crate::error::{rds_error, Subject};
use crate::wait::{wait_until, Awaited};
use crate::{validate_identifier, RdsError, RdsResource, RdsSnapshots, WaitPolicy};
use crate::{MAX_SNAPSHOT_ID, TAG_SOURCE};

/// A manual snapshot to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// Unique per region and account, e.g. `backupd-orders-20261123t101500z`.
    pub identifier: String,
    /// Usually [`crate::backupd_tags`]; [`SnapshotMatch::source`] lists by them.
    pub tags: BTreeMap<String, String>,
}

/// A copy of a snapshot, in another region (or the same one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyRequest {
    /// Region the copy is made in; the copy request is sent there.
    pub region: String,
    /// Identifier of the copy, unique in that region.
    pub identifier: String,
    /// KMS key of `region` to encrypt the copy with (key id, ARN or alias). Required for an
    /// encrypted snapshot copied to another region, as KMS keys do not leave their region;
    /// given for an unencrypted snapshot, the copy is encrypted with it.
    pub kms_key_id: Option<String>,
    /// Given to the copy in addition to the source snapshot's own tags (which are copied).
    pub tags: BTreeMap<String, String>,
}

/// What RDS says about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub identifier: String,
    pub arn: String,
    pub region: String,
    /// The instance or cluster it is a snapshot of.
    pub source: RdsResource,
    /// `creating`, `available`, `copying`, `failed`, ...
    pub status: String,
    /// `manual`, `automated`, `shared`, ...
    pub snapshot_type: Option<String>,
    /// Storage allocated to the source when the snapshot was taken (not what the snapshot
    /// bills: RDS does not say that); Aurora clusters report 0 or 1.
    pub allocated_storage_gb: Option<u32>,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub engine: Option<String>,
    pub engine_version: Option<String>,
    pub created: Option<SystemTime>,
    /// How far a snapshot being created or copied is, 0 to 100.
    pub percent_progress: Option<u8>,
    pub tags: BTreeMap<String, String>,
}

impl SnapshotInfo {
    pub fn is_available(&self) -> bool {
        self.status == "available"
    }

    fn from_instance_snapshot(snapshot: &DbSnapshot, region: &str) -> Result<Self, RdsError> {
        let missing = |field: &str| RdsError::Protocol {
            operation: "DescribeDBSnapshots",
            region: region.to_owned(),
            problem: format!("a DB snapshot without {field}"),
        };
        Ok(SnapshotInfo {
            identifier: snapshot
                .db_snapshot_identifier()
                .ok_or_else(|| missing("DBSnapshotIdentifier"))?
                .to_owned(),
            arn: snapshot
                .db_snapshot_arn()
                .ok_or_else(|| missing("DBSnapshotArn"))?
                .to_owned(),
            region: region.to_owned(),
            source: RdsResource::Instance(
                snapshot
                    .db_instance_identifier()
                    .ok_or_else(|| missing("DBInstanceIdentifier"))?
                    .to_owned(),
            ),
            status: snapshot
                .status()
                .ok_or_else(|| missing("Status"))?
                .to_owned(),
            snapshot_type: snapshot.snapshot_type().map(str::to_owned),
            allocated_storage_gb: snapshot.allocated_storage().and_then(|g| g.try_into().ok()),
            encrypted: snapshot.encrypted().unwrap_or(false),
            kms_key_id: snapshot.kms_key_id().map(str::to_owned),
            engine: snapshot.engine().map(str::to_owned),
            engine_version: snapshot.engine_version().map(str::to_owned),
            created: snapshot
                .snapshot_create_time()
                .and_then(|t| SystemTime::try_from(*t).ok()),
            percent_progress: snapshot.percent_progress().and_then(|p| p.try_into().ok()),
            tags: tag_map(snapshot.tag_list()),
        })
    }

    fn from_cluster_snapshot(snapshot: &DbClusterSnapshot, region: &str) -> Result<Self, RdsError> {
        let missing = |field: &str| RdsError::Protocol {
            operation: "DescribeDBClusterSnapshots",
            region: region.to_owned(),
            problem: format!("a DB cluster snapshot without {field}"),
        };
        Ok(SnapshotInfo {
            identifier: snapshot
                .db_cluster_snapshot_identifier()
                .ok_or_else(|| missing("DBClusterSnapshotIdentifier"))?
                .to_owned(),
            arn: snapshot
                .db_cluster_snapshot_arn()
                .ok_or_else(|| missing("DBClusterSnapshotArn"))?
                .to_owned(),
            region: region.to_owned(),
            source: RdsResource::Cluster(
                snapshot
                    .db_cluster_identifier()
                    .ok_or_else(|| missing("DBClusterIdentifier"))?
                    .to_owned(),
            ),
            status: snapshot
                .status()
                .ok_or_else(|| missing("Status"))?
                .to_owned(),
            snapshot_type: snapshot.snapshot_type().map(str::to_owned),
            allocated_storage_gb: snapshot.allocated_storage().and_then(|g| g.try_into().ok()),
            encrypted: snapshot.storage_encrypted().unwrap_or(false),
            kms_key_id: snapshot.kms_key_id().map(str::to_owned),
            engine: snapshot.engine().map(str::to_owned),
            engine_version: snapshot.engine_version().map(str::to_owned),
            created: snapshot
                .snapshot_create_time()
                .and_then(|t| SystemTime::try_from(*t).ok()),
            percent_progress: snapshot.percent_progress().and_then(|p| p.try_into().ok()),
            tags: tag_map(snapshot.tag_list()),
        })
    }
}

/// Which of the resource's manual snapshots [`RdsSnapshots::list_snapshots`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotMatch {
    /// Those carrying this tag with this value.
    Tag { key: String, value: String },
    /// Those whose identifier starts with this (RDS keeps identifiers in lower case, and so
    /// does the comparison).
    IdentifierPrefix(String),
}

impl SnapshotMatch {
    /// The snapshots backupd made for `source` (tagged [`TAG_SOURCE`] = `source`).
    pub fn source(source: &str) -> SnapshotMatch {
        SnapshotMatch::Tag {
            key: TAG_SOURCE.to_owned(),
            value: source.to_owned(),
        }
    }

    fn matches(&self, snapshot: &SnapshotInfo) -> bool {
        match self {
            SnapshotMatch::Tag { key, value } => snapshot.tags.get(key) == Some(value),
            SnapshotMatch::IdentifierPrefix(prefix) => snapshot
                .identifier
                .to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase()),
        }
    }
}

/// What [`RdsSnapshots::delete_snapshot`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    Deleted,
    /// There was no such snapshot (deleted before, or never made): nothing to do.
    AlreadyAbsent,
}

impl RdsSnapshots {
    /// Takes a manual snapshot of the resource and waits until it is `available`. A snapshot
    /// still being created at the timeout ([`RdsError::SnapshotTimedOut`]) or when `cancel`
    /// fires is left in place: the caller decides whether to wait more or delete it.
    #[tracing::instrument(skip_all, fields(region = %self.region, resource = %self.resource, snapshot = %request.identifier))]
    pub async fn create_snapshot(
        &self,
        request: &SnapshotRequest,
        policy: WaitPolicy,
        cancel: &CancellationToken,
    ) -> Result<SnapshotInfo, RdsError> {
        let id = request.identifier.as_str();
        validate_identifier("snapshot identifier", id, MAX_SNAPSHOT_ID)
            .map_err(|problem| RdsError::Config { problem })?;
        policy.check()?;
        let tags = sdk_tags(&request.tags);
        let subjects = [Subject::Snapshot(id), Subject::Database(&self.resource)];
        let left_behind =
            || format!("; snapshot {id} may have been requested already: delete it if it exists");
        match &self.resource {
            RdsResource::Instance(instance) => {
                let operation = "CreateDBSnapshot";
                let send = self
                    .client
                    .create_db_snapshot()
                    .db_instance_identifier(instance)
                    .db_snapshot_identifier(id)
                    .set_tags(Some(tags))
                    .send();
                self.unless_cancelled(operation, cancel, left_behind, async {
                    send.await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))
                })
                .await?;
            }
            RdsResource::Cluster(cluster) => {
                let operation = "CreateDBClusterSnapshot";
                let send = self
                    .client
                    .create_db_cluster_snapshot()
                    .db_cluster_identifier(cluster)
                    .db_cluster_snapshot_identifier(id)
                    .set_tags(Some(tags))
                    .send();
                self.unless_cancelled(operation, cancel, left_behind, async {
                    send.await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))
                })
                .await?;
            }
        }
        tracing::info!("RDS snapshot requested");
        let snapshot = self.wait_for_snapshot(id, policy, cancel).await?;
        tracing::info!(size_gb = ?snapshot.allocated_storage_gb, "RDS snapshot available");
        Ok(snapshot)
    }

    /// Waits until snapshot `identifier` (a snapshot being created or copied in this region)
    /// is `available`; see [`RdsError::SnapshotTimedOut`] and [`RdsError::SnapshotFailed`].
    pub async fn wait_for_snapshot(
        &self,
        identifier: &str,
        policy: WaitPolicy,
        cancel: &CancellationToken,
    ) -> Result<SnapshotInfo, RdsError> {
        let awaited = Awaited::Snapshot {
            identifier,
            region: &self.region,
        };
        wait_until(awaited, policy, cancel, || async {
            let snapshot = self.describe_snapshot(identifier).await?;
            Ok((snapshot.status.clone(), snapshot))
        })
        .await
    }

    /// The snapshot `identifier` (or ARN) of this region; [`RdsError::SnapshotNotFound`] if
    /// there is none.
    pub async fn describe_snapshot(&self, identifier: &str) -> Result<SnapshotInfo, RdsError> {
        let subjects = [Subject::Snapshot(identifier)];
        let found = match &self.resource {
            RdsResource::Instance(_) => {
                let operation = "DescribeDBSnapshots";
                let out = self
                    .client
                    .describe_db_snapshots()
                    .db_snapshot_identifier(identifier)
                    .send()
                    .await
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                out.db_snapshots()
                    .first()
                    .map(|s| SnapshotInfo::from_instance_snapshot(s, &self.region))
                    .transpose()?
            }
            RdsResource::Cluster(_) => {
                let operation = "DescribeDBClusterSnapshots";
                let out = self
                    .client
                    .describe_db_cluster_snapshots()
                    .db_cluster_snapshot_identifier(identifier)
                    .send()
                    .await
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                out.db_cluster_snapshots()
                    .first()
                    .map(|s| SnapshotInfo::from_cluster_snapshot(s, &self.region))
                    .transpose()?
            }
        };
        // RDS answers a missing identifier with an error; an empty answer means the same.
        found.ok_or_else(|| RdsError::SnapshotNotFound {
            snapshot: identifier.to_owned(),
            region: self.region.clone(),
            code: "DBSnapshotNotFound".to_owned(),
            message: "RDS returned no snapshot with this identifier".to_owned(),
        })
    }

    /// The resource's manual snapshots in this region that `matching` selects, oldest first.
    pub async fn list_snapshots(
        &self,
        matching: &SnapshotMatch,
    ) -> Result<Vec<SnapshotInfo>, RdsError> {
        let subjects = [Subject::Database(&self.resource)];
        let mut snapshots = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let next = match &self.resource {
                RdsResource::Instance(instance) => {
                    let operation = "DescribeDBSnapshots";
                    let out = self
                        .client
                        .describe_db_snapshots()
                        .db_instance_identifier(instance)
                        .snapshot_type("manual")
                        .set_marker(marker.take())
                        .send()
                        .await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                    for s in out.db_snapshots() {
                        snapshots.push(SnapshotInfo::from_instance_snapshot(s, &self.region)?);
                    }
                    out.marker().map(str::to_owned)
                }
                RdsResource::Cluster(cluster) => {
                    let operation = "DescribeDBClusterSnapshots";
                    let out = self
                        .client
                        .describe_db_cluster_snapshots()
                        .db_cluster_identifier(cluster)
                        .snapshot_type("manual")
                        .set_marker(marker.take())
                        .send()
                        .await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                    for s in out.db_cluster_snapshots() {
                        snapshots.push(SnapshotInfo::from_cluster_snapshot(s, &self.region)?);
                    }
                    out.marker().map(str::to_owned)
                }
            };
            match next {
                Some(next) if !next.is_empty() => marker = Some(next),
                _ => break,
            }
        }
        snapshots.retain(|s| matching.matches(s));
        snapshots.sort_by(|a, b| (a.created, &a.identifier).cmp(&(b.created, &b.identifier)));
        Ok(snapshots)
    }

    /// Deletes snapshot `identifier` of this region. Idempotent: a missing snapshot is
    /// [`Deletion::AlreadyAbsent`], not an error.
    #[tracing::instrument(skip_all, fields(region = %self.region, snapshot = identifier))]
    pub async fn delete_snapshot(&self, identifier: &str) -> Result<Deletion, RdsError> {
        let subjects = [Subject::Snapshot(identifier)];
        let result = match &self.resource {
            RdsResource::Instance(_) => {
                let operation = "DeleteDBSnapshot";
                self.client
                    .delete_db_snapshot()
                    .db_snapshot_identifier(identifier)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))
            }
            RdsResource::Cluster(_) => {
                let operation = "DeleteDBClusterSnapshot";
                self.client
                    .delete_db_cluster_snapshot()
                    .db_cluster_snapshot_identifier(identifier)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))
            }
        };
        match result {
            Ok(()) => {
                tracing::info!("RDS snapshot deleted");
                Ok(Deletion::Deleted)
            }
            Err(e) if e.is_snapshot_not_found() => {
                tracing::debug!("RDS snapshot already absent");
                Ok(Deletion::AlreadyAbsent)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies snapshot `identifier` of this region as `request.identifier` in
    /// `request.region` and waits until the copy is `available` there. The request is sent
    /// to the destination region with the source snapshot's ARN, as RDS wants for copies
    /// across regions. An encrypted snapshot copied to another region needs
    /// `request.kms_key_id` ([`RdsError::EncryptedCopyNeedsKmsKey`] says so before anything
    /// is sent). The copy carries the source's tags and `request.tags`.
    #[tracing::instrument(skip_all, fields(region = %self.region, snapshot = identifier, to_region = %request.region, copy = %request.identifier))]
    pub async fn copy_snapshot(
        &self,
        identifier: &str,
        request: &CopyRequest,
        policy: WaitPolicy,
        cancel: &CancellationToken,
    ) -> Result<SnapshotInfo, RdsError> {
        validate_identifier("snapshot identifier", &request.identifier, MAX_SNAPSHOT_ID)
            .map_err(|problem| RdsError::Config { problem })?;
        if request.region.is_empty() {
            return Err(RdsError::Config {
                problem: "no region to copy the snapshot to".into(),
            });
        }
        policy.check()?;
        let source = self.describe_snapshot(identifier).await?;
        if source.encrypted && request.region != self.region && request.kms_key_id.is_none() {
            return Err(RdsError::EncryptedCopyNeedsKmsKey {
                snapshot: source.identifier,
                source_key: source.kms_key_id.unwrap_or_else(|| "unknown".to_owned()),
                from_region: self.region.clone(),
                to_region: request.region.clone(),
            });
        }
        let mut tags = source.tags.clone();
        tags.extend(request.tags.clone());
        let tags = sdk_tags(&tags);
        let destination = self.in_region(&request.region);
        let target = request.identifier.as_str();
        let mut subjects = vec![Subject::Snapshot(target)];
        if let Some(key) = &request.kms_key_id {
            subjects.push(Subject::KmsKey(key));
        }
        let left_behind = || {
            format!(
                "; the copy {target} may have been requested already: delete it in {} if it \
                 exists",
                request.region
            )
        };
        match &self.resource {
            RdsResource::Instance(_) => {
                let operation = "CopyDBSnapshot";
                let send = destination
                    .client
                    .copy_db_snapshot()
                    .source_db_snapshot_identifier(&source.arn)
                    .target_db_snapshot_identifier(target)
                    .set_kms_key_id(request.kms_key_id.clone())
                    .set_tags(Some(tags))
                    .send();
                destination
                    .unless_cancelled(operation, cancel, left_behind, async {
                        send.await
                            .map_err(|e| rds_error(destination.called(operation), &subjects, e))
                    })
                    .await?;
            }
            RdsResource::Cluster(_) => {
                let operation = "CopyDBClusterSnapshot";
                let send = destination
                    .client
                    .copy_db_cluster_snapshot()
                    .source_db_cluster_snapshot_identifier(&source.arn)
                    .target_db_cluster_snapshot_identifier(target)
                    .set_kms_key_id(request.kms_key_id.clone())
                    .set_tags(Some(tags))
                    .send();
                destination
                    .unless_cancelled(operation, cancel, left_behind, async {
                        send.await
                            .map_err(|e| rds_error(destination.called(operation), &subjects, e))
                    })
                    .await?;
            }
        }
        tracing::info!(source_arn = %source.arn, "RDS snapshot copy requested");
        let copy = destination
            .wait_for_snapshot(target, policy, cancel)
            .await?;
        tracing::info!(arn = %copy.arn, "RDS snapshot copy available");
        Ok(copy)
    }
}

pub(crate) fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(identifier: &str, tags: &[(&str, &str)]) -> SnapshotInfo {
        SnapshotInfo {
            identifier: identifier.into(),
            arn: format!("arn:aws:rds:eu-west-1:123456789012:snapshot:{identifier}"),
            region: "eu-west-1".into(),
            source: RdsResource::Instance("orders".into()),
            status: "available".into(),
            snapshot_type: Some("manual".into()),
            allocated_storage_gb: Some(20),
            encrypted: false,
            kms_key_id: None,
            engine: Some("postgres".into()),
            engine_version: None,
            created: None,
            percent_progress: Some(100),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn matches_by_source_tag_or_identifier_prefix() {
        let ours = info("backupd-orders-1", &[(TAG_SOURCE, "orders")]);
        let other_source = info("backupd-orders-2", &[(TAG_SOURCE, "billing")]);
        let by_hand = info("before-migration", &[]);
        let source = SnapshotMatch::source("orders");
        assert!(source.matches(&ours));
        assert!(!source.matches(&other_source));
        assert!(!source.matches(&by_hand));
        let prefix = SnapshotMatch::IdentifierPrefix("BACKUPD-orders-".into());
        assert!(prefix.matches(&ours) && prefix.matches(&other_source));
        assert!(!prefix.matches(&by_hand));
    }
}
