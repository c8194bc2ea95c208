-- MongoDB sources (sqlite): the oplog range of each logical backup and the archived oplog
-- slices. Keep in step with migrations/postgres/0011_mongodb.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.
-- Oplog positions are BSON timestamps (seconds, increment), both u32, kept as two columns so
-- that they order as numbers.

-- The oplog range of each MongoDB logical backup: its documents are consistent at (end_t,
-- end_i) once its oplog (start, end] is replayed. Not a foreign key, like postgres_backups:
-- catalog rebuild replaces backup rows in place; deleting a backup deletes its row here.
CREATE TABLE mongo_backups (
    backup_id         TEXT NOT NULL PRIMARY KEY,
    start_t           BIGINT NOT NULL CHECK (start_t >= 0),
    start_i           BIGINT NOT NULL CHECK (start_i >= 0),
    end_t             BIGINT NOT NULL CHECK (end_t >= 0),
    end_i             BIGINT NOT NULL CHECK (end_i >= 0),
    start_time        TEXT NOT NULL,
    end_time          TEXT NOT NULL
);

-- One row per archived oplog slice: the entries after (after_t, after_i) up to and including
-- (last_t, last_i), recorded only after the object is durable and its checksum verified. The
-- newest slice's end is where archiving resumes.
CREATE TABLE mongo_oplog_slices (
    source            TEXT NOT NULL,
    after_t           BIGINT NOT NULL CHECK (after_t >= 0),
    after_i           BIGINT NOT NULL CHECK (after_i >= 0),
    last_t            BIGINT NOT NULL CHECK (last_t >= 0),
    last_i            BIGINT NOT NULL CHECK (last_i >= 0),
    entries           BIGINT NOT NULL CHECK (entries >= 0),
    repository        TEXT NOT NULL,
    object_key        TEXT NOT NULL,
    plaintext_size    BIGINT NOT NULL CHECK (plaintext_size >= 0),
    plaintext_sha256  TEXT NOT NULL CHECK (length(plaintext_sha256) = 64),
    stored_size       BIGINT NOT NULL CHECK (stored_size >= 0),
    stored_sha256     TEXT NOT NULL CHECK (length(stored_sha256) = 64),
    archived_at       TEXT NOT NULL,
    PRIMARY KEY (source, last_t, last_i)
);

-- The Atlas cloud backup snapshot each backup of a `kind = "atlas"` source took. Deleting
-- the backup deletes the snapshot in Atlas first, then this row (not a foreign key, as above).
CREATE TABLE atlas_snapshots (
    backup_id         TEXT NOT NULL PRIMARY KEY,
    project_id        TEXT NOT NULL,
    cluster           TEXT NOT NULL,
    snapshot_id       TEXT NOT NULL,
    snapshot_created  TEXT NOT NULL,
    storage_size      BIGINT NOT NULL CHECK (storage_size >= 0),
    exported          BOOLEAN NOT NULL
);
CREATE UNIQUE INDEX atlas_snapshots_by_snapshot ON atlas_snapshots (snapshot_id);

-- Which backupd replica archives a MongoDB source's oplog (one at a time, like job leases):
-- the owner renews lease_expires_at; another replica takes over once it has passed.
CREATE TABLE oplog_archivers (
    source            TEXT NOT NULL PRIMARY KEY,
    owner             TEXT NOT NULL,
    lease_expires_at  TEXT NOT NULL
);
