package deliverwebhook_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/deliverwebhook"
	"github.com/openasync/asyncrequest/functions/processtick"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/worker"
)

// historyRow is a row of webhook_delivery_attempts.
type historyRow struct {
	DeliveryID int64
	SentAt     time.Time
	DurationMS int
	HTTPStatus *int
	Outcome    string
	Error      *string
}

func (f *fixture) history(t *testing.T, id requestid.ID) []historyRow {
	t.Helper()
	rows, err := f.db.Pool.Query(context.Background(), `
		SELECT delivery_id, sent_at, duration_ms, http_status, outcome, error
		FROM webhook_delivery_attempts WHERE request_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []historyRow
	for rows.Next() {
		var h historyRow
		if err := rows.Scan(&h.DeliveryID, &h.SentAt, &h.DurationMS, &h.HTTPStatus, &h.Outcome, &h.Error); err != nil {
			t.Fatal(err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLoop(t *testing.T) {
	t.Parallel()

	// A retry scheduled after a short delay goes out although no poll and
	// no wake-up would find it: the deliverer sleeps until it is due.
	t.Run("RetryAtItsDueTime", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
		id := f.finish(t, finished{endpoint: rc.srv.URL, output: `{"a":1}`})
		o := f.options(t)
		o.PollInterval = time.Hour
		o.Config.Schedule = []time.Duration{0, 300 * time.Millisecond}
		run(t, deliverwebhook.New(o))
		d := f.waitDelivery(t, id, "the retry to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
		hits := rc.got()
		if d.Attempts != 2 || len(hits) != 2 {
			t.Fatalf("delivery %+v after %d webhooks, want 2 attempts", d, len(hits))
		}
		if gap := hits[1].at.Sub(hits[0].at); gap < 300*time.Millisecond {
			t.Errorf("retry sent %v after the first attempt, before its due time", gap)
		}
		verifyAt(t, f.secret, hits[1])

		// Each attempt left one history row, written with its outcome.
		h := f.history(t, id)
		if len(h) != 2 || h[0].Outcome != "RETRY" || h[1].Outcome != "SUCCEEDED" {
			t.Fatalf("history %+v, want RETRY then SUCCEEDED", h)
		}
		if h[0].HTTPStatus == nil || *h[0].HTTPStatus != 503 || h[0].Error == nil || h[1].HTTPStatus == nil || *h[1].HTTPStatus != 200 || h[1].Error != nil {
			t.Errorf("history %+v", h)
		}
		for i, row := range h {
			if !row.SentAt.Equal(payloadTime(t, hits[i].body)) {
				t.Errorf("history sent_at %v, the webhook's time %v", row.SentAt, payloadTime(t, hits[i].body))
			}
			if row.DurationMS < 0 || row.DurationMS > int(waitTimeout/time.Millisecond) {
				t.Errorf("duration_ms %d", row.DurationMS)
			}
		}
	})

	// With the clock in the test's hands: after a retry is scheduled an
	// hour out, the loop's timer is set for that hour, not for the poll a
	// day out, and firing it sends the retry.
	t.Run("SleepsUntilTheDueTime", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		rc := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
			if n == 0 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		})
		id := f.finish(t, finished{endpoint: rc.srv.URL})
		clock := worker.NewManualClock(time.Now())
		base := clock.Now()
		o := f.options(t)
		o.Clock = clock
		o.PollInterval = 24 * time.Hour
		o.Config.Schedule = []time.Duration{0, time.Hour}
		run(t, deliverwebhook.New(o))
		f.waitDelivery(t, id, "the first attempt's retry", func(d delivery) bool { return d.State == postgres.DeliveryPending && d.Attempts == 1 })

		// Short sleeps come and go (a claim that found nothing due); wait
		// for the long one.
		var at time.Time
		waitFor(t, "the loop to sleep", func() bool {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			at = clock.WaitTimer(ctx)
			return at.Sub(base) > time.Minute
		})
		if at.Sub(base) > time.Hour+time.Second {
			t.Fatalf("the loop sleeps until %v after the start, want the retry's due time, an hour", at.Sub(base))
		}
		// The hour passes, for the database too.
		if _, err := f.db.Pool.Exec(context.Background(), `UPDATE webhook_deliveries SET due_at = now() WHERE request_id = $1`, id); err != nil {
			t.Fatal(err)
		}
		clock.Advance(time.Hour + time.Second)
		f.waitDelivery(t, id, "the retry", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
	})

	// Outcomes that arrive together are written together.
	t.Run("OutcomesBatched", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		const n = 20
		var mu sync.Mutex
		arrived := 0
		all := make(chan struct{})
		rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			arrived++
			if arrived == n {
				close(all)
			}
			mu.Unlock()
			select { // answer all at once
			case <-all:
			case <-r.Context().Done():
			}
		})
		ids := make([]requestid.ID, n)
		for i := range ids {
			ids[i] = f.finish(t, finished{endpoint: rc.srv.URL})
		}
		o := f.options(t)
		o.Config.Concurrency = n
		d := deliverwebhook.New(o)
		run(t, d)
		for _, id := range ids {
			f.waitDelivery(t, id, "delivery to succeed", func(d delivery) bool { return d.State == postgres.DeliverySucceeded })
			if h := f.history(t, id); len(h) != 1 || h[0].Outcome != "SUCCEEDED" {
				t.Errorf("history %+v", h)
			}
		}
		s := deliverwebhook.StatementStats(d)
		if s.Written != n || s.Writes >= n {
			t.Errorf("%d outcomes in %d statements; want %d in fewer", s.Written, s.Writes, n)
		}
		t.Logf("%d outcomes in %d statements, %d claimed in %d claims", s.Written, s.Writes, s.Claimed, s.Claims)
	})

	// On a stop, the deliverer of a process goes on until the processor
	// beside it has recorded its last outcomes, and sends their webhooks.
	t.Run("ShutdownDeliversWhatTheProcessorFinishes", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		started := make(chan struct{})
		release := make(chan struct{})
		var once sync.Once
		model := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			once.Do(func() { close(started) })
			select {
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = w.Write([]byte(`{"done":true}`))
		}))
		t.Cleanup(model.Close)
		if _, err := f.db.Pool.Exec(context.Background(), `UPDATE deployments SET url = $1 WHERE id = 'd1'`, model.URL); err != nil {
			t.Fatal(err)
		}
		rc := newReceiver(t, status(http.StatusOK))
		id := requestid.New()
		if _, err := f.db.RequestInsert(context.Background(), postgres.RequestInsertParams{
			ID: id, OrganizationID: f.org.ID, ModelID: "m1", DeploymentID: "d1", WebhookEndpoint: rc.srv.URL,
			MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 1, InitialDelayMS: 1000, MaxDelayMS: 5000, Input: []byte(`{}`),
		}); err != nil {
			t.Fatal(err)
		}

		proc := processtick.New(processtick.Options{DB: f.db, Logger: f.options(t).Logger,
			Config: config.Processor{PollInterval: 20 * time.Millisecond, ShutdownGrace: waitTimeout}})
		procDone := make(chan struct{})
		o := f.options(t)
		o.Upstream = procDone
		o.ShutdownGrace = waitTimeout
		d := deliverwebhook.New(o)
		ctx, stop := context.WithCancel(context.Background())
		defer stop()
		go func() {
			defer close(procDone)
			_ = proc.Run(ctx)
		}()
		delivererDone := make(chan error, 1)
		go func() { delivererDone <- d.Run(ctx) }()

		select {
		case <-started:
		case <-time.After(waitTimeout):
			t.Fatal("the model was never called")
		}
		stop() // SIGTERM while the model works
		close(release)
		if err := <-delivererDone; err != nil {
			t.Fatalf("Run: %v", err)
		}
		<-procDone
		if rc.count() != 1 {
			t.Fatalf("receiver got %d webhooks before the process stopped, want 1", rc.count())
		}
		if del := f.delivery(t, id); del.State != postgres.DeliverySucceeded {
			t.Errorf("delivery %+v, want SUCCEEDED", del)
		}
		if r := f.request(t, id); r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookSucceeded {
			t.Errorf("request %s / webhook %s, want SUCCEEDED / SUCCEEDED", r.State, r.WebhookState)
		}
	})
}
