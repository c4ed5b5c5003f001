-- Tracking events whose email is not (yet) known: a provider webhook can arrive before the
-- dispatcher's `dispatched` event that names the provider's message id. They wait here and are
-- recorded when their email appears; after MAILTRAIL_PENDING_EVENT_TTL_HOURS they are set aside.
CREATE TABLE pending_events (
    event_id             uuid PRIMARY KEY,
    email_id             uuid,
    provider             text,
    provider_message_id  text,                  -- normalized (shared::tracking)
    tenant               text        NOT NULL,  -- the reporter's tenant scope
    event                jsonb       NOT NULL,  -- the tracking event as received
    received_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_events_email_idx ON pending_events (email_id) WHERE email_id IS NOT NULL;
CREATE INDEX pending_events_provider_idx ON pending_events (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX pending_events_received_idx ON pending_events (received_at);

-- A provider event is unique per email, not across all emails: a provider event id is chosen
-- by whoever holds a signing key, so a global index would let one tenant's event pre-empt
-- another's.
DROP INDEX events_provider_event_idx;
CREATE UNIQUE INDEX events_provider_event_idx ON events (email_id, provider, provider_event_id)
    WHERE provider_event_id IS NOT NULL;
