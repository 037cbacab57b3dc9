package postgres_test

import (
	"context"
	"testing"
	"time"

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
	batch, err := pg.WebhookDeliveryClaimBatch(context.Background(), postgres.WebhookDeliveryClaimParams{Owner: owner, Limit: limit, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return batch
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
			len(d.Errors) != 1 || d.Errors[0].Code != "MODEL_UNAVAILABLE" || d.FinishedAt.IsZero() || d.OrganizationID != b.org.ID {
			t.Errorf("claimed = %+v", d)
		}
		got = webhookClaim(t, pg, "b", 10)
		if len(got) != 1 || got[0].RequestID != second {
			t.Fatalf("second claim = %+v, want only the other due row", got)
		}
		if got := webhookClaim(t, pg, "c", 10); len(got) != 0 {
			t.Fatalf("third claim = %+v, want nothing", got)
		}
	})

	t.Run("OnlyTheLeaseOwnerRecords", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		id := webhookFinish(t, pg, b, postgres.StateSucceeded, 0)
		d := webhookClaim(t, pg, "a", 1)[0]
		if ok, err := pg.WebhookDeliverySucceed(ctx, d.ID, "b"); err != nil || ok {
			t.Errorf("succeed by another owner = %v, %v", ok, err)
		}
		if ok, err := pg.WebhookDeliveryFail(ctx, d.ID, "b", "x"); err != nil || ok {
			t.Errorf("fail by another owner = %v, %v", ok, err)
		}
		if ok, err := pg.WebhookDeliveryRetry(ctx, postgres.WebhookDeliveryRetryParams{ID: d.ID, Owner: "b"}); err != nil || ok {
			t.Errorf("retry by another owner = %v, %v", ok, err)
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
		if ok, _ := pg.WebhookDeliverySucceed(ctx, d.ID, "a"); ok {
			t.Error("the old owner recorded after losing its lease")
		}
		if ok, err := pg.WebhookDeliverySucceed(ctx, d.ID, "b"); err != nil || !ok {
			t.Fatalf("new owner succeed = %v, %v", ok, err)
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
		if ok, err := pg.WebhookDeliveryRetry(ctx, postgres.WebhookDeliveryRetryParams{ID: d.ID, Owner: "a", Delay: time.Hour, LastError: "500"}); err != nil || !ok {
			t.Fatalf("retry = %v, %v", ok, err)
		}
		if got := webhookClaim(t, pg, "a", 1); len(got) != 0 {
			t.Fatal("claimed a retry before it was due")
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
		if n, err := pg.WebhookDeliveryRelease(ctx, "a", []int64{d.ID}); err != nil || n != 1 {
			t.Fatalf("release = %d, %v", n, err)
		}
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
		if ok, err := pg.WebhookDeliveryFail(ctx, d.ID, "a", "410"); err != nil || !ok {
			t.Fatalf("fail = %v, %v", ok, err)
		}
		r, _ := pg.RequestGetByID(ctx, b.org.ID, id)
		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookPending || r.OutputExpiresAt != nil {
			t.Errorf("request %s / webhook %s / output_expires_at %v; the pending redelivery still decides", r.State, r.WebhookState, r.OutputExpiresAt)
		}
		if _, err := pg.Pool.Exec(ctx, `UPDATE webhook_deliveries SET due_at = now()`); err != nil {
			t.Fatal(err)
		}
		d = webhookClaim(t, pg, "a", 1)[0]
		if ok, err := pg.WebhookDeliveryFail(ctx, d.ID, "a", "410"); err != nil || !ok {
			t.Fatalf("fail = %v, %v", ok, err)
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
}
