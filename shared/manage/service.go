package manage

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// Refusals. The NotFound answers are one constant message per kind of
// thing, so a missing one and another organization's read the same.
var (
	ErrForbidden    = httpapi.ErrForbidden
	ErrNoRequest    = httpapi.NotFound("no such request")
	ErrNoDeployment = httpapi.NotFound("no such deployment")
	ErrNoModel      = httpapi.NotFound("no such model")
	ErrNoAPIKey     = httpapi.NotFound("no such API key")
)

// invalid is a 400 naming field.
func invalid(field, format string, args ...any) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusBadRequest, Code: "INVALID_FIELD", Field: field, Message: fmt.Sprintf(format, args...)}
}

func conflict(code, format string, args ...any) *httpapi.Error {
	return &httpapi.Error{Status: http.StatusConflict, Code: code, Message: fmt.Sprintf(format, args...)}
}

// idPattern is the shape of model, deployment and environment ids, as the
// tables check them.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// mustManage refuses an actor that may not act.
func mustManage(a Actor) error {
	if !a.CanManage() {
		return ErrForbidden
	}
	return nil
}

func requestOf(r postgres.Request) Request {
	out := Request{
		RequestID: r.ID, DeploymentID: r.DeploymentID, Status: r.State, WebhookStatus: r.WebhookState,
		CreatedAt: Time{r.CreatedAt}, StatusAt: Time{r.StatusAt}, Errors: r.Errors, Attempts: r.Attempts,
		Priority: r.Priority,
	}
	if out.Errors == nil {
		out.Errors = []postgres.AttemptError{}
	}
	if r.IsChain {
		out.ChainID = r.ModelID
	} else {
		out.ModelID = r.ModelID
	}
	return out
}

// parseState reads a request state, "" for any.
func parseState(field, s string) (postgres.RequestState, error) {
	switch st := postgres.RequestState(strings.ToUpper(s)); st {
	case "", postgres.StateQueued, postgres.StateInProgress, postgres.StateSucceeded, postgres.StateFailed,
		postgres.StateExpired, postgres.StateCanceled, postgres.StateWebhookFailed:
		return st, nil
	}
	return "", invalid(field, "%s must be one of QUEUED, IN_PROGRESS, SUCCEEDED, FAILED, EXPIRED, CANCELED, WEBHOOK_FAILED, not %q", field, s)
}

// encodeCursor and decodeCursor make a RequestCursor opaque:
// base64url("<created_at unix µs>.<id>").
func encodeCursor(c postgres.RequestCursor) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(c.CreatedAt.UnixMicro(), 10) + "." + c.ID.String()))
}

func decodeCursor(s string) (postgres.RequestCursor, error) {
	bad := invalid("cursor", "cursor is not one this API returned")
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return postgres.RequestCursor{}, bad
	}
	micros, id, ok := strings.Cut(string(raw), ".")
	if !ok {
		return postgres.RequestCursor{}, bad
	}
	us, err := strconv.ParseInt(micros, 10, 64)
	if err != nil {
		return postgres.RequestCursor{}, bad
	}
	rid, err := requestid.Parse(id)
	if err != nil {
		return postgres.RequestCursor{}, bad
	}
	return postgres.RequestCursor{CreatedAt: time.UnixMicro(us), ID: rid}, nil
}

// RequestList returns a page of the actor's requests, newest first.
func (s *Service) RequestList(ctx context.Context, a Actor, p RequestListParams) (RequestPage, error) {
	state, err := parseState("state", p.State)
	if err != nil {
		return RequestPage{}, err
	}
	limit := cmp.Or(p.Limit, RequestListLimitDefault)
	if limit < 1 || limit > postgres.RequestListMax {
		return RequestPage{}, invalid("limit", "limit must be between 1 and %d, not %d", postgres.RequestListMax, p.Limit)
	}
	lp := postgres.RequestListParams{
		RequestFilter: postgres.RequestFilter{
			OrganizationID: a.OrganizationID, DeploymentID: p.DeploymentID, ModelID: p.ModelID,
			CreatedAfter: p.CreatedAfter, CreatedBefore: p.CreatedBefore,
		},
		Limit: limit,
	}
	if state != "" {
		lp.States = []postgres.RequestState{state}
	}
	if p.Cursor != "" {
		c, err := decodeCursor(p.Cursor)
		if err != nil {
			return RequestPage{}, err
		}
		lp.After = &c
	}
	reqs, next, err := s.DB.RequestList(ctx, lp)
	if err != nil {
		return RequestPage{}, err
	}
	page := RequestPage{Requests: make([]Request, 0, len(reqs))}
	for _, r := range reqs {
		page.Requests = append(page.Requests, requestOf(r))
	}
	if next != nil {
		c := encodeCursor(*next)
		page.NextCursor = &c
	}
	return page, nil
}

// parseID reads a request id; a malformed one is ErrNoRequest, since no
// such request can exist.
func parseID(id string) (requestid.ID, error) {
	rid, err := requestid.Parse(id)
	if err != nil {
		return rid, ErrNoRequest
	}
	return rid, nil
}

func notFound(err, as error) error {
	if errors.Is(err, postgres.ErrNotFound) {
		return as
	}
	return err
}

// RequestGet returns one of the actor's requests with its history.
func (s *Service) RequestGet(ctx context.Context, a Actor, id string) (RequestDetail, error) {
	rid, err := parseID(id)
	if err != nil {
		return RequestDetail{}, err
	}
	r, err := s.DB.RequestGetByID(ctx, a.OrganizationID, rid)
	if err != nil {
		return RequestDetail{}, notFound(err, ErrNoRequest)
	}
	h, err := s.DB.RequestHistoryGet(ctx, rid)
	if err != nil {
		return RequestDetail{}, err
	}
	d := RequestDetail{Request: requestOf(r), Attempts: []Attempt{}, WebhookDeliveries: []WebhookDelivery{}}
	if r.WebhookEndpoint != "" {
		if u, err := url.Parse(r.WebhookEndpoint); err == nil {
			d.WebhookHost = u.Host
		}
	}
	for _, at := range h.Attempts {
		d.Attempts = append(d.Attempts, Attempt{
			Number: at.Number, Counted: at.Counted, StartedAt: Time{at.StartedAt}, FinishedAt: Time{at.FinishedAt},
			DurationMS: at.FinishedAt.Sub(at.StartedAt).Milliseconds(), HTTPStatus: at.HTTPStatus,
			Code: at.Code, Message: at.Message, Processor: at.Processor,
		})
	}
	for _, wd := range h.Deliveries {
		d.WebhookDeliveries = append(d.WebhookDeliveries, WebhookDelivery{
			SentAt: Time{wd.SentAt}, DurationMS: wd.DurationMS, HTTPStatus: wd.HTTPStatus, Outcome: wd.Outcome, Error: wd.Error,
		})
	}
	return d, nil
}

// RequestRetry runs one of the actor's FAILED or EXPIRED requests again
// (SPEC §4): back to QUEUED with a fresh attempt budget and queue deadline,
// its webhook pending again, its earlier attempts kept in its history. A
// request in another state, whose input is gone, or whose webhook is still
// being delivered is a 409 saying so.
func (s *Service) RequestRetry(ctx context.Context, a Actor, id string) (Request, error) {
	if err := mustManage(a); err != nil {
		return Request{}, err
	}
	rid, err := parseID(id)
	if err != nil {
		return Request{}, err
	}
	r, err := s.DB.RequestRetry(ctx, a.OrganizationID, rid)
	switch {
	case errors.Is(err, postgres.ErrNotFound):
		return Request{}, ErrNoRequest
	case errors.Is(err, postgres.ErrRetryState):
		return Request{}, conflict("NOT_RETRYABLE", "%v", err)
	case errors.Is(err, postgres.ErrRetryInputGone):
		return Request{}, conflict("INPUT_EXPIRED", "%v, so it cannot be run again", err)
	case errors.Is(err, postgres.ErrRetryWebhookPending):
		return Request{}, conflict("WEBHOOK_PENDING", "%v; retry once it is delivered or failed", err)
	case err != nil:
		return Request{}, err
	}
	s.logAction(ctx, a, "request.retry", 1, "request_id", rid.String())
	return requestOf(r), nil
}

// bulkFilter turns BulkParams into a filter of the actor's requests.
func bulkFilter(a Actor, p BulkParams) (postgres.RequestFilter, error) {
	f := postgres.RequestFilter{OrganizationID: a.OrganizationID}
	switch {
	case p.IDs != nil && p.Filter != nil:
		return f, invalid("ids", "give ids or filter, not both")
	case p.IDs != nil:
		if len(p.IDs) == 0 {
			return f, invalid("ids", "ids must name at least one request")
		}
		if len(p.IDs) > postgres.BulkMax {
			return f, invalid("ids", "ids may name at most %d requests, not %d", postgres.BulkMax, len(p.IDs))
		}
		f.IDs = make([]requestid.ID, 0, len(p.IDs))
		for i, id := range p.IDs {
			rid, err := requestid.Parse(id)
			if err != nil {
				return f, invalid(fmt.Sprintf("ids[%d]", i), "ids[%d] is not a request id: %q", i, id)
			}
			f.IDs = append(f.IDs, rid)
		}
		return f, nil
	case p.Filter != nil:
		state, err := parseState("filter.state", p.Filter.State)
		if err != nil {
			return f, err
		}
		if state != "" {
			f.States = []postgres.RequestState{state}
		}
		f.DeploymentID, f.ModelID = p.Filter.DeploymentID, p.Filter.ModelID
		for _, t := range []struct {
			field string
			raw   string
			into  *time.Time
		}{{"filter.created_after", p.Filter.CreatedAfter, &f.CreatedAfter}, {"filter.created_before", p.Filter.CreatedBefore, &f.CreatedBefore}} {
			if t.raw == "" {
				continue
			}
			v, err := time.Parse(time.RFC3339Nano, t.raw)
			if err != nil {
				return f, invalid(t.field, "%s must be an RFC 3339 time, not %q", t.field, t.raw)
			}
			*t.into = v
		}
		return f, nil
	}
	return f, invalid("ids", "give ids (a list of request ids) or filter (state, deployment_id, model_id, created_after, created_before)")
}

// RequestsCancel cancels, by ids or filter, at most postgres.BulkMax of the
// actor's QUEUED requests (newest first) and reports how many it matched
// and changed. Repeating a filter call works through a larger set.
func (s *Service) RequestsCancel(ctx context.Context, a Actor, p BulkParams) (BulkResult, error) {
	if err := mustManage(a); err != nil {
		return BulkResult{}, err
	}
	f, err := bulkFilter(a, p)
	if err != nil {
		return BulkResult{}, err
	}
	res, err := s.DB.RequestCancelBulk(ctx, f)
	if err != nil {
		return BulkResult{}, err
	}
	s.logAction(ctx, a, "requests.cancel", res.Changed, "matched", res.Matched)
	return BulkResult(res), nil
}

// RequestsRetry retries, by ids or filter, at most postgres.BulkMax of the
// actor's requests that can be retried (see RequestRetry), newest first,
// and reports how many it matched and changed.
func (s *Service) RequestsRetry(ctx context.Context, a Actor, p BulkParams) (BulkResult, error) {
	if err := mustManage(a); err != nil {
		return BulkResult{}, err
	}
	f, err := bulkFilter(a, p)
	if err != nil {
		return BulkResult{}, err
	}
	for _, st := range f.States {
		if st != postgres.StateFailed && st != postgres.StateExpired {
			return BulkResult{}, invalid("filter.state", "only FAILED or EXPIRED requests can be retried, not %s", st)
		}
	}
	res, err := s.DB.RequestRetryBulk(ctx, f)
	if err != nil {
		return BulkResult{}, err
	}
	s.logAction(ctx, a, "requests.retry", res.Changed, "matched", res.Matched)
	return BulkResult(res), nil
}

func urlHost(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Host
	}
	return ""
}

func deploymentOf(d postgres.DeploymentInfo) Deployment {
	out := Deployment{
		ID: d.ID, URLHost: urlHost(d.URL), Environments: d.Environments, MaxConcurrency: d.MaxConcurrency,
		Paused: d.Paused, Queued: d.Queued, InProgress: d.InProgress, HasUpstreamCredential: d.HasCredential,
		CreatedAt: Time{d.CreatedAt},
	}
	if out.Environments == nil {
		out.Environments = []string{}
	}
	if d.Kind == postgres.KindChain {
		out.ChainID = d.ModelID
	} else {
		out.ModelID = d.ModelID
	}
	if d.OldestQueuedAt != nil {
		out.OldestQueuedAgeSeconds = max(0, time.Since(*d.OldestQueuedAt).Seconds())
	}
	return out
}

// DeploymentList returns the actor's deployments with their live queue
// figures, by model and id.
func (s *Service) DeploymentList(ctx context.Context, a Actor) ([]Deployment, error) {
	ds, err := s.DB.DeploymentList(ctx, a.OrganizationID)
	if err != nil {
		return nil, err
	}
	out := make([]Deployment, 0, len(ds))
	for _, d := range ds {
		out = append(out, deploymentOf(d))
	}
	return out, nil
}

// DeploymentGet returns one of the actor's deployments.
func (s *Service) DeploymentGet(ctx context.Context, a Actor, id string) (Deployment, error) {
	d, err := s.DB.DeploymentInfoGet(ctx, a.OrganizationID, id)
	if err != nil {
		return Deployment{}, notFound(err, ErrNoDeployment)
	}
	return deploymentOf(d), nil
}

func validConcurrency(field string, n int) error {
	if n < 1 || n > 100000 {
		return invalid(field, "%s must be between 1 and 100000, not %d", field, n)
	}
	return nil
}

// DeploymentUpdate changes a deployment's max_concurrency and paused; the
// change takes effect on the next claim. A paused deployment accepts
// submits and its queue deadlines run, but nothing of it is claimed.
func (s *Service) DeploymentUpdate(ctx context.Context, a Actor, id string, p DeploymentPatch) (Deployment, error) {
	if err := mustManage(a); err != nil {
		return Deployment{}, err
	}
	if p.MaxConcurrency == nil && p.Paused == nil {
		return Deployment{}, invalid("max_concurrency", "give max_concurrency or paused")
	}
	if p.MaxConcurrency != nil {
		if err := validConcurrency("max_concurrency", *p.MaxConcurrency); err != nil {
			return Deployment{}, err
		}
	}
	err := s.DB.DeploymentUpdate(ctx, postgres.DeploymentUpdateParams{
		OrganizationID: a.OrganizationID, ID: id, MaxConcurrency: p.MaxConcurrency, Paused: p.Paused,
	})
	if err != nil {
		return Deployment{}, notFound(err, ErrNoDeployment)
	}
	var attrs []any
	if p.MaxConcurrency != nil {
		attrs = append(attrs, "max_concurrency", *p.MaxConcurrency)
	}
	if p.Paused != nil {
		attrs = append(attrs, "paused", *p.Paused)
	}
	s.logAction(ctx, a, "deployment.update", 1, append(attrs, "deployment_id", id)...)
	return s.DeploymentGet(ctx, a, id)
}

// DeploymentPurge cancels every QUEUED request of one of the actor's
// deployments.
func (s *Service) DeploymentPurge(ctx context.Context, a Actor, id string) (PurgeResult, error) {
	if err := mustManage(a); err != nil {
		return PurgeResult{}, err
	}
	n, err := s.DB.DeploymentPurge(ctx, a.OrganizationID, id)
	if err != nil {
		return PurgeResult{}, notFound(err, ErrNoDeployment)
	}
	s.logAction(ctx, a, "deployment.purge", n, "deployment_id", id)
	return PurgeResult{Canceled: n}, nil
}

// printable reports whether s is valid UTF-8 without control characters.
func printable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, unicode.IsControl)
}

// ModelPut creates one of the actor's models or chains, or renames it. An id
// another organization holds, or a kind that differs from the existing one,
// is a 409.
func (s *Service) ModelPut(ctx context.Context, a Actor, id string, p ModelPut) (Model, error) {
	if err := mustManage(a); err != nil {
		return Model{}, err
	}
	if !idPattern.MatchString(id) {
		return Model{}, invalid("id", "a model id is 1 to 64 letters, digits, '-' or '_'")
	}
	kind := postgres.ModelKind(cmp.Or(p.Kind, string(postgres.KindModel)))
	if kind != postgres.KindModel && kind != postgres.KindChain {
		return Model{}, invalid("kind", "kind must be model or chain, not %q", p.Kind)
	}
	if !printable(p.Name) || len(p.Name) > 200 {
		return Model{}, invalid("name", "name must be printable text of at most 200 bytes")
	}
	err := s.DB.ModelCreate(ctx, postgres.Model{ID: id, OrganizationID: a.OrganizationID, Kind: kind, Name: p.Name})
	if errors.Is(err, postgres.ErrConflict) {
		return Model{}, conflict("ID_TAKEN", "model id %q is taken (by another organization, or as the other kind)", id)
	}
	if err != nil {
		return Model{}, err
	}
	if err := s.DB.ModelUpdateName(ctx, a.OrganizationID, id, p.Name); err != nil {
		return Model{}, notFound(err, ErrNoModel)
	}
	s.logAction(ctx, a, "model.put", 1, "model_id", id)
	return Model{ID: id, Kind: string(kind), Name: p.Name}, nil
}

// DeploymentPut creates or updates one of the actor's deployments (SPEC
// §10): its URL, environments, max_concurrency and write-only upstream
// credential, sealed and stored through postgres.DeploymentCreate. A
// credential given where no UPSTREAM_CREDENTIAL_KEYS are configured is a 409.
func (s *Service) DeploymentPut(ctx context.Context, a Actor, id string, p DeploymentPut) (Deployment, error) {
	if err := mustManage(a); err != nil {
		return Deployment{}, err
	}
	if !idPattern.MatchString(id) {
		return Deployment{}, invalid("id", "a deployment id is 1 to 64 letters, digits, '-' or '_'")
	}
	if !idPattern.MatchString(p.ModelID) {
		return Deployment{}, invalid("model_id", "model_id must be a model id")
	}
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || !printable(p.URL) {
		return Deployment{}, invalid("url", "url must be an http or https URL")
	}
	for _, e := range p.Environments {
		if !idPattern.MatchString(e) {
			return Deployment{}, invalid("environments", "environment %q is not 1 to 64 letters, digits, '-' or '_'", e)
		}
	}
	conc := cmp.Or(p.MaxConcurrency, DeploymentMaxConcurrencyDefault)
	if err := validConcurrency("max_concurrency", conc); err != nil {
		return Deployment{}, err
	}
	m, err := s.DB.ModelGet(ctx, a.OrganizationID, p.ModelID)
	if err != nil {
		return Deployment{}, notFound(err, ErrNoModel)
	}
	d := postgres.Deployment{ID: id, ModelID: m.ID, URL: p.URL, Environments: p.Environments, MaxConcurrency: conc,
		KeepCredential: p.UpstreamCredential == nil}
	if p.UpstreamCredential != nil {
		d.UpstreamCredential = *p.UpstreamCredential
	}
	err = s.DB.DeploymentCreate(ctx, a.OrganizationID, d)
	switch {
	case errors.Is(err, postgres.ErrConflict):
		return Deployment{}, conflict("ID_TAKEN", "deployment id %q is taken by another model", id)
	case errors.Is(err, postgres.ErrNotFound):
		return Deployment{}, ErrNoModel
	case errors.Is(err, credential.ErrNoKey):
		return Deployment{}, conflict("NO_CREDENTIAL_KEY", "this service cannot store an upstream credential: UPSTREAM_CREDENTIAL_KEYS is not set")
	case err != nil:
		return Deployment{}, err
	}
	s.logAction(ctx, a, "deployment.put", 1, "deployment_id", id, "model_id", m.ID)
	return s.DeploymentGet(ctx, a, id)
}

// WebhookSecretList returns the actor's webhook secrets that still sign,
// newest first, never the secrets themselves.
func (s *Service) WebhookSecretList(ctx context.Context, a Actor) ([]WebhookSecret, error) {
	ss, err := s.DB.WebhookSecretList(ctx, a.OrganizationID)
	if err != nil {
		return nil, err
	}
	out := make([]WebhookSecret, 0, len(ss))
	for _, w := range ss {
		out = append(out, WebhookSecret{ID: w.ID, CreatedAt: Time{w.CreatedAt}, ExpiresAt: timePtr(w.ExpiresAt)})
	}
	return out, nil
}

// WebhookSecretRotate makes secret (a new one when "") the actor's current
// webhook secret; the ones before it keep signing for the overlap. The
// secret is in the result this once.
func (s *Service) WebhookSecretRotate(ctx context.Context, a Actor, secret string) (NewWebhookSecret, error) {
	if err := mustManage(a); err != nil {
		return NewWebhookSecret{}, err
	}
	if secret == "" {
		var err error
		if secret, err = webhook.GenerateSecret(); err != nil {
			return NewWebhookSecret{}, err
		}
	} else if err := webhook.ValidSecret(secret); err != nil {
		return NewWebhookSecret{}, invalid("secret", "secret must be whsec_ followed by base64")
	}
	overlap := cmp.Or(s.WebhookSecretOverlap, postgres.WebhookSecretOverlapDefault)
	if err := s.DB.WebhookSecretRotate(ctx, a.OrganizationID, secret, overlap); err != nil {
		return NewWebhookSecret{}, err
	}
	list, err := s.DB.WebhookSecretList(ctx, a.OrganizationID)
	if err != nil {
		return NewWebhookSecret{}, err
	}
	out := NewWebhookSecret{Secret: secret}
	for _, w := range list {
		if w.ExpiresAt == nil {
			out.WebhookSecret = WebhookSecret{ID: w.ID, CreatedAt: Time{w.CreatedAt}}
			break
		}
	}
	s.logAction(ctx, a, "webhook_secret.rotate", 1, "webhook_secret_id", out.ID)
	return out, nil
}

func apiKeyOf(k postgres.APIKey) APIKey {
	return APIKey{ID: k.ID, Prefix: k.Prefix, Name: k.Name, Scope: k.Scope, CreatedAt: Time{k.CreatedAt}, LastUsedAt: timePtr(k.LastUsedAt)}
}

// APIKeyList returns the actor's unrevoked API keys, never the keys
// themselves. last_used_at is recorded about once a minute.
func (s *Service) APIKeyList(ctx context.Context, a Actor) ([]APIKey, error) {
	ks, err := s.DB.APIKeyList(ctx, a.OrganizationID)
	if err != nil {
		return nil, err
	}
	out := make([]APIKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, apiKeyOf(k))
	}
	return out, nil
}

// APIKeyCreate creates an API key for the actor's organization; the key is
// in the result this once, and only its hash is stored.
func (s *Service) APIKeyCreate(ctx context.Context, a Actor, p APIKeyCreate) (NewAPIKey, error) {
	if err := mustManage(a); err != nil {
		return NewAPIKey{}, err
	}
	scope := postgres.KeyScope(cmp.Or(p.Scope, string(postgres.ScopeManage)))
	if scope != postgres.ScopeInvoke && scope != postgres.ScopeManage {
		return NewAPIKey{}, invalid("scope", "scope must be invoke or manage, not %q", p.Scope)
	}
	if !printable(p.Name) || len(p.Name) > 200 {
		return NewAPIKey{}, invalid("name", "name must be printable text of at most 200 bytes")
	}
	key := postgres.NewAPIKey()
	k, err := s.DB.APIKeyInsert(ctx, postgres.APIKeyInsertParams{OrganizationID: a.OrganizationID, Key: key, Name: p.Name, Scope: scope})
	if err != nil {
		return NewAPIKey{}, err
	}
	s.logAction(ctx, a, "api_key.create", 1, "api_key_id", k.ID, "scope", scope)
	return NewAPIKey{APIKey: apiKeyOf(k), Key: key}, nil
}

// APIKeyRevoke revokes one of the actor's API keys. This instance refuses
// it at once (KeyRevoked); other instances within their key cache's
// lifetime, httpapi.AuthCacheTTLDefault.
func (s *Service) APIKeyRevoke(ctx context.Context, a Actor, id int64) (RevokedAPIKey, error) {
	if err := mustManage(a); err != nil {
		return RevokedAPIKey{}, err
	}
	k, err := s.DB.APIKeyRevoke(ctx, a.OrganizationID, id)
	if err != nil {
		return RevokedAPIKey{}, notFound(err, ErrNoAPIKey)
	}
	if s.KeyRevoked != nil {
		s.KeyRevoked(k.ID)
	}
	s.logAction(ctx, a, "api_key.revoke", 1, "api_key_id", k.ID)
	return RevokedAPIKey{APIKey: apiKeyOf(k), RevokedAt: Time{*k.RevokedAt}}, nil
}
