-- PostgreSQL sources (SQLite): archived WAL files and what each base backup needs. Keep in step
-- with migrations/postgres/0005_postgres.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.

-- One row per WAL file (segment, .history, .backup, .partial) pushed by `backupctl wal-push`,
-- recorded only after the object is durable and its checksum verified. The plaintext SHA-256
-- tells an identical re-push (success) from a different file under the same name (refused).
CREATE TABLE wal_files (
    source            TEXT NOT NULL,
    file_name         TEXT NOT NULL,
    timeline          BIGINT NOT NULL CHECK (timeline >= 1),
    repository        TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    plaintext_size    BIGINT NOT NULL CHECK (plaintext_size >= 0),
    plaintext_sha256  TEXT NOT NULL CHECK (length(plaintext_sha256) = 64),
    stored_size       BIGINT NOT NULL CHECK (stored_size >= 0),
    stored_sha256     TEXT NOT NULL CHECK (length(stored_sha256) = 64),
    archived_at       TEXT NOT NULL,
    PRIMARY KEY (source, file_name)
);

-- The WAL position of each PostgreSQL base backup (not a foreign key, like replication_queue:
-- catalog rebuild replaces backup rows in place; deleting a backup deletes its row here).
CREATE TABLE postgres_backups (
    backup_id         TEXT NOT NULL PRIMARY KEY,
    start_lsn         TEXT NOT NULL,
    stop_lsn          TEXT NOT NULL,
    timeline          BIGINT NOT NULL CHECK (timeline >= 1),
    start_wal         TEXT NOT NULL,
    stop_wal          TEXT NOT NULL,
    start_time        TEXT NOT NULL,
    stop_time         TEXT NOT NULL,
    -- The backup an incremental builds on (NULL for a full backup).
    parent_backup_id  TEXT
);

-- Copies of archived WAL files in other repositories (a source's `copy-to`), recorded once
-- the copy's SHA-256 matched the original object's.
CREATE TABLE wal_file_copies (
    source            TEXT NOT NULL,
    file_name         TEXT NOT NULL,
    repository        TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    stored_size       BIGINT NOT NULL CHECK (stored_size >= 0),
    stored_sha256     TEXT NOT NULL CHECK (length(stored_sha256) = 64),
    copied_at         TEXT NOT NULL,
    PRIMARY KEY (source, file_name, repository)
);
