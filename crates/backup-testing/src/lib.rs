//! Test support shared by the backupd crates: conformance suites that every
//! sink and catalog backend must pass, real servers to run them against, and the setup of
//! S3 sinks on those servers.

pub mod atlas;
pub mod azure_sql;
pub mod catalog;
pub mod elasticsearch;
pub mod http_double;
pub mod mysql;
pub mod postgres;
pub mod proxy;
pub mod rds;
pub mod s3;
pub mod servers;
pub mod sink;
