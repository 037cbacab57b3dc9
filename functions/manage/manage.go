// Package manage is the handler of the management API (SPEC §13), the /v1
// routes: a thin HTTP layer over shared/manage, which asyncctl and the
// console call too. Every route needs an API key of scope manage (an
// invoke key is a 403) and is rate-limited per organization like the
// status reads. Under AWS Lambda the status function serves it.
package manage

import (
	"cmp"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
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

// Routes are the management API's routes, method and pattern.
var Routes = []string{
	"GET /v1/requests",
	"GET /v1/requests/{request_id}",
	"POST /v1/requests/{request_id}/retry",
	"POST /v1/requests/cancel",
	"POST /v1/requests/retry",
	"GET /v1/deployments",
	"PATCH /v1/deployments/{deployment_id}",
	"PUT /v1/deployments/{deployment_id}",
	"POST /v1/deployments/{deployment_id}/purge",
	"PUT /v1/models/{model_id}",
	"GET /v1/webhook-secrets",
	"POST /v1/webhook-secrets/rotate",
	"GET /v1/api-keys",
	"POST /v1/api-keys",
	"DELETE /v1/api-keys/{api_key_id}",
}

// New returns the /v1 handler.
func New(o Options) http.Handler {
	log := cmp.Or(o.Logger, slog.Default())
	cache := o.AuthCache
	if cache == nil {
		cache = httpapi.NewAuthCache()
	}
	h := &handler{
		svc: &manage.Service{DB: o.DB, Logger: log, KeyRevoked: cache.Evict},
		log: log,
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	auth := httpapi.Authenticate(httpapi.AuthOptions{DB: o.DB, Logger: log, Now: now, Cache: cache})
	readRate := cmp.Or(o.API.ReadRate, httpapi.ReadRateDefault)
	limit := httpapi.RateLimit(readRate, httpapi.ReadBurst(readRate), now)

	handlers := map[string]http.HandlerFunc{
		"GET /v1/requests":                           h.requestList,
		"GET /v1/requests/{request_id}":              h.requestGet,
		"POST /v1/requests/{request_id}/retry":       h.requestRetry,
		"POST /v1/requests/cancel":                   h.requestsCancel,
		"POST /v1/requests/retry":                    h.requestsRetry,
		"GET /v1/deployments":                        h.deploymentList,
		"PATCH /v1/deployments/{deployment_id}":      h.deploymentUpdate,
		"PUT /v1/deployments/{deployment_id}":        h.deploymentPut,
		"POST /v1/deployments/{deployment_id}/purge": h.deploymentPurge,
		"PUT /v1/models/{model_id}":                  h.modelPut,
		"GET /v1/webhook-secrets":                    h.webhookSecretList,
		"POST /v1/webhook-secrets/rotate":            h.webhookSecretRotate,
		"GET /v1/api-keys":                           h.apiKeyList,
		"POST /v1/api-keys":                          h.apiKeyCreate,
		"DELETE /v1/api-keys/{api_key_id}":           h.apiKeyRevoke,
	}
	var rt httpapi.Router
	for _, pattern := range Routes {
		rt.Handle(pattern, auth(limit(requireManage(log, handlers[pattern]))))
	}
	return &rt
}

// requireManage refuses keys of scope invoke with a 403.
func requireManage(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if k, _ := httpapi.KeyFrom(r.Context()); k.Scope != postgres.ScopeManage {
			httpapi.WriteError(w, r, log, manage.ErrForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
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

// Mount serves the management API (paths under /v1/) with mgmt and
// everything else with rest: the status function, and the API port of the
// dev harness, serve both.
func Mount(mgmt, rest http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/v1/") {
			mgmt.ServeHTTP(w, r)
			return
		}
		rest.ServeHTTP(w, r)
	})
}
