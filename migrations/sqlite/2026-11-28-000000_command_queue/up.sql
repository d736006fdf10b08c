-- Offline command queue (issue #4). A queued command is a `commands` row with status `queued`,
-- a per-device `queue_seq` (delivery order; unique per device, NULL for commands that were
-- sent at once), an `expires_at` (its ttl) and the id of the token that queued it (the control
-- lock is checked against it at delivery).
ALTER TABLE commands ADD COLUMN queue_seq BIGINT;
ALTER TABLE commands ADD COLUMN expires_at TIMESTAMP;
ALTER TABLE commands ADD COLUMN token_id VARCHAR(40);
CREATE UNIQUE INDEX commands_queue ON commands (device_id, queue_seq);
CREATE INDEX commands_status_expires ON commands (status, expires_at);
