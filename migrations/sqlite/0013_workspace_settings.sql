-- A workspace's own settings, overriding endor's config for its sites: how long their logs
-- are kept and how big they may grow (NULL: the config's `[logs]`).
CREATE TABLE workspace_settings (
    workspace_id      TEXT PRIMARY KEY REFERENCES workspaces(id) ON DELETE CASCADE,
    log_retention_ms  INTEGER,
    log_max_bytes     INTEGER
);
