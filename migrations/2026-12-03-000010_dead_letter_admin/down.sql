DROP INDEX dead_letters_open_idx;
DROP INDEX dead_letters_source_queue_idx;
DROP INDEX dead_letters_reason_idx;
DROP INDEX dead_letters_tenant_idx;
DROP INDEX dead_letters_first_seen_idx;
CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant, last_seen_at DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, last_seen_at DESC);

ALTER TABLE dead_letters
    DROP COLUMN discarded_by,
    DROP COLUMN discard_reason,
    DROP COLUMN discarded_at,
    DROP COLUMN replayed_by,
    DROP COLUMN replay_count,
    DROP COLUMN replayed_at;
