-- API tokens (issue #4). The secret itself is never stored: `hash` is the lowercase hex
-- SHA-256 of the token. `devices` is NULL (every device) or a JSON list of ids and `prefix*`.
-- Commands keep using the `commands` table of the init migration.
CREATE TABLE tokens (
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    role VARCHAR(16) NOT NULL,
    hash VARCHAR(64) NOT NULL,
    devices TEXT,
    created_at TIMESTAMP NOT NULL,
    revoked SMALLINT NOT NULL DEFAULT 0
);
CREATE INDEX tokens_hash ON tokens (hash);
