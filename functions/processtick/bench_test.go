package processtick_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// BenchmarkThroughput measures requests processed per second against a
// model that answers 200 {} at once, with one processor at its default
// concurrency. Each iteration queues its requests (time-ordered ids, as the
// API makes them) in one statement and times the processor until its
// metrics count every one of them SUCCEEDED; the benchmark itself sends no
// query while the clock runs. The table already holds benchFinished
// finished rows and, from the second iteration on, the dead row versions of
// the previous ones, so a hot-path query that scanned finished rows or
// stepped through dead index entries would show here.
//
// HTTPModel calls an httptest server over loopback, so the figure includes
// both ends of every HTTP exchange on the same CPUs; InProcessModel answers
// inside the client's transport, measuring the processor and the database
// alone. The ClaimOne and WriteOne cases cap the claim, or the completion,
// at one request per statement, to show what batching is worth; they queue
// fewer requests per iteration, since their figure is a rate too.
//
// Besides req/s, each case reports the rows an average claim and an
// average completion statement carried.
func BenchmarkThroughput(b *testing.B) {
	httpModel := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{}`))
	}))
	defer httpModel.Close()
	inProcess := &http.Client{Transport: instantModel{}}

	for _, c := range []struct {
		name          string
		url           string
		client        *http.Client
		requests      int
		claimBatch    int // 0: the default
		completeBatch int // 0: the default
	}{
		{name: "HTTPModel", url: httpModel.URL, requests: 20000},
		{name: "InProcessModel", url: "http://model.internal", client: inProcess, requests: 20000},
		{name: "InProcessModelClaimOne", url: "http://model.internal", client: inProcess, requests: 2000, claimBatch: 1},
		{name: "InProcessModelWriteOne", url: "http://model.internal", client: inProcess, requests: 2000, completeBatch: 1},
	} {
		b.Run(c.name, func(b *testing.B) {
			bench := setupThroughput(b, c.url, c.client)
			processtick.SetBatchLimits(bench.p, c.claimBatch, c.completeBatch)
			var total time.Duration
			for b.Loop() {
				total += bench.iterate(c.requests)
			}
			bench.check(b.N * c.requests)
			stats := processtick.StatementStats(bench.p)
			b.ReportMetric(float64(b.N*c.requests)/total.Seconds(), "req/s")
			b.ReportMetric(float64(stats.Claimed)/float64(max(stats.Claims, 1)), "rows/claim")
			b.ReportMetric(float64(stats.Written)/float64(max(stats.Writes, 1)), "rows/write")
			b.ReportMetric(0, "ns/op") // an iteration's time says nothing on its own
		})
	}
}

// benchFinished is the number of finished rows the table holds before the
// first iteration.
const benchFinished = 20000

// instantModel is a transport that answers every request with 200 {}.
type instantModel struct{}

func (instantModel) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(strings.NewReader(`{}`)),
		ContentLength: 2, Request: r,
	}, nil
}

// throughputBench is one case's database, processor and success counter.
type throughputBench struct {
	b         *testing.B
	db        *postgres.DB
	org       postgres.Organization
	p         *processtick.Processor
	succeeded prometheus.Counter
}

func setupThroughput(b *testing.B, url string, client *http.Client) *throughputBench {
	b.Helper()
	ctx := context.Background()
	db := pgtest.New(b)
	org, err := db.OrganizationEnsure(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := db.ModelCreate(ctx, postgres.Model{ID: "bench", OrganizationID: org.ID, Kind: postgres.KindModel}); err != nil {
		b.Fatal(err)
	}
	if err := db.DeploymentCreate(ctx, org.ID, postgres.Deployment{ID: "bench-1", ModelID: "bench", URL: url, MaxConcurrency: 100000}); err != nil {
		b.Fatal(err)
	}
	bench := &throughputBench{b: b, db: db, org: org}
	bench.insert(benchFinished, "SUCCEEDED")
	if _, err := db.Pool.Exec(ctx, `VACUUM ANALYZE async_requests`); err != nil {
		b.Fatal(err)
	}
	metrics := telemetry.NewMetrics(prometheus.NewRegistry())
	bench.succeeded = metrics.Completed.WithLabelValues(string(postgres.StateSucceeded))
	bench.p = processtick.New(processtick.Options{
		DB:      db,
		Config:  config.Processor{PollInterval: 10 * time.Millisecond},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Metrics: metrics,
		Client:  client,
	})
	return bench
}

// insert adds n requests in state, with ids made the way the API makes
// them; finished ones are kept for a day.
func (t *throughputBench) insert(n int, state postgres.RequestState) {
	t.b.Helper()
	ids := make([]requestid.ID, n)
	for i := range ids {
		ids[i] = requestid.New()
	}
	_, err := t.db.Pool.Exec(context.Background(), `
		INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
			webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
			input, created_at, status_at, finished_at, purge_at)
		SELECT id, $1, 'bench', false, 'bench-1', $3, 'NO_WEBHOOK_PROVIDED', 0,
			now(), now() + interval '1 hour', 3, 1000, 5000, '{"x": 1}', now(), now(),
			CASE WHEN $3 <> 'QUEUED' THEN now() END, CASE WHEN $3 <> 'QUEUED' THEN now() + interval '1 day' END
		FROM unnest($2::uuid[]) AS id`, t.org.ID, ids, string(state))
	if err != nil {
		t.b.Fatal(err)
	}
}

// iterate queues n requests and returns how long the processor took to
// record them all.
func (t *throughputBench) iterate(n int) time.Duration {
	t.b.StopTimer()
	want := counterValue(t.b, t.succeeded) + float64(n)
	t.insert(n, postgres.StateQueued)
	t.b.StartTimer()

	start := time.Now()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- t.p.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Minute)
	for counterValue(t.b, t.succeeded) < want {
		if time.Now().After(deadline) {
			t.b.Fatalf("%v of %d requests recorded after 10 minutes", counterValue(t.b, t.succeeded)-want+float64(n), n)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	stop()
	if err := <-done; err != nil {
		t.b.Fatal(err)
	}
	return elapsed
}

// check verifies that every request queued so far succeeded.
func (t *throughputBench) check(queued int) {
	t.b.Helper()
	var active, succeeded int
	err := t.db.Pool.QueryRow(context.Background(), `
		SELECT count(*) FILTER (WHERE state IN ('QUEUED', 'IN_PROGRESS')), count(*) FILTER (WHERE state = 'SUCCEEDED')
		FROM async_requests`).Scan(&active, &succeeded)
	if err != nil {
		t.b.Fatal(err)
	}
	if active != 0 || succeeded != benchFinished+queued {
		t.b.Fatalf("%d requests still active and %d succeeded, want 0 and %d", active, succeeded, benchFinished+queued)
	}
}
