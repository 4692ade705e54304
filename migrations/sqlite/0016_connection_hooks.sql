-- The forge's webhook endor created for a connection (`repo connect --create-hook`): updated
-- when the secret rotates, removed with the connection. NULL: added by hand.
ALTER TABLE connections ADD COLUMN hook_id TEXT;
