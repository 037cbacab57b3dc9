package postgres

import (
	"encoding/json"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/openasync/asyncrequest/shared/requestid"
)

// RequestState is where a request is in its lifecycle. The values are the
// API's own and are enforced by a CHECK constraint on async_requests.state.
type RequestState string

const (
	// StateQueued: set by submit, by a retry or back-pressure wait, and when
	// a lease runs out or a processor hands work back on shutdown. Left by a
	// claim (IN_PROGRESS), a cancel (CANCELED) or the expiry sweep (EXPIRED).
	StateQueued RequestState = "QUEUED"
	// StateInProgress: set by a processor's claim; the processor holds a lease
	// on the row. Left when the attempt's outcome is recorded or the lease is
	// reclaimed.
	StateInProgress RequestState = "IN_PROGRESS"
	// StateSucceeded: set by a processor when the model answered 2xx. Final,
	// unless webhook delivery fails (WEBHOOK_FAILED).
	StateSucceeded RequestState = "SUCCEEDED"
	// StateFailed: set by a processor on a non-retryable answer or after the
	// last attempt. Final.
	StateFailed RequestState = "FAILED"
	// StateExpired: set by the expiry sweep when the queue deadline passed
	// while the request was QUEUED. Final.
	StateExpired RequestState = "EXPIRED"
	// StateCanceled: set by DELETE /async_request/{id} while QUEUED. Final.
	StateCanceled RequestState = "CANCELED"
	// StateWebhookFailed: set by the webhook deliverer when delivery of a
	// SUCCEEDED request's webhook is exhausted. Final.
	StateWebhookFailed RequestState = "WEBHOOK_FAILED"
)

// Final reports whether no processor will touch a request in state s again.
func (s RequestState) Final() bool {
	return s != StateQueued && s != StateInProgress
}

// WebhookState is where a request's webhook is. Enforced by a CHECK
// constraint on async_requests.webhook_state.
type WebhookState string

const (
	// WebhookPending: set at submit when a webhook_endpoint was given; the
	// request is not final yet or its delivery is under way.
	WebhookPending WebhookState = "PENDING"
	// WebhookSucceeded: set by the deliverer on a 2xx from the receiver.
	WebhookSucceeded WebhookState = "SUCCEEDED"
	// WebhookFailed: set by the deliverer when delivery is exhausted or the
	// receiver refused it.
	WebhookFailed WebhookState = "FAILED"
	// WebhookCanceled: set by a cancel; no webhook is sent.
	WebhookCanceled WebhookState = "CANCELED"
	// WebhookNone: set at submit when no webhook_endpoint was given.
	WebhookNone WebhookState = "NO_WEBHOOK_PROVIDED"
)

// Error codes recorded in a request's errors, one per failed attempt.
const (
	CodeModelNotReady       = "MODEL_NOT_READY"
	CodeModelPredictError   = "MODEL_PREDICT_ERROR"
	CodeModelUnavailable    = "MODEL_UNAVAILABLE"
	CodeModelPredictTimeout = "MODEL_PREDICT_TIMEOUT"
	CodeModelInvalidInput   = "MODEL_INVALID_INPUT"
	CodeModelDoesNotExist   = "MODEL_DOES_NOT_EXIST"
	CodeInternalServerError = "INTERNAL_SERVER_ERROR"
)

// AttemptError is one entry of a request's errors.
type AttemptError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Request is a row of async_requests.
type Request struct {
	ID              requestid.ID
	OrganizationID  int64
	ModelID         string
	IsChain         bool
	DeploymentID    string
	State           RequestState
	WebhookState    WebhookState
	WebhookEndpoint string // empty when none
	Priority        int
	DueAt           time.Time
	DeadlineAt      time.Time
	Attempts        int
	MaxAttempts     int
	InitialDelayMS  int
	MaxDelayMS      int
	Input           []byte // nil once the request is final
	Output          []byte // JSON; nil when none or no longer retained
	Errors          []AttemptError
	CreatedAt       time.Time
	StatusAt        time.Time
	StartedAt       *time.Time
	FinishedAt      *time.Time
	OutputExpiresAt *time.Time
}

// requestColumns lists the columns scanRequest reads, in order.
const requestColumns = `id, organization_id, model_id, is_chain, deployment_id, state, webhook_state,
	coalesce(webhook_endpoint, ''), priority, due_at, deadline_at, attempts, max_attempts,
	initial_delay_ms, max_delay_ms, input, output, errors, created_at, status_at, started_at,
	finished_at, output_expires_at`

type rowScanner interface{ Scan(dest ...any) error }

// storableText returns s as Postgres text and jsonb can hold it: valid
// UTF-8 without NUL, each run of invalid bytes and each NUL becoming
// U+FFFD. Messages quoting a model's or a receiver's answer go through it,
// since one unstorable byte would fail the whole statement that writes them.
func storableText(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// textStorable reports whether Postgres text can hold s as it is.
func textStorable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

func scanRequest(row rowScanner) (Request, error) {
	var r Request
	var errs []byte
	err := row.Scan(&r.ID, &r.OrganizationID, &r.ModelID, &r.IsChain, &r.DeploymentID, &r.State,
		&r.WebhookState, &r.WebhookEndpoint, &r.Priority, &r.DueAt, &r.DeadlineAt, &r.Attempts,
		&r.MaxAttempts, &r.InitialDelayMS, &r.MaxDelayMS, &r.Input, &r.Output, &errs, &r.CreatedAt,
		&r.StatusAt, &r.StartedAt, &r.FinishedAt, &r.OutputExpiresAt)
	if err != nil {
		return Request{}, err
	}
	if len(errs) > 0 {
		if err := json.Unmarshal(errs, &r.Errors); err != nil {
			return Request{}, err
		}
	}
	if r.Errors == nil {
		r.Errors = []AttemptError{}
	}
	return r, nil
}
