package console

import (
	"cmp"
	"context"
	"errors"
	"time"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/manage"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// Deployment is a row of the overview.
type Deployment struct {
	ID             string
	ModelID        string
	IsChain        bool
	URLHost        string
	Environments   []string
	MaxConcurrency int
	Paused         bool
	Queued         int64
	InProgress     int64
	// OldestQueued is the age of the oldest queued request; zero when none.
	OldestQueued time.Duration
}

// RequestFilter selects requests for the list and the bulk actions.
type RequestFilter struct {
	State        postgres.RequestState // empty: any
	DeploymentID string                // empty: any
}

// RequestSummary is a row of the requests page.
type RequestSummary struct {
	ID           requestid.ID
	ModelID      string
	IsChain      bool
	DeploymentID string
	State        postgres.RequestState
	WebhookState postgres.WebhookState
	Attempts     int
	CreatedAt    time.Time
	StatusAt     time.Time
}

// RequestPage is one page of requests, newest first.
type RequestPage struct {
	Requests   []RequestSummary
	NextCursor string // empty on the last page
}

// Attempt is one model call of a request.
type Attempt struct {
	Number     int
	Counted    bool // false for back-pressure answers, which are not attempts
	StartedAt  time.Time
	FinishedAt time.Time
	HTTPStatus int // 0 when the model did not answer
	Code       string
	Message    string
}

// Delivery is one webhook delivery attempt.
type Delivery struct {
	SentAt     time.Time
	Duration   time.Duration
	HTTPStatus int // 0 when the receiver did not answer
	Outcome    string
	Error      string
}

// RequestDetail is a request's whole life.
type RequestDetail struct {
	RequestSummary
	WebhookHost string // the webhook URL's host only; empty when none
	Priority    int
	MaxAttempts int
	DeadlineAt  time.Time
	FinishedAt  *time.Time
	Errors      []postgres.AttemptError
	Attempts    []Attempt
	Deliveries  []Delivery
	Input       []byte // nil when no longer retained
	Output      []byte // nil when none or no longer retained
}

// APIKey is a key as the keys page lists it; never the key itself.
type APIKey struct {
	ID         int64
	Prefix     string
	Name       string
	Scope      string
	CreatedAt  time.Time
	LastUsedAt *time.Time
	RevokedAt  *time.Time
}

// WebhookSecret is a secret as the secrets page lists it; never the secret.
type WebhookSecret struct {
	ID        int64
	CreatedAt time.Time
	ExpiresAt *time.Time
}

// MinuteStat is one minute of one deployment's completions.
type MinuteStat = postgres.CompletionMinute

// backend is the management code the console reads and acts through: a
// manage.Service, the same that serves the /v1 API and asyncctl, so the
// console has no SQL of its own. It turns the service's answers (made for
// JSON) into what the templates show.
type backend struct {
	svc *manage.Service
}

func (b backend) Deployments(ctx context.Context, a manage.Actor) ([]Deployment, error) {
	ds, err := b.svc.DeploymentList(ctx, a)
	if err != nil {
		return nil, err
	}
	out := make([]Deployment, 0, len(ds))
	for _, d := range ds {
		out = append(out, Deployment{
			ID: d.ID, ModelID: cmp.Or(d.ModelID, d.ChainID), IsChain: d.ChainID != "", URLHost: d.URLHost,
			Environments: d.Environments, MaxConcurrency: d.MaxConcurrency, Paused: d.Paused,
			Queued: d.Queued, InProgress: d.InProgress,
			OldestQueued: time.Duration(d.OldestQueuedAgeSeconds * float64(time.Second)),
		})
	}
	return out, nil
}

func (b backend) Completions(ctx context.Context, a manage.Actor, since time.Time) ([]MinuteStat, error) {
	return b.svc.CompletionsByMinute(ctx, a, since)
}

func summaryOf(r manage.Request) RequestSummary {
	return RequestSummary{
		ID: r.RequestID, ModelID: cmp.Or(r.ModelID, r.ChainID), IsChain: r.ChainID != "", DeploymentID: r.DeploymentID,
		State: r.Status, WebhookState: r.WebhookStatus, Attempts: r.Attempts, CreatedAt: r.CreatedAt.Time, StatusAt: r.StatusAt.Time,
	}
}

func (b backend) Requests(ctx context.Context, a manage.Actor, f RequestFilter, cursor string, limit int) (RequestPage, error) {
	p, err := b.svc.RequestList(ctx, a, manage.RequestListParams{
		State: string(f.State), DeploymentID: f.DeploymentID, Limit: limit, Cursor: cursor,
	})
	var apiErr *httpapi.Error
	if cursor != "" && errors.As(err, &apiErr) && apiErr.Field == "cursor" {
		return RequestPage{}, ErrBadCursor
	}
	if err != nil {
		return RequestPage{}, err
	}
	out := RequestPage{Requests: make([]RequestSummary, 0, len(p.Requests))}
	for _, r := range p.Requests {
		out.Requests = append(out.Requests, summaryOf(r))
	}
	if p.NextCursor != nil {
		out.NextCursor = *p.NextCursor
	}
	return out, nil
}

func (b backend) Request(ctx context.Context, a manage.Actor, id requestid.ID) (RequestDetail, error) {
	d, err := b.svc.RequestGet(ctx, a, id.String())
	if err != nil {
		return RequestDetail{}, notFoundAs(err)
	}
	// The stored input and output, for the previews: the same read by
	// primary key that the status API makes.
	row, err := b.svc.DB.RequestGetByID(ctx, a.OrganizationID, id)
	if err != nil {
		return RequestDetail{}, err
	}
	out := RequestDetail{
		RequestSummary: summaryOf(d.Request), WebhookHost: d.WebhookHost, Priority: d.Priority,
		MaxAttempts: row.MaxAttempts, DeadlineAt: row.DeadlineAt, FinishedAt: row.FinishedAt,
		Errors: d.Errors, Input: row.Input, Output: row.Output,
	}
	for _, at := range d.Attempts {
		out.Attempts = append(out.Attempts, Attempt{
			Number: at.Number, Counted: at.Counted, StartedAt: at.StartedAt.Time, FinishedAt: at.FinishedAt.Time,
			HTTPStatus: deref(at.HTTPStatus), Code: at.Code, Message: at.Message,
		})
	}
	for _, wd := range d.WebhookDeliveries {
		out.Deliveries = append(out.Deliveries, Delivery{
			SentAt: wd.SentAt.Time, Duration: time.Duration(wd.DurationMS) * time.Millisecond,
			HTTPStatus: deref(wd.HTTPStatus), Outcome: wd.Outcome, Error: wd.Error,
		})
	}
	return out, nil
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}

// notFoundAs turns the service's 404s into postgres.ErrNotFound, which the
// console answers with its own page.
func notFoundAs(err error) error {
	var apiErr *httpapi.Error
	if errors.As(err, &apiErr) && apiErr.Status == 404 {
		return postgres.ErrNotFound
	}
	return err
}

func (b backend) Cancel(ctx context.Context, a manage.Actor, id requestid.ID) (bool, string, error) {
	res, err := b.svc.RequestsCancel(ctx, a, manage.BulkParams{IDs: []string{id.String()}})
	if err != nil {
		return false, "", notFoundAs(err)
	}
	if res.Changed == 1 {
		return true, "", nil
	}
	r, err := b.svc.RequestGet(ctx, a, id.String())
	if err != nil {
		return false, "", notFoundAs(err)
	}
	return false, "The request is " + string(r.Status) + " and can no longer be canceled: only queued requests can.", nil
}

func (b backend) Retry(ctx context.Context, a manage.Actor, id requestid.ID) error {
	_, err := b.svc.RequestRetry(ctx, a, id.String())
	return notFoundAs(err)
}

func (b backend) Redeliver(ctx context.Context, a manage.Actor, id requestid.ID) error {
	return notFoundAs(b.svc.RequestRedeliver(ctx, a, id.String()))
}

func bulkParams(f RequestFilter, states ...postgres.RequestState) []manage.BulkParams {
	if f.State != "" {
		states = []postgres.RequestState{f.State}
	}
	var out []manage.BulkParams
	for _, st := range states {
		out = append(out, manage.BulkParams{Filter: &manage.BulkFilter{State: string(st), DeploymentID: f.DeploymentID}})
	}
	return out
}

func (b backend) BulkCancel(ctx context.Context, a manage.Actor, f RequestFilter) (matched, changed int64, err error) {
	if f.State != "" && f.State != postgres.StateQueued {
		return 0, 0, Refuse("Only queued requests can be canceled; filter by state QUEUED, or by no state.")
	}
	for _, p := range bulkParams(f, postgres.StateQueued) {
		res, err := b.svc.RequestsCancel(ctx, a, p)
		if err != nil {
			return matched, changed, err
		}
		matched, changed = matched+res.Matched, changed+res.Changed
	}
	return matched, changed, nil
}

func (b backend) BulkRetry(ctx context.Context, a manage.Actor, f RequestFilter) (matched, changed int64, err error) {
	if f.State != "" && f.State != postgres.StateFailed && f.State != postgres.StateExpired {
		return 0, 0, Refuse("Only failed and expired requests can be run again; filter by one of those states, or by no state.")
	}
	for _, p := range bulkParams(f, postgres.StateFailed, postgres.StateExpired) {
		res, err := b.svc.RequestsRetry(ctx, a, p)
		if err != nil {
			return matched, changed, err
		}
		matched, changed = matched+res.Matched, changed+res.Changed
	}
	return matched, changed, nil
}

func (b backend) Purge(ctx context.Context, a manage.Actor, deploymentID string) (int64, error) {
	res, err := b.svc.DeploymentPurge(ctx, a, deploymentID)
	return res.Canceled, notFoundAs(err)
}

func (b backend) SetPaused(ctx context.Context, a manage.Actor, deploymentID string, paused bool) error {
	_, err := b.svc.DeploymentUpdate(ctx, a, deploymentID, manage.DeploymentPatch{Paused: &paused})
	return notFoundAs(err)
}

func (b backend) SetConcurrency(ctx context.Context, a manage.Actor, deploymentID string, n int) error {
	_, err := b.svc.DeploymentUpdate(ctx, a, deploymentID, manage.DeploymentPatch{MaxConcurrency: &n})
	return notFoundAs(err)
}

func (b backend) APIKeys(ctx context.Context, a manage.Actor) ([]APIKey, error) {
	ks, err := b.svc.APIKeyList(ctx, a)
	if err != nil {
		return nil, err
	}
	out := make([]APIKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, APIKey{ID: k.ID, Prefix: k.Prefix, Name: k.Name, Scope: string(k.Scope),
			CreatedAt: k.CreatedAt.Time, LastUsedAt: timeOf(k.LastUsedAt)})
	}
	return out, nil
}

func timeOf(t *manage.Time) *time.Time {
	if t == nil {
		return nil
	}
	return &t.Time
}

func (b backend) APIKeyCreate(ctx context.Context, a manage.Actor, name, scope string) (string, error) {
	k, err := b.svc.APIKeyCreate(ctx, a, manage.APIKeyCreate{Name: name, Scope: scope})
	return k.Key, err
}

func (b backend) APIKeyRevoke(ctx context.Context, a manage.Actor, id int64) error {
	_, err := b.svc.APIKeyRevoke(ctx, a, id)
	return notFoundAs(err)
}

func (b backend) WebhookSecrets(ctx context.Context, a manage.Actor) ([]WebhookSecret, error) {
	ss, err := b.svc.WebhookSecretList(ctx, a)
	if err != nil {
		return nil, err
	}
	out := make([]WebhookSecret, 0, len(ss))
	for _, w := range ss {
		out = append(out, WebhookSecret{ID: w.ID, CreatedAt: w.CreatedAt.Time, ExpiresAt: timeOf(w.ExpiresAt)})
	}
	return out, nil
}

func (b backend) WebhookSecretRotate(ctx context.Context, a manage.Actor) (string, error) {
	s, err := b.svc.WebhookSecretRotate(ctx, a, "")
	return s.Secret, err
}
