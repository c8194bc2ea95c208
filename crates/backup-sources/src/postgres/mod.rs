//! The PostgreSQL source: base backups plus continuous WAL archiving, so a
//! cluster can be restored to any point in time the archive covers.

pub mod wal;
