-- migrate:up

-- When a FAILED or EXPIRED request was last sent back to the queue by the
-- management API; NULL until then. A retry gives the request a fresh queue
-- deadline of its original length, measured from here.
ALTER TABLE async_requests ADD COLUMN retried_at timestamptz;

-- The management API lists an organization's requests newest first with a
-- keyset cursor on (created_at, id): each filter it serves walks one of
-- these in order and stops after a page, however many finished rows lie
-- behind it.
CREATE INDEX async_requests_org_created_idx ON async_requests (organization_id, created_at, id);
CREATE INDEX async_requests_org_state_created_idx ON async_requests (organization_id, state, created_at, id);
CREATE INDEX async_requests_deployment_created_idx ON async_requests (deployment_id, created_at, id);

-- migrate:down
DROP INDEX async_requests_deployment_created_idx;
DROP INDEX async_requests_org_state_created_idx;
DROP INDEX async_requests_org_created_idx;
ALTER TABLE async_requests DROP COLUMN retried_at;
