//! Test support shared by the backupd crates: conformance suites that every
//! sink and catalog backend must pass, and real servers to run them against.

pub mod catalog;
pub mod proxy;
pub mod servers;
pub mod sink;
