-- Usage records for the cost report (sqlite). Keep in step with migrations/postgres/0008_usage.sql.
--
-- Forward-only (see 0001). Every time is bound by the catalog; no query reads the clock.
-- The cost report derives storage from the live rows of copies, wal_files and
-- wal_file_copies, and from this file's records of what is gone or was read.

-- One row per stored object the catalog stopped recording (a backup deleted by prune, a copy
-- expired by its copy-to rule, a WAL file past retention), written in the same transaction
-- as the deletion, so storage is billed until then and early deletions can be priced.
-- object_kind: 'artifact' (a copy of an artifact) or 'wal' (an archived WAL file or a copy).
-- origin_repository: where the data was first written (the backup's or WAL file's own
-- repository); a copy elsewhere was transferred from there.
CREATE TABLE storage_deletions (
    source             TEXT NOT NULL,
    repository         TEXT NOT NULL,
    origin_repository  TEXT NOT NULL,
    object_kind        TEXT NOT NULL CHECK (object_kind IN ('artifact', 'wal')),
    object_key         TEXT NOT NULL,
    backup_id          TEXT,
    storage_class      TEXT,
    stored_size        BIGINT NOT NULL CHECK (stored_size >= 0),
    created_at         TEXT NOT NULL,
    deleted_at         TEXT NOT NULL
);

CREATE INDEX storage_deletions_deleted_at ON storage_deletions (deleted_at);

-- Requests that read stored data, recorded after they succeeded: GETs by restore and
-- wal-fetch (operation 'get'), and archive restore requests (RestoreObject, operation
-- 'restore', with the retrieval tier). One row per operation and repository, with the number
-- of requests and the bytes read or thawed.
CREATE TABLE object_requests (
    source             TEXT NOT NULL,
    repository         TEXT NOT NULL,
    storage_class      TEXT,
    operation          TEXT NOT NULL CHECK (operation IN ('get', 'restore')),
    tier               TEXT,
    requests           BIGINT NOT NULL CHECK (requests >= 0),
    bytes              BIGINT NOT NULL CHECK (bytes >= 0),
    requested_at       TEXT NOT NULL
);

CREATE INDEX object_requests_requested_at ON object_requests (requested_at);
