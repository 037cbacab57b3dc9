package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/safehttp"
)

// Error is an answer of the API itself, other than a success: an HTTP
// status, a machine-readable code, a message written for the client, and
// the request field at fault, if one is. Everything in it is safe to send.
//
// It is sent in the original API's ErrorResponse shape plus two fields of
// ours:
//
//	{"error": Message, "error_code": ErrorCode(Status), "code": Code, "field": Field, "detail": Detail}
//
// with field and detail left out when empty.
type Error struct {
	Status int
	// Code is our fine-grained code, such as INVALID_FIELD; the coarse
	// error_code the original API's clients switch on follows from Status.
	Code    string
	Message string
	// Detail, when set, adds to Message.
	Detail string
	// Field names the body field (dotted for nested ones, such as
	// "inference_retry_config.max_attempts") or header at fault; empty when
	// no single field is.
	Field string
	// RetryAfter, when positive, is sent as Retry-After in whole seconds,
	// rounded up.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%d %s (%s): %s", e.Status, e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message)
}

// Is makes errors.Is match an *Error by status and code, so a copy of a
// sentinel with another message still matches it.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && t.Code == e.Code
}

// Sentinels for the API's own answers. Handlers return them (or an *Error
// made with Invalid) and WriteError turns them into responses.
var (
	ErrMalformedJSON   = &Error{Status: http.StatusBadRequest, Code: "MALFORMED_JSON", Message: "the request body is not valid JSON"}
	ErrContentEncoding = &Error{Status: http.StatusUnsupportedMediaType, Code: "UNSUPPORTED_CONTENT_ENCODING",
		Message: "the request body must not be compressed: send it without Content-Encoding"}
	ErrUnauthorized     = &Error{Status: http.StatusUnauthorized, Code: "UNAUTHORIZED", Message: "missing or invalid API key: send Authorization: Api-Key <key>"}
	ErrNotFound         = &Error{Status: http.StatusNotFound, Code: "NOT_FOUND", Message: "not found"}
	ErrMethodNotAllowed = &Error{Status: http.StatusMethodNotAllowed, Code: "METHOD_NOT_ALLOWED", Message: "method not allowed on this path"}
	ErrBodyTooLarge     = &Error{Status: http.StatusRequestEntityTooLarge, Code: "BODY_TOO_LARGE", Message: "the request body is larger than 256 KiB"}
	// ErrResponseTooLarge answers, on AWS Lambda, a result larger than a
	// function can return.
	ErrResponseTooLarge = &Error{Status: http.StatusBadGateway, Code: "RESPONSE_TOO_LARGE",
		Message: "the answer is larger than AWS Lambda can return (6 MiB); the webhook carries the output in full"}
	ErrInvalid      = &Error{Status: http.StatusBadRequest, Code: "INVALID_FIELD", Message: "a field is invalid"}
	ErrUnknownField = &Error{Status: http.StatusBadRequest, Code: "UNKNOWN_FIELD", Message: "unknown field"}
	ErrRateLimited  = &Error{Status: http.StatusTooManyRequests, Code: "RATE_LIMITED", Message: "too many requests for this organization; retry after the time in Retry-After"}
	ErrUnavailable  = &Error{Status: http.StatusServiceUnavailable, Code: "SERVICE_UNAVAILABLE", Message: "the service is temporarily unavailable; retry after the time in Retry-After", RetryAfter: UnavailableRetryAfter}
	errInternal     = &Error{Status: http.StatusInternalServerError, Code: "INTERNAL_ERROR", Message: "internal error"}
)

// UnavailableRetryAfter is the Retry-After sent with a 503 when the database
// cannot be reached.
const UnavailableRetryAfter = 5 * time.Second

// Invalid returns a 400 naming field, with message (which should name the
// field too, so it reads on its own).
func Invalid(field, message string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: ErrInvalid.Code, Field: field, Message: message}
}

// NotFound returns a 404 with message. Use one constant message per kind of
// thing, so that a missing thing and another organization's answer the same
// bytes.
func NotFound(message string) *Error {
	return &Error{Status: http.StatusNotFound, Code: ErrNotFound.Code, Message: message}
}

// The values of the original API's ErrorResponse.error_code that this API
// sends, spelled as that enum spells them.
const (
	ErrorCodeClient          = "client_error"
	ErrorCodeUnauthorized    = "unauthorized"
	ErrorCodePayloadTooLarge = "payload_too_large"
	ErrorCodeRateLimited     = "rate_limited"
	ErrorCodeInternal        = "internal_baseten_error"
)

// ErrorCode returns the original API's error_code for an answer of status:
// client_error for other 4xx (400, 404, 405, 409, 415), and
// internal_baseten_error for every 5xx.
func ErrorCode(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return ErrorCodeUnauthorized
	case status == http.StatusRequestEntityTooLarge:
		return ErrorCodePayloadTooLarge
	case status == http.StatusTooManyRequests:
		return ErrorCodeRateLimited
	case status >= 400 && status < 500:
		return ErrorCodeClient
	}
	return ErrorCodeInternal
}

// ErrorBody is the JSON of every non-2xx answer.
type ErrorBody struct {
	Error     string `json:"error"`
	ErrorCode string `json:"error_code"`
	Code      string `json:"code"`
	Field     string `json:"field,omitempty"`
	Detail    string `json:"detail,omitempty"`
}

// Body returns the JSON body e is sent as.
func (e *Error) Body() ErrorBody {
	return ErrorBody{Error: e.Message, ErrorCode: ErrorCode(e.Status), Code: e.Code, Field: e.Field, Detail: e.Detail}
}

// APIError maps any error to the answer it deserves. It is the one place
// where errors become statuses:
//
//   - an *Error is answered as it is;
//   - postgres.ErrNotFound is a 404;
//   - postgres.ErrIdempotencyMismatch is a 400 on Idempotency-Key, and
//     postgres.ErrIdempotencyInFlight a 409;
//   - the redelivery refusals of postgres.RequestWebhookRedeliver are 409s;
//   - a *safehttp.URLError is a 400 on webhook_endpoint;
//   - an unreachable database (postgres.IsUnavailable) or a timed-out
//     request is a 503 with Retry-After;
//   - anything else is a 500 with a generic message. The error itself is
//     only logged, never sent.
//
// The second result reports whether err was unexpected, so that the caller
// logs it.
func APIError(err error) (*Error, bool) {
	var apiErr *Error
	var urlErr *safehttp.URLError
	switch {
	case errors.As(err, &apiErr):
		return apiErr, false
	case errors.Is(err, postgres.ErrNotFound):
		return ErrNotFound, false
	case errors.Is(err, postgres.ErrIdempotencyMismatch):
		return &Error{Status: http.StatusBadRequest, Code: "IDEMPOTENCY_KEY_REUSED", Field: "Idempotency-Key",
			Message: "this Idempotency-Key was used in the last 24 h with a different request"}, false
	case errors.Is(err, postgres.ErrIdempotencyInFlight):
		return &Error{Status: http.StatusConflict, Code: "IDEMPOTENCY_KEY_IN_FLIGHT", Field: "Idempotency-Key",
			Message: "a request with this Idempotency-Key is still being submitted; retry shortly"}, false
	case errors.Is(err, postgres.ErrRedeliverNoWebhook):
		return &Error{Status: http.StatusConflict, Code: "NO_WEBHOOK_ENDPOINT",
			Message: "the request has no webhook_endpoint"}, false
	case errors.Is(err, postgres.ErrRedeliverNotFinal):
		return &Error{Status: http.StatusConflict, Code: "REQUEST_NOT_FINISHED",
			Message: "only a SUCCEEDED, FAILED, EXPIRED or WEBHOOK_FAILED request has a webhook to redeliver"}, false
	case errors.Is(err, postgres.ErrRedeliverOutputGone):
		return &Error{Status: http.StatusConflict, Code: "OUTPUT_EXPIRED",
			Message: "the request's output is no longer retained, so its webhook cannot be redelivered"}, false
	case errors.As(err, &urlErr):
		return Invalid("webhook_endpoint", urlErr.Message), false
	case postgres.IsUnavailable(err), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return ErrUnavailable, errors.Is(err, context.DeadlineExceeded)
	}
	return errInternal, true
}

// WriteError answers r with err, as APIError maps it, logging unexpected
// errors (with what the handler put in the request's context, never a
// credential) on log, which may be nil.
func WriteError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e, unexpected := APIError(err)
	if log != nil {
		switch {
		case unexpected:
			log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
			// net/http canceled the request: the client hung up (or
			// half-closed), and the database may be fine.
			log.InfoContext(r.Context(), "client went away", "method", r.Method, "path", r.URL.Path)
		case e.Status == http.StatusServiceUnavailable:
			log.WarnContext(r.Context(), "database unavailable", "method", r.Method, "path", r.URL.Path, "error", err)
		}
	}
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(e.RetryAfter)))
	}
	Encode(w, e.Status, e.Body())
}

// retryAfterSeconds rounds d up to whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

// ResponseTooLarge answers with ErrResponseTooLarge, logging it on log (which
// may be nil): a function's replacement for an answer Lambda can't return.
func ResponseTooLarge(log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if log != nil {
			log.WarnContext(r.Context(), "answer too large for AWS Lambda", "method", r.Method, "path", r.URL.Path)
		}
		WriteError(w, r, nil, ErrResponseTooLarge)
	})
}
