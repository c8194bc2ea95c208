//! Online, non-exclusive PostgreSQL base backups: `pg_backup_start` on a connection that
//! stays open while the data directory is read, then `pg_backup_stop`, whose backup label
//! (and tablespace map) go into the backup as files, as pg_basebackup does.

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};

use backup_catalog::redact_url;
use backup_core::manifest::PostgresPosition;
use backup_sources::postgres::wal::{Lsn, SegmentName, WalSegmentSize};

use crate::error::{EngineError, Result};

/// What `pg_backup_stop` hands back for the backup's files, and where the backup is in the
/// WAL (kept in its manifest footer).
#[derive(Debug, Clone)]
pub struct StopFiles {
    pub backup_label: String,
    pub tablespace_map: String,
    pub position: PostgresPosition,
}

/// A base backup in progress on the server.
pub struct BaseBackupSession {
    connection: PgConnection,
    url: String,
    pub start_lsn: Lsn,
    pub timeline: u32,
    pub start_time: DateTime<Utc>,
    segment_size: WalSegmentSize,
}

fn pg_error(url: &str, what: &str, e: sqlx::Error) -> EngineError {
    EngineError::Failed(format!("PostgreSQL at {}: {what}: {e}", redact_url(url)))
}

impl BaseBackupSession {
    /// Connects and starts the backup (`fast` checkpoint, so it starts at once).
    pub async fn start(url: &str, label: &str, segment_size: WalSegmentSize) -> Result<Self> {
        let mut connection = PgConnection::connect(url).await.map_err(|e| {
            pg_error(
                url,
                "cannot connect (check `connection` and that the server runs)",
                e,
            )
        })?;
        let row = sqlx::query(
            "SELECT setting::bigint AS size, current_setting('archive_mode') AS archive_mode \
             FROM pg_settings WHERE name = 'wal_segment_size'",
        )
        .fetch_one(&mut connection)
        .await
        .map_err(|e| pg_error(url, "reading wal_segment_size", e))?;
        let server_size: i64 = row.get("size");
        let archive_mode: String = row.get("archive_mode");
        if u64::try_from(server_size).ok() != Some(segment_size.bytes()) {
            return Err(EngineError::Usage(format!(
                "the server's wal_segment_size is {server_size} bytes but the source says {} \
                 MiB: set `wal-segment-size-mib` to {}",
                segment_size.bytes() >> 20,
                server_size >> 20
            )));
        }
        if archive_mode == "off" {
            return Err(EngineError::Usage(format!(
                "PostgreSQL at {} has archive_mode = off: set archive_mode = on and \
                 archive_command = 'backupctl wal-push %p' (a base backup without archived WAL \
                 cannot be restored)",
                redact_url(url)
            )));
        }
        let row = sqlx::query(
            "SELECT pg_backup_start($1, true)::text AS lsn, \
             (SELECT timeline_id FROM pg_control_checkpoint()) AS timeline",
        )
        .bind(label)
        .fetch_one(&mut connection)
        .await
        .map_err(|e| pg_error(url, "pg_backup_start failed", e))?;
        let lsn: String = row.get("lsn");
        let timeline: i32 = row.get("timeline");
        Ok(BaseBackupSession {
            connection,
            url: url.to_owned(),
            start_lsn: lsn.parse().map_err(|e| {
                EngineError::Failed(format!("pg_backup_start returned {lsn:?}: {e}"))
            })?,
            timeline: u32::try_from(timeline).unwrap_or(1),
            start_time: Utc::now(),
            segment_size,
        })
    }

    /// Stops the backup. The server switches to a new WAL segment but does not wait for
    /// the archiver: its own wait polls once a second, which would double a short backup.
    /// The caller waits for the stop segment in the catalog instead ([`wait_for_wal`]),
    /// which is also the stronger check: archived by us, not just by some archive_command.
    pub async fn stop(mut self) -> Result<StopFiles> {
        let row = sqlx::query(
            "SELECT lsn::text AS lsn, labelfile, spcmapfile FROM pg_backup_stop(false)",
        )
        .fetch_one(&mut self.connection)
        .await
        .map_err(|e| pg_error(&self.url, "pg_backup_stop failed", e))?;
        let lsn: String = row.get("lsn");
        let stop_lsn: Lsn = lsn
            .parse()
            .map_err(|e| EngineError::Failed(format!("pg_backup_stop returned {lsn:?}: {e}")))?;
        let backup_label: String = row.get("labelfile");
        let tablespace_map: String = row.try_get("spcmapfile").unwrap_or_default();
        let _ = self.connection.close().await;
        let size = self.segment_size;
        let position = PostgresPosition {
            start_lsn: self.start_lsn.to_string(),
            stop_lsn: stop_lsn.to_string(),
            timeline: self.timeline,
            start_wal: SegmentName::from_lsn(self.timeline, self.start_lsn, size).file_name(size),
            // The last segment the backup needs (an LSN on a boundary ends the one before).
            stop_wal: SegmentName::ending_at(self.timeline, stop_lsn, size)
                .unwrap_or_else(|| SegmentName::from_lsn(self.timeline, stop_lsn, size))
                .file_name(size),
            start_time: self.start_time,
            stop_time: Utc::now(),
            parent_backup_id: None,
        };
        Ok(StopFiles {
            backup_label,
            tablespace_map,
            position,
        })
    }
}

/// Waits until `file_name` of `source` is archived in the catalog (by `wal-push`, sync or
/// async), polling every 20 ms for at most `timeout`.
pub async fn wait_for_wal(
    catalog: &backup_catalog::Catalog,
    source: &str,
    file_name: &str,
    timeout: std::time::Duration,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        if catalog.wal_file(source, file_name).await?.is_some() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(EngineError::Failed(format!(
                "source {source}: WAL file {file_name}, which the base backup needs, was not \
                 archived within {}s; check that archive_command is `backupctl wal-push %p` \
                 for this source and that it succeeds (pg_stat_archiver, the server log), or \
                 raise `archive-timeout`",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Paths below the data directory a base backup leaves out, as pg_basebackup does: server
/// runtime state, WAL (it comes from the archive), and temporary files.
pub fn excluded(rel: &[u8]) -> bool {
    const CONTENTS_EXCLUDED: [&[u8]; 9] = [
        b"pg_wal",
        b"pg_dynshmem",
        b"pg_notify",
        b"pg_serial",
        b"pg_snapshots",
        b"pg_stat_tmp",
        b"pg_subtrans",
        b"pg_replslot",
        b"pg_xlog",
    ];
    const TOP_FILES_EXCLUDED: [&[u8]; 7] = [
        b"postmaster.pid",
        b"postmaster.opts",
        b"backup_label",
        b"tablespace_map",
        b"recovery.signal",
        b"standby.signal",
        b"backup_label.old",
    ];
    let mut parts = rel.split(|b| *b == b'/');
    let first = parts.next().unwrap_or_default();
    let has_more = rel.len() > first.len();
    let name = rel.rsplit(|b| *b == b'/').next().unwrap_or_default();
    (has_more && CONTENTS_EXCLUDED.contains(&first))
        || (!has_more && TOP_FILES_EXCLUDED.contains(&first))
        || name == b"pg_internal.init"
        || name.starts_with(b"pgsql_tmp")
}

#[cfg(test)]
mod tests {
    use super::excluded;

    #[test]
    fn exclusions_follow_pg_basebackup() {
        for path in [
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status",
            "postmaster.pid",
            "pg_stat_tmp/global.stat",
            "base/1/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "backup_label",
        ] {
            assert!(excluded(path.as_bytes()), "{path}");
        }
        for path in [
            "pg_wal",
            "pg_stat_tmp",
            "base/1/1259",
            "global/pg_control",
            "PG_VERSION",
            "postgresql.auto.conf",
            "pg_xact/0000",
            "base/1/backup_label",
        ] {
            assert!(!excluded(path.as_bytes()), "{path}");
        }
    }
}
