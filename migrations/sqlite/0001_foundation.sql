-- Users, workspaces, repository connections and webhook deliveries.
-- Timestamps are Unix milliseconds (INTEGER) on both backends.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    login       TEXT NOT NULL UNIQUE CHECK (length(login) BETWEEN 1 AND 64),
    name        TEXT,
    email       TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE identities (
    forge    TEXT NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea')),
    login    TEXT NOT NULL,
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (forge, login)
);

CREATE TABLE workspaces (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE members (
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    roles         TEXT NOT NULL CHECK (roles <> ''),
    PRIMARY KEY (workspace_id, user_id)
);

CREATE TABLE connections (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    forge            TEXT NOT NULL CHECK (forge IN ('github', 'gitlab', 'gitea')),
    repo             TEXT NOT NULL,
    api_url          TEXT,
    git_url          TEXT,
    -- A connection without a secret cannot exist.
    secret           TEXT NOT NULL CHECK (length(secret) >= 16),
    previous_secret  TEXT,
    created_at       INTEGER NOT NULL,
    rotated_at       INTEGER,
    deleted_at       INTEGER
);
CREATE INDEX connections_workspace ON connections (workspace_id);

CREATE TABLE deliveries (
    id            TEXT PRIMARY KEY,
    connection_id TEXT NOT NULL REFERENCES connections(id),
    delivery_key  TEXT NOT NULL,
    forge         TEXT NOT NULL,
    event         TEXT NOT NULL,
    action        TEXT,
    outcome       TEXT NOT NULL CHECK (outcome IN ('queued', 'ignored')),
    reason        TEXT,
    normalized    TEXT,
    payload       BLOB NOT NULL,
    received_at   INTEGER NOT NULL,
    UNIQUE (connection_id, delivery_key)
);
CREATE INDEX deliveries_received ON deliveries (received_at);
