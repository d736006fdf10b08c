-- Retention deletes old delivery attempts by time (`[storage] retention_deliveries`).
CREATE INDEX webhook_deliveries_at ON webhook_deliveries (at);
