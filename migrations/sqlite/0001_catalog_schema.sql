-- Catalog schema v1 (SQLite). Keep in step with migrations/postgres/0001_catalog_schema.sql.
--
-- Migrations are forward-only: never edit a file once it has been released (sqlx refuses to
-- start when an applied migration's checksum changes); add a new numbered file instead.
--
-- Conventions shared with the Postgres schema, so one set of queries serves both backends:
--   * ids are canonical lowercase UUID strings (TEXT);
--   * digests are lowercase hex SHA-256 (TEXT, 64 chars);
--   * sizes and counts are BIGINT (i64; the catalog rejects u64 values above i64::MAX);
--   * times are UTC, truncated to microseconds by the catalog. SQLite stores them as RFC 3339
--     TEXT written by sqlx, always with the "+00:00" offset, so text order is time order and
--     `<` / ORDER BY work directly on the columns.

CREATE TABLE sources (
    name        TEXT NOT NULL PRIMARY KEY,
    kind        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE backups (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL REFERENCES sources (name),
    repository        TEXT NOT NULL,
    backup_type       TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('running', 'complete', 'failed', 'abandoned')),
    started_at        TEXT NOT NULL,
    finished_at       TEXT,
    heartbeat_at      TEXT NOT NULL,
    host              TEXT NOT NULL,
    pid               BIGINT NOT NULL CHECK (pid >= 0),
    tool_version      TEXT NOT NULL,
    file_count        BIGINT NOT NULL DEFAULT 0 CHECK (file_count >= 0),
    skipped_count     BIGINT NOT NULL DEFAULT 0 CHECK (skipped_count >= 0),
    plaintext_bytes   BIGINT NOT NULL DEFAULT 0 CHECK (plaintext_bytes >= 0),
    stored_bytes      BIGINT NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    -- Not a foreign key: the manifest is one of this backup's own artifacts, which are
    -- inserted after the backup row (checked by the catalog when the backup completes).
    manifest_artifact TEXT,
    error             TEXT
);

-- list_backups / latest_complete_backup (per source, newest first).
CREATE INDEX backups_source_started_at ON backups (source, started_at);
-- list_backups without a source filter.
CREATE INDEX backups_started_at ON backups (started_at);
-- abandon_stale_backups.
CREATE INDEX backups_status_heartbeat_at ON backups (status, heartbeat_at);

CREATE TABLE artifacts (
    id                TEXT NOT NULL PRIMARY KEY,
    backup_id         TEXT NOT NULL REFERENCES backups (id),
    role              TEXT NOT NULL,
    plaintext_size    BIGINT NOT NULL CHECK (plaintext_size >= 0),
    plaintext_sha256  TEXT NOT NULL CHECK (length(plaintext_sha256) = 64),
    segment_count     BIGINT NOT NULL CHECK (segment_count >= 0),
    created_at        TEXT NOT NULL
);

CREATE INDEX artifacts_backup_id ON artifacts (backup_id);

-- One row per repository holding a durable, checksum-verified copy of an artifact.
CREATE TABLE copies (
    artifact_id       TEXT NOT NULL REFERENCES artifacts (id),
    repository        TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    stored_size       BIGINT NOT NULL CHECK (stored_size >= 0),
    stored_sha256     TEXT NOT NULL CHECK (length(stored_sha256) = 64),
    storage_class     TEXT,
    verified_at       TEXT NOT NULL,
    PRIMARY KEY (artifact_id, repository)
);
