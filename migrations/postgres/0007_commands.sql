-- Slash-commands, site tags, access settings and preview expiry.

-- The commands of a comment that already ran: a retried job does not run one twice, and an
-- edited comment runs only the commands its edit added.
CREATE TABLE comment_commands (
    connection_id TEXT NOT NULL REFERENCES connections (id),
    comment_id    TEXT NOT NULL,
    command       TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, comment_id, command)
);

CREATE TABLE site_tags (
    site_id  TEXT NOT NULL REFERENCES sites (id),
    tag      TEXT NOT NULL,
    PRIMARY KEY (site_id, tag)
);
CREATE INDEX site_tags_tag ON site_tags (tag);

-- HTTP access control of a site at the gateway. No row: the defaults (robots header on
-- previews, no basic auth). The basic-auth password is kept as a bcrypt hash (what the gateway
-- checks) and, when endor generated it, encrypted (what members are shown).
CREATE TABLE site_access (
    site_id         TEXT PRIMARY KEY REFERENCES sites (id),
    robots          BIGINT NOT NULL DEFAULT 1,
    basic_user      TEXT,
    basic_hash      TEXT,
    basic_sealed    TEXT,
    updated_at      BIGINT NOT NULL
);

-- When the preview expires (last activity + TTL), in Unix milliseconds.
ALTER TABLE previews ADD COLUMN expires_at BIGINT;
