//! Test support shared by the backupd crates: conformance suites that every
//! sink and catalog backend must pass.

pub mod catalog;
pub mod sink;
