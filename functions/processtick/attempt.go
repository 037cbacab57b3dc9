package processtick

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/retry"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// Causes of an attempt's context ending.
var (
	// errAttemptTimeout: the per-attempt timeout (Config.ModelTimeout).
	errAttemptTimeout = errors.New("model did not answer within the attempt timeout")
	// errStopped: the processor stopped and its grace period ran out.
	errStopped = errors.New("processor stopped")
	// errLeaseLost: another processor reclaimed the request.
	errLeaseLost = errors.New("lease lost")
)

// resultKind is how an attempt ended, in the terms of SPEC §4's table; the
// retry policy's kinds.
type resultKind = retry.Kind

const (
	// resultSuccess: a 2xx answer.
	resultSuccess = retry.Success
	// resultNotReady: back-pressure (429, connection refused, DNS failure);
	// not an attempt.
	resultNotReady = retry.NotReady
	// resultRetryable: a failed attempt that is retried while attempts last.
	resultRetryable = retry.Retryable
	// resultFailed: a failure that ends the request at once.
	resultFailed = retry.Failed
	// resultStopped: the attempt was cut off (stop or lost lease); it is
	// handed back uncounted.
	resultStopped = retry.Stopped
)

// result is what one model call came to.
type result struct {
	kind   resultKind
	output []byte // JSON, for resultSuccess
	err    postgres.AttemptError
	// retryAfter is the model's Retry-After header (of a 429 or a 503); ""
	// when it sent none.
	retryAfter string
	// status is the model's HTTP status; 0 when it did not answer.
	status int
}

// label is the outcome label of the attempts metric.
func (r result) label() string {
	switch r.kind {
	case resultSuccess:
		return "success"
	case resultNotReady:
		return "not_ready"
	}
	return r.err.Code
}

// decide turns a call's result into the outcome to record, as the retry
// policy says.
func (p *Processor) decide(c postgres.ClaimedRequest, r result) postgres.AttemptOutcome {
	d := p.policy.Decide(retry.Attempt{
		Number: c.Attempt, MaxAttempts: c.MaxAttempts, InitialDelay: c.InitialDelay, MaxDelay: c.MaxDelay,
	}, retry.Answer{Kind: r.kind, RetryAfter: r.retryAfter}, p.clock.Now())
	o := postgres.AttemptOutcome{ID: c.ID, Delay: d.Delay, Uncount: d.Uncount}
	switch {
	case r.kind == resultSuccess:
		o.State, o.Output = postgres.StateSucceeded, r.output
	case d.Again:
		o.State = postgres.StateQueued
	default:
		o.State = postgres.StateFailed
	}
	if r.kind != resultSuccess && r.kind != resultStopped {
		o.Error = &r.err
	}
	return o
}

// call makes one attempt: it POSTs the input to the deployment and maps the
// answer per SPEC §4. The model sees a traceparent whose trace id is the
// request id. When the deployment has an upstream credential, it is sent as
// "Authorization: Api-Key <credential>", the scheme of the hosted platform;
// a credential that already contains a space (such as "Bearer xyz") is sent
// as the whole header value.
func (p *Processor) call(ctx context.Context, c postgres.ClaimedRequest) result {
	ctx, cancel := context.WithTimeoutCause(ctx, p.cfg.ModelTimeout, errAttemptTimeout)
	defer cancel()
	ctx, span := p.startSpan(ctx, c)
	defer span.End()

	r := p.post(ctx, c)
	switch r.kind {
	case resultSuccess:
		span.SetStatus(codes.Ok, "")
	case resultStopped:
		span.SetStatus(codes.Error, "attempt cut off")
	default:
		span.SetAttributes(attribute.String("error.code", r.err.Code))
		span.SetStatus(codes.Error, r.err.Message)
	}
	return r
}

func (p *Processor) post(ctx context.Context, c postgres.ClaimedRequest) (r result) {
	endpoint := "/predict"
	if c.IsChain {
		endpoint = "/run_remote"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.URL, "/")+endpoint, bytes.NewReader(c.Input))
	if err != nil {
		return failed(postgres.CodeModelPredictError, "the deployment's URL is not valid")
	}
	req.Header.Set("Content-Type", "application/json")
	cred, err := p.db.UpstreamCredentialOpen(c)
	if err != nil {
		p.log.Error("upstream credential not decrypted: the model is not called", "request_id", c.ID.String(), "error", err)
		return retryable(postgres.CodeInternalServerError, "the deployment's upstream credential could not be decrypted")
	}
	if cred != "" {
		if !strings.Contains(cred, " ") {
			cred = "Api-Key " + cred
		}
		req.Header.Set("Authorization", cred)
	}
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))

	resp, err := p.client.Do(req)
	if err != nil {
		return callError(ctx, err)
	}
	defer resp.Body.Close()
	defer func() { r.status = resp.StatusCode }()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, MaxOutputBytes+1))
	trace.SpanFromContext(ctx).SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))

	status := resp.StatusCode
	if status >= 200 && status < 300 {
		switch {
		case readErr != nil:
			return callError(ctx, readErr)
		case len(body) > MaxOutputBytes:
			return failed(postgres.CodeModelPredictError, fmt.Sprintf("model answered %d with more than %d bytes", status, MaxOutputBytes))
		case json.Valid(body):
			return result{kind: resultSuccess, output: body}
		}
		out, _ := json.Marshal(string(body))
		return result{kind: resultSuccess, output: out}
	}
	message := answerMessage(status, body)
	switch status {
	case http.StatusTooManyRequests:
		r := notReady(message)
		r.retryAfter = resp.Header.Get("Retry-After")
		return r
	case http.StatusInternalServerError:
		return retryable(postgres.CodeModelPredictError, message)
	case http.StatusServiceUnavailable:
		r := retryable(postgres.CodeModelUnavailable, message)
		r.retryAfter = resp.Header.Get("Retry-After")
		return r
	case http.StatusBadGateway:
		return retryable(postgres.CodeModelUnavailable, message)
	case http.StatusGatewayTimeout:
		return retryable(postgres.CodeModelPredictTimeout, message)
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return failed(postgres.CodeModelInvalidInput, message)
	case http.StatusNotFound:
		return failed(postgres.CodeModelDoesNotExist, message)
	}
	return failed(postgres.CodeModelPredictError, message)
}

// callError maps a call that got no (complete) answer. Connection refused
// and DNS failures mean the model is not up yet: back-pressure. Other
// network errors (a reset connection, a TLS failure) are treated like a 502.
func callError(ctx context.Context, err error) result {
	if ctx.Err() != nil {
		if context.Cause(ctx) == errAttemptTimeout {
			return retryable(postgres.CodeModelPredictTimeout, errAttemptTimeout.Error())
		}
		return result{kind: resultStopped}
	}
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return notReady("model refused the connection")
	case errors.As(err, &dnsErr):
		return notReady("model host not found: " + dnsErr.Name)
	}
	return retryable(postgres.CodeModelUnavailable, "model call failed: "+truncate(rootCause(err), 200))
}

// rootCause drops the "Post <url>:" prefix of client errors; the URL is the
// deployment's and adds nothing to the request's errors.
func rootCause(err error) string {
	var uerr interface{ Unwrap() error }
	if errors.As(err, &uerr) && uerr.Unwrap() != nil {
		return uerr.Unwrap().Error()
	}
	return err.Error()
}

func failed(code, message string) result {
	return result{kind: resultFailed, err: postgres.AttemptError{Code: code, Message: message}}
}

func retryable(code, message string) result {
	return result{kind: resultRetryable, err: postgres.AttemptError{Code: code, Message: message}}
}

func notReady(message string) result {
	return result{kind: resultNotReady, err: postgres.AttemptError{Code: postgres.CodeModelNotReady, Message: message}}
}

// answerMessage is "model answered 503", with the start of the body when
// there is one.
func answerMessage(status int, body []byte) string {
	msg := fmt.Sprintf("model answered %d", status)
	if snippet := strings.TrimSpace(truncate(string(body), 200)); snippet != "" {
		msg += ": " + snippet
	}
	return msg
}

// truncate cuts s to at most n bytes, on a rune boundary, replacing invalid
// UTF-8, and marks the cut with an ellipsis.
func truncate(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// startSpan starts the attempt's client span under the request's root span
// (telemetry.StartRequestSpan): the trace id is the request id. Without a
// recording tracer provider the span is that parent, whose span id still
// makes the traceparent header valid.
func (p *Processor) startSpan(ctx context.Context, c postgres.ClaimedRequest) (context.Context, trace.Span) {
	return telemetry.StartRequestSpan(ctx, p.tracer, "attempt",
		telemetry.Request{ID: c.ID, ModelID: c.ModelID, IsChain: c.IsChain, DeploymentID: c.DeploymentID},
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.Int("attempt", c.Attempt)))
}
