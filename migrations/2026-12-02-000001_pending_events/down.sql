DROP INDEX events_provider_event_idx;
CREATE UNIQUE INDEX events_provider_event_idx ON events (provider, provider_event_id)
    WHERE provider_event_id IS NOT NULL;
DROP TABLE pending_events;
