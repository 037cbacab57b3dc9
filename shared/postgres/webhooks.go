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
	// FinishedAt is when the request reached its final state; it is the
	// payload's "time", so every delivery of a request is the same body.
	FinishedAt time.Time
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

// WebhookDeliveryClaimBatch claims due PENDING deliveries, oldest due first,
// in one statement: each becomes IN_PROGRESS under a lease with its attempt
// counted. Rows locked by a concurrent claim are skipped, so deliverers
// never claim the same row.
func (db *DB) WebhookDeliveryClaimBatch(ctx context.Context, p WebhookDeliveryClaimParams) ([]WebhookDelivery, error) {
	if p.Limit < 1 {
		return nil, nil
	}
	rows, err := db.Pool.Query(ctx, `
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
			r.state, coalesce(r.webhook_endpoint, ''), r.output, r.errors, coalesce(r.finished_at, r.status_at)`,
		p.Owner, p.Limit, p.Lease.Seconds())
	if err != nil {
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	batch, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookDelivery, error) {
		var d WebhookDelivery
		var errs []byte
		if err := row.Scan(&d.ID, &d.Attempt, &d.RequestID, &d.OrganizationID, &d.ModelID, &d.IsChain,
			&d.DeploymentID, &d.State, &d.WebhookEndpoint, &d.Output, &errs, &d.FinishedAt); err != nil {
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
		return nil, fmt.Errorf("claim webhook deliveries: %w", err)
	}
	return batch, nil
}

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

// WebhookDeliverySucceed records a 2xx: the delivery and the request's
// webhook_status become SUCCEEDED, a WEBHOOK_FAILED request whose
// redelivery got through is SUCCEEDED again, and the output is kept for
// OutputRetention from now. It reports false, changing nothing, when owner
// no longer holds the lease.
func (db *DB) WebhookDeliverySucceed(ctx context.Context, id int64, owner string) (bool, error) {
	var n int
	err := db.Pool.QueryRow(ctx, `
		WITH d AS (
			UPDATE webhook_deliveries
			SET state = 'SUCCEEDED', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
				last_error = NULL
			WHERE id = $1 AND lease_owner = $2 AND state = 'IN_PROGRESS'
			RETURNING request_id
		), r AS (
			UPDATE async_requests r
			SET webhook_state = 'SUCCEEDED',
				state = CASE WHEN r.state = 'WEBHOOK_FAILED' THEN 'SUCCEEDED' ELSE r.state END,
				status_at = CASE WHEN r.state = 'WEBHOOK_FAILED' THEN now() ELSE r.status_at END,
				output_expires_at = now() + make_interval(secs => $3)
			FROM d WHERE r.id = d.request_id
			RETURNING 1
		)
		SELECT count(*) FROM d`, id, owner, cmp.Or(db.OutputRetention, OutputRetentionDefault).Seconds()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("record webhook success: %w", err)
	}
	return n == 1, nil
}

// WebhookDeliveryRetryParams is a retryable failure.
type WebhookDeliveryRetryParams struct {
	ID    int64
	Owner string
	// Delay is how long from now until the next attempt is due.
	Delay time.Duration
	// LastError says why the attempt failed, for operators.
	LastError string
}

// WebhookDeliveryRetry records a retryable failure: the delivery is PENDING
// again, due after p.Delay. It reports false, changing nothing, when the
// owner no longer holds the lease.
func (db *DB) WebhookDeliveryRetry(ctx context.Context, p WebhookDeliveryRetryParams) (bool, error) {
	tag, err := db.Pool.Exec(ctx, `
		UPDATE webhook_deliveries
		SET state = 'PENDING', due_at = now() + make_interval(secs => $3), lease_owner = NULL,
			lease_expires_at = NULL, last_error = $4
		WHERE id = $1 AND lease_owner = $2 AND state = 'IN_PROGRESS'`,
		p.ID, p.Owner, p.Delay.Seconds(), storableText(p.LastError))
	if err != nil {
		return false, fmt.Errorf("record webhook retry: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// WebhookDeliveryFail records a delivery that will not be tried again (the
// receiver refused it, or the schedule ran out). The delivery becomes
// FAILED; unless another delivery of the same request is still pending (a
// redelivery), the request's webhook_status becomes FAILED, a SUCCEEDED
// request becomes WEBHOOK_FAILED (a final state: status_at and the status
// retention restart), and the output is kept for OutputRetention from now.
// It reports false, changing nothing, when owner no longer holds the lease.
func (db *DB) WebhookDeliveryFail(ctx context.Context, id int64, owner, lastError string) (bool, error) {
	var n int
	err := db.Pool.QueryRow(ctx, `
		WITH d AS (
			UPDATE webhook_deliveries
			SET state = 'FAILED', finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
				last_error = $3
			WHERE id = $1 AND lease_owner = $2 AND state = 'IN_PROGRESS'
			RETURNING id, request_id
		), r AS (
			UPDATE async_requests r
			SET webhook_state = 'FAILED',
				state = CASE WHEN r.state = 'SUCCEEDED' THEN 'WEBHOOK_FAILED' ELSE r.state END,
				status_at = CASE WHEN r.state = 'SUCCEEDED' THEN now() ELSE r.status_at END,
				purge_at = CASE WHEN r.state = 'SUCCEEDED'
					THEN greatest(r.purge_at, now() + make_interval(secs => $5)) ELSE r.purge_at END,
				output_expires_at = now() + make_interval(secs => $4)
			FROM d
			WHERE r.id = d.request_id AND NOT EXISTS (
				SELECT 1 FROM webhook_deliveries o
				WHERE o.request_id = d.request_id AND o.id <> d.id AND o.state IN ('PENDING', 'IN_PROGRESS')
			)
			RETURNING 1
		)
		SELECT count(*) FROM d`,
		id, owner, storableText(lastError), cmp.Or(db.OutputRetention, OutputRetentionDefault).Seconds(),
		cmp.Or(db.StatusRetention, StatusRetentionDefault).Seconds()).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("record webhook failure: %w", err)
	}
	return n == 1, nil
}

// WebhookDeliveryRelease hands claimed deliveries back on shutdown: PENDING,
// due now, the attempt not counted, and deliverers woken to pick them up.
// Rows whose lease owner no longer holds are left alone. It returns how many
// rows it released.
func (db *DB) WebhookDeliveryRelease(ctx context.Context, owner string, ids []int64) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	var n int
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE webhook_deliveries
			SET state = 'PENDING', due_at = now(), attempts = greatest(attempts - 1, 0),
				lease_owner = NULL, lease_expires_at = NULL
			WHERE id = ANY($1) AND lease_owner = $2 AND state = 'IN_PROGRESS'`, ids, owner)
		if err != nil {
			return err
		}
		n = int(tag.RowsAffected())
		if n == 0 {
			return nil
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, '')`, WebhookWakeChannel)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("release webhook deliveries: %w", err)
	}
	return n, nil
}
