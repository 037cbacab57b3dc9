package manage_test

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// finish puts request id in a final state as the processor or the expiry
// sweep leaves it, its input retained (SPEC §7) and its webhook, if any,
// delivered.
func (b bundle) finish(id string, state postgres.RequestState) {
	b.exec(id, `UPDATE async_requests SET state = '`+string(state)+`', attempts = max_attempts, finished_at = now(), status_at = now(),
		errors = '[{"code": "MODEL_UNAVAILABLE", "message": "busy"}]',
		webhook_state = CASE WHEN webhook_endpoint IS NULL THEN 'NO_WEBHOOK_PROVIDED' ELSE 'SUCCEEDED' END,
		purge_at = now() + interval '1 day', created_at = now() - interval '2 hours', deadline_at = now() - interval '1 hour'
		WHERE id = $1`)
	b.exec(id, `INSERT INTO request_attempts (request_id, number, started_at, finished_at, http_status, code, processor)
		VALUES ($1, 1, now() - interval '1 minute', now(), 503, 'MODEL_UNAVAILABLE', 'p1')`)
}

// runOnce claims acme's due requests and records for each the outcome
// (with the model's HTTP status) a processor would, which writes its
// attempt row.
func (b bundle) runOnce(t *testing.T, outcome func(postgres.ClaimedRequest) postgres.AttemptOutcome) []postgres.ClaimedRequest {
	t.Helper()
	ctx := context.Background()
	claimed, err := b.db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p2", Limit: 100, LeaseDuration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	var outcomes []postgres.AttemptOutcome
	for _, c := range claimed {
		outcomes = append(outcomes, outcome(c))
	}
	if _, err := b.db.RequestCompleteBatch(ctx, "p2", outcomes); err != nil {
		t.Fatal(err)
	}
	return claimed
}

func succeed(c postgres.ClaimedRequest) postgres.AttemptOutcome {
	return postgres.AttemptOutcome{ID: c.ID, State: postgres.StateSucceeded, Output: []byte(`{"ok": true}`), HTTPStatus: 200}
}

func TestRetry(t *testing.T) {
	t.Parallel()
	for _, state := range []postgres.RequestState{postgres.StateFailed, postgres.StateExpired} {
		t.Run(string(state), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			id := b.insert(b.acme, "m1", "m1-a", "https://hooks.example.com/h")
			b.finish(id, state)
			var got struct {
				Status        string `json:"status"`
				WebhookStatus string `json:"webhook_status"`
				Attempts      int    `json:"attempts"`
				Errors        []any  `json:"errors"`
			}
			decode(t, b.do("POST", "/v1/requests/"+id+"/retry", b.key, nil), http.StatusOK, &got)
			if got.Status != "QUEUED" || got.WebhookStatus != "PENDING" || got.Attempts != 0 || len(got.Errors) != 1 {
				t.Fatalf("after retry = %+v", got)
			}
			r, err := b.db.RequestGetByID(ctx, b.acme, mustParse(t, id))
			if err != nil {
				t.Fatal(err)
			}
			// A fresh queue deadline as long as the first (an hour).
			if d := time.Until(r.DeadlineAt); d < 59*time.Minute || d > 61*time.Minute {
				t.Errorf("deadline in %v, want about an hour", d)
			}
			if r.Output != nil || r.FinishedAt != nil || r.Input == nil {
				t.Errorf("row after retry = %+v", r)
			}
			// Retrying again while it is queued is a 409 saying why.
			rec := b.do("POST", "/v1/requests/"+id+"/retry", b.key, nil)
			apitest.CheckError(t, rec, http.StatusConflict, "NOT_RETRYABLE", "")
			if !strings.Contains(rec.Body.String(), "QUEUED") {
				t.Errorf("409 does not say the state: %s", rec.Body)
			}
		})
	}

	// The whole story through the processor's own statements: a request
	// FAILED by the model, or EXPIRED waiting for its second attempt, is
	// retried and SUCCEEDS, both attempts in its history.
	type historyBody struct {
		Status   string `json:"status"`
		Attempts []struct {
			Number     int    `json:"number"`
			HTTPStatus int    `json:"http_status"`
			Code       string `json:"code"`
		} `json:"attempts"`
	}
	for _, c := range []struct {
		name     string
		first    postgres.AttemptOutcome
		thenWait bool // the first attempt is retried, and the request expires waiting
	}{
		{"FailedToSucceeded", postgres.AttemptOutcome{State: postgres.StateFailed, HTTPStatus: 400,
			Error: &postgres.AttemptError{Code: postgres.CodeModelInvalidInput, Message: "bad input"}}, false},
		{"ExpiredToSucceeded", postgres.AttemptOutcome{State: postgres.StateQueued, HTTPStatus: 503, Delay: time.Hour,
			Error: &postgres.AttemptError{Code: postgres.CodeModelUnavailable, Message: "busy"}}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			ctx := context.Background()
			id := b.insert(b.acme, "m1", "m1-a", "")
			b.runOnce(t, func(cl postgres.ClaimedRequest) postgres.AttemptOutcome {
				o := c.first
				o.ID = cl.ID
				return o
			})
			if c.thenWait {
				// Its hour in the queue has passed.
				b.exec(id, `UPDATE async_requests SET created_at = now() - interval '3601 seconds', deadline_at = now() - interval '1 second' WHERE id = $1`)
				if _, err := b.db.RequestExpireBatch(ctx, 10); err != nil {
					t.Fatal(err)
				}
			}
			var before historyBody
			decode(t, b.do("GET", "/v1/requests/"+id, b.key, nil), http.StatusOK, &before)
			if want := map[bool]string{false: "FAILED", true: "EXPIRED"}[c.thenWait]; before.Status != want || len(before.Attempts) != 1 {
				t.Fatalf("before the retry = %+v, want %s with one attempt", before, want)
			}
			decode(t, b.do("POST", "/v1/requests/"+id+"/retry", b.key, nil), http.StatusOK, &struct{}{})
			if claimed := b.runOnce(t, succeed); len(claimed) != 1 || claimed[0].Attempt != 1 || string(claimed[0].Input) != `{"in": 1}` {
				t.Fatalf("claimed = %+v", claimed)
			}
			var after historyBody
			decode(t, b.do("GET", "/v1/requests/"+id, b.key, nil), http.StatusOK, &after)
			if after.Status != "SUCCEEDED" || len(after.Attempts) != 2 || after.Attempts[0].HTTPStatus != c.first.HTTPStatus ||
				after.Attempts[0].Code != c.first.Error.Code || after.Attempts[1].HTTPStatus != 200 {
				t.Fatalf("after the retried run = %+v", after)
			}
		})
	}

	t.Run("Refused", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		succeeded := b.insert(b.acme, "m1", "m1-a", "")
		b.finish(succeeded, postgres.StateSucceeded)
		inputGone := b.insert(b.acme, "m1", "m1-a", "")
		b.finish(inputGone, postgres.StateFailed)
		b.exec(inputGone, `UPDATE async_requests SET input = NULL WHERE id = $1`)
		webhookDue := b.insert(b.acme, "m1", "m1-a", "https://hooks.example.com/h")
		b.finish(webhookDue, postgres.StateFailed)
		b.exec(webhookDue, `UPDATE async_requests SET webhook_state = 'PENDING' WHERE id = $1`)
		b.exec(webhookDue, `INSERT INTO webhook_deliveries (request_id, state) VALUES ($1, 'PENDING')`)
		for _, c := range []struct{ id, code, mention string }{
			{succeeded, "NOT_RETRYABLE", "SUCCEEDED"},
			{inputGone, "INPUT_EXPIRED", "input"},
			{webhookDue, "WEBHOOK_PENDING", "webhook"},
		} {
			rec := b.do("POST", "/v1/requests/"+c.id+"/retry", b.key, nil)
			apitest.CheckError(t, rec, http.StatusConflict, c.code, "")
			if !strings.Contains(rec.Body.String(), c.mention) {
				t.Errorf("%s: %s does not mention %q", c.code, rec.Body, c.mention)
			}
		}
		apitest.CheckError(t, b.do("POST", "/v1/requests/not-an-id/retry", b.key, nil), http.StatusNotFound, "NOT_FOUND", "")
	})
}

type bulkResult struct {
	Matched int64 `json:"matched"`
	Changed int64 `json:"changed"`
}

func TestBulk(t *testing.T) {
	t.Parallel()

	t.Run("CancelByIDsAndFilter", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		a1, a2 := b.insert(b.acme, "m1", "m1-a", ""), b.insert(b.acme, "m1", "m1-a", "")
		done := b.insert(b.acme, "m1", "m1-a", "")
		b.finish(done, postgres.StateSucceeded)
		other := b.insert(b.acme, "m1", "m1-b", "")
		var res bulkResult
		decode(t, b.do("POST", "/v1/requests/cancel", b.key, map[string]any{"ids": []string{a1, done, requestid.New().String()}}), http.StatusOK, &res)
		if res != (bulkResult{Matched: 1, Changed: 1}) {
			t.Errorf("by ids = %+v", res)
		}
		decode(t, b.do("POST", "/v1/requests/cancel", b.key, map[string]any{"filter": map[string]any{"deployment_id": "m1-a"}}), http.StatusOK, &res)
		if res != (bulkResult{Matched: 1, Changed: 1}) {
			t.Errorf("by filter = %+v", res)
		}
		for id, want := range map[string]postgres.RequestState{a1: postgres.StateCanceled, a2: postgres.StateCanceled, done: postgres.StateSucceeded, other: postgres.StateQueued} {
			if r, _ := b.db.RequestGetByID(context.Background(), b.acme, mustParse(t, id)); r.State != want {
				t.Errorf("%s is %s, want %s", id, r.State, want)
			}
		}
		for _, bad := range []struct {
			body  any
			field string
		}{
			{map[string]any{}, "ids"},
			{map[string]any{"ids": []string{}}, "ids"},
			{map[string]any{"ids": []string{"x"}}, "ids[0]"},
			{map[string]any{"ids": []string{a1}, "filter": map[string]any{}}, "ids"},
			{map[string]any{"filter": map[string]any{"state": "nope"}}, "filter.state"},
			{map[string]any{"filter": map[string]any{"created_before": "soon"}}, "filter.created_before"},
			{map[string]any{"ids": make([]string, postgres.BulkMax+1)}, "ids"},
		} {
			apitest.CheckError(t, b.do("POST", "/v1/requests/cancel", b.key, bad.body), http.StatusBadRequest, "INVALID_FIELD", bad.field)
		}
		apitest.CheckError(t, b.do("POST", "/v1/requests/retry", b.key, map[string]any{"filter": map[string]any{"state": "QUEUED"}}),
			http.StatusBadRequest, "INVALID_FIELD", "filter.state")
	})

	t.Run("RetryByFilter", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for range 3 {
			b.finish(b.insert(b.acme, "m1", "m1-a", ""), postgres.StateFailed)
		}
		expired := b.insert(b.acme, "m1", "m1-b", "")
		b.finish(expired, postgres.StateExpired)
		var res bulkResult
		decode(t, b.do("POST", "/v1/requests/retry", b.key, map[string]any{"filter": map[string]any{"state": "FAILED"}}), http.StatusOK, &res)
		if res != (bulkResult{Matched: 3, Changed: 3}) {
			t.Errorf("retry FAILED = %+v", res)
		}
		decode(t, b.do("POST", "/v1/requests/retry", b.key, map[string]any{"filter": map[string]any{}}), http.StatusOK, &res)
		if res != (bulkResult{Matched: 1, Changed: 1}) {
			t.Errorf("retry the rest = %+v", res)
		}
	})

	// Bulk cancels and retries race processors: no request is both canceled
	// and claimed, and none is claimed twice at once.
	t.Run("UnderConcurrentProcessing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		ctx := context.Background()
		if _, err := b.db.Pool.Exec(ctx, `UPDATE deployments SET max_concurrency = 1000`); err != nil {
			t.Fatal(err)
		}
		const n = 300
		var failed []string
		for range n {
			b.insert(b.acme, "m1", "m1-a", "")
			id := b.insert(b.acme, "m1", "m1-b", "")
			b.finish(id, postgres.StateFailed)
			failed = append(failed, id)
		}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			claimed = map[requestid.ID]int{}
			cancels []bulkResult
			retries []bulkResult
		)
		for p := range 3 {
			wg.Go(func() {
				owner := "p" + string(rune('a'+p))
				for range 40 {
					got, err := b.db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: owner, Limit: 20, LeaseDuration: time.Minute})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					for _, c := range got {
						claimed[c.ID]++
					}
					mu.Unlock()
				}
			})
		}
		for range 2 {
			wg.Go(func() {
				var res bulkResult
				decode(t, b.do("POST", "/v1/requests/cancel", b.key, map[string]any{"filter": map[string]any{"deployment_id": "m1-a"}}), http.StatusOK, &res)
				mu.Lock()
				cancels = append(cancels, res)
				mu.Unlock()
			})
			wg.Go(func() {
				var res bulkResult
				decode(t, b.do("POST", "/v1/requests/retry", b.key, map[string]any{"ids": failed}), http.StatusOK, &res)
				mu.Lock()
				retries = append(retries, res)
				mu.Unlock()
			})
		}
		wg.Wait()
		var canceledByCalls, retriedByCalls int64
		for _, c := range cancels {
			canceledByCalls += c.Changed
		}
		for _, r := range retries {
			retriedByCalls += r.Changed
		}
		if retriedByCalls != n {
			t.Errorf("retried %d in all (%v), want each of %d exactly once", retriedByCalls, retries, n)
		}
		rows, err := b.db.Pool.Query(ctx, `SELECT id, state FROM async_requests WHERE organization_id = $1`, b.acme)
		if err != nil {
			t.Fatal(err)
		}
		states, err := pgxCollect(rows)
		if err != nil {
			t.Fatal(err)
		}
		var canceled int64
		for id, state := range states {
			if claimed[id] > 1 {
				t.Errorf("%s claimed %d times", id, claimed[id])
			}
			switch {
			case state == postgres.StateCanceled && claimed[id] > 0:
				t.Errorf("%s both canceled and claimed", id)
			case state == postgres.StateInProgress && claimed[id] != 1:
				t.Errorf("%s IN_PROGRESS without one claim", id)
			case state == postgres.StateCanceled:
				canceled++
			}
		}
		if canceled != canceledByCalls {
			t.Errorf("%d canceled rows, the calls report %d", canceled, canceledByCalls)
		}
	})
}

func pgxCollect(rows pgx.Rows) (map[requestid.ID]postgres.RequestState, error) {
	out := map[requestid.ID]postgres.RequestState{}
	var id requestid.ID
	var state postgres.RequestState
	_, err := pgx.ForEachRow(rows, []any{&id, &state}, func() error {
		out[id] = state
		return nil
	})
	return out, err
}
