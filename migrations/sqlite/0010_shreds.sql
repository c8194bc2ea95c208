-- Crypto-shredded backups (SQLite). Keep in step with migrations/postgres/0010_shreds.sql.
--
-- Forward-only (see 0001). One row per backup `backupctl shred` made unreadable by deleting
-- its key envelope from every repository (comma-separated in `repositories`). Written once
-- every envelope is gone and before the backup's other rows are deleted, so the record
-- outlives the backup (no foreign key).
CREATE TABLE shredded_backups (
    backup_id          TEXT NOT NULL PRIMARY KEY,
    source             TEXT NOT NULL,
    backup_started_at  TEXT NOT NULL,
    repositories       TEXT NOT NULL,
    shredded_at        TEXT NOT NULL
);
