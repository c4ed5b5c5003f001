-- The W3C trace id (32 hex digits) of the hop that reported each event, so an admin can go from
-- an email's history to every log line of the services that handled it. Null for events
-- recorded before this column existed and for reports that carried no trace.
ALTER TABLE events ADD COLUMN trace_id text
    CHECK (trace_id IS NULL OR trace_id ~ '^[0-9a-f]{32}$');
