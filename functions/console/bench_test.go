package console_test

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchFinishedRows is how many finished requests the console benchmark's
// table holds (CONSOLE_BENCH_ROWS overrides it).
const benchFinishedRows = 1_000_000

// BenchmarkPages times the console's pages, signed in, through the handler
// against a table of a million finished requests of one organization,
// spread evenly over the last 24 hours (the status retention), in the
// order they arrived, on two deployments,
// with fresh statistics: the overview with its charts (the last hour's
// rows, about 42,000), the requests page unfiltered, by state, by
// deployment, and its second page, and a request's timeline. Each
// iteration loads each page pagesPerIteration times.
func BenchmarkPages(b *testing.B) {
	const pagesPerIteration = 20
	rows := benchFinishedRows
	if n, err := strconv.Atoi(os.Getenv("CONSOLE_BENCH_ROWS")); err == nil && n > 0 {
		rows = n
	}
	bench := setup(b)
	ctx := context.Background()
	start := time.Now()
	if _, err := bench.db.Pool.Exec(ctx, `
		INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
			webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
			created_at, status_at, finished_at, attempts)
		SELECT gen_random_uuid(), $1, 'm1', false, CASE WHEN i % 4 = 0 THEN 'm1-b' ELSE 'm1-a' END,
			(ARRAY['SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'SUCCEEDED', 'FAILED', 'EXPIRED', 'CANCELED', 'SUCCEEDED'])[i % 10 + 1],
			'NO_WEBHOOK_PROVIDED', 0, c, c + interval '10 minutes', 3, 1000, 5000, c, f, f, 1
		FROM generate_series(1, $2) i,
			LATERAL (SELECT now() - interval '24 hours' + i * (interval '24 hours' / $2) AS c) created,
			LATERAL (SELECT c + (i % 50) * interval '97 ms' AS f) finished`, bench.acme, rows); err != nil {
		b.Fatal(err)
	}
	if _, err := bench.db.Pool.Exec(ctx, `VACUUM ANALYZE async_requests`); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d finished rows in %s", rows, time.Since(start).Round(time.Millisecond))
	id := bench.insert(bench.acme, "m1", "m1-a", "https://hooks.example.com/h")

	br := bench.signedIn(b, bench.key)
	second := strings.ReplaceAll(regexpFind(b, br.get("/console/requests").body, `href="(/console/requests\?cursor=[^"]+)" id="older"`), "&amp;", "&")
	cases := []struct{ name, path string }{
		{"Overview", "/console/"},
		{"Requests", "/console/requests"},
		{"RequestsFailed", "/console/requests?state=FAILED"},
		{"RequestsDeployment", "/console/requests?deployment=m1-b"},
		{"RequestsPage2", second},
		{"Timeline", "/console/requests/" + id},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				t := time.Now()
				for range pagesPerIteration {
					if a := br.get(c.path); a.status != http.StatusOK {
						b.Fatalf("GET %s: %d", c.path, a.status)
					}
				}
				total += time.Since(t)
			}
			b.ReportMetric(float64(b.N*pagesPerIteration)/total.Seconds(), "req/s")
			b.ReportMetric(float64(total.Microseconds())/float64(b.N*pagesPerIteration), "µs/page")
			b.ReportMetric(0, "ns/op")
		})
	}
}
