package deliverwebhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// maxResponseBytes is how much of a receiver's answer is read: enough to
// reuse the connection after a normal answer, little enough that a receiver
// cannot make us read without end.
const maxResponseBytes = 64 << 10

// maxReasonBody is how much of a refusing receiver's body goes into the
// outbox row's last_error.
const maxReasonBody = 200

// EncodePayload returns the exact bytes of del's webhook body for an
// attempt sent at sent. Only "time" depends on the attempt: the request id,
// model, "status", "data" and "errors" are the same on every retry and
// redelivery. "status" is the request's final state; a WEBHOOK_FAILED
// request being redelivered reports SUCCEEDED, the state its model reached.
func EncodePayload(del postgres.WebhookDelivery, sent time.Time) ([]byte, error) {
	p := webhook.Payload{
		RequestID:    del.RequestID.String(),
		DeploymentID: del.DeploymentID,
		Type:         webhook.EventType,
		Time:         webhook.SentAt(sent),
		Status:       string(del.State),
		Data:         del.Output,
		Errors:       make([]webhook.Error, len(del.Errors)),
	}
	if del.State == postgres.StateWebhookFailed {
		p.Status = string(postgres.StateSucceeded)
	}
	if del.IsChain {
		p.ChainID = del.ModelID
	} else {
		p.ModelID = del.ModelID
	}
	for i, e := range del.Errors {
		p.Errors[i] = webhook.Error{Code: e.Code, Message: e.Message}
	}
	return p.Encode()
}

// attempt is what one delivery attempt came to.
type attempt struct {
	classification
	// status is the receiver's HTTP status; 0 when none arrived.
	status int
	// sent is true when the request went out (or was tried).
	sent bool
	// sentAt is when the attempt was made: the payload's "time".
	sentAt time.Time
	// duration is how long the HTTP exchange took.
	duration time.Duration
	// canceled is true when the attempt was cut short because the
	// deliverer is stopping; the delivery is handed back, not judged.
	canceled bool
}

// deliver makes one attempt at del and hands its outcome to the session's
// completer, which records it with others in one statement. ctx ending (the
// deliverer stopping) hands the delivery back instead.
func (s *session) deliver(ctx context.Context, del postgres.WebhookDelivery) {
	d, c := s.d, &s.c
	log := d.log.With("request_id", del.RequestID.String(), "model_id", del.ModelID,
		"deployment_id", del.DeploymentID, "delivery_id", del.ID, "attempt", del.Attempt)
	ctx, span := telemetry.StartRequestSpan(ctx, d.tracer, "webhook",
		telemetry.Request{ID: del.RequestID, ModelID: del.ModelID, IsChain: del.IsChain, DeploymentID: del.DeploymentID},
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.Int("webhook.attempt", del.Attempt),
			attribute.String("http.request.method", http.MethodPost),
		))
	defer span.End()
	if u, err := url.Parse(del.WebhookEndpoint); err == nil {
		span.SetAttributes(attribute.String("server.address", u.Hostname()))
	}

	a := d.send(ctx, del)
	s.sent()
	if a.status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", a.status))
	}
	if a.verdict != verdictSuccess {
		span.SetStatus(codes.Error, a.reason)
	}

	if a.canceled {
		recCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recordTimeout)
		defer cancel()
		n, err := d.db.WebhookDeliveryRelease(recCtx, d.id, []int64{del.ID})
		s.done(1)
		if err != nil {
			log.Error("hand back webhook delivery", "error", err)
			return
		}
		c.handedBack.Add(int64(n))
		log.Info("handed webhook delivery back on shutdown")
		return
	}

	var delay time.Duration
	if a.verdict == verdictRetry {
		next, ok := NextDelay(d.schedule, del.Attempt, d.jitter())
		if ok {
			delay = max(next, a.retryAfter)
		} else {
			a.verdict = verdictFail
			a.reason = fmt.Sprintf("gave up after %d attempts: %s", del.Attempt, a.reason)
		}
	}
	if d.metrics != nil {
		d.metrics.WebhookDeliveries.WithLabelValues(a.verdict.String()).Inc()
		if a.sent {
			d.metrics.WebhookDuration.Observe(a.duration.Seconds())
		}
	}

	out := postgres.WebhookOutcome{ID: del.ID, SentAt: a.sentAt, Duration: a.duration, HTTPStatus: a.status}
	switch a.verdict {
	case verdictSuccess:
		out.Outcome = postgres.OutcomeSucceeded
		c.succeeded.Add(1)
		log.Info("webhook delivered", "status", a.status)
	case verdictRetry:
		out.Outcome, out.Delay, out.Error = postgres.OutcomeRetry, delay, a.reason
		c.retried.Add(1)
		log.Warn("webhook not delivered; will retry", "reason", a.reason, "retry_in", delay.Round(time.Millisecond).String())
	default:
		out.Outcome, out.Error = postgres.OutcomeFailed, a.reason
		c.failed.Add(1)
		log.Warn("webhook delivery failed", "reason", a.reason)
	}
	s.record(outcome{WebhookOutcome: out, log: log})
}

// send signs and sends del's webhook once and judges the answer.
func (d *Deliverer) send(ctx context.Context, del postgres.WebhookDelivery) attempt {
	now := d.now()
	fail := func(reason string) attempt {
		return attempt{classification: classification{verdict: verdictFail, reason: reason}, sentAt: now}
	}
	if del.WebhookEndpoint == "" {
		return fail("request has no webhook_endpoint")
	}
	u, err := url.Parse(del.WebhookEndpoint)
	switch {
	case err != nil:
		return fail("webhook_endpoint is not a valid URL")
	case u.Scheme == "https", u.Scheme == "http" && d.cfg.AllowHTTP:
	default:
		return fail("webhook_endpoint scheme " + u.Scheme + " is not allowed")
	}

	body, err := EncodePayload(del, now)
	if err != nil {
		return fail(err.Error())
	}
	secrets, err := d.secrets.get(ctx, del.OrganizationID)
	if err != nil {
		if ctx.Err() != nil {
			return attempt{canceled: true}
		}
		return attempt{classification: classification{verdict: verdictRetry, reason: "load webhook secrets: " + err.Error()}, sentAt: now}
	}
	if len(secrets) == 0 {
		return fail(errNoSecret.Error())
	}
	id := del.RequestID.String()
	headers, err := webhook.Signer{Secrets: secrets, Compat: d.cfg.CompatHeaders}.Headers(id, id, now, body)
	if err != nil {
		return fail("sign webhook: " + err.Error())
	}

	attemptCtx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(attemptCtx, http.MethodPost, del.WebhookEndpoint, bytes.NewReader(body))
	if err != nil {
		return fail("webhook_endpoint is not a valid URL")
	}
	req.Header = headers
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)

	start := time.Now()
	resp, err := d.client.Do(req)
	var answer []byte
	if err == nil {
		answer, _ = io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
		_ = resp.Body.Close()
	}
	a := attempt{sent: true, sentAt: now, duration: time.Since(start)}
	if err != nil {
		if ctx.Err() != nil {
			return attempt{canceled: true}
		}
		a.classification = classify(nil, err, d.now())
		return a
	}
	a.status = resp.StatusCode
	a.classification = classify(resp, nil, d.now())
	if a.verdict != verdictSuccess {
		if snippet := reasonSnippet(answer); snippet != "" {
			a.reason += ": " + snippet
		}
	}
	return a
}

// describeSendError words a failed exchange for last_error and the logs.
// The *url.Error wrapper is dropped: it repeats the URL, which may carry a
// receiver's token in its query.
func describeSendError(err error) string {
	var urlErr *url.Error
	if errors.As(err, &urlErr) {
		err = urlErr.Err
	}
	var netErr net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()) {
		return "timed out: " + err.Error()
	}
	return err.Error()
}

// reasonSnippet is the start of a receiver's answer, as valid single-line
// text.
func reasonSnippet(b []byte) string {
	if len(b) > maxReasonBody {
		b = b[:maxReasonBody]
	}
	s := strings.ToValidUTF8(string(b), string(utf8.RuneError))
	return strings.Join(strings.Fields(s), " ")
}
