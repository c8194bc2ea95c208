-- Azure SQL sources (sqlite): what each backup of an Azure SQL database recorded. The data stays
-- in Azure (its automated backups, reached by a point-in-time restore, and optionally a
-- bacpac export in Blob Storage); the backup's own artifacts hold this record too. Keep in
-- step with migrations/postgres/0014_azure_sql.sql. Forward-only (see 0001).
--
-- Not a foreign key, like rds_snapshots: catalog rebuild replaces backup rows in place;
-- deleting a backup deletes its row here.
CREATE TABLE azure_sql_backups (
    backup_id             TEXT PRIMARY KEY,
    subscription_id       TEXT NOT NULL,
    resource_group        TEXT NOT NULL,
    server                TEXT NOT NULL,
    database_name         TEXT NOT NULL,
    -- The database's resource id (what a point-in-time restore names as its source).
    database_resource_id  TEXT NOT NULL,
    location              TEXT NOT NULL,
    -- The point a restore of this backup goes to.
    restore_point         TEXT NOT NULL,
    -- The start of the database's restore window when the backup was taken.
    earliest_restore_date TEXT,
    -- The bacpac export, when the source exports: its blob URL (never with a SAS) and size.
    export_blob_url       TEXT,
    export_bytes          BIGINT,
    created_at            TEXT NOT NULL
);
