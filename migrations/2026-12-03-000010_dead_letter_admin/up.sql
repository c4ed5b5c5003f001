-- Dead letters an admin can act on: replayed (republished to their source queue) or discarded
-- with a reason, each recorded with who and when. The list pages newest first by first_seen_at,
-- filtered by tenant, reason, source queue and state.
ALTER TABLE dead_letters
    ADD COLUMN replayed_at    timestamptz,
    ADD COLUMN replay_count   integer NOT NULL DEFAULT 0,
    ADD COLUMN replayed_by    text,                 -- the API key id
    ADD COLUMN discarded_at   timestamptz,
    ADD COLUMN discard_reason text,
    ADD COLUMN discarded_by   text;                 -- the API key id

DROP INDEX dead_letters_tenant_idx;
DROP INDEX dead_letters_reason_idx;
CREATE INDEX dead_letters_first_seen_idx ON dead_letters (first_seen_at DESC, id DESC);
CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant, first_seen_at DESC, id DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, first_seen_at DESC, id DESC);
CREATE INDEX dead_letters_source_queue_idx ON dead_letters (source_queue, first_seen_at DESC, id DESC);
CREATE INDEX dead_letters_open_idx ON dead_letters (first_seen_at DESC, id DESC)
    WHERE replayed_at IS NULL AND discarded_at IS NULL;
