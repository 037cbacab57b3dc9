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

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

// BenchmarkThroughput measures requests processed per second against a
// model that answers 200 {} at once: each iteration queues benchRequests
// requests in one statement and times one processor (default settings)
// until none is left. HTTPModel calls an httptest server over loopback, so
// the figure includes both ends of every HTTP exchange on the same CPUs;
// InProcessModel answers inside the client's transport, measuring the
// processor and the database alone.
func BenchmarkThroughput(b *testing.B) {
	b.Run("HTTPModel", func(b *testing.B) {
		model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = w.Write([]byte(`{}`))
		}))
		defer model.Close()
		benchmarkThroughput(b, model.URL, nil)
	})
	b.Run("InProcessModel", func(b *testing.B) {
		benchmarkThroughput(b, "http://model.internal", &http.Client{Transport: instantModel{}})
	})
}

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

func benchmarkThroughput(b *testing.B, url string, client *http.Client) {
	const benchRequests = 20000
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
	p := processtick.New(processtick.Options{
		DB:     db,
		Config: config.Processor{PollInterval: 10 * time.Millisecond},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Client: client,
	})

	var total time.Duration
	for b.Loop() {
		b.StopTimer()
		if _, err := db.Pool.Exec(ctx, `
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
				input, created_at, status_at)
			SELECT gen_random_uuid(), $1, 'bench', false, 'bench-1', 'QUEUED', 'NO_WEBHOOK_PROVIDED', 0,
				now(), now() + interval '1 hour', 3, 1000, 5000, '{"x": 1}', now(), now()
			FROM generate_series(1, $2)`, org.ID, benchRequests); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- p.Run(runCtx) }()
		for {
			var left int
			if err := db.Pool.QueryRow(ctx, `
				SELECT (SELECT count(*) FROM async_requests WHERE state = 'QUEUED')
				     + (SELECT count(*) FROM async_requests WHERE state = 'IN_PROGRESS')`).Scan(&left); err != nil {
				b.Fatal(err)
			}
			if left == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		total += time.Since(start)
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	var succeeded int
	if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests WHERE state = 'SUCCEEDED'`).Scan(&succeeded); err != nil {
		b.Fatal(err)
	}
	if succeeded != b.N*benchRequests {
		b.Fatalf("%d succeeded, want %d", succeeded, b.N*benchRequests)
	}
	b.ReportMetric(float64(b.N*benchRequests)/total.Seconds(), "req/s")
}
