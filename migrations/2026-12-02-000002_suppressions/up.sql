-- The suppression list: per tenant, on canonical addresses. Mail to an address listed here (and
-- not expired) is recorded `suppressed` and never dispatched. Entries are added by hard bounces,
-- complaints and unsubscribes, by repeated soft bounces, and through the admin API.
CREATE TABLE suppressions (
    tenant           text        NOT NULL,
    address          text        NOT NULL,              -- canonical (shared::address)
    reason           text        NOT NULL,              -- hard_bounce | complaint | unsubscribe | soft_bounces | free text (API)
    source_event_id  uuid,                              -- the event that caused it, when one did
    email_id         uuid,                              -- the email that event belongs to
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz,                       -- NULL: never
    soft_bounces     integer     NOT NULL DEFAULT 0,    -- soft bounces counted, for soft_bounces entries
    PRIMARY KEY (tenant, address)
);

-- Soft bounces not (yet) enough to suppress: counted per address within a window
-- (MAILTRAIL_SUPPRESS_SOFT_BOUNCES within MAILTRAIL_SUPPRESS_SOFT_BOUNCE_WINDOW_HOURS).
CREATE TABLE soft_bounces (
    tenant       text        NOT NULL,
    address      text        NOT NULL,                  -- canonical
    event_id     uuid        NOT NULL,
    email_id     uuid        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant, address, event_id)
);
