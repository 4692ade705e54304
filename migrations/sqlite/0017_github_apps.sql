-- GitHub Apps made through GitHub's app-manifest flow (`endor github app create`): what
-- GitHub answered the conversion with, the key and the secrets sealed with the master key.
CREATE TABLE github_apps (
    slug            TEXT PRIMARY KEY,
    app_id          INTEGER NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    html_url        TEXT NOT NULL,
    client_id       TEXT NOT NULL,
    client_secret   TEXT NOT NULL,
    webhook_secret  TEXT NOT NULL,
    pem             TEXT NOT NULL,
    -- The workspace whose owner made it.
    workspace_id    TEXT NOT NULL REFERENCES workspaces(id),
    created_at      INTEGER NOT NULL
);
