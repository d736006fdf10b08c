DROP INDEX commands_status_expires;
DROP INDEX commands_queue;
ALTER TABLE commands DROP COLUMN token_id;
ALTER TABLE commands DROP COLUMN expires_at;
ALTER TABLE commands DROP COLUMN queue_seq;
