-- $TTMS frames waiting for an offline terminal, oldest first by id.
CREATE TABLE relay_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    target VARCHAR(64) NOT NULL,
    sender VARCHAR(64) NOT NULL,
    hex TEXT NOT NULL,
    queued_at TIMESTAMP NOT NULL,
    delivered_at TIMESTAMP
);
CREATE INDEX relay_queue_target ON relay_queue (target, delivered_at, id);
