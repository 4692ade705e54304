-- Retention of backups set for one site or one workspace. A column left NULL falls through to
-- the workspace's row (for a site), then to `[backups]` in the configuration.
CREATE TABLE backup_retention (
    -- 'site' or 'workspace'
    scope         TEXT NOT NULL,
    scope_id      TEXT NOT NULL,
    keep_last     INTEGER,
    keep_daily    INTEGER,
    keep_weekly   INTEGER,
    keep_monthly  INTEGER,
    PRIMARY KEY (scope, scope_id)
);

-- The copy of a backup in the off-site repository (`backups.offsite`), once copied there.
ALTER TABLE backups ADD COLUMN offsite_snapshot_id TEXT;
