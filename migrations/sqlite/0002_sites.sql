-- Sites, the resources they own (files, databases) and their frozen generations.

CREATE TABLE sites (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    region        TEXT NOT NULL,
    parent_id     TEXT REFERENCES sites(id),
    -- Protected sites refuse sync-into, clone-into and delete (the guard lives in the service).
    protected     INTEGER NOT NULL DEFAULT 0,
    read_only     INTEGER NOT NULL DEFAULT 0,
    -- creating | active | deleting | deleted
    state         TEXT NOT NULL CHECK (state IN ('creating', 'active', 'deleting', 'deleted')),
    created_at    INTEGER NOT NULL,
    deleted_at    INTEGER
);
-- A name is unique among sites that are not deleted.
CREATE UNIQUE INDEX sites_live_name ON sites (name) WHERE state <> 'deleted';

CREATE TABLE site_resources (
    site_id        TEXT NOT NULL REFERENCES sites(id),
    kind           TEXT NOT NULL CHECK (kind IN ('files', 'sqlite', 'postgres', 'mariadb')),
    name           TEXT NOT NULL,
    strategy       TEXT NOT NULL,
    location       TEXT NOT NULL,
    bytes_logical  INTEGER NOT NULL,
    bytes_written  INTEGER NOT NULL,
    duration_us    INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (site_id, kind, name)
);

CREATE TABLE generations (
    id          TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL REFERENCES sites(id),
    seq         INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (site_id, seq)
);
