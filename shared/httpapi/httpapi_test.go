package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/safehttp"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func newClock() *apitest.Clock {
	return apitest.NewClock(time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC))
}

func TestWithTarget(t *testing.T) {
	t.Parallel()

	type seen struct {
		target httpapi.Target
		ok     bool
		path   string
	}
	setup := func(t *testing.T) (http.Handler, func() seen) {
		var got seen
		h := httpapi.WithTarget(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got.target, got.ok = httpapi.TargetFrom(r.Context())
			got.path = r.URL.Path
		}))
		return h, func() seen { return got }
	}

	model := func(id string) httpapi.Target { return httpapi.Target{Kind: postgres.KindModel, ID: id} }
	chain := func(id string) httpapi.Target { return httpapi.Target{Kind: postgres.KindChain, ID: id} }
	prefixed := func(t httpapi.Target) httpapi.Target { t.Prefixed = true; return t }
	tests := []struct {
		name     string
		host     string
		path     string
		want     httpapi.Target
		wantOK   bool
		wantPath string
		notFound bool
	}{
		{name: "ModelHost", host: "model-abc123.api.example.com", path: "/production/async_predict", want: model("abc123"), wantOK: true, wantPath: "/production/async_predict"},
		{name: "ChainHost", host: "chain-xyz.example.com", path: "/async_request/1", want: chain("xyz"), wantOK: true, wantPath: "/async_request/1"},
		{name: "HostWithPort", host: "model-abc.localhost:9001", path: "/x", want: model("abc"), wantOK: true, wantPath: "/x"},
		{name: "HostPrefixCaseInsensitive", host: "MODEL-AbC.example.com", path: "/x", want: model("AbC"), wantOK: true, wantPath: "/x"},
		{name: "HostWithoutDomain", host: "model-abc", path: "/x", wantPath: "/x"},
		{name: "HostEmptyID", host: "model-.example.com", path: "/x", wantPath: "/x"},
		{name: "HostBadID", host: "model-a%b.example.com", path: "/x", wantPath: "/x"},
		{name: "OtherHost", host: "api.example.com", path: "/x", wantPath: "/x"},
		{name: "ModelPath", host: "api.example.com", path: "/models/abc/production/async_predict", want: prefixed(model("abc")), wantOK: true, wantPath: "/production/async_predict"},
		{name: "ChainPath", host: "api.example.com", path: "/chains/c-1/async_request/ff", want: prefixed(chain("c-1")), wantOK: true, wantPath: "/async_request/ff"},
		{name: "PathWinsOverHost", host: "model-serving.example.com", path: "/chains/c1/development/async_run_remote", want: prefixed(chain("c1")), wantOK: true, wantPath: "/development/async_run_remote"},
		{name: "PathPrefixAlone", host: "api.example.com", path: "/models/abc", notFound: true},
		{name: "PathPrefixBadID", host: "api.example.com", path: "/models/a.b/production/async_predict", notFound: true},
		{name: "PathPrefixEmptyID", host: "api.example.com", path: "/models//production/async_predict", notFound: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h, got := setup(t)
			r := httptest.NewRequest(http.MethodGet, "http://placeholder"+tt.path, nil)
			r.Host = tt.host
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if tt.notFound {
				apitest.CheckError(t, rec, http.StatusNotFound, "NOT_FOUND", "")
				return
			}
			g := got()
			if g.ok != tt.wantOK || g.target != tt.want || g.path != tt.wantPath {
				t.Errorf("got %+v, want target %+v ok %v path %q", g, tt.want, tt.wantOK, tt.wantPath)
			}
		})
	}
}

// submitLike mirrors the shape of the submit body, for Decode.
type submitLike struct {
	ModelInput json.RawMessage `json:"model_input"`
	Priority   *int            `json:"priority"`
	Webhook    *string         `json:"webhook_endpoint"`
	Retry      *struct {
		MaxAttempts *int `json:"max_attempts"`
	} `json:"inference_retry_config"`
}

func TestDecode(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name   string
		body   string
		status int // 0: success
		code   string
		field  string
	}{
		{name: "Valid", body: `{"model_input": {"a": 1}, "priority": 1, "inference_retry_config": {"max_attempts": 2}}`},
		{name: "NullIsAbsent", body: `{"model_input": 1, "priority": null}`},
		{name: "Empty", body: ``, status: 400, code: "MALFORMED_JSON"},
		{name: "Whitespace", body: " \n", status: 400, code: "MALFORMED_JSON"},
		{name: "Malformed", body: `{"model_input": `, status: 400, code: "MALFORMED_JSON"},
		{name: "NotJSON", body: `model_input=1`, status: 400, code: "MALFORMED_JSON"},
		{name: "Array", body: `[1, 2]`, status: 400, code: "MALFORMED_JSON"},
		{name: "String", body: `"x"`, status: 400, code: "MALFORMED_JSON"},
		{name: "TrailingData", body: `{"model_input": 1} {}`, status: 400, code: "MALFORMED_JSON"},
		{name: "TypeErrorThenSyntaxError", body: `{"priority": "x", `, status: 400, code: "MALFORMED_JSON"},
		{name: "UnknownTopLevel", body: `{"model_input": 1, "priorty": 1}`, status: 400, code: "UNKNOWN_FIELD", field: "priorty"},
		{name: "UnknownNested", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 2, "max_attemps": 3}}`, status: 400, code: "UNKNOWN_FIELD", field: "inference_retry_config.max_attemps"},
		{name: "UnknownNestedSameNameAsTopLevel", body: `{"model_input": 1, "inference_retry_config": {"priority": 1}}`, status: 400, code: "UNKNOWN_FIELD", field: "inference_retry_config.priority"},
		{name: "WrongTypeString", body: `{"model_input": 1, "priority": "high"}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "WrongTypeFloat", body: `{"model_input": 1, "priority": 1.5}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "WrongTypeNested", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": true}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "WrongTypeObject", body: `{"model_input": 1, "inference_retry_config": 3}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config"},
		{name: "WrongTypeURL", body: `{"model_input": 1, "webhook_endpoint": 5}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "Overflow", body: `{"model_input": 1, "priority": 1e40}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "Repeated", body: `{"model_input": 1, "priority": 1, "priority": 2}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "RepeatedModelInput", body: `{"model_input": 1, "model_input": 2}`, status: 400, code: "INVALID_FIELD", field: "model_input"},
		{name: "RepeatedNested", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 2, "max_attempts": 3}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "RepeatedInsideModelInputIsTheModels", body: `{"model_input": {"a": 1, "a": 2}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(tt.body))
			rec := httptest.NewRecorder()
			var v submitLike
			raw, err := httpapi.Decode(rec, r, 0, &v)
			if tt.status == 0 {
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if string(raw) != tt.body {
					t.Errorf("raw body = %q, want %q", raw, tt.body)
				}
				return
			}
			if err == nil {
				t.Fatalf("Decode succeeded, want %d %s", tt.status, tt.code)
			}
			httpapi.WriteError(rec, r, nil, err)
			apitest.CheckError(t, rec, tt.status, tt.code, tt.field)
		})
	}

	t.Run("RawModelInputKeptAsSent", func(t *testing.T) {
		t.Parallel()
		body := `{"model_input": {"b":  [1, 2.50, "é"],   "a": null}}`
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		var v submitLike
		if _, err := httpapi.Decode(httptest.NewRecorder(), r, 0, &v); err != nil {
			t.Fatal(err)
		}
		if want := `{"b":  [1, 2.50, "é"],   "a": null}`; string(v.ModelInput) != want {
			t.Errorf("model_input = %s, want %s", v.ModelInput, want)
		}
	})

	t.Run("TooLarge", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct {
			name string
			size int
			ok   bool
		}{{"AtLimit", httpapi.MaxBodyBytesDefault, true}, {"OverLimit", httpapi.MaxBodyBytesDefault + 1, false}, {"257KiB", 257 << 10, false}} {
			t.Run(tt.name, func(t *testing.T) {
				prefix, suffix := `{"model_input": "`, `"}`
				body := prefix + strings.Repeat("x", tt.size-len(prefix)-len(suffix)) + suffix
				r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
				rec := httptest.NewRecorder()
				var v submitLike
				_, err := httpapi.Decode(rec, r, 0, &v)
				if tt.ok {
					if err != nil {
						t.Fatalf("Decode of %d bytes: %v", len(body), err)
					}
					return
				}
				httpapi.WriteError(rec, r, nil, err)
				apitest.CheckError(t, rec, http.StatusRequestEntityTooLarge, "BODY_TOO_LARGE", "")
			})
		}
	})
}

func TestWriteError(t *testing.T) {
	t.Parallel()

	secret := errors.New("pq: relation \"secret_table\" does not exist at 10.0.0.5")
	tests := []struct {
		name       string
		err        error
		status     int
		code       string
		field      string
		retryAfter string
	}{
		{name: "APIError", err: httpapi.Invalid("priority", "priority must be between 0 and 2"), status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "WrappedAPIError", err: fmt.Errorf("ctx: %w", httpapi.ErrMethodNotAllowed), status: 405, code: "METHOD_NOT_ALLOWED"},
		{name: "NotFound", err: fmt.Errorf("get: %w", postgres.ErrNotFound), status: 404, code: "NOT_FOUND"},
		{name: "IdempotencyMismatch", err: fmt.Errorf("insert: %w", postgres.ErrIdempotencyMismatch), status: 400, code: "IDEMPOTENCY_KEY_REUSED", field: "Idempotency-Key"},
		{name: "IdempotencyInFlight", err: fmt.Errorf("insert: %w", postgres.ErrIdempotencyInFlight), status: 409, code: "IDEMPOTENCY_KEY_IN_FLIGHT", field: "Idempotency-Key"},
		{name: "RedeliverNoWebhook", err: postgres.ErrRedeliverNoWebhook, status: 409, code: "NO_WEBHOOK_ENDPOINT"},
		{name: "RedeliverNotFinal", err: postgres.ErrRedeliverNotFinal, status: 409, code: "REQUEST_NOT_FINISHED"},
		{name: "RedeliverOutputGone", err: postgres.ErrRedeliverOutputGone, status: 409, code: "OUTPUT_EXPIRED"},
		{name: "URLError", err: safehttp.CheckURL("http://example.com/hook", safehttp.Policy{}), status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "RateLimited", err: &httpapi.Error{Status: 429, Code: "RATE_LIMITED", Message: "slow down", RetryAfter: 1500 * time.Millisecond}, status: 429, code: "RATE_LIMITED", retryAfter: "2"},
		{name: "DeadlineExceeded", err: fmt.Errorf("query: %w", context.DeadlineExceeded), status: 503, code: "SERVICE_UNAVAILABLE", retryAfter: "5"},
		{name: "Unexpected", err: secret, status: 500, code: "INTERNAL_ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			httpapi.WriteError(rec, httptest.NewRequest(http.MethodGet, "/", nil), nil, tt.err)
			apitest.CheckError(t, rec, tt.status, tt.code, tt.field)
			if got := rec.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if strings.Contains(rec.Body.String(), "secret_table") || strings.Contains(rec.Body.String(), "10.0.0.5") {
				t.Errorf("internal error echoed: %s", rec.Body)
			}
		})
	}
}

func TestRouter(t *testing.T) {
	t.Parallel()

	setup := func(t *testing.T) *httpapi.Router {
		var rt httpapi.Router
		ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			httpapi.Encode(w, http.StatusOK, map[string]string{"id": r.PathValue("id")})
		})
		rt.Handle("GET /things/{id}", ok)
		rt.Handle("DELETE /things/{id}", ok)
		rt.Handle("POST /production/async_predict", ok)
		return &rt
	}

	tests := []struct {
		name   string
		method string
		path   string
		status int
		code   string
		allow  string
	}{
		{name: "Match", method: "GET", path: "/things/7", status: 200},
		{name: "UnknownPath", method: "GET", path: "/nothing", status: 404, code: "NOT_FOUND"},
		{name: "Root", method: "GET", path: "/", status: 404, code: "NOT_FOUND"},
		{name: "TrailingSlash", method: "GET", path: "/things/7/", status: 404, code: "NOT_FOUND"},
		{name: "DoubleSlash", method: "POST", path: "//production/async_predict", status: 404, code: "NOT_FOUND"},
		{name: "DotSegment", method: "GET", path: "/x/../things/7", status: 404, code: "NOT_FOUND"},
		{name: "WrongMethod", method: "PUT", path: "/things/7", status: 405, code: "METHOD_NOT_ALLOWED", allow: "DELETE, GET, HEAD"},
		{name: "GetOnPost", method: "GET", path: "/production/async_predict", status: 405, code: "METHOD_NOT_ALLOWED", allow: "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rt := setup(t)
			r := httptest.NewRequest(tt.method, "http://h/", nil)
			r.URL.Path = tt.path
			rec := httptest.NewRecorder()
			rt.ServeHTTP(rec, r)
			if tt.status == 200 {
				if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"7"`) {
					t.Fatalf("got %d %s", rec.Code, rec.Body)
				}
				return
			}
			apitest.CheckError(t, rec, tt.status, tt.code, "")
			if got := rec.Header().Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
		})
	}
}

func TestMux(t *testing.T) {
	t.Parallel()

	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, name) })
	}
	mux := httpapi.Mux(named("submit"), named("status"))
	tests := []struct {
		method, path, want string
	}{
		{"POST", "/production/async_predict", "submit"},
		{"POST", "/models/abc/environments/staging/async_predict", "submit"},
		{"POST", "/chains/abc/deployment/d1/async_run_remote", "submit"},
		{"GET", "/production/async_predict", "status"},
		{"GET", "/async_request/abc", "status"},
		{"DELETE", "/async_request/abc", "status"},
		{"POST", "/async_request/abc/webhook", "status"},
		{"GET", "/production/async_queue_status", "status"},
		{"GET", "/unknown", "status"},
		{"POST", "/async_predict", "submit"},
		{"POST", "/async_run_remote", "submit"},
		{"GET", "/async_queue_status", "status"},
		{"POST", "/models/abc/async_predict", "status"}, // regional routes have no prefix form
		{"POST", "//production/async_predict", "status"},
		{"POST", "/production/async_predict/", "status"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.method+tt.path, "/", "_"), func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
			if rec.Body.String() != tt.want {
				t.Errorf("%s %s went to %s, want %s", tt.method, tt.path, rec.Body, tt.want)
			}
		})
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()

	type bundle struct {
		db    *postgres.DB
		clock *apitest.Clock
		key   string
		orgID int64
		do    func(authorization string) (*httptest.ResponseRecorder, int64)
	}
	setup := func(t *testing.T) bundle {
		t.Helper()
		ctx := context.Background()
		db := pgtest.New(t)
		org, err := db.OrganizationEnsure(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		key := postgres.NewAPIKey()
		if err := db.APIKeyCreate(ctx, org.ID, key, ""); err != nil {
			t.Fatal(err)
		}
		c := newClock()
		h := httpapi.Authenticate(httpapi.AuthOptions{DB: db, Now: c.Now})
		return bundle{db: db, clock: c, key: key, orgID: org.ID, do: func(authorization string) (*httptest.ResponseRecorder, int64) {
			var seen int64
			next := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { seen = httpapi.OrganizationID(r.Context()) })
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			if authorization != "" {
				r.Header.Set("Authorization", authorization)
			}
			rec := httptest.NewRecorder()
			h(next).ServeHTTP(rec, r)
			return rec, seen
		}}
	}

	t.Run("Headers", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tests := []struct {
			name   string
			header string
			ok     bool
		}{
			{"ApiKey", "Api-Key " + b.key, true},
			{"Bearer", "Bearer " + b.key, true},
			{"SchemeCaseInsensitive", "api-key " + b.key, true},
			{"Missing", "", false},
			{"NoScheme", b.key, false},
			{"OtherScheme", "Basic " + b.key, false},
			{"SchemeOnly", "Api-Key", false},
			{"EmptyKey", "Api-Key  ", false},
			{"TwoWords", "Api-Key " + b.key + " extra", false},
			{"UnknownKey", "Api-Key " + postgres.NewAPIKey(), false},
			{"ShortUnknownKey", "Bearer x", false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				rec, org := b.do(tt.header)
				if tt.ok {
					if rec.Code != 200 || org != b.orgID {
						t.Fatalf("got %d org %d, want 200 org %d; %s", rec.Code, org, b.orgID, rec.Body)
					}
					return
				}
				apitest.CheckError(t, rec, http.StatusUnauthorized, "UNAUTHORIZED", "")
				if org != 0 {
					t.Error("next handler ran")
				}
				if strings.Contains(rec.Body.String(), b.key) {
					t.Error("key echoed")
				}
			})
		}
	})

	t.Run("CachedForTTL", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if rec, _ := b.do("Api-Key " + b.key); rec.Code != 200 {
			t.Fatalf("first: %d %s", rec.Code, rec.Body)
		}
		if _, err := b.db.Pool.Exec(context.Background(), `UPDATE api_keys SET revoked_at = now()`); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(httpapi.AuthCacheTTLDefault - time.Second)
		if rec, _ := b.do("Bearer " + b.key); rec.Code != 200 {
			t.Fatalf("within TTL: %d %s, want the cached answer", rec.Code, rec.Body)
		}
		b.clock.Advance(2 * time.Second)
		rec, _ := b.do("Api-Key " + b.key)
		apitest.CheckError(t, rec, http.StatusUnauthorized, "UNAUTHORIZED", "")
	})

	t.Run("DatabaseUnavailable", func(t *testing.T) {
		t.Parallel()
		db, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(db.Close)
		h := httpapi.Authenticate(httpapi.AuthOptions{DB: db})(http.NotFoundHandler())
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Authorization", "Api-Key "+postgres.NewAPIKey())
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		apitest.CheckError(t, rec, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE", "")
		if rec.Header().Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
	})
}

func TestRateLimit(t *testing.T) {
	t.Parallel()

	setup := func(t *testing.T) (*apitest.Clock, func(org int64) *httptest.ResponseRecorder) {
		c := newClock()
		h := httpapi.RateLimit(0.5, 2, c.Now)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		return c, func(org int64) *httptest.ResponseRecorder {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r = r.WithContext(httpapi.WithOrganizationID(r.Context(), org))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			return rec
		}
	}

	c, do := setup(t)
	for i := range 2 {
		if rec := do(1); rec.Code != 200 {
			t.Fatalf("request %d within burst: %d", i, rec.Code)
		}
	}
	rec := do(1)
	apitest.CheckError(t, rec, http.StatusTooManyRequests, "RATE_LIMITED", "")
	if got := rec.Header().Get("Retry-After"); got != "2" { // one token per 2 s
		t.Errorf("Retry-After = %q, want 2", got)
	}
	if rec := do(2); rec.Code != 200 {
		t.Errorf("another organization was limited: %d", rec.Code)
	}
	c.Advance(2 * time.Second)
	if rec := do(1); rec.Code != 200 {
		t.Errorf("after a refill: %d", rec.Code)
	}
	if rec := do(1); rec.Code != http.StatusTooManyRequests {
		t.Errorf("a 429 must not have spent a token, nor a refill add two: %d", rec.Code)
	}
}

// FuzzDecodeBytes checks, for any body, that decoding never panics and
// answers either success, for valid JSON only, or the API's own error: a
// 400 for a body that is not a JSON object, a 422 naming the field at
// fault. `go test` runs the seeds; `go test -fuzz FuzzDecodeBytes
// ./shared/httpapi` looks for more.
func FuzzDecodeBytes(f *testing.F) {
	for _, seed := range []string{
		``, ` `, `{}`, `[]`, `null`, `"x"`, `{"model_input": 1}`,
		`{"model_input": {"a": 1, "a": 2}, "priority": 1}`,
		`{"model_input": 1, "priority": 1, "priority": 2}`,
		`{"model_input": 1, "inference_retry_config": {"max_attempts": 2, "max_attempts": 3}}`,
		`{"model_input": 1, "inference_retry_config": {"max_attemps": 2}}`,
		`{"model_input": 1, "inference_retry_config": 7}`,
		`{"model_input": 1, "priority": 1e400}`, `{"model_input": 1, "priority": "1"}`,
		`{"model_input": 1} {}`, `{"model_input": "\ud800\u0000"}`, "{\"model_input\": \"\xff\"}",
		`{"Priority": 1}`, `{"model_input": [[[[[[[[[[]]]]]]]]]]}`, `{"model_input": 1,}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var v submitLike
		err := httpapi.DecodeBytes(body, &v)
		if err == nil {
			if !json.Valid(body) {
				t.Fatalf("decoded %q, which is not valid JSON", body)
			}
			return
		}
		apiErr, ok := errors.AsType[*httpapi.Error](err)
		if !ok {
			t.Fatalf("%q: %v is not an API error", body, err)
		}
		switch {
		case apiErr.Status == http.StatusBadRequest && apiErr.Code == "MALFORMED_JSON" && apiErr.Field == "":
		case apiErr.Status == http.StatusBadRequest && apiErr.Field != "" && apiErr.Message != "":
		case apiErr.Code == "UNKNOWN_FIELD" && apiErr.Field == "" && apiErr.Message == `unknown field ""`: // {"": ...}
		default:
			t.Fatalf("%q: answered %+v", body, apiErr)
		}
	})
}
