-- The dashboard (SPEC §14) and notifications (SPEC §13): passwords, sign-in sessions,
-- invitations, the notification inbox, the mail outbox and per-user preferences.

-- An argon2id PHC string; NULL: the user cannot sign in with a password.
ALTER TABLE users ADD COLUMN password_hash TEXT;

-- A browser session: only the SHA-256 of its cookie is kept.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

-- An invitation to a workspace by email: only the SHA-256 of its link's token is kept.
CREATE TABLE invitations (
    token_hash    TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id) ON DELETE CASCADE,
    email         TEXT NOT NULL,
    roles         TEXT NOT NULL CHECK (roles <> ''),
    invited_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    accepted_at   BIGINT
);

-- One notification of one event to one user: the inbox line, and (mail_state) its mail.
-- (event_key, user_id) is unique: an event is notified to a user once, however often it is
-- raised (a retried job, two workers).
CREATE TABLE notifications (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    workspace_id TEXT,
    kind         TEXT NOT NULL,
    -- 1: shown in the inbox (0: mail only, the user's preference)
    inbox        BIGINT NOT NULL,
    event_key    TEXT NOT NULL,
    subject      TEXT NOT NULL,
    body         TEXT NOT NULL,
    link         TEXT,
    created_at   BIGINT NOT NULL,
    read_at      BIGINT,
    -- none (inbox only) | pending | sending | sent | failed
    mail_state   TEXT NOT NULL,
    mail_to      TEXT,
    attempts     BIGINT NOT NULL DEFAULT 0,
    run_after    BIGINT NOT NULL,
    lease_until  BIGINT,
    last_error   TEXT,
    sent_at      BIGINT
);
CREATE UNIQUE INDEX notifications_once ON notifications (event_key, user_id);
CREATE INDEX notifications_inbox ON notifications (user_id, created_at);
CREATE INDEX notifications_mail_due ON notifications (mail_state, run_after);

-- A user's choice per event kind (no row: the default, inbox and mail on).
CREATE TABLE notification_prefs (
    user_id  TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,
    inbox    BIGINT NOT NULL,
    email    BIGINT NOT NULL,
    PRIMARY KEY (user_id, kind)
);
