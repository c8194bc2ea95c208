-- Replication queue and archive thaw requests (SQLite). Keep in step with
-- migrations/postgres/0004_replication.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.

-- One row per (backup, destination repository) a completed backup must be copied to. Rows are
-- written before the backup is marked complete, so a crash can never leave a complete backup
-- whose copies were forgotten; claimers only take rows of complete backups. A claimer holds a
-- lease it renews while copying; a copier that died is taken over once the lease expires.
-- backup_id is not a foreign key, so `catalog rebuild` can replace a backup row in place;
-- deleting a backup deletes its rows here (and in thaw_requests) explicitly.
CREATE TABLE replication_queue (
    backup_id         TEXT NOT NULL,
    destination       TEXT NOT NULL,
    -- Storage class of the copy's data objects (e.g. DEEP_ARCHIVE); NULL = the repository's.
    storage_class     TEXT,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'done')),
    -- Failed attempts so far (a lease takeover is not an attempt).
    attempts          BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at   TEXT NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    error             TEXT,
    bytes_copied      BIGINT NOT NULL DEFAULT 0 CHECK (bytes_copied >= 0),
    enqueued_at       TEXT NOT NULL,
    finished_at       TEXT,
    PRIMARY KEY (backup_id, destination)
);

-- claim_copy: pending rows by retry time.
CREATE INDEX replication_queue_status_next_attempt_at
    ON replication_queue (status, next_attempt_at);

-- Restores requested for archived (Glacier / Deep Archive) copies, so `backupctl thaw status`
-- knows what is thawing without listing every archived object.
CREATE TABLE thaw_requests (
    backup_id         TEXT NOT NULL,
    repository        TEXT NOT NULL,
    tier              TEXT NOT NULL,
    days              BIGINT NOT NULL CHECK (days >= 1),
    requested_at      TEXT NOT NULL,
    PRIMARY KEY (backup_id, repository)
);
