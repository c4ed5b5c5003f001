-- Retention (operator/src/retention.rs): requests older than MAILTRAIL_RETENTION_DAYS are deleted
-- with their emails, events and outbox rows (ON DELETE CASCADE); bodies and attachments may be
-- dropped earlier (MAILTRAIL_RETENTION_BODY_DAYS), keeping the metadata.

-- When the request's bodies and attachments were dropped by retention; NULL: still kept.
ALTER TABLE requests ADD COLUMN bodies_dropped_at timestamptz;

-- Retention picks the oldest rows first, in small batches.
CREATE INDEX requests_created_idx ON requests (created_at);
CREATE INDEX requests_bodies_kept_idx ON requests (created_at) WHERE bodies_dropped_at IS NULL;
CREATE INDEX dead_letters_last_seen_idx ON dead_letters (last_seen_at);
-- The "all jobs published" check and the cascade from emails reach outbox rows by email.
CREATE INDEX outbox_email_idx ON outbox (email_id);
