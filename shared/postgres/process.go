package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// This file holds the processor's queries: claiming due requests, renewing
// leases, recording attempt outcomes, and the sweeps (lost leases, queue
// deadlines, retention) that keep the table moving when nobody claims.

// claimLockKey is the advisory lock that serializes claims across all
// processors, so that per-deployment max_concurrency holds: a claim counts a
// deployment's IN_PROGRESS rows and takes at most the free slots, and no
// other claim can add rows between the count and the commit.
const claimLockKey int64 = 0x61737963_6c61696d // "asycliam"

// claimPlanSettings are the claim transaction's planner settings (local to
// it). The planner's statistics of async_requests are stale right after a
// burst: taken when the queue was empty, they say no row is QUEUED or
// IN_PROGRESS, so every partial index on state looks equally empty and
// the planner may scan async_requests_active_org_idx or
// async_requests_queued_deadline_idx (every active row, of every
// deployment) and sort, instead of reading the first rows of
// async_requests_queued_idx in order. Ruling out sorts leaves the
// ordered indexes as the only plan for the per-deployment probes, and
// ruling out sequential scans keeps the lookups by id on the primary key
// (see byKeySettings). JIT is off because the penalty that rules sorting
// out (the cross-deployment sort can't be avoided) would otherwise make
// every claim look expensive enough to compile.
const claimPlanSettings = `set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true),
	set_config('jit', 'off', true)`

// byKeySettings are the planner settings (local to the transaction) of the
// statements that find a batch of requests by id. Their cost must follow
// the batch: as long as the table is small next to the batch, or its
// statistics predate the running requests, a sequential scan, reading
// every finished row, can look as cheap as the lookups. A plan with a
// ruled-out node costs enough to be JIT-compiled, which would take longer
// than the statement, so JIT is off too.
const byKeySettings = `SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)`

// batchSender sends batches: a pool (each batch its own transaction) or a
// transaction.
type batchSender interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// queryByKey runs sql, which finds its rows by primary key, under
// byKeySettings, and collects its rows.
func queryByKey[T any](ctx context.Context, q batchSender, fn pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	return queryWith(ctx, q, byKeySettings, fn, sql, args...)
}

// queryWith runs settings (a statement of set_config calls, local to the
// transaction) and then sql in one batch, which is one transaction, and
// collects sql's rows.
func queryWith[T any](ctx context.Context, q batchSender, settings string, fn pgx.RowToFunc[T], sql string, args ...any) ([]T, error) {
	batch := &pgx.Batch{}
	batch.Queue(settings)
	batch.Queue(sql, args...)
	br := q.SendBatch(ctx, batch)
	got, err := func() ([]T, error) {
		if _, err := br.Exec(); err != nil {
			return nil, err
		}
		rows, err := br.Query()
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, fn)
	}()
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	return got, err
}

// ClaimedRequest is a request a processor holds the lease on, with what it
// needs to call the model.
type ClaimedRequest struct {
	ID           requestid.ID
	ModelID      string
	DeploymentID string
	IsChain      bool
	Priority     int
	// URL is the deployment's base URL; UpstreamCredential is its sealed
	// credential (DB.UpstreamCredentialOpen), empty when it has none.
	URL                string
	UpstreamCredential string
	Input              []byte
	// Attempt is this attempt's number, 1-based: the claim counted it.
	Attempt        int
	MaxAttempts    int
	InitialDelay   time.Duration
	MaxDelay       time.Duration
	DueAt          time.Time
	DeadlineAt     time.Time
	ClaimedAt      time.Time
	LeaseExpiresAt time.Time
}

// RequestClaimParams says who claims and how much.
type RequestClaimParams struct {
	// Owner names the processor; only it may record the outcome.
	Owner string
	// Limit caps the batch.
	Limit int
	// LeaseDuration is how long the claim is valid without renewal.
	LeaseDuration time.Duration
}

// RequestClaimBatch moves up to Limit due requests to IN_PROGRESS for Owner
// in one statement, counting the attempt, and returns them in claim order:
// priority, due time, id. A request is due when it is QUEUED, its due time
// has come, its queue deadline has not, and its deployment is not paused
// (a paused deployment's queue waits, its deadlines still running out: the
// expiry sweep is not held back). No deployment gets more
// IN_PROGRESS requests than its max_concurrency, whatever the number of
// processors: claims are serialized by an advisory lock held for the claim's
// short transaction. Rows locked by a concurrent cancel are skipped, and the
// state is checked again under the row lock, so a cancel and a claim of the
// same request never both win.
//
// Its cost follows the batch and the number of deployments, never the
// number of queued, running or finished rows, whatever the planner's
// statistics say: see claimPlanSettings.
func (db *DB) RequestClaimBatch(ctx context.Context, p RequestClaimParams) ([]ClaimedRequest, error) {
	if p.Limit < 1 {
		return nil, nil
	}
	// The lock and the claim go in one batch, which runs as one implicit
	// transaction: the lock is held until the claim commits, and the
	// claim's snapshot, taken after the lock, sees every earlier claim.
	// A claim lost in a database crash leaves its rows QUEUED, to be claimed
	// again, so it need not wait for its commit to be flushed.
	batch := &pgx.Batch{}
	batch.Queue(`SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true), `+claimPlanSettings,
		claimLockKey)
	// picked: per deployment, its first free-slot-many due requests in
	// the order of async_requests_queued_idx, its free slots counted in
	// the order of async_requests_in_progress_idx (up to max_concurrency:
	// beyond that none is free anyway), then the best Limit of all. With
	// sorting ruled out, those two indexes are the only way to produce
	// the rows in order, so every deployment is probed by index.
	// locked: the picked rows by primary key, skipping those a cancel
	// holds. The state is checked on the row as locked (its newest
	// version), and outside the lookup's WHERE, so that the planner
	// can't trade the primary key for a scan of a partial index on state.
	batch.Queue(`
		WITH picked AS (
			SELECT q.id FROM deployments d
			CROSS JOIN LATERAL (
				SELECT q.id, q.priority, q.due_at FROM async_requests q
				WHERE q.deployment_id = d.id AND q.state = 'QUEUED'
					AND q.due_at <= now() AND q.deadline_at > now()
				ORDER BY q.priority, q.due_at, q.id
				LIMIT least($2, greatest(0, d.max_concurrency - (
					SELECT count(*) FROM (
						SELECT FROM async_requests ip
						WHERE ip.deployment_id = d.id AND ip.state = 'IN_PROGRESS'
						ORDER BY ip.lease_expires_at
						LIMIT d.max_concurrency) running)))
			) q
			WHERE NOT d.paused
			ORDER BY q.priority, q.due_at, q.id
			LIMIT $2
		), locked AS (
			SELECT r.id, r.state FROM async_requests r
			WHERE r.id = ANY (ARRAY(SELECT id FROM picked))
			FOR UPDATE SKIP LOCKED
		)
		UPDATE async_requests r
		SET state = 'IN_PROGRESS', attempts = r.attempts + 1, lease_owner = $1,
			lease_expires_at = now() + make_interval(secs => $3), started_at = now(), status_at = now()
		FROM deployments d
		WHERE r.id = ANY (ARRAY(SELECT id FROM locked WHERE state = 'QUEUED')) AND d.id = r.deployment_id
		RETURNING r.id, r.model_id, r.deployment_id, r.is_chain, r.priority, d.url,
			coalesce(d.upstream_credential, ''), r.input, r.attempts, r.max_attempts,
			r.initial_delay_ms, r.max_delay_ms, r.due_at, r.deadline_at, now(), r.lease_expires_at`,
		p.Owner, p.Limit, p.LeaseDuration.Seconds())
	br := db.Pool.SendBatch(ctx, batch)
	claimed, err := collectClaimed(br)
	if closeErr := br.Close(); err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, fmt.Errorf("claim requests: %w", err)
	}
	slices.SortFunc(claimed, func(a, b ClaimedRequest) int {
		switch {
		case a.Priority != b.Priority:
			return a.Priority - b.Priority
		case !a.DueAt.Equal(b.DueAt):
			return a.DueAt.Compare(b.DueAt)
		}
		return slices.Compare(a.ID[:], b.ID[:])
	})
	return claimed, nil
}

func collectClaimed(br pgx.BatchResults) ([]ClaimedRequest, error) {
	if _, err := br.Exec(); err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ClaimedRequest, error) {
		var c ClaimedRequest
		var initialMS, maxMS int
		err := row.Scan(&c.ID, &c.ModelID, &c.DeploymentID, &c.IsChain, &c.Priority, &c.URL,
			&c.UpstreamCredential, &c.Input, &c.Attempt, &c.MaxAttempts, &initialMS, &maxMS,
			&c.DueAt, &c.DeadlineAt, &c.ClaimedAt, &c.LeaseExpiresAt)
		c.InitialDelay = time.Duration(initialMS) * time.Millisecond
		c.MaxDelay = time.Duration(maxMS) * time.Millisecond
		return c, err
	})
}

// RequestLeaseRenew extends the leases Owner holds on ids by duration and
// returns the ids it still holds; the others were reclaimed or finished, and
// their outcomes will not be recorded. Holding the lease means being
// IN_PROGRESS (see completeAttempts); the rows are found by primary key
// (byKeySettings).
func (db *DB) RequestLeaseRenew(ctx context.Context, owner string, ids []requestid.ID, duration time.Duration) ([]requestid.ID, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	held, err := queryByKey(ctx, db.Pool, pgx.RowTo[requestid.ID], `
		UPDATE async_requests SET lease_expires_at = now() + make_interval(secs => $3)
		WHERE id = ANY($1) AND lease_owner = $2
		RETURNING id`, ids, owner, duration.Seconds())
	if err != nil {
		return nil, fmt.Errorf("renew leases: %w", err)
	}
	return held, nil
}

// AttemptOutcome is what became of one claimed request.
type AttemptOutcome struct {
	ID requestid.ID
	// State is QUEUED (a retry, a back-pressure wait or a hand-back),
	// SUCCEEDED or FAILED.
	State RequestState
	// Output is the model's answer, as JSON; only for SUCCEEDED.
	Output []byte
	// Error, when set, is appended to the request's errors.
	Error *AttemptError
	// Delay is how long a QUEUED request waits before it is due again.
	Delay time.Duration
	// Uncount takes the attempt back: the model was not ready
	// (back-pressure) or the processor stopped before it finished
	// (hand-back). An uncounted outcome whose error has the same code as the
	// last recorded error is not appended again, so a long back-pressure wait
	// leaves one entry, not one per poll.
	Uncount bool
	// StartedAt and FinishedAt bound the model call, for the attempt's
	// history row; zero means the claim's start and the write's time.
	StartedAt, FinishedAt time.Time
	// HTTPStatus is the model's answer; 0 when there was none.
	HTTPStatus int
}

// RecordedOutcome is an outcome that was recorded.
type RecordedOutcome struct {
	ID           requestid.ID
	State        RequestState
	WebhookState WebhookState
	// DueNow: the request is QUEUED and due at once.
	DueNow bool
}

// RequestCompleteBatch records the outcomes of attempts Owner holds the
// lease on, in one statement, and returns those it recorded: an outcome for
// a request whose lease was reclaimed meanwhile is ignored, so a processor
// that lost its lease can't overwrite the newer attempt. Final states
// (SUCCEEDED, FAILED) set the retention times; SUCCEEDED drops the input,
// FAILED keeps it (so the request can be retried) until the output's
// retention ends (see RetentionPurge); and, for a
// request with a pending webhook, queue its delivery in the same statement.
// It sends no notification: send NoticeOf(recorded) with Notify once it
// returns.
func (db *DB) RequestCompleteBatch(ctx context.Context, owner string, outcomes []AttemptOutcome) ([]RecordedOutcome, error) {
	if len(outcomes) == 0 {
		return nil, nil
	}
	owners := make([]string, len(outcomes))
	for i := range owners {
		owners[i] = owner
	}
	recorded, err := db.completeAttempts(ctx, db.Pool, owners, outcomes)
	if err != nil {
		return nil, fmt.Errorf("record outcomes: %w", err)
	}
	return recorded, nil
}

// completeAttempts applies outcomes, each guarded by its expected lease
// owner, in one statement that also writes each model answer's
// request_attempts row (processor: the lease owner) and queues the
// webhooks. Its wake-ups are the caller's (NoticeOf, Notify), after the
// commit.
//
// A request has a lease owner exactly while it is IN_PROGRESS: the claim
// sets both, and every way out of IN_PROGRESS (this statement, for
// outcomes, hand-backs and reclaims alike) clears the owner. So matching
// the owner is matching the state, and the statement says nothing more
// about state: a constant state condition would let the planner, misled by
// statistics taken when nothing was running, scan a partial index on state
// (every running or queued row) instead of looking the batch up by primary
// key; byKeySettings rule out the sequential scan.
func (db *DB) completeAttempts(ctx context.Context, q batchSender, owners []string, outcomes []AttemptOutcome) ([]RecordedOutcome, error) {
	n := len(outcomes)
	ids := make([]requestid.ID, n)
	states := make([]string, n)
	outputs := make([][]byte, n)
	errs := make([]string, n)
	delays := make([]float64, n)
	uncount := make([]bool, n)
	started := make([]*time.Time, n)
	ended := make([]*time.Time, n)
	statuses := make([]int32, n)
	for i, o := range outcomes {
		ids[i], states[i], delays[i], uncount[i] = o.ID, string(o.State), o.Delay.Seconds(), o.Uncount
		statuses[i] = int32(o.HTTPStatus)
		if !o.StartedAt.IsZero() {
			started[i] = &o.StartedAt
		}
		if !o.FinishedAt.IsZero() {
			ended[i] = &o.FinishedAt
		}
		if o.State == StateSucceeded {
			outputs[i] = o.Output
		}
		if o.Error != nil {
			b, err := json.Marshal(AttemptError{Code: storableText(o.Error.Code), Message: storableText(o.Error.Message)})
			if err != nil {
				return nil, err
			}
			errs[i] = string(b)
		}
	}
	return queryByKey(ctx, q, scanRecorded, `
		WITH o AS (
			SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::float8[], $7::bool[],
				$10::timestamptz[], $11::timestamptz[], $12::int[])
				AS o(id, owner, state, output, error, delay_s, uncount, started_at, finished_at, http_status)
		), done AS (
			UPDATE async_requests r SET
				state = o.state,
				attempts = r.attempts - CASE WHEN o.uncount THEN 1 ELSE 0 END,
				errors = CASE
					WHEN o.error = '' THEN r.errors
					WHEN o.uncount AND r.errors -> -1 ->> 'code' = o.error::jsonb ->> 'code' THEN r.errors
					ELSE r.errors || jsonb_build_array(o.error::jsonb) END,
				due_at = CASE WHEN o.state = 'QUEUED' THEN now() + make_interval(secs => o.delay_s) ELSE r.due_at END,
				lease_owner = NULL, lease_expires_at = NULL, status_at = now(),
				output = o.output,
				input = CASE WHEN o.state IN ('QUEUED', 'FAILED') THEN r.input END,
				finished_at = CASE WHEN o.state <> 'QUEUED' THEN now() END,
				purge_at = CASE WHEN o.state <> 'QUEUED' THEN now() + make_interval(secs => $8) END,
				output_expires_at = CASE WHEN o.state <> 'QUEUED' AND r.webhook_state <> 'PENDING'
					THEN now() + make_interval(secs => $9) END
			FROM o
			WHERE r.id = ANY($1) AND r.id = o.id AND r.lease_owner = o.owner
			RETURNING r.id, r.state, r.webhook_state, r.due_at <= now() AS due,
				r.attempts + CASE WHEN o.uncount THEN 1 ELSE 0 END AS number, NOT o.uncount AS counted,
				coalesce(o.started_at, r.started_at, now()) AS attempt_started_at, o.finished_at AS attempt_finished_at,
				o.http_status, o.error, o.owner
		), history AS (
			-- One row per model answer: a hand-back (uncounted, no error)
			-- is no answer.
			INSERT INTO request_attempts (request_id, number, counted, started_at, finished_at, http_status, code, message, processor)
			SELECT id, number, counted, attempt_started_at, coalesce(attempt_finished_at, now()), nullif(http_status, 0),
				nullif(error, '')::jsonb ->> 'code', nullif(error, '')::jsonb ->> 'message', owner
			FROM done
			WHERE counted OR error <> ''
		), hooks AS (
			INSERT INTO webhook_deliveries (request_id, state, due_at)
			SELECT id, 'PENDING', now() FROM done WHERE state <> 'QUEUED' AND webhook_state = 'PENDING'
		)
		SELECT id, state, webhook_state, state = 'QUEUED' AND due FROM done`,
		ids, owners, states, outputs, errs, delays, uncount,
		db.statusRetention().Seconds(), db.outputRetention().Seconds(),
		started, ended, statuses)
}

func scanRecorded(row pgx.CollectableRow) (RecordedOutcome, error) {
	var r RecordedOutcome
	err := row.Scan(&r.ID, &r.State, &r.WebhookState, &r.DueNow)
	return r, err
}

// LostRequest is a request whose processor's lease ran out, as the reclaim
// sweep recorded it.
type LostRequest struct {
	RecordedOutcome
	ModelID      string
	DeploymentID string
	Attempt      int
}

// LostAttempt is what a RetryFunc knows of an attempt whose processor was
// lost.
type LostAttempt struct {
	Attempt, MaxAttempts   int
	InitialDelay, MaxDelay time.Duration
}

// RequestReclaimLostParams says how many lost requests to reclaim and
// what becomes of them.
type RequestReclaimLostParams struct {
	Limit int
	// Retry decides whether a lost attempt is retried, and after what
	// delay (the retry policy: shared/retry).
	Retry func(LostAttempt) (delay time.Duration, again bool)
}

// RequestReclaimLost records a failed attempt (INTERNAL_SERVER_ERROR,
// "processor lost") for up to Limit IN_PROGRESS requests whose lease ran
// out: the processor was killed or cut off. Each goes back to QUEUED after
// the delay Retry gives, or to FAILED when Retry says no. Any process
// may run it; rows another sweep is working on are skipped. Like
// RequestCompleteBatch it sends no notification (see NoticeOf).
func (db *DB) RequestReclaimLost(ctx context.Context, p RequestReclaimLostParams) ([]LostRequest, error) {
	limit := p.Limit
	var lost []LostRequest
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		// Each deployment's running requests are probed in the order of
		// async_requests_in_progress_idx (sorting ruled out, as in the
		// claim), so the sweep reads running rows only, never the queue,
		// whatever the planner's statistics say; the rows are then locked
		// by primary key and checked as locked.
		if _, err := tx.Exec(ctx, `SELECT `+claimPlanSettings); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			WITH lost AS (
				SELECT l.id FROM deployments d
				CROSS JOIN LATERAL (
					SELECT ip.id FROM async_requests ip
					WHERE ip.deployment_id = d.id AND ip.state = 'IN_PROGRESS' AND ip.lease_expires_at < now()
					ORDER BY ip.lease_expires_at
					LIMIT $1
				) l
				LIMIT $1
			), locked AS (
				SELECT r.id, r.state, r.lease_expires_at, r.lease_owner, r.model_id, r.deployment_id, r.attempts,
					r.max_attempts, r.initial_delay_ms, r.max_delay_ms
				FROM async_requests r
				WHERE r.id = ANY (ARRAY(SELECT id FROM lost))
				FOR UPDATE SKIP LOCKED
			)
			SELECT id, lease_owner, model_id, deployment_id, attempts, max_attempts, initial_delay_ms, max_delay_ms
			FROM locked WHERE state = 'IN_PROGRESS' AND lease_expires_at < now()`, limit)
		if err != nil {
			return err
		}
		var owners []string
		var outcomes []AttemptOutcome
		found := map[requestid.ID]LostRequest{}
		for rows.Next() {
			var l LostRequest
			var owner string
			var maxAttempts, initialMS, maxMS int
			if err := rows.Scan(&l.ID, &owner, &l.ModelID, &l.DeploymentID, &l.Attempt, &maxAttempts, &initialMS, &maxMS); err != nil {
				rows.Close()
				return err
			}
			o := AttemptOutcome{ID: l.ID, State: StateFailed, Error: &AttemptError{
				Code: CodeInternalServerError, Message: "processor lost: its lease ran out before the attempt finished",
			}}
			if delay, again := p.Retry(LostAttempt{Attempt: l.Attempt, MaxAttempts: maxAttempts,
				InitialDelay: time.Duration(initialMS) * time.Millisecond, MaxDelay: time.Duration(maxMS) * time.Millisecond}); again {
				o.State, o.Delay = StateQueued, delay
			}
			owners, outcomes = append(owners, owner), append(outcomes, o)
			found[l.ID] = l
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(outcomes) == 0 {
			return nil
		}
		recorded, err := db.completeAttempts(ctx, tx, owners, outcomes)
		if err != nil {
			return err
		}
		for _, r := range recorded {
			l := found[r.ID]
			l.RecordedOutcome = r
			lost = append(lost, l)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reclaim lost requests: %w", err)
	}
	return lost, nil
}

// ExpiredRequest is a request the expiry sweep moved to EXPIRED.
type ExpiredRequest struct {
	RecordedOutcome
	ModelID      string
	DeploymentID string
	Attempts     int
}

// RequestExpireBatch moves up to limit QUEUED requests whose queue deadline
// has passed to EXPIRED, keeping the errors seen so far, with the same side
// effects as FAILED: input kept for a retry until the output's retention
// ends, retention set, webhook queued. Like RequestCompleteBatch it sends
// no notification (see NoticeOf).
// It returns the expired requests. The rows are locked (and their state
// checked again on the newest version) by the inner query, then updated by
// primary key: a join the planner could turn inside out, with statistics
// that predate the queue, would probe the locking query once per queued row.
func (db *DB) RequestExpireBatch(ctx context.Context, limit int) ([]ExpiredRequest, error) {
	var expired []ExpiredRequest
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH done AS (
				UPDATE async_requests r SET
					state = 'EXPIRED', status_at = now(), finished_at = now(),
					purge_at = now() + make_interval(secs => $2),
					output_expires_at = CASE WHEN r.webhook_state <> 'PENDING' THEN now() + make_interval(secs => $3) END
				WHERE r.id = ANY (ARRAY(
					SELECT id FROM async_requests
					WHERE state = 'QUEUED' AND deadline_at <= now()
					ORDER BY deadline_at
					LIMIT $1
					FOR UPDATE SKIP LOCKED
				))
				RETURNING r.id, r.state, r.webhook_state, r.model_id, r.deployment_id, r.attempts
			), hooks AS (
				INSERT INTO webhook_deliveries (request_id, state, due_at)
				SELECT id, 'PENDING', now() FROM done WHERE webhook_state = 'PENDING'
			)
			SELECT id, state, webhook_state, model_id, deployment_id, attempts FROM done`,
			limit, db.statusRetention().Seconds(), db.outputRetention().Seconds())
		if err != nil {
			return err
		}
		expired, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (ExpiredRequest, error) {
			var e ExpiredRequest
			err := row.Scan(&e.ID, &e.State, &e.WebhookState, &e.ModelID, &e.DeploymentID, &e.Attempts)
			return e, err
		})
		if err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire requests: %w", err)
	}
	return expired, nil
}

// PurgeCounts says what a retention sweep removed.
type PurgeCounts struct {
	// Requests is the number of request rows deleted (their webhook
	// deliveries go with them).
	Requests int64
	// Outputs is the number of outputs cleared.
	Outputs int64
	// IdempotencyKeys is the number of expired idempotency keys deleted.
	IdempotencyKeys int64
}

// RetentionPurge deletes up to limit request rows past their purge time, clears
// up to limit outputs past their retention (and the inputs kept with them
// for a retry of a FAILED or EXPIRED request), and deletes up to limit
// idempotency keys older than IdempotencyWindow, oldest first. The order
// also keeps the planner on the retention indexes: without it, statistics
// that predate the finished rows can make a sequential scan of the whole
// table look cheaper.
func (db *DB) RetentionPurge(ctx context.Context, limit int) (PurgeCounts, error) {
	var c PurgeCounts
	tag, err := db.Pool.Exec(ctx, `
		DELETE FROM async_requests WHERE id IN (
			SELECT id FROM async_requests WHERE purge_at < now() ORDER BY purge_at LIMIT $1)`, limit)
	if err != nil {
		return c, fmt.Errorf("purge requests: %w", err)
	}
	c.Requests = tag.RowsAffected()
	tag, err = db.Pool.Exec(ctx, `
		UPDATE async_requests SET output = NULL, input = NULL, output_expires_at = NULL WHERE id IN (
			SELECT id FROM async_requests WHERE output_expires_at < now() ORDER BY output_expires_at LIMIT $1)`, limit)
	if err != nil {
		return c, fmt.Errorf("purge outputs: %w", err)
	}
	c.Outputs = tag.RowsAffected()
	tag, err = db.Pool.Exec(ctx, `
		DELETE FROM idempotency_keys WHERE (organization_id, key) IN (
			SELECT organization_id, key FROM idempotency_keys
			WHERE created_at < now() - make_interval(secs => $2) ORDER BY created_at LIMIT $1)`, limit, IdempotencyWindow.Seconds())
	if err != nil {
		return c, fmt.Errorf("purge idempotency keys: %w", err)
	}
	c.IdempotencyKeys = tag.RowsAffected()
	return c, nil
}

// QueueDepth is the number of requests of one deployment in one state.
type QueueDepth struct {
	DeploymentID string
	State        RequestState
	Count        int64
}

// QueueDepthList counts QUEUED and IN_PROGRESS requests per deployment
// (deployments with none are left out). Like DeploymentQueueCounts, each
// deployment's count walks its part of the state's partial index, so the
// cost follows the queue, never the finished rows, whatever the planner's
// statistics say.
func (db *DB) QueueDepthList(ctx context.Context) ([]QueueDepth, error) {
	depths, err := queryWith(ctx, db.Pool, `SELECT `+claimPlanSettings, func(row pgx.CollectableRow) (QueueDepth, error) {
		var d QueueDepth
		err := row.Scan(&d.DeploymentID, &d.State, &d.Count)
		return d, err
	}, `
		SELECT d.id, 'QUEUED', q.n FROM deployments d
		CROSS JOIN LATERAL (SELECT count(*) AS n FROM (
			SELECT FROM async_requests r WHERE r.deployment_id = d.id AND r.state = 'QUEUED'
			ORDER BY r.priority, r.due_at, r.id) x) q
		WHERE q.n > 0
		UNION ALL
		SELECT d.id, 'IN_PROGRESS', q.n FROM deployments d
		CROSS JOIN LATERAL (SELECT count(*) AS n FROM (
			SELECT FROM async_requests r WHERE r.deployment_id = d.id AND r.state = 'IN_PROGRESS'
			ORDER BY r.lease_expires_at) x) q
		WHERE q.n > 0`)
	if err != nil {
		return nil, fmt.Errorf("count queue depth: %w", err)
	}
	return depths, nil
}

// statusRetention and outputRetention apply the defaults to a DB built by
// hand (tests, tools) rather than by Open.
func (db *DB) statusRetention() time.Duration {
	if db.StatusRetention > 0 {
		return db.StatusRetention
	}
	return StatusRetentionDefault
}

func (db *DB) outputRetention() time.Duration {
	if db.OutputRetention > 0 {
		return db.OutputRetention
	}
	return OutputRetentionDefault
}
