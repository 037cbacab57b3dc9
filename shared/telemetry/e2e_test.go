package telemetry_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/localdev/examplemodel"
	"github.com/openasync/asyncrequest/localdev/receiver"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/probe"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/webhook"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The seeded names of the end-to-end run.
const (
	modelID          = "m1"
	modelDeployment  = "m1-1"
	chainID          = "c1"
	chainDeployment  = "c1-1"
	upstreamModelKey = "upstream-model-credential-5f2c9a"
	upstreamChainKey = "Bearer upstream-chain-credential-7d41e0"
)

// TestEndToEnd runs the whole service in one process (the API over HTTP, the
// processor and the deliverer loops, a model and a webhook receiver over
// HTTP, a real Postgres) and checks what it reports: the spans of each
// request share the request id as trace id, that trace reaches the model in
// traceparent, the scraped metrics count exactly what was processed, and the
// logs carry the request's identity but never a secret.
//
// It is not parallel: SetupTracing installs the global TracerProvider, which
// the processor's spans go to.
func TestEndToEnd(t *testing.T) {
	e := setup(t)

	// A wrong key is refused and, like the right one, never logged.
	if code := e.post(t, "/models/"+modelID+"/production/async_predict", "Api-Key "+e.wrongKey, `{"model_input": 1}`, nil); code != http.StatusUnauthorized {
		t.Fatalf("submit with an unknown key: status %d, want 401", code)
	}

	type attemptWant struct {
		status int    // the model's answer
		code   string // the error code recorded; empty on success
	}
	cases := []struct {
		name        string
		path        string
		body        string
		deployment  string
		modelPath   string
		credential  string
		wantStatus  string
		wantWebhook string
		attempts    []attemptWant
		webhooks    []int // the receiver's answers, in order
	}{
		{
			name: "ModelWithWebhook", path: "/models/m1/production/async_predict",
			body:       `{"model_input": {"text": "hello"}, "webhook_endpoint": "%s/webhook/ok"}`,
			deployment: modelDeployment, modelPath: "/predict", credential: "Api-Key " + upstreamModelKey,
			wantStatus: "SUCCEEDED", wantWebhook: "SUCCEEDED",
			attempts: []attemptWant{{200, ""}}, webhooks: []int{200},
		},
		{
			name: "FirstAttemptUnavailable", path: "/models/m1/production/async_predict",
			body:       `{"model_input": {"fail_attempts": 1}, "webhook_endpoint": "%s/webhook/ok", "inference_retry_config": {"initial_delay_ms": 10}}`,
			deployment: modelDeployment, modelPath: "/predict", credential: "Api-Key " + upstreamModelKey,
			wantStatus: "SUCCEEDED", wantWebhook: "SUCCEEDED",
			attempts: []attemptWant{{503, postgres.CodeModelUnavailable}, {200, ""}}, webhooks: []int{200},
		},
		{
			name: "Chain", path: "/chains/c1/production/async_run_remote",
			body:       `{"model_input": "chained", "webhook_endpoint": "%s/webhook/ok"}`,
			deployment: chainDeployment, modelPath: "/run_remote", credential: upstreamChainKey,
			wantStatus: "SUCCEEDED", wantWebhook: "SUCCEEDED",
			attempts: []attemptWant{{200, ""}}, webhooks: []int{200},
		},
		{
			name: "InvalidInputNoWebhook", path: "/models/m1/production/async_predict",
			body:       `{"model_input": {"fail_status": 400}}`,
			deployment: modelDeployment, modelPath: "/predict", credential: "Api-Key " + upstreamModelKey,
			wantStatus: "FAILED", wantWebhook: "NO_WEBHOOK_PROVIDED",
			attempts: []attemptWant{{400, postgres.CodeModelInvalidInput}},
		},
		{
			name: "WebhookRefused", path: "/models/m1/production/async_predict",
			body:       `{"model_input": [1, 2], "webhook_endpoint": "%s/webhook/gone"}`,
			deployment: modelDeployment, modelPath: "/predict", credential: "Api-Key " + upstreamModelKey,
			wantStatus: "WEBHOOK_FAILED", wantWebhook: "FAILED",
			attempts: []attemptWant{{200, ""}}, webhooks: []int{410},
		},
		{
			name: "WebhookRetried", path: "/models/m1/production/async_predict",
			body:       `{"model_input": null, "webhook_endpoint": "%s/webhook/flaky"}`,
			deployment: modelDeployment, modelPath: "/predict", credential: "Api-Key " + upstreamModelKey,
			wantStatus: "SUCCEEDED", wantWebhook: "SUCCEEDED",
			attempts: []attemptWant{{200, ""}}, webhooks: []int{503, 200},
		},
	}

	// Everything is submitted before the processor starts, so the
	// queue-depth gauge can be checked against a known queue.
	ids := make([]string, len(cases))
	for i, c := range cases {
		body := c.body
		if strings.Contains(body, "%s") {
			body = fmt.Sprintf(body, e.hooks.URL)
		}
		ids[i] = e.submit(t, c.path, body, nil)
	}
	// An idempotent replay answers the original id and counts once.
	replayed := e.submit(t, "/models/m1/production/async_predict", `{"model_input": "again"}`, http.Header{"Idempotency-Key": {"k-1"}})
	if again := e.submit(t, "/models/m1/production/async_predict", `{"model_input": "again"}`, http.Header{"Idempotency-Key": {"k-1"}}); again != replayed {
		t.Fatalf("idempotent replay answered %s, want %s", again, replayed)
	}

	if err := e.proc.RefreshQueueDepth(t.Context()); err != nil {
		t.Fatal(err)
	}
	queued := e.scrape(t)
	if got, want := series(t, queued, "async_requests_queue_depth"), map[string]float64{
		"deployment_id=" + modelDeployment + ",state=QUEUED": 6,
		"deployment_id=" + chainDeployment + ",state=QUEUED": 1,
	}; !maps.Equal(got, want) {
		t.Errorf("queue depth before processing = %v, want %v", got, want)
	}

	e.start(t)
	for i, c := range cases {
		e.waitFinal(t, ids[i], c.wantStatus, c.wantWebhook)
	}
	e.waitFinal(t, replayed, "SUCCEEDED", "NO_WEBHOOK_PROVIDED")
	e.stop(t)

	spans := e.spans.GetSpans()

	t.Run("Traces", func(t *testing.T) {
		for i, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				id := ids[i]
				mine := spansOf(spans, id)
				byName := map[string][]tracetest.SpanStub{}
				for _, s := range mine {
					byName[s.Name] = append(byName[s.Name], s)
				}
				wantNames := []string{"attempt", "request", "submit"}
				if len(c.webhooks) > 0 {
					wantNames = append(wantNames, "webhook")
				}
				if got := slices.Sorted(maps.Keys(byName)); !slices.Equal(got, wantNames) {
					t.Errorf("span names in trace %s = %v, want %v", id, got, wantNames)
				}

				// One exported root per request, whose span id every other
				// span of the request has as its parent: siblings of one
				// trace, wherever each ran. Chains say chain_id, not model_id.
				roots := byName["request"]
				if len(roots) != 1 {
					t.Fatalf("%d request root spans, want 1", len(roots))
				}
				rid, _ := requestid.Parse(id)
				if got, want := roots[0].SpanContext.SpanID(), telemetry.RequestSpanID(rid); got != want || roots[0].Parent.IsValid() {
					t.Errorf("root span id %s (parent %v), want %s without a parent", got, roots[0].Parent.SpanID(), want)
				}
				for _, sp := range mine {
					if sp.Name != "request" && sp.Parent.SpanID() != roots[0].SpanContext.SpanID() {
						t.Errorf("%s span's parent %s, want the root %s", sp.Name, sp.Parent.SpanID(), roots[0].SpanContext.SpanID())
					}
					wantKey, otherKey := "model_id", "chain_id"
					if strings.HasPrefix(c.path, "/chains/") {
						wantKey, otherKey = otherKey, wantKey
					}
					if attr(sp, wantKey) == "" || attr(sp, otherKey) != "" {
						t.Errorf("%s span has %s %q and %s %q", sp.Name, wantKey, attr(sp, wantKey), otherKey, attr(sp, otherKey))
					}
				}

				subs := byName["submit"]
				if len(subs) != 1 {
					t.Fatalf("%d submit spans, want 1", len(subs))
				}
				if subs[0].SpanKind != trace.SpanKindServer {
					t.Errorf("submit span kind %v, want server", subs[0].SpanKind)
				}
				if got := attr(subs[0], "request_id"); got != id {
					t.Errorf("submit span request_id = %q, want %q", got, id)
				}
				if got := attr(subs[0], "deployment_id"); got != c.deployment {
					t.Errorf("submit span deployment_id = %q, want %q", got, c.deployment)
				}

				atts := byName["attempt"]
				slices.SortFunc(atts, func(a, b tracetest.SpanStub) int {
					return int(intAttr(a, "attempt") - intAttr(b, "attempt"))
				})
				if len(atts) != len(c.attempts) {
					t.Fatalf("%d attempt spans, want %d", len(atts), len(c.attempts))
				}
				var wantTraceparents []string
				for n, want := range c.attempts {
					s := atts[n]
					if s.SpanKind != trace.SpanKindClient {
						t.Errorf("attempt %d: span kind %v, want client", n+1, s.SpanKind)
					}
					if got := intAttr(s, "attempt"); got != int64(n+1) {
						t.Errorf("attempt span %d: async_request.attempt = %d", n+1, got)
					}
					if got := attr(s, "deployment_id"); got != c.deployment {
						t.Errorf("attempt %d: deployment_id = %q, want %q", n+1, got, c.deployment)
					}
					if got := intAttr(s, "http.response.status_code"); got != int64(want.status) {
						t.Errorf("attempt %d: http.response.status_code = %d, want %d", n+1, got, want.status)
					}
					wantCode, wantSpanStatus := want.code, codes.Error
					if want.code == "" {
						wantSpanStatus = codes.Ok
					}
					if got := attr(s, "error.code"); got != wantCode {
						t.Errorf("attempt %d: error.code = %q, want %q", n+1, got, wantCode)
					}
					if s.Status.Code != wantSpanStatus {
						t.Errorf("attempt %d: span status %v (%q), want %v", n+1, s.Status.Code, s.Status.Description, wantSpanStatus)
					}
					if wantSpanStatus == codes.Error && !strings.Contains(s.Status.Description, fmt.Sprint(want.status)) {
						t.Errorf("attempt %d: span status description %q does not name the answer %d", n+1, s.Status.Description, want.status)
					}
					wantTraceparents = append(wantTraceparents, "00-"+id+"-"+s.SpanContext.SpanID().String()+"-01")
				}

				calls := e.model.calls(id)
				var gotTraceparents []string
				for _, call := range calls {
					gotTraceparents = append(gotTraceparents, call.traceparent)
					if call.path != c.modelPath {
						t.Errorf("model called on %s, want %s", call.path, c.modelPath)
					}
					if call.authorization != c.credential {
						t.Errorf("model got Authorization %q, want %q", call.authorization, c.credential)
					}
				}
				slices.Sort(gotTraceparents)
				slices.Sort(wantTraceparents)
				if !slices.Equal(gotTraceparents, wantTraceparents) {
					t.Errorf("traceparents that reached the model = %v, want one per attempt span %v", gotTraceparents, wantTraceparents)
				}

				hooks := byName["webhook"]
				slices.SortFunc(hooks, func(a, b tracetest.SpanStub) int {
					return int(intAttr(a, "webhook.attempt") - intAttr(b, "webhook.attempt"))
				})
				if len(hooks) != len(c.webhooks) {
					t.Fatalf("%d webhook spans, want %d", len(hooks), len(c.webhooks))
				}
				for n, wantStatus := range c.webhooks {
					s := hooks[n]
					if got := intAttr(s, "http.response.status_code"); got != int64(wantStatus) {
						t.Errorf("webhook %d: http.response.status_code = %d, want %d", n+1, got, wantStatus)
					}
					if got := attr(s, "request_id"); got != id {
						t.Errorf("webhook %d: request_id = %q, want %q", n+1, got, id)
					}
					if failed := s.Status.Code == codes.Error; failed != (wantStatus >= 300) {
						t.Errorf("webhook %d: span status %v for answer %d", n+1, s.Status.Code, wantStatus)
					}
				}
			})
		}

		t.Run("IdempotentReplay", func(t *testing.T) {
			var replays []tracetest.SpanStub
			for _, s := range spans {
				if s.Name == "submit" && attr(s, "original_request_id") == replayed {
					replays = append(replays, s)
				}
			}
			if len(replays) != 1 {
				t.Fatalf("%d replay submit spans naming %s, want 1", len(replays), replayed)
			}
			if !boolAttr(replays[0], "idempotent_replay") {
				t.Error("replay submit span lacks idempotent_replay=true")
			}
			if got := len(spansOf(spans, replayed)); got != 3 {
				t.Errorf("trace %s has %d spans, want the root, the submit and one attempt", replayed, got)
			}
		})
	})

	t.Run("Metrics", func(t *testing.T) {
		mfs := e.scrape(t)
		counters := []struct {
			name string
			want map[string]float64
		}{
			{"async_requests_submitted_total", map[string]float64{
				"deployment_id=" + modelDeployment: 6, "deployment_id=" + chainDeployment: 1,
			}},
			{"async_requests_completed_total", map[string]float64{"status=SUCCEEDED": 6, "status=FAILED": 1}},
			{"async_request_attempts_total", map[string]float64{
				"outcome=success": 6, "outcome=" + postgres.CodeModelUnavailable: 1, "outcome=" + postgres.CodeModelInvalidInput: 1,
			}},
			{"async_webhook_deliveries_total", map[string]float64{"outcome=success": 4, "outcome=retry": 1, "outcome=failed": 1}},
		}
		for _, c := range counters {
			if got := series(t, mfs, c.name); !maps.Equal(got, c.want) {
				t.Errorf("%s = %v, want %v", c.name, got, c.want)
			}
		}
		histograms := []struct {
			name string
			want uint64
		}{
			{"async_request_inference_duration_seconds", 8}, // one per model call
			{"async_request_queue_wait_seconds", 8},         // one per claim
			{"async_webhook_delivery_duration_seconds", 6},  // one per webhook sent
		}
		for _, h := range histograms {
			if got := histogramCount(t, mfs, h.name); got != h.want {
				t.Errorf("%s count = %d, want %d", h.name, got, h.want)
			}
		}

		// With the queue empty, the gauge has no series left.
		if err := e.proc.RefreshQueueDepth(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := series(t, e.scrape(t), "async_requests_queue_depth"); len(got) != 0 {
			t.Errorf("queue depth after processing = %v, want no series", got)
		}

		for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "go_gc_duration_seconds", "go_info"} {
			if mfs[name] == nil {
				t.Errorf("Go runtime metric %s missing", name)
			}
		}
	})

	t.Run("Logs", func(t *testing.T) {
		raw := e.logs.String()
		lines := parseLogs(t, raw)

		forbidden := map[string]string{
			"API key":                 e.apiKey,
			"refused API key":         e.wrongKey,
			"webhook secret":          e.secret,
			"webhook secret key":      strings.TrimPrefix(e.secret, webhook.SecretPrefix),
			"model credential":        upstreamModelKey,
			"chain credential":        strings.TrimPrefix(upstreamChainKey, "Bearer "),
			"model Authorization":     "Api-Key " + upstreamModelKey,
			"API Authorization value": "Api-Key " + e.apiKey,
		}
		for i, sig := range e.hookSignatures() {
			forbidden[fmt.Sprintf("webhook signature %d", i)] = sig
		}
		if len(forbidden) < 10 {
			t.Fatalf("only %d secrets to look for: the webhooks' signatures were not captured", len(forbidden))
		}
		for what, secret := range forbidden {
			if secret == "" {
				t.Fatalf("%s is empty", what)
			}
			if strings.Contains(raw, secret) {
				t.Errorf("the logs contain the %s", what)
			}
		}

		// Each attempt is logged with the request's identity.
		for i, c := range cases {
			for n := range c.attempts {
				l := findLine(lines, "attempt finished", ids[i], n+1)
				if l == nil {
					t.Errorf("%s: no line for attempt %d of %s", c.name, n+1, ids[i])
					continue
				}
				if l["deployment_id"] != c.deployment || l["model_id"] == "" {
					t.Errorf("%s: attempt line %v lacks the model or deployment", c.name, l)
				}
			}
		}

		// Every line of the processor and the deliverer about a request
		// carries its identity.
		need := map[string][]string{
			"attempt finished":                          {"request_id", "model_id", "deployment_id", "attempt"},
			"webhook delivered":                         {"request_id", "model_id", "deployment_id", "attempt"},
			"webhook not delivered; will retry":         {"request_id", "model_id", "deployment_id", "attempt"},
			"webhook delivery failed":                   {"request_id", "model_id", "deployment_id", "attempt"},
			"model not ready; request waits":            {"request_id", "model_id", "deployment_id", "attempt"},
			"request handed back":                       {"request_id", "model_id", "deployment_id", "attempt"},
			"lease lost; attempt cut off":               {"request_id", "model_id", "deployment_id", "attempt"},
			"processor lost; attempt counted as failed": {"request_id", "model_id", "deployment_id", "attempt"},
		}
		seen := map[string]int{}
		for _, l := range lines {
			msg, _ := l["msg"].(string)
			fields, ok := need[msg]
			if !ok {
				continue
			}
			seen[msg]++
			for _, f := range fields {
				if v, ok := l[f]; !ok || v == "" {
					t.Errorf("log line %q lacks %s: %v", msg, f, l)
				}
			}
		}
		for _, msg := range []string{"attempt finished", "webhook delivered", "webhook not delivered; will retry", "webhook delivery failed"} {
			if seen[msg] == 0 {
				t.Errorf("no %q line logged", msg)
			}
		}
	})
}

// env is the running service of one test, with what it needs to drive and
// observe it.
type env struct {
	pg       *postgres.DB
	api      *httptest.Server
	hooks    *httptest.Server
	probe    *httptest.Server
	model    *recordingModel
	receiver *receiver.Receiver
	proc     *processtick.Processor
	deliver  *deliverwebhook.Deliverer
	spans    *tracetest.InMemoryExporter
	logs     *apitest.Buffer

	apiKey, wrongKey, secret string

	hookMu   sync.Mutex
	hookSigs []string // every signature header value the webhooks carried

	stopWork func()
	stopped  chan struct{}
}

func setup(t *testing.T) *env {
	t.Helper()
	ctx := t.Context()
	pg := pgtest.New(t)
	e := &env{pg: pg, logs: &apitest.Buffer{}, spans: tracetest.NewInMemoryExporter()}

	log, err := telemetry.NewLogger(e.logs, "json", "debug")
	if err != nil {
		t.Fatal(err)
	}
	tp, err := telemetry.SetupTracing(ctx, "test", sdktrace.NewSimpleSpanProcessor(e.spans))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	reg := prometheus.NewRegistry()
	metrics := telemetry.NewMetrics(reg)

	org, err := pg.OrganizationEnsure(ctx, "e2e")
	if err != nil {
		t.Fatal(err)
	}
	e.apiKey, e.wrongKey = postgres.NewAPIKey(), postgres.NewAPIKey()
	if err := pg.APIKeyCreate(ctx, org.ID, e.apiKey, "e2e"); err != nil {
		t.Fatal(err)
	}
	if e.secret, err = webhook.GenerateSecret(); err != nil {
		t.Fatal(err)
	}
	if err := pg.WebhookSecretRotate(ctx, org.ID, e.secret, postgres.WebhookSecretOverlapDefault); err != nil {
		t.Fatal(err)
	}

	e.model = &recordingModel{next: examplemodel.New(examplemodel.Options{Logger: log}), seen: map[string][]modelCall{}}
	model := httptest.NewServer(e.model)
	t.Cleanup(model.Close)
	for _, m := range []struct {
		id, deployment, credential string
		kind                       postgres.ModelKind
	}{
		{modelID, modelDeployment, upstreamModelKey, postgres.KindModel},
		{chainID, chainDeployment, upstreamChainKey, postgres.KindChain},
	} {
		if err := pg.ModelCreate(ctx, postgres.Model{ID: m.id, OrganizationID: org.ID, Kind: m.kind, Name: m.id}); err != nil {
			t.Fatal(err)
		}
		if err := pg.DeploymentCreate(ctx, org.ID, postgres.Deployment{
			ID: m.deployment, ModelID: m.id, URL: model.URL, Environments: []string{"production"},
			MaxConcurrency: 4, UpstreamCredential: m.credential,
		}); err != nil {
			t.Fatal(err)
		}
	}

	e.receiver = receiver.New(receiver.Options{Secrets: []string{e.secret}, Logger: log})
	e.hooks = httptest.NewServer(e.hookHandler())
	t.Cleanup(e.hooks.Close)

	hookCfg := config.Webhook{
		Timeout: 10 * time.Second, Schedule: []time.Duration{0, 20 * time.Millisecond},
		CompatHeaders: true, AllowHTTP: true, AllowPrivate: true, Concurrency: 4,
	}
	e.api = httptest.NewServer(httpapi.Mux(
		submit.New(submit.Options{DB: pg, Webhook: hookCfg, Logger: log, Metrics: metrics, TracerProvider: tp}),
		status.New(status.Options{DB: pg, Logger: log}),
	))
	t.Cleanup(e.api.Close)
	e.probe = httptest.NewServer(probe.New(pg, reg))
	t.Cleanup(e.probe.Close)

	e.proc = processtick.New(processtick.Options{DB: pg, Logger: log, Metrics: metrics, Config: config.Processor{
		ModelTimeout: 30 * time.Second, Concurrency: 8, LeaseDuration: 30 * time.Second,
		PollInterval: 50 * time.Millisecond, ShutdownGrace: 10 * time.Second, BackpressureDelay: 50 * time.Millisecond,
	}})
	e.deliver = deliverwebhook.New(deliverwebhook.Options{
		DB: pg, Config: hookCfg, Logger: log, Metrics: metrics, TracerProvider: tp,
		PollInterval: 50 * time.Millisecond, ShutdownGrace: 10 * time.Second,
	})
	return e
}

// start runs the processor and the deliverer loops until stop.
func (e *env) start(t *testing.T) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	e.stopWork, e.stopped = cancel, make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { _ = e.proc.Run(ctx) })
	wg.Go(func() { _ = e.deliver.Run(ctx) })
	go func() {
		wg.Wait()
		close(e.stopped)
	}()
	t.Cleanup(func() { e.stop(t) })
}

// stop stops the loops gracefully and waits for them, so every span has
// ended and every metric is final.
func (e *env) stop(t *testing.T) {
	if e.stopWork == nil {
		return
	}
	e.stopWork()
	select {
	case <-e.stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the processor and the deliverer did not stop")
	}
	e.stopWork = nil
}

// hookHandler serves the webhooks: /webhook/gone refuses with 410,
// /webhook/flaky answers 503 to its first webhook, and the rest reach the
// harness's receiver. It keeps every signature sent.
func (e *env) hookHandler() http.Handler {
	flakyFailed := false
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hookMu.Lock()
		for _, h := range []string{webhook.HeaderSignature, webhook.HeaderCompatSignature} {
			v := r.Header.Get(h)
			if v == "" {
				continue
			}
			e.hookSigs = append(e.hookSigs, v)
			for _, part := range strings.FieldsFunc(v, func(c rune) bool { return c == ' ' || c == ',' || c == '=' }) {
				if len(part) > 16 { // the signatures, not "v1"
					e.hookSigs = append(e.hookSigs, part)
				}
			}
		}
		refuse := r.URL.Path == "/webhook/gone"
		if r.URL.Path == "/webhook/flaky" && !flakyFailed {
			flakyFailed, refuse = true, true
		}
		e.hookMu.Unlock()
		switch {
		case r.URL.Path == "/webhook/gone":
			http.Error(w, "gone", http.StatusGone)
		case refuse:
			http.Error(w, "try later", http.StatusServiceUnavailable)
		default:
			e.receiver.ServeHTTP(w, r)
		}
	})
}

func (e *env) hookSignatures() []string {
	e.hookMu.Lock()
	defer e.hookMu.Unlock()
	return slices.Clone(e.hookSigs)
}

// post sends a submit and returns the status code.
func (e *env) post(t *testing.T, path, authorization, body string, h http.Header) int {
	t.Helper()
	code, _ := e.do(t, http.MethodPost, path, authorization, body, h)
	return code
}

func (e *env) do(t *testing.T, method, path, authorization, body string, h http.Header) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, e.api.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(req.Header, h)
	req.Header.Set("Authorization", authorization)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// submit submits body to path and returns the request id.
func (e *env) submit(t *testing.T, path, body string, h http.Header) string {
	t.Helper()
	code, b := e.do(t, http.MethodPost, path, "Api-Key "+e.apiKey, body, h)
	if code != http.StatusCreated {
		t.Fatalf("submit %s %s: %d %s", path, body, code, b)
	}
	var res struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(b, &res); err != nil || res.RequestID == "" {
		t.Fatalf("submit answered %s", b)
	}
	return res.RequestID
}

// waitFinal polls the status route until the request is final and its
// webhook settled, and checks both.
func (e *env) waitFinal(t *testing.T, id, wantStatus, wantWebhook string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, b := e.do(t, http.MethodGet, "/async_request/"+id, "Api-Key "+e.apiKey, "", nil)
		if code != http.StatusOK {
			t.Fatalf("status of %s: %d %s", id, code, b)
		}
		var st struct {
			Status        string `json:"status"`
			WebhookStatus string `json:"webhook_status"`
		}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		settled := st.Status != "QUEUED" && st.Status != "IN_PROGRESS" && st.WebhookStatus != "PENDING"
		if settled {
			if st.Status != wantStatus || st.WebhookStatus != wantWebhook {
				t.Fatalf("request %s ended %s / webhook %s, want %s / %s", id, st.Status, st.WebhookStatus, wantStatus, wantWebhook)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s still %s / webhook %s", id, st.Status, st.WebhookStatus)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// scrape reads /metrics over HTTP and parses it with the Prometheus text
// parser.
func (e *env) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(e.probe.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %d", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// series returns a counter's or gauge's values keyed by their labels
// ("name=value,..." sorted by name).
func series(t *testing.T, mfs map[string]*dto.MetricFamily, name string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	mf := mfs[name]
	if mf == nil {
		return out
	}
	for _, m := range mf.GetMetric() {
		var labels []string
		for _, l := range m.GetLabel() {
			labels = append(labels, l.GetName()+"="+l.GetValue())
		}
		slices.Sort(labels)
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			out[strings.Join(labels, ",")] = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			out[strings.Join(labels, ",")] = m.GetGauge().GetValue()
		default:
			t.Fatalf("%s is a %v", name, mf.GetType())
		}
	}
	return out
}

func histogramCount(t *testing.T, mfs map[string]*dto.MetricFamily, name string) uint64 {
	t.Helper()
	mf := mfs[name]
	if mf == nil || mf.GetType() != dto.MetricType_HISTOGRAM || len(mf.GetMetric()) != 1 {
		t.Fatalf("%s: not one histogram: %v", name, mf)
	}
	return mf.GetMetric()[0].GetHistogram().GetSampleCount()
}

// spansOf returns the spans in the trace whose id is the request id.
func spansOf(spans tracetest.SpanStubs, id string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.SpanContext.TraceID().String() == id {
			out = append(out, s)
		}
	}
	return out
}

func attrValue(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func attr(s tracetest.SpanStub, key string) string {
	v, _ := attrValue(s, key)
	return v.AsString()
}

func intAttr(s tracetest.SpanStub, key string) int64 {
	v, _ := attrValue(s, key)
	return v.AsInt64()
}

func boolAttr(s tracetest.SpanStub, key string) bool {
	v, _ := attrValue(s, key)
	return v.AsBool()
}

// parseLogs decodes every line; each must be one JSON object.
func parseLogs(t *testing.T, raw string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(raw))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line is not JSON: %q", sc.Text())
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		t.Fatal("nothing was logged")
	}
	return lines
}

func findLine(lines []map[string]any, msg, id string, attempt int) map[string]any {
	for _, l := range lines {
		if l["msg"] == msg && l["request_id"] == id && l["attempt"] == float64(attempt) {
			return l
		}
	}
	return nil
}

// modelCall is what one call to the model carried.
type modelCall struct {
	path, traceparent, authorization string
}

// recordingModel is the harness's example model, recording the headers of
// each call by the trace id of its traceparent.
type recordingModel struct {
	next http.Handler
	mu   sync.Mutex
	seen map[string][]modelCall
}

func (m *recordingModel) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tp := r.Header.Get("traceparent")
	traceID := ""
	if parts := strings.Split(tp, "-"); len(parts) == 4 {
		traceID = parts[1]
	}
	m.mu.Lock()
	m.seen[traceID] = append(m.seen[traceID], modelCall{path: r.URL.Path, traceparent: tp, authorization: r.Header.Get("Authorization")})
	m.mu.Unlock()
	m.next.ServeHTTP(w, r)
}

func (m *recordingModel) calls(traceID string) []modelCall {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.seen[traceID])
}
