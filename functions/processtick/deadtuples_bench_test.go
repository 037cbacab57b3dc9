package processtick_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// BenchmarkDeadTuples measures, side by side, GET async_queue_status
// (through the status handler) and a claim of 100 requests while
// async_requests and its hot partial indexes hold the dead row versions of
// a burst of 100,000 requests (queued, claimed, finished and purged, with
// autovacuum held off so the dead versions stay), and then the same after a
// VACUUM. The live queue is 1,000 QUEUED requests. A claim's rows are
// handed back after it (not timed), so the queue stays as it was.
//
// Index scans mark the entries of dead rows so that later scans skip them,
// but only for rows older than every snapshot on the server: on a server
// with transactions running in other databases (as on a shared test
// server) they stay unmarked, and only a vacuum removes them, which is why
// the migration 20261201000002 runs autovacuum after a fixed number of
// dead rows.
func BenchmarkDeadTuples(b *testing.B) {
	const burst, live, getsPerIteration, claimsPerIteration = 100000, 1000, 50, 10
	ctx := context.Background()
	db := pgtest.New(b)
	tenant := pgtest.SeedTenant(b, db, "bench", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "m1-a", ModelID: "m1", Environments: []string{"production"}, MaxConcurrency: 100000}})
	exec := func(sql string, args ...any) {
		b.Helper()
		if _, err := db.Pool.Exec(ctx, sql, args...); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`ALTER TABLE async_requests SET (autovacuum_enabled = false)`)
	queue := func(n int, dueAgo string) {
		exec(`
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
				input, created_at, status_at)
			SELECT gen_random_uuid(), $1, 'm1', false, 'm1-a', 'QUEUED', 'NO_WEBHOOK_PROVIDED', 0,
				now() - $3::interval, now() + interval '1 day', 3, 1000, 5000, '{}', now(), now()
			FROM generate_series(1, $2)`, tenant.ID, n, dueAgo)
	}
	queue(live, "1 hour")
	exec(`VACUUM ANALYZE async_requests`)
	// The burst: each row passes through QUEUED, IN_PROGRESS and SUCCEEDED
	// and is deleted, leaving dead versions in the table and dead entries in
	// the queued and in-progress indexes, in the order a real burst would.
	for i := 0; i < burst; i += 10000 {
		queue(10000, "2 hours")
		exec(`UPDATE async_requests SET state = 'IN_PROGRESS', lease_owner = 'p', lease_expires_at = now() + interval '1 minute'
			WHERE state = 'QUEUED' AND due_at < now() - interval '90 minutes'`)
		exec(`UPDATE async_requests SET state = 'SUCCEEDED', lease_owner = NULL, lease_expires_at = NULL,
			finished_at = now(), purge_at = now() WHERE state = 'IN_PROGRESS'`)
		exec(`DELETE FROM async_requests WHERE state = 'SUCCEEDED'`)
	}
	var dead int64
	if err := db.Pool.QueryRow(ctx, `SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'async_requests'`).Scan(&dead); err != nil {
		b.Fatal(err)
	}
	b.Logf("dead tuples before the first case (statistics, may lag): %d", dead)

	h := status.New(status.Options{DB: db, API: config.API{ReadRate: 1e9}})
	get := func() {
		r := httptest.NewRequest("GET", "http://placeholder/production/async_queue_status", nil)
		r.Host = "model-m1.api.example.com"
		r.Header.Set("Authorization", "Api-Key "+tenant.Key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		if rec.Code != http.StatusOK {
			b.Fatalf("queue status: %d %s", rec.Code, rec.Body)
		}
	}
	for _, phase := range []string{"DeadTuples", "AfterVacuum"} {
		if phase == "AfterVacuum" {
			exec(`VACUUM async_requests`)
		}
		b.Run("QueueStatus"+phase, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				start := time.Now()
				for range getsPerIteration {
					get()
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(b.N*getsPerIteration)/total.Seconds(), "req/s")
			b.ReportMetric(float64(total.Microseconds())/float64(b.N*getsPerIteration), "µs/req")
			b.ReportMetric(0, "ns/op")
		})
		b.Run("Claim100"+phase, func(b *testing.B) {
			var total time.Duration
			for b.Loop() {
				for range claimsPerIteration {
					start := time.Now()
					claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "bench", Limit: 100, LeaseDuration: time.Minute})
					total += time.Since(start)
					if err != nil || len(claimed) != 100 {
						b.Fatalf("claim: %v, %d claimed", err, len(claimed))
					}
					back := make([]postgres.AttemptOutcome, len(claimed))
					ids := make([]requestid.ID, len(claimed))
					for i, c := range claimed {
						back[i], ids[i] = postgres.AttemptOutcome{ID: c.ID, State: postgres.StateQueued, Uncount: true}, c.ID
					}
					if _, err := db.RequestCompleteBatch(ctx, "bench", back); err != nil {
						b.Fatal(err)
					}
					// Back where they were in the queue.
					exec(`UPDATE async_requests SET due_at = now() - interval '1 hour' WHERE id = ANY($1)`, ids)
				}
			}
			b.ReportMetric(float64(b.N*claimsPerIteration)/total.Seconds(), "claims/s")
			b.ReportMetric(float64(total.Microseconds())/float64(b.N*claimsPerIteration), "µs/claim")
			b.ReportMetric(0, "ns/op")
		})
	}
}
