DROP INDEX outbox_tenant_in_flight_idx;
DROP INDEX outbox_tenant_pending_idx;
ALTER TABLE outbox DROP COLUMN settled_at;
