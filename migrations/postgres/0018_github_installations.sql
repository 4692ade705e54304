-- Installations of a GitHub App endor made (`installation` events on POST /webhooks/github):
-- each belongs to the workspace of its app; its repositories are connections of that
-- workspace (connections.installation_id). Suspended or deleted: write-back stops.
CREATE TABLE github_installations (
    id            BIGINT PRIMARY KEY,
    app_id        BIGINT NOT NULL,
    account       TEXT NOT NULL,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    suspended_at  BIGINT,
    deleted_at    BIGINT,
    created_at    BIGINT NOT NULL
);

ALTER TABLE connections ADD COLUMN installation_id BIGINT;

-- Deliveries to the app's own webhook find their connection by repository.
CREATE INDEX connections_by_repo ON connections (forge, lower(repo));
