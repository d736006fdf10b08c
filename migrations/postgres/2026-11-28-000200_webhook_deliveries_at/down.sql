DROP INDEX webhook_deliveries_at;
