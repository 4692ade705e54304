-- API bearer tokens: only the SHA-256 of a token is kept (tokens are 256 random bits, so a
-- fast hash is enough); a revoked token stays listed with its revocation time.
CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    revoked_at    INTEGER
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

-- Audit trail: bypasses of production protection (and other guarded acts), with the caller.
CREATE TABLE audit_events (
    id       TEXT PRIMARY KEY,
    at       INTEGER NOT NULL,
    caller   TEXT NOT NULL,
    action   TEXT NOT NULL,
    site_id  TEXT,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_events_site ON audit_events (site_id, at);

-- Usage per site and calendar month (UTC, 'YYYY-MM'): CPU of its processes and storage over
-- time (GiB-hours of physically used bytes); hours alive come from sites.created_at/deleted_at.
CREATE TABLE site_usage (
    site_id     TEXT NOT NULL,
    month       TEXT NOT NULL,
    cpu_ms      INTEGER NOT NULL DEFAULT 0,
    gib_hours   REAL NOT NULL DEFAULT 0,
    last_bytes  INTEGER NOT NULL DEFAULT 0,
    sampled_at  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, month)
);

-- The last CPU reading of each site process (pid + start time identify it), so a sample adds
-- only what was used since the previous one.
CREATE TABLE usage_procs (
    site_id      TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    start_ticks  INTEGER NOT NULL,
    cpu_ms       INTEGER NOT NULL,
    PRIMARY KEY (pid, start_ticks)
);
