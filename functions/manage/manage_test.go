package manage_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// quiet drops the handler's logs (each action logs a line).
var quiet = slog.New(slog.DiscardHandler)

type bundle struct {
	db        *postgres.DB
	h         http.Handler
	clock     *apitest.Clock
	key       string // acme's, scope manage
	invokeKey string // acme's, scope invoke
	otherKey  string // other's, scope manage
	acme      int64
	other     int64
	// insert queues a request of org on deployment (of model) and returns
	// its id.
	insert func(org int64, model, deployment, webhook string) string
	// exec runs SQL with the request id as $1.
	exec func(id, sql string)
	// do sends body (nil for none) with key to h.
	do func(method, path, key string, body any) *httptest.ResponseRecorder
}

// setup seeds acme (model m1: m1-a production, m1-b development; chain c1:
// c1-a production) and other (model om: om-a production).
func setup(t testing.TB) bundle {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	acme := pgtest.SeedTenant(t, db, "acme",
		[]postgres.Model{{ID: "m1", Kind: postgres.KindModel}, {ID: "c1", Kind: postgres.KindChain}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production"}, URL: "https://m1.example.com/v1/predict?token=x", MaxConcurrency: 4},
			{ID: "m1-b", ModelID: "m1", Environments: []string{"development"}},
			{ID: "c1-a", ModelID: "c1", Environments: []string{"production"}},
		})
	other := pgtest.SeedTenant(t, db, "other", []postgres.Model{{ID: "om", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "om-a", ModelID: "om", Environments: []string{"production"}}})
	invoke := postgres.NewAPIKey()
	if _, err := db.APIKeyInsert(ctx, postgres.APIKeyInsertParams{OrganizationID: acme.ID, Key: invoke, Name: "ci", Scope: postgres.ScopeInvoke}); err != nil {
		t.Fatal(err)
	}
	c := apitest.NewClock(time.Now())
	h := apitest.Validated(t, manage.New(manage.Options{DB: db, Now: c.Now, Logger: quiet}))
	b := bundle{db: db, h: h, clock: c, key: acme.Key, invokeKey: invoke, otherKey: other.Key, acme: acme.ID, other: other.ID}
	b.insert = func(org int64, model, deployment, webhook string) string {
		t.Helper()
		res, err := db.RequestInsert(ctx, postgres.RequestInsertParams{
			ID: requestid.New(), OrganizationID: org, ModelID: model, IsChain: model == "c1", DeploymentID: deployment,
			WebhookEndpoint: webhook, MaxTimeInQueue: time.Hour, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000,
			Input: []byte(`{"in": 1}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID.String()
	}
	b.exec = func(id, sql string) {
		t.Helper()
		rid, err := requestid.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Pool.Exec(ctx, sql, rid); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	b.do = func(method, path, key string, body any) *httptest.ResponseRecorder {
		return send(h, method, path, key, body)
	}
	return b
}

func send(h http.Handler, method, path, key string, body any) *httptest.ResponseRecorder {
	var rd *bytes.Reader
	switch v := body.(type) {
	case nil:
		rd = bytes.NewReader(nil)
	case string:
		rd = bytes.NewReader([]byte(v))
	default:
		b, _ := json.Marshal(v)
		rd = bytes.NewReader(b)
	}
	r := httptest.NewRequest(method, "http://api.example.com"+path, rd)
	r.Header.Set("Authorization", "Api-Key "+key)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// decode asserts status and decodes the body into v.
func decode(t testing.TB, rec *httptest.ResponseRecorder, status int, v any) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
}

type listBody struct {
	Requests []struct {
		RequestID    string `json:"request_id"`
		Status       string `json:"status"`
		DeploymentID string `json:"deployment_id"`
		ModelID      string `json:"model_id"`
		ChainID      string `json:"chain_id"`
	} `json:"requests"`
	NextCursor *string `json:"next_cursor"`
}

func TestScope(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, route := range httpapi.ManagementRoutes {
		method, pattern := route.Method, route.Pattern
		path := strings.NewReplacer("{request_id}", requestid.New().String(), "{deployment_id}", "m1-a",
			"{model_id}", "m1", "{api_key_id}", "1").Replace(pattern)
		t.Run(strings.ReplaceAll(route.String(), "/", "_"), func(t *testing.T) {
			t.Parallel()
			rec := b.do(method, path, b.invokeKey, "{}")
			apitest.CheckError(t, rec, http.StatusForbidden, "FORBIDDEN", "")
			if rec := b.do(method, path, "ak_nope_nope_nope", "{}"); rec.Code != http.StatusUnauthorized {
				t.Errorf("unknown key: %d", rec.Code)
			}
		})
	}
	t.Run("InvokeKeyStillInvokes", func(t *testing.T) {
		t.Parallel()
		var page listBody
		decode(t, b.do("GET", "/v1/requests", b.key, nil), http.StatusOK, &page)
	})
}

func TestRevocationAcrossInstances(t *testing.T) {
	t.Parallel()
	b := setup(t)
	// A second API instance over the same database, with its own key cache.
	second := apitest.Validated(t, manage.New(manage.Options{DB: b.db, Now: b.clock.Now, Logger: quiet}))
	var created struct {
		ID  int64  `json:"id"`
		Key string `json:"key"`
	}
	decode(t, b.do("POST", "/v1/api-keys", b.key, map[string]any{"name": "doomed", "scope": "manage"}), http.StatusCreated, &created)
	for name, h := range map[string]http.Handler{"first": b.h, "second": second} {
		if rec := send(h, "GET", "/v1/deployments", created.Key, nil); rec.Code != http.StatusOK {
			t.Fatalf("%s instance before revocation: %d %s", name, rec.Code, rec.Body)
		}
	}
	var revoked struct {
		ID        int64  `json:"id"`
		RevokedAt string `json:"revoked_at"`
	}
	decode(t, b.do("DELETE", fmt.Sprintf("/v1/api-keys/%d", created.ID), b.key, nil), http.StatusOK, &revoked)
	if revoked.ID != created.ID || revoked.RevokedAt == "" {
		t.Fatalf("revoked = %+v", revoked)
	}
	// The instance that revoked refuses the key at once.
	apitest.CheckError(t, send(b.h, "GET", "/v1/deployments", created.Key, nil), http.StatusUnauthorized, "UNAUTHORIZED", "")
	// The other still has it cached, until the cache's lifetime runs out.
	if rec := send(second, "GET", "/v1/deployments", created.Key, nil); rec.Code != http.StatusOK {
		t.Fatalf("second instance within the cache lifetime: %d", rec.Code)
	}
	b.clock.Advance(httpapi.AuthCacheTTLDefault)
	apitest.CheckError(t, send(second, "GET", "/v1/deployments", created.Key, nil), http.StatusUnauthorized, "UNAUTHORIZED", "")
	// Revoking again, or another organization's key, is the same 404.
	again := b.do("DELETE", fmt.Sprintf("/v1/api-keys/%d", created.ID), b.key, nil)
	apitest.CheckError(t, again, http.StatusNotFound, "NOT_FOUND", "")
	var keys struct {
		APIKeys []struct {
			ID int64 `json:"id"`
		} `json:"api_keys"`
	}
	decode(t, send(b.h, "GET", "/v1/api-keys", b.otherKey, nil), http.StatusOK, &keys)
	cross := b.do("DELETE", fmt.Sprintf("/v1/api-keys/%d", keys.APIKeys[0].ID), b.key, nil)
	if cross.Code != http.StatusNotFound || cross.Body.String() != again.Body.String() {
		t.Fatalf("another organization's key: %d %s, want the bytes of %s", cross.Code, cross.Body, again.Body)
	}
}

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var created struct {
		ID     int64  `json:"id"`
		Key    string `json:"key"`
		Prefix string `json:"prefix"`
		Scope  string `json:"scope"`
		Name   string `json:"name"`
	}
	decode(t, b.do("POST", "/v1/api-keys", b.key, map[string]any{"name": "worker", "scope": "invoke"}), http.StatusCreated, &created)
	if !strings.HasPrefix(created.Key, created.Prefix) || created.Scope != "invoke" || created.Name != "worker" {
		t.Fatalf("created = %+v", created)
	}
	k, err := b.db.APIKeyLookup(ctx, created.Key)
	if err != nil || k.Scope != postgres.ScopeInvoke || k.OrganizationID != b.acme {
		t.Fatalf("lookup = %+v, %v", k, err)
	}
	rec := b.do("GET", "/v1/api-keys", b.key, nil)
	if strings.Contains(rec.Body.String(), created.Key) || strings.Contains(rec.Body.String(), "hash") {
		t.Fatalf("list shows a key: %s", rec.Body)
	}
	var list struct {
		APIKeys []map[string]any `json:"api_keys"`
	}
	decode(t, rec, http.StatusOK, &list)
	if len(list.APIKeys) != 3 { // the seeded key, the invoke key, this one
		t.Fatalf("keys = %v", list.APIKeys)
	}
	for _, k := range list.APIKeys {
		for _, f := range []string{"id", "prefix", "name", "scope", "created_at", "last_used_at"} {
			if _, ok := k[f]; !ok {
				t.Errorf("key %v has no %s", k, f)
			}
		}
	}
	apitest.CheckError(t, b.do("POST", "/v1/api-keys", b.key, map[string]any{"scope": "root"}), http.StatusBadRequest, "INVALID_FIELD", "scope")
	apitest.CheckError(t, b.do("DELETE", "/v1/api-keys/banana", b.key, nil), http.StatusNotFound, "NOT_FOUND", "")
}

func TestLastUsed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	lastUsed := func() *time.Time {
		t.Helper()
		k, err := b.db.APIKeyLookup(ctx, b.key)
		if err != nil {
			t.Fatal(err)
		}
		return k.LastUsedAt
	}
	if lastUsed() != nil {
		t.Fatal("a fresh key has last_used_at")
	}
	b.do("GET", "/v1/deployments", b.key, nil)
	if lastUsed() == nil {
		t.Fatal("use not recorded")
	}
	// Make the stored time old, so only this instance's own interval holds
	// the next writes back.
	if _, err := b.db.Pool.Exec(ctx, `UPDATE api_keys SET last_used_at = '2000-01-01' WHERE organization_id = $1`, b.acme); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		b.do("GET", "/v1/deployments", b.key, nil)
	}
	if got := lastUsed(); got.Year() != 2000 {
		t.Fatalf("written again within a minute: %v", got)
	}
	b.clock.Advance(httpapi.KeyTouchInterval)
	b.do("GET", "/v1/deployments", b.key, nil)
	if got := lastUsed(); got.Year() == 2000 {
		t.Fatal("not written after a minute")
	}
}

func TestRequestList(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var ids []string // oldest first
	for i := range 7 {
		dep, model := "m1-a", "m1"
		if i%3 == 2 {
			dep, model = "c1-a", "c1"
		}
		ids = append(ids, b.insert(b.acme, model, dep, ""))
	}
	b.insert(b.other, "om", "om-a", "")
	b.exec(ids[0], `UPDATE async_requests SET state = 'FAILED', finished_at = now() WHERE id = $1`)

	list := func(query string) listBody {
		t.Helper()
		var page listBody
		decode(t, b.do("GET", "/v1/requests"+query, b.key, nil), http.StatusOK, &page)
		return page
	}
	all := list("")
	if len(all.Requests) != 7 || all.NextCursor != nil {
		t.Fatalf("list = %+v", all)
	}
	for i, r := range all.Requests {
		if r.RequestID != ids[len(ids)-1-i] {
			t.Fatalf("not newest first: %d is %s", i, r.RequestID)
		}
	}
	if got := list("?state=FAILED"); len(got.Requests) != 1 || got.Requests[0].RequestID != ids[0] {
		t.Errorf("state=FAILED: %+v", got)
	}
	if got := list("?deployment_id=c1-a"); len(got.Requests) != 2 || got.Requests[0].ChainID != "c1" {
		t.Errorf("deployment_id=c1-a: %+v", got)
	}
	if got := list("?model_id=m1&state=QUEUED"); len(got.Requests) != 4 {
		t.Errorf("model_id=m1&state=QUEUED: %+v", got)
	}
	if got := list("?deployment_id=om-a"); len(got.Requests) != 0 {
		t.Errorf("another organization's deployment lists: %+v", got)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if got := list("?created_after=" + future); len(got.Requests) != 0 {
		t.Errorf("created_after the future: %+v", got)
	}
	if got := list("?created_before=" + future + "&limit=2"); len(got.Requests) != 2 || got.NextCursor == nil {
		t.Errorf("created_before the future, limit 2: %+v", got)
	}
	for _, bad := range []struct{ query, field string }{
		{"?state=DONE", "state"}, {"?limit=0", "limit"}, {"?limit=501", "limit"}, {"?created_after=yesterday", "created_after"},
		{"?cursor=!!", "cursor"}, {"?cursor=" + "MTIz", "cursor"}, {"?state=QUEUED&state=FAILED", "state"},
	} {
		apitest.CheckError(t, b.do("GET", "/v1/requests"+bad.query, b.key, nil), http.StatusBadRequest, "INVALID_FIELD", bad.field)
	}
	apitest.CheckError(t, b.do("GET", "/v1/requests?sate=QUEUED", b.key, nil), http.StatusBadRequest, "UNKNOWN_FIELD", "sate")
}

// TestRequestListPagination pages through while other requests are
// inserted: every request that existed before the first page is seen
// exactly once, in order.
func TestRequestListPagination(t *testing.T) {
	t.Parallel()
	b := setup(t)
	want := map[string]bool{}
	for range 45 {
		want[b.insert(b.acme, "m1", "m1-a", "")] = true
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				b.insert(b.acme, "m1", "m1-a", "")
			}
		}
	})
	seen := map[string]bool{}
	var prev string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > 100 {
			t.Fatal("no end of pages")
		}
		var page listBody
		decode(t, b.do("GET", "/v1/requests?limit=4&cursor="+cursor, b.key, nil), http.StatusOK, &page)
		for _, r := range page.Requests {
			if seen[r.RequestID] {
				t.Fatalf("request %s listed twice", r.RequestID)
			}
			if prev != "" && r.RequestID > prev {
				t.Fatalf("not newest first: %s after %s", r.RequestID, prev)
			}
			seen[r.RequestID], prev = true, r.RequestID
		}
		if page.NextCursor == nil {
			break
		}
		cursor = *page.NextCursor
	}
	close(stop)
	wg.Wait()
	for id := range want {
		if !seen[id] {
			t.Errorf("request %s never listed", id)
		}
	}
}

func TestRequestGet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.insert(b.acme, "m1", "m1-a", "https://hooks.example.com/secret/path?token=abc")
	b.exec(id, `INSERT INTO request_attempts (request_id, number, started_at, finished_at, http_status, code, message, processor)
		VALUES ($1, 1, '2026-12-01T09:00:00Z', '2026-12-01T09:00:01.5Z', 503, 'MODEL_UNAVAILABLE', 'busy', 'p1')`)
	b.exec(id, `INSERT INTO webhook_delivery_attempts (request_id, delivery_id, sent_at, duration_ms, http_status, outcome, error)
		VALUES ($1, 1, '2026-12-01T09:00:02Z', 120, 500, 'RETRY', 'receiver answered 500')`)
	rec := b.do("GET", "/v1/requests/"+id, b.key, nil)
	if strings.Contains(rec.Body.String(), "secret/path") || strings.Contains(rec.Body.String(), "token") {
		t.Fatalf("detail shows the webhook URL's path or query: %s", rec.Body)
	}
	var d struct {
		RequestID   string `json:"request_id"`
		Status      string `json:"status"`
		WebhookHost string `json:"webhook_host"`
		Attempts    []struct {
			Number     int    `json:"number"`
			StartedAt  string `json:"started_at"`
			FinishedAt string `json:"finished_at"`
			DurationMS int    `json:"duration_ms"`
			HTTPStatus int    `json:"http_status"`
			Code       string `json:"code"`
			Message    string `json:"message"`
		} `json:"attempts"`
		WebhookDeliveries []struct {
			SentAt     string `json:"sent_at"`
			DurationMS int    `json:"duration_ms"`
			HTTPStatus int    `json:"http_status"`
			Outcome    string `json:"outcome"`
			Error      string `json:"error"`
		} `json:"webhook_deliveries"`
	}
	decode(t, rec, http.StatusOK, &d)
	if d.RequestID != id || d.Status != "QUEUED" || d.WebhookHost != "hooks.example.com" {
		t.Fatalf("detail = %s", rec.Body)
	}
	if len(d.Attempts) != 1 || d.Attempts[0].DurationMS != 1500 || d.Attempts[0].HTTPStatus != 503 ||
		d.Attempts[0].Code != "MODEL_UNAVAILABLE" || d.Attempts[0].StartedAt != "2026-12-01T09:00:00.000000Z" {
		t.Errorf("attempts = %+v", d.Attempts)
	}
	if len(d.WebhookDeliveries) != 1 || d.WebhookDeliveries[0].Outcome != "RETRY" || d.WebhookDeliveries[0].DurationMS != 120 {
		t.Errorf("webhook_deliveries = %+v", d.WebhookDeliveries)
	}
}

// TestCrossTenant: another organization's request, deployment, model and
// key answer the bytes of a missing one.
func TestCrossTenant(t *testing.T) {
	t.Parallel()
	b := setup(t)
	theirs := b.insert(b.other, "om", "om-a", "")
	missing := requestid.New().String()
	for _, c := range []struct{ method, theirs, missing string }{
		{"GET", "/v1/requests/" + theirs, "/v1/requests/" + missing},
		{"POST", "/v1/requests/" + theirs + "/retry", "/v1/requests/" + missing + "/retry"},
		{"PATCH", "/v1/deployments/om-a", "/v1/deployments/nope"},
		{"POST", "/v1/deployments/om-a/purge", "/v1/deployments/nope/purge"},
	} {
		body := `{"paused": true}`
		a, m := b.do(c.method, c.theirs, b.key, body), b.do(c.method, c.missing, b.key, body)
		if a.Code != http.StatusNotFound || a.Body.String() != m.Body.String() {
			t.Errorf("%s %s = %d %s; missing = %d %s", c.method, c.theirs, a.Code, a.Body, m.Code, m.Body)
		}
	}
	// Their rows are unchanged, and their deployment is not listed.
	r, err := b.db.RequestGetByID(context.Background(), b.other, mustParse(t, theirs))
	if err != nil || r.State != postgres.StateQueued {
		t.Fatalf("their request = %+v, %v", r, err)
	}
	var ds struct {
		Deployments []struct {
			ID string `json:"id"`
		} `json:"deployments"`
	}
	decode(t, b.do("GET", "/v1/deployments", b.key, nil), http.StatusOK, &ds)
	for _, d := range ds.Deployments {
		if d.ID == "om-a" {
			t.Error("another organization's deployment is listed")
		}
	}
	var res struct{ Matched, Changed int64 }
	decode(t, b.do("POST", "/v1/requests/cancel", b.key, map[string]any{"ids": []string{theirs}}), http.StatusOK, &res)
	if res.Matched != 0 || res.Changed != 0 {
		t.Errorf("bulk cancel of their request = %+v", res)
	}
}

func mustParse(t testing.TB, id string) requestid.ID {
	t.Helper()
	rid, err := requestid.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return rid
}
