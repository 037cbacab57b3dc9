package deliverwebhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
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
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/safehttp"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/webhook"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// waitTimeout is how long a test waits for a condition before failing; it
// is generous because the machine may be busy, and never a measurement.
const waitTimeout = 30 * time.Second

// fixture is a migrated database with an organization that has a webhook
// secret, a model m1 (deployment d1) and a chain c1 (deployment cd1).
type fixture struct {
	db     *postgres.DB
	org    postgres.Organization
	secret string
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	pg := pgtest.New(t)
	org, err := pg.OrganizationEnsure(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	secret, err := webhook.GenerateSecret()
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.WebhookSecretRotate(ctx, org.ID, secret, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, m := range []postgres.Model{{ID: "m1", OrganizationID: org.ID, Kind: postgres.KindModel}, {ID: "c1", OrganizationID: org.ID, Kind: postgres.KindChain}} {
		if err := pg.ModelCreate(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []postgres.Deployment{{ID: "d1", ModelID: "m1", URL: "http://model.invalid", MaxConcurrency: 1}, {ID: "cd1", ModelID: "c1", URL: "http://chain.invalid", MaxConcurrency: 1}} {
		if err := pg.DeploymentCreate(ctx, org.ID, d); err != nil {
			t.Fatal(err)
		}
	}
	return &fixture{db: pg, org: org, secret: secret}
}

// finished describes a request that reached a final state.
type finished struct {
	endpoint string
	state    postgres.RequestState // default SUCCEEDED
	output   string                // raw JSON; empty for none
	errors   string                // JSON array; default []
	chain    bool
	orgID    int64 // default the fixture's organization
}

// finish inserts a request the way submit does and moves it to its final
// state with its outbox row the way the processor does: one transaction
// that also wakes deliverers.
func (f *fixture) finish(t *testing.T, p finished) requestid.ID {
	t.Helper()
	ctx := context.Background()
	id := requestid.New()
	model, deployment := "m1", "d1"
	if p.chain {
		model, deployment = "c1", "cd1"
	}
	if p.orgID == 0 {
		p.orgID = f.org.ID
	}
	if _, err := f.db.RequestInsert(ctx, postgres.RequestInsertParams{
		ID: id, OrganizationID: p.orgID, ModelID: model, IsChain: p.chain, DeploymentID: deployment,
		WebhookEndpoint: p.endpoint, MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 3,
		InitialDelayMS: 1000, MaxDelayMS: 5000, Input: []byte(`{"x":1}`),
	}); err != nil {
		t.Fatal(err)
	}
	var output []byte
	if p.output != "" {
		output = []byte(p.output)
	}
	tx, err := f.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `
		UPDATE async_requests
		SET state = $2, output = $3, errors = $4::jsonb, input = NULL, attempts = 1,
			status_at = now(), started_at = now(), finished_at = now(), purge_at = now() + interval '24 hours'
		WHERE id = $1`, id, string(cmpOr(p.state, postgres.StateSucceeded)), output, cmpOr(p.errors, "[]")); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO webhook_deliveries (request_id, state, due_at) VALUES ($1, 'PENDING', now())`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, postgres.WebhookWakeChannel); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return id
}

func cmpOr[T comparable](v, fallback T) T {
	var zero T
	if v == zero {
		return fallback
	}
	return v
}

// redeliver does what POST /async_request/{id}/webhook does to the outbox.
func (f *fixture) redeliver(t *testing.T, id requestid.ID) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.db.Pool.Exec(ctx, `
		WITH r AS (UPDATE async_requests SET webhook_state = 'PENDING' WHERE id = $1 RETURNING id)
		INSERT INTO webhook_deliveries (request_id, state, due_at) SELECT id, 'PENDING', now() FROM r`, id); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Pool.Exec(ctx, `SELECT pg_notify($1, '')`, postgres.WebhookWakeChannel); err != nil {
		t.Fatal(err)
	}
}

// delivery is an outbox row as the tests look at it.
type delivery struct {
	State     postgres.DeliveryState
	Attempts  int
	DueIn     time.Duration // due_at - now()
	LastError string
	Owner     string
}

// deliveries returns a request's outbox rows, oldest first.
func (f *fixture) deliveries(t *testing.T, id requestid.ID) []delivery {
	t.Helper()
	rows, err := f.db.Pool.Query(context.Background(), `
		SELECT state, attempts, extract(epoch FROM due_at - now())::float8, coalesce(last_error, ''), coalesce(lease_owner, '')
		FROM webhook_deliveries WHERE request_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []delivery
	for rows.Next() {
		var d delivery
		var due float64
		if err := rows.Scan(&d.State, &d.Attempts, &due, &d.LastError, &d.Owner); err != nil {
			t.Fatal(err)
		}
		d.DueIn = time.Duration(due * float64(time.Second))
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (f *fixture) delivery(t *testing.T, id requestid.ID) delivery {
	t.Helper()
	ds := f.deliveries(t, id)
	if len(ds) != 1 {
		t.Fatalf("request %s has %d outbox rows, want 1", id, len(ds))
	}
	return ds[0]
}

func (f *fixture) request(t *testing.T, id requestid.ID) postgres.Request {
	t.Helper()
	r, err := f.db.RequestGetByID(context.Background(), f.org.ID, id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// waitDelivery waits until the request's only outbox row satisfies ok.
func (f *fixture) waitDelivery(t *testing.T, id requestid.ID, what string, ok func(delivery) bool) delivery {
	t.Helper()
	var last delivery
	waitFor(t, what, func() bool {
		ds := f.deliveries(t, id)
		if len(ds) != 1 {
			return false
		}
		last = ds[0]
		return ok(last)
	})
	return last
}

func settled(d delivery) bool { return d.State != postgres.DeliveryInProgress && d.Attempts > 0 }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// options are the tests' defaults: a short schedule, a client that may
// reach the loopback test receivers, a fast poll and no jitter.
func (f *fixture) options(t *testing.T) deliverwebhook.Options {
	return deliverwebhook.Options{
		DB: f.db,
		Config: config.Webhook{
			Timeout:       5 * time.Second,
			Schedule:      []time.Duration{0, 10 * time.Millisecond, 10 * time.Millisecond},
			CompatHeaders: true,
			AllowHTTP:     true,
			AllowPrivate:  true,
			Concurrency:   8,
		},
		Logger:       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Client:       safehttp.NewClient(safehttp.Policy{AllowHTTP: true, AllowPrivate: true}, 5*time.Second),
		PollInterval: 20 * time.Millisecond,
		Jitter:       func() float64 { return 0 },
	}
}

// run runs a deliverer until the test ends.
func run(t *testing.T, d *deliverwebhook.Deliverer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// testWriter sends log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// hit is one webhook as a test receiver got it.
type hit struct {
	header http.Header
	body   []byte
	at     time.Time
}

// receiver is an httptest server that keeps every webhook and answers with
// respond (n is the 0-based number of the hit).
type receiver struct {
	srv  *httptest.Server
	mu   sync.Mutex
	hits []hit
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		n := len(rc.hits)
		rc.hits = append(rc.hits, hit{header: r.Header.Clone(), body: body, at: time.Now()})
		rc.mu.Unlock()
		if respond != nil {
			respond(n, w, r)
		}
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) got() []hit {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]hit(nil), rc.hits...)
}

func (rc *receiver) count() int { return len(rc.got()) }

// payloadTime is a webhook body's "time".
func payloadTime(t *testing.T, body []byte) time.Time {
	t.Helper()
	var p webhook.Payload
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatal(err)
	}
	at, err := time.Parse(webhook.TimeFormat, p.Time)
	if err != nil {
		t.Fatalf("time %q: %v", p.Time, err)
	}
	return at
}

// withoutTime is a webhook body with its "time" blanked, for comparing the
// bodies of two attempts.
func withoutTime(t *testing.T, body []byte) string {
	t.Helper()
	at := payloadTime(t, body).Format(webhook.TimeFormat)
	return strings.Replace(string(body), `"time":"`+at+`"`, `"time":""`, 1)
}

// verifyAt checks that h verifies at its receipt with the receiver's
// verifier (the signatures cover the bytes sent) and that its "time" is
// within the 300 s that the original API's receiver sample allows.
func verifyAt(t *testing.T, secret string, h hit) {
	t.Helper()
	if res, err := webhook.Verify([]string{secret}, h.header, h.body, h.at); err != nil || !res.Standard || !res.Compat {
		t.Errorf("verify = %+v, %v; want both schemes", res, err)
	}
	if age := h.at.Sub(payloadTime(t, h.body)); age < 0 || age > 300*time.Second {
		t.Errorf("time is %v old at receipt", age)
	}
}

func status(code int) func(int, http.ResponseWriter, *http.Request) {
	return func(_ int, w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func TestDeliver(t *testing.T) {
	t.Parallel()

	t.Run("PayloadAndSignatures", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusOK))
		id := f.finish(t, finished{
			endpoint: rc.srv.URL + "/hook?token=abc",
			output:   `{"output":"HI <there> & you","n":[1,2.5]}`,
			errors:   `[{"code":"MODEL_UNAVAILABLE","message":"model answered 503"}]`,
		})
		run(t, deliverwebhook.New(f.options(t)))
		f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })

		hits := rc.got()
		if len(hits) != 1 {
			t.Fatalf("receiver got %d webhooks, want 1", len(hits))
		}
		h := hits[0]
		res, err := webhook.Verify([]string{f.secret}, h.header, h.body, time.Now())
		if err != nil || !res.Standard || !res.Compat {
			t.Errorf("verify = %+v, %v; want both schemes", res, err)
		}
		r := f.request(t, id)
		sent := payloadTime(t, h.body)
		want := fmt.Sprintf(`{"request_id":"%s","model_id":"m1","deployment_id":"d1","type":"async_request_completed",`+
			`"time":"%s","status":"SUCCEEDED","data":{"output":"HI <there> & you","n":[1,2.5]},`+
			`"errors":[{"code":"MODEL_UNAVAILABLE","message":"model answered 503"}]}`,
			id, sent.Format(webhook.TimeFormat))
		if string(h.body) != want {
			t.Errorf("body\n got %s\nwant %s", h.body, want)
		}
		// "time" is the send time: not before the request finished, not
		// after the receiver got it, and what webhook-timestamp says.
		if sent.Before(r.FinishedAt.Truncate(time.Microsecond)) || sent.After(h.at) {
			t.Errorf("time %v, want between the finish %v and the receipt %v", sent, r.FinishedAt, h.at)
		}
		if ts := h.header.Get(webhook.HeaderTimestamp); ts != fmt.Sprint(sent.Unix()) {
			t.Errorf("webhook-timestamp %s, time %v", ts, sent)
		}
		for name, want := range map[string]string{
			"Content-Type":         "application/json",
			"User-Agent":           deliverwebhook.UserAgent,
			"Webhook-Id":           id.String(),
			"X-Baseten-Request-Id": id.String(),
		} {
			if got := h.header.Get(name); got != want {
				t.Errorf("%s = %q, want %q", name, got, want)
			}
		}

		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookSucceeded {
			t.Errorf("request %s / webhook %s, want SUCCEEDED / SUCCEEDED", r.State, r.WebhookState)
		}
		if r.OutputExpiresAt == nil || r.OutputExpiresAt.Sub(*r.FinishedAt) < f.db.OutputRetention-time.Minute {
			t.Errorf("output_expires_at = %v, want about finished_at + %v", r.OutputExpiresAt, f.db.OutputRetention)
		}
		if d := f.delivery(t, id); d.Attempts != 1 || d.Owner != "" || d.LastError != "" {
			t.Errorf("delivery = %+v", d)
		}
	})

	t.Run("ChainFailedRequest", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusNoContent))
		id := f.finish(t, finished{
			endpoint: rc.srv.URL, chain: true, state: postgres.StateFailed,
			errors: `[{"code":"MODEL_INVALID_INPUT","message":"model answered 400"}]`,
		})
		run(t, deliverwebhook.New(f.options(t)))
		f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
		var p map[string]any
		if err := json.Unmarshal(rc.got()[0].body, &p); err != nil {
			t.Fatal(err)
		}
		if p["chain_id"] != "c1" || p["deployment_id"] != "cd1" || p["data"] != nil {
			t.Errorf("payload = %v", p)
		}
		if _, ok := p["model_id"]; ok {
			t.Error("a chain's payload has model_id")
		}
		if _, ok := p["data"]; !ok {
			t.Error("payload has no data key")
		}
		if r := f.request(t, id); r.State != postgres.StateFailed || r.WebhookState != postgres.WebhookSucceeded {
			t.Errorf("request %s / webhook %s, want FAILED / SUCCEEDED", r.State, r.WebhookState)
		}
	})

	t.Run("Rotation", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		newSecret, _ := webhook.GenerateSecret()
		if err := f.db.WebhookSecretRotate(context.Background(), f.org.ID, newSecret, 24*time.Hour); err != nil {
			t.Fatal(err)
		}
		rc := newReceiver(t, status(http.StatusOK))
		id := f.finish(t, finished{endpoint: rc.srv.URL, output: `"done"`})
		run(t, deliverwebhook.New(f.options(t)))
		f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
		h := rc.got()[0]
		if n := len(strings.Fields(h.header.Get(webhook.HeaderSignature))); n != 2 {
			t.Errorf("webhook-signature has %d signatures, want 2", n)
		}
		if n := len(strings.Split(h.header.Get(webhook.HeaderCompatSignature), ",")); n != 2 {
			t.Errorf("X-BASETEN-SIGNATURE has %d signatures, want 2", n)
		}
		for _, s := range []string{f.secret, newSecret} {
			if res, err := webhook.Verify([]string{s}, h.header, h.body, time.Now()); err != nil || !res.Standard || !res.Compat {
				t.Errorf("a receiver holding one secret: %+v, %v", res, err)
			}
		}
	})

	t.Run("CompatHeadersOff", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusOK))
		id := f.finish(t, finished{endpoint: rc.srv.URL})
		o := f.options(t)
		o.Config.CompatHeaders = false
		run(t, deliverwebhook.New(o))
		f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
		h := rc.got()[0]
		if h.header.Get(webhook.HeaderCompatSignature) != "" || h.header.Get(webhook.HeaderCompatRequestID) != "" {
			t.Error("compatibility headers sent while switched off")
		}
		if res, err := webhook.Verify([]string{f.secret}, h.header, h.body, time.Now()); err != nil || !res.Standard {
			t.Errorf("verify = %+v, %v", res, err)
		}
	})

	t.Run("Responses", func(t *testing.T) {
		t.Parallel()
		hang := func(_ int, w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
		retryAfter := func(code int, value string) func(int, http.ResponseWriter, *http.Request) {
			return func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", value)
				w.WriteHeader(code)
			}
		}
		const next = 30 * time.Second // the schedule's delay after the first attempt
		tests := []struct {
			name    string
			respond func(int, http.ResponseWriter, *http.Request)
			// A retry is PENDING, due after dueIn; otherwise the delivery
			// FAILED at its first attempt.
			retry     bool
			dueIn     time.Duration
			lastError string
		}{
			{name: "BadRequest", respond: status(400), lastError: "400"},
			{name: "Gone", respond: status(410), lastError: "410"},
			{name: "RequestTimeout", respond: status(408), retry: true, dueIn: next, lastError: "408"},
			{name: "TooManyRequests", respond: status(429), retry: true, dueIn: next, lastError: "429"},
			{name: "TooManyRequestsRetryAfterSeconds", respond: retryAfter(429, "120"), retry: true, dueIn: 2 * time.Minute},
			{name: "TooManyRequestsRetryAfterDate", respond: func(n int, w http.ResponseWriter, r *http.Request) {
				retryAfter(429, time.Now().Add(5*time.Minute).UTC().Format(http.TimeFormat))(n, w, r)
			}, retry: true, dueIn: 5 * time.Minute},
			{name: "RetryAfterShorterThanSchedule", respond: retryAfter(429, "1"), retry: true, dueIn: next},
			{name: "InternalServerError", respond: status(500), retry: true, dueIn: next, lastError: "500"},
			{name: "BadGateway", respond: func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(502)
				_, _ = w.Write([]byte("upstream\nis down"))
			}, retry: true, dueIn: next, lastError: "502 Bad Gateway: upstream is down"},
			// Postgres text can't hold NUL or invalid UTF-8: they are
			// replaced, and the retry is recorded all the same.
			{name: "BinaryAnswer", respond: func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(500)
				_, _ = w.Write([]byte("up\x00stream\xff"))
			}, retry: true, dueIn: next, lastError: "500 Internal Server Error: up\uFFFDstream\uFFFD"},
			{name: "BinaryAnswerFails", respond: func(_ int, w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(400)
				_, _ = w.Write([]byte("\x00"))
			}, lastError: "400 Bad Request: \uFFFD"},
			{name: "Hang", respond: hang, retry: true, dueIn: next, lastError: "timed out"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				f := setup(t)
				rc := newReceiver(t, tt.respond)
				id := f.finish(t, finished{endpoint: rc.srv.URL, output: `{"ok":true}`})
				o := f.options(t)
				o.Config.Schedule = []time.Duration{0, next, next}
				o.Config.Timeout = 300 * time.Millisecond
				o.Client = safehttp.NewClient(safehttp.Policy{AllowHTTP: true, AllowPrivate: true}, o.Config.Timeout)
				run(t, deliverwebhook.New(o))
				d := f.waitDelivery(t, id, "the first attempt's outcome", settled)

				if rc.count() != 1 || d.Attempts != 1 {
					t.Fatalf("receiver got %d webhooks, attempts = %d; want 1, 1", rc.count(), d.Attempts)
				}
				if !strings.Contains(d.LastError, tt.lastError) {
					t.Errorf("last_error = %q, want it to say %q", d.LastError, tt.lastError)
				}
				r := f.request(t, id)
				if !tt.retry {
					if d.State != postgres.DeliveryFailed || r.WebhookState != postgres.WebhookFailed || r.State != postgres.StateWebhookFailed {
						t.Errorf("delivery %s, request %s / webhook %s; want FAILED, WEBHOOK_FAILED / FAILED", d.State, r.State, r.WebhookState)
					}
					if r.OutputExpiresAt == nil {
						t.Error("output_expires_at not set when delivery failed")
					}
					return
				}
				if d.State != postgres.DeliveryPending || r.WebhookState != postgres.WebhookPending || r.State != postgres.StateSucceeded {
					t.Errorf("delivery %s, request %s / webhook %s; want PENDING, SUCCEEDED / PENDING", d.State, r.State, r.WebhookState)
				}
				// The row was written moments ago: due_at is dueIn from
				// then, less the little time since. The write and this read
				// take now() in different statements, and the server's
				// clock may be stepped between them, so allow a second over.
				if d.DueIn > tt.dueIn+time.Second || d.DueIn < tt.dueIn-10*time.Second {
					t.Errorf("next attempt due in %v, want about %v", d.DueIn, tt.dueIn)
				}
				if r.OutputExpiresAt != nil {
					t.Error("output_expires_at set while delivery goes on")
				}
			})
		}
	})

	t.Run("RedirectNotFollowed", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		target := newReceiver(t, status(http.StatusOK))
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, target.srv.URL+"/elsewhere", http.StatusTemporaryRedirect)
		})
		id := f.finish(t, finished{endpoint: rc.srv.URL})
		run(t, deliverwebhook.New(f.options(t)))
		d := f.waitDelivery(t, id, "delivery to fail", func(d delivery) bool { return d.State == postgres.DeliveryFailed })
		if target.count() != 0 {
			t.Errorf("the redirect target got %d webhooks", target.count())
		}
		if d.Attempts != 1 || rc.count() != 1 || !strings.Contains(d.LastError, "307") {
			t.Errorf("delivery = %+v after %d webhooks", d, rc.count())
		}
		if r := f.request(t, id); r.State != postgres.StateWebhookFailed {
			t.Errorf("request %s, want WEBHOOK_FAILED", r.State)
		}
	})

	t.Run("Exhausted", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name  string
			state postgres.RequestState
			want  postgres.RequestState
		}{
			{"SucceededBecomesWebhookFailed", postgres.StateSucceeded, postgres.StateWebhookFailed},
			{"FailedStaysFailed", postgres.StateFailed, postgres.StateFailed},
			{"ExpiredStaysExpired", postgres.StateExpired, postgres.StateExpired},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				f := setup(t)
				rc := newReceiver(t, status(http.StatusServiceUnavailable))
				id := f.finish(t, finished{endpoint: rc.srv.URL, state: tt.state})
				before := f.request(t, id)
				run(t, deliverwebhook.New(f.options(t))) // schedule 0s, 10ms, 10ms
				d := f.waitDelivery(t, id, "delivery to fail", func(d delivery) bool { return d.State == postgres.DeliveryFailed })
				if d.Attempts != 3 || rc.count() != 3 {
					t.Errorf("attempts = %d, receiver got %d; want 3, 3", d.Attempts, rc.count())
				}
				if !strings.Contains(d.LastError, "gave up after 3 attempts") || !strings.Contains(d.LastError, "503") {
					t.Errorf("last_error = %q", d.LastError)
				}
				r := f.request(t, id)
				if r.State != tt.want || r.WebhookState != postgres.WebhookFailed {
					t.Errorf("request %s / webhook %s, want %s / FAILED", r.State, r.WebhookState, tt.want)
				}
				if changed := !r.StatusAt.Equal(before.StatusAt); changed != (tt.state != tt.want) {
					t.Errorf("status_at moved: %v, want %v", changed, tt.state != tt.want)
				}
				if r.OutputExpiresAt == nil || r.OutputExpiresAt.Before(time.Now().Add(f.db.OutputRetention-time.Minute)) {
					t.Errorf("output_expires_at = %v, want about now + %v", r.OutputExpiresAt, f.db.OutputRetention)
				}
				hits := rc.got()
				for i, h := range hits[1:] {
					if withoutTime(t, h.body) != withoutTime(t, hits[0].body) || h.header.Get(webhook.HeaderID) != id.String() {
						t.Error("a retry sent another body (but for time) or webhook-id")
					}
					if !payloadTime(t, h.body).After(payloadTime(t, hits[i].body)) {
						t.Errorf("retry %d carries time %v, not after the attempt before it", i+1, payloadTime(t, h.body))
					}
					verifyAt(t, f.secret, h)
				}
			})
		}
	})

	t.Run("LeaseLostResends", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		release := make(chan struct{})
		rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) {
			if n == 0 { // the first deliverer's POST arrives, then it "dies"
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}
		})
		t.Cleanup(func() {
			select {
			case <-release:
			default:
				close(release)
			}
		})
		id := f.finish(t, finished{endpoint: rc.srv.URL, output: `[1,2,3]`})

		dying := f.options(t)
		dying.ID = "dying"
		// Its lease runs out while its POST hangs, and only after its tick
		// has stopped claiming, so the re-send is the other deliverer's.
		dying.Lease = 3 * time.Second
		dying.Config.Timeout = time.Minute
		dying.Client = safehttp.NewClient(safehttp.Policy{AllowHTTP: true, AllowPrivate: true}, time.Minute)
		first := deliverwebhook.New(dying)
		type tickOut struct {
			res deliverwebhook.TickResult
			err error
		}
		firstDone := make(chan tickOut, 1)
		go func() {
			res, err := first.Tick(context.Background(), time.Second)
			firstDone <- tickOut{res, err}
		}()
		waitFor(t, "the first POST", func() bool { return rc.count() == 1 })

		other := f.options(t)
		other.ID = "survivor"
		run(t, deliverwebhook.New(other))
		// The maintainer's sweep makes the delivery due again once its lease
		// has run out; the survivor sends it.
		waitFor(t, "the webhook to be sent again", func() bool {
			if _, err := f.db.WebhookDeliveryReclaimExpired(context.Background()); err != nil {
				t.Fatal(err)
			}
			return rc.count() == 2
		})
		f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })

		close(release) // the first deliverer comes back to life and answers late
		out := <-firstDone
		if out.err != nil || out.res.Claimed != 1 || out.res.Lost != 1 {
			t.Errorf("first deliverer's tick = %+v, %v; want 1 claimed, its outcome lost", out.res, out.err)
		}
		hits := rc.got()
		if hits[0].header.Get(webhook.HeaderID) != id.String() || hits[1].header.Get(webhook.HeaderID) != id.String() {
			t.Errorf("webhook-ids %q, %q; want both %s", hits[0].header.Get(webhook.HeaderID), hits[1].header.Get(webhook.HeaderID), id)
		}
		if withoutTime(t, hits[0].body) != withoutTime(t, hits[1].body) {
			t.Errorf("bodies differ but for time:\n%s\n%s", hits[0].body, hits[1].body)
		}
		if !payloadTime(t, hits[1].body).After(payloadTime(t, hits[0].body)) {
			t.Errorf("the re-send carries time %v, not fresh", payloadTime(t, hits[1].body))
		}
		d := f.delivery(t, id)
		if d.State != postgres.DeliverySucceeded || d.Attempts != 2 {
			t.Errorf("delivery = %+v, want SUCCEEDED after 2 attempts", d)
		}
		if r := f.request(t, id); r.WebhookState != postgres.WebhookSucceeded {
			t.Errorf("webhook %s", r.WebhookState)
		}
	})

	t.Run("Redelivery", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		var mu sync.Mutex
		answer := http.StatusGone
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, _ *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			w.WriteHeader(answer)
		})
		id := f.finish(t, finished{endpoint: rc.srv.URL, output: `{"v":"é"}`})
		run(t, deliverwebhook.New(f.options(t)))
		f.waitDelivery(t, id, "delivery to fail", func(d delivery) bool { return d.State == postgres.DeliveryFailed })
		if r := f.request(t, id); r.State != postgres.StateWebhookFailed {
			t.Fatalf("request %s, want WEBHOOK_FAILED", r.State)
		}

		mu.Lock()
		answer = http.StatusOK // the receiver is fixed; the client asks for the webhook again
		mu.Unlock()
		f.redeliver(t, id)
		waitFor(t, "the redelivery to succeed", func() bool {
			ds := f.deliveries(t, id)
			return len(ds) == 2 && ds[1].State == postgres.DeliverySucceeded
		})
		hits := rc.got()
		if len(hits) != 2 {
			t.Fatalf("receiver got %d webhooks, want 2", len(hits))
		}
		if hits[1].header.Get(webhook.HeaderID) != hits[0].header.Get(webhook.HeaderID) || withoutTime(t, hits[0].body) != withoutTime(t, hits[1].body) {
			t.Error("the redelivery differs in webhook-id or body (but for time)")
		}
		if !payloadTime(t, hits[1].body).After(payloadTime(t, hits[0].body)) {
			t.Errorf("the redelivery carries time %v, not fresh", payloadTime(t, hits[1].body))
		}
		verifyAt(t, f.secret, hits[1])
		r := f.request(t, id)
		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookSucceeded || r.OutputExpiresAt == nil {
			t.Errorf("request %s / webhook %s, output_expires_at %v; want SUCCEEDED / SUCCEEDED, set", r.State, r.WebhookState, r.OutputExpiresAt)
		}
	})

	t.Run("BlockedAtDialTime", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusOK)) // on 127.0.0.1
		id := f.finish(t, finished{endpoint: rc.srv.URL})
		o := f.options(t)
		o.Client = nil // the production client: http allowed here, private addresses not
		o.Config.AllowPrivate = false
		run(t, deliverwebhook.New(o))
		d := f.waitDelivery(t, id, "delivery to fail", func(d delivery) bool { return d.State == postgres.DeliveryFailed })
		if rc.count() != 0 {
			t.Errorf("the loopback receiver got %d webhooks", rc.count())
		}
		if d.Attempts != 1 || !strings.Contains(d.LastError, "non-public address") {
			t.Errorf("delivery = %+v, want failed at once for a non-public address", d)
		}
		if r := f.request(t, id); r.State != postgres.StateWebhookFailed {
			t.Errorf("request %s", r.State)
		}
	})

	t.Run("NoSecret", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		other, err := f.db.OrganizationEnsure(context.Background(), "no-secrets")
		if err != nil {
			t.Fatal(err)
		}
		rc := newReceiver(t, status(http.StatusOK))
		id := f.finish(t, finished{endpoint: rc.srv.URL, orgID: other.ID})
		run(t, deliverwebhook.New(f.options(t)))
		d := f.waitDelivery(t, id, "delivery to fail", func(d delivery) bool { return d.State == postgres.DeliveryFailed })
		if rc.count() != 0 || !strings.Contains(d.LastError, "no webhook secret") {
			t.Errorf("receiver got %d webhooks; delivery %+v", rc.count(), d)
		}
	})

	t.Run("WakeUp", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusOK))
		first := f.finish(t, finished{endpoint: rc.srv.URL})
		o := f.options(t)
		o.PollInterval = time.Hour // only a notification can find the second webhook
		run(t, deliverwebhook.New(o))
		f.waitDelivery(t, first, "the first delivery (found by the first poll)", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
		waitFor(t, "the deliverer to LISTEN", func() bool {
			var n int
			err := f.db.Pool.QueryRow(context.Background(), `
				SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND query LIKE 'LISTEN %' AND state = 'idle'`).Scan(&n)
			return err == nil && n == 1
		})
		second := f.finish(t, finished{endpoint: rc.srv.URL})
		f.waitDelivery(t, second, "the woken delivery", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
	})

	t.Run("ShutdownHandsBack", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
		id := f.finish(t, finished{endpoint: rc.srv.URL})
		o := f.options(t)
		o.ShutdownGrace = 50 * time.Millisecond
		o.Config.Timeout = time.Minute
		o.Client = safehttp.NewClient(safehttp.Policy{AllowHTTP: true, AllowPrivate: true}, time.Minute)
		d := deliverwebhook.New(o)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		waitFor(t, "the POST", func() bool { return rc.count() == 1 })
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("Run: %v", err)
		}
		got := f.delivery(t, id)
		// Due now: DueIn is at most zero, read a moment later (a second's
		// slack, as the write and the read take now() in two statements).
		if got.State != postgres.DeliveryPending || got.Attempts != 0 || got.Owner != "" || got.DueIn > time.Second {
			t.Errorf("delivery = %+v, want PENDING, due now, the attempt not counted", got)
		}
		if r := f.request(t, id); r.WebhookState != postgres.WebhookPending {
			t.Errorf("webhook %s", r.WebhookState)
		}
	})

	t.Run("TickMetricsAndSpans", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, status(http.StatusOK))
		ids := []requestid.ID{f.finish(t, finished{endpoint: rc.srv.URL}), f.finish(t, finished{endpoint: rc.srv.URL, chain: true})}
		o := f.options(t)
		o.Metrics = telemetry.NewMetrics(prometheus.NewRegistry())
		spans := tracetest.NewSpanRecorder()
		o.TracerProvider = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
		d := deliverwebhook.New(o)

		var total deliverwebhook.TickResult
		waitFor(t, "both deliveries", func() bool {
			res, err := d.Tick(context.Background(), 100*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			total.Claimed += res.Claimed
			total.Succeeded += res.Succeeded
			total.Retried += res.Retried + res.Failed + res.Lost
			return total.Succeeded == 2
		})
		if total.Claimed != 2 || total.Retried != 0 {
			t.Errorf("ticks = %+v", total)
		}
		var success dto.Metric
		if err := o.Metrics.WebhookDeliveries.WithLabelValues("success").Write(&success); err != nil || success.GetCounter().GetValue() != 2 {
			t.Errorf("success deliveries metric = %v (%v), want 2", success.GetCounter().GetValue(), err)
		}
		var duration dto.Metric
		if err := o.Metrics.WebhookDuration.Write(&duration); err != nil || duration.GetHistogram().GetSampleCount() != 2 {
			t.Errorf("duration histogram has %d samples (%v), want 2", duration.GetHistogram().GetSampleCount(), err)
		}

		ended := spans.Ended()
		if len(ended) != 2 {
			t.Fatalf("%d spans, want 2", len(ended))
		}
		traces := map[trace.TraceID]bool{}
		for _, s := range ended {
			traces[s.SpanContext().TraceID()] = true
			if s.Name() != "webhook" || s.SpanKind() != trace.SpanKindClient {
				t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
			}
			var code int64
			for _, a := range s.Attributes() {
				if a.Key == "http.response.status_code" {
					code = a.Value.AsInt64()
				}
			}
			if code != http.StatusOK {
				t.Errorf("span status code attribute = %d", code)
			}
		}
		for _, id := range ids {
			if !traces[trace.TraceID(id)] {
				t.Errorf("no span in trace %s", id)
			}
		}
	})
}
