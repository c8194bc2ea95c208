//! Restores: a snapshot becomes a new DB instance, or a new DB cluster (with a writer
//! instance when an instance class is given, as an Aurora cluster without instances serves
//! no connections). RDS never restores over an existing database.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;

use crate::error::{rds_error, Subject};
use crate::wait::{wait_until, Awaited};
use crate::{validate_identifier, RdsError, RdsResource, RdsSnapshots, WaitPolicy};
use crate::{MAX_DATABASE_ID, TAG_SOURCE};

/// The new database a snapshot is restored into.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreRequest {
    /// Identifier of the new DB instance or DB cluster; must not exist yet.
    pub identifier: String,
    /// DB instance class (`db.r6g.large`, ...): of the instance; for a cluster, of the writer
    /// instance `<identifier>-1` created in it. `None`: RDS takes the snapshot's class for an
    /// instance, and a cluster is restored without instances.
    pub instance_class: Option<String>,
    /// DB subnet group (the VPC) of the new database; `None` = the default VPC.
    pub subnet_group: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A restored database, once `available`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDatabase {
    pub resource: RdsResource,
    pub arn: Option<String>,
    pub status: String,
    /// Host name to connect to (a cluster's writer endpoint).
    pub address: Option<String>,
    pub port: Option<u16>,
    /// The writer instance created in a restored cluster.
    pub writer_instance: Option<String>,
}

impl RdsSnapshots {
    /// Restores snapshot `snapshot` (identifier or ARN, of this region) into a new database
    /// and waits until it is `available`. A database still being created at the timeout
    /// ([`RdsError::RestoreTimedOut`]) or when `cancel` fires is left in place.
    #[tracing::instrument(skip_all, fields(region = %self.region, snapshot, new = %request.identifier))]
    pub async fn restore(
        &self,
        snapshot: &str,
        request: &RestoreRequest,
        policy: WaitPolicy,
        cancel: &CancellationToken,
    ) -> Result<RestoredDatabase, RdsError> {
        let config = |problem: String| RdsError::Config { problem };
        policy.check()?;
        let tags = {
            let mut tags = request.tags.clone();
            // The restored database is no backup source: it keeps no source tag of ours.
            tags.remove(TAG_SOURCE);
            crate::snapshot::sdk_tags(&tags)
        };
        let new = request.identifier.as_str();
        match &self.resource {
            RdsResource::Instance(_) => {
                validate_identifier("new DB instance identifier", new, MAX_DATABASE_ID)
                    .map_err(config)?;
                let resource = RdsResource::Instance(new.to_owned());
                let operation = "RestoreDBInstanceFromDBSnapshot";
                let subjects = [Subject::Snapshot(snapshot), Subject::Database(&resource)];
                let send = self
                    .client
                    .restore_db_instance_from_db_snapshot()
                    .db_snapshot_identifier(snapshot)
                    .db_instance_identifier(new)
                    .set_db_instance_class(request.instance_class.clone())
                    .set_db_subnet_group_name(request.subnet_group.clone())
                    .set_tags(Some(tags))
                    .send();
                self.unless_cancelled(operation, cancel, || left_behind(&resource), async {
                    send.await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))
                })
                .await?;
                tracing::info!("RDS restore requested");
                let restored = self.wait_for_database(&resource, policy, cancel).await?;
                tracing::info!(address = ?restored.address, "restored DB instance available");
                Ok(restored)
            }
            RdsResource::Cluster(_) => {
                validate_identifier("new DB cluster identifier", new, MAX_DATABASE_ID - 2)
                    .map_err(config)?;
                let resource = RdsResource::Cluster(new.to_owned());
                // RestoreDBClusterFromSnapshot wants the engine, which the snapshot knows.
                let engine = self
                    .describe_snapshot(snapshot)
                    .await?
                    .engine
                    .ok_or_else(|| RdsError::Protocol {
                        operation: "DescribeDBClusterSnapshots",
                        region: self.region.clone(),
                        problem: format!("snapshot {snapshot} has no engine"),
                    })?;
                let operation = "RestoreDBClusterFromSnapshot";
                let subjects = [Subject::Snapshot(snapshot), Subject::Database(&resource)];
                let send = self
                    .client
                    .restore_db_cluster_from_snapshot()
                    .snapshot_identifier(snapshot)
                    .db_cluster_identifier(new)
                    .engine(&engine)
                    .set_db_subnet_group_name(request.subnet_group.clone())
                    .set_tags(Some(tags.clone()))
                    .send();
                self.unless_cancelled(operation, cancel, || left_behind(&resource), async {
                    send.await
                        .map_err(|e| rds_error(self.called(operation), &subjects, e))
                })
                .await?;
                tracing::info!(engine, "RDS cluster restore requested");
                let mut restored = self.wait_for_database(&resource, policy, cancel).await?;
                if let Some(class) = &request.instance_class {
                    let writer = format!("{new}-1");
                    let writer_resource = RdsResource::Instance(writer.clone());
                    let operation = "CreateDBInstance";
                    let subjects = [Subject::Database(&writer_resource)];
                    let send = self
                        .client
                        .create_db_instance()
                        .db_instance_identifier(&writer)
                        .db_cluster_identifier(new)
                        .engine(&engine)
                        .db_instance_class(class)
                        .set_tags(Some(tags))
                        .send();
                    self.unless_cancelled(
                        operation,
                        cancel,
                        || left_behind(&writer_resource),
                        async {
                            send.await
                                .map_err(|e| rds_error(self.called(operation), &subjects, e))
                        },
                    )
                    .await?;
                    self.wait_for_database(&writer_resource, policy, cancel)
                        .await?;
                    restored.writer_instance = Some(writer);
                }
                tracing::info!(address = ?restored.address, "restored DB cluster available");
                Ok(restored)
            }
        }
    }

    /// Deletes DB instance or DB cluster `resource` of this region without a final snapshot
    /// (for the scratch databases of restore drills; a cluster's instances go first, as RDS
    /// refuses to delete a cluster that has any). Idempotent: a missing database is no error.
    #[tracing::instrument(skip_all, fields(region = %self.region, database = %resource))]
    pub async fn delete_database(&self, resource: &RdsResource) -> Result<(), RdsError> {
        let subjects = [Subject::Database(resource)];
        let result = match resource {
            RdsResource::Instance(id) => {
                let operation = "DeleteDBInstance";
                self.client
                    .delete_db_instance()
                    .db_instance_identifier(id)
                    .skip_final_snapshot(true)
                    .delete_automated_backups(true)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))
            }
            RdsResource::Cluster(id) => {
                let operation = "DescribeDBClusters";
                let members: Vec<String> = match self
                    .client
                    .describe_db_clusters()
                    .db_cluster_identifier(id)
                    .send()
                    .await
                {
                    Ok(out) => out
                        .db_clusters()
                        .iter()
                        .flat_map(|c| c.db_cluster_members())
                        .filter_map(|m| m.db_instance_identifier().map(str::to_owned))
                        .collect(),
                    Err(e) => match rds_error(self.called(operation), &subjects, e) {
                        RdsError::ResourceNotFound { .. } => return Ok(()),
                        e => return Err(e),
                    },
                };
                for member in members {
                    Box::pin(self.delete_database(&RdsResource::Instance(member))).await?;
                }
                let operation = "DeleteDBCluster";
                self.client
                    .delete_db_cluster()
                    .db_cluster_identifier(id)
                    .skip_final_snapshot(true)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))
            }
        };
        match result {
            Ok(()) => {
                tracing::info!("RDS database deleted");
                Ok(())
            }
            Err(RdsError::ResourceNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until DB instance or DB cluster `resource` of this region is `available`.
    pub async fn wait_for_database(
        &self,
        resource: &RdsResource,
        policy: WaitPolicy,
        cancel: &CancellationToken,
    ) -> Result<RestoredDatabase, RdsError> {
        let awaited = Awaited::Database {
            resource,
            region: &self.region,
        };
        wait_until(awaited, policy, cancel, || async {
            let database = self.describe_database(resource).await?;
            Ok((database.status.clone(), database))
        })
        .await
    }

    /// What RDS says about DB instance or DB cluster `resource` of this region.
    pub async fn describe_database(
        &self,
        resource: &RdsResource,
    ) -> Result<RestoredDatabase, RdsError> {
        let subjects = [Subject::Database(resource)];
        let protocol = |operation, problem: &str| RdsError::Protocol {
            operation,
            region: self.region.clone(),
            problem: format!("{resource}: {problem}"),
        };
        match resource {
            RdsResource::Instance(id) => {
                let operation = "DescribeDBInstances";
                let out = self
                    .client
                    .describe_db_instances()
                    .db_instance_identifier(id)
                    .send()
                    .await
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                let instance = out
                    .db_instances()
                    .first()
                    .ok_or_else(|| protocol(operation, "not in the answer"))?;
                Ok(RestoredDatabase {
                    resource: resource.clone(),
                    arn: instance.db_instance_arn().map(str::to_owned),
                    status: instance
                        .db_instance_status()
                        .ok_or_else(|| protocol(operation, "no status"))?
                        .to_owned(),
                    address: instance
                        .endpoint()
                        .and_then(|e| e.address())
                        .map(str::to_owned),
                    port: instance
                        .endpoint()
                        .and_then(|e| e.port())
                        .and_then(|p| p.try_into().ok()),
                    writer_instance: None,
                })
            }
            RdsResource::Cluster(id) => {
                let operation = "DescribeDBClusters";
                let out = self
                    .client
                    .describe_db_clusters()
                    .db_cluster_identifier(id)
                    .send()
                    .await
                    .map_err(|e| rds_error(self.called(operation), &subjects, e))?;
                let cluster = out
                    .db_clusters()
                    .first()
                    .ok_or_else(|| protocol(operation, "not in the answer"))?;
                Ok(RestoredDatabase {
                    resource: resource.clone(),
                    arn: cluster.db_cluster_arn().map(str::to_owned),
                    status: cluster
                        .status()
                        .ok_or_else(|| protocol(operation, "no status"))?
                        .to_owned(),
                    address: cluster.endpoint().map(str::to_owned),
                    port: cluster.port().and_then(|p| p.try_into().ok()),
                    writer_instance: None,
                })
            }
        }
    }
}

fn left_behind(resource: &RdsResource) -> String {
    format!("; the new {resource} may have been requested already: delete it if it exists")
}
