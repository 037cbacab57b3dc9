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

// RequestInsert queues one request and then wakes processors. It is
// RequestInsertBatch with one row; the API's RequestBatcher coalesces
// concurrent submits into larger batches.
func (db *DB) RequestInsert(ctx context.Context, p RequestInsertParams) (RequestInsertResult, error) {
	out, err := db.RequestInsertBatch(ctx, []RequestInsertParams{p})
	if err != nil {
		return RequestInsertResult{}, err
	}
	if out[0].Err == nil && !out[0].Replayed {
		db.RequestWake(ctx)
	}
	return out[0].RequestInsertResult, out[0].Err
}

// RequestInsertOutcome is one row's answer from RequestInsertBatch: the
// request it stands for, or why it was not queued (ErrIdempotencyMismatch,
// ErrIdempotencyInFlight, ErrNotFound for a deployment that is gone).
type RequestInsertOutcome struct {
	RequestInsertResult
	Err error
}

// RequestInsertBatch queues requests in one transaction and one commit;
// without idempotency keys that is a single statement, one round trip.
// Each row is answered on its own: a row whose deployment is gone
// (ErrNotFound), whose idempotency key was used with another body, or whose
// key another submit is inserting now fails alone, and an idempotent retry
// replays the id its key stands for. Should a statement fail for one row's
// sake anyway, each row is tried alone so that only that row fails. The
// error is the whole batch's (the database unreachable, ctx done).
//
// With an idempotency key, concurrent identical submits insert exactly one
// row: the first holds an advisory lock on the key while the others get
// ErrIdempotencyInFlight (as does a second row with the same key in the
// batch), and later ones replay its id.
//
// It does not wake processors: RequestWake does, after the commit, so no
// insert holds Postgres's NOTIFY lock across its durable commit.
func (db *DB) RequestInsertBatch(ctx context.Context, ps []RequestInsertParams) ([]RequestInsertOutcome, error) {
	out, err := db.requestInsertBatch(ctx, ps)
	if err == nil {
		return out, nil
	}
	if len(ps) == 1 || IsUnavailable(err) || ctx.Err() != nil {
		return nil, fmt.Errorf("insert requests: %w", err)
	}
	out = make([]RequestInsertOutcome, len(ps))
	for i := range ps {
		one, err := db.requestInsertBatch(ctx, ps[i:i+1])
		if err != nil {
			if IsUnavailable(err) || ctx.Err() != nil {
				return nil, fmt.Errorf("insert requests: %w", err)
			}
			out[i].Err = fmt.Errorf("insert request: %w", err)
			continue
		}
		out[i] = one[0]
	}
	return out, nil
}

// RequestWake wakes processors. It is a transaction of its own with
// synchronous_commit off: NOTIFY takes a database-wide lock at commit and
// holds it through the commit's WAL flush, so a NOTIFY inside a durable
// insert would let no two inserts share a flush. A lost wake-up costs at
// most the processors' poll interval, so its error is dropped.
func (db *DB) RequestWake(ctx context.Context) {
	_, _ = db.Pool.Exec(ctx, requestWakeSQL, WakeChannel)
}

const requestWakeSQL = `SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')`

// idempotencyLockID is the advisory lock that serializes the submits of
// one organization's idempotency key.
func idempotencyLockID(organizationID int64, key string) int64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s", organizationID, key)
	return int64(h.Sum64())
}

type orgKey struct {
	org int64
	key string
}

func (db *DB) requestInsertBatch(ctx context.Context, ps []RequestInsertParams) ([]RequestInsertOutcome, error) {
	out := make([]RequestInsertOutcome, len(ps))
	var keyed []int // the first row of each idempotency key
	seen := map[orgKey]bool{}
	for i, p := range ps {
		if p.IdempotencyKey == "" {
			continue
		}
		k := orgKey{p.OrganizationID, p.IdempotencyKey}
		if seen[k] {
			out[i].Err = ErrIdempotencyInFlight
			continue
		}
		seen[k] = true
		keyed = append(keyed, i)
	}
	if len(keyed) == 0 {
		// One statement in its own implicit transaction: one round trip.
		if err := requestInsertRows(ctx, db.Pool, ps, out); err != nil {
			return nil, err
		}
		return out, nil
	}
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		if err := idempotencyKeysCheck(ctx, tx, ps, keyed, out); err != nil {
			return err
		}
		return requestInsertRows(ctx, tx, ps, out)
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// idempotencyKeysCheck takes the advisory lock of each row of keyed and
// looks its key up, marking in out the rows that replay, mismatch or are
// in flight. The lookup is a statement of its own after the locks, so its
// snapshot sees a key committed by a submit that held the lock before.
func idempotencyKeysCheck(ctx context.Context, tx pgx.Tx, ps []RequestInsertParams, keyed []int, out []RequestInsertOutcome) error {
	orgs, keys, locks := make([]int64, len(keyed)), make([]string, len(keyed)), make([]int64, len(keyed))
	for j, i := range keyed {
		orgs[j], keys[j] = ps[i].OrganizationID, ps[i].IdempotencyKey
		locks[j] = idempotencyLockID(orgs[j], keys[j])
	}
	var batch pgx.Batch
	batch.Queue(`SELECT pg_try_advisory_xact_lock(l) FROM unnest($1::bigint[]) WITH ORDINALITY AS t(l, n) ORDER BY n`, locks)
	batch.Queue(`
		SELECT k.n, i.request_id, i.body_hash
		FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS k(org, key, n)
		JOIN idempotency_keys i ON i.organization_id = k.org AND i.key = k.key
		WHERE i.created_at > now() - make_interval(secs => $3)`, orgs, keys, IdempotencyWindow.Seconds())
	br := tx.SendBatch(ctx, &batch)
	defer br.Close()
	rows, err := br.Query()
	if err != nil {
		return err
	}
	locked, err := pgx.CollectRows(rows, pgx.RowTo[bool])
	if err != nil {
		return err
	}
	rows, err = br.Query()
	if err != nil {
		return err
	}
	var (
		n        int64
		prevID   requestid.ID
		prevHash []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&n, &prevID, &prevHash}, func() error {
		i := keyed[n-1]
		if !locked[n-1] {
			return nil
		}
		if bytes.Equal(prevHash, ps[i].BodyHash) {
			out[i].RequestInsertResult = RequestInsertResult{ID: prevID, Replayed: true}
		} else {
			out[i].Err = ErrIdempotencyMismatch
		}
		return nil
	})
	if err != nil {
		return err
	}
	for j, i := range keyed {
		if !locked[j] {
			out[i].Err = ErrIdempotencyInFlight
		}
	}
	return br.Close()
}

// requestInsertRows inserts every row of ps that out has not answered yet,
// with its idempotency key, in one statement, and answers them: queued, or
// ErrNotFound when the deployment no longer exists.
func requestInsertRows(ctx context.Context, q querier, ps []RequestInsertParams, out []RequestInsertOutcome) error {
	var (
		ids                          []requestid.ID
		orgs                         []int64
		models, deployments, hooks   []string
		webhooks                     []*string
		chains                       []bool
		priorities, attempts, delays []int32
		maxDelays                    []int32
		queueSecs                    []float64
		inputs                       [][]byte
		keyOrgs                      []int64
		keys                         []string
		hashes                       [][]byte
		keyIDs                       []requestid.ID
	)
	for i, p := range ps {
		if out[i].Err != nil || out[i].Replayed {
			continue
		}
		hook, endpoint := WebhookNone, (*string)(nil)
		if p.WebhookEndpoint != "" {
			hook, endpoint = WebhookPending, &ps[i].WebhookEndpoint
		}
		ids, orgs = append(ids, p.ID), append(orgs, p.OrganizationID)
		models, deployments, chains = append(models, p.ModelID), append(deployments, p.DeploymentID), append(chains, p.IsChain)
		hooks, webhooks = append(hooks, string(hook)), append(webhooks, endpoint)
		priorities, queueSecs = append(priorities, int32(p.Priority)), append(queueSecs, p.MaxTimeInQueue.Seconds())
		attempts, delays, maxDelays = append(attempts, int32(p.MaxAttempts)), append(delays, int32(p.InitialDelayMS)), append(maxDelays, int32(p.MaxDelayMS))
		inputs = append(inputs, p.Input)
		if p.IdempotencyKey != "" {
			keyOrgs, keys = append(keyOrgs, p.OrganizationID), append(keys, p.IdempotencyKey)
			hashes, keyIDs = append(hashes, p.BodyHash), append(keyIDs, p.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := q.Query(ctx, requestInsertSQL, ids, orgs, models, chains, deployments, hooks, webhooks,
		priorities, queueSecs, attempts, delays, maxDelays, inputs, keyOrgs, keys, hashes, keyIDs)
	if err != nil {
		return err
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[requestid.ID])
	if err != nil {
		return err
	}
	done := make(map[requestid.ID]bool, len(inserted))
	for _, id := range inserted {
		done[id] = true
	}
	for i, p := range ps {
		if out[i].Err != nil || out[i].Replayed {
			continue
		}
		if done[p.ID] {
			out[i].RequestInsertResult = RequestInsertResult{ID: p.ID}
		} else {
			out[i].Err = ErrNotFound
		}
	}
	return nil
}

// requestInsertSQL queues a batch of requests and records their
// idempotency keys. Rows whose deployment is gone are left out; their keys
// with them. An expired key (older than IdempotencyWindow, not yet
// purged) is taken over.
const requestInsertSQL = `
	WITH input AS (
		SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[],
			$8::int[], $9::float8[], $10::int[], $11::int[], $12::int[], $13::bytea[])
			AS u(id, organization_id, model_id, is_chain, deployment_id, webhook_state, webhook_endpoint,
				priority, queue_secs, max_attempts, initial_delay_ms, max_delay_ms, input)
	), inserted AS (
		INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
			webhook_state, webhook_endpoint, priority, due_at, deadline_at, max_attempts,
			initial_delay_ms, max_delay_ms, input, created_at, status_at)
		SELECT u.id, u.organization_id, u.model_id, u.is_chain, u.deployment_id, 'QUEUED',
			u.webhook_state, u.webhook_endpoint, u.priority, now(), now() + make_interval(secs => u.queue_secs),
			u.max_attempts, u.initial_delay_ms, u.max_delay_ms, u.input, now(), now()
		FROM input u
		WHERE EXISTS (SELECT FROM deployments d WHERE d.id = u.deployment_id)
		RETURNING id
	), keys AS (
		INSERT INTO idempotency_keys (organization_id, key, body_hash, request_id)
		SELECT k.organization_id, k.key, k.body_hash, k.request_id
		FROM unnest($14::bigint[], $15::text[], $16::bytea[], $17::uuid[]) AS k(organization_id, key, body_hash, request_id)
		WHERE k.request_id IN (SELECT id FROM inserted)
		ON CONFLICT (organization_id, key) DO UPDATE
		SET body_hash = excluded.body_hash, request_id = excluded.request_id, created_at = now()
	)
	SELECT id FROM inserted`

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
// in order to the cap; ruling out both leaves the walk (and JIT off, as for
// every statement with ruled-out plans: see byKeySettings).
const queuePositionSettings = `SELECT set_config('enable_sort', 'off', true), set_config('enable_seqscan', 'off', true),
	set_config('jit', 'off', true)`

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
	// Paused reports whether the deployment is paused: its queue waits.
	Paused bool
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
		err := row.Scan(&c.Queued, &c.InProgress, &c.Paused)
		return c, err
	}, `
		SELECT
			(SELECT count(*) FROM (
				SELECT FROM async_requests WHERE deployment_id = $1 AND state = 'QUEUED'
				ORDER BY priority, due_at, id) queued),
			(SELECT count(*) FROM (
				SELECT FROM async_requests WHERE deployment_id = $1 AND state = 'IN_PROGRESS'
				ORDER BY lease_expires_at) running),
			coalesce((SELECT paused FROM deployments WHERE id = $1), false)`, deploymentID)
	if err != nil {
		return QueueCounts{}, fmt.Errorf("count queue: %w", err)
	}
	return counts[0], nil
}
