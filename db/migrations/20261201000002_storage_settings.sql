-- migrate:up

-- Storage settings of the two queue tables. Every request row is inserted,
-- updated a few times (claim, lease renewals, outcome, retention) and
-- deleted within a day, so the tables and their partial indexes fill with
-- dead row versions at the rate of the load. Left to the defaults,
-- autovacuum waits for 20% of the table to be dead: after a burst of 100k
-- requests the hot partial indexes (queued, in progress) hold many times
-- their live entries, and every claim and queue-status read steps over them.
--
-- fillfactor 80 leaves a fifth of each new page free, so an updated version
-- usually lands on the page of the old one and page pruning can reclaim it
-- without a vacuum. Autovacuum runs after a fixed number of dead versions
-- (not a fraction of the table), without cost-based sleeps, so it keeps
-- pace with the churn however large the finished rows make the table; and
-- analyze keeps the planner's picture of the queue current.
ALTER TABLE async_requests SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);

ALTER TABLE webhook_deliveries SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 5000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0
);

-- migrate:down
ALTER TABLE webhook_deliveries RESET (
    fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
    autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay
);
ALTER TABLE async_requests RESET (
    fillfactor, autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
    autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold,
    autovacuum_analyze_scale_factor, autovacuum_analyze_threshold, autovacuum_vacuum_cost_delay
);
