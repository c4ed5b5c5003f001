DROP INDEX outbox_email_idx;
DROP INDEX dead_letters_last_seen_idx;
DROP INDEX requests_bodies_kept_idx;
DROP INDEX requests_created_idx;
ALTER TABLE requests DROP COLUMN bodies_dropped_at;
