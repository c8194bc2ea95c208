-- Restore drills (SQLite). Keep in step with migrations/postgres/0009_drills.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.
--
-- `jobs.kind` gains 'drill' (a scheduled or requested restore drill runs as a job, so the
-- replicas of an HA pair share it through the same leases as backups). SQLite cannot change
-- a CHECK constraint in place: the table is rebuilt (nothing references it).

CREATE TABLE jobs_new (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL,
    repository        TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('backup', 'prune', 'drill')),
    backup_type       TEXT NOT NULL,
    tag               TEXT,
    scheduled_for     TEXT,
    due_at            TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead',
                                        'cancelled')),
    attempts          BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      BIGINT NOT NULL CHECK (max_attempts >= 1),
    next_attempt_at   TEXT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    takeovers         BIGINT NOT NULL DEFAULT 0 CHECK (takeovers >= 0),
    backup_id         TEXT,
    error             TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    UNIQUE (source, kind, scheduled_for)
);
INSERT INTO jobs_new SELECT id, source, repository, kind, backup_type, tag, scheduled_for,
    due_at, status, attempts, max_attempts, next_attempt_at, lease_owner, lease_expires_at,
    takeovers, backup_id, error, created_at, updated_at, started_at, finished_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_status_due_at ON jobs (status, due_at);
CREATE INDEX jobs_status_lease_expires_at ON jobs (status, lease_expires_at);
CREATE INDEX jobs_source_due_at ON jobs (source, due_at);

-- One row per restore drill: which backup it restored, how long the restore took (the
-- measured RTO: thaw + download + restore + recovery, checks and teardown excluded), each
-- check's result (JSON array of {name, passed, detail}) and the outcome. Not a foreign key to
-- backups: a drill's record outlives the backup it restored.
CREATE TABLE drills (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL,
    backup_id         TEXT,
    trigger_kind      TEXT NOT NULL CHECK (trigger_kind IN ('schedule', 'manual')),
    pick              TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('running', 'passed', 'failed')),
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    rto_millis        BIGINT CHECK (rto_millis >= 0),
    restore_millis    BIGINT CHECK (restore_millis >= 0),
    recovery_millis   BIGINT CHECK (recovery_millis >= 0),
    restored_bytes    BIGINT CHECK (restored_bytes >= 0),
    checks            TEXT NOT NULL DEFAULT '[]',
    error             TEXT
);

-- last_drill / list_drills: per source, newest first.
CREATE INDEX drills_source_started_at ON drills (source, started_at);

-- Row counts a backup recorded for drills to check a restore against (PostgreSQL: exact
-- count(*) of every user table, taken right after the base backup stopped). `relation` is
-- "database.schema.table". Deleted with the backup.
CREATE TABLE backup_row_counts (
    backup_id         TEXT NOT NULL,
    relation          TEXT NOT NULL,
    row_count         BIGINT NOT NULL CHECK (row_count >= 0),
    PRIMARY KEY (backup_id, relation)
);
