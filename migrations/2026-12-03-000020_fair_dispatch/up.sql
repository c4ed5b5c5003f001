-- Fair dispatch across tenants (operator/src/relay.rs, "Fair dispatch" in README.md): while more
-- than one tenant has mail waiting, the relay lets at most MAILTRAIL_FAIR_SHARE_PER_TENANT of a
-- tenant's jobs into the dispatching queue at a time. A job holds its slot from `published_at`
-- until its first outcome (`dispatched`, `deferred`, `failed` or `bounced` from the dispatcher),
-- when the tracking consumer sets `settled_at`; or until MAILTRAIL_FAIR_SLOT_TIMEOUT_SECS pass.

ALTER TABLE outbox ADD COLUMN settled_at timestamptz;

-- Jobs published before this migration hold no slot.
UPDATE outbox SET settled_at = published_at WHERE published_at IS NOT NULL;

-- Tenants with waiting jobs (a loose index scan) and each tenant's oldest due jobs.
CREATE INDEX outbox_tenant_pending_idx ON outbox (queue, tenant, available_at, id)
    WHERE published_at IS NULL;

-- Each tenant's jobs in flight: published, no outcome yet (counted only within the slot timeout).
CREATE INDEX outbox_tenant_in_flight_idx ON outbox (queue, tenant, published_at)
    WHERE published_at IS NOT NULL AND settled_at IS NULL;
