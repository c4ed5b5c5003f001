-- Who changed what, when: every mutation through the API (and key management from the CLI) is
-- written here in the transaction that makes the change, so an entry exists exactly when the
-- change does.
CREATE TABLE audit_log (
    id            bigserial   PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text        NOT NULL,   -- the API key's id, or "cli"
    actor_tenant  text,                   -- the key's tenant scope (NULL: all tenants)
    action        text        NOT NULL,   -- e.g. suppression.add, message.cancel
    tenant        text,                   -- whose data changed (NULL: none or unknown)
    target        text        NOT NULL,   -- what changed: an email id, an address, a key prefix
    details       jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at_idx ON audit_log (id DESC);
CREATE INDEX audit_log_tenant_idx ON audit_log (tenant, id DESC);
