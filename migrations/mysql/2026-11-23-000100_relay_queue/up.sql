-- $TTMS frames waiting for an offline terminal, oldest first by id.
CREATE TABLE relay_queue (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    target VARCHAR(64) NOT NULL,
    sender VARCHAR(64) NOT NULL,
    hex MEDIUMTEXT NOT NULL,
    queued_at DATETIME(6) NOT NULL,
    delivered_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX relay_queue_target ON relay_queue (target, delivered_at, id);
