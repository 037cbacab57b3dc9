package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// Idempotency outcomes of RequestInsert.
var (
	// ErrIdempotencyMismatch: the key was used within 24 h with another body.
	ErrIdempotencyMismatch = errors.New("idempotency key was used with a different body")
	// ErrIdempotencyInFlight: a submit with the key is being inserted now.
	ErrIdempotencyInFlight = errors.New("a request with this idempotency key is still being submitted")
)

// IdempotencyWindow is how long an Idempotency-Key is honoured.
const IdempotencyWindow = 24 * time.Hour

// RequestInsertParams is a new request. Defaults are applied by the API
// before it gets here.
type RequestInsertParams struct {
	ID              requestid.ID
	OrganizationID  int64
	ModelID         string
	IsChain         bool
	DeploymentID    string
	WebhookEndpoint string
	Priority        int
	MaxTimeInQueue  time.Duration
	MaxAttempts     int
	InitialDelayMS  int
	MaxDelayMS      int
	Input           []byte
	// IdempotencyKey, when set, makes the insert idempotent per
	// organization; BodyHash identifies the submitted body.
	IdempotencyKey string
	BodyHash       []byte
}

// RequestInsertResult says which request the submit stands for.
type RequestInsertResult struct {
	ID       requestid.ID
	Replayed bool // an earlier submit with the same Idempotency-Key
}

// RequestInsert queues a request and wakes processors, in one transaction.
// With an idempotency key, concurrent identical submits insert exactly one
// row: the first holds an advisory lock on the key while the others get
// ErrIdempotencyInFlight, and later ones replay its id.
func (db *DB) RequestInsert(ctx context.Context, p RequestInsertParams) (RequestInsertResult, error) {
	res := RequestInsertResult{ID: p.ID}
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if p.IdempotencyKey != "" {
			h := fnv.New64a()
			fmt.Fprintf(h, "%d\x00%s", p.OrganizationID, p.IdempotencyKey)
			var locked bool
			if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1)`, int64(h.Sum64())).Scan(&locked); err != nil {
				return err
			}
			if !locked {
				return ErrIdempotencyInFlight
			}
			var prevID requestid.ID
			var prevHash []byte
			err := tx.QueryRow(ctx, idempotencyKeyGetSQL,
				p.OrganizationID, p.IdempotencyKey, IdempotencyWindow.Seconds()).Scan(&prevID, &prevHash)
			switch {
			case err == nil && !bytes.Equal(prevHash, p.BodyHash):
				return ErrIdempotencyMismatch
			case err == nil:
				res = RequestInsertResult{ID: prevID, Replayed: true}
				return nil
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
			if _, err := tx.Exec(ctx, `
				INSERT INTO idempotency_keys (organization_id, key, body_hash, request_id) VALUES ($1, $2, $3, $4)
				ON CONFLICT (organization_id, key) DO UPDATE
				SET body_hash = excluded.body_hash, request_id = excluded.request_id, created_at = now()`,
				p.OrganizationID, p.IdempotencyKey, p.BodyHash, p.ID); err != nil {
				return err
			}
		}
		webhookState := WebhookNone
		var endpoint *string
		if p.WebhookEndpoint != "" {
			webhookState, endpoint = WebhookPending, &p.WebhookEndpoint
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, webhook_endpoint, priority, due_at, deadline_at, max_attempts,
				initial_delay_ms, max_delay_ms, input, created_at, status_at)
			VALUES ($1, $2, $3, $4, $5, 'QUEUED', $6, $7, $8, now(), now() + make_interval(secs => $9),
				$10, $11, $12, $13, now(), now())`,
			p.ID, p.OrganizationID, p.ModelID, p.IsChain, p.DeploymentID, webhookState, endpoint,
			p.Priority, p.MaxTimeInQueue.Seconds(), p.MaxAttempts, p.InitialDelayMS, p.MaxDelayMS, p.Input); err != nil {
			return err
		}
		// Identical notifications in one transaction are delivered once, and
		// listeners coalesce the rest.
		_, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, WakeChannel)
		return err
	})
	if err != nil {
		return RequestInsertResult{}, fmt.Errorf("insert request: %w", err)
	}
	return res, nil
}

const idempotencyKeyGetSQL = `
	SELECT request_id, body_hash FROM idempotency_keys
	WHERE organization_id = $1 AND key = $2 AND created_at > now() - make_interval(secs => $3)`

// IdempotencyKeyGet returns the request an organization's idempotency key
// stands for and the hash of the body it was used with, or ErrNotFound when
// the key is unknown or older than IdempotencyWindow. The API uses it to
// replay a submit that it would otherwise refuse (an organization at its
// cap), so a retried submit gets its original answer.
func (db *DB) IdempotencyKeyGet(ctx context.Context, organizationID int64, key string) (requestid.ID, []byte, error) {
	var id requestid.ID
	var hash []byte
	err := db.Pool.QueryRow(ctx, idempotencyKeyGetSQL, organizationID, key, IdempotencyWindow.Seconds()).Scan(&id, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return id, nil, ErrNotFound
	}
	if err != nil {
		return id, nil, fmt.Errorf("get idempotency key: %w", err)
	}
	return id, hash, nil
}

// RequestGetByID returns an organization's request, or ErrNotFound (also for
// another organization's request).
func (db *DB) RequestGetByID(ctx context.Context, organizationID int64, id requestid.ID) (Request, error) {
	r, err := scanRequest(db.Pool.QueryRow(ctx,
		`SELECT `+requestColumns+` FROM async_requests WHERE id = $1 AND organization_id = $2`, id, organizationID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Request{}, ErrNotFound
	}
	if err != nil {
		return Request{}, fmt.Errorf("get request: %w", err)
	}
	return r, nil
}

// QueuePositionMax caps RequestQueuePosition: counting the requests ahead
// costs a row read each, and past this many the exact number tells a client
// nothing more than "a long way back".
const QueuePositionMax = 1000

// RequestQueuePosition reports how many of its deployment's queued requests
// a claim would take before r, a QUEUED request: those within their queue
// deadline that come first in claim order (priority, then due time, then
// id) and are due by the time r is. Zero means r is next; QueuePositionMax
// means at least that many. Requests of other deployments and the
// deployment's free slots do not count: it is a place in line, not a wait.
// It walks async_requests_queued_idx in order and stops at the cap.
func (db *DB) RequestQueuePosition(ctx context.Context, r Request) (int64, error) {
	n, err := queryWith(ctx, db.Pool, queuePositionSettings, pgx.RowTo[int64], `
		SELECT count(*) FROM (
			SELECT 1 FROM async_requests
			WHERE deployment_id = $1 AND state = 'QUEUED'
				AND (priority, due_at, id) < ($2, $3, $4)
				AND due_at <= greatest(now(), $3) AND deadline_at > now()
			ORDER BY priority, due_at, id
			LIMIT $5) ahead`,
		r.DeploymentID, r.Priority, r.DueAt, r.ID, QueuePositionMax)
	if err != nil {
		return 0, fmt.Errorf("count requests ahead in the queue: %w", err)
	}
	return n[0], nil
}

// queuePositionSettings keep RequestQueuePosition on the queued index. The
// planner cannot tell how many rows the row comparison leaves, guesses
// one, and would rather read the whole table and sort than walk the index
// in order to the cap; ruling out both leaves the walk.
const queuePositionSettings = `SELECT set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true)`

// RequestCancel cancels a QUEUED request (including one waiting for a
// retry). It returns the request as it now is and whether this call
// canceled it. A claim racing the cancel resolves to exactly one of them:
// both update only a QUEUED row, under its row lock.
func (db *DB) RequestCancel(ctx context.Context, organizationID int64, id requestid.ID) (Request, bool, error) {
	r, err := scanRequest(db.Pool.QueryRow(ctx, `
		UPDATE async_requests
		SET state = 'CANCELED', webhook_state = 'CANCELED', status_at = now(), finished_at = now(),
			input = NULL, purge_at = now() + make_interval(secs => $3)
		WHERE id = $1 AND organization_id = $2 AND state = 'QUEUED'
		RETURNING `+requestColumns, id, organizationID, db.StatusRetention.Seconds()))
	if err == nil {
		return r, true, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Request{}, false, fmt.Errorf("cancel request: %w", err)
	}
	r, err = db.RequestGetByID(ctx, organizationID, id)
	return r, false, err
}

// RequestCountActive counts an organization's QUEUED and IN_PROGRESS
// requests, stopping at limit so the cost is bounded.
func (db *DB) RequestCountActive(ctx context.Context, organizationID int64, limit int) (int, error) {
	var n int
	err := db.Pool.QueryRow(ctx, `
		SELECT count(*) FROM (
			SELECT 1 FROM async_requests
			WHERE organization_id = $1 AND state IN ('QUEUED', 'IN_PROGRESS') LIMIT $2
		) active`, organizationID, limit).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count active requests: %w", err)
	}
	return n, nil
}

// QueueCounts is a deployment's queue depth.
type QueueCounts struct {
	Queued     int64
	InProgress int64
}

// DeploymentQueueCounts counts a deployment's QUEUED and IN_PROGRESS
// requests. Each count walks the deployment's part of its state's partial
// index in the index's order, with sorting ruled out (claimPlanSettings),
// so it reads only that deployment's queued or running rows even when the
// planner's statistics predate a burst and would pick an index holding
// every deployment's queue.
func (db *DB) DeploymentQueueCounts(ctx context.Context, deploymentID string) (QueueCounts, error) {
	counts, err := queryWith(ctx, db.Pool, `SELECT `+claimPlanSettings, func(row pgx.CollectableRow) (QueueCounts, error) {
		var c QueueCounts
		err := row.Scan(&c.Queued, &c.InProgress)
		return c, err
	}, `
		SELECT
			(SELECT count(*) FROM (
				SELECT FROM async_requests WHERE deployment_id = $1 AND state = 'QUEUED'
				ORDER BY priority, due_at, id) queued),
			(SELECT count(*) FROM (
				SELECT FROM async_requests WHERE deployment_id = $1 AND state = 'IN_PROGRESS'
				ORDER BY lease_expires_at) running)`, deploymentID)
	if err != nil {
		return QueueCounts{}, fmt.Errorf("count queue: %w", err)
	}
	return counts[0], nil
}
