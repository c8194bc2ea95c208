-- Restore drills (PostgreSQL). Keep in step with migrations/sqlite/0009_drills.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.

-- `jobs.kind` gains 'drill': drills run as jobs under the same leases as backups.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'prune', 'drill'));

-- One row per restore drill (see the SQLite file for the columns' meaning).
CREATE TABLE drills (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL,
    backup_id         TEXT,
    trigger_kind      TEXT NOT NULL CHECK (trigger_kind IN ('schedule', 'manual')),
    pick              TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'passed', 'failed')),
    started_at        TIMESTAMPTZ NOT NULL,
    finished_at       TIMESTAMPTZ,
    rto_millis        BIGINT CHECK (rto_millis >= 0),
    restore_millis    BIGINT CHECK (restore_millis >= 0),
    recovery_millis   BIGINT CHECK (recovery_millis >= 0),
    restored_bytes    BIGINT CHECK (restored_bytes >= 0),
    checks            TEXT NOT NULL DEFAULT '[]',
    error             TEXT
);

CREATE INDEX drills_source_started_at ON drills (source, started_at);

-- Row counts a backup recorded for drills to check a restore against.
CREATE TABLE backup_row_counts (
    backup_id         TEXT NOT NULL,
    relation          TEXT NOT NULL,
    row_count         BIGINT NOT NULL CHECK (row_count >= 0),
    PRIMARY KEY (backup_id, relation)
);
