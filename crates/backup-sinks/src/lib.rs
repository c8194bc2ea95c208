//! backup-sinks
