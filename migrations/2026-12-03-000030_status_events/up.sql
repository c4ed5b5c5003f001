-- Status events for apps: every event recorded in the history is queued here by a trigger, in
-- the transaction that records it, and published after commit by the operator's status relay
-- to the `<prefix>events` topic exchange. Rows are deleted once the broker confirmed them.
CREATE TABLE status_outbox (
    id         bigserial PRIMARY KEY,
    event_row  bigint NOT NULL   -- events.id; a row whose event was purged is dropped unpublished
);

-- One statement-level trigger: a batch of events costs one INSERT … SELECT, not one per row.
CREATE FUNCTION mailtrail_queue_status_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_outbox (event_row) SELECT id FROM recorded_events ORDER BY id;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_status_outbox
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS recorded_events
    FOR EACH STATEMENT
    EXECUTE FUNCTION mailtrail_queue_status_events();
