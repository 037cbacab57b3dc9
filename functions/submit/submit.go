// Package submit is the handler that accepts inference requests: POST
// .../async_predict for models and .../async_run_remote for chains. It
// authenticates the caller, validates the body, resolves the deployment,
// enforces the organization's limits, and queues the request in one
// commit shared with the other submits arriving meanwhile (group commit,
// postgres.RequestBatcher), then wakes the processors, answering 201 with
// the new request's id.
package submit

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/safehttp"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// Defaults and bounds of the submit body (SPEC §3).
const (
	PriorityDefault       = 0
	MaxTimeInQueueDefault = 600 * time.Second
	MaxAttemptsDefault    = 3
	InitialDelayMSDefault = 1000
	MaxDelayMSDefault     = 5000
)

// ActiveCountTTLDefault is how long one instance reuses an organization's
// count of QUEUED and IN_PROGRESS requests before counting again, so the
// cap costs one count per organization per second, not one per submit.
// Submits accepted meanwhile are added to the reused count.
const ActiveCountTTLDefault = time.Second

// MaxActiveRequestsDefault is the per-organization cap on QUEUED plus
// IN_PROGRESS requests when Options.API sets none.
const MaxActiveRequestsDefault = 50_000

// SubmitTimeoutDefault bounds the work of a submit after its body is read
// and validated (resolving the deployment, the cap, the insert), which no
// longer depends on the client's connection.
const SubmitTimeoutDefault = 15 * time.Second

// DeploymentCacheTTLDefault is how long one instance reuses the deployment
// a submit URL resolved to, saving a query per submit. An environment
// re-pointed to another deployment takes effect within it; a deleted
// deployment takes effect at once (the insert checks that it exists).
// Unknown names are not cached.
const DeploymentCacheTTLDefault = 5 * time.Second

// deploymentCacheMax bounds the deployment cache; past it, it starts over.
const deploymentCacheMax = 10_000

// MaxIdempotencyKeyLength bounds the Idempotency-Key header.
const MaxIdempotencyKeyLength = 255

// Options are New's dependencies.
type Options struct {
	DB *postgres.DB
	// API holds the rate limit and the active-request cap; zero values
	// take the configuration's defaults.
	API config.API
	// Webhook holds the webhook URL policy (AllowHTTP, AllowPrivate).
	Webhook config.Webhook
	Logger  *slog.Logger
	// Metrics, when set, counts accepted submits.
	Metrics *telemetry.Metrics
	// TracerProvider makes the submit span; default the global provider.
	TracerProvider trace.TracerProvider
	// AuthCache is the instance's API key cache, shared with the other
	// handlers of the process so a revoked key is refused at once on all
	// of them; nil makes one for this handler.
	AuthCache *httpapi.AuthCache
	// Now is the clock of the caches and the rate limiter; default
	// time.Now.
	Now func() time.Time
	// Batcher group-commits the submits; default a
	// postgres.RequestBatcher of DB with its default options.
	Batcher *postgres.RequestBatcher
}

// New returns the submit handler, serving the routes of SPEC §3 under
// either form of model routing (Host or path prefix).
func New(o Options) http.Handler {
	s := &server{
		db:     o.DB,
		log:    cmp.Or(o.Logger, slog.Default()),
		policy: safehttp.Policy{AllowHTTP: o.Webhook.AllowHTTP, AllowPrivate: o.Webhook.AllowPrivate},
		cap:    cmp.Or(o.API.MaxActiveRequests, MaxActiveRequestsDefault),
		now:    o.Now,
		active: map[int64]activeCount{},
		deps:   map[postgres.DeploymentTarget]cachedDeployment{},
		m:      o.Metrics,
	}
	s.batcher = o.Batcher
	if s.batcher == nil && o.DB != nil {
		s.batcher = postgres.NewRequestBatcher(o.DB, postgres.RequestBatcherOptions{})
	}
	if s.now == nil {
		s.now = time.Now
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	s.tracer = tp.Tracer("github.com/openasync/asyncrequest/functions/submit")

	auth := httpapi.Authenticate(httpapi.AuthOptions{DB: o.DB, Logger: s.log, Now: s.now, Cache: o.AuthCache})
	limit := httpapi.RateLimit(cmp.Or(o.API.SubmitRate, httpapi.SubmitRateDefault),
		cmp.Or(o.API.SubmitBurst, httpapi.SubmitBurstDefault), s.now)
	return httpapi.NewRouter(httpapi.RouterOptions{
		Function: httpapi.FunctionSubmit,
		Handlers: map[string]http.Handler{
			httpapi.HandlerSubmitModel: limit(s.submit(postgres.KindModel)),
			httpapi.HandlerSubmitChain: limit(s.submit(postgres.KindChain)),
		},
		Authenticate: func(httpapi.Auth) func(http.Handler) http.Handler { return auth },
	})
}

type server struct {
	db      *postgres.DB
	batcher *postgres.RequestBatcher
	log     *slog.Logger
	policy  safehttp.Policy
	cap     int
	now     func() time.Time
	tracer  trace.Tracer
	m       *telemetry.Metrics

	mu     sync.Mutex
	active map[int64]activeCount
	deps   map[postgres.DeploymentTarget]cachedDeployment
}

type cachedDeployment struct {
	d  postgres.Deployment
	at time.Time
}

type activeCount struct {
	n  int
	at time.Time
}

// body is the submit body. Pointers tell an absent (or null) field from a
// zero one.
type body struct {
	ModelInput            json.RawMessage `json:"model_input"`
	WebhookEndpoint       *string         `json:"webhook_endpoint"`
	Priority              *int            `json:"priority"`
	MaxTimeInQueueSeconds *int            `json:"max_time_in_queue_seconds"`
	InferenceRetryConfig  *retryConfig    `json:"inference_retry_config"`
}

type retryConfig struct {
	MaxAttempts    *int `json:"max_attempts"`
	InitialDelayMS *int `json:"initial_delay_ms"`
	MaxDelayMS     *int `json:"max_delay_ms"`
}

// errNoTarget answers a submit whose URL names no model.
var errNoTarget = httpapi.NotFound("no model in the request: use the Host model-{model_id}.<domain> (chain-{chain_id}.<domain>) or the path prefix /models/{model_id}/ (/chains/{chain_id}/)")

// errNoDeployment answers every unknown (or another organization's) model,
// chain, environment or deployment alike.
var errNoDeployment = httpapi.NotFound("no such model, environment or deployment")

func (s *server) submit(kind postgres.ModelKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		org := httpapi.OrganizationID(ctx)
		target, ok := httpapi.TargetFrom(ctx)
		if !ok {
			httpapi.WriteError(w, r, s.log, errNoTarget)
			return
		}
		var b body
		raw, err := httpapi.Decode(w, r, httpapi.MaxBodyBytesDefault, &b)
		if err != nil {
			httpapi.WriteError(w, r, s.log, err)
			return
		}
		params, err := s.validate(b)
		if err != nil {
			httpapi.WriteError(w, r, s.log, err)
			return
		}
		if len(r.Header.Values("Idempotency-Key")) > 1 {
			httpapi.WriteError(w, r, s.log, httpapi.RepeatedHeader("Idempotency-Key"))
			return
		}
		idemKey := r.Header.Get("Idempotency-Key")
		if len(idemKey) > MaxIdempotencyKeyLength || strings.ContainsFunc(idemKey, func(c rune) bool { return c < 0x20 || c > 0x7e }) {
			httpapi.WriteError(w, r, s.log, httpapi.Invalid("Idempotency-Key",
				fmt.Sprintf("Idempotency-Key must be at most %d printable ASCII characters", MaxIdempotencyKeyLength)))
			return
		}
		if target.Kind != kind {
			httpapi.WriteError(w, r, s.log, errNoDeployment)
			return
		}
		// The body is read and valid: from here the submit runs to its end
		// even if the client goes away (net/http cancels r.Context() when a
		// client half-closes after sending, as scripts do), so a request
		// that gets stored is answered 201 to whoever is still listening,
		// and never reported as a 503 it was not.
		client := ctx
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), SubmitTimeoutDefault)
		defer cancel()
		named := target // as the URL names it, before a regional Host is split
		var dep postgres.Deployment
		if httpapi.IsRegional(r) {
			target, dep, err = httpapi.ResolveDeployment(ctx, s.db, r, org, target)
		} else {
			dep, err = s.resolve(ctx, httpapi.DeploymentTarget(r, org, target))
		}
		if errors.Is(err, postgres.ErrNotFound) {
			err = errNoDeployment
		}
		if err != nil {
			httpapi.WriteError(w, r, s.log, err)
			return
		}

		params.ID = requestid.New()
		params.OrganizationID = org
		params.ModelID = target.ID
		params.IsChain = target.IsChain()
		params.DeploymentID = dep.ID
		params.Input = []byte(b.ModelInput)
		if idemKey != "" {
			params.IdempotencyKey = idemKey
			// The key stands for this body sent to this URL: the same body sent
			// to another model or environment is a different request. (The
			// URL, not the deployment it resolves to, so a replay after a
			// promotion still replays.)
			h := sha256.New()
			fmt.Fprintf(h, "%s\x00%s\x00%s\x00", named.Kind, named.ID, r.URL.Path)
			h.Write(raw)
			params.BodyHash = h.Sum(nil)
		}

		ctx, span := s.startSpan(ctx, params)
		defer span.End()
		r = r.WithContext(ctx)

		// A submit the organization's cap refuses may still be the retry
		// of one that was accepted: with an Idempotency-Key it gets its
		// original answer.
		var res postgres.RequestInsertResult
		err = s.admit(ctx, org)
		admitted := err == nil
		switch {
		case admitted:
			res, err = s.batcher.Insert(ctx, params)
			if errors.Is(err, postgres.ErrNotFound) {
				s.forget(httpapi.DeploymentTarget(r, org, target))
				err = errNoDeployment
			}
		case idemKey != "":
			res, err = s.replay(ctx, org, params, err)
		}
		if admitted && (err != nil || res.Replayed) {
			s.release(org)
		}
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "not accepted")
			httpapi.WriteError(w, r, s.log, err)
			return
		}
		if res.Replayed {
			span.SetAttributes(attribute.Bool("idempotent_replay", true), attribute.String("original_request_id", res.ID.String()))
			w.Header().Set("Idempotent-Replayed", "true")
		} else if s.m != nil {
			s.m.Submitted.WithLabelValues(dep.ID).Inc()
		}
		s.log.DebugContext(ctx, "request submitted", "request_id", res.ID.String(), "model_id", target.ID,
			"deployment_id", dep.ID, "replayed", res.Replayed)
		if client.Err() != nil {
			s.log.InfoContext(ctx, "client went away before its answer; the request is stored",
				"request_id", res.ID.String(), "model_id", target.ID, "deployment_id", dep.ID)
		}
		httpapi.Encode(w, http.StatusCreated, struct {
			RequestID requestid.ID `json:"request_id"`
		}{res.ID})
	}
}

// resolve is DeploymentResolve through the instance's cache of
// DeploymentCacheTTLDefault.
func (s *server) resolve(ctx context.Context, t postgres.DeploymentTarget) (postgres.Deployment, error) {
	now := s.now()
	s.mu.Lock()
	c, ok := s.deps[t]
	s.mu.Unlock()
	if ok && !now.Before(c.at) && now.Sub(c.at) < DeploymentCacheTTLDefault {
		return c.d, nil
	}
	d, err := s.db.DeploymentResolve(ctx, t)
	if err != nil {
		return d, err
	}
	s.mu.Lock()
	if len(s.deps) >= deploymentCacheMax {
		clear(s.deps)
	}
	s.deps[t] = cachedDeployment{d: d, at: now}
	s.mu.Unlock()
	return d, nil
}

// forget drops a deployment the insert found gone.
func (s *server) forget(t postgres.DeploymentTarget) {
	s.mu.Lock()
	delete(s.deps, t)
	s.mu.Unlock()
}

// validate applies the defaults and bounds of SPEC §3 to b.
func (s *server) validate(b body) (postgres.RequestInsertParams, error) {
	if len(b.ModelInput) == 0 {
		return postgres.RequestInsertParams{}, httpapi.Invalid("model_input", "model_input is required")
	}
	var rc retryConfig
	if b.InferenceRetryConfig != nil {
		rc = *b.InferenceRetryConfig
	}
	p := postgres.RequestInsertParams{
		Priority:       orDefault(b.Priority, PriorityDefault),
		MaxTimeInQueue: time.Duration(orDefault(b.MaxTimeInQueueSeconds, int(MaxTimeInQueueDefault/time.Second))) * time.Second,
		MaxAttempts:    orDefault(rc.MaxAttempts, MaxAttemptsDefault),
		InitialDelayMS: orDefault(rc.InitialDelayMS, InitialDelayMSDefault),
		MaxDelayMS:     orDefault(rc.MaxDelayMS, MaxDelayMSDefault),
	}
	for _, c := range []struct {
		field    string
		v, lo, h int
	}{
		{"priority", p.Priority, 0, 2},
		{"max_time_in_queue_seconds", int(p.MaxTimeInQueue / time.Second), 10, 259200},
		{"inference_retry_config.max_attempts", p.MaxAttempts, 1, 10},
		{"inference_retry_config.initial_delay_ms", p.InitialDelayMS, 0, 10000},
		{"inference_retry_config.max_delay_ms", p.MaxDelayMS, 0, 60000},
	} {
		if c.v < c.lo || c.v > c.h {
			return postgres.RequestInsertParams{}, httpapi.Invalid(c.field,
				fmt.Sprintf("%s must be between %d and %d, not %d", c.field, c.lo, c.h, c.v))
		}
	}
	// "" is no webhook, as null is: the original API's samples send it.
	if b.WebhookEndpoint != nil && *b.WebhookEndpoint != "" {
		if err := safehttp.CheckURL(*b.WebhookEndpoint, s.policy); err != nil {
			return postgres.RequestInsertParams{}, err
		}
		p.WebhookEndpoint = *b.WebhookEndpoint
	}
	return p, nil
}

// orDefault returns *p, or def when p is nil. (cmp.Or would take an
// explicit 0, a valid value for several fields, for "unset".)
func orDefault[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

// startSpan starts the submit span in the trace whose id is the request id,
// under the request's root span, which it exports (and ends at once), so
// the submit, every attempt and every webhook delivery of a request are
// siblings of one trace.
func (s *server) startSpan(ctx context.Context, p postgres.RequestInsertParams) (context.Context, trace.Span) {
	r := telemetry.Request{ID: p.ID, ModelID: p.ModelID, IsChain: p.IsChain, DeploymentID: p.DeploymentID}
	_, root := telemetry.StartRequestRoot(ctx, s.tracer, r)
	root.End()
	return telemetry.StartRequestSpan(ctx, s.tracer, "submit", r, trace.WithSpanKind(trace.SpanKindServer))
}

// admit enforces the organization's cap on QUEUED plus IN_PROGRESS
// requests. It counts at most once per ActiveCountTTLDefault and adds this
// instance's submits to the count in between, so the cap is exact for one
// instance and overshoots by at most what other instances accept within
// that second.
func (s *server) admit(ctx context.Context, org int64) error {
	now := s.now()
	s.mu.Lock()
	c, ok := s.active[org]
	s.mu.Unlock()
	if !ok || now.Before(c.at) || now.Sub(c.at) >= ActiveCountTTLDefault {
		n, err := s.db.RequestCountActive(ctx, org, s.cap)
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.active[org] = activeCount{n: n, at: now}
		s.mu.Unlock()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c = s.active[org]
	if c.n >= s.cap {
		return &httpapi.Error{Status: http.StatusTooManyRequests, Code: "TOO_MANY_ACTIVE_REQUESTS",
			Message:    fmt.Sprintf("the organization has %d QUEUED and IN_PROGRESS requests, its cap; retry after the time in Retry-After", s.cap),
			RetryAfter: ActiveCountTTLDefault}
	}
	c.n++
	s.active[org] = c
	return nil
}

// replay answers a submit with an Idempotency-Key that admit refused:
// with the original request when the key was used with the same body,
// ErrIdempotencyMismatch when with another, and refused otherwise.
func (s *server) replay(ctx context.Context, org int64, p postgres.RequestInsertParams, refused error) (postgres.RequestInsertResult, error) {
	id, hash, err := s.db.IdempotencyKeyGet(ctx, org, p.IdempotencyKey)
	switch {
	case errors.Is(err, postgres.ErrNotFound):
		return postgres.RequestInsertResult{}, refused
	case err != nil:
		return postgres.RequestInsertResult{}, err
	case !bytes.Equal(hash, p.BodyHash):
		return postgres.RequestInsertResult{}, postgres.ErrIdempotencyMismatch
	}
	return postgres.RequestInsertResult{ID: id, Replayed: true}, nil
}

// release undoes admit's increment for a submit that inserted nothing.
func (s *server) release(org int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.active[org]; ok && c.n > 0 {
		c.n--
		s.active[org] = c
	}
}
