// Package manage is the handler of the management API (SPEC §13), the /v1
// routes: a thin HTTP layer over shared/manage, which asyncctl and the
// console call too. Its routes are rows of the route table
// (httpapi.ManagementRoutes), served by the status function (Handlers go
// into status.Options). Every route needs an API key of scope manage (an
// invoke key is a 403) and is rate-limited per organization like the
// status reads.
package manage

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// Options are New's dependencies.
type Options struct {
	DB *postgres.DB
	// API holds the read rate limit that every route takes; zero takes
	// the configuration's default.
	API    config.API
	Logger *slog.Logger
	// AuthCache is the instance's key cache, shared with the other
	// handlers of the process so that a revoked key is refused at once
	// on all of them; nil makes one for this handler.
	AuthCache *httpapi.AuthCache
	// Now is the clock of the auth cache and the rate limiter; default
	// time.Now.
	Now func() time.Time
}

// New returns the management API alone: its routes of the route table
// (httpapi.ManagementRoutes), with their authentication. The status
// function serves the same handlers beside its own (Handlers).
func New(o Options) http.Handler {
	log := cmp.Or(o.Logger, slog.Default())
	cache := o.AuthCache
	if cache == nil {
		cache = httpapi.NewAuthCache()
		o.AuthCache = cache
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	auth := httpapi.Authenticate(httpapi.AuthOptions{DB: o.DB, Logger: log, Now: now, Cache: cache})
	return httpapi.NewRouter(httpapi.RouterOptions{
		Function:     httpapi.FunctionStatus,
		Handlers:     Handlers(o),
		Authenticate: httpapi.RequireScope(auth),
		Routes:       httpapi.ManagementRoutes,
	})
}

// Handlers returns the management API's handlers by route handler name,
// each rate-limited per organization like the status reads; the router
// authenticates them (httpapi.RequireScope: a key of scope manage).
// Revoking a key evicts it from o.AuthCache, which the process's other
// handlers should share.
func Handlers(o Options) map[string]http.Handler {
	log := cmp.Or(o.Logger, slog.Default())
	h := &handler{svc: &manage.Service{DB: o.DB, Logger: log}, log: log}
	if o.AuthCache != nil {
		h.svc.KeyRevoked = o.AuthCache.Evict
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	readRate := cmp.Or(o.API.ReadRate, httpapi.ReadRateDefault)
	limit := httpapi.RateLimit(readRate, httpapi.ReadBurst(readRate), now)
	handlers := map[string]http.Handler{}
	for name, f := range map[string]http.HandlerFunc{
		httpapi.HandlerManageRequestList:      h.requestList,
		httpapi.HandlerManageRequestGet:       h.requestGet,
		httpapi.HandlerManageRequestRetry:     h.requestRetry,
		httpapi.HandlerManageRequestsCancel:   h.requestsCancel,
		httpapi.HandlerManageRequestsRetry:    h.requestsRetry,
		httpapi.HandlerManageDeploymentList:   h.deploymentList,
		httpapi.HandlerManageDeploymentUpdate: h.deploymentUpdate,
		httpapi.HandlerManageDeploymentPut:    h.deploymentPut,
		httpapi.HandlerManageDeploymentPurge:  h.deploymentPurge,
		httpapi.HandlerManageModelPut:         h.modelPut,
		httpapi.HandlerManageSecretList:       h.webhookSecretList,
		httpapi.HandlerManageSecretRotate:     h.webhookSecretRotate,
		httpapi.HandlerManageKeyList:          h.apiKeyList,
		httpapi.HandlerManageKeyCreate:        h.apiKeyCreate,
		httpapi.HandlerManageKeyRevoke:        h.apiKeyRevoke,
	} {
		handlers[name] = limit(f)
	}
	return handlers
}

type handler struct {
	svc *manage.Service
	log *slog.Logger
}

// actor is who the request's key is.
func actor(r *http.Request) manage.Actor {
	k, _ := httpapi.KeyFrom(r.Context())
	return manage.Actor{OrganizationID: k.OrganizationID, KeyID: k.ID, KeyName: k.Name, Scope: k.Scope}
}

// answer writes v with status, or err.
func (h *handler) answer(w http.ResponseWriter, r *http.Request, status int, v any, err error) {
	if err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	httpapi.Encode(w, status, v)
}

func badQuery(field, format string, args ...any) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusBadRequest, Code: "INVALID_FIELD", Field: field, Message: fmt.Sprintf(format, args...)}
}

// listParams reads GET /v1/requests' query.
func listParams(r *http.Request) (manage.RequestListParams, error) {
	q := r.URL.Query()
	for name, vs := range q {
		switch name {
		case "state", "deployment_id", "model_id", "created_after", "created_before", "limit", "cursor":
			if len(vs) > 1 {
				return manage.RequestListParams{}, badQuery(name, "%s is given more than once", name)
			}
		default:
			return manage.RequestListParams{}, &httpapi.Error{Status: http.StatusBadRequest, Code: "UNKNOWN_FIELD", Field: name,
				Message: "unknown query parameter " + strconv.Quote(name)}
		}
	}
	p := manage.RequestListParams{
		State: q.Get("state"), DeploymentID: q.Get("deployment_id"), ModelID: q.Get("model_id"), Cursor: q.Get("cursor"),
	}
	for _, t := range []struct {
		name string
		into *time.Time
	}{{"created_after", &p.CreatedAfter}, {"created_before", &p.CreatedBefore}} {
		if raw := q.Get(t.name); raw != "" {
			v, err := time.Parse(time.RFC3339Nano, raw)
			if err != nil {
				return p, badQuery(t.name, "%s must be an RFC 3339 time such as 2026-12-01T09:00:00Z, not %q", t.name, raw)
			}
			*t.into = v
		}
	}
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > postgres.RequestListMax {
			return p, badQuery("limit", "limit must be an integer between 1 and %d, not %q", postgres.RequestListMax, raw)
		}
		p.Limit = n
	}
	return p, nil
}

func (h *handler) requestList(w http.ResponseWriter, r *http.Request) {
	p, err := listParams(r)
	if err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	page, err := h.svc.RequestList(r.Context(), actor(r), p)
	h.answer(w, r, http.StatusOK, page, err)
}

func (h *handler) requestGet(w http.ResponseWriter, r *http.Request) {
	d, err := h.svc.RequestGet(r.Context(), actor(r), r.PathValue("request_id"))
	h.answer(w, r, http.StatusOK, d, err)
}

func (h *handler) requestRetry(w http.ResponseWriter, r *http.Request) {
	req, err := h.svc.RequestRetry(r.Context(), actor(r), r.PathValue("request_id"))
	h.answer(w, r, http.StatusOK, req, err)
}

func (h *handler) requestsCancel(w http.ResponseWriter, r *http.Request) {
	var p manage.BulkParams
	if _, err := httpapi.Decode(w, r, bulkBodyMax, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	res, err := h.svc.RequestsCancel(r.Context(), actor(r), p)
	h.answer(w, r, http.StatusOK, res, err)
}

func (h *handler) requestsRetry(w http.ResponseWriter, r *http.Request) {
	var p manage.BulkParams
	if _, err := httpapi.Decode(w, r, bulkBodyMax, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	res, err := h.svc.RequestsRetry(r.Context(), actor(r), p)
	h.answer(w, r, http.StatusOK, res, err)
}

// bulkBodyMax fits postgres.BulkMax quoted request ids and their commas.
const bulkBodyMax = 512 << 10

func (h *handler) deploymentList(w http.ResponseWriter, r *http.Request) {
	ds, err := h.svc.DeploymentList(r.Context(), actor(r))
	h.answer(w, r, http.StatusOK, struct {
		Deployments []manage.Deployment `json:"deployments"`
	}{ds}, err)
}

func (h *handler) deploymentUpdate(w http.ResponseWriter, r *http.Request) {
	var p manage.DeploymentPatch
	if _, err := httpapi.Decode(w, r, 0, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	d, err := h.svc.DeploymentUpdate(r.Context(), actor(r), r.PathValue("deployment_id"), p)
	h.answer(w, r, http.StatusOK, d, err)
}

func (h *handler) deploymentPut(w http.ResponseWriter, r *http.Request) {
	var p manage.DeploymentPut
	if _, err := httpapi.Decode(w, r, 0, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	d, err := h.svc.DeploymentPut(r.Context(), actor(r), r.PathValue("deployment_id"), p)
	h.answer(w, r, http.StatusOK, d, err)
}

func (h *handler) deploymentPurge(w http.ResponseWriter, r *http.Request) {
	res, err := h.svc.DeploymentPurge(r.Context(), actor(r), r.PathValue("deployment_id"))
	h.answer(w, r, http.StatusOK, res, err)
}

func (h *handler) modelPut(w http.ResponseWriter, r *http.Request) {
	var p manage.ModelPut
	if _, err := httpapi.Decode(w, r, 0, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	m, err := h.svc.ModelPut(r.Context(), actor(r), r.PathValue("model_id"), p)
	h.answer(w, r, http.StatusOK, m, err)
}

func (h *handler) webhookSecretList(w http.ResponseWriter, r *http.Request) {
	ss, err := h.svc.WebhookSecretList(r.Context(), actor(r))
	h.answer(w, r, http.StatusOK, struct {
		WebhookSecrets []manage.WebhookSecret `json:"webhook_secrets"`
	}{ss}, err)
}

func (h *handler) webhookSecretRotate(w http.ResponseWriter, r *http.Request) {
	s, err := h.svc.WebhookSecretRotate(r.Context(), actor(r), "")
	h.answer(w, r, http.StatusCreated, s, err)
}

func (h *handler) apiKeyList(w http.ResponseWriter, r *http.Request) {
	ks, err := h.svc.APIKeyList(r.Context(), actor(r))
	h.answer(w, r, http.StatusOK, struct {
		APIKeys []manage.APIKey `json:"api_keys"`
	}{ks}, err)
}

func (h *handler) apiKeyCreate(w http.ResponseWriter, r *http.Request) {
	var p manage.APIKeyCreate
	if _, err := httpapi.Decode(w, r, 0, &p); err != nil {
		httpapi.WriteError(w, r, h.log, err)
		return
	}
	k, err := h.svc.APIKeyCreate(r.Context(), actor(r), p)
	h.answer(w, r, http.StatusCreated, k, err)
}

func (h *handler) apiKeyRevoke(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("api_key_id"), 10, 64)
	if err != nil {
		httpapi.WriteError(w, r, h.log, manage.ErrNoAPIKey)
		return
	}
	k, err := h.svc.APIKeyRevoke(r.Context(), actor(r), id)
	h.answer(w, r, http.StatusOK, k, err)
}
