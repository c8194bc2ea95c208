//! End-to-end tests of `backupctl`: each test runs the real binary in a
//! temporary work directory with its own config, catalog, key and repository.
//!
//! Some scenarios need root (running as `nobody`, mounting a tmpfs); they fail
//! when not root unless BACKUPD_SKIP_PRIVILEGED_TESTS=1.

mod atlas;
mod azure_blob;
mod azure_sql;
mod catalog;
mod config;
mod corruption;
mod crash;
mod drill;
mod elasticsearch;
mod keys;
mod mongo;
mod mysql;
mod postgres;
mod postgres_async;
mod privileged;
mod rds;
mod replication;
mod retention;
mod roundtrip;
mod s3;
mod s3_faults;
mod s3_lock;
mod schedule;
mod support;
