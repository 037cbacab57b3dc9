package submit_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

// statements is a pgx tracer that keeps the SQL of every statement sent.
type statements struct {
	mu   sync.Mutex
	sqls []string
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	s.sqls = append(s.sqls, d.SQL)
	s.mu.Unlock()
	return ctx
}
func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statements) take() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sqls := s.sqls
	s.sqls = nil
	return sqls
}

// tracedBundle is a submit handler on a pool whose statements are kept,
// with model m1 (production: m1-a, development: m1-b) of one organization.
type tracedBundle struct {
	db    *postgres.DB
	h     http.Handler
	clock *apitest.Clock
	key   string
	stmts *statements
}

func tracedSetup(t *testing.T) tracedBundle {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	stmts := &statements{}
	cfg.ConnConfig.Tracer = stmts
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db := &postgres.DB{Pool: pool, StatusRetention: postgres.StatusRetentionDefault, OutputRetention: postgres.OutputRetentionDefault}
	tenant := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}}, []postgres.Deployment{
		{ID: "m1-a", ModelID: "m1", Environments: []string{"production"}},
		{ID: "m1-b", ModelID: "m1", Environments: []string{"development"}},
	})
	clock := apitest.NewClock(time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC))
	h := submit.New(submit.Options{DB: db, Now: clock.Now})
	stmts.take()
	return tracedBundle{db: db, h: h, clock: clock, key: tenant.Key, stmts: stmts}
}

func (b tracedBundle) submit(path, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodPost, "http://api.example.com/models/m1"+path, strings.NewReader(body))
	r.Header.Set("Authorization", "Api-Key "+b.key)
	rec := httptest.NewRecorder()
	b.h.ServeHTTP(rec, r)
	return rec
}

func TestSubmitGroupCommit(t *testing.T) {
	t.Parallel()

	t.Run("ConcurrentSubmits", func(t *testing.T) {
		t.Parallel()
		b := tracedSetup(t)
		const n = 48
		ids := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ids[i] = created(t, b.submit("/production/async_predict", fmt.Sprintf(`{"model_input": %d}`, i)))
			}()
		}
		wg.Wait()
		ctx := context.Background()
		for i, id := range ids {
			var input string
			if err := b.db.Pool.QueryRow(ctx, `SELECT convert_from(input, 'UTF8') FROM async_requests WHERE id = $1::uuid`, id).Scan(&input); err != nil || input != fmt.Sprint(i) {
				t.Errorf("request %s: input %q, %v; want %d", id, input, err, i)
			}
		}
		// Every insert is one statement outside a transaction block: a
		// commit each, and never more inserts than submits.
		inserts := 0
		for _, sql := range b.stmts.take() {
			if strings.Contains(sql, "INSERT INTO async_requests") {
				inserts++
			}
			if strings.Contains(sql, "COMMIT") || strings.Contains(strings.ToLower(sql), "begin") {
				t.Errorf("a transaction block: %q", sql)
			}
		}
		if inserts == 0 || inserts > n {
			t.Errorf("%d insert statements for %d submits", inserts, n)
		}
		t.Logf("%d submits in %d insert statements", n, inserts)
	})

	t.Run("RoundTrips", func(t *testing.T) {
		t.Parallel()
		b := tracedSetup(t)
		// The first submit looks up the key, the active count and the
		// deployment; later ones within their caches send the insert and
		// the wake-up alone.
		created(t, b.submit("/production/async_predict", `{"model_input": 1}`))
		b.stmts.take()
		created(t, b.submit("/production/async_predict", `{"model_input": 2}`))
		sqls := b.stmts.take()
		if len(sqls) != 2 || !strings.Contains(sqls[0], "INSERT INTO async_requests") || !strings.Contains(sqls[1], "pg_notify") {
			t.Errorf("a warm submit sent %d statements, want the insert and the wake-up: %q", len(sqls), sqls)
		}
	})

	t.Run("DeploymentCache", func(t *testing.T) {
		t.Parallel()
		b := tracedSetup(t)
		ctx := context.Background()
		deployment := func(rec *httptest.ResponseRecorder) string {
			t.Helper()
			var d string
			if err := b.db.Pool.QueryRow(ctx, `SELECT deployment_id FROM async_requests WHERE id = $1::uuid`, created(t, rec)).Scan(&d); err != nil {
				t.Fatal(err)
			}
			return d
		}
		if d := deployment(b.submit("/production/async_predict", `{"model_input": 1}`)); d != "m1-a" {
			t.Fatalf("deployment %s", d)
		}
		if _, err := b.db.Pool.Exec(ctx, `UPDATE environments SET deployment_id = 'm1-b' WHERE name = 'production'`); err != nil {
			t.Fatal(err)
		}
		if d := deployment(b.submit("/production/async_predict", `{"model_input": 2}`)); d != "m1-a" {
			t.Errorf("within the cache's time, deployment %s, want the cached m1-a", d)
		}
		b.clock.Advance(submit.DeploymentCacheTTLDefault)
		if d := deployment(b.submit("/production/async_predict", `{"model_input": 3}`)); d != "m1-b" {
			t.Errorf("after %v, deployment %s, want the re-pointed m1-b", submit.DeploymentCacheTTLDefault, d)
		}
		// A deleted deployment is refused at once, cached or not.
		if _, err := b.db.Pool.Exec(ctx, `DELETE FROM deployments WHERE id = 'm1-b'`); err != nil {
			t.Fatal(err)
		}
		if rec := b.submit("/production/async_predict", `{"model_input": 4}`); rec.Code != http.StatusNotFound {
			t.Errorf("submit to a deleted deployment: %d %s", rec.Code, rec.Body)
		}
	})
}
