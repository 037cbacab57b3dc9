// Package manage is the management service of SPEC §13: listing and
// inspecting requests, retrying and cancelling them one by one or in bulk,
// deployments with their live queue figures, pause, concurrency and purge,
// models and deployments created or updated, webhook secrets and API keys.
//
// The /v1 routes (functions/manage), asyncctl and the console all call a
// Service, so an action means the same from each. Every method is scoped to
// the Actor's organization: another organization's request, deployment or
// key is the same NotFound as a missing one. Actions (anything that
// changes a row) need an Actor of scope manage and are logged with who did
// them and how many rows they changed; reads take any scope.
//
// Results carry JSON tags: they are the /v1 answers and asyncctl's --json
// output as they are. Refusals are *httpapi.Error values, with the status
// the API answers and a message written for the operator.
package manage

import (
	"cmp"
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// Service is the management service over one database.
type Service struct {
	DB *postgres.DB
	// Logger records each action. Default slog.Default().
	Logger *slog.Logger
	// KeyRevoked, when set, is called with a key's id once it is revoked,
	// so this instance's authentication cache forgets it at once (other
	// instances forget it within httpapi.AuthCacheTTLDefault).
	KeyRevoked func(keyID int64)
	// WebhookSecretOverlap is how long a rotated-out webhook secret keeps
	// signing. Default postgres.WebhookSecretOverlapDefault.
	WebhookSecretOverlap time.Duration
}

// Actor is who calls the service: an API key (the /v1 routes and the
// console) or an operator (asyncctl, KeyID 0).
type Actor struct {
	OrganizationID int64
	KeyID          int64
	KeyName        string
	Scope          postgres.KeyScope
}

// CanManage reports whether the actor may change things.
func (a Actor) CanManage() bool { return a.Scope == postgres.ScopeManage }

// TimeFormat is how results write times, as the API does: RFC 3339 in UTC
// with microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Time is a time written in TimeFormat.
type Time struct{ time.Time }

// MarshalJSON writes t in TimeFormat.
func (t Time) MarshalJSON() ([]byte, error) {
	return json.Marshal(t.UTC().Format(TimeFormat))
}

// timePtr returns t as a *Time, nil for nil.
func timePtr(t *time.Time) *Time {
	if t == nil {
		return nil
	}
	return &Time{*t}
}

// Request is one request as the management API lists it: the status object
// of SPEC §3.
type Request struct {
	RequestID     requestid.ID            `json:"request_id"`
	ModelID       string                  `json:"model_id,omitempty"`
	ChainID       string                  `json:"chain_id,omitempty"`
	DeploymentID  string                  `json:"deployment_id"`
	Status        postgres.RequestState   `json:"status"`
	WebhookStatus postgres.WebhookState   `json:"webhook_status"`
	CreatedAt     Time                    `json:"created_at"`
	StatusAt      Time                    `json:"status_at"`
	Errors        []postgres.AttemptError `json:"errors"`
	Attempts      int                     `json:"attempts"`
	Priority      int                     `json:"priority"`
}

// RequestListParams filters and pages RequestList. Zero fields select
// everything.
type RequestListParams struct {
	// State is one of the request states of SPEC §3.
	State        string
	DeploymentID string
	ModelID      string
	// CreatedAfter and CreatedBefore bound the creation time, exclusive.
	CreatedAfter  time.Time
	CreatedBefore time.Time
	// Limit is the page size: default RequestListLimitDefault, at most
	// postgres.RequestListMax.
	Limit int
	// Cursor is a page's NextCursor, to read the page after it.
	Cursor string
}

// RequestListLimitDefault is the page size of RequestList when none is
// asked for.
const RequestListLimitDefault = 50

// RequestPage is a page of requests, newest first.
type RequestPage struct {
	Requests []Request `json:"requests"`
	// NextCursor reads the next page; nil on the last one.
	NextCursor *string `json:"next_cursor"`
}

// Attempt is one model attempt in a request's history.
type Attempt struct {
	Number int `json:"number"`
	// Counted is false for a back-pressure answer (429, refused
	// connection), which waits without using an attempt.
	Counted    bool   `json:"counted"`
	StartedAt  Time   `json:"started_at"`
	FinishedAt Time   `json:"finished_at"`
	DurationMS int64  `json:"duration_ms"`
	HTTPStatus *int   `json:"http_status"`
	Code       string `json:"code,omitempty"`
	Message    string `json:"message,omitempty"`
	Processor  string `json:"processor"`
}

// WebhookDelivery is one webhook delivery attempt in a request's history.
type WebhookDelivery struct {
	SentAt     Time   `json:"sent_at"`
	DurationMS int    `json:"duration_ms"`
	HTTPStatus *int   `json:"http_status"`
	Outcome    string `json:"outcome"`
	Error      string `json:"error,omitempty"`
}

// RequestDetail is a request with its history. Its attempts are the
// history of every attempt (SPEC §13), in place of the status object's count.
type RequestDetail struct {
	Request
	// WebhookHost is the webhook URL's host, never its path or query
	// (which may hold a token); empty when the request has no webhook.
	WebhookHost       string            `json:"webhook_host,omitempty"`
	Attempts          []Attempt         `json:"attempts"`
	WebhookDeliveries []WebhookDelivery `json:"webhook_deliveries"`
}

// BulkParams names the requests of a bulk action: exactly one of IDs (at
// most postgres.BulkMax) and Filter.
type BulkParams struct {
	IDs    []string    `json:"ids,omitempty"`
	Filter *BulkFilter `json:"filter,omitempty"`
}

// BulkFilter selects requests for a bulk action. Times are RFC 3339.
type BulkFilter struct {
	State         string `json:"state,omitempty"`
	DeploymentID  string `json:"deployment_id,omitempty"`
	ModelID       string `json:"model_id,omitempty"`
	CreatedAfter  string `json:"created_after,omitempty"`
	CreatedBefore string `json:"created_before,omitempty"`
}

// BulkResult is what a bulk action did: of the requests it matched (named
// and, when it read them, in a state the action applies to; at most
// postgres.BulkMax), how many it changed. A processor or another action
// may change some first, so Changed can be less.
type BulkResult struct {
	Matched int64 `json:"matched"`
	Changed int64 `json:"changed"`
}

// Deployment is a deployment with its live queue figures.
type Deployment struct {
	ID             string   `json:"id"`
	ModelID        string   `json:"model_id,omitempty"`
	ChainID        string   `json:"chain_id,omitempty"`
	URLHost        string   `json:"url_host"`
	Environments   []string `json:"environments"`
	MaxConcurrency int      `json:"max_concurrency"`
	Paused         bool     `json:"paused"`
	Queued         int64    `json:"num_queued_requests"`
	InProgress     int64    `json:"num_in_progress_requests"`
	// OldestQueuedAgeSeconds is how long its oldest QUEUED request has
	// waited; 0 when none is queued.
	OldestQueuedAgeSeconds float64 `json:"oldest_queued_age_seconds"`
	// HasUpstreamCredential reports whether a credential is set; the
	// credential is write-only.
	HasUpstreamCredential bool `json:"has_upstream_credential"`
	CreatedAt             Time `json:"created_at"`
}

// DeploymentPatch changes a deployment; nil fields stay as they are.
type DeploymentPatch struct {
	MaxConcurrency *int  `json:"max_concurrency"`
	Paused         *bool `json:"paused"`
}

// PurgeResult is how many QUEUED requests a purge canceled.
type PurgeResult struct {
	Canceled int64 `json:"canceled"`
}

// ModelPut creates or updates a model or chain.
type ModelPut struct {
	// Kind is "model" (default) or "chain"; it cannot change.
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// Model is a model or chain.
type Model struct {
	ID   string `json:"id"`
	Kind string `json:"kind"`
	Name string `json:"name"`
}

// DeploymentPut creates or updates a deployment.
type DeploymentPut struct {
	ModelID string `json:"model_id"`
	// URL is the deployment's base URL, http or https.
	URL string `json:"url"`
	// Environments are pointed at this deployment, taken from any other
	// deployment of the model.
	Environments []string `json:"environments"`
	// MaxConcurrency defaults to DeploymentMaxConcurrencyDefault.
	MaxConcurrency int `json:"max_concurrency"`
	// UpstreamCredential is write-only: nil keeps the one set, "" removes
	// it.
	UpstreamCredential *string `json:"upstream_credential"`
}

// DeploymentMaxConcurrencyDefault is a new deployment's max_concurrency when
// none is given.
const DeploymentMaxConcurrencyDefault = 8

// WebhookSecret describes a webhook secret, never the secret itself.
type WebhookSecret struct {
	ID        int64 `json:"id"`
	CreatedAt Time  `json:"created_at"`
	// ExpiresAt is when a rotated-out secret stops signing; nil for the
	// current one.
	ExpiresAt *Time `json:"expires_at"`
}

// NewWebhookSecret is a rotated-in secret, shown this once.
type NewWebhookSecret struct {
	WebhookSecret
	Secret string `json:"secret"`
}

// APIKey describes an API key, never the key itself.
type APIKey struct {
	ID         int64             `json:"id"`
	Prefix     string            `json:"prefix"`
	Name       string            `json:"name"`
	Scope      postgres.KeyScope `json:"scope"`
	CreatedAt  Time              `json:"created_at"`
	LastUsedAt *Time             `json:"last_used_at"`
}

// APIKeyCreate is a new API key.
type APIKeyCreate struct {
	Name string `json:"name"`
	// Scope is "invoke" or "manage" (default).
	Scope string `json:"scope"`
}

// NewAPIKey is a created key, shown this once.
type NewAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// RevokedAPIKey is a revoked key.
type RevokedAPIKey struct {
	APIKey
	RevokedAt Time `json:"revoked_at"`
}

func (s *Service) log() *slog.Logger { return cmp.Or(s.Logger, slog.Default()) }

// logAction records a management action: who (the key's id and name), what,
// and how many rows it changed.
func (s *Service) logAction(ctx context.Context, a Actor, action string, rows int64, attrs ...any) {
	s.log().InfoContext(ctx, "management action", append([]any{
		"action", action, "organization_id", a.OrganizationID, "key_id", a.KeyID, "key_name", a.KeyName, "rows", rows,
	}, attrs...)...)
}
