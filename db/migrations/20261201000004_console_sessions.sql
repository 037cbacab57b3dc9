-- migrate:up

-- A console session: a person signed in with an API key. The cookie holds
-- the session's secret; only its SHA-256 is stored, so a read of this table
-- signs no one in. The session carries the key's organization and scope as
-- they were at sign-in; it ends at expires_at, when it is signed out, and
-- when its key is revoked (lookups join the key and require it unrevoked).
-- Expired rows are deleted as new sessions are made.
CREATE TABLE console_sessions (
    id_hash         bytea PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    api_key_id      bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    scope           text NOT NULL CHECK (scope IN ('invoke', 'manage')),
    csrf_token      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires_at_idx ON console_sessions (expires_at);
CREATE INDEX console_sessions_api_key_id_idx ON console_sessions (api_key_id);

-- One-time sign-in tokens (the link the dev harness prints): a token signs
-- in once, as its key, before expires_at. Stored hashed, like sessions.
CREATE TABLE console_login_tokens (
    token_hash bytea PRIMARY KEY,
    api_key_id bigint NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

-- The console's charts: an organization's requests by the time they
-- finished, covering what the charts read (an index-only scan), so the
-- last hour reads only the last hour's entries however many finished rows
-- the table holds.
CREATE INDEX async_requests_finished_idx ON async_requests (organization_id, finished_at)
    INCLUDE (deployment_id, state, created_at) WHERE finished_at IS NOT NULL;

-- migrate:down
DROP INDEX async_requests_finished_idx;
DROP TABLE console_login_tokens;
DROP TABLE console_sessions;
