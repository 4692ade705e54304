-- Write-backs to the forge (status comment, commit status, deployment), stored before they are
-- attempted and retried until done: the durable outbox. Rows of one coalesce key (one PR's
-- comment, one commit's status, one PR's deployment) are sent one at a time and in order; a
-- pending row not yet sent is replaced by a newer one of its key (only the newest is sent).

CREATE TABLE outbox (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections (id),
    number        BIGINT NOT NULL,
    -- comment | status | deployment
    kind          TEXT NOT NULL,
    coalesce_key  TEXT NOT NULL,
    payload       TEXT NOT NULL,
    -- pending | sending | done | failed
    state         TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    run_after     BIGINT NOT NULL,
    lease_owner   TEXT,
    lease_until   BIGINT,
    last_error    TEXT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX outbox_one_pending_per_key ON outbox (coalesce_key) WHERE state = 'pending';
CREATE INDEX outbox_due ON outbox (state, run_after);

-- Ids the forge gave back: the status comment and the deployment of a PR.
CREATE TABLE forge_refs (
    connection_id TEXT NOT NULL REFERENCES connections (id),
    number        BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    ref_id        TEXT NOT NULL,
    PRIMARY KEY (connection_id, number, kind)
);

-- The PR's title, shown (escaped) in the status comment.
ALTER TABLE previews ADD COLUMN title TEXT;
