//! backup-sources
