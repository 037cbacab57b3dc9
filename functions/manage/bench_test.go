package manage_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/shared/config"
)

// benchFinished is how many finished requests BenchmarkList lists among.
const benchFinished = 1_000_000

// BenchmarkList measures GET /v1/requests through the handler on a table
// of benchFinished finished requests of one organization (one in a hundred
// FAILED, the rest SUCCEEDED; one in a hundred on m1-b, the rest on m1-a;
// one a second going back from now, vacuumed as autovacuum would leave
// it), beside a baseline: one request's detail, GET /v1/requests/{id}, a
// read by primary key. The first page, a page a third of the way back (by
// cursor) and a page of the rare FAILED ones each walk an index for one
// page, so they should cost a small multiple of the baseline whatever the
// table holds; a page of m1-a walks the organization's index and skips the
// few m1-b rows, while a page of the rare m1-b reads the hundred times as
// many m1-a rows in between (there is no per-deployment index: each index
// costs every write). Each iteration answers getsPerIteration GETs.
func BenchmarkList(b *testing.B) {
	const getsPerIteration = 50
	bench := setup(b)
	ctx := context.Background()
	h := manage.New(manage.Options{DB: bench.db, API: config.API{ReadRate: 1e9}})
	get := func(path string) *httptest.ResponseRecorder { return send(h, "GET", path, bench.key, nil) }
	start := time.Now()
	_, err := bench.db.Pool.Exec(ctx, `
		INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
			webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
			output, created_at, status_at, finished_at, purge_at)
		SELECT gen_random_uuid(), $1, 'm1', false, CASE WHEN i % 100 = 1 THEN 'm1-b' ELSE 'm1-a' END,
			CASE WHEN i % 100 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END, 'NO_WEBHOOK_PROVIDED', 0,
			t, t + interval '10 minutes', 3, 1000, 5000, '{}', t, t, t, now() + interval '1 day'
		FROM generate_series(1, $2) i, LATERAL (SELECT now() - make_interval(secs => i)) AS at(t)`,
		bench.acme, benchFinished)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := bench.db.Pool.Exec(ctx, `VACUUM ANALYZE async_requests`); err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d finished requests in %v", benchFinished, time.Since(start).Round(time.Millisecond))
	var page listBody
	decode(b, get("/v1/requests?limit=1"), http.StatusOK, &page)
	one := page.Requests[0].RequestID
	decode(b, get("/v1/requests?limit=500"), http.StatusOK, &page)
	for range benchFinished / 3 / 500 {
		decode(b, get("/v1/requests?limit=500&cursor="+*page.NextCursor), http.StatusOK, &page)
	}
	deep := *page.NextCursor
	for _, c := range []struct{ name, path string }{
		{"DetailBaseline", "/v1/requests/" + one},
		{"FirstPage50", "/v1/requests?limit=50"},
		{"DeepPage50", "/v1/requests?limit=50&cursor=" + deep},
		{"FailedPage50", "/v1/requests?limit=50&state=FAILED"},
		{"DeploymentPage50", "/v1/requests?limit=50&deployment_id=m1-a"},
		{"RareDeploymentPage50", "/v1/requests?limit=50&deployment_id=m1-b"},
	} {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				for range getsPerIteration {
					if rec := get(c.path); rec.Code != http.StatusOK {
						b.Fatalf("GET %s: %d %s", c.path, rec.Code, rec.Body)
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
