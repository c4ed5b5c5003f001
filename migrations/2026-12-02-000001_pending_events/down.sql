DROP TABLE pending_events;
