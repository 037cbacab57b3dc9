package deliverwebhook_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// BenchmarkWebhookDrain measures signed webhooks delivered per second by one
// deliverer at its default concurrency to a receiver on loopback that
// verifies both signature schemes of every webhook, as the dev harness's
// does. Each iteration queues its webhooks (finished requests with PENDING
// outbox rows) in one statement and times the deliverer until the receiver
// has verified every one and the database has recorded every outcome.
// WriteOne records each outcome in a statement (and a commit) of its own,
// as the deliverer did before outcomes were batched.
//
// Besides req/s, each case reports the rows an average claim and an average
// outcome statement carried.
func BenchmarkWebhookDrain(b *testing.B) {
	for _, c := range []struct {
		name     string
		webhooks int
		batch    int // 0: the default
	}{
		{name: "Batched", webhooks: 6000},
		{name: "WriteOne", webhooks: 3000, batch: 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			bench := setupBench(b)
			var verified atomic.Int64
			rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				if res, err := webhook.Verify([]string{bench.secret}, r.Header, body, time.Now()); err == nil && res.Standard && res.Compat {
					verified.Add(1)
				}
			}))
			defer rc.Close()
			d := deliverwebhook.New(bench.options(time.Second))
			deliverwebhook.SetOutcomeBatch(d, c.batch)

			var total time.Duration
			for b.Loop() {
				b.StopTimer()
				want := verified.Load() + int64(c.webhooks)
				bench.queue(c.webhooks, rc.URL, 0)
				b.StartTimer()

				start := time.Now()
				ctx, stop := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- d.Run(ctx) }()
				bench.await(func() bool { return verified.Load() >= want && bench.open() == 0 })
				total += time.Since(start)
				stop()
				if err := <-done; err != nil {
					b.Fatal(err)
				}
			}
			stats := deliverwebhook.StatementStats(d)
			b.ReportMetric(float64(b.N*c.webhooks)/total.Seconds(), "req/s")
			b.ReportMetric(float64(stats.Claimed)/float64(max(stats.Claims, 1)), "rows/claim")
			b.ReportMetric(float64(stats.Written)/float64(max(stats.Writes, 1)), "rows/write")
			b.ReportMetric(0, "ns/op") // an iteration's time says nothing on its own
		})
	}
}

// BenchmarkWebhookLateness measures how late scheduled webhook retries
// arrive after their due time. Each iteration finishes lateRequests requests,
// in lateGroups groups lateSpacing apart, whose receiver answers the first
// attempt 503, so each webhook is retried on the schedule (500 ms, ±10 %
// jitter): about 500 retries a second come due. Lateness is the retry's
// arrival at the receiver less its due_at, both by this machine's clock. DueTimer is the
// deliverer as it runs; PollOnly finds due retries by the default 1 s poll
// alone, as before the deliverer knew the next due time.
func BenchmarkWebhookLateness(b *testing.B) {
	const (
		lateRequests = 200
		lateGroups   = 4
		lateSpacing  = 100 * time.Millisecond
	)
	for _, c := range []struct {
		name     string
		dueTimer bool
	}{
		{name: "DueTimer", dueTimer: true},
		{name: "PollOnly", dueTimer: false},
	} {
		b.Run(c.name, func(b *testing.B) {
			bench := setupBench(b)
			var mu sync.Mutex
			arrivals := map[string][]time.Time{}
			var retries atomic.Int64
			rc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				at := time.Now()
				_, _ = io.Copy(io.Discard, r.Body)
				id := r.Header.Get(webhook.HeaderID)
				mu.Lock()
				arrivals[id] = append(arrivals[id], at)
				first := len(arrivals[id]) == 1
				mu.Unlock()
				if !first {
					retries.Add(1)
				}
				if first {
					w.WriteHeader(http.StatusServiceUnavailable)
				}
			}))
			defer rc.Close()
			o := bench.options(deliverwebhook.PollIntervalDefault)
			o.Config.Schedule = []time.Duration{0, 500 * time.Millisecond}
			o.Jitter = nil // uniformly random
			d := deliverwebhook.New(o)
			deliverwebhook.SetDueTimer(d, c.dueTimer)
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- d.Run(ctx) }()

			var late []time.Duration
			for b.Loop() {
				want := retries.Load() + lateRequests
				var ids []requestid.ID
				for range lateGroups {
					ids = append(ids, bench.queue(lateRequests/lateGroups, rc.URL, 0)...)
					time.Sleep(lateSpacing)
				}
				bench.await(func() bool { return retries.Load() >= want && bench.open() == 0 })
				due := bench.dueTimes(ids)
				mu.Lock()
				for _, id := range ids {
					at := arrivals[id.String()]
					if len(at) != 2 {
						b.Fatalf("request %s: %d webhooks, want 2", id, len(at))
					}
					late = append(late, at[1].Sub(due[id]))
				}
				mu.Unlock()
			}
			stop()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			slices.Sort(late)
			at := func(q float64) float64 {
				return float64(late[min(int(q*float64(len(late))), len(late)-1)]) / float64(time.Millisecond)
			}
			b.ReportMetric(at(0.50), "p50-late-ms")
			b.ReportMetric(at(0.99), "p99-late-ms")
			b.ReportMetric(at(1), "max-late-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchDB is a database with an organization that has a webhook secret, a
// model and a deployment.
type benchDB struct {
	b      *testing.B
	db     *postgres.DB
	org    postgres.Organization
	secret string
}

func setupBench(b *testing.B) *benchDB {
	b.Helper()
	ctx := context.Background()
	db := pgtest.New(b)
	org, err := db.OrganizationEnsure(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	secret, err := webhook.GenerateSecret()
	if err != nil {
		b.Fatal(err)
	}
	if err := db.WebhookSecretRotate(ctx, org.ID, secret, 24*time.Hour); err != nil {
		b.Fatal(err)
	}
	if err := db.ModelCreate(ctx, postgres.Model{ID: "bench", OrganizationID: org.ID, Kind: postgres.KindModel}); err != nil {
		b.Fatal(err)
	}
	if err := db.DeploymentCreate(ctx, org.ID, postgres.Deployment{ID: "bench-1", ModelID: "bench", URL: "http://model.invalid", MaxConcurrency: 1}); err != nil {
		b.Fatal(err)
	}
	return &benchDB{b: b, db: db, org: org, secret: secret}
}

// options are a deliverer's defaults, its own HTTP client included, but for
// the URL policy that lets it reach the loopback receiver, and the poll.
func (t *benchDB) options(poll time.Duration) deliverwebhook.Options {
	return deliverwebhook.Options{
		DB:           t.db,
		Config:       config.Webhook{CompatHeaders: true, AllowHTTP: true, AllowPrivate: true},
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		PollInterval: poll,
	}
}

// queue inserts n SUCCEEDED requests with a webhook to endpoint and their
// outbox rows, due after dueIn, in one statement, and wakes deliverers.
func (t *benchDB) queue(n int, endpoint string, dueIn time.Duration) []requestid.ID {
	t.b.Helper()
	ids := make([]requestid.ID, n)
	for i := range ids {
		ids[i] = requestid.New()
	}
	_, err := t.db.Pool.Exec(context.Background(), `
		WITH r AS (
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, webhook_endpoint, priority, due_at, deadline_at, max_attempts, initial_delay_ms,
				max_delay_ms, output, attempts, created_at, status_at, started_at, finished_at, purge_at)
			SELECT id, $1, 'bench', false, 'bench-1', 'SUCCEEDED', 'PENDING', $3, 0,
				now(), now() + interval '1 hour', 3, 1000, 5000, '{"output":"HELLO"}', 1,
				now(), now(), now(), now(), now() + interval '1 day'
			FROM unnest($2::uuid[]) AS id
			RETURNING id
		)
		INSERT INTO webhook_deliveries (request_id, state, due_at)
		SELECT id, 'PENDING', now() + make_interval(secs => $4) FROM r`, t.org.ID, ids, endpoint, dueIn.Seconds())
	if err != nil {
		t.b.Fatal(err)
	}
	if err := t.db.Notify(context.Background(), postgres.Notice{Deliverers: true}); err != nil {
		t.b.Fatal(err)
	}
	return ids
}

// open counts the outbox rows not yet delivered or failed.
func (t *benchDB) open() int {
	var n int
	if err := t.db.Pool.QueryRow(context.Background(),
		`SELECT count(*) FROM webhook_deliveries WHERE state IN ('PENDING', 'IN_PROGRESS')`).Scan(&n); err != nil {
		t.b.Fatal(err)
	}
	return n
}

// dueTimes returns the due_at of each request's outbox row: after a
// success, the due time of the attempt that succeeded.
func (t *benchDB) dueTimes(ids []requestid.ID) map[requestid.ID]time.Time {
	rows, err := t.db.Pool.Query(context.Background(),
		`SELECT request_id, due_at FROM webhook_deliveries WHERE request_id = ANY($1)`, ids)
	if err != nil {
		t.b.Fatal(err)
	}
	defer rows.Close()
	due := map[requestid.ID]time.Time{}
	for rows.Next() {
		var id requestid.ID
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			t.b.Fatal(err)
		}
		due[id] = at
	}
	if err := rows.Err(); err != nil {
		t.b.Fatal(err)
	}
	return due
}

// await polls cond until it holds, for at most ten minutes.
func (t *benchDB) await(cond func() bool) {
	t.b.Helper()
	deadline := time.Now().Add(10 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.b.Fatal("not done after 10 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
