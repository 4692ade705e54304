-- A preview's story (issue: a new user's first hour): which PR each delivery was about and the
-- job it queued, so `delivery list` shows the job's state and `preview show` the deliveries
-- that drove a preview.
ALTER TABLE deliveries ADD COLUMN number BIGINT;
ALTER TABLE deliveries ADD COLUMN job_id TEXT;
CREATE INDEX deliveries_by_pr ON deliveries (connection_id, number);
-- Write-backs endor would have posted but could not (no credentials for that forge) are kept
-- with state 'unsent' and the reason in last_error; they are never claimed.
CREATE INDEX outbox_by_pr ON outbox (connection_id, number);
