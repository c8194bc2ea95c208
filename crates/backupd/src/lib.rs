//! backupd: the long-running service. Turns policies into backups on time
//! (scheduler with leases, so several replicas can share a PostgreSQL
//! catalog), prunes, alerts, and serves health, metrics, a JSON API and a status page.

pub mod alerts;
pub mod api;
pub mod lock;
pub mod metrics;
pub mod runner;
pub mod status_page;
