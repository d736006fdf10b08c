-- Webhook subscribers added through the API (issue #5; those of server.toml are not stored),
-- and every delivery attempt to any subscriber. `events` is a JSON list of names or ["*"],
-- `devices` NULL (every device) or a JSON list of ids and `prefix*`.
CREATE TABLE webhooks (
    id VARCHAR(40) NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT,
    devices TEXT,
    created_at TIMESTAMP NOT NULL
);

-- One row per attempt. `delivery` is the X-DTU-Delivery id (an event id, or a batch id for a
-- batch of `events` telemetry envelopes); `outcome` ok | http_error | connect_error | timeout |
-- overflow (events dropped because the subscriber's queue was full; `events` says how many).
CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    webhook_id VARCHAR(40) NOT NULL,
    delivery VARCHAR(64) NOT NULL,
    event VARCHAR(32) NOT NULL,
    events INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome VARCHAR(16) NOT NULL,
    status_code INTEGER,
    error TEXT,
    latency_ms BIGINT NOT NULL,
    at TIMESTAMP NOT NULL
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
