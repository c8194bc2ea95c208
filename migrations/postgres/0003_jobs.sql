-- Job queue and schedule state (PostgreSQL). Keep in step with migrations/sqlite/0003_jobs.sql.
--
-- Forward-only (see 0001). Times are TIMESTAMPTZ, truncated to microseconds by the catalog.
-- Every time is bound by the catalog; no query reads the clock.

-- One row per planned or requested run. Several backupd replicas share this table: planning
-- the same cron slot twice inserts one row (UNIQUE below; manual jobs have a NULL slot, and
-- NULLs never conflict), and a claimer takes a job by setting its lease.
CREATE TABLE jobs (
    id                TEXT NOT NULL PRIMARY KEY,
    source            TEXT NOT NULL,
    repository        TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('backup', 'prune')),
    backup_type       TEXT NOT NULL,
    tag               TEXT,
    -- The cron slot this job runs for; NULL for manual jobs.
    scheduled_for     TIMESTAMPTZ,
    -- The slot plus jitter (or the request time): not claimed before this.
    due_at            TIMESTAMPTZ NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'dead',
                                        'cancelled')),
    -- Finished attempts (succeeded or failed); a lease takeover is not an attempt.
    attempts          BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      BIGINT NOT NULL CHECK (max_attempts >= 1),
    -- Not claimed before this either (moved forward by retries with backoff).
    next_attempt_at   TIMESTAMPTZ NOT NULL,
    lease_owner       TEXT,
    lease_expires_at  TIMESTAMPTZ,
    -- Times another owner took the job over after its lease expired.
    takeovers         BIGINT NOT NULL DEFAULT 0 CHECK (takeovers >= 0),
    -- The backup of the current (or an interrupted earlier) attempt, or the one that succeeded.
    backup_id         TEXT,
    error             TEXT,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    UNIQUE (source, kind, scheduled_for)
);

-- claim_job and queue_depth: queued jobs by due time, running jobs by lease expiry.
CREATE INDEX jobs_status_due_at ON jobs (status, due_at);
CREATE INDEX jobs_status_lease_expires_at ON jobs (status, lease_expires_at);
-- list_jobs for one source, newest first.
CREATE INDEX jobs_source_due_at ON jobs (source, due_at);

-- The latest cron slot planned for each schedule entry of each source, so a slot is planned
-- once across restarts and replicas, and missed slots are caught up once.
CREATE TABLE schedule_state (
    source            TEXT NOT NULL,
    schedule_key      TEXT NOT NULL,
    last_planned      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, schedule_key)
);
