-- Browser sessions of the history page: an API key is exchanged once for a random token kept in
-- an HttpOnly cookie. Only the token's SHA-256 is stored. A session has its key's scope and dies
-- with it (revoking the key ends its sessions at once: authentication joins api_keys).
CREATE TABLE sessions (
    token_hash  bytea       PRIMARY KEY,
    key_id      uuid        NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- Sent back by the page in `X-CSRF-Token` with every change.
    csrf_token  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);
CREATE INDEX sessions_key_idx ON sessions (key_id);
