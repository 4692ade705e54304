-- The reaper: resumable teardowns, expiry warnings, one reaper at a time.

-- The teardown in progress: `{final state}/{last step done}` (NULL when none).
ALTER TABLE previews ADD COLUMN teardown_step TEXT;
-- The preview's time to live (ms): each activity (a push, a command) moves the expiry to now + this.
ALTER TABLE previews ADD COLUMN ttl_ms INTEGER;
-- The expiry the status comment last warned about (a new expiry warns again).
ALTER TABLE previews ADD COLUMN warned_expiry INTEGER;

-- Named leases (the reaper's): one holder at a time across processes sharing the store.
CREATE TABLE leases (
    name   TEXT PRIMARY KEY,
    owner  TEXT NOT NULL,
    until  INTEGER NOT NULL
);
