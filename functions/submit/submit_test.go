package submit_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type bundle struct {
	db      *postgres.DB
	h       http.Handler
	clock   *apitest.Clock
	key     string // organization acme's
	otherKy string // organization other's
	spans   *tracetest.SpanRecorder
	metrics *telemetry.Metrics
	// do sends method to path (with the model in the Host, or already in
	// the path when host is not a model host) with body and headers
	// (name, value pairs), authenticated with acme's key.
	do func(method, host, path, body string, headers ...string) *httptest.ResponseRecorder
	// rows counts async_requests rows.
	rows func() int
	// row reads a request.
	row func(id string) postgres.Request
}

// setup seeds two organizations: acme with model m1 (deployments m1-a for
// production and staging, m1-b for development), model m2 (m2-a,
// production) and chain c1 (c1-a for production, development and staging;
// c1-b, no environment); other with model om (om-a, production).
func setup(t *testing.T, opts ...func(*submit.Options)) bundle {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	seed := func(org string, models []postgres.Model, deps []postgres.Deployment) (string, int64) {
		tenant := pgtest.SeedTenant(t, db, org, models, deps)
		return tenant.Key, tenant.ID
	}
	key, _ := seed("acme",
		[]postgres.Model{{ID: "m1", Kind: postgres.KindModel}, {ID: "m2", Kind: postgres.KindModel}, {ID: "c1", Kind: postgres.KindChain}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production", "staging"}},
			{ID: "m1-b", ModelID: "m1", Environments: []string{"development"}},
			{ID: "m2-a", ModelID: "m2", Environments: []string{"production"}},
			{ID: "c1-a", ModelID: "c1", Environments: []string{"production", "development", "staging"}},
			{ID: "c1-b", ModelID: "c1"},
		})
	otherKey, _ := seed("other", []postgres.Model{{ID: "om", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "om-a", ModelID: "om", Environments: []string{"production"}}})

	c := apitest.NewClock(time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans), sdktrace.WithIDGenerator(telemetry.IDGenerator()))
	metrics := telemetry.NewMetrics(prometheus.NewRegistry())
	o := submit.Options{DB: db, Now: c.Now, TracerProvider: tp, Metrics: metrics}
	for _, f := range opts {
		f(&o)
	}
	h := apitest.Validated(t, submit.New(o))
	b := bundle{db: db, h: h, clock: c, key: key, otherKy: otherKey, spans: spans, metrics: metrics}
	b.do = func(method, host, path, body string, headers ...string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://placeholder/", strings.NewReader(body))
		r.URL.Path = path
		r.Host = host
		r.Header.Set("Authorization", "Api-Key "+key)
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Set(headers[i], headers[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	b.rows = func() int {
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	b.row = func(id string) postgres.Request {
		rid, err := requestid.Parse(id)
		if err != nil {
			t.Fatalf("request id %q: %v", id, err)
		}
		var org int64
		if err := db.Pool.QueryRow(ctx, `SELECT organization_id FROM async_requests WHERE id = $1`, rid).Scan(&org); err != nil {
			t.Fatalf("row %s: %v", id, err)
		}
		r, err := db.RequestGetByID(ctx, org, rid)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return b
}

// created asserts a 201 {"request_id": ...} and returns the id.
func created(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if rec.Code != http.StatusCreated {
		t.Fatalf("status = %d, want 201; body %s", rec.Code, rec.Body)
	}
	var b map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || len(b) != 1 {
		t.Fatalf("body %s is not {\"request_id\": ...}", rec.Body)
	}
	id, _ := b["request_id"].(string)
	if _, err := requestid.Parse(id); err != nil {
		t.Fatalf("request_id %q: %v", id, err)
	}
	return id
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestSubmitRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)

	tests := []struct {
		kind, id, path, wantDeployment string
	}{
		{"model", "m1", "/production/async_predict", "m1-a"},
		{"model", "m1", "/development/async_predict", "m1-b"},
		{"model", "m1", "/environments/staging/async_predict", "m1-a"},
		{"model", "m1", "/environments/development/async_predict", "m1-b"},
		{"model", "m1", "/deployment/m1-b/async_predict", "m1-b"},
		{"chain", "c1", "/production/async_run_remote", "c1-a"},
		{"chain", "c1", "/development/async_run_remote", "c1-a"},
		{"chain", "c1", "/environments/staging/async_run_remote", "c1-a"},
		{"chain", "c1", "/deployment/c1-b/async_run_remote", "c1-b"},
	}
	for _, f := range apitest.Forms {
		for _, tt := range tests {
			t.Run(f.Name+strings.ReplaceAll(tt.path, "/", "_"), func(t *testing.T) {
				t.Parallel()
				host, path := f.URL(tt.kind, tt.id, tt.path)
				input := `{"prompt":  "hi", "n": [1, 2.50]}`
				id := created(t, b.do(http.MethodPost, host, path, `{"model_input": `+input+`}`))
				r := b.row(id)
				if r.ModelID != tt.id || r.IsChain != (tt.kind == "chain") || r.DeploymentID != tt.wantDeployment {
					t.Errorf("stored model %q chain %v deployment %q, want %q %v %q",
						r.ModelID, r.IsChain, r.DeploymentID, tt.id, tt.kind == "chain", tt.wantDeployment)
				}
				if string(r.Input) != input {
					t.Errorf("stored input %s, want the bytes sent %s", r.Input, input)
				}
				if r.State != postgres.StateQueued || r.WebhookState != postgres.WebhookNone {
					t.Errorf("state %s webhook %s", r.State, r.WebhookState)
				}
			})
		}
	}
}

func TestSubmitDefaultsAndBounds(t *testing.T) {
	t.Parallel()
	b := setup(t)

	t.Run("Defaults", func(t *testing.T) {
		t.Parallel()
		r := b.row(created(t, b.do("POST", "model-m1.x.io", "/production/async_predict", `{"model_input": null}`)))
		if string(r.Input) != "null" {
			t.Errorf("input %q, want null (present, so accepted)", r.Input)
		}
		if r.Priority != submit.PriorityDefault || r.MaxAttempts != submit.MaxAttemptsDefault ||
			r.InitialDelayMS != submit.InitialDelayMSDefault || r.MaxDelayMS != submit.MaxDelayMSDefault {
			t.Errorf("defaults not applied: %+v", r)
		}
		if d := r.DeadlineAt.Sub(r.CreatedAt); d != submit.MaxTimeInQueueDefault {
			t.Errorf("deadline - created = %v, want %v", d, submit.MaxTimeInQueueDefault)
		}
	})

	tests := []struct {
		name  string
		body  string
		check func(r postgres.Request) bool
	}{
		{"Minimums", `{"model_input": 1, "priority": 0, "max_time_in_queue_seconds": 10,
			"inference_retry_config": {"max_attempts": 1, "initial_delay_ms": 0, "max_delay_ms": 0}}`,
			func(r postgres.Request) bool {
				return r.Priority == 0 && r.DeadlineAt.Sub(r.CreatedAt) == 10*time.Second && r.MaxAttempts == 1 && r.InitialDelayMS == 0 && r.MaxDelayMS == 0
			}},
		{"Maximums", `{"model_input": 1, "priority": 2, "max_time_in_queue_seconds": 259200,
			"inference_retry_config": {"max_attempts": 10, "initial_delay_ms": 10000, "max_delay_ms": 60000}}`,
			func(r postgres.Request) bool {
				return r.Priority == 2 && r.DeadlineAt.Sub(r.CreatedAt) == 259200*time.Second && r.MaxAttempts == 10 && r.InitialDelayMS == 10000 && r.MaxDelayMS == 60000
			}},
		{"NullsAreDefaults", `{"model_input": 1, "priority": null, "webhook_endpoint": null, "inference_retry_config": null}`,
			func(r postgres.Request) bool {
				return r.Priority == 0 && r.MaxAttempts == 3 && r.WebhookEndpoint == "" && r.WebhookState == postgres.WebhookNone
			}},
		{"PartialRetryConfig", `{"model_input": 1, "inference_retry_config": {"max_delay_ms": 100}}`,
			func(r postgres.Request) bool {
				return r.MaxAttempts == 3 && r.InitialDelayMS == 1000 && r.MaxDelayMS == 100
			}},
		{"Webhook", `{"model_input": 1, "webhook_endpoint": "https://hooks.example.com/x?y=1"}`,
			func(r postgres.Request) bool {
				return r.WebhookEndpoint == "https://hooks.example.com/x?y=1" && r.WebhookState == postgres.WebhookPending
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := b.row(created(t, b.do("POST", "model-m1.x.io", "/production/async_predict", tt.body)))
			if !tt.check(r) {
				t.Errorf("stored %+v", r)
			}
		})
	}
}

func TestSubmitValidation(t *testing.T) {
	t.Parallel()

	big := func(size int) string {
		prefix, suffix := `{"model_input": "`, `"}`
		return prefix + strings.Repeat("x", size-len(prefix)-len(suffix)) + suffix
	}
	tests := []struct {
		name    string
		body    string
		headers []string // name, value, ...
		opts    func(*submit.Options)
		status  int
		code    string
		field   string
	}{
		{name: "MalformedJSON", body: `{"model_input": 1`, status: 400, code: "MALFORMED_JSON"},
		{name: "EmptyBody", body: ``, status: 400, code: "MALFORMED_JSON"},
		{name: "NotAnObject", body: `[{"model_input": 1}]`, status: 400, code: "MALFORMED_JSON"},
		{name: "TrailingData", body: `{"model_input": 1}x`, status: 400, code: "MALFORMED_JSON"},
		{name: "MissingModelInput", body: `{"priority": 1}`, status: 400, code: "INVALID_FIELD", field: "model_input"},
		{name: "EmptyObject", body: `{}`, status: 400, code: "INVALID_FIELD", field: "model_input"},
		{name: "UnknownField", body: `{"model_input": 1, "webhook_url": "https://a.example.com"}`, status: 400, code: "UNKNOWN_FIELD", field: "webhook_url"},
		{name: "UnknownNestedField", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 2, "backoff": 2}}`, status: 400, code: "UNKNOWN_FIELD", field: "inference_retry_config.backoff"},
		{name: "FieldOtherCase", body: `{"model_input": 1, "Priority": 1}`, status: 400, code: "UNKNOWN_FIELD", field: "Priority"},
		{name: "NestedFieldOtherCase", body: `{"model_input": 1, "inference_retry_config": {"Max_Attempts": 2}}`, status: 400, code: "UNKNOWN_FIELD", field: "inference_retry_config.Max_Attempts"},
		{name: "ModelInputOtherCase", body: `{"Model_Input": 1}`, status: 400, code: "UNKNOWN_FIELD", field: "Model_Input"},
		{name: "FieldTwice", body: `{"model_input": 1, "priority": 0, "priority": 2}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "NestedFieldTwice", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 1, "max_attempts": 9}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "PriorityString", body: `{"model_input": 1, "priority": "1"}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "PriorityFloat", body: `{"model_input": 1, "priority": 0.5}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "PriorityBelowMin", body: `{"model_input": 1, "priority": -1}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "PriorityAboveMax", body: `{"model_input": 1, "priority": 3}`, status: 400, code: "INVALID_FIELD", field: "priority"},
		{name: "MaxTimeInQueueString", body: `{"model_input": 1, "max_time_in_queue_seconds": "600"}`, status: 400, code: "INVALID_FIELD", field: "max_time_in_queue_seconds"},
		{name: "MaxTimeInQueueBelowMin", body: `{"model_input": 1, "max_time_in_queue_seconds": 9}`, status: 400, code: "INVALID_FIELD", field: "max_time_in_queue_seconds"},
		{name: "MaxTimeInQueueAboveMax", body: `{"model_input": 1, "max_time_in_queue_seconds": 259201}`, status: 400, code: "INVALID_FIELD", field: "max_time_in_queue_seconds"},
		{name: "MaxTimeInQueueHuge", body: `{"model_input": 1, "max_time_in_queue_seconds": 99999999999999999999}`, status: 400, code: "INVALID_FIELD", field: "max_time_in_queue_seconds"},
		{name: "RetryConfigNotObject", body: `{"model_input": 1, "inference_retry_config": [3]}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config"},
		{name: "MaxAttemptsString", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": "3"}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "MaxAttemptsBelowMin", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 0}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "MaxAttemptsAboveMax", body: `{"model_input": 1, "inference_retry_config": {"max_attempts": 11}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_attempts"},
		{name: "InitialDelayString", body: `{"model_input": 1, "inference_retry_config": {"initial_delay_ms": "1"}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.initial_delay_ms"},
		{name: "InitialDelayBelowMin", body: `{"model_input": 1, "inference_retry_config": {"initial_delay_ms": -1}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.initial_delay_ms"},
		{name: "InitialDelayAboveMax", body: `{"model_input": 1, "inference_retry_config": {"initial_delay_ms": 10001}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.initial_delay_ms"},
		{name: "MaxDelayString", body: `{"model_input": 1, "inference_retry_config": {"max_delay_ms": false}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_delay_ms"},
		{name: "MaxDelayBelowMin", body: `{"model_input": 1, "inference_retry_config": {"max_delay_ms": -5}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_delay_ms"},
		{name: "MaxDelayAboveMax", body: `{"model_input": 1, "inference_retry_config": {"max_delay_ms": 60001}}`, status: 400, code: "INVALID_FIELD", field: "inference_retry_config.max_delay_ms"},
		{name: "WebhookNotString", body: `{"model_input": 1, "webhook_endpoint": {"url": "https://a.example.com"}}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookNotURL", body: `{"model_input": 1, "webhook_endpoint": "not a url"}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookHTTP", body: `{"model_input": 1, "webhook_endpoint": "http://hooks.example.com/x"}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookPrivate", body: `{"model_input": 1, "webhook_endpoint": "https://10.0.0.8/hook"}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookLoopback", body: `{"model_input": 1, "webhook_endpoint": "https://localhost:9003/webhook"}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookMetadata", body: `{"model_input": 1, "webhook_endpoint": "https://169.254.169.254/latest"}`, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookPrivateWithAllowHTTPOnly", body: `{"model_input": 1, "webhook_endpoint": "http://127.0.0.1:9003/webhook"}`,
			opts: func(o *submit.Options) { o.Webhook.AllowHTTP = true }, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookHTTPWithAllowPrivateOnly", body: `{"model_input": 1, "webhook_endpoint": "http://127.0.0.1:9003/webhook"}`,
			opts: func(o *submit.Options) { o.Webhook.AllowPrivate = true }, status: 400, code: "INVALID_FIELD", field: "webhook_endpoint"},
		{name: "WebhookLocalAllowed", body: `{"model_input": 1, "webhook_endpoint": "http://127.0.0.1:9003/webhook"}`,
			opts: func(o *submit.Options) { o.Webhook.AllowHTTP, o.Webhook.AllowPrivate = true, true }, status: 201},
		{name: "BodyAtLimit", body: big(256 << 10), status: 201},
		{name: "BodyTooLarge", body: big(257 << 10), status: 413, code: "BODY_TOO_LARGE"},
		{name: "BodyOneByteTooLarge", body: big(256<<10 + 1), status: 413, code: "BODY_TOO_LARGE"},
		{name: "Compressed", body: "\x1f\x8b\x08\x00", headers: []string{"Content-Encoding", "gzip"}, status: 415, code: "UNSUPPORTED_CONTENT_ENCODING"},
		{name: "IdentityEncoding", body: `{"model_input": 1}`, headers: []string{"Content-Encoding", "identity"}, status: 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var opts []func(*submit.Options)
			if tt.opts != nil {
				opts = append(opts, tt.opts)
			}
			b := setup(t, opts...)
			rec := b.do(http.MethodPost, "model-m1.api.example.com", "/production/async_predict", tt.body, tt.headers...)
			if tt.status == http.StatusCreated {
				created(t, rec)
				if n := b.rows(); n != 1 {
					t.Errorf("%d rows, want 1", n)
				}
				return
			}
			apitest.CheckError(t, rec, tt.status, tt.code, tt.field)
			if n := b.rows(); n != 0 {
				t.Errorf("%d rows written by a %d", n, tt.status)
			}
		})
	}
}

func TestSubmitNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t)

	const body = `{"model_input": 1}`
	unknownModel := b.do("POST", "model-nope.api.example.com", "/production/async_predict", body)
	apitest.CheckError(t, unknownModel, http.StatusNotFound, "NOT_FOUND", "")

	tests := []struct {
		name       string
		kind, id   string
		path       string
		sameAsNope bool // byte-identical to an unknown model's answer
	}{
		{name: "ModelOnRunRemote", kind: "model", id: "m1", path: "/production/async_run_remote", sameAsNope: true},
		{name: "ChainOnPredict", kind: "chain", id: "c1", path: "/production/async_predict", sameAsNope: true},
		{name: "UnknownChain", kind: "chain", id: "nope", path: "/production/async_run_remote", sameAsNope: true},
		{name: "UnknownEnvironment", kind: "model", id: "m1", path: "/environments/qa/async_predict", sameAsNope: true},
		{name: "EnvironmentOfAnotherModel", kind: "model", id: "m2", path: "/development/async_predict", sameAsNope: true},
		{name: "UnknownDeployment", kind: "model", id: "m1", path: "/deployment/zzz/async_predict", sameAsNope: true},
		{name: "DeploymentOfAnotherModel", kind: "model", id: "m1", path: "/deployment/m2-a/async_predict", sameAsNope: true},
		{name: "AnotherOrgsModel", kind: "model", id: "om", path: "/production/async_predict", sameAsNope: true},
		{name: "AnotherOrgsDeployment", kind: "model", id: "om", path: "/deployment/om-a/async_predict", sameAsNope: true},
		{name: "ChainOnModelsPrefix", kind: "model", id: "c1", path: "/production/async_run_remote", sameAsNope: true},
		// Postgres text can't hold these; no name stored is one of them.
		{name: "EnvironmentInvalidUTF8", kind: "model", id: "m1", path: "/environments/qa\xff/async_predict", sameAsNope: true},
		{name: "EnvironmentNUL", kind: "model", id: "m1", path: "/environments/qa\x00/async_predict", sameAsNope: true},
		{name: "DeploymentInvalidUTF8", kind: "model", id: "m1", path: "/deployment/m1-a\xff/async_predict", sameAsNope: true},
		{name: "DeploymentNUL", kind: "model", id: "m1", path: "/deployment/\x00/async_predict", sameAsNope: true},
	}
	for _, f := range apitest.Forms {
		for _, tt := range tests {
			t.Run(f.Name+tt.name, func(t *testing.T) {
				t.Parallel()
				host, path := f.URL(tt.kind, tt.id, tt.path)
				rec := b.do("POST", host, path, body)
				apitest.CheckError(t, rec, http.StatusNotFound, "NOT_FOUND", "")
				if tt.sameAsNope && rec.Body.String() != unknownModel.Body.String() {
					t.Errorf("body %s differs from an unknown model's %s", rec.Body, unknownModel.Body)
				}
			})
		}
	}

	t.Run("NoModel", func(t *testing.T) {
		t.Parallel()
		apitest.CheckError(t, b.do("POST", "api.example.com", "/production/async_predict", body), http.StatusNotFound, "NOT_FOUND", "")
	})
	t.Run("UnknownPath", func(t *testing.T) {
		t.Parallel()
		apitest.CheckError(t, b.do("POST", "model-m1.api.example.com", "/production/async_predictx", body), http.StatusNotFound, "NOT_FOUND", "")
	})
	t.Run("WrongMethod", func(t *testing.T) {
		t.Parallel()
		rec := b.do("GET", "model-m1.api.example.com", "/production/async_predict", "")
		apitest.CheckError(t, rec, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "")
		if rec.Header().Get("Allow") != "POST" {
			t.Errorf("Allow = %q", rec.Header().Get("Allow"))
		}
	})
	if n := b.rows(); n != 0 {
		t.Errorf("%d rows written by 404s", n)
	}
}

func TestSubmitAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)

	tests := []struct {
		name   string
		header string
		status int
	}{
		{"Missing", "", 401},
		{"Malformed", "Token abc", 401},
		{"NoScheme", b.key, 401},
		{"UnknownKey", "Api-Key " + postgres.NewAPIKey(), 401},
		{"ApiKey", "Api-Key " + b.key, 201},
		{"Bearer", "Bearer " + b.key, 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("POST", "/production/async_predict", strings.NewReader(`{"model_input": 1}`))
			r.Host = "model-m1.api.example.com"
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			rec := httptest.NewRecorder()
			b.h.ServeHTTP(rec, r)
			if tt.status == 201 {
				created(t, rec)
				return
			}
			apitest.CheckError(t, rec, tt.status, "UNAUTHORIZED", "")
		})
	}
}

func TestSubmitIdempotency(t *testing.T) {
	t.Parallel()

	const host, path = "model-m1.api.example.com", "/production/async_predict"
	t.Run("Replay", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		first := b.do("POST", host, path, `{"model_input": {"a": 1}}`, "Idempotency-Key", "k-1")
		id := created(t, first)
		if first.Header().Get("Idempotent-Replayed") != "" {
			t.Error("first submit marked as a replay")
		}
		again := b.do("POST", host, path, `{"model_input": {"a": 1}}`, "Idempotency-Key", "k-1")
		if got := created(t, again); got != id {
			t.Errorf("replay id %s, want %s", got, id)
		}
		if again.Header().Get("Idempotent-Replayed") != "true" {
			t.Error("replay not marked Idempotent-Replayed: true")
		}
		if n := b.rows(); n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
		if got := counterValue(t, b.metrics.Submitted.WithLabelValues("m1-a")); got != 1 {
			t.Errorf("submitted metric = %v, want 1 (replays are not counted)", got)
		}
		other := b.do("POST", host, path, `{"model_input": {"a": 1}}`, "Idempotency-Key", "k-2")
		if created(t, other) == id {
			t.Error("another key replayed the first request")
		}
		// The path-prefix form names the same URL: still a replay.
		if got := created(t, b.do("POST", "api.example.com", "/models/m1"+path, `{"model_input": {"a": 1}}`, "Idempotency-Key", "k-1")); got != id {
			t.Errorf("replay through the path prefix gave %s, want %s", got, id)
		}
	})

	t.Run("DifferentBody", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		created(t, b.do("POST", host, path, `{"model_input": 1}`, "Idempotency-Key", "k"))
		apitest.CheckError(t, b.do("POST", host, path, `{"model_input": 2}`, "Idempotency-Key", "k"),
			http.StatusBadRequest, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
		apitest.CheckError(t, b.do("POST", "model-m2.api.example.com", path, `{"model_input": 1}`, "Idempotency-Key", "k"),
			http.StatusBadRequest, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
		apitest.CheckError(t, b.do("POST", host, "/environments/staging/async_predict", `{"model_input": 1}`, "Idempotency-Key", "k"),
			http.StatusBadRequest, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
		if n := b.rows(); n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
	})

	t.Run("KeyTooLong", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		apitest.CheckError(t, b.do("POST", host, path, `{"model_input": 1}`, "Idempotency-Key", strings.Repeat("k", 256)),
			http.StatusBadRequest, "INVALID_FIELD", "Idempotency-Key")
		if n := b.rows(); n != 0 {
			t.Errorf("%d rows, want 0", n)
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		const n = 12
		recs := make([]*httptest.ResponseRecorder, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				recs[i] = b.do("POST", host, path, `{"model_input": "same"}`, "Idempotency-Key", "race")
			})
		}
		wg.Wait()
		ids := map[string]bool{}
		for _, rec := range recs {
			switch rec.Code {
			case http.StatusCreated:
				ids[created(t, rec)] = true
			case http.StatusConflict:
				apitest.CheckError(t, rec, http.StatusConflict, "IDEMPOTENCY_KEY_IN_FLIGHT", "Idempotency-Key")
			default:
				t.Errorf("status %d: %s", rec.Code, rec.Body)
			}
		}
		if len(ids) != 1 {
			t.Errorf("%d distinct ids, want 1", len(ids))
		}
		if rows := b.rows(); rows != 1 {
			t.Errorf("%d rows, want exactly 1", rows)
		}
	})
}

func TestSubmitLimits(t *testing.T) {
	t.Parallel()
	const host, path, body = "model-m1.api.example.com", "/production/async_predict", `{"model_input": 1}`

	t.Run("RateLimit", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *submit.Options) { o.API = config.API{SubmitRate: 1, SubmitBurst: 1} })
		created(t, b.do("POST", host, path, body))
		rec := b.do("POST", host, path, body)
		apitest.CheckError(t, rec, http.StatusTooManyRequests, "RATE_LIMITED", "")
		if rec.Header().Get("Retry-After") != "1" {
			t.Errorf("Retry-After = %q, want 1", rec.Header().Get("Retry-After"))
		}
		if n := b.rows(); n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
		b.clock.Advance(time.Second)
		created(t, b.do("POST", host, path, body))
	})

	t.Run("ActiveCap", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *submit.Options) { o.API = config.API{MaxActiveRequests: 2} })
		first := created(t, b.do("POST", host, path, body))
		created(t, b.do("POST", host, path, body))
		rec := b.do("POST", host, path, body)
		apitest.CheckError(t, rec, http.StatusTooManyRequests, "TOO_MANY_ACTIVE_REQUESTS", "")
		if rec.Header().Get("Retry-After") == "" {
			t.Error("no Retry-After")
		}
		if n := b.rows(); n != 2 {
			t.Errorf("%d rows, want 2", n)
		}
		// A finished request frees a place once the count is read again.
		if _, err := b.db.Pool.Exec(context.Background(), `UPDATE async_requests SET state = 'SUCCEEDED' WHERE id = $1`,
			b.row(first).ID); err != nil {
			t.Fatal(err)
		}
		b.clock.Advance(submit.ActiveCountTTLDefault)
		created(t, b.do("POST", host, path, body))
	})

	t.Run("ActiveCapReplays", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *submit.Options) { o.API = config.API{MaxActiveRequests: 1} })
		first := created(t, b.do("POST", host, path, body, "Idempotency-Key", "k1"))
		// At the cap: the retry of the accepted submit still gets its answer...
		rec := b.do("POST", host, path, body, "Idempotency-Key", "k1")
		if got := created(t, rec); got != first || rec.Header().Get("Idempotent-Replayed") != "true" {
			t.Errorf("replay at the cap = %s (replayed %q), want %s", got, rec.Header().Get("Idempotent-Replayed"), first)
		}
		// ...the same key with another body is still a 422...
		apitest.CheckError(t, b.do("POST", host, path, `{"model_input": 2}`, "Idempotency-Key", "k1"),
			http.StatusBadRequest, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
		// ...and a new key is refused.
		apitest.CheckError(t, b.do("POST", host, path, body, "Idempotency-Key", "k2"),
			http.StatusTooManyRequests, "TOO_MANY_ACTIVE_REQUESTS", "")
		if n := b.rows(); n != 1 {
			t.Errorf("%d rows, want 1", n)
		}
	})

	t.Run("ActiveCapCountsOtherInstances", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *submit.Options) { o.API = config.API{MaxActiveRequests: 1} })
		other := submit.New(submit.Options{DB: b.db, API: config.API{MaxActiveRequests: 1}})
		r := httptest.NewRequest("POST", path, strings.NewReader(body))
		r.Host, r.Header["Authorization"] = host, []string{"Api-Key " + b.key}
		rec := httptest.NewRecorder()
		other.ServeHTTP(rec, r)
		created(t, rec)
		apitest.CheckError(t, b.do("POST", host, path, body), http.StatusTooManyRequests, "TOO_MANY_ACTIVE_REQUESTS", "")
	})
}

func TestSubmitDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	db, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	h := submit.New(submit.Options{DB: db})
	r := httptest.NewRequest("POST", "/models/m1/production/async_predict", strings.NewReader(`{"model_input": 1}`))
	r.Header.Set("Authorization", "Api-Key "+postgres.NewAPIKey())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	apitest.CheckError(t, rec, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE", "")
	if rec.Header().Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
}

func TestSubmitSpan(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := created(t, b.do("POST", "chain-c1.api.example.com", "/production/async_run_remote", `{"model_input": 1}`))
	rid, _ := requestid.Parse(id)
	byName := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range b.spans.Ended() {
		if s.SpanContext().TraceID().String() == id {
			byName[s.Name()] = s
		}
	}
	root, sub := byName["request"], byName["submit"]
	if root == nil || sub == nil {
		t.Fatalf("spans of the request: %v, want request and submit", byName)
	}
	// The root is exported with the span id every span of the request has
	// as its parent.
	if root.SpanContext().SpanID() != telemetry.RequestSpanID(rid) || root.Parent().IsValid() {
		t.Errorf("root span id %s (parent %s), want %s, no parent", root.SpanContext().SpanID(), root.Parent().SpanID(), telemetry.RequestSpanID(rid))
	}
	if sub.Parent().SpanID() != telemetry.RequestSpanID(rid) {
		t.Errorf("submit span's parent %s, want the root %s", sub.Parent().SpanID(), telemetry.RequestSpanID(rid))
	}
	for _, s := range []sdktrace.ReadOnlySpan{root, sub} {
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.String()
		}
		want := map[string]string{"request_id": id, "chain_id": "c1", "deployment_id": "c1-a"}
		for k, v := range want {
			if attrs[k] != v {
				t.Errorf("%s span: attribute %s = %q, want %q", s.Name(), k, attrs[k], v)
			}
		}
		if m, ok := attrs["model_id"]; ok {
			t.Errorf("%s span of a chain has model_id %q", s.Name(), m)
		}
	}
}
