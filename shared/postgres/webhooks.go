package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// DeliveryState is where a row of the webhook outbox (webhook_deliveries)
// is. Enforced by a CHECK constraint on webhook_deliveries.state.
type DeliveryState string

const (
	// DeliveryPending: inserted by whoever makes a webhook due (the
	// processor at a request's final state, the API on redelivery), and set
	// again by a deliverer after a retryable failure, when a lease runs out
	// or when a deliverer hands the row back on shutdown. Left by a claim.
	DeliveryPending DeliveryState = "PENDING"
	// DeliveryInProgress: set by a deliverer's claim; the deliverer holds a
	// lease on the row. Left when the attempt's outcome is recorded or the
	// lease is reclaimed.
	DeliveryInProgress DeliveryState = "IN_PROGRESS"
	// DeliverySucceeded: set by a deliverer on a 2xx. Final.
	DeliverySucceeded DeliveryState = "SUCCEEDED"
	// DeliveryFailed: set by a deliverer when the receiver refused the
	// webhook or the retry schedule ran out. Final.
	DeliveryFailed DeliveryState = "FAILED"
)

// WebhookDelivery is a claimed outbox row with what the webhook's payload
// and signatures need from its request.
type WebhookDelivery struct {
	// ID is the outbox row; a request has one per (re)delivery.
	ID int64
	// Attempt is the attempt being made, 1 for the first: the claim counts
	// it before the webhook is sent, so an attempt whose deliverer died
	// counts too.
	Attempt         int
	RequestID       requestid.ID
	OrganizationID  int64
	ModelID         string
	IsChain         bool
	DeploymentID    string
	State           RequestState
	WebhookEndpoint string // empty when the request has none
	Output          []byte // JSON; nil when none
	Errors          []AttemptError
}

// WebhookDeliveryClaimParams says how much a deliverer claims and for how
// long.
type WebhookDeliveryClaimParams struct {
	// Owner identifies the deliverer; only it may record the outcome.
	Owner string
	// Limit is the most rows claimed.
	Limit int
	// Lease is how long the claim holds without an outcome before any
	// deliverer may reclaim the row. It must outlast one attempt.
	Lease time.Duration
}

// WebhookClaim is what one claim took, and when the next delivery is due.
type WebhookClaim struct {
	Deliveries []WebhookDelivery
	// NextDue is how long after the claim the earliest delivery still
	// PENDING is due, by the database's clock (zero or less when one is due
	// already: one that came due during the claim, or that a concurrent
	// claim holds locked); Pending is false when none is left.
	NextDue time.Duration
	Pending bool
}

// WebhookDeliveryClaimBatch claims due PENDING deliveries, oldest due first,
// in one statement: each becomes IN_PROGRESS under a lease with its attempt
// counted. Rows locked by a concurrent claim are skipped, so deliverers
// never claim the same row. The next due time is read in the same round
// trip, after the claim, so a deliverer knows how long it may sleep.
func (db *DB) WebhookDeliveryClaimBatch(ctx context.Context, p WebhookDeliveryClaimParams) (WebhookClaim, error) {
	if p.Limit < 1 {
		return WebhookClaim{}, nil
	}
	b := &pgx.Batch{}
	b.Queue(`
		UPDATE webhook_deliveries d
		SET state = 'IN_PROGRESS', attempts = d.attempts + 1, lease_owner = $1,
			lease_expires_at = now() + make_interval(secs => $3)
		FROM async_requests r
		WHERE r.id = d.request_id AND d.id IN (
			SELECT id FROM webhook_deliveries
			WHERE state = 'PENDING' AND due_at <= now()
			ORDER BY due_at, id
			LIMIT $2
			FOR UPDATE SKIP LOCKED
		)
		RETURNING d.id, d.attempts, r.id, r.organization_id, r.model_id, r.is_chain, r.deployment_id,
			r.state, coalesce(r.webhook_endpoint, ''), r.output, r.errors`,
		p.Owner, p.Limit, p.Lease.Seconds())
	b.Queue(webhookNextDueSQL)
	br := db.Pool.SendBatch(ctx, b)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return WebhookClaim{}, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookDelivery, error) {
		var d WebhookDelivery
		var errs []byte
		if err := row.Scan(&d.ID, &d.Attempt, &d.RequestID, &d.OrganizationID, &d.ModelID, &d.IsChain,
			&d.DeploymentID, &d.State, &d.WebhookEndpoint, &d.Output, &errs); err != nil {
			return WebhookDelivery{}, err
		}
		if len(errs) > 0 {
			if err := json.Unmarshal(errs, &d.Errors); err != nil {
				return WebhookDelivery{}, err
			}
		}
		if d.Errors == nil {
			d.Errors = []AttemptError{}
		}
		return d, nil
	})
	if err != nil {
		return WebhookClaim{}, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	c := WebhookClaim{Deliveries: batch}
	var secs *float64
	if err := br.QueryRow().Scan(&secs); err != nil {
		return WebhookClaim{}, fmt.Errorf("claim webhook deliveries: next due time: %w", err)
	}
	if err := br.Close(); err != nil {
		return WebhookClaim{}, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	if secs != nil {
		c.NextDue, c.Pending = time.Duration(*secs*float64(time.Second)), true
	}
	return c, nil
}

// webhookNextDueSQL reads how long until the earliest PENDING delivery is
// due, in seconds; NULL when none is pending.
const webhookNextDueSQL = `
	SELECT extract(epoch FROM min(due_at) - now())::float8
	FROM webhook_deliveries WHERE state = 'PENDING'`

// reclaimBatchLimit bounds the rows one WebhookDeliveryReclaimExpired call
// moves, so that a backlog after an outage is worked off in short statements.
const reclaimBatchLimit = 1000

// WebhookDeliveryReclaimExpired puts deliveries whose lease ran out (their
// deliverer died or lost the database) back to PENDING, due now. The attempt
// stays counted: the webhook may well have been sent, and it will be sent
// again with the same webhook-id (delivery is at least once). It returns how
// many rows it reclaimed.
func (db *DB) WebhookDeliveryReclaimExpired(ctx context.Context) (int, error) {
	tag, err := db.Pool.Exec(ctx, `
		UPDATE webhook_deliveries
		SET state = 'PENDING', due_at = now(), lease_owner = NULL, lease_expires_at = NULL,
			last_error = 'deliverer lost its lease'
		WHERE id IN (
			SELECT id FROM webhook_deliveries
			WHERE state = 'IN_PROGRESS' AND lease_expires_at < now()
			LIMIT $1
			FOR UPDATE SKIP LOCKED
		)`, reclaimBatchLimit)
	if err != nil {
		return 0, fmt.Errorf("reclaim webhook deliveries: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// DeliveryOutcome is what a delivery attempt came to, as recorded in
// webhook_delivery_attempts.outcome (a CHECK constraint holds it to these).
type DeliveryOutcome string

const (
	// OutcomeSucceeded: the receiver answered 2xx.
	OutcomeSucceeded DeliveryOutcome = "SUCCEEDED"
	// OutcomeRetry: the attempt failed and the delivery is due again later.
	OutcomeRetry DeliveryOutcome = "RETRY"
	// OutcomeFailed: the delivery will not be tried again.
	OutcomeFailed DeliveryOutcome = "FAILED"
)

// WebhookOutcome is one delivery attempt's outcome for
// WebhookDeliveryRecordBatch.
type WebhookOutcome struct {
	// ID is the claimed outbox row.
	ID      int64
	Outcome DeliveryOutcome
	// Delay is how long from the write until a retry is due.
	Delay time.Duration
	// Error says why the attempt did not succeed, for operators; empty on
	// success.
	Error string
	// SentAt is when the webhook was sent (or, when nothing could be sent,
	// when that was found); Duration is how long the HTTP exchange took.
	SentAt   time.Time
	Duration time.Duration
	// HTTPStatus is the receiver's status; 0 when none arrived.
	HTTPStatus int
}

// WebhookDeliveryRecordBatch records the outcomes of delivery attempts held
// by owner in one statement, and with each one its row of delivery history
// (webhook_delivery_attempts). Per outcome:
//
//   - SUCCEEDED: the delivery and the request's webhook_status become
//     SUCCEEDED, a WEBHOOK_FAILED request whose redelivery got through is
//     SUCCEEDED again, and the output is kept for OutputRetention from now.
//   - RETRY: the delivery is PENDING again, due after Delay.
//   - FAILED: the delivery becomes FAILED; unless another delivery of the
//     same request is still pending (a redelivery), the request's
//     webhook_status becomes FAILED, a SUCCEEDED request becomes
//     WEBHOOK_FAILED (a final state: status_at and the status retention
//     restart), and the output is kept for OutputRetention from now.
//
// An outcome whose row owner no longer holds (its lease ran out and another
// deliverer took it) changes nothing and leaves no history: the webhook is
// sent again by the new owner. It returns the ids of the outcomes recorded.
func (db *DB) WebhookDeliveryRecordBatch(ctx context.Context, owner string, outcomes []WebhookOutcome) ([]int64, error) {
	if len(outcomes) == 0 {
		return nil, nil
	}
	ids := make([]int64, len(outcomes))
	kinds := make([]string, len(outcomes))
	delays := make([]float64, len(outcomes))
	errs := make([]*string, len(outcomes))
	sent := make([]time.Time, len(outcomes))
	durations := make([]int32, len(outcomes))
	statuses := make([]*int32, len(outcomes))
	for i, o := range outcomes {
		ids[i], kinds[i], delays[i], sent[i] = o.ID, string(o.Outcome), o.Delay.Seconds(), o.SentAt
		durations[i] = int32(min(o.Duration.Milliseconds(), 1<<31-1))
		if o.Error != "" {
			e := storableText(o.Error)
			errs[i] = &e
		}
		if o.HTTPStatus != 0 {
			s := int32(o.HTTPStatus)
			statuses[i] = &s
		}
	}
	rows, err := db.Pool.Query(ctx, `
		WITH o AS (
			SELECT * FROM unnest($2::bigint[], $3::text[], $4::float8[], $5::text[], $6::timestamptz[], $7::int[], $8::int[])
				AS o(id, outcome, delay, error, sent_at, duration_ms, http_status)
		), d AS (
			UPDATE webhook_deliveries d
			SET state = CASE WHEN o.outcome = 'RETRY' THEN 'PENDING' ELSE o.outcome END,
				due_at = CASE WHEN o.outcome = 'RETRY' THEN now() + make_interval(secs => o.delay) ELSE d.due_at END,
				finished_at = CASE WHEN o.outcome = 'RETRY' THEN d.finished_at ELSE now() END,
				lease_owner = NULL, lease_expires_at = NULL, last_error = o.error
			FROM o
			WHERE d.id = o.id AND d.lease_owner = $1 AND d.state = 'IN_PROGRESS'
			RETURNING d.id, d.request_id, o.outcome
		), history AS (
			INSERT INTO webhook_delivery_attempts (request_id, delivery_id, sent_at, duration_ms, http_status, outcome, error)
			SELECT d.request_id, d.id, o.sent_at, o.duration_ms, o.http_status, o.outcome, o.error
			FROM d JOIN o ON o.id = d.id
		), settled AS (
			SELECT request_id, bool_or(outcome = 'SUCCEEDED') AS succeeded
			FROM d WHERE outcome <> 'RETRY'
			GROUP BY request_id
		), r AS (
			UPDATE async_requests r
			SET webhook_state = CASE WHEN s.succeeded THEN 'SUCCEEDED' ELSE 'FAILED' END,
				state = CASE
					WHEN s.succeeded AND r.state = 'WEBHOOK_FAILED' THEN 'SUCCEEDED'
					WHEN NOT s.succeeded AND r.state = 'SUCCEEDED' THEN 'WEBHOOK_FAILED'
					ELSE r.state END,
				status_at = CASE
					WHEN s.succeeded AND r.state = 'WEBHOOK_FAILED' THEN now()
					WHEN NOT s.succeeded AND r.state = 'SUCCEEDED' THEN now()
					ELSE r.status_at END,
				purge_at = CASE WHEN NOT s.succeeded AND r.state = 'SUCCEEDED'
					THEN greatest(r.purge_at, now() + make_interval(secs => $10)) ELSE r.purge_at END,
				output_expires_at = now() + make_interval(secs => $9)
			FROM settled s
			WHERE r.id = s.request_id AND (s.succeeded OR NOT EXISTS (
				SELECT 1 FROM webhook_deliveries o
				WHERE o.request_id = s.request_id AND o.state IN ('PENDING', 'IN_PROGRESS')
					AND o.id NOT IN (SELECT id FROM d WHERE outcome <> 'RETRY')
			))
		)
		SELECT id FROM d`,
		owner, ids, kinds, delays, errs, sent, durations, statuses,
		cmp.Or(db.OutputRetention, OutputRetentionDefault).Seconds(),
		cmp.Or(db.StatusRetention, StatusRetentionDefault).Seconds())
	if err != nil {
		return nil, fmt.Errorf("record webhook outcomes: %w", err)
	}
	recorded, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("record webhook outcomes: %w", err)
	}
	return recorded, nil
}

// WebhookDeliveryRelease hands claimed deliveries back on shutdown: PENDING,
// due now, the attempt not counted, and deliverers woken to pick them up
// once that has committed (see Notify).
// Rows whose lease owner no longer holds are left alone. It returns how many
// rows it released.
func (db *DB) WebhookDeliveryRelease(ctx context.Context, owner string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	tag, err := db.Pool.Exec(ctx, `
		UPDATE webhook_deliveries
		SET state = 'PENDING', due_at = now(), attempts = greatest(attempts - 1, 0),
			lease_owner = NULL, lease_expires_at = NULL
		WHERE id = ANY($1) AND lease_owner = $2 AND state = 'IN_PROGRESS'`, ids, owner)
	if err != nil {
		return 0, fmt.Errorf("release webhook deliveries: %w", err)
	}
	n := int(tag.RowsAffected())
	if n > 0 {
		_ = db.Notify(ctx, Notice{Deliverers: true}) // a lost wake-up costs a poll
	}
	return n, nil
}
