-- migrate:up

-- An API key's scope: invoke reaches the async API (submit, status, cancel,
-- queue status, result, redelivery); manage reaches the management API and
-- the console's actions too. Keys made before scopes existed keep full access.
ALTER TABLE api_keys
    ADD COLUMN scope text NOT NULL DEFAULT 'manage' CHECK (scope IN ('invoke', 'manage')),
    ADD COLUMN last_used_at timestamptz;

-- A paused deployment still accepts submits and its queue deadlines still
-- run, but no processor claims its requests until it is resumed.
ALTER TABLE deployments ADD COLUMN paused boolean NOT NULL DEFAULT false;

-- One row per model attempt, written in the same statement batch as the
-- outcome it records; deleted with its request. Back-pressure answers
-- (not attempts) are recorded too, with counted = false, so an operator
-- sees why a request waited.
CREATE TABLE request_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  uuid NOT NULL REFERENCES async_requests (id) ON DELETE CASCADE,
    number      integer NOT NULL,
    counted     boolean NOT NULL DEFAULT true,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    http_status integer,
    code        text,
    message     text,
    processor   text NOT NULL
);
CREATE INDEX request_attempts_request_id_idx ON request_attempts (request_id, id);

-- One row per webhook delivery attempt, written with the outcome it
-- records; deleted with its request.
CREATE TABLE webhook_delivery_attempts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id  uuid NOT NULL REFERENCES async_requests (id) ON DELETE CASCADE,
    delivery_id bigint NOT NULL,
    sent_at     timestamptz NOT NULL,
    duration_ms integer NOT NULL,
    http_status integer,
    outcome     text NOT NULL CHECK (outcome IN ('SUCCEEDED', 'RETRY', 'FAILED')),
    error       text
);
CREATE INDEX webhook_delivery_attempts_request_id_idx ON webhook_delivery_attempts (request_id, id);

-- migrate:down
DROP TABLE webhook_delivery_attempts;
DROP TABLE request_attempts;
ALTER TABLE deployments DROP COLUMN paused;
ALTER TABLE api_keys DROP COLUMN last_used_at, DROP COLUMN scope;
