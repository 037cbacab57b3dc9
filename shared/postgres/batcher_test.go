package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// statement is one statement a traced pool sent.
type statement struct {
	sql string
	// inTx: the connection was inside a transaction block when it was sent.
	inTx bool
	at   time.Time
}

// recorder is a pgx tracer that records every statement and can hold the
// first insert into async_requests until released.
type recorder struct {
	mu    sync.Mutex
	stmts []statement
	// gate, when set, holds the first request insert: held is closed when
	// it arrives, and it runs once release is closed.
	gate          bool
	held, release chan struct{}
}

func newRecorder(gate bool) *recorder {
	return &recorder{gate: gate, held: make(chan struct{}), release: make(chan struct{})}
}

func (r *recorder) record(conn *pgx.Conn, sql string) {
	r.mu.Lock()
	r.stmts = append(r.stmts, statement{sql: sql, inTx: conn.PgConn().TxStatus() != 'I', at: time.Now()})
	hold := r.gate && isRequestInsert(sql)
	if hold {
		r.gate = false
	}
	r.mu.Unlock()
	if hold {
		close(r.held)
		<-r.release
	}
}

func (r *recorder) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	r.record(conn, d.SQL)
	return ctx
}
func (r *recorder) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (r *recorder) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (r *recorder) TraceBatchQuery(_ context.Context, conn *pgx.Conn, d pgx.TraceBatchQueryData) {
	r.record(conn, d.SQL)
}
func (r *recorder) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// reset forgets the statements recorded so far.
func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stmts = nil
}

func (r *recorder) statements() []statement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]statement(nil), r.stmts...)
}

// count counts the statements containing s.
func (r *recorder) count(s string) int {
	n := 0
	for _, st := range r.statements() {
		if strings.Contains(st.sql, s) {
			n++
		}
	}
	return n
}

func isRequestInsert(sql string) bool { return strings.Contains(sql, "INSERT INTO async_requests") }

// tracedSetup is setup with a pool whose statements rec records.
func tracedSetup(t *testing.T, rec *recorder) (*postgres.DB, bundle) {
	t.Helper()
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = rec
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	pg := &postgres.DB{Pool: pool, StatusRetention: postgres.StatusRetentionDefault, OutputRetention: postgres.OutputRetentionDefault}
	org, err := pg.OrganizationEnsure(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.ModelCreate(ctx, postgres.Model{ID: "m1", OrganizationID: org.ID, Kind: postgres.KindModel}); err != nil {
		t.Fatal(err)
	}
	d := postgres.Deployment{ID: "d1", ModelID: "m1", URL: "http://model.invalid", Environments: []string{"production"}, MaxConcurrency: 2}
	if err := pg.DeploymentCreate(ctx, org.ID, d); err != nil {
		t.Fatal(err)
	}
	return pg, bundle{org: org, deploy: d}
}

type insertAnswer struct {
	p   postgres.RequestInsertParams
	res postgres.RequestInsertResult
	err error
}

func TestRequestBatcher(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// held starts one Insert and waits until its statement is held by rec,
	// then starts the others and waits until they all wait for a batch, so
	// that the first batch has one row and the second all the others.
	held := func(t *testing.T, rec *recorder, b *postgres.RequestBatcher, ps []postgres.RequestInsertParams) []insertAnswer {
		t.Helper()
		answers := make([]insertAnswer, len(ps))
		var wg sync.WaitGroup
		start := func(i int) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := b.Insert(ctx, ps[i])
				answers[i] = insertAnswer{ps[i], res, err}
			}()
		}
		start(0)
		<-rec.held
		for i := 1; i < len(ps); i++ {
			start(i)
		}
		for postgres.BatcherQueued(b) < len(ps)-1 {
			time.Sleep(time.Millisecond)
		}
		close(rec.release)
		wg.Wait()
		return answers
	}

	t.Run("OneCommitPerBatch", func(t *testing.T) {
		t.Parallel()
		rec := newRecorder(true)
		pg, bu := tracedSetup(t, rec)
		rec.reset()
		b := postgres.NewRequestBatcher(pg, postgres.RequestBatcherOptions{MaxInFlight: 1})
		const n = 64
		ps := make([]postgres.RequestInsertParams, n)
		for i := range ps {
			ps[i] = insertParams(bu)
			ps[i].Input = fmt.Appendf(nil, `{"i":%d}`, i)
		}
		for _, a := range held(t, rec, b, ps) {
			if a.err != nil || a.res.ID != a.p.ID || a.res.Replayed {
				t.Fatalf("insert %s = %+v, %v", a.p.ID, a.res, a.err)
			}
			r, err := pg.RequestGetByID(ctx, bu.org.ID, a.p.ID)
			if err != nil || string(r.Input) != string(a.p.Input) || r.State != postgres.StateQueued {
				t.Fatalf("row %s = %+v, %v", a.p.ID, r, err)
			}
		}
		if got := b.Stats(); got != (postgres.RequestBatcherStats{Batches: 2, Rows: n}) {
			t.Errorf("stats = %+v, want 2 batches of %d rows", got, n)
		}
		// Each insert is a statement of its own outside any transaction
		// block: one commit each.
		var inserts int
		for _, st := range rec.statements() {
			if isRequestInsert(st.sql) {
				inserts++
				if st.inTx {
					t.Errorf("insert sent inside a transaction block: %q", st.sql)
				}
			}
		}
		if inserts != 2 || rec.count("COMMIT") != 0 || rec.count("begin") != 0 {
			t.Errorf("%d inserts, %d COMMITs, %d BEGINs; want 2 single-statement transactions", inserts, rec.count("COMMIT"), rec.count("begin"))
		}
	})

	t.Run("NotifyAfterCommit", func(t *testing.T) {
		t.Parallel()
		rec := newRecorder(false)
		pg, bu := tracedSetup(t, rec)
		conn, err := pg.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, "LISTEN "+postgres.WakeChannel); err != nil {
			t.Fatal(err)
		}
		b := postgres.NewRequestBatcher(pg, postgres.RequestBatcherOptions{})
		plain := insertParams(bu)
		keyed := insertParams(bu)
		keyed.IdempotencyKey, keyed.BodyHash = "k", []byte("h")
		for _, p := range []postgres.RequestInsertParams{plain, keyed} {
			if _, err := b.Insert(ctx, p); err != nil {
				t.Fatal(err)
			}
			wait, cancel := context.WithTimeout(ctx, 30*time.Second)
			_, err := conn.Conn().WaitForNotification(wait)
			cancel()
			if err != nil {
				t.Fatalf("no wake-up after an insert: %v", err)
			}
		}
		notifies := 0
		for _, st := range rec.statements() {
			if !strings.Contains(st.sql, "pg_notify") {
				continue
			}
			notifies++
			if st.inTx || isRequestInsert(st.sql) {
				t.Errorf("notify inside the insert's transaction: %q", st.sql)
			}
		}
		if notifies != 2 {
			t.Errorf("%d notifies for two batches", notifies)
		}
	})

	t.Run("IdempotencyKeyTwiceInABatch", func(t *testing.T) {
		t.Parallel()
		rec := newRecorder(true)
		pg, bu := tracedSetup(t, rec)
		b := postgres.NewRequestBatcher(pg, postgres.RequestBatcherOptions{MaxInFlight: 1})
		const n = 8
		ps := make([]postgres.RequestInsertParams, n)
		ps[0] = insertParams(bu) // no key, holds the first batch
		for i := 1; i < n; i++ {
			ps[i] = insertParams(bu)
			ps[i].IdempotencyKey, ps[i].BodyHash = "k", []byte("h")
		}
		answers := held(t, rec, b, ps)
		// They all wait in the queue together: one inserts, the others
		// replay its id as they would had they come later.
		var inserted requestid.ID
		replays := 0
		for _, a := range answers[1:] {
			switch {
			case a.err != nil:
				t.Errorf("insert = %v", a.err)
			case a.res.Replayed:
				replays++
			default:
				if !inserted.IsZero() {
					t.Errorf("two inserts for one key")
				}
				inserted = a.res.ID
			}
		}
		for _, a := range answers[1:] {
			if a.err == nil && a.res.ID != inserted {
				t.Errorf("answer %s, want %s", a.res.ID, inserted)
			}
		}
		if inserted.IsZero() || replays != n-2 {
			t.Errorf("inserted %s, %d replays; want one insert and %d replays", inserted, replays, n-2)
		}
		var rows int
		if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests`).Scan(&rows); err != nil || rows != 2 {
			t.Errorf("rows = %d, %v; want 2", rows, err)
		}
	})

	t.Run("LoneInsertNoLinger", func(t *testing.T) {
		t.Parallel()
		rec := newRecorder(false)
		pg, bu := tracedSetup(t, rec)
		b := postgres.NewRequestBatcher(pg, postgres.RequestBatcherOptions{})
		// The quickest of several lone inserts reaches the database well
		// within any linger worth having; load can slow some, not all.
		quickest := time.Hour
		for range 10 {
			before := len(rec.statements())
			start := time.Now()
			if _, err := b.Insert(ctx, insertParams(bu)); err != nil {
				t.Fatal(err)
			}
			for _, st := range rec.statements()[before:] {
				if isRequestInsert(st.sql) {
					quickest = min(quickest, st.at.Sub(start))
				}
			}
		}
		if quickest > 2*time.Millisecond {
			t.Errorf("a lone insert waited %v before its statement", quickest)
		}
		if got := b.Stats(); got.Batches != 10 {
			t.Errorf("stats = %+v, want a batch per lone insert", got)
		}
	})
}

func TestRequestInsertBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("FailingRowFailsAlone", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		taken, taken2 := insertParams(b), insertParams(b)
		taken.IdempotencyKey, taken.BodyHash = "taken", []byte("h1")
		taken2.IdempotencyKey, taken2.BodyHash = "taken2", []byte("h1")
		for _, p := range []postgres.RequestInsertParams{taken, taken2} {
			if _, err := pg.RequestInsert(ctx, p); err != nil {
				t.Fatal(err)
			}
		}
		ok1, ok2 := insertParams(b), insertParams(b)
		gone := insertParams(b)
		gone.DeploymentID = "deleted"
		mismatch := insertParams(b)
		mismatch.IdempotencyKey, mismatch.BodyHash = "taken", []byte("h2")
		replay := insertParams(b)
		replay.IdempotencyKey, replay.BodyHash = "taken2", []byte("h1")
		twice1, twice2 := insertParams(b), insertParams(b)
		twice1.IdempotencyKey, twice1.BodyHash = "twice", []byte("h")
		twice2.IdempotencyKey, twice2.BodyHash = "twice", []byte("h")
		out, err := pg.RequestInsertBatch(ctx, []postgres.RequestInsertParams{ok1, gone, mismatch, twice1, replay, twice2, ok2})
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range []struct {
			err      error
			id       requestid.ID
			replayed bool
		}{
			{nil, ok1.ID, false},
			{postgres.ErrNotFound, requestid.ID{}, false},
			{postgres.ErrIdempotencyMismatch, requestid.ID{}, false},
			{nil, twice1.ID, false},
			{nil, taken2.ID, true},
			{postgres.ErrIdempotencyInFlight, requestid.ID{}, false},
			{nil, ok2.ID, false},
		} {
			if !errors.Is(out[i].Err, want.err) || out[i].ID != want.id || out[i].Replayed != want.replayed {
				t.Errorf("row %d = %+v, want %+v", i, out[i], want)
			}
		}
		var rows int
		if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests`).Scan(&rows); err != nil || rows != 5 {
			t.Errorf("rows = %d, %v; want 5 (taken, taken2, ok1, twice1, ok2)", rows, err)
		}
		var keyFor requestid.ID
		if err := pg.Pool.QueryRow(ctx, `SELECT request_id FROM idempotency_keys WHERE key = 'twice'`).Scan(&keyFor); err != nil || keyFor != twice1.ID {
			t.Errorf("key twice stands for %s, %v; want %s", keyFor, err, twice1.ID)
		}
	})

	t.Run("StatementErrorFailsOneRow", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		ok1, bad, ok2 := insertParams(b), insertParams(b), insertParams(b)
		bad.Priority = 7 // past the table's CHECK: the statement fails
		out, err := pg.RequestInsertBatch(ctx, []postgres.RequestInsertParams{ok1, bad, ok2})
		if err != nil {
			t.Fatal(err)
		}
		if out[0].Err != nil || out[0].ID != ok1.ID || out[1].Err == nil || out[2].Err != nil || out[2].ID != ok2.ID {
			t.Errorf("outcomes = %+v", out)
		}
		var rows int
		if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests`).Scan(&rows); err != nil || rows != 2 {
			t.Errorf("rows = %d, %v; want 2", rows, err)
		}
	})
}
