package postgres_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// webhookFinish inserts a request with a webhook and finishes it in state
// with one outbox row due after dueIn, as the processor does.
func webhookFinish(t *testing.T, pg *postgres.DB, b bundle, state postgres.RequestState, dueIn time.Duration) requestid.ID {
	t.Helper()
	ctx := context.Background()
	p := insertParams(b)
	p.WebhookEndpoint = "https://hooks.example.com/x"
	if _, err := pg.RequestInsert(ctx, p); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Pool.Exec(ctx, `
		UPDATE async_requests SET state = $2, output = '{"y":2}', errors = '[{"code":"MODEL_UNAVAILABLE","message":"m"}]',
			input = NULL, status_at = now(), finished_at = now(), purge_at = now() + interval '1 hour'
		WHERE id = $1`, p.ID, string(state)); err != nil {
		t.Fatal(err)
	}
	webhookRedeliver(t, pg, p.ID, dueIn)
	return p.ID
}

// webhookRedeliver adds an outbox row, as the API's redelivery does.
func webhookRedeliver(t *testing.T, pg *postgres.DB, id requestid.ID, dueIn time.Duration) {
	t.Helper()
	if _, err := pg.Pool.Exec(context.Background(), `
		WITH r AS (UPDATE async_requests SET webhook_state = 'PENDING' WHERE id = $1 RETURNING id)
		INSERT INTO webhook_deliveries (request_id, state, due_at)
		SELECT id, 'PENDING', now() + make_interval(secs => $2) FROM r`, id, dueIn.Seconds()); err != nil {
		t.Fatal(err)
	}
}

func webhookClaim(t *testing.T, pg *postgres.DB, owner string, limit int) []postgres.WebhookDelivery {
	t.Helper()
	c, err := pg.WebhookDeliveryClaimBatch(context.Background(), postgres.WebhookDeliveryClaimParams{Owner: owner, Limit: limit, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return c.Deliveries
}

// webhookRecord records outcomes as owner in one statement and returns the
// ids recorded. Zero SentAt is now.
func webhookRecord(t *testing.T, pg *postgres.DB, owner string, outs ...postgres.WebhookOutcome) []int64 {
	t.Helper()
	for i := range outs {
		if outs[i].SentAt.IsZero() {
			outs[i].SentAt = time.Now()
		}
	}
	ids, err := pg.WebhookDeliveryRecordBatch(context.Background(), owner, outs)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func succeeded(id int64) postgres.WebhookOutcome {
	return postgres.WebhookOutcome{ID: id, Outcome: postgres.OutcomeSucceeded, HTTPStatus: 200}
}

func failed(id int64, reason string) postgres.WebhookOutcome {
	return postgres.WebhookOutcome{ID: id, Outcome: postgres.OutcomeFailed, Error: reason, HTTPStatus: 410}
}

func retried(id int64, delay time.Duration, reason string) postgres.WebhookOutcome {
	return postgres.WebhookOutcome{ID: id, Outcome: postgres.OutcomeRetry, Delay: delay, Error: reason, HTTPStatus: 500}
}

// historyRow is a row of webhook_delivery_attempts.
type historyRow struct {
	DeliveryID int64
	Outcome    string
	HTTPStatus *int
	DurationMS int
	Error      *string
}

func webhookHistory(t *testing.T, pg *postgres.DB, id requestid.ID) []historyRow {
	t.Helper()
	rows, err := pg.Pool.Query(context.Background(), `
		SELECT delivery_id, outcome, http_status, duration_ms, error
		FROM webhook_delivery_attempts WHERE request_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[historyRow])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestWebhookDelivery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("ClaimBatch", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		first := webhookFinish(t, pg, b, postgres.StateSucceeded, -2*time.Second)
		second := webhookFinish(t, pg, b, postgres.StateFailed, -time.Second)
		webhookFinish(t, pg, b, postgres.StateSucceeded, time.Hour) // not due

		got := webhookClaim(t, pg, "a", 1)
		if len(got) != 1 || got[0].RequestID != first {
			t.Fatalf("first claim = %+v, want the earliest due", got)
		}
		d := got[0]
		if d.Attempt != 1 || d.ModelID != "m1" || d.DeploymentID != "d1" || d.State != postgres.StateSucceeded ||
			d.IsChain || d.WebhookEndpoint != "https://hooks.example.com/x" || string(d.Output) != `{"y":2}` ||
			len(d.Errors) != 1 || d.Errors[0].Code != "MODEL_UNAVAILABLE" || d.OrganizationID != b.org.ID {
			t.Errorf("claimed = %+v", d)
		}
		got = webhookClaim(t, pg, "b", 10)
		if len(got) != 1 || got[0].RequestID != second {
			t.Fatalf("second claim = %+v, want only the other due row", got)
		}
		if got := webhookClaim(t, pg, "c", 10); len(got) != 0 {
			t.Fatalf("third claim = %+v, want nothing", got)
		}
		c, err := pg.WebhookDeliveryClaimBatch(ctx, postgres.WebhookDeliveryClaimParams{Owner: "c", Limit: 10, Lease: time.Minute})
		if err != nil || len(c.Deliveries) != 0 || !c.Pending || c.NextDue < 59*time.Minute || c.NextDue > time.Hour {
			t.Errorf("claim = %+v, %v; want nothing claimed and the next due in about an hour", c, err)
		}
	})

	t.Run("OnlyTheLeaseOwnerRecords", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		id := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		d := webhookClaim(t, pg, "a", 1)[0]
		if got := webhookRecord(t, pg, "b", succeeded(d.ID)); len(got) != 0 {
			t.Errorf("succeed by another owner recorded %v", got)
		}
		if got := webhookRecord(t, pg, "b", failed(d.ID, "x")); len(got) != 0 {
			t.Errorf("fail by another owner recorded %v", got)
		}
		if got := webhookRecord(t, pg, "b", retried(d.ID, 0, "x")); len(got) != 0 {
			t.Errorf("retry by another owner recorded %v", got)
		}
		if h := webhookHistory(t, pg, id); len(h) != 0 {
			t.Errorf("refused records left history %+v", h)
		}
		if r, _ := pg.RequestGetByID(ctx, b.org.ID, id); r.WebhookState != postgres.WebhookPending {
			t.Fatalf("webhook %s after refused records", r.WebhookState)
		}

		// The lease runs out; another deliverer takes the row over.
		if _, err := pg.Pool.Exec(ctx, `UPDATE webhook_deliveries SET lease_expires_at = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		if n, err := pg.WebhookDeliveryReclaimExpired(ctx); err != nil || n != 1 {
			t.Fatalf("reclaim = %d, %v", n, err)
		}
		again := webhookClaim(t, pg, "b", 1)
		if len(again) != 1 || again[0].Attempt != 2 {
			t.Fatalf("reclaimed claim = %+v, want attempt 2", again)
		}
		if got := webhookRecord(t, pg, "a", succeeded(d.ID)); len(got) != 0 {
			t.Error("the old owner recorded after losing its lease")
		}
		if got := webhookRecord(t, pg, "b", succeeded(d.ID)); len(got) != 1 {
			t.Fatalf("new owner succeed recorded %v", got)
		}
		r, _ := pg.RequestGetByID(ctx, b.org.ID, id)
		if r.WebhookState != postgres.WebhookSucceeded || r.OutputExpiresAt == nil ||
			r.OutputExpiresAt.Before(time.Now().Add(pg.OutputRetention-time.Minute)) {
			t.Errorf("request webhook %s, output_expires_at %v", r.WebhookState, r.OutputExpiresAt)
		}
	})

	t.Run("RetryAndRelease", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		d := webhookClaim(t, pg, "a", 1)[0]
		if got := webhookRecord(t, pg, "a", retried(d.ID, time.Hour, "500")); len(got) != 1 {
			t.Fatalf("retry recorded %v", got)
		}
		if c, err := pg.WebhookDeliveryClaimBatch(ctx, postgres.WebhookDeliveryClaimParams{Owner: "a", Limit: 1, Lease: time.Minute}); err != nil ||
			len(c.Deliveries) != 0 || !c.Pending || c.NextDue < 59*time.Minute || c.NextDue > time.Hour {
			t.Fatalf("claim = %+v, %v; want nothing claimed before the retry is due, in about an hour", c, err)
		}
		if _, err := pg.Pool.Exec(ctx, `UPDATE webhook_deliveries SET due_at = now()`); err != nil {
			t.Fatal(err)
		}
		d = webhookClaim(t, pg, "a", 1)[0]
		if d.Attempt != 2 {
			t.Fatalf("attempt = %d", d.Attempt)
		}
		if n, err := pg.WebhookDeliveryRelease(ctx, "other", []int64{d.ID}); err != nil || n != 0 {
			t.Errorf("release by another owner = %d, %v", n, err)
		}
		// A deliverer listens; WakeListen wakes it once when it connects.
		var woken atomic.Int64
		listenCtx, stopListen := context.WithCancel(ctx)
		defer stopListen()
		go pg.WakeListen(listenCtx, postgres.WebhookWakeChannel, func() { woken.Add(1) }, func(error) {})
		waitUntil := func(what string, cond func() bool) {
			t.Helper()
			for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("timed out waiting for %s", what)
				}
			}
		}
		waitUntil("the listener", func() bool { return woken.Load() == 1 })
		if n, err := pg.WebhookDeliveryRelease(ctx, "a", []int64{d.ID}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v", n, err)
		}
		waitUntil("the hand-back to wake the deliverer", func() bool { return woken.Load() == 2 })
		d = webhookClaim(t, pg, "b", 1)[0]
		if d.Attempt != 2 {
			t.Errorf("attempt after hand-back = %d, want 2 (the handed-back attempt not counted)", d.Attempt)
		}
	})

	t.Run("FailWhileRedeliveryPending", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		id := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		d := webhookClaim(t, pg, "a", 1)[0]
		webhookRedeliver(t, pg, id, time.Hour)
		if got := webhookRecord(t, pg, "a", failed(d.ID, "410")); len(got) != 1 {
			t.Fatalf("fail recorded %v", got)
		}
		r, _ := pg.RequestGetByID(ctx, b.org.ID, id)
		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookPending || r.OutputExpiresAt != nil {
			t.Errorf("request %s / webhook %s / output_expires_at %v; the pending redelivery still decides", r.State, r.WebhookState, r.OutputExpiresAt)
		}
		if _, err := pg.Pool.Exec(ctx, `UPDATE webhook_deliveries SET due_at = now()`); err != nil {
			t.Fatal(err)
		}
		d = webhookClaim(t, pg, "a", 1)[0]
		if got := webhookRecord(t, pg, "a", failed(d.ID, "410")); len(got) != 1 {
			t.Fatalf("fail recorded %v", got)
		}
		r, _ = pg.RequestGetByID(ctx, b.org.ID, id)
		if r.State != postgres.StateWebhookFailed || r.WebhookState != postgres.WebhookFailed || r.OutputExpiresAt == nil || r.StatusAt.Equal(*r.FinishedAt) {
			t.Errorf("request %s / webhook %s / output_expires_at %v / status_at %v", r.State, r.WebhookState, r.OutputExpiresAt, r.StatusAt)
		}
		var purgeIn float64
		if err := pg.Pool.QueryRow(ctx, `SELECT extract(epoch FROM purge_at - now()) FROM async_requests WHERE id = $1`, id).Scan(&purgeIn); err != nil {
			t.Fatal(err)
		}
		if purgeIn < (pg.StatusRetention - time.Minute).Seconds() {
			t.Errorf("purge in %.0f s, want the status retention to restart at WEBHOOK_FAILED", purgeIn)
		}
	})
	t.Run("BatchKeepsEveryTransition", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		ok := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		refused := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		refusedFailed := webhookFinish(t, pg, b, postgres.StateFailed, 0)
		again := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		lost := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		// Two deliveries of one request settle in the same batch: one
		// fails, the other is retried, so the request still waits.
		twice := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		webhookRedeliver(t, pg, twice, 0)
		claimed := map[requestid.ID][]int64{}
		for _, d := range webhookClaim(t, pg, "a", 100) {
			claimed[d.RequestID] = append(claimed[d.RequestID], d.ID)
		}
		if len(claimed) != 6 || len(claimed[twice]) != 2 {
			t.Fatalf("claimed %v", claimed)
		}
		// lost's lease passed to b.
		if _, err := pg.Pool.Exec(ctx, `UPDATE webhook_deliveries SET lease_owner = 'b' WHERE request_id = $1`, lost); err != nil {
			t.Fatal(err)
		}
		got := webhookRecord(t, pg, "a",
			succeeded(claimed[ok][0]),
			failed(claimed[refused][0], "receiver answered 410"),
			failed(claimed[refusedFailed][0], "receiver answered 410"),
			retried(claimed[again][0], 200*time.Millisecond, "receiver answered 503"),
			succeeded(claimed[lost][0]),
			failed(claimed[twice][0], "receiver answered 410"),
			retried(claimed[twice][1], time.Hour, "receiver answered 503"),
		)
		if len(got) != 6 {
			t.Errorf("recorded %v, want all but the lost lease's", got)
		}
		for _, tt := range []struct {
			id      requestid.ID
			state   postgres.RequestState
			webhook postgres.WebhookState
			history []string
		}{
			{ok, postgres.StateSucceeded, postgres.WebhookSucceeded, []string{"SUCCEEDED"}},
			{refused, postgres.StateWebhookFailed, postgres.WebhookFailed, []string{"FAILED"}},
			{refusedFailed, postgres.StateFailed, postgres.WebhookFailed, []string{"FAILED"}},
			{again, postgres.StateSucceeded, postgres.WebhookPending, []string{"RETRY"}},
			{lost, postgres.StateSucceeded, postgres.WebhookPending, nil},
			{twice, postgres.StateSucceeded, postgres.WebhookPending, []string{"FAILED", "RETRY"}},
		} {
			r, err := pg.RequestGetByID(ctx, b.org.ID, tt.id)
			if err != nil {
				t.Fatal(err)
			}
			if r.State != tt.state || r.WebhookState != tt.webhook {
				t.Errorf("request %s / webhook %s, want %s / %s", r.State, r.WebhookState, tt.state, tt.webhook)
			}
			if (r.OutputExpiresAt != nil) != (tt.webhook != postgres.WebhookPending) {
				t.Errorf("%s: output_expires_at %v while webhook %s", tt.state, r.OutputExpiresAt, r.WebhookState)
			}
			var outcomes []string
			for _, h := range webhookHistory(t, pg, tt.id) {
				outcomes = append(outcomes, h.Outcome)
				if (h.Error == nil) != (h.Outcome == "SUCCEEDED") || h.HTTPStatus == nil {
					t.Errorf("history row %+v", h)
				}
			}
			if fmt.Sprint(outcomes) != fmt.Sprint(tt.history) {
				t.Errorf("history %v, want %v", outcomes, tt.history)
			}
		}
		if c, err := pg.WebhookDeliveryClaimBatch(ctx, postgres.WebhookDeliveryClaimParams{Owner: "a", Limit: 10, Lease: time.Minute}); err != nil ||
			len(c.Deliveries) != 0 || !c.Pending || c.NextDue <= 0 || c.NextDue > 200*time.Millisecond {
			t.Errorf("claim = %+v, %v; want nothing claimed, the next due the 200 ms retry", c, err)
		}

		// History lives and dies with its request.
		if _, err := pg.Pool.Exec(ctx, `DELETE FROM async_requests WHERE id = $1`, refused); err != nil {
			t.Fatal(err)
		}
		if h := webhookHistory(t, pg, refused); len(h) != 0 {
			t.Errorf("history outlived its request: %+v", h)
		}
	})
}
