-- The durable job queue. One job at a time per key (a PR), newest head wins, leases with
-- heartbeats, retries with backoff.

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    -- Jobs with the same key never run at the same time (e.g. one PR).
    job_key           TEXT NOT NULL,
    head_sha          TEXT,
    payload           TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    max_attempts      BIGINT NOT NULL,
    run_after         BIGINT NOT NULL,
    lease_owner       TEXT,
    lease_until       BIGINT,
    cancel_requested  BIGINT NOT NULL DEFAULT 0,
    last_error        TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX jobs_ready ON jobs (state, run_after, created_at);
CREATE INDEX jobs_by_key ON jobs (job_key, state);
-- The invariant itself: at most one running job per key, whatever the race.
CREATE UNIQUE INDEX jobs_one_running_per_key ON jobs (job_key) WHERE state = 'running';

-- One row per job key, locked (upserted) in sorted order at the start of every transaction that
-- queues jobs: transactions touching the same key serialize instead of deadlocking.
CREATE TABLE job_keys (
    job_key  TEXT PRIMARY KEY
);
