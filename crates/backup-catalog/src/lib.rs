//! backup-catalog
