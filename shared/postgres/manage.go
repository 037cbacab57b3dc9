package postgres

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// This file holds the management API's queries (SPEC §13): listing and
// inspecting requests, retrying and bulk-cancelling them, deployment
// figures, pause and concurrency, purge, API keys and webhook secrets.

// KeyScope is what an API key may reach. Enforced by a CHECK constraint on
// api_keys.scope.
type KeyScope string

const (
	// ScopeInvoke reaches the async API of SPEC §3 only.
	ScopeInvoke KeyScope = "invoke"
	// ScopeManage reaches the management API and the console's actions too.
	ScopeManage KeyScope = "manage"
)

// APIKey is a row of api_keys, without its hash.
type APIKey struct {
	ID             int64
	OrganizationID int64
	Prefix         string
	Name           string
	Scope          KeyScope
	CreatedAt      time.Time
	LastUsedAt     *time.Time
	RevokedAt      *time.Time
}

// APIKeyLookup returns the unrevoked key that key is, or ErrNotFound. The
// stored hash is compared in constant time.
func (db *DB) APIKeyLookup(ctx context.Context, key string) (APIKey, error) {
	lookupID, hash := hashAPIKey(key)
	var k APIKey
	var stored []byte
	err := db.Pool.QueryRow(ctx, `
		SELECT id, organization_id, prefix, name, scope, created_at, last_used_at, key_hash
		FROM api_keys WHERE lookup_id = $1 AND revoked_at IS NULL`, lookupID).
		Scan(&k.ID, &k.OrganizationID, &k.Prefix, &k.Name, &k.Scope, &k.CreatedAt, &k.LastUsedAt, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, ErrNotFound
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("look up api key: %w", err)
	}
	if subtle.ConstantTimeCompare(stored, hash) != 1 {
		return APIKey{}, ErrNotFound
	}
	return k, nil
}

// APIKeyTouch records that key id was used now, unless it was recorded less
// than every ago: the write happens at most once per key per every, however
// many instances call it.
func (db *DB) APIKeyTouch(ctx context.Context, id int64, every time.Duration) error {
	_, err := db.Pool.Exec(ctx, `
		UPDATE api_keys SET last_used_at = now()
		WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))`,
		id, every.Seconds())
	if err != nil {
		return fmt.Errorf("record api key use: %w", err)
	}
	return nil
}

// APIKeyInsertParams is a new API key.
type APIKeyInsertParams struct {
	OrganizationID int64
	Key            string // stored only as its hash
	Name           string
	Scope          KeyScope // default ScopeManage
}

// APIKeyInsert stores a new key and returns its row.
func (db *DB) APIKeyInsert(ctx context.Context, p APIKeyInsertParams) (APIKey, error) {
	if len(p.Key) < 8 {
		return APIKey{}, errors.New("api key must be at least 8 characters")
	}
	if p.Scope == "" {
		p.Scope = ScopeManage
	}
	lookupID, hash := hashAPIKey(p.Key)
	k := APIKey{OrganizationID: p.OrganizationID, Prefix: p.Key[:6], Name: p.Name, Scope: p.Scope}
	err := db.Pool.QueryRow(ctx, `
		INSERT INTO api_keys (organization_id, lookup_id, key_hash, prefix, name, scope)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at`,
		p.OrganizationID, lookupID, hash, k.Prefix, p.Name, p.Scope).Scan(&k.ID, &k.CreatedAt)
	if err != nil {
		return APIKey{}, fmt.Errorf("create api key: %w", describeCheck(err))
	}
	return k, nil
}

// APIKeyList returns an organization's unrevoked keys, oldest first.
func (db *DB) APIKeyList(ctx context.Context, organizationID int64) ([]APIKey, error) {
	rows, err := db.Pool.Query(ctx, `
		SELECT id, organization_id, prefix, name, scope, created_at, last_used_at, revoked_at
		FROM api_keys WHERE organization_id = $1 AND revoked_at IS NULL ORDER BY id`, organizationID)
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (APIKey, error) {
		var k APIKey
		err := row.Scan(&k.ID, &k.OrganizationID, &k.Prefix, &k.Name, &k.Scope, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list api keys: %w", err)
	}
	return keys, nil
}

// APIKeyRevoke revokes an organization's key and returns it. A key that is
// unknown, another organization's or already revoked is ErrNotFound.
func (db *DB) APIKeyRevoke(ctx context.Context, organizationID, id int64) (APIKey, error) {
	var k APIKey
	err := db.Pool.QueryRow(ctx, `
		UPDATE api_keys SET revoked_at = now()
		WHERE id = $1 AND organization_id = $2 AND revoked_at IS NULL
		RETURNING id, organization_id, prefix, name, scope, created_at, last_used_at, revoked_at`,
		id, organizationID).Scan(&k.ID, &k.OrganizationID, &k.Prefix, &k.Name, &k.Scope, &k.CreatedAt, &k.LastUsedAt, &k.RevokedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return APIKey{}, ErrNotFound
	}
	if err != nil {
		return APIKey{}, fmt.Errorf("revoke api key: %w", err)
	}
	return k, nil
}

// WebhookSecretInfo describes a webhook secret without the secret.
type WebhookSecretInfo struct {
	ID        int64
	CreatedAt time.Time
	ExpiresAt *time.Time // nil for the current secret
}

// WebhookSecretList returns an organization's secrets that still sign,
// newest first.
func (db *DB) WebhookSecretList(ctx context.Context, organizationID int64) ([]WebhookSecretInfo, error) {
	rows, err := db.Pool.Query(ctx, `
		SELECT id, created_at, expires_at FROM webhook_secrets
		WHERE organization_id = $1 AND (expires_at IS NULL OR expires_at > now())
		ORDER BY id DESC`, organizationID)
	if err != nil {
		return nil, fmt.Errorf("list webhook secrets: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (WebhookSecretInfo, error) {
		var s WebhookSecretInfo
		err := row.Scan(&s.ID, &s.CreatedAt, &s.ExpiresAt)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("list webhook secrets: %w", err)
	}
	return out, nil
}

// RequestListMax is the largest page RequestList returns.
const RequestListMax = 500

// RequestCursor is where a page of RequestList ends: the last request's
// creation time and id, in list order (newest first).
type RequestCursor struct {
	CreatedAt time.Time
	ID        requestid.ID
}

// RequestFilter selects an organization's requests. Zero fields select
// everything.
type RequestFilter struct {
	OrganizationID int64
	States         []RequestState
	DeploymentID   string
	ModelID        string
	CreatedAfter   time.Time // exclusive
	CreatedBefore  time.Time // exclusive
	IDs            []requestid.ID
}

// RequestListParams is a page of an organization's requests.
type RequestListParams struct {
	RequestFilter
	// Limit is the page size, 1 to RequestListMax.
	Limit int
	// After, when set, continues a list after this cursor.
	After *RequestCursor
}

// where returns the filter's conditions and their arguments, numbered from
// the first placeholder after args.
func (f RequestFilter) where(args []any) (string, []any) {
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	conds := []string{"organization_id = " + arg(f.OrganizationID)}
	if len(f.States) > 0 {
		// As literals, so that the planner of a generic plan can still
		// prove the partial index's predicate for the rare states.
		var states []string
		for _, st := range f.States {
			if st.known() {
				states = append(states, "'"+string(st)+"'")
			}
		}
		if states == nil {
			states = []string{"NULL"}
		}
		conds = append(conds, "state IN ("+strings.Join(states, ", ")+")")
	}
	if f.DeploymentID != "" {
		conds = append(conds, "deployment_id = "+arg(f.DeploymentID))
	}
	if f.ModelID != "" {
		conds = append(conds, "model_id = "+arg(f.ModelID))
	}
	if !f.CreatedAfter.IsZero() {
		conds = append(conds, "created_at > "+arg(f.CreatedAfter))
	}
	if !f.CreatedBefore.IsZero() {
		conds = append(conds, "created_at < "+arg(f.CreatedBefore))
	}
	if f.IDs != nil {
		conds = append(conds, "id = ANY("+arg(f.IDs)+")")
	}
	return strings.Join(conds, " AND "), args
}

// known reports whether s is one of the states (and so safe to write into
// SQL as a literal).
func (s RequestState) known() bool {
	switch s {
	case StateQueued, StateInProgress, StateSucceeded, StateFailed, StateExpired, StateCanceled, StateWebhookFailed:
		return true
	}
	return false
}

// storable reports whether Postgres text can hold the filter's names; one
// that can't names nothing stored.
func (f RequestFilter) storable() bool {
	return textStorable(f.DeploymentID) && textStorable(f.ModelID)
}

// RequestList returns a page of an organization's requests, newest first
// (by creation time, then id), and the cursor of the next page, nil on the
// last one. It walks an (organization_id, …, created_at, id) index backwards from
// the cursor and stops after a page, so a page costs the same on a table of
// a million finished rows as on an empty one: async_requests_org_created_idx,
// or async_requests_org_unsucceeded_idx for the states that are rare among
// finished rows (FAILED, EXPIRED, CANCELED, WEBHOOK_FAILED). The other
// filters are applied along the walk, so a page of a deployment that holds
// a small share of the organization's requests reads the rows of the
// others in between. A page asks for one row more than it returns to know
// whether another follows.
func (db *DB) RequestList(ctx context.Context, p RequestListParams) ([]Request, *RequestCursor, error) {
	if !p.storable() {
		return []Request{}, nil, nil
	}
	limit := min(max(p.Limit, 1), RequestListMax)
	where, args := p.where(nil)
	if p.After != nil {
		args = append(args, p.After.CreatedAt, p.After.ID)
		where += fmt.Sprintf(" AND (created_at, id) < ($%d, $%d)", len(args)-1, len(args))
	}
	args = append(args, limit+1)
	rows, err := db.Pool.Query(ctx, `SELECT `+requestColumns+` FROM async_requests WHERE `+where+
		fmt.Sprintf(` ORDER BY created_at DESC, id DESC LIMIT $%d`, len(args)), args...)
	if err != nil {
		return nil, nil, fmt.Errorf("list requests: %w", err)
	}
	reqs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Request, error) { return scanRequest(row) })
	if err != nil {
		return nil, nil, fmt.Errorf("list requests: %w", err)
	}
	if len(reqs) <= limit {
		return reqs, nil, nil
	}
	reqs = reqs[:limit]
	last := reqs[limit-1]
	return reqs, &RequestCursor{CreatedAt: last.CreatedAt, ID: last.ID}, nil
}

// Attempt is a row of request_attempts: one model attempt, or a
// back-pressure answer (Counted false).
type Attempt struct {
	Number     int
	Counted    bool
	StartedAt  time.Time
	FinishedAt time.Time
	HTTPStatus *int
	Code       string
	Message    string
	Processor  string
}

// DeliveryAttempt is a row of webhook_delivery_attempts.
type DeliveryAttempt struct {
	DeliveryID int64
	SentAt     time.Time
	DurationMS int
	HTTPStatus *int
	Outcome    string
	Error      string
}

// RequestHistory is a request's attempts and webhook delivery attempts,
// oldest first.
type RequestHistory struct {
	Attempts   []Attempt
	Deliveries []DeliveryAttempt
}

// RequestHistoryGet returns the history of request id, which the caller has
// already found in its organization.
func (db *DB) RequestHistoryGet(ctx context.Context, id requestid.ID) (RequestHistory, error) {
	h := RequestHistory{Attempts: []Attempt{}, Deliveries: []DeliveryAttempt{}}
	rows, err := db.Pool.Query(ctx, `
		SELECT number, counted, started_at, finished_at, http_status, coalesce(code, ''), coalesce(message, ''), processor
		FROM request_attempts WHERE request_id = $1 ORDER BY id`, id)
	if err != nil {
		return h, fmt.Errorf("get request attempts: %w", err)
	}
	h.Attempts, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (Attempt, error) {
		var a Attempt
		err := row.Scan(&a.Number, &a.Counted, &a.StartedAt, &a.FinishedAt, &a.HTTPStatus, &a.Code, &a.Message, &a.Processor)
		return a, err
	})
	if err != nil {
		return h, fmt.Errorf("get request attempts: %w", err)
	}
	rows, err = db.Pool.Query(ctx, `
		SELECT delivery_id, sent_at, duration_ms, http_status, outcome, coalesce(error, '')
		FROM webhook_delivery_attempts WHERE request_id = $1 ORDER BY id`, id)
	if err != nil {
		return h, fmt.Errorf("get webhook delivery attempts: %w", err)
	}
	h.Deliveries, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (DeliveryAttempt, error) {
		var d DeliveryAttempt
		err := row.Scan(&d.DeliveryID, &d.SentAt, &d.DurationMS, &d.HTTPStatus, &d.Outcome, &d.Error)
		return d, err
	})
	if err != nil {
		return h, fmt.Errorf("get webhook delivery attempts: %w", err)
	}
	return h, nil
}

// BulkMax is the most requests one bulk cancel or retry acts on.
const BulkMax = 10_000

// BulkResult is what a bulk action did: Matched requests were named and in
// a state the action applies to when it read them; Changed of them it
// changed (the rest a processor or another action changed first).
type BulkResult struct {
	Matched int64
	Changed int64
}

// retrySet is the assignment that sends a FAILED or EXPIRED request back
// to the queue: a fresh attempt budget, due now, a fresh queue deadline as
// long as its first one, its webhook pending again if it has one, and
// nothing of the earlier outcome kept but its errors and history.
const retrySet = `
	state = 'QUEUED', attempts = 0, due_at = now(), status_at = now(),
	deadline_at = now() + greatest(deadline_at - coalesce(retried_at, created_at), interval '10 seconds'), retried_at = now(),
	webhook_state = CASE WHEN webhook_endpoint IS NULL THEN 'NO_WEBHOOK_PROVIDED' ELSE 'PENDING' END,
	output = NULL, output_expires_at = NULL, started_at = NULL, finished_at = NULL, purge_at = NULL,
	lease_owner = NULL, lease_expires_at = NULL`

// retryable is the condition a request must meet to be retried: FAILED or
// EXPIRED, its input still retained, and no webhook of that outcome still
// to be sent (it would report the earlier outcome after the retry).
const retryable = `state IN ('FAILED', 'EXPIRED') AND input IS NOT NULL
	AND NOT EXISTS (SELECT 1 FROM webhook_deliveries wd
	                WHERE wd.request_id = async_requests.id AND wd.state IN ('PENDING', 'IN_PROGRESS'))`

// cancelSet is the assignment that cancels a QUEUED request; see
// RequestCancel.
const cancelSet = `
	state = 'CANCELED', webhook_state = 'CANCELED', status_at = now(), finished_at = now(),
	input = NULL, purge_at = now() + make_interval(secs => %s)`

// Refusals of RequestRetry.
var (
	// ErrRetryState: the request is neither FAILED nor EXPIRED.
	ErrRetryState = errors.New("only a FAILED or EXPIRED request can be retried")
	// ErrRetryInputGone: the request's input is no longer retained.
	ErrRetryInputGone = errors.New("the request's input is no longer retained")
	// ErrRetryWebhookPending: the webhook of the request's outcome is still
	// being delivered.
	ErrRetryWebhookPending = errors.New("the webhook of the request's outcome is still being delivered")
)

// RequestRetry sends an organization's FAILED or EXPIRED request back to
// the queue (SPEC §4) and wakes processors. It returns the request as it now
// is, or ErrNotFound, or one of ErrRetryState, ErrRetryInputGone and
// ErrRetryWebhookPending wrapped with the request's state. The guard and
// the change are one UPDATE (processors are woken after it commits), so
// concurrent retries and a processor finishing the request resolve to one
// outcome under the row lock.
func (db *DB) RequestRetry(ctx context.Context, organizationID int64, id requestid.ID) (Request, error) {
	r, err := scanRequest(db.Pool.QueryRow(ctx, `
		UPDATE async_requests SET `+retrySet+`
		WHERE id = $1 AND organization_id = $2 AND `+retryable+`
		RETURNING `+requestColumns, id, organizationID))
	if err == nil {
		db.wakeProcessors(ctx)
		return r, nil
	}
	if !errors.Is(err, pgx.ErrNoRows) {
		return Request{}, fmt.Errorf("retry request: %w", err)
	}
	var (
		state    RequestState
		hasInput bool
		pending  bool
	)
	err = db.Pool.QueryRow(ctx, `
		SELECT state, input IS NOT NULL,
			EXISTS (SELECT 1 FROM webhook_deliveries wd WHERE wd.request_id = r.id AND wd.state IN ('PENDING', 'IN_PROGRESS'))
		FROM async_requests r WHERE id = $1 AND organization_id = $2`, id, organizationID).Scan(&state, &hasInput, &pending)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Request{}, ErrNotFound
	case err != nil:
		return Request{}, fmt.Errorf("retry request: %w", err)
	case state != StateFailed && state != StateExpired:
		return Request{}, fmt.Errorf("request is %s: %w", state, ErrRetryState)
	case !hasInput:
		return Request{}, fmt.Errorf("request is %s: %w", state, ErrRetryInputGone)
	case pending:
		return Request{}, fmt.Errorf("request is %s: %w", state, ErrRetryWebhookPending)
	}
	// Changed between the two statements (another retry won): say what it is now.
	return Request{}, fmt.Errorf("request is %s: %w", state, ErrRetryState)
}

// RequestRetryBulk retries at most BulkMax of the requests f selects that
// can be retried (see RequestRetry), newest first, in one statement.
func (db *DB) RequestRetryBulk(ctx context.Context, f RequestFilter) (BulkResult, error) {
	if !f.storable() {
		return BulkResult{}, nil
	}
	where, args := f.where(nil)
	args = append(args, BulkMax)
	var res BulkResult
	err := db.Pool.QueryRow(ctx, fmt.Sprintf(`
			WITH matched AS (
				SELECT id FROM async_requests WHERE %s AND %s
				ORDER BY created_at DESC, id DESC LIMIT $%d
			), changed AS (
				UPDATE async_requests SET %s
				FROM matched WHERE async_requests.id = matched.id AND %s
				RETURNING 1
			)
			SELECT (SELECT count(*) FROM matched), (SELECT count(*) FROM changed)`,
		where, retryable, len(args), retrySet, retryable), args...).Scan(&res.Matched, &res.Changed)
	if err != nil {
		return BulkResult{}, fmt.Errorf("retry requests: %w", err)
	}
	if res.Changed > 0 {
		db.wakeProcessors(ctx)
	}
	return res, nil
}

// RequestCancelBulk cancels at most BulkMax of the QUEUED requests f
// selects, newest first, in one statement. A claim racing it takes each
// row or leaves it, under the row lock, as with RequestCancel.
func (db *DB) RequestCancelBulk(ctx context.Context, f RequestFilter) (BulkResult, error) {
	if !f.storable() {
		return BulkResult{}, nil
	}
	where, args := f.where(nil)
	args = append(args, BulkMax, db.statusRetention().Seconds())
	var res BulkResult
	err := db.Pool.QueryRow(ctx, fmt.Sprintf(`
		WITH matched AS (
			SELECT id FROM async_requests WHERE %s AND state = 'QUEUED'
			ORDER BY created_at DESC, id DESC LIMIT $%d
		), changed AS (
			UPDATE async_requests SET `+cancelSet+`
			FROM matched WHERE async_requests.id = matched.id AND async_requests.state = 'QUEUED'
			RETURNING 1
		)
		SELECT (SELECT count(*) FROM matched), (SELECT count(*) FROM changed)`,
		where, len(args)-1, fmt.Sprintf("$%d", len(args))), args...).Scan(&res.Matched, &res.Changed)
	if err != nil {
		return BulkResult{}, fmt.Errorf("cancel requests: %w", err)
	}
	return res, nil
}

// DeploymentInfo is a deployment with its live queue figures.
type DeploymentInfo struct {
	Deployment
	Kind       ModelKind
	Paused     bool
	CreatedAt  time.Time
	Queued     int64
	InProgress int64
	// OldestQueuedAt is the creation time of its oldest QUEUED request;
	// nil when none is queued.
	OldestQueuedAt *time.Time
	// HasCredential reports whether an upstream credential is set; the
	// credential itself is never read here.
	HasCredential bool
}

// deploymentInfoSQL selects DeploymentInfo rows; the caller adds WHERE and
// ORDER BY. The queue figures walk the per-deployment partial indexes.
const deploymentInfoSQL = `
	SELECT d.id, d.model_id, d.url, d.max_concurrency, m.kind, d.paused, d.created_at,
		d.upstream_credential IS NOT NULL,
		array(SELECT e.name FROM environments e WHERE e.deployment_id = d.id ORDER BY e.name),
		(SELECT count(*) FROM async_requests a WHERE a.deployment_id = d.id AND a.state = 'QUEUED'),
		(SELECT count(*) FROM async_requests a WHERE a.deployment_id = d.id AND a.state = 'IN_PROGRESS'),
		(SELECT min(a.created_at) FROM async_requests a WHERE a.deployment_id = d.id AND a.state = 'QUEUED')
	FROM deployments d JOIN models m ON m.id = d.model_id`

func scanDeploymentInfo(row pgx.CollectableRow) (DeploymentInfo, error) {
	var d DeploymentInfo
	err := row.Scan(&d.ID, &d.ModelID, &d.URL, &d.MaxConcurrency, &d.Kind, &d.Paused, &d.CreatedAt,
		&d.HasCredential, &d.Environments, &d.Queued, &d.InProgress, &d.OldestQueuedAt)
	return d, err
}

// deploymentInfoSettings keep the queue figures on the partial indexes;
// ruling out sequential scans makes the plan's cost huge, which would
// JIT-compile a query of microseconds (about a second on a busy machine),
// so JIT is off too.
const deploymentInfoSettings = `SELECT set_config('enable_seqscan', 'off', true), set_config('jit', 'off', true)`

// DeploymentList returns an organization's deployments with their queue
// figures, by model and id.
func (db *DB) DeploymentList(ctx context.Context, organizationID int64) ([]DeploymentInfo, error) {
	ds, err := queryWith(ctx, db.Pool, deploymentInfoSettings, scanDeploymentInfo,
		deploymentInfoSQL+` WHERE m.organization_id = $1 ORDER BY d.model_id, d.id`, organizationID)
	if err != nil {
		return nil, fmt.Errorf("list deployments: %w", err)
	}
	return ds, nil
}

// DeploymentInfoGet returns one of an organization's deployments with its
// queue figures, or ErrNotFound.
func (db *DB) DeploymentInfoGet(ctx context.Context, organizationID int64, id string) (DeploymentInfo, error) {
	if !textStorable(id) {
		return DeploymentInfo{}, ErrNotFound
	}
	ds, err := queryWith(ctx, db.Pool, deploymentInfoSettings, scanDeploymentInfo,
		deploymentInfoSQL+` WHERE m.organization_id = $1 AND d.id = $2`, organizationID, id)
	if err != nil {
		return DeploymentInfo{}, fmt.Errorf("get deployment: %w", err)
	}
	if len(ds) == 0 {
		return DeploymentInfo{}, ErrNotFound
	}
	return ds[0], nil
}

// DeploymentUpdateParams changes a deployment; nil fields stay as they are.
type DeploymentUpdateParams struct {
	OrganizationID int64
	ID             string
	MaxConcurrency *int
	Paused         *bool
}

// DeploymentUpdate changes an organization's deployment, or returns
// ErrNotFound. Claims read both fields afresh, so the change takes effect
// on the next claim; resuming wakes processors.
func (db *DB) DeploymentUpdate(ctx context.Context, p DeploymentUpdateParams) error {
	if !textStorable(p.ID) {
		return ErrNotFound
	}
	tag, err := db.Pool.Exec(ctx, `
		UPDATE deployments d SET max_concurrency = coalesce($3, d.max_concurrency), paused = coalesce($4, d.paused)
		FROM models m WHERE m.id = d.model_id AND d.id = $1 AND m.organization_id = $2`,
		p.ID, p.OrganizationID, p.MaxConcurrency, p.Paused)
	if err != nil {
		return fmt.Errorf("update deployment: %w", describeCheck(err))
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	db.wakeProcessors(ctx)
	return nil
}

// wakeProcessors tells processors that requests may be claimable now,
// after the write that made them so has committed. A wake-up that fails
// is not an error of the write: the processors' poll finds the same work.
func (db *DB) wakeProcessors(ctx context.Context) {
	_ = db.Notify(ctx, Notice{Processors: true})
}

// DeploymentPurge cancels every QUEUED request of an organization's
// deployment, as RequestCancel does each, and returns how many; ErrNotFound
// for a deployment that is not the organization's.
func (db *DB) DeploymentPurge(ctx context.Context, organizationID int64, id string) (int64, error) {
	if _, err := db.DeploymentInfoGet(ctx, organizationID, id); err != nil {
		return 0, err
	}
	tag, err := db.Pool.Exec(ctx, `UPDATE async_requests SET `+fmt.Sprintf(cancelSet, "$3")+`
		WHERE deployment_id = $1 AND organization_id = $2 AND state = 'QUEUED'`,
		id, organizationID, db.statusRetention().Seconds())
	if err != nil {
		return 0, fmt.Errorf("purge queue: %w", err)
	}
	return tag.RowsAffected(), nil
}

// ModelGet returns an organization's model or chain, or ErrNotFound.
func (db *DB) ModelGet(ctx context.Context, organizationID int64, id string) (Model, error) {
	if !textStorable(id) {
		return Model{}, ErrNotFound
	}
	m := Model{ID: id, OrganizationID: organizationID}
	err := db.Pool.QueryRow(ctx, `SELECT kind, name FROM models WHERE id = $1 AND organization_id = $2`,
		id, organizationID).Scan(&m.Kind, &m.Name)
	if errors.Is(err, pgx.ErrNoRows) {
		return Model{}, ErrNotFound
	}
	if err != nil {
		return Model{}, fmt.Errorf("get model: %w", err)
	}
	return m, nil
}

// ModelUpdateName renames an organization's model, or returns ErrNotFound.
func (db *DB) ModelUpdateName(ctx context.Context, organizationID int64, id, name string) error {
	tag, err := db.Pool.Exec(ctx, `UPDATE models SET name = $3 WHERE id = $1 AND organization_id = $2`,
		id, organizationID, name)
	if err != nil {
		return fmt.Errorf("update model: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNotFound
	}
	return nil
}

// DeploymentPausedList returns the ids of every paused deployment, for the
// metrics.
func (db *DB) DeploymentPausedList(ctx context.Context) ([]string, error) {
	rows, err := db.Pool.Query(ctx, `SELECT id FROM deployments WHERE paused ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list paused deployments: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list paused deployments: %w", err)
	}
	return ids, nil
}
