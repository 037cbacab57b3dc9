-- migrate:up

-- An organization owns API keys, models, webhook secrets and requests. Every
-- read and write through the API is scoped to one.
CREATE TABLE organizations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (name <> ''),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored only as a SHA-256 hash. lookup_id is the first 16 hex
-- characters of that hash: enough to find the row, useless to an attacker.
-- prefix is the first characters of the key, shown to operators.
CREATE TABLE api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    lookup_id       text NOT NULL UNIQUE,
    key_hash        bytea NOT NULL,
    prefix          text NOT NULL,
    name            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz
);

-- A model is either a model (called at predict) or a chain (called at
-- run_remote). Its id appears in URLs (model-{id}.host or /models/{id}).
CREATE TABLE models (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('model', 'chain')),
    name            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A deployment is one running version of a model: a base URL that the
-- processor POSTs to (url + /predict, or url + /run_remote for chains), at
-- most max_concurrency requests at a time.
CREATE TABLE deployments (
    id                  text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    model_id            text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    url                 text NOT NULL,
    max_concurrency     integer NOT NULL CHECK (max_concurrency BETWEEN 1 AND 100000),
    upstream_credential text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deployments_model_id_idx ON deployments (model_id);

-- An environment (production, development, or any name) points a model at
-- one deployment. Submitting to an environment resolves it at submit time.
CREATE TABLE environments (
    model_id      text NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    deployment_id text NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    PRIMARY KEY (model_id, name)
);

-- Webhook signing secrets. A secret with no expiry is current; rotation gives
-- the old ones an expiry 24 h ahead, during which they keep signing.
CREATE TABLE webhook_secrets (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    secret          text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz
);
CREATE INDEX webhook_secrets_organization_id_idx ON webhook_secrets (organization_id);

-- The hot table. Hot-path queries only touch the partial indexes on QUEUED
-- and IN_PROGRESS rows, so finished rows never slow the queue down.
CREATE TABLE async_requests (
    id               uuid PRIMARY KEY,
    organization_id  bigint NOT NULL,
    model_id         text NOT NULL,
    is_chain         boolean NOT NULL,
    deployment_id    text NOT NULL,
    state            text NOT NULL CHECK (state IN
                         ('QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'EXPIRED', 'CANCELED', 'WEBHOOK_FAILED')),
    webhook_state    text NOT NULL CHECK (webhook_state IN
                         ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELED', 'NO_WEBHOOK_PROVIDED')),
    webhook_endpoint text,
    priority         smallint NOT NULL CHECK (priority BETWEEN 0 AND 2),
    due_at           timestamptz NOT NULL,
    deadline_at      timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL CHECK (max_attempts BETWEEN 1 AND 10),
    initial_delay_ms integer NOT NULL CHECK (initial_delay_ms BETWEEN 0 AND 10000),
    max_delay_ms     integer NOT NULL CHECK (max_delay_ms BETWEEN 0 AND 60000),
    input            bytea,
    output           bytea,
    errors           jsonb NOT NULL DEFAULT '[]',
    lease_owner      text,
    lease_expires_at timestamptz,
    created_at       timestamptz NOT NULL,
    status_at        timestamptz NOT NULL,
    started_at       timestamptz,
    finished_at      timestamptz,
    output_expires_at timestamptz,
    purge_at         timestamptz
);

-- Claiming: ready requests per deployment in priority, due-time, id order.
CREATE INDEX async_requests_queued_idx ON async_requests (deployment_id, priority, due_at, id)
    WHERE state = 'QUEUED';
-- Expiry sweep: queued requests by deadline.
CREATE INDEX async_requests_queued_deadline_idx ON async_requests (deadline_at)
    WHERE state = 'QUEUED';
-- Concurrency counts and lease reclaim: running requests.
CREATE INDEX async_requests_in_progress_idx ON async_requests (deployment_id, lease_expires_at)
    WHERE state = 'IN_PROGRESS';
-- Active-request cap: queued and running requests per organization.
CREATE INDEX async_requests_active_org_idx ON async_requests (organization_id)
    WHERE state IN ('QUEUED', 'IN_PROGRESS');
-- Retention sweeps.
CREATE INDEX async_requests_purge_at_idx ON async_requests (purge_at) WHERE purge_at IS NOT NULL;
CREATE INDEX async_requests_output_expires_at_idx ON async_requests (output_expires_at)
    WHERE output_expires_at IS NOT NULL;

-- Idempotency keys, per organization, honoured for 24 h.
CREATE TABLE idempotency_keys (
    organization_id bigint NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    key             text NOT NULL,
    body_hash       bytea NOT NULL,
    request_id      uuid NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);

-- The webhook outbox. A row becomes due in the same transaction that moves
-- its request to a final state, and on each redelivery.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    request_id       uuid NOT NULL REFERENCES async_requests (id) ON DELETE CASCADE,
    state            text NOT NULL CHECK (state IN ('PENDING', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED')),
    attempts         integer NOT NULL DEFAULT 0,
    due_at           timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (due_at, id) WHERE state = 'PENDING';
CREATE INDEX webhook_deliveries_in_progress_idx ON webhook_deliveries (lease_expires_at)
    WHERE state = 'IN_PROGRESS';
CREATE INDEX webhook_deliveries_request_id_idx ON webhook_deliveries (request_id);

-- migrate:down
DROP TABLE webhook_deliveries;
DROP TABLE idempotency_keys;
DROP TABLE async_requests;
DROP TABLE webhook_secrets;
DROP TABLE environments;
DROP TABLE deployments;
DROP TABLE models;
DROP TABLE api_keys;
DROP TABLE organizations;
