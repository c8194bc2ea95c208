//! backup-engine
