DROP INDEX webhook_deliveries_at ON webhook_deliveries;
