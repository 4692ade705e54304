-- What the gateway serves for each site name: kept in the store so that every gateway process
-- answers the same.

CREATE TABLE routes (
    site_name   TEXT PRIMARY KEY,
    -- building | static | proxy | gone
    kind        TEXT NOT NULL CHECK (kind IN ('building', 'static', 'proxy', 'gone')),
    -- static: the folder served; proxy: 127.0.0.1 port of the site's process.
    target      TEXT,
    robots      BIGINT NOT NULL DEFAULT 1,
    updated_at  BIGINT NOT NULL
);
