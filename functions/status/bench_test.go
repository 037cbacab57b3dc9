package status_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/config"
)

// BenchmarkGet measures GET /async_request/{id} through the handler against
// the database, side by side: a finished request (one read by primary key)
// and queued requests with 0, 1,000 and 20,000 of their deployment's
// requests ahead of them, whose answer adds queue_position (a walk along the
// deployment's queued index, stopped at postgres.QueuePositionMax, so the
// last two should cost alike). Each case has its own deployment, so the
// queues do not mix. Each iteration answers getsPerIteration GETs.
func BenchmarkGet(b *testing.B) {
	const getsPerIteration = 300
	bench := setup(b, func(o *status.Options) { o.API = config.API{ReadRate: 1e9} })
	ctx := context.Background()
	// ahead queues n requests of m1 on deployment, all due an hour before
	// anything the API queues now.
	ahead := func(deployment string, n int) {
		_, err := bench.db.Pool.Exec(ctx, `
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
				input, created_at, status_at)
			SELECT gen_random_uuid(), $1, 'm1', false, $2, 'QUEUED', 'NO_WEBHOOK_PROVIDED', 0,
				now() - interval '1 hour', now() + interval '1 day', 3, 1000, 5000, '{}', now(), now()
			FROM generate_series(1, $3)`, bench.acme, deployment, n)
		if err != nil {
			b.Fatal(err)
		}
	}
	finished := bench.insert(bench.acme, "m2", false, "m2-a", "")
	bench.exec(finished, `UPDATE async_requests SET state = 'SUCCEEDED', input = NULL, output = '{}',
		finished_at = now(), status_at = now() WHERE id = $1`)
	ahead("m1-b", 1000)
	ahead("m1-a", 20000)
	cases := []struct {
		name string
		id   string
	}{
		{"Finished", finished},
		{"Queued0Ahead", bench.insert(bench.acme, "c1", true, "c1-a", "")},
		{"Queued1000Ahead", bench.insert(bench.acme, "m1", false, "m1-b", "")},
		{"Queued20000Ahead", bench.insert(bench.acme, "m1", false, "m1-a", "")},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			path := "/async_request/" + c.id
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				for range getsPerIteration {
					if rec := bench.do("GET", "api.example.com", path, ""); rec.Code != http.StatusOK {
						b.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body)
					}
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(b.N*getsPerIteration)/total.Seconds(), "req/s")
			b.ReportMetric(float64(total.Microseconds())/float64(b.N*getsPerIteration), "µs/req")
			b.ReportMetric(0, "ns/op") // an iteration's time says nothing on its own
		})
	}
}
