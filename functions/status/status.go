// Package status is the handler for everything in the public API but
// submit: a request's status, cancel, its result and webhook redelivery,
// and a deployment's queue depth. It also answers, in the API's JSON error
// format, every request no route matches, since the API gateway sends those
// to it.
package status

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"time"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// TimeFormat is how the API writes times: RFC 3339 in UTC with
// microseconds.
const TimeFormat = "2006-01-02T15:04:05.000000Z"

// Options are New's dependencies.
type Options struct {
	DB *postgres.DB
	// API holds the read rate limit; zero takes the configuration's
	// default.
	API    config.API
	Logger *slog.Logger
	// Metrics, when set, counts cancels in async_requests_completed_total.
	Metrics *telemetry.Metrics
	// Handlers are more handlers of the status function's routes, by
	// Route.Handler: the management API's (functions/manage.Handlers),
	// which the status function serves too.
	Handlers map[string]http.Handler
	// AuthCache is the instance's API key cache, shared with the other
	// handlers of the process so a revoked key is refused at once on all
	// of them; nil makes one for this handler.
	AuthCache *httpapi.AuthCache
	// Now is the clock of the auth cache and the rate limiter; default
	// time.Now.
	Now func() time.Time
	// MaxWaiters and MaxWaitersPerOrg cap the long-polls open at once in
	// this process; defaults MaxWaitersDefault and MaxWaitersPerOrgDefault.
	MaxWaiters, MaxWaitersPerOrg int
}

// New returns the status handler.
func New(o Options) http.Handler {
	h, _ := newHandler(o)
	return h
}

func newHandler(o Options) (http.Handler, *server) {
	s := &server{db: o.DB, log: cmp.Or(o.Logger, slog.Default()), metrics: o.Metrics}
	s.waiters = newWaiters(o.DB, s.log, cmp.Or(o.MaxWaiters, MaxWaitersDefault), cmp.Or(o.MaxWaitersPerOrg, MaxWaitersPerOrgDefault))
	now := o.Now
	if now == nil {
		now = time.Now
	}
	auth := httpapi.Authenticate(httpapi.AuthOptions{DB: o.DB, Logger: s.log, Now: now, Cache: o.AuthCache})
	readRate := cmp.Or(o.API.ReadRate, httpapi.ReadRateDefault)
	limit := httpapi.RateLimit(readRate, httpapi.ReadBurst(readRate), now)
	handlers := map[string]http.Handler{
		httpapi.HandlerRequestStatus: limit(http.HandlerFunc(s.get)),
		httpapi.HandlerRequestCancel: limit(http.HandlerFunc(s.cancel)),
		httpapi.HandlerResult:        limit(http.HandlerFunc(s.result)),
		httpapi.HandlerRedeliver:     limit(http.HandlerFunc(s.redeliver)),
		httpapi.HandlerQueueStatus:   limit(http.HandlerFunc(s.queueStatus)),
		httpapi.HandlerOpenAPI:       http.HandlerFunc(httpapi.ServeOpenAPI),
	}
	maps.Copy(handlers, o.Handlers)
	routes := httpapi.Routes
	if o.Handlers == nil { // without the management API, its routes are 404s here
		routes = slices.DeleteFunc(slices.Clone(routes), func(r httpapi.Route) bool { return r.Auth == httpapi.AuthManage })
	}
	return httpapi.NewRouter(httpapi.RouterOptions{
		Function:     httpapi.FunctionStatus,
		Handlers:     handlers,
		Authenticate: httpapi.RequireScope(auth),
		Routes:       routes,
	}), s
}

type server struct {
	db      *postgres.DB
	log     *slog.Logger
	metrics *telemetry.Metrics
	waiters *waiters
}

// Answers for things that do not exist or belong to another organization.
// Each is one constant message, so the two cannot be told apart.
var (
	errNoRequest    = httpapi.NotFound("no such request")
	errNoDeployment = httpapi.NotFound("no such model, environment or deployment")
	errNoTarget     = httpapi.NotFound("no model in the request: use the Host model-{model_id}.<domain> (chain-{chain_id}.<domain>) or the path prefix /models/{model_id}/ (/chains/{chain_id}/)")
)

// request loads the request the path names, scoped to the caller's
// organization and, when the URL names a model or chain, to it. A
// malformed id is errNoRequest: no such request can exist.
func (s *server) request(r *http.Request) (postgres.Request, error) {
	id, err := requestid.Parse(r.PathValue("request_id"))
	if err != nil {
		return postgres.Request{}, errNoRequest
	}
	req, err := s.db.RequestGetByID(r.Context(), httpapi.OrganizationID(r.Context()), id)
	if err != nil {
		if errors.Is(err, postgres.ErrNotFound) {
			return postgres.Request{}, errNoRequest
		}
		return postgres.Request{}, err
	}
	if t, ok := httpapi.TargetFrom(r.Context()); ok && (t.ID != req.ModelID || t.IsChain() != req.IsChain) {
		return postgres.Request{}, errNoRequest
	}
	return req, nil
}

// statusBody is the status object of SPEC §3.
type statusBody struct {
	RequestID     requestid.ID            `json:"request_id"`
	ModelID       string                  `json:"model_id,omitempty"`
	ChainID       string                  `json:"chain_id,omitempty"`
	DeploymentID  string                  `json:"deployment_id"`
	Status        postgres.RequestState   `json:"status"`
	WebhookStatus postgres.WebhookState   `json:"webhook_status"`
	CreatedAt     string                  `json:"created_at"`
	StatusAt      string                  `json:"status_at"`
	Errors        []postgres.AttemptError `json:"errors"`
	Attempts      int                     `json:"attempts"`
	// QueuePosition is how many of the deployment's queued requests a
	// processor takes before this one; only while QUEUED.
	QueuePosition *int64 `json:"queue_position,omitempty"`
}

func (s *server) get(w http.ResponseWriter, r *http.Request) {
	wait, err := waitSeconds(r)
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	var req postgres.Request
	if wait > 0 {
		req, err = s.longPoll(r, wait)
	} else {
		req, err = s.request(r)
	}
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	b := statusBody{
		RequestID:     req.ID,
		DeploymentID:  req.DeploymentID,
		Status:        req.State,
		WebhookStatus: req.WebhookState,
		CreatedAt:     req.CreatedAt.UTC().Format(TimeFormat),
		StatusAt:      req.StatusAt.UTC().Format(TimeFormat),
		Errors:        req.Errors,
		Attempts:      req.Attempts,
	}
	if b.Errors == nil {
		b.Errors = []postgres.AttemptError{}
	}
	if req.State == postgres.StateQueued {
		n, err := s.db.RequestQueuePosition(r.Context(), req)
		if err != nil {
			httpapi.WriteError(w, r, s.log, err)
			return
		}
		b.QueuePosition = &n
	}
	b.ModelID, b.ChainID = modelOrChain(req.ModelID, req.IsChain)
	httpapi.Encode(w, http.StatusOK, b)
}

func modelOrChain(id string, isChain bool) (modelID, chainID string) {
	if isChain {
		return "", id
	}
	return id, ""
}

func (s *server) cancel(w http.ResponseWriter, r *http.Request) {
	req, err := s.request(r) // scopes to the URL's model before anything changes
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	req, canceled, err := s.db.RequestCancel(r.Context(), req.OrganizationID, req.ID)
	if err != nil {
		if errors.Is(err, postgres.ErrNotFound) { // purged between the two reads
			err = errNoRequest
		}
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	msg := "request canceled"
	switch {
	case canceled:
		// For long-polls, here and in other processes; a lost
		// notification only delays them to their deadline.
		if err := s.db.NotifyFinished(r.Context(), []requestid.ID{req.ID}); err != nil {
			s.log.WarnContext(r.Context(), "notify cancel", "request_id", req.ID.String(), "error", err)
		}
		if s.metrics != nil {
			s.metrics.Completed.WithLabelValues(string(postgres.StateCanceled)).Inc()
		}
	case req.State == postgres.StateCanceled:
		msg = "request was already canceled"
	default:
		msg = fmt.Sprintf("request is %s and can no longer be canceled", req.State)
	}
	httpapi.Encode(w, http.StatusOK, struct {
		RequestID requestid.ID `json:"request_id"`
		Canceled  bool         `json:"canceled"`
		Message   string       `json:"message"`
	}{req.ID, canceled, msg})
}

// resultBody is the answer of GET /async_request/{id}/result.
type resultBody struct {
	RequestID    requestid.ID          `json:"request_id"`
	ModelID      string                `json:"model_id,omitempty"`
	ChainID      string                `json:"chain_id,omitempty"`
	DeploymentID string                `json:"deployment_id"`
	Status       postgres.RequestState `json:"status"`
	Output       json.RawMessage       `json:"output"`
}

func (s *server) result(w http.ResponseWriter, r *http.Request) {
	req, err := s.request(r)
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	switch {
	case !req.State.Final():
		httpapi.WriteError(w, r, s.log, &httpapi.Error{Status: http.StatusNotFound, Code: "RESULT_NOT_READY",
			Message: fmt.Sprintf("request is %s; its result is not ready yet", req.State)})
		return
	case req.Output == nil && (req.State == postgres.StateSucceeded || req.State == postgres.StateWebhookFailed):
		httpapi.WriteError(w, r, s.log, &httpapi.Error{Status: http.StatusNotFound, Code: "RESULT_EXPIRED",
			Message: "the request's output is no longer retained"})
		return
	case req.Output == nil:
		httpapi.WriteError(w, r, s.log, &httpapi.Error{Status: http.StatusNotFound, Code: "NO_RESULT",
			Message: fmt.Sprintf("request is %s and has no output", req.State)})
		return
	}
	out := json.RawMessage(req.Output)
	if !json.Valid(out) { // stored outputs are JSON; anything else is sent as a string
		b, _ := json.Marshal(string(req.Output))
		out = b
	}
	b := resultBody{RequestID: req.ID, DeploymentID: req.DeploymentID, Status: req.State, Output: out}
	b.ModelID, b.ChainID = modelOrChain(req.ModelID, req.IsChain)
	httpapi.Encode(w, http.StatusOK, b)
}

func (s *server) redeliver(w http.ResponseWriter, r *http.Request) {
	id, err := requestid.Parse(r.PathValue("request_id"))
	if err != nil {
		httpapi.WriteError(w, r, s.log, errNoRequest)
		return
	}
	p := postgres.RequestWebhookRedeliverParams{OrganizationID: httpapi.OrganizationID(r.Context()), ID: id}
	if t, ok := httpapi.TargetFrom(r.Context()); ok {
		p.ModelID, p.IsChain = t.ID, t.IsChain()
	}
	if err := s.db.RequestWebhookRedeliver(r.Context(), p); err != nil {
		if errors.Is(err, postgres.ErrNotFound) {
			err = errNoRequest
		}
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	s.log.InfoContext(r.Context(), "webhook redelivery queued", "request_id", id.String())
	httpapi.Encode(w, http.StatusAccepted, struct {
		RequestID requestid.ID `json:"request_id"`
		Message   string       `json:"message"`
	}{id, "webhook redelivery queued"})
}

func (s *server) queueStatus(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	t, ok := httpapi.TargetFrom(ctx)
	if !ok {
		httpapi.WriteError(w, r, s.log, errNoTarget)
		return
	}
	t, dep, err := httpapi.ResolveDeployment(ctx, s.db, r, httpapi.OrganizationID(ctx), t)
	if errors.Is(err, postgres.ErrNotFound) {
		err = errNoDeployment
	}
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	c, err := s.db.DeploymentQueueCounts(ctx, dep.ID)
	if err != nil {
		httpapi.WriteError(w, r, s.log, err)
		return
	}
	b := struct {
		ModelID    string `json:"model_id,omitempty"`
		ChainID    string `json:"chain_id,omitempty"`
		Deployment string `json:"deployment_id"`
		Queued     int64  `json:"num_queued_requests"`
		InProgress int64  `json:"num_in_progress_requests"`
		// Paused (beyond) is present, true, while the deployment is
		// paused, so the original API's four fields read as they always do.
		Paused bool `json:"paused,omitempty"`
	}{Deployment: dep.ID, Queued: c.Queued, InProgress: c.InProgress, Paused: c.Paused}
	b.ModelID, b.ChainID = modelOrChain(t.ID, t.IsChain())
	httpapi.Encode(w, http.StatusOK, b)
}
