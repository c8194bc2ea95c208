-- Catalog schema v2 (PostgreSQL): backup tags, legal holds, the `deleting` status, and when
-- each copy was first recorded. Keep in step with migrations/sqlite/0002_tags_and_holds.sql.

ALTER TABLE backups ADD COLUMN tag TEXT;
ALTER TABLE backups ADD COLUMN legal_hold BOOLEAN NOT NULL DEFAULT FALSE;

-- v1 declared the status CHECK on the column, so PostgreSQL named it backups_status_check.
ALTER TABLE backups DROP CONSTRAINT backups_status_check;
ALTER TABLE backups ADD CONSTRAINT backups_status_check
    CHECK (status IN ('running', 'complete', 'failed', 'abandoned', 'deleting'));

-- When the copy was first recorded (minimum storage durations of archive classes count from
-- here). Existing copies get their last verification time, the best record there is.
ALTER TABLE copies ADD COLUMN created_at TIMESTAMPTZ;
UPDATE copies SET created_at = verified_at;
ALTER TABLE copies ALTER COLUMN created_at SET NOT NULL;
