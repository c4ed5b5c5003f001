-- Message search (`GET /v1/messages`, `GET /v1/messages/export`): newest first by
-- (created_at DESC, id DESC), keyset-paged with a row comparison, so every index the search
-- walks ends in (created_at DESC, id DESC): a page is an index range, however deep.
DROP INDEX emails_recipient_idx;
DROP INDEX emails_tenant_created_idx;
DROP INDEX emails_status_idx;
CREATE INDEX emails_recipient_idx ON emails (tenant, recipient_canonical, created_at DESC, id DESC);
CREATE INDEX emails_tenant_created_idx ON emails (tenant, created_at DESC, id DESC);
CREATE INDEX emails_status_idx ON emails (tenant, status, created_at DESC, id DESC);
-- The same for all-tenant keys, which search without a tenant.
CREATE INDEX emails_created_idx ON emails (created_at DESC, id DESC);
CREATE INDEX emails_recipient_all_idx ON emails (recipient_canonical, created_at DESC, id DESC);
-- Containment (`@>`) filters on the request: metadata.<key>=<value> and tag.
CREATE INDEX requests_metadata_idx ON requests USING gin (metadata jsonb_path_ops);
CREATE INDEX requests_tags_idx ON requests USING gin (tags);
-- `request_id` without a tenant (all-tenant keys); with one, UNIQUE (tenant, request_key) serves.
CREATE INDEX requests_request_key_idx ON requests (request_key);
