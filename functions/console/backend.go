package console

import (
	"context"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// Actor is who acts: the signed-in session's organization and key.
type Actor struct {
	OrganizationID int64
	APIKeyID       int64
	KeyName        string
}

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

// Backend is the management code the console reads and acts through, the
// same that serves the /v1 API and asyncctl; the console has no SQL of its
// own. Every method is scoped to the actor's organization: another
// organization's request, deployment or key is postgres.ErrNotFound.
type Backend interface {
	Deployments(ctx context.Context, a Actor) ([]Deployment, error)
	Completions(ctx context.Context, a Actor, since time.Time) ([]MinuteStat, error)
	Requests(ctx context.Context, a Actor, f RequestFilter, cursor string, limit int) (RequestPage, error)
	Request(ctx context.Context, a Actor, id requestid.ID) (RequestDetail, error)

	Cancel(ctx context.Context, a Actor, id requestid.ID) (canceled bool, message string, err error)
	Retry(ctx context.Context, a Actor, id requestid.ID) error
	Redeliver(ctx context.Context, a Actor, id requestid.ID) error
	BulkCancel(ctx context.Context, a Actor, f RequestFilter) (matched, changed int64, err error)
	BulkRetry(ctx context.Context, a Actor, f RequestFilter) (matched, changed int64, err error)
	Purge(ctx context.Context, a Actor, deploymentID string) (canceled int64, err error)
	SetPaused(ctx context.Context, a Actor, deploymentID string, paused bool) error
	SetConcurrency(ctx context.Context, a Actor, deploymentID string, n int) error

	APIKeys(ctx context.Context, a Actor) ([]APIKey, error)
	APIKeyCreate(ctx context.Context, a Actor, name, scope string) (key string, err error)
	APIKeyRevoke(ctx context.Context, a Actor, id int64) error
	WebhookSecrets(ctx context.Context, a Actor) ([]WebhookSecret, error)
	WebhookSecretRotate(ctx context.Context, a Actor) (secret string, err error)
}
