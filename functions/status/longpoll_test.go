package status_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// queryCounter counts the queries of a pool.
type queryCounter struct{ n *atomic.Int64 }

func (q queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

type pollBundle struct {
	bundle
	h         http.Handler
	waiting   func() int
	listening func() bool
	queries   *atomic.Int64
	// poll sends GET /async_request/{id}?wait_seconds=wait with ctx and
	// answers on the channel.
	poll func(ctx context.Context, id, wait string) <-chan *httptest.ResponseRecorder
	// finish makes id SUCCEEDED and announces it, as the processor does.
	finish func(id string)
}

func setupPoll(t *testing.T, opts ...func(*status.Options)) pollBundle {
	t.Helper()
	b := setup(t)
	cfg := b.db.Pool.Config()
	var n atomic.Int64
	cfg.ConnConfig.Tracer = queryCounter{&n}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	o := status.Options{DB: &postgres.DB{Pool: pool, StatusRetention: b.db.StatusRetention, OutputRetention: b.db.OutputRetention}}
	for _, f := range opts {
		f(&o)
	}
	h, waiting, listening, stop := status.NewWithWaiters(o)
	t.Cleanup(stop)
	pb := pollBundle{bundle: b, h: apitest.Validated(t, h), waiting: waiting, listening: listening, queries: &n}
	pb.poll = func(ctx context.Context, id, wait string) <-chan *httptest.ResponseRecorder {
		r := httptest.NewRequestWithContext(ctx, "GET", "/async_request/"+id+"?wait_seconds="+wait, nil)
		r.Host = "api.example.com"
		r.Header.Set("Authorization", "Api-Key "+b.key)
		ch := make(chan *httptest.ResponseRecorder, 1)
		go func() {
			rec := httptest.NewRecorder()
			pb.h.ServeHTTP(rec, r)
			ch <- rec
		}()
		return ch
	}
	pb.finish = func(id string) {
		b.exec(id, `UPDATE async_requests SET state = 'SUCCEEDED', webhook_state = 'NO_WEBHOOK_PROVIDED', status_at = now(), finished_at = now() WHERE id = $1`)
		rid, _ := requestid.Parse(id)
		if err := b.db.NotifyFinished(context.Background(), []requestid.ID{rid}); err != nil {
			t.Fatal(err)
		}
	}
	return pb
}

// waitFor polls cond (a test's own check, not the handler's) until it
// holds, failing after a generous time.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func statusOf(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	s, _ := m["status"].(string)
	return s
}

func TestLongPoll(t *testing.T) {
	t.Parallel()

	t.Run("ReturnsOnCompletion", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		start := time.Now()
		answer := b.poll(context.Background(), id, "60")
		waitFor(t, "the long-poll to wait", func() bool { return b.waiting() == 1 })
		b.finish(id)
		select {
		case rec := <-answer:
			if got := statusOf(t, rec); got != "SUCCEEDED" {
				t.Errorf("status %s, want SUCCEEDED", got)
			}
			t.Logf("answered %v after start", time.Since(start))
		case <-time.After(50 * time.Second): // well before the 60 s deadline
			t.Fatal("no answer after the completion")
		}
	})

	t.Run("CancelWakes", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		answer := b.poll(context.Background(), id, "60")
		waitFor(t, "the long-poll to wait", func() bool { return b.waiting() == 1 })
		if m := decode(t, b.do("DELETE", "api.example.com", "/async_request/"+id, ""), 200); m["canceled"] != true {
			t.Fatalf("cancel %v", m)
		}
		select {
		case rec := <-answer:
			if got := statusOf(t, rec); got != "CANCELED" {
				t.Errorf("status %s, want CANCELED", got)
			}
		case <-time.After(50 * time.Second):
			t.Fatal("no answer after the cancel")
		}
	})

	t.Run("FinalAnswersAtOnce", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		b.finish(id)
		select {
		case rec := <-b.poll(context.Background(), id, "60"):
			if got := statusOf(t, rec); got != "SUCCEEDED" {
				t.Errorf("status %s", got)
			}
		case <-time.After(50 * time.Second):
			t.Fatal("a final request waited")
		}
	})

	t.Run("ReturnsAtDeadline", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		start := time.Now()
		rec := <-b.poll(context.Background(), id, "1")
		if elapsed := time.Since(start); elapsed < time.Second {
			t.Errorf("answered after %v, before its 1 s", elapsed)
		}
		if got := statusOf(t, rec); got != "QUEUED" {
			t.Errorf("status %s, want QUEUED", got)
		}
	})

	t.Run("CappedByContextDeadline", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		// As under Lambda: the invocation's deadline, less the margin,
		// bounds the wait.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		rec := <-b.poll(ctx, id, "60")
		if ctx.Err() != nil {
			t.Errorf("answered after the context's deadline")
		}
		if got := statusOf(t, rec); got != "QUEUED" {
			t.Errorf("status %s, want QUEUED", got)
		}
	})

	t.Run("NWaitersCostConstantQueries", func(t *testing.T) {
		t.Parallel()
		const n = 40
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		other := b.insert(b.acme, "m1", false, "m1-a", "")
		// A first long-poll opens the LISTEN connection, so the others
		// find it up.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.poll(ctx, other, "60")
		waitFor(t, "the listener", func() bool { return b.listening() && b.waiting() == 1 })
		var answers []<-chan *httptest.ResponseRecorder
		for range n {
			answers = append(answers, b.poll(context.Background(), id, "60"))
		}
		waitFor(t, "the long-polls to wait", func() bool { return b.waiting() == n+1 })
		waiting := b.queries.Load()
		// Waiting costs nothing.
		time.Sleep(2 * time.Second)
		if q := b.queries.Load() - waiting; q != 0 {
			t.Errorf("%d queries while %d long-polls waited", q, n)
		}
		b.finish(id)
		var wg sync.WaitGroup
		for _, a := range answers {
			wg.Go(func() {
				if got := statusOf(t, <-a); got != "SUCCEEDED" {
					t.Errorf("status %s", got)
				}
			})
		}
		wg.Wait()
		// One read per woken long-poll.
		if q := b.queries.Load() - waiting; q > n {
			t.Errorf("%d queries to answer %d long-polls, want at most one each", q, n)
		}
		t.Logf("%d long-polls: %d queries to register and read, %d to answer", n, waiting, b.queries.Load()-waiting)
	})

	t.Run("CapsWaiters", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t, func(o *status.Options) { o.MaxWaitersPerOrg = 2 })
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.poll(ctx, id, "60")
		b.poll(ctx, id, "60")
		waitFor(t, "the long-polls to wait", func() bool { return b.waiting() == 2 })
		rec := <-b.poll(ctx, id, "60")
		apitest.CheckError(t, rec, http.StatusTooManyRequests, "TOO_MANY_WAITERS", "")
		if rec.Header().Get("Retry-After") != "1" {
			t.Errorf("Retry-After %q", rec.Header().Get("Retry-After"))
		}
	})

	t.Run("BadWaitSeconds", func(t *testing.T) {
		t.Parallel()
		b := setupPoll(t)
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		for _, q := range []string{"0", "61", "-1", "1.5", "abc", "", "5&wait_seconds=6"} {
			apitest.CheckError(t, <-b.poll(context.Background(), id, q), http.StatusBadRequest, "INVALID_FIELD", "wait_seconds")
		}
	})
}
