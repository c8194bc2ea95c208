-- RDS sources (postgres): the RDS snapshots each backup made, the one of the source's region and
-- its copy in the copy region (the data stays in RDS; the backup's own artifacts hold their
-- record). Keep in step with migrations/sqlite/0013_rds.sql. Forward-only (see 0001).
--
-- Not a foreign key, like elasticsearch_snapshots: catalog rebuild replaces backup rows in
-- place; deleting a backup deletes its rows here.
CREATE TABLE rds_snapshots (
    backup_id         TEXT NOT NULL,
    -- 'source' (in the source's region) or 'copy' (in its copy-region).
    role              TEXT NOT NULL CHECK (role IN ('source', 'copy')),
    region            TEXT NOT NULL,
    -- 'instance' (DB snapshot) or 'cluster' (DB cluster snapshot).
    resource_kind     TEXT NOT NULL CHECK (resource_kind IN ('instance', 'cluster')),
    -- The DB instance or DB cluster identifier snapshotted.
    resource          TEXT NOT NULL,
    identifier        TEXT NOT NULL,
    arn               TEXT NOT NULL,
    encrypted         BOOLEAN NOT NULL,
    kms_key_id        TEXT,
    engine            TEXT,
    allocated_storage_gb BIGINT,
    created_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (backup_id, role)
);
CREATE UNIQUE INDEX rds_snapshots_arn ON rds_snapshots (arn);
