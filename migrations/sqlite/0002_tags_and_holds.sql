-- Catalog schema v2 (SQLite): backup tags, legal holds, the `deleting` status, and when each
-- copy was first recorded. Keep in step with migrations/postgres/0002_tags_and_holds.sql.
--
-- SQLite cannot change a CHECK constraint in place, so `backups` is rebuilt (the "other
-- ALTER TABLE changes" procedure of https://www.sqlite.org/lang_altertable.html). The
-- migration runs in one transaction, where `PRAGMA foreign_keys = OFF` would be ignored;
-- instead the tables that reference `backups` (artifacts, and copies through artifacts) are
-- rebuilt with it, children dropped before parents, so foreign keys stay enforced the whole
-- time and no row ever points at a missing parent. Renaming `x_new` to `x` rewrites the
-- REFERENCES clauses of the other new tables to the final names.

CREATE TABLE backups_new (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL REFERENCES sources (name),
    repository        TEXT NOT NULL,
    backup_type       TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('running', 'complete', 'failed', 'abandoned', 'deleting')),
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
    error             TEXT,
    -- New in v2.
    tag               TEXT,
    legal_hold        BOOLEAN NOT NULL DEFAULT 0 CHECK (legal_hold IN (0, 1))
);

CREATE TABLE artifacts_new (
    id                TEXT NOT NULL PRIMARY KEY,
    backup_id         TEXT NOT NULL REFERENCES backups_new (id),
    role              TEXT NOT NULL,
    plaintext_size    BIGINT NOT NULL CHECK (plaintext_size >= 0),
    plaintext_sha256  TEXT NOT NULL CHECK (length(plaintext_sha256) = 64),
    segment_count     BIGINT NOT NULL CHECK (segment_count >= 0),
    created_at        TEXT NOT NULL
);

CREATE TABLE copies_new (
    artifact_id       TEXT NOT NULL REFERENCES artifacts_new (id),
    repository        TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    stored_size       BIGINT NOT NULL CHECK (stored_size >= 0),
    stored_sha256     TEXT NOT NULL CHECK (length(stored_sha256) = 64),
    storage_class     TEXT,
    verified_at       TEXT NOT NULL,
    -- New in v2: when the copy was first recorded (minimum storage durations of archive
    -- classes count from here). Existing copies get their last verification time, the best
    -- record there is.
    created_at        TEXT NOT NULL,
    PRIMARY KEY (artifact_id, repository)
);

INSERT INTO backups_new (id, source, repository, backup_type, status, started_at, finished_at,
                         heartbeat_at, host, pid, tool_version, file_count, skipped_count,
                         plaintext_bytes, stored_bytes, manifest_artifact, error)
SELECT id, source, repository, backup_type, status, started_at, finished_at, heartbeat_at, host,
       pid, tool_version, file_count, skipped_count, plaintext_bytes, stored_bytes,
       manifest_artifact, error
FROM backups;

INSERT INTO artifacts_new (id, backup_id, role, plaintext_size, plaintext_sha256, segment_count,
                           created_at)
SELECT id, backup_id, role, plaintext_size, plaintext_sha256, segment_count, created_at
FROM artifacts;

INSERT INTO copies_new (artifact_id, repository, object_key, stored_size, stored_sha256,
                        storage_class, verified_at, created_at)
SELECT artifact_id, repository, object_key, stored_size, stored_sha256, storage_class,
       verified_at, verified_at
FROM copies;

-- Children first: dropping a table deletes its rows, which must not orphan anything.
DROP TABLE copies;
DROP TABLE artifacts;
DROP TABLE backups;

ALTER TABLE backups_new RENAME TO backups;
ALTER TABLE artifacts_new RENAME TO artifacts;
ALTER TABLE copies_new RENAME TO copies;

-- The indexes went with the old tables; recreate them (same names as v1).
CREATE INDEX backups_source_started_at ON backups (source, started_at);
CREATE INDEX backups_started_at ON backups (started_at);
CREATE INDEX backups_status_heartbeat_at ON backups (status, heartbeat_at);
CREATE INDEX artifacts_backup_id ON artifacts (backup_id);
