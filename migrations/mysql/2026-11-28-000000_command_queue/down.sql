DROP INDEX commands_status_expires ON commands;
DROP INDEX commands_queue ON commands;
ALTER TABLE commands DROP COLUMN token_id, DROP COLUMN expires_at, DROP COLUMN queue_seq;
