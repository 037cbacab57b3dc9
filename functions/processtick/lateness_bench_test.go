package processtick_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// BenchmarkRetryLateness measures how late a retry starts after its due
// time, with the default 1 s poll: each request's first attempt fails
// (503), its retry is due 100 to 600 ms later, and its lateness is the
// retry's claim time minus its due time, both by the database's clock
// (started_at - due_at of the SUCCEEDED row). DueTimes is the processor as
// it runs; PollOnly turns its due-time timers off, leaving the wake-ups
// and the poll: the figure before them.
func BenchmarkRetryLateness(b *testing.B) {
	const perIteration = 200
	for _, c := range []struct {
		name     string
		dueTimes bool
	}{{"DueTimes", true}, {"PollOnly", false}} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			var mu sync.Mutex
			seen := map[string]bool{}
			model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				trace := strings.Split(r.Header.Get("traceparent"), "-")[1]
				mu.Lock()
				again := seen[trace]
				seen[trace] = true
				mu.Unlock()
				if !again {
					w.WriteHeader(http.StatusServiceUnavailable)
					return
				}
				_, _ = w.Write([]byte(`{}`))
			}))
			defer model.Close()
			db := pgtest.New(b)
			tenant := pgtest.SeedTenant(b, db, "bench", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
				[]postgres.Deployment{{ID: "d1", ModelID: "m1", URL: model.URL, MaxConcurrency: 1000}})
			p := processtick.New(processtick.Options{
				DB:     db,
				Config: config.Processor{PollInterval: time.Second},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			processtick.SetDueTimes(p, c.dueTimes)
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- p.Run(runCtx) }()
			var late []time.Duration
			for b.Loop() {
				ids := make([]requestid.ID, perIteration)
				for i := range ids {
					ids[i] = requestid.New()
					if _, err := db.RequestInsert(ctx, postgres.RequestInsertParams{
						ID: ids[i], OrganizationID: tenant.ID, ModelID: "m1", DeploymentID: "d1",
						MaxTimeInQueue: time.Hour, MaxAttempts: 3, InitialDelayMS: 100 + 100*(i%6), MaxDelayMS: 5000,
						Input: []byte(`{}`),
					}); err != nil {
						b.Fatal(err)
					}
				}
				deadline := time.Now().Add(2 * time.Minute)
				for {
					var n int
					if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests WHERE id = ANY($1) AND state = 'SUCCEEDED'`,
						ids).Scan(&n); err != nil {
						b.Fatal(err)
					}
					if n == perIteration {
						break
					}
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d retried requests succeeded after 2 minutes", n, perIteration)
					}
					time.Sleep(20 * time.Millisecond)
				}
				rows, err := db.Pool.Query(ctx, `SELECT started_at - due_at FROM async_requests WHERE id = ANY($1)`, ids)
				if err != nil {
					b.Fatal(err)
				}
				for rows.Next() {
					var d time.Duration
					if err := rows.Scan(&d); err != nil {
						b.Fatal(err)
					}
					late = append(late, d)
				}
				if err := rows.Err(); err != nil {
					b.Fatal(err)
				}
			}
			stop()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			slices.Sort(late)
			pct := func(q float64) float64 {
				return float64(late[min(len(late)-1, int(q*float64(len(late))))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.50), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
			b.ReportMetric(float64(late[len(late)-1].Microseconds())/1000, "max-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
