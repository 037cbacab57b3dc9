-- migrate:up

-- When a FAILED or EXPIRED request was last sent back to the queue by the
-- management API; NULL until then. A retry gives the request a fresh queue
-- deadline of its original length, measured from here.
ALTER TABLE async_requests ADD COLUMN retried_at timestamptz;

-- The management API lists an organization's requests newest first with a
-- keyset cursor on (created_at, id), walking the first index in order and
-- stopping after a page, however many finished rows lie behind it. The
-- states a list asks for that are rare among a million finished rows get
-- the second, partial index, which only their final row versions enter:
-- every index here costs each submit, claim and completion an entry, so
-- there are no more of them (a deployment filter walks the first).
CREATE INDEX async_requests_org_created_idx ON async_requests (organization_id, created_at, id);
CREATE INDEX async_requests_org_unsucceeded_idx ON async_requests (organization_id, state, created_at, id) WHERE state IN ('FAILED', 'EXPIRED', 'CANCELED', 'WEBHOOK_FAILED');

-- migrate:down
DROP INDEX async_requests_org_unsucceeded_idx;
DROP INDEX async_requests_org_created_idx;
ALTER TABLE async_requests DROP COLUMN retried_at;
