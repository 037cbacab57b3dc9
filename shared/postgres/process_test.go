package postgres_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// retryLost retries a lost attempt after a second while attempts remain.
func retryLost(l postgres.LostAttempt) (time.Duration, bool) {
	return time.Second, l.Attempt < l.MaxAttempts
}

// processSetup gives a database with one organization and a deployment of
// max_concurrency 2, and a function queueing requests for it.
func processSetup(t *testing.T) (*postgres.DB, func(edit ...func(*postgres.RequestInsertParams)) requestid.ID) {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	org := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "d1", ModelID: "m1", MaxConcurrency: 2}})
	submit := func(edit ...func(*postgres.RequestInsertParams)) requestid.ID {
		t.Helper()
		p := postgres.RequestInsertParams{
			ID: requestid.New(), OrganizationID: org.ID, ModelID: "m1", DeploymentID: "d1",
			MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000, Input: []byte(`{}`),
		}
		for _, e := range edit {
			e(&p)
		}
		if _, err := db.RequestInsert(ctx, p); err != nil {
			t.Fatal(err)
		}
		return p.ID
	}
	return db, submit
}

func TestRequestClaimBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	claim := func(t *testing.T, db *postgres.DB, owner string) []postgres.ClaimedRequest {
		t.Helper()
		c, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: owner, Limit: 100, LeaseDuration: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("DueWithinDeadlineUpToMaxConcurrency", func(t *testing.T) {
		t.Parallel()
		db, submit := processSetup(t)
		submit(func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = 0 }) // deadline passed
		future := submit()
		if _, err := db.Pool.Exec(ctx, `UPDATE async_requests SET due_at = now() + interval '1 hour' WHERE id = $1`, future); err != nil {
			t.Fatal(err)
		}
		first, second, third := submit(), submit(), submit()
		got := claim(t, db, "a")
		if len(got) != 2 || got[0].ID != first || got[1].ID != second {
			t.Fatalf("claimed %+v, want the first two due requests", got)
		}
		if got[0].Attempt != 1 || got[0].URL != "http://model.invalid" || string(got[0].Input) != `{}` ||
			got[0].InitialDelay != time.Second || got[0].MaxDelay != 5*time.Second || got[0].MaxAttempts != 3 {
			t.Errorf("claimed request %+v", got[0])
		}
		if more := claim(t, db, "b"); len(more) != 0 {
			t.Fatalf("claimed %d past max_concurrency", len(more))
		}
		if _, err := db.RequestCompleteBatch(ctx, "a", []postgres.AttemptOutcome{{ID: first, State: postgres.StateSucceeded, Output: []byte(`1`)}}); err != nil {
			t.Fatal(err)
		}
		if more := claim(t, db, "b"); len(more) != 1 || more[0].ID != third {
			t.Fatalf("after a slot freed: claimed %+v, want the third", more)
		}
	})

	t.Run("CancelRace", func(t *testing.T) {
		t.Parallel()
		db, submit := processSetup(t)
		var orgID int64
		if err := db.Pool.QueryRow(ctx, `SELECT id FROM organizations`).Scan(&orgID); err != nil {
			t.Fatal(err)
		}
		wins := map[postgres.RequestState]int{}
		defer func() { t.Logf("winners: %v", wins) }()
		for i := range 100 {
			id := submit()
			var wg sync.WaitGroup
			var canceled bool
			var claimed []postgres.ClaimedRequest
			var cancelErr, claimErr error
			wg.Go(func() { _, canceled, cancelErr = db.RequestCancel(ctx, orgID, id) })
			wg.Go(func() {
				claimed, claimErr = db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 1, LeaseDuration: time.Minute})
			})
			wg.Wait()
			if cancelErr != nil || claimErr != nil {
				t.Fatal(cancelErr, claimErr)
			}
			state := scalarState(t, db, id)
			wins[state]++
			switch {
			case canceled && len(claimed) == 0 && state == postgres.StateCanceled:
			case !canceled && len(claimed) == 1 && state == postgres.StateInProgress:
				if _, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{{ID: id, State: postgres.StateSucceeded}}); err != nil {
					t.Fatal(err)
				}
			default:
				t.Fatalf("iteration %d: canceled %v, claimed %d, state %s", i, canceled, len(claimed), state)
			}
		}
	})
}

func scalarState(t *testing.T, db *postgres.DB, id requestid.ID) postgres.RequestState {
	t.Helper()
	var s postgres.RequestState
	if err := db.Pool.QueryRow(context.Background(), `SELECT state FROM async_requests WHERE id = $1`, id).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRequestCompleteBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	bp, retry := submit(), submit()
	claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 2, LeaseDuration: time.Minute})
	if err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v, %d", err, len(claimed))
	}
	notReady := &postgres.AttemptError{Code: postgres.CodeModelNotReady, Message: "model answered 429"}
	unavailable := &postgres.AttemptError{Code: postgres.CodeModelUnavailable, Message: "model answered 503"}
	rec, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{
		{ID: bp, State: postgres.StateQueued, Uncount: true, Error: notReady, Delay: 0},
		{ID: retry, State: postgres.StateQueued, Error: unavailable, Delay: time.Hour},
	})
	if err != nil || len(rec) != 2 {
		t.Fatalf("complete: %v, %d recorded", err, len(rec))
	}
	// The back-pressured request comes straight back; a second back-pressure
	// answer in a row is not recorded twice.
	again, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 2, LeaseDuration: time.Minute})
	if err != nil || len(again) != 1 || again[0].ID != bp || again[0].Attempt != 1 {
		t.Fatalf("reclaim after back-pressure: %v, %+v", err, again)
	}
	if _, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{{ID: bp, State: postgres.StateQueued, Uncount: true, Error: notReady, Delay: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	var attempts, errs int
	if err := db.Pool.QueryRow(ctx, `SELECT attempts, jsonb_array_length(errors) FROM async_requests WHERE id = $1`, bp).Scan(&attempts, &errs); err != nil {
		t.Fatal(err)
	}
	if attempts != 0 || errs != 1 {
		t.Errorf("back-pressured twice: attempts %d, %d errors; want 0, 1", attempts, errs)
	}
	if err := db.Pool.QueryRow(ctx, `SELECT attempts, jsonb_array_length(errors) FROM async_requests WHERE id = $1`, retry).Scan(&attempts, &errs); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || errs != 1 {
		t.Errorf("retried: attempts %d, %d errors; want 1, 1", attempts, errs)
	}
}

// TestRequestCompleteBatchUnstorableText: a message quoting a model's answer
// may hold NUL and invalid UTF-8, which Postgres jsonb refuses; the batch
// is written all the same, with those bytes replaced.
func TestRequestCompleteBatchUnstorableText(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	binary, other := submit(), submit()
	if claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 2, LeaseDuration: time.Minute}); err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v, %d", err, len(claimed))
	}
	rec, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{
		{ID: binary, State: postgres.StateFailed, Error: &postgres.AttemptError{Code: postgres.CodeModelPredictError, Message: "model answered 500: a\x00b\xff\xfec"}},
		{ID: other, State: postgres.StateSucceeded, Output: []byte(`{}`)},
	})
	if err != nil || len(rec) != 2 {
		t.Fatalf("complete: %v, %d recorded", err, len(rec))
	}
	var state, message string
	if err := db.Pool.QueryRow(ctx, `SELECT state, errors -> 0 ->> 'message' FROM async_requests WHERE id = $1`, binary).Scan(&state, &message); err != nil {
		t.Fatal(err)
	}
	if state != string(postgres.StateFailed) || message != "model answered 500: a\uFFFDb\uFFFDc" {
		t.Errorf("state %s, message %q", state, message)
	}
}

func TestSweeps(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("RetentionPurge", func(t *testing.T) {
		t.Parallel()
		db, submit := processSetup(t)
		gone, cleared, kept := submit(), submit(), submit()
		if _, err := db.Pool.Exec(ctx, `
			UPDATE async_requests SET state = 'SUCCEEDED', output = '1',
				purge_at = CASE WHEN id = $1 THEN now() - interval '1 second' ELSE now() + interval '1 day' END,
				output_expires_at = CASE WHEN id = $2 THEN now() - interval '1 second' ELSE now() + interval '1 hour' END`,
			gone, cleared); err != nil {
			t.Fatal(err)
		}
		c, err := db.RetentionPurge(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		if c.Requests != 1 || c.Outputs != 1 {
			t.Errorf("purged %+v, want one request and one output", c)
		}
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests WHERE id = $1`, gone).Scan(&n); err != nil || n != 0 {
			t.Errorf("purged request still there: %v, %d", err, n)
		}
		var output []byte
		if err := db.Pool.QueryRow(ctx, `SELECT output FROM async_requests WHERE id = $1`, cleared).Scan(&output); err != nil || output != nil {
			t.Errorf("expired output: %v, %q", err, output)
		}
		if err := db.Pool.QueryRow(ctx, `SELECT output FROM async_requests WHERE id = $1`, kept).Scan(&output); err != nil || string(output) != "1" {
			t.Errorf("retained output: %v, %q", err, output)
		}
	})

	t.Run("ExpireOnlyPastDeadline", func(t *testing.T) {
		t.Parallel()
		db, submit := processSetup(t)
		late := submit(func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = 0 })
		submit()
		expired, err := db.RequestExpireBatch(ctx, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(expired) != 1 || expired[0].ID != late || expired[0].State != postgres.StateExpired {
			t.Fatalf("expired %+v, want only the late one", expired)
		}
	})
}

// TestAttemptHistory: each model answer recorded by a completion batch, and
// each lost-lease reclaim, writes its request_attempts row in the same
// statement; a hand-back and an outcome whose lease was lost write none.
func TestAttemptHistory(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	if _, err := db.Pool.Exec(ctx, `UPDATE deployments SET max_concurrency = 10`); err != nil {
		t.Fatal(err)
	}
	ok, retried, waited, handed, stolen, lost := submit(), submit(), submit(), submit(), submit(), submit()
	if claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p1", Limit: 6, LeaseDuration: time.Minute}); err != nil || len(claimed) != 6 {
		t.Fatalf("claim: %v, %d", err, len(claimed))
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE async_requests SET lease_owner = 'p2' WHERE id = $1`, stolen); err != nil {
		t.Fatal(err)
	}
	began := time.Now().Add(-time.Second).Truncate(time.Microsecond)
	ended := began.Add(250 * time.Millisecond)
	rec, err := db.RequestCompleteBatch(ctx, "p1", []postgres.AttemptOutcome{
		{ID: ok, State: postgres.StateSucceeded, Output: []byte(`1`), HTTPStatus: 200, StartedAt: began, FinishedAt: ended},
		{ID: retried, State: postgres.StateQueued, Delay: time.Hour, HTTPStatus: 503,
			Error: &postgres.AttemptError{Code: postgres.CodeModelUnavailable, Message: "model answered 503"}},
		{ID: waited, State: postgres.StateQueued, Uncount: true, Delay: time.Hour, HTTPStatus: 429,
			Error: &postgres.AttemptError{Code: postgres.CodeModelNotReady, Message: "model answered 429"}},
		{ID: handed, State: postgres.StateQueued, Uncount: true},
		{ID: stolen, State: postgres.StateSucceeded, Output: []byte(`2`), HTTPStatus: 200},
	})
	if err != nil || len(rec) != 4 {
		t.Fatalf("complete: %v, %d recorded", err, len(rec))
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE async_requests SET lease_expires_at = now() - interval '1 second' WHERE id = $1`, lost); err != nil {
		t.Fatal(err)
	}
	if l, err := db.RequestReclaimLost(ctx, postgres.RequestReclaimLostParams{Limit: 100, Retry: retryLost}); err != nil || len(l) != 1 {
		t.Fatalf("reclaim: %v, %d", err, len(l))
	}

	type row struct {
		number            int
		counted           bool
		status            *int
		code, message     *string
		processor         string
		started, finished time.Time
	}
	rows, err := db.Pool.Query(ctx, `SELECT request_id, number, counted, http_status, code, message, processor, started_at, finished_at
		FROM request_attempts ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[requestid.ID][]row{}
	for rows.Next() {
		var id requestid.ID
		var r row
		if err := rows.Scan(&id, &r.number, &r.counted, &r.status, &r.code, &r.message, &r.processor, &r.started, &r.finished); err != nil {
			t.Fatal(err)
		}
		got[id] = append(got[id], r)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || len(got[handed]) != 0 || len(got[stolen]) != 0 {
		t.Fatalf("history rows for %d requests (hand-back %d, lost lease %d); want 4, 0, 0", len(got), len(got[handed]), len(got[stolen]))
	}
	str := func(p *string) string {
		if p == nil {
			return "<nil>"
		}
		return *p
	}
	num := func(p *int) int {
		if p == nil {
			return 0
		}
		return *p
	}
	for _, c := range []struct {
		id        requestid.ID
		number    int
		counted   bool
		status    int
		code      string
		processor string
	}{
		{ok, 1, true, 200, "<nil>", "p1"},
		{retried, 1, true, 503, postgres.CodeModelUnavailable, "p1"},
		{waited, 1, false, 429, postgres.CodeModelNotReady, "p1"},
		{lost, 1, true, 0, postgres.CodeInternalServerError, "p1"},
	} {
		rs := got[c.id]
		if len(rs) != 1 {
			t.Errorf("%s: %d history rows, want 1", c.id, len(rs))
			continue
		}
		r := rs[0]
		if r.number != c.number || r.counted != c.counted || num(r.status) != c.status || str(r.code) != c.code || r.processor != c.processor {
			t.Errorf("%s: history number %d, counted %v, status %d, code %s, processor %s; want %d, %v, %d, %s, %s",
				c.id, r.number, r.counted, num(r.status), str(r.code), r.processor, c.number, c.counted, c.status, c.code, c.processor)
		}
		if c.code != "<nil>" && str(r.message) == "<nil>" {
			t.Errorf("%s: no message", c.id)
		}
		if r.finished.Before(r.started) {
			t.Errorf("%s: finished %v before started %v", c.id, r.finished, r.started)
		}
	}
	if r := got[ok][0]; !r.started.Equal(began) || !r.finished.Equal(ended) {
		t.Errorf("success: started %v, finished %v; want %v, %v", r.started, r.finished, began, ended)
	}
}

// TestInputRetention: SPEC §7. A request's input goes when it succeeds or
// is canceled; after FAILED or EXPIRED it stays, for a retry, until the
// output's retention ends, and the retention sweep then clears it.
func TestInputRetention(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	var orgID int64
	if err := db.Pool.QueryRow(ctx, `SELECT id FROM organizations`).Scan(&orgID); err != nil {
		t.Fatal(err)
	}
	succeeded, failed, expired, canceled := submit(), submit(), submit(func(p *postgres.RequestInsertParams) { p.MaxTimeInQueue = 0 }), submit()
	if _, _, err := db.RequestCancel(ctx, orgID, canceled); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RequestExpireBatch(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 2, LeaseDuration: time.Minute}); err != nil || len(claimed) != 2 {
		t.Fatalf("claim: %v, %d", err, len(claimed))
	}
	if _, err := db.RequestCompleteBatch(ctx, "p", []postgres.AttemptOutcome{
		{ID: succeeded, State: postgres.StateSucceeded, Output: []byte(`1`)},
		{ID: failed, State: postgres.StateFailed, Error: &postgres.AttemptError{Code: postgres.CodeModelInvalidInput, Message: "no"}},
	}); err != nil {
		t.Fatal(err)
	}
	kept := func(id requestid.ID) bool {
		t.Helper()
		var has bool
		if err := db.Pool.QueryRow(ctx, `SELECT input IS NOT NULL FROM async_requests WHERE id = $1`, id).Scan(&has); err != nil {
			t.Fatal(err)
		}
		return has
	}
	for id, want := range map[requestid.ID]bool{succeeded: false, canceled: false, failed: true, expired: true} {
		if got := kept(id); got != want {
			t.Errorf("%s (%s): input kept %v, want %v", id, scalarState(t, db, id), got, want)
		}
	}
	// Until the output's retention ends, the sweep leaves the inputs alone.
	if _, err := db.RetentionPurge(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if !kept(failed) || !kept(expired) {
		t.Fatal("the retention sweep cleared an input before the output's retention ended")
	}
	if _, err := db.Pool.Exec(ctx, `UPDATE async_requests SET output_expires_at = now() - interval '1 second'
		WHERE id = ANY($1)`, []requestid.ID{failed, expired}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RetentionPurge(ctx, 100); err != nil {
		t.Fatal(err)
	}
	if kept(failed) || kept(expired) {
		t.Error("the retention sweep kept an input past the output's retention")
	}
}

func TestRequestLeaseRenew(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, submit := processSetup(t)
	id := submit()
	claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 1, LeaseDuration: time.Second})
	if err != nil || len(claimed) != 1 {
		t.Fatalf("claim: %v, %d", err, len(claimed))
	}
	held, err := db.RequestLeaseRenew(ctx, "p", []requestid.ID{id, requestid.New()}, time.Hour)
	if err != nil || len(held) != 1 || held[0] != id {
		t.Fatalf("renew by the owner: %v, %v", err, held)
	}
	var left time.Duration
	if err := db.Pool.QueryRow(ctx, `SELECT lease_expires_at - now() FROM async_requests WHERE id = $1`, id).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left < 59*time.Minute {
		t.Errorf("lease runs %v more, want about an hour", left)
	}
	if held, err := db.RequestLeaseRenew(ctx, "other", []requestid.ID{id}, time.Hour); err != nil || len(held) != 0 {
		t.Fatalf("renew by another processor: %v, %v", err, held)
	}
}

// TestHotPathAfterBurst runs the processor's queries right after a burst:
// the planner's statistics were taken when nothing was queued or running
// (every partial index on state empty), and the table holds many queued and
// many finished rows. Every query must reach its rows through the index
// meant for it: no sequential scan, and no scan of every queued or running
// row through another partial index on state.
func TestHotPathAfterBurst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// One connection, so that its statistics reach the server together.
	db, err := postgres.Open(ctx, pgtest.URL(t), 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	org, err := db.OrganizationEnsure(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := db.ModelCreate(ctx, postgres.Model{ID: "m1", OrganizationID: org.ID, Kind: postgres.KindModel}); err != nil {
		t.Fatal(err)
	}
	if err := db.DeploymentCreate(ctx, org.ID, postgres.Deployment{ID: "d1", ModelID: "m1", URL: "http://model.invalid", MaxConcurrency: 10000}); err != nil {
		t.Fatal(err)
	}
	const rows, batch = 3000, 50
	insert := func(state postgres.RequestState) {
		t.Helper()
		_, err := db.Pool.Exec(ctx, `
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
				input, created_at, status_at, finished_at, purge_at)
			SELECT gen_random_uuid(), $1, 'm1', false, 'd1', $2, 'NO_WEBHOOK_PROVIDED', 0,
				now(), now() + interval '1 hour', 3, 1000, 5000, '{}', now(), now(),
				CASE WHEN $2 <> 'QUEUED' THEN now() END, CASE WHEN $2 <> 'QUEUED' THEN now() + interval '1 day' END
			FROM generate_series(1, $3)`, org.ID, string(state), rows)
		if err != nil {
			t.Fatal(err)
		}
	}
	insert(postgres.StateSucceeded)
	if _, err := db.Pool.Exec(ctx, `VACUUM ANALYZE async_requests`); err != nil {
		t.Fatal(err)
	}
	insert(postgres.StateQueued)

	claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: batch, LeaseDuration: time.Minute})
	if err != nil || len(claimed) != batch {
		t.Fatalf("claim: %v, %d claimed", err, len(claimed))
	}
	ids := make([]requestid.ID, len(claimed))
	outcomes := make([]postgres.AttemptOutcome, len(claimed))
	for i, c := range claimed {
		ids[i] = c.ID
		outcomes[i] = postgres.AttemptOutcome{ID: c.ID, State: postgres.StateSucceeded, Output: []byte(`{}`)}
	}
	if held, err := db.RequestLeaseRenew(ctx, "p", ids, time.Minute); err != nil || len(held) != batch {
		t.Fatalf("renew: %v, %d held", err, len(held))
	}
	if rec, err := db.RequestCompleteBatch(ctx, "p", outcomes); err != nil || len(rec) != batch {
		t.Fatalf("complete: %v, %d recorded", err, len(rec))
	}
	if _, err := db.RequestExpireBatch(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RequestReclaimLost(ctx, postgres.RequestReclaimLostParams{Limit: 1000, Retry: retryLost}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RetentionPurge(ctx, 1000); err != nil {
		t.Fatal(err)
	}
	// A scan of webhook_secrets marks the end: once the server counts it,
	// it counts everything before it.
	if _, err := db.Pool.Exec(ctx, `SELECT count(*) FROM webhook_secrets`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var marked int64
		if err := db.Pool.QueryRow(ctx, `SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'webhook_secrets'`).Scan(&marked); err != nil {
			t.Fatal(err)
		}
		if marked > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server never counted the statements")
		}
		time.Sleep(100 * time.Millisecond)
	}

	var seqRead int64
	if err := db.Pool.QueryRow(ctx, `SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'async_requests'`).Scan(&seqRead); err != nil {
		t.Fatal(err)
	}
	if seqRead != 0 {
		t.Errorf("sequential scans read %d rows of async_requests, want none", seqRead)
	}
	rowsRead, err := db.Pool.Query(ctx, `SELECT indexrelname, idx_tup_read FROM pg_stat_user_indexes WHERE relname = 'async_requests'`)
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]int64{}
	var total int64
	for rowsRead.Next() {
		var name string
		var n int64
		if err := rowsRead.Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		read[name], total = n, total+n
	}
	if err := rowsRead.Err(); err != nil {
		t.Fatal(err)
	}
	// The claim reads the batch from the queued index and the running
	// requests from the in-progress index, and each query looks the batch up
	// by primary key (the completion's request_attempts rows once more,
	// through their foreign key): a few times the batch in all, where a
	// scan of the queue or of the finished rows alone would read thousands.
	if total > 15*batch {
		t.Errorf("index scans read %d entries for a batch of %d: %v", total, batch, read)
	}
	for _, idx := range []string{"async_requests_active_org_idx", "async_requests_queued_deadline_idx"} {
		if read[idx] != 0 {
			t.Errorf("%s: %d entries read, want none", idx, read[idx])
		}
	}
}
