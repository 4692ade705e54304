-- Regions (SPEC §12). A connection's previews are made in its region (a concrete name, fixed at
-- connect time); each job carries the region of its connection so that a worker started with
-- `--region NAME` claims only that region's jobs. NULL: a job of no connection (any worker).
ALTER TABLE connections ADD COLUMN region TEXT NOT NULL DEFAULT 'default';
ALTER TABLE jobs ADD COLUMN region TEXT;
-- The worker host a preview's process runs on (its `runtime.advertise`): a host's previews are
-- resumed by that host, or taken over by another worker of the region when the host is lost.
ALTER TABLE previews ADD COLUMN host TEXT;
