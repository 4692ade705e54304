-- One row per pull/merge request of a connection: the preview's lifecycle state, which head
-- it is at, and what went wrong. The site it runs on is a row of `sites` (a new one after
-- each destroy/reopen); this row outlives it.

CREATE TABLE previews (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections (id),
    number        INTEGER NOT NULL,
    site_name     TEXT NOT NULL,
    site_id       TEXT,
    -- queued | awaiting-approval | skipped | cloning | building | starting | ready | failed
    -- | destroying | destroyed
    state         TEXT NOT NULL,
    -- The head the newest event asked for, and the head that is live (ready).
    head_sha      TEXT,
    ready_sha     TEXT,
    -- Fork PRs: the one head a member approved.
    approved_sha  TEXT,
    is_fork       INTEGER NOT NULL DEFAULT 0,
    reason        TEXT,
    -- The site process (start command): 127.0.0.1 port and process group.
    port          INTEGER,
    pid           INTEGER,
    -- When the webhook behind the current launch arrived (launch duration = ready - this).
    received_at   INTEGER,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    UNIQUE (connection_id, number)
);

-- Each launch step's start and end, per run (a job id).
CREATE TABLE preview_steps (
    preview_id  TEXT NOT NULL REFERENCES previews (id),
    run_id      TEXT NOT NULL,
    step        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    ok          INTEGER,
    detail      TEXT,
    PRIMARY KEY (preview_id, run_id, step)
);

-- A preview whose launch failed answers with a page saying so: routes get kind 'failed'.
CREATE TABLE routes_new (
    site_name   TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('building', 'static', 'proxy', 'gone', 'failed')),
    target      TEXT,
    robots      INTEGER NOT NULL DEFAULT 1,
    updated_at  INTEGER NOT NULL
);
INSERT INTO routes_new SELECT site_name, kind, target, robots, updated_at FROM routes;
DROP TABLE routes;
ALTER TABLE routes_new RENAME TO routes;
