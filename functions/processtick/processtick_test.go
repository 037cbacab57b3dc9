package processtick_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitFor is how long a test waits for a condition before failing.
const waitFor = 30 * time.Second

type bundle struct {
	t   *testing.T
	db  *postgres.DB
	org postgres.Organization
	n   atomic.Int64 // names models and deployments
}

func setup(t *testing.T) *bundle {
	t.Helper()
	db := pgtest.New(t)
	org, err := db.OrganizationEnsure(context.Background(), "acme")
	if err != nil {
		t.Fatal(err)
	}
	return &bundle{t: t, db: db, org: org}
}

// deployment is what deploy creates.
type deployment struct {
	ModelID, ID string
	Chain       bool
}

type deployOptions struct {
	MaxConcurrency int
	Chain          bool
	Credential     string
}

// deploy creates a model (or chain) with one deployment at url.
func (b *bundle) deploy(url string, o deployOptions) deployment {
	b.t.Helper()
	ctx := context.Background()
	n := b.n.Add(1)
	d := deployment{ModelID: fmt.Sprintf("m%d", n), ID: fmt.Sprintf("d%d", n), Chain: o.Chain}
	kind := postgres.KindModel
	if o.Chain {
		kind = postgres.KindChain
	}
	if err := b.db.ModelCreate(ctx, postgres.Model{ID: d.ModelID, OrganizationID: b.org.ID, Kind: kind}); err != nil {
		b.t.Fatal(err)
	}
	err := b.db.DeploymentCreate(ctx, b.org.ID, postgres.Deployment{
		ID: d.ID, ModelID: d.ModelID, URL: url, MaxConcurrency: max(o.MaxConcurrency, 1), UpstreamCredential: o.Credential,
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return d
}

// submit queues a request with the API's defaults, changed by edit.
func (b *bundle) submit(d deployment, input string, edit ...func(*postgres.RequestInsertParams)) requestid.ID {
	b.t.Helper()
	p := postgres.RequestInsertParams{
		ID: requestid.New(), OrganizationID: b.org.ID, ModelID: d.ModelID, IsChain: d.Chain, DeploymentID: d.ID,
		MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000, Input: []byte(input),
	}
	for _, e := range edit {
		e(&p)
	}
	if _, err := b.db.RequestInsert(context.Background(), p); err != nil {
		b.t.Fatal(err)
	}
	return p.ID
}

func (b *bundle) get(id requestid.ID) postgres.Request {
	b.t.Helper()
	r, err := b.db.RequestGetByID(context.Background(), b.org.ID, id)
	if err != nil {
		b.t.Fatal(err)
	}
	return r
}

// waitUntil polls the request until ok says so.
func (b *bundle) waitUntil(id requestid.ID, what string, ok func(postgres.Request) bool) postgres.Request {
	b.t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		r := b.get(id)
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("request %s: still not %s: state %s, attempts %d, errors %+v", id, what, r.State, r.Attempts, r.Errors)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *bundle) waitState(id requestid.ID, state postgres.RequestState) postgres.Request {
	b.t.Helper()
	return b.waitUntil(id, string(state), func(r postgres.Request) bool { return r.State == state })
}

// processor returns a processor with fast test settings, changed by edit.
func (b *bundle) processor(edit ...func(*processtick.Options)) *processtick.Processor {
	o := processtick.Options{
		DB: b.db,
		Config: config.Processor{
			ModelTimeout: 10 * time.Second, Concurrency: 16, LeaseDuration: 10 * time.Second,
			PollInterval: 50 * time.Millisecond, ShutdownGrace: 5 * time.Second, BackpressureDelay: 10 * time.Second,
		},
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		SweepInterval: 50 * time.Millisecond,
	}
	for _, e := range edit {
		e(&o)
	}
	return processtick.New(o)
}

// run runs p until the test ends or stop is called; stop waits for Run to
// return.
func (b *bundle) run(p *processtick.Processor) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				b.t.Errorf("Run: %v", err)
			}
		})
	}
	b.t.Cleanup(stop)
	return stop
}

// scalar runs a query returning one value.
func scalar[T any](b *bundle, sql string, args ...any) T {
	b.t.Helper()
	var v T
	if err := b.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&v); err != nil {
		b.t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// model is an httptest model that answers with handle and records calls.
type model struct {
	*httptest.Server
	mu     sync.Mutex
	calls  []*http.Request
	inputs []string
}

func newModel(t *testing.T, handle http.HandlerFunc) *model {
	m := &model{}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		m.mu.Lock()
		m.calls = append(m.calls, r)
		m.inputs = append(m.inputs, string(body))
		m.mu.Unlock()
		handle(w, r)
	}))
	t.Cleanup(m.Close)
	return m
}

func (m *model) callCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.calls)
}

func (m *model) call(i int) *http.Request {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.calls[i]
}

func answer(status int, body string, headers ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(headers); i += 2 {
			w.Header().Set(headers[i], headers[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// closedURL is the URL of a port nothing listens on.
func closedURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

// counterValue reads a counter.
func counterValue(t testing.TB, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// eventually polls ok until it holds, failing the test after waitFor.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestOutcomes(t *testing.T) {
	t.Parallel()

	type want struct {
		state    postgres.RequestState
		attempts int
		code     string // the one error recorded; empty for none
		output   string
		// delay is the expected due_at - status_at of a QUEUED outcome.
		delay time.Duration
	}
	retry := func(code string) want {
		return want{state: postgres.StateQueued, attempts: 1, code: code, delay: 10 * time.Second}
	}
	fail := func(code string) want { return want{state: postgres.StateFailed, attempts: 1, code: code} }
	notReady := func(delay time.Duration) want {
		return want{state: postgres.StateQueued, attempts: 0, code: postgres.CodeModelNotReady, delay: delay}
	}
	tests := []struct {
		name   string
		handle http.HandlerFunc // nil: url is used as is
		url    func(t *testing.T) string
		want   want
	}{
		{name: "SuccessJSON", handle: answer(200, `{"y": [1, 2]}`), want: want{state: postgres.StateSucceeded, attempts: 1, output: `{"y": [1, 2]}`}},
		{name: "SuccessNotJSON", handle: answer(201, `plain "text"`), want: want{state: postgres.StateSucceeded, attempts: 1, output: `"plain \"text\""`}},
		{name: "TooManyRequestsRetryAfterSeconds", handle: answer(429, "busy", "Retry-After", "7"), want: notReady(7 * time.Second)},
		{name: "TooManyRequestsRetryAfterDate", handle: func(w http.ResponseWriter, r *http.Request) {
			answer(429, "busy", "Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))(w, r)
		}, want: notReady(time.Hour)},
		{name: "TooManyRequestsNoRetryAfter", handle: answer(429, "busy"), want: notReady(10 * time.Second)},
		{name: "ConnectionRefused", url: closedURL, want: notReady(10 * time.Second)},
		{name: "DNSFailure", url: func(*testing.T) string { return "http://model.invalid" }, want: notReady(10 * time.Second)},
		{name: "InternalServerError", handle: answer(500, "boom"), want: retry(postgres.CodeModelPredictError)},
		// A NUL byte can't be stored in Postgres text or jsonb; the message
		// must still be, and the outcome with it.
		{name: "InternalServerErrorBinaryBody", handle: answer(500, "bad\x00\xffbody"), want: retry(postgres.CodeModelPredictError)},
		{name: "BadGateway", handle: answer(502, ""), want: retry(postgres.CodeModelUnavailable)},
		{name: "ServiceUnavailable", handle: answer(503, "loading"), want: retry(postgres.CodeModelUnavailable)},
		// A 503's Retry-After lengthens the backoff (10 s here), never shortens it.
		{name: "ServiceUnavailableRetryAfterLonger", handle: answer(503, "loading", "Retry-After", "30"),
			want: want{state: postgres.StateQueued, attempts: 1, code: postgres.CodeModelUnavailable, delay: 30 * time.Second}},
		{name: "ServiceUnavailableRetryAfterShorter", handle: answer(503, "loading", "Retry-After", "1"), want: retry(postgres.CodeModelUnavailable)},
		{name: "GatewayTimeout", handle: answer(504, ""), want: retry(postgres.CodeModelPredictTimeout)},
		{name: "OwnTimeout", handle: func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(waitFor):
			}
		}, want: retry(postgres.CodeModelPredictTimeout)},
		{name: "BadRequest", handle: answer(400, "no"), want: fail(postgres.CodeModelInvalidInput)},
		{name: "UnprocessableEntity", handle: answer(422, "no"), want: fail(postgres.CodeModelInvalidInput)},
		{name: "BadRequestBinaryBody", handle: answer(400, "\x00"), want: fail(postgres.CodeModelInvalidInput)},
		{name: "NotFound", handle: answer(404, ""), want: fail(postgres.CodeModelDoesNotExist)},
		{name: "Teapot", handle: answer(418, "tea"), want: fail(postgres.CodeModelPredictError)},
		{name: "Redirect", handle: answer(307, "", "Location", "http://example.invalid/"), want: fail(postgres.CodeModelPredictError)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			var url string
			if tt.handle != nil {
				url = newModel(t, tt.handle).URL
			} else {
				url = tt.url(t)
			}
			d := b.deploy(url, deployOptions{MaxConcurrency: 1})
			id := b.submit(d, `{"x": 1}`, func(p *postgres.RequestInsertParams) {
				p.InitialDelayMS, p.MaxDelayMS = 10000, 60000
			})
			reg := prometheus.NewRegistry()
			metrics := telemetry.NewMetrics(reg)
			b.run(b.processor(func(o *processtick.Options) {
				o.Config.ModelTimeout = 300 * time.Millisecond
				o.Metrics = metrics
			}))
			r := b.waitUntil(id, "past its first attempt", func(r postgres.Request) bool {
				return r.State.Final() || len(r.Errors) > 0
			})
			if r.State != tt.want.state || r.Attempts != tt.want.attempts {
				t.Fatalf("state %s, attempts %d; want %s, %d (errors %+v)", r.State, r.Attempts, tt.want.state, tt.want.attempts, r.Errors)
			}
			switch {
			case tt.want.code == "" && len(r.Errors) != 0:
				t.Errorf("errors = %+v, want none", r.Errors)
			case tt.want.code != "" && (len(r.Errors) != 1 || r.Errors[0].Code != tt.want.code || r.Errors[0].Message == ""):
				t.Errorf("errors = %+v, want one %s", r.Errors, tt.want.code)
			}
			if string(r.Output) != tt.want.output {
				t.Errorf("output = %q, want %q", r.Output, tt.want.output)
			}
			if r.State == postgres.StateQueued {
				got := r.DueAt.Sub(r.StatusAt)
				if got < tt.want.delay-2*time.Second || got > tt.want.delay {
					t.Errorf("due %v after the outcome, want about %v", got, tt.want.delay)
				}
				if scalar[bool](b, `SELECT input IS NOT NULL AND lease_owner IS NULL FROM async_requests WHERE id = $1`, id) != true {
					t.Error("a queued request lost its input or kept its lease")
				}
			}
			if r.State.Final() {
				// A FAILED request keeps its input, for a retry; a SUCCEEDED one drops it.
				if (r.Input != nil) != (r.State == postgres.StateFailed) || r.FinishedAt == nil || r.OutputExpiresAt == nil {
					t.Errorf("final request: input %q, finished_at %v, output_expires_at %v", r.Input, r.FinishedAt, r.OutputExpiresAt)
				}
				eventually(t, "completed metric counted", func() bool {
					return counterValue(t, metrics.Completed.WithLabelValues(string(r.State))) == 1
				})
			}
			label := "success"
			switch {
			case tt.want.code == postgres.CodeModelNotReady:
				label = "not_ready"
			case tt.want.code != "":
				label = tt.want.code
			}
			if got := counterValue(t, metrics.Attempts.WithLabelValues(label)); got < 1 {
				t.Errorf("attempts{%s} = %v, want at least 1", label, got)
			}
		})
	}
}

func TestRetrySchedule(t *testing.T) {
	t.Parallel()
	b := setup(t)
	d := b.deploy(newModel(t, answer(500, "boom")).URL, deployOptions{MaxConcurrency: 1})
	id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) {
		p.MaxAttempts, p.InitialDelayMS, p.MaxDelayMS = 3, 1000, 1500
	})
	b.run(b.processor())

	// After failed attempt n the request waits min(1 s * 2^(n-1), 1.5 s).
	want := []time.Duration{time.Second, 1500 * time.Millisecond}
	for n, delay := range want {
		r := b.waitUntil(id, fmt.Sprintf("waiting after attempt %d", n+1), func(r postgres.Request) bool {
			return r.State == postgres.StateQueued && len(r.Errors) == n+1
		})
		if got := r.DueAt.Sub(r.StatusAt); got != delay {
			t.Errorf("after attempt %d: due %v after the failure, want %v", n+1, got, delay)
		}
		if r.Attempts != n+1 {
			t.Errorf("after attempt %d: attempts = %d", n+1, r.Attempts)
		}
	}
	r := b.waitState(id, postgres.StateFailed)
	if r.Attempts != 3 || len(r.Errors) != 3 {
		t.Fatalf("attempts %d, errors %+v; want 3 and 3", r.Attempts, r.Errors)
	}
	for _, e := range r.Errors {
		if e.Code != postgres.CodeModelPredictError {
			t.Errorf("error %+v, want %s", e, postgres.CodeModelPredictError)
		}
	}
}

func TestExpiry(t *testing.T) {
	t.Parallel()

	t.Run("SaturatedNoAttempts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		release := make(chan struct{})
		m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
			<-release
			w.Write([]byte(`{}`))
		})
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
		busy := b.submit(d, `{}`)
		b.run(b.processor())
		b.waitState(busy, postgres.StateInProgress)
		id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) {
			p.MaxTimeInQueue = time.Second
			p.WebhookEndpoint = "https://receiver.example/hook"
		})
		r := b.waitState(id, postgres.StateExpired)
		close(release)
		if r.Attempts != 0 || len(r.Errors) != 0 || string(r.Input) != `{}` || r.FinishedAt == nil {
			t.Errorf("expired request: attempts %d, errors %+v, input %q, finished %v", r.Attempts, r.Errors, r.Input, r.FinishedAt)
		}
		if n := scalar[int](b, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1 AND state = 'PENDING'`, id); n != 1 {
			t.Errorf("%d webhook deliveries queued, want 1", n)
		}
		b.waitState(busy, postgres.StateSucceeded)
		if m.callCount() != 1 {
			t.Errorf("model called %d times, want 1", m.callCount())
		}
	})

	t.Run("AfterAttempts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		d := b.deploy(newModel(t, answer(503, "")).URL, deployOptions{MaxConcurrency: 1})
		id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) {
			p.MaxTimeInQueue = 2 * time.Second
			p.InitialDelayMS = 10000
		})
		b.run(b.processor())
		r := b.waitState(id, postgres.StateExpired)
		if r.Attempts != 1 || len(r.Errors) != 1 || r.Errors[0].Code != postgres.CodeModelUnavailable {
			t.Errorf("attempts %d, errors %+v; want the one failed attempt kept", r.Attempts, r.Errors)
		}
		if r.OutputExpiresAt == nil {
			t.Error("no output retention set for a request without webhook")
		}
		if n := scalar[int](b, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1`, id); n != 0 {
			t.Errorf("%d webhook deliveries for a request without webhook", n)
		}
	})
}

func TestConcurrencyCap(t *testing.T) {
	t.Parallel()
	b := setup(t)
	const limit, requests = 3, 24
	var current, peak atomic.Int64
	var dbPeak atomic.Int64
	var d deployment
	m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
		n := current.Add(1)
		defer current.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		var inProgress int64
		if err := b.db.Pool.QueryRow(r.Context(), `SELECT count(*) FROM async_requests WHERE deployment_id = $1 AND state = 'IN_PROGRESS'`, d.ID).Scan(&inProgress); err == nil {
			for {
				p := dbPeak.Load()
				if inProgress <= p || dbPeak.CompareAndSwap(p, inProgress) {
					break
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
		w.Write([]byte(`{}`))
	})
	d = b.deploy(m.URL, deployOptions{MaxConcurrency: limit})
	ids := make([]requestid.ID, requests)
	for i := range ids {
		ids[i] = b.submit(d, `{}`)
	}
	b.run(b.processor(func(o *processtick.Options) { o.ID = "a" }))
	b.run(b.processor(func(o *processtick.Options) { o.ID = "b" }))
	for _, id := range ids {
		b.waitState(id, postgres.StateSucceeded)
	}
	if p := peak.Load(); p > limit || p < 1 {
		t.Errorf("model saw %d concurrent calls, limit %d", p, limit)
	}
	if p := dbPeak.Load(); p > limit {
		t.Errorf("%d requests IN_PROGRESS at once, limit %d", p, limit)
	}
	owners := scalar[int](b, `SELECT count(*) FROM async_requests WHERE deployment_id = $1 AND attempts = 1`, d.ID)
	if owners != requests {
		t.Errorf("%d requests with exactly one attempt, want %d", owners, requests)
	}
}

func TestOrder(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := newModel(t, answer(200, `{}`))
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
	for _, in := range []struct {
		name     string
		priority int
	}{{"a", 2}, {"b", 0}, {"c", 1}, {"d", 0}, {"e", 1}, {"f", 2}} {
		b.submit(d, fmt.Sprintf(`"%s"`, in.name), func(p *postgres.RequestInsertParams) { p.Priority = in.priority })
	}
	b.run(b.processor())
	eventually(t, "all six called", func() bool { return m.callCount() == 6 })
	m.mu.Lock()
	got := strings.Join(m.inputs, "")
	m.mu.Unlock()
	if want := `"b""d""c""e""a""f"`; got != want {
		t.Errorf("model saw %s, want %s", got, want)
	}
}

func TestLostProcessor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name        string
		maxAttempts int
		want        postgres.RequestState
		wantCalls   int
	}{
		{name: "Retried", maxAttempts: 2, want: postgres.StateSucceeded, wantCalls: 1},
		{name: "Exhausted", maxAttempts: 1, want: postgres.StateFailed, wantCalls: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			m := newModel(t, answer(200, `{"ok": true}`))
			d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
			id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) {
				p.MaxAttempts, p.InitialDelayMS = tt.maxAttempts, 0
			})
			// A processor claims the request and dies without a word.
			claimed, err := b.db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "ghost", Limit: 10, LeaseDuration: time.Minute})
			if err != nil || len(claimed) != 1 {
				t.Fatalf("claim: %v, %d claimed", err, len(claimed))
			}
			b.run(b.processor())
			time.Sleep(100 * time.Millisecond) // a sweep or two: the lease still holds
			if r := b.get(id); r.State != postgres.StateInProgress {
				t.Fatalf("state %s while the lease holds", r.State)
			}
			if _, err := b.db.Pool.Exec(ctx, `UPDATE async_requests SET lease_expires_at = now() - interval '1 second' WHERE id = $1`, id); err != nil {
				t.Fatal(err)
			}
			r := b.waitState(id, tt.want)
			if len(r.Errors) != 1 || r.Errors[0].Code != postgres.CodeInternalServerError {
				t.Errorf("errors %+v, want one %s", r.Errors, postgres.CodeInternalServerError)
			}
			if r.Attempts != tt.maxAttempts {
				t.Errorf("attempts %d, want %d", r.Attempts, tt.maxAttempts)
			}
			if m.callCount() != tt.wantCalls {
				t.Errorf("model called %d times, want %d", m.callCount(), tt.wantCalls)
			}
			// The ghost's late answer is not recorded.
			rec, err := b.db.RequestCompleteBatch(ctx, "ghost", []postgres.AttemptOutcome{{ID: id, State: postgres.StateFailed}})
			if err != nil || len(rec) != 0 {
				t.Fatalf("late outcome of a lost lease: %v, %d recorded", err, len(rec))
			}
			if got := b.get(id).State; got != tt.want {
				t.Errorf("state after the late outcome: %s, want %s", got, tt.want)
			}
		})
	}
}

func TestGracefulStop(t *testing.T) {
	t.Parallel()

	t.Run("InFlightFinishes", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(300 * time.Millisecond)
			w.Write([]byte(`{"done": true}`))
		})
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
		id := b.submit(d, `{}`)
		stop := b.run(b.processor())
		eventually(t, "the model called", func() bool { return m.callCount() == 1 })
		stop()
		r := b.get(id)
		if r.State != postgres.StateSucceeded || string(r.Output) != `{"done": true}` {
			t.Fatalf("after a graceful stop: state %s, output %s", r.State, r.Output)
		}
	})

	t.Run("HandBack", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(waitFor):
			}
		})
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
		id := b.submit(d, `{"keep": "me"}`)
		stop := b.run(b.processor(func(o *processtick.Options) { o.Config.ShutdownGrace = 50 * time.Millisecond }))
		eventually(t, "the model called", func() bool { return m.callCount() == 1 })
		stop()
		r := b.get(id)
		if r.State != postgres.StateQueued || r.Attempts != 0 || len(r.Errors) != 0 || string(r.Input) != `{"keep": "me"}` {
			t.Fatalf("handed back: state %s, attempts %d, errors %+v, input %q", r.State, r.Attempts, r.Errors, r.Input)
		}
		if !scalar[bool](b, `SELECT lease_owner IS NULL AND lease_expires_at IS NULL AND due_at <= now() FROM async_requests WHERE id = $1`, id) {
			t.Error("handed-back request kept its lease or is not due")
		}
	})
}

func TestTick(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("Budget", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		m := newModel(t, answer(200, `{}`))
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: 2})
		ids := []requestid.ID{b.submit(d, `1`), b.submit(d, `2`), b.submit(d, `3`)}
		res, err := b.processor().Tick(ctx, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if res.Claimed != 3 || res.Recorded != 3 || res.HandedBack != 0 {
			t.Errorf("result %+v, want 3 claimed and recorded", res)
		}
		for _, id := range ids {
			if r := b.get(id); r.State != postgres.StateSucceeded {
				t.Errorf("request %s: %s after the tick", id, r.State)
			}
		}
	})

	t.Run("LargeOutputsSplitAcrossWrites", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// The model holds every answer until all requests have arrived, so
		// the outcomes finish together and would share one statement.
		const requests, outputSize, limit = 12, 300 << 10, 1 << 20
		output := `"` + strings.Repeat("x", outputSize-2) + `"`
		var arrived sync.WaitGroup
		arrived.Add(requests)
		m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
			arrived.Done()
			arrived.Wait()
			_, _ = w.Write([]byte(output))
		})
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: requests})
		ids := make([]requestid.ID, requests)
		for i := range ids {
			ids[i] = b.submit(d, `{}`)
		}
		p := b.processor()
		processtick.SetCompleteBatchBytes(p, limit)
		res, err := p.Tick(ctx, 5*time.Second)
		if err != nil || res.Recorded != requests {
			t.Fatalf("tick: %+v, %v", res, err)
		}
		for _, id := range ids {
			if r := b.get(id); r.State != postgres.StateSucceeded || len(r.Output) != outputSize {
				t.Errorf("request %s: %s with %d output bytes", id, r.State, len(r.Output))
			}
		}
		if st := processtick.StatementStats(p); st.WriteBytesMax > limit || st.Writes < requests*outputSize/limit {
			t.Errorf("%d writes, the largest carrying %d output bytes; want none over %d", st.Writes, st.WriteBytesMax, limit)
		}
	})

	t.Run("HandBackWhenContextDies", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done():
			case <-time.After(waitFor):
			}
		})
		d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
		id := b.submit(d, `{}`)
		tickCtx, cancel := context.WithCancel(ctx)
		go func() {
			for m.callCount() == 0 {
				time.Sleep(10 * time.Millisecond)
			}
			cancel()
		}()
		res, err := b.processor().Tick(tickCtx, time.Hour)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if res.Claimed != 1 || res.HandedBack != 1 {
			t.Errorf("result %+v, want 1 claimed and handed back", res)
		}
		if r := b.get(id); r.State != postgres.StateQueued || r.Attempts != 0 {
			t.Errorf("state %s, attempts %d; want QUEUED, 0", r.State, r.Attempts)
		}
	})
}

func TestWebhookOutbox(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		status  int
		webhook string
		want    postgres.RequestState
	}{
		{name: "SucceededWithWebhook", status: 200, webhook: "https://receiver.example/hook", want: postgres.StateSucceeded},
		{name: "FailedWithWebhook", status: 400, webhook: "https://receiver.example/hook", want: postgres.StateFailed},
		{name: "SucceededWithoutWebhook", status: 200, want: postgres.StateSucceeded},
		{name: "FailedWithoutWebhook", status: 404, want: postgres.StateFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t)
			listener, err := b.db.Pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer listener.Release()
			if _, err := listener.Exec(ctx, "LISTEN "+postgres.WebhookWakeChannel); err != nil {
				t.Fatal(err)
			}
			d := b.deploy(newModel(t, answer(tt.status, `{"y": 1}`)).URL, deployOptions{MaxConcurrency: 1})
			id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) { p.WebhookEndpoint = tt.webhook })
			b.run(b.processor())
			r := b.waitState(id, tt.want)
			deliveries := scalar[int](b, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1 AND state = 'PENDING' AND due_at <= now()`, id)
			if tt.webhook != "" {
				if deliveries != 1 || r.OutputExpiresAt != nil {
					t.Errorf("%d deliveries queued, output expires %v; want 1 and not yet", deliveries, r.OutputExpiresAt)
				}
				waitCtx, cancel := context.WithTimeout(ctx, waitFor)
				defer cancel()
				if _, err := listener.Conn().WaitForNotification(waitCtx); err != nil {
					t.Errorf("no wake-up for the deliverers: %v", err)
				}
			} else if deliveries != 0 || r.OutputExpiresAt == nil {
				t.Errorf("%d deliveries queued, output expires %v; want none and a retention time", deliveries, r.OutputExpiresAt)
			}
			if r.WebhookState != map[bool]postgres.WebhookState{true: postgres.WebhookPending, false: postgres.WebhookNone}[tt.webhook != ""] {
				t.Errorf("webhook state %s changed by the processor", r.WebhookState)
			}
		})
	}
}

func TestModelCall(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		chain      bool
		credential string
		wantPath   string
		wantAuth   string
	}{
		{name: "Model", wantPath: "/predict"},
		{name: "Chain", chain: true, wantPath: "/run_remote"},
		{name: "Credential", credential: "s3cret", wantPath: "/predict", wantAuth: "Api-Key s3cret"},
		{name: "CredentialWithScheme", credential: "Bearer tok", wantPath: "/predict", wantAuth: "Bearer tok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			m := newModel(t, answer(200, `{}`))
			d := b.deploy(m.URL+"/", deployOptions{MaxConcurrency: 1, Chain: tt.chain, Credential: tt.credential})
			id := b.submit(d, `{"prompt": "hi"}`)
			b.run(b.processor())
			b.waitState(id, postgres.StateSucceeded)
			r := m.call(0)
			if r.Method != http.MethodPost || r.URL.Path != tt.wantPath {
				t.Errorf("%s %s, want POST %s", r.Method, r.URL.Path, tt.wantPath)
			}
			if got := r.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type %q", got)
			}
			if got := r.Header.Get("Authorization"); got != tt.wantAuth {
				t.Errorf("Authorization %q, want %q", got, tt.wantAuth)
			}
			if m.inputs[0] != `{"prompt": "hi"}` {
				t.Errorf("body %q", m.inputs[0])
			}
			parts := strings.Split(r.Header.Get("traceparent"), "-")
			if len(parts) != 4 || parts[0] != "00" || parts[1] != id.String() || len(parts[2]) != 16 ||
				parts[2] == "0000000000000000" || parts[3] != "01" {
				t.Errorf("traceparent %q, want 00-%s-<span id>-01", r.Header.Get("traceparent"), id)
			}
		})
	}
}

func TestRefreshQueueDepth(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	d := b.deploy(closedURL(t), deployOptions{MaxConcurrency: 1})
	id := b.submit(d, `{}`)
	b.submit(d, `{}`)
	metrics := telemetry.NewMetrics(prometheus.NewRegistry())
	p := b.processor(func(o *processtick.Options) { o.Metrics = metrics })
	gauge := func(state string) float64 {
		var m dto.Metric
		if err := metrics.QueueDepth.WithLabelValues(state, d.ID).Write(&m); err != nil {
			t.Fatal(err)
		}
		return m.GetGauge().GetValue()
	}
	if err := p.RefreshQueueDepth(ctx); err != nil {
		t.Fatal(err)
	}
	if q, ip := gauge("QUEUED"), gauge("IN_PROGRESS"); q != 2 || ip != 0 {
		t.Fatalf("queued %v, in progress %v; want 2, 0", q, ip)
	}
	if _, err := b.db.Pool.Exec(ctx, `UPDATE async_requests SET state = 'IN_PROGRESS' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if err := p.RefreshQueueDepth(ctx); err != nil {
		t.Fatal(err)
	}
	if q, ip := gauge("QUEUED"), gauge("IN_PROGRESS"); q != 1 || ip != 1 {
		t.Fatalf("queued %v, in progress %v; want 1, 1", q, ip)
	}
}

func TestLeaseLost(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	cutOff := make(chan struct{})
	m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(cutOff)
		case <-time.After(waitFor):
		}
	})
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
	id := b.submit(d, `{}`)
	b.run(b.processor(func(o *processtick.Options) { o.Config.LeaseDuration = 1500 * time.Millisecond }))
	eventually(t, "the model called", func() bool { return m.callCount() == 1 })
	// Another processor reclaimed the request meanwhile.
	if _, err := b.db.Pool.Exec(ctx, `UPDATE async_requests SET lease_owner = 'thief' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cutOff:
	case <-time.After(waitFor):
		t.Fatal("the attempt went on after its lease was lost")
	}
	time.Sleep(200 * time.Millisecond) // let the cut-off attempt try to record
	if owner := scalar[string](b, `SELECT state || ' ' || lease_owner FROM async_requests WHERE id = $1`, id); owner != "IN_PROGRESS thief" {
		t.Errorf("row is %q, want it left to the new owner", owner)
	}
}

// TestPausedDeployment: nothing of a paused deployment is claimed while
// another deployment's queue runs, its queue deadlines still run out, and
// once resumed its queue is worked off.
func TestPausedDeployment(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := newModel(t, answer(200, `{}`))
	paused, running := b.deploy(m.URL, deployOptions{MaxConcurrency: 4}), b.deploy(m.URL, deployOptions{MaxConcurrency: 4})
	if _, err := b.db.Pool.Exec(context.Background(), `UPDATE deployments SET paused = true WHERE id = $1`, paused.ID); err != nil {
		t.Fatal(err)
	}
	held, expiring := b.submit(paused, `{}`), b.submit(paused, `{}`, func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = time.Second })
	var others []requestid.ID
	for range 5 {
		others = append(others, b.submit(running, `{}`))
	}
	b.run(b.processor())
	for _, id := range others {
		b.waitState(id, postgres.StateSucceeded)
	}
	if r := b.waitState(expiring, postgres.StateExpired); r.Attempts != 0 {
		t.Errorf("expired request of a paused deployment: attempts %d", r.Attempts)
	}
	if r := b.get(held); r.State != postgres.StateQueued || r.Attempts != 0 {
		t.Fatalf("request of a paused deployment: state %s, attempts %d; want QUEUED, 0", r.State, r.Attempts)
	}
	if n := m.callCount(); n != len(others) {
		t.Errorf("model called %d times, want %d (the running deployment's requests only)", n, len(others))
	}
	if _, err := b.db.Pool.Exec(context.Background(), `UPDATE deployments SET paused = false WHERE id = $1`, paused.ID); err != nil {
		t.Fatal(err)
	}
	b.waitState(held, postgres.StateSucceeded)
}

// TestBackpressureFloor: a model answering 429 with Retry-After: 0 is
// called at most once per BackpressureMinDelay: at most deadline/floor + 1
// times before the request expires.
func TestBackpressureFloor(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := newModel(t, answer(429, "busy", "Retry-After", "0"))
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
	const queueTime, floor = 2 * time.Second, 200 * time.Millisecond
	id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = queueTime })
	b.run(b.processor(func(o *processtick.Options) { o.Config.BackpressureMinDelay = floor }))
	r := b.waitState(id, postgres.StateExpired)
	calls := m.callCount()
	if limit := int(queueTime/floor) + 1; calls > limit || calls < 2 {
		t.Errorf("model called %d times in %v, want 2 to %d", calls, queueTime, limit)
	}
	if r.Attempts != 0 || len(r.Errors) != 1 || r.Errors[0].Code != postgres.CodeModelNotReady {
		t.Errorf("attempts %d, errors %+v; want 0 and one %s", r.Attempts, r.Errors, postgres.CodeModelNotReady)
	}
	if n := scalar[int](b, `SELECT count(*) FROM request_attempts WHERE request_id = $1 AND NOT counted`, id); n != calls {
		t.Errorf("%d uncounted history rows, want one per call (%d)", n, calls)
	}
}

// TestRetryAtDueTime: a retry runs at its due time, though no poll comes
// (the poll interval is an hour) and nothing wakes the processor: it sleeps
// until the earliest due time it knows.
func TestRetryAtDueTime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var calls atomic.Int64
	m := newModel(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{}`))
	})
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
	id := b.submit(d, `{}`, func(p *postgres.RequestInsertParams) { p.InitialDelayMS = 200 })
	b.run(b.processor(func(o *processtick.Options) { o.Config.PollInterval = time.Hour }))
	r := b.waitState(id, postgres.StateSucceeded)
	if r.Attempts != 2 {
		t.Errorf("attempts %d, want 2", r.Attempts)
	}
}

// TestBackpressureAtDueTime: the same for a back-pressure wait, with the
// due time known only from the database (another processor wrote it).
func TestBackpressureAtDueTime(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	m := newModel(t, answer(200, `{}`))
	d := b.deploy(m.URL, deployOptions{MaxConcurrency: 1})
	id := b.submit(d, `{}`)
	if _, err := b.db.Pool.Exec(ctx, `UPDATE async_requests SET due_at = now() + interval '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	b.run(b.processor(func(o *processtick.Options) { o.Config.PollInterval = time.Hour }))
	b.waitState(id, postgres.StateSucceeded)
}
