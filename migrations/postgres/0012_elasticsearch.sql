-- Elasticsearch sources (postgres): the snapshot each backup made in the cluster's snapshot
-- repository (the snapshot data stays there; the backup's own artifacts hold its record).
-- Keep in step with migrations/sqlite/0012_elasticsearch.sql. Forward-only (see 0001).
--
-- Not a foreign key, like postgres_backups: catalog rebuild replaces backup rows in place;
-- deleting a backup deletes its row here.
CREATE TABLE elasticsearch_snapshots (
    backup_id         TEXT NOT NULL PRIMARY KEY,
    -- The snapshot repository in the cluster (not a backupd repository).
    es_repository     TEXT NOT NULL,
    snapshot          TEXT NOT NULL,
    snapshot_uuid     TEXT NOT NULL,
    -- SUCCESS (only successful snapshots make complete backups).
    state             TEXT NOT NULL,
    -- JSON array of index names.
    indices           TEXT NOT NULL,
    shards_total      BIGINT NOT NULL CHECK (shards_total >= 0),
    shards_failed     BIGINT NOT NULL CHECK (shards_failed >= 0),
    size_bytes        BIGINT NOT NULL CHECK (size_bytes >= 0),
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ NOT NULL
);
CREATE UNIQUE INDEX elasticsearch_snapshots_name ON elasticsearch_snapshots (es_repository, snapshot);
