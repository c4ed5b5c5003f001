DROP TRIGGER events_status_outbox ON events;
DROP FUNCTION mailtrail_queue_status_events();
DROP TABLE status_outbox;
