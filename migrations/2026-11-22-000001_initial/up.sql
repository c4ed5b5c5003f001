-- mailtrail's schema, designed for the whole product (see ARCHITECTURE.md and docs/history.md).
-- Only the operator connects to this database.

-- One row per mailbox request. Content (bodies, attachments) is stored once here, never per email.
CREATE TABLE requests (
    id            uuid PRIMARY KEY,                 -- UUIDv5(tenant, request_key)
    tenant        text        NOT NULL,
    request_key   text        NOT NULL,             -- the client's idempotency key
    key_source    text        NOT NULL CHECK (key_source IN ('body', 'message_id', 'generated')),
    content_hash  bytea       NOT NULL,             -- SHA-256 of the canonical request
    priority      text        NOT NULL CHECK (priority IN ('normal', 'high')),
    from_address  jsonb       NOT NULL,             -- shared::address::Address
    reply_to      jsonb,
    subject       text        NOT NULL,
    text_body     text,
    html_body     text,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    tags          text[]      NOT NULL DEFAULT '{}',
    metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    attachments   jsonb       NOT NULL DEFAULT '[]'::jsonb,
    send_at       timestamptz,
    publisher     text,                             -- AMQP user_id of the publisher, when set
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, request_key)
);
CREATE INDEX requests_tenant_created_idx ON requests (tenant, created_at DESC);

-- One row per recipient of a request: the tracked email, with its summary.
CREATE TABLE emails (
    id                   uuid PRIMARY KEY,          -- UUIDv5(tenant, request_key, canonical recipient)
    request_id           uuid        NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
    tenant               text        NOT NULL,
    recipient            jsonb       NOT NULL,      -- shared::address::Address, as given
    recipient_canonical  text        NOT NULL,
    status               text        NOT NULL,      -- summary, by the precedence table
    status_precedence    smallint    NOT NULL,
    last_seq             integer     NOT NULL DEFAULT 0,  -- the per-email event sequence
    provider             text,
    provider_message_id  text,
    open_count           integer     NOT NULL DEFAULT 0,
    click_count          integer     NOT NULL DEFAULT 0,
    first_opened_at      timestamptz,
    first_clicked_at     timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX emails_request_idx ON emails (request_id);
-- "Every email sent to this member", newest first, per tenant.
CREATE INDEX emails_recipient_idx ON emails (tenant, recipient_canonical, created_at DESC, id);
CREATE INDEX emails_tenant_created_idx ON emails (tenant, created_at DESC, id);
CREATE INDEX emails_status_idx ON emails (tenant, status, created_at DESC);
-- Resolving provider webhooks that carry only the provider's message id.
CREATE INDEX emails_provider_message_idx ON emails (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;

-- Append-only history. Never updated, never deleted except by retention.
CREATE TABLE events (
    id                   bigserial PRIMARY KEY,
    event_id             uuid        NOT NULL UNIQUE,   -- de-duplication of republished events
    email_id             uuid        NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    seq                  integer     NOT NULL,          -- per-email arrival order, from 1
    event_type           text        NOT NULL,
    lifecycle_rank       smallint    NOT NULL,
    occurred_at          timestamptz NOT NULL,
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    source               text        NOT NULL,          -- operator | dispatcher | webhook:<provider>
    provider             text,
    provider_event_id    text,
    provider_message_id  text,
    details              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    UNIQUE (email_id, seq)
);
-- Exactly once per provider event identity.
CREATE UNIQUE INDEX events_provider_event_idx ON events (provider, provider_event_id)
    WHERE provider_event_id IS NOT NULL;
-- The per-email timeline in history order.
CREATE INDEX events_timeline_idx ON events (email_id, occurred_at, lifecycle_rank, seq);
CREATE INDEX events_type_occurred_idx ON events (event_type, occurred_at);

-- Transactional outbox: dispatch jobs written with the request, published by the relay.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    job_id        uuid        NOT NULL UNIQUE,          -- stable across republishes
    email_id      uuid        NOT NULL REFERENCES emails (id) ON DELETE CASCADE,
    tenant        text        NOT NULL,
    queue         text        NOT NULL,                 -- topology base name
    attempt       integer     NOT NULL DEFAULT 1,
    traceparent   text,
    available_at  timestamptz NOT NULL DEFAULT now(),   -- for scheduled sends
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON outbox (available_at, id) WHERE published_at IS NULL;

-- Admin API keys, stored hashed.
CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    name          text        NOT NULL,
    key_prefix    text        NOT NULL UNIQUE,          -- shown in listings, used for lookup
    key_hash      bytea       NOT NULL,                 -- SHA-256 of the whole key
    tenant        text,                                 -- NULL: all tenants
    role          text        NOT NULL CHECK (role IN ('read', 'admin')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Everything set aside, with its reason (intake records its own; a dead-letter consumer later).
CREATE TABLE dead_letters (
    id             uuid PRIMARY KEY,                    -- x-mailtrail-dead-letter-id
    source_queue   text        NOT NULL,
    reason         text        NOT NULL,
    detail         text        NOT NULL,
    tenant         text,
    request_key    text,
    email_id       uuid,
    set_aside_by   text        NOT NULL,
    body           bytea       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    attempts       integer     NOT NULL DEFAULT 1,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_tenant_idx ON dead_letters (tenant, last_seen_at DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, last_seen_at DESC);
