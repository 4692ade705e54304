-- Backups of sites in restic repositories. A repository's passphrase is made by endor on first
-- use and kept sealed with the master key; a backup row indexes one restic snapshot.
CREATE TABLE backup_repositories (
    url         TEXT PRIMARY KEY,
    passphrase  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE backups (
    id           TEXT PRIMARY KEY,
    site_id      TEXT NOT NULL REFERENCES sites(id),
    site_name    TEXT NOT NULL,
    repository   TEXT NOT NULL,
    snapshot_id  TEXT NOT NULL,
    -- The path restic recorded (the generation's folder at the time).
    source_path  TEXT NOT NULL,
    -- Comma-separated.
    tags         TEXT NOT NULL DEFAULT '',
    -- JSON: the resources backed up, [[kind, name], ...].
    resources    TEXT NOT NULL,
    files        INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    bytes_added  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    created_by   TEXT NOT NULL,
    -- JSON: every file's SHA-256 and every SQLite table's rows and checksum, as backed up.
    manifest     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX backups_by_site ON backups (site_id, created_at);

-- Whether a site is backed up on `backups.schedule` (no row: only if it is protected).
CREATE TABLE site_backup_settings (
    site_id    TEXT PRIMARY KEY REFERENCES sites(id),
    scheduled  INTEGER NOT NULL
);

-- Restore drills: a backup restored into a scratch site and checked against its manifest.
CREATE TABLE backup_drills (
    id           TEXT PRIMARY KEY,
    backup_id    TEXT NOT NULL REFERENCES backups(id),
    at           INTEGER NOT NULL,
    ok           INTEGER NOT NULL,
    detail       TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL
);
CREATE INDEX backup_drills_by_backup ON backup_drills (backup_id, at);
