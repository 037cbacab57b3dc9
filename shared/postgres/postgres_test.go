package postgres_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type bundle struct {
	org    postgres.Organization
	deploy postgres.Deployment
}

func setup(t *testing.T) (*postgres.DB, bundle) {
	t.Helper()
	ctx := context.Background()
	pg := pgtest.New(t)
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

func insertParams(b bundle) postgres.RequestInsertParams {
	return postgres.RequestInsertParams{
		ID: requestid.New(), OrganizationID: b.org.ID, ModelID: "m1", DeploymentID: "d1",
		MaxTimeInQueue: 10 * time.Minute, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000,
		Input: []byte(`{"x":1}`),
	}
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("APIKey", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		key := postgres.NewAPIKey()
		if err := pg.APIKeyCreate(ctx, b.org.ID, key, "test"); err != nil {
			t.Fatal(err)
		}
		if err := pg.APIKeyCreate(ctx, b.org.ID, key, "test"); err != nil {
			t.Fatalf("second create of the same key: %v", err)
		}
		got, err := pg.APIKeyAuthenticate(ctx, key)
		if err != nil || got != b.org.ID {
			t.Fatalf("authenticate = %d, %v", got, err)
		}
		if _, err := pg.APIKeyAuthenticate(ctx, key+"x"); !errors.Is(err, postgres.ErrNotFound) {
			t.Fatalf("wrong key: %v", err)
		}
		var stored int
		if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE lookup_id = $1 OR key_hash = convert_to($1, 'UTF8') OR name = $1`, key).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		if stored != 0 {
			t.Fatal("key stored in clear")
		}
	})

	t.Run("DeploymentResolve", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		other, _ := pg.OrganizationEnsure(ctx, "other")
		d, err := pg.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: b.org.ID, ModelID: "m1", Kind: postgres.KindModel, Environment: "production"})
		if err != nil || d.ID != "d1" {
			t.Fatalf("resolve production = %+v, %v", d, err)
		}
		for name, target := range map[string]postgres.DeploymentTarget{
			"OtherOrg":   {OrganizationID: other.ID, ModelID: "m1", Kind: postgres.KindModel, Environment: "production"},
			"WrongKind":  {OrganizationID: b.org.ID, ModelID: "m1", Kind: postgres.KindChain, Environment: "production"},
			"UnknownEnv": {OrganizationID: b.org.ID, ModelID: "m1", Kind: postgres.KindModel, Environment: "staging"},
			"UnknownDep": {OrganizationID: b.org.ID, ModelID: "m1", Kind: postgres.KindModel, DeploymentID: "nope"},
		} {
			if _, err := pg.DeploymentResolve(ctx, target); !errors.Is(err, postgres.ErrNotFound) {
				t.Errorf("%s: err = %v, want ErrNotFound", name, err)
			}
		}
		// Promotion: a new deployment takes the environment.
		if err := pg.DeploymentCreate(ctx, b.org.ID, postgres.Deployment{ID: "d2", ModelID: "m1", URL: "http://x.invalid", Environments: []string{"production"}, MaxConcurrency: 1}); err != nil {
			t.Fatal(err)
		}
		d, _ = pg.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: b.org.ID, ModelID: "m1", Kind: postgres.KindModel, Environment: "production"})
		if d.ID != "d2" {
			t.Errorf("after promotion production = %s, want d2", d.ID)
		}
		if err := pg.DeploymentCreate(ctx, other.ID, postgres.Deployment{ID: "d3", ModelID: "m1", URL: "http://x.invalid", MaxConcurrency: 1}); !errors.Is(err, postgres.ErrNotFound) {
			t.Errorf("deployment on another org's model: %v", err)
		}
	})

	t.Run("WebhookSecretRotate", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		for _, s := range []string{"whsec_one", "whsec_two", "whsec_two"} {
			if err := pg.WebhookSecretRotate(ctx, b.org.ID, s, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		got, err := pg.WebhookSecretsActive(ctx, b.org.ID)
		if err != nil || len(got) != 2 || got[0] != "whsec_two" || got[1] != "whsec_one" {
			t.Fatalf("active = %v, %v", got, err)
		}
		if err := pg.WebhookSecretRotate(ctx, b.org.ID, "whsec_three", 0); err != nil {
			t.Fatal(err)
		}
		got, _ = pg.WebhookSecretsActive(ctx, b.org.ID)
		if len(got) != 2 || got[0] != "whsec_three" || got[1] != "whsec_one" {
			t.Fatalf("after rotation with no overlap, active = %v (whsec_one keeps its hour)", got)
		}
	})
}

func TestRequest(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("InsertGetCancel", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		p := insertParams(b)
		res, err := pg.RequestInsert(ctx, p)
		if err != nil || res.ID != p.ID || res.Replayed {
			t.Fatalf("insert = %+v, %v", res, err)
		}
		r, err := pg.RequestGetByID(ctx, b.org.ID, p.ID)
		if err != nil || r.State != postgres.StateQueued || r.WebhookState != postgres.WebhookNone || string(r.Input) != `{"x":1}` {
			t.Fatalf("get = %+v, %v", r, err)
		}
		if got := r.DeadlineAt.Sub(r.CreatedAt); got != 10*time.Minute {
			t.Errorf("deadline - created = %v", got)
		}
		other, _ := pg.OrganizationEnsure(ctx, "other")
		if _, err := pg.RequestGetByID(ctx, other.ID, p.ID); !errors.Is(err, postgres.ErrNotFound) {
			t.Errorf("other org get: %v", err)
		}
		if _, _, err := pg.RequestCancel(ctx, other.ID, p.ID); !errors.Is(err, postgres.ErrNotFound) {
			t.Errorf("other org cancel: %v", err)
		}
		r, canceled, err := pg.RequestCancel(ctx, b.org.ID, p.ID)
		if err != nil || !canceled || r.State != postgres.StateCanceled || r.WebhookState != postgres.WebhookCanceled || r.Input != nil {
			t.Fatalf("cancel = %+v, %v, %v", r, canceled, err)
		}
		_, canceled, err = pg.RequestCancel(ctx, b.org.ID, p.ID)
		if err != nil || canceled {
			t.Fatalf("second cancel = %v, %v", canceled, err)
		}
		c, err := pg.DeploymentQueueCounts(ctx, "d1")
		if err != nil || c.Queued != 0 || c.InProgress != 0 {
			t.Errorf("counts = %+v, %v", c, err)
		}
	})

	t.Run("IdempotentConcurrent", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		const n = 16
		var wg sync.WaitGroup
		results := make(chan error, n)
		ids := make(chan requestid.ID, n)
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := insertParams(b)
				p.IdempotencyKey, p.BodyHash = "k1", []byte("h1")
				res, err := pg.RequestInsert(ctx, p)
				results <- err
				if err == nil {
					ids <- res.ID
				}
			}()
		}
		wg.Wait()
		close(results)
		close(ids)
		for err := range results {
			if err != nil && !errors.Is(err, postgres.ErrIdempotencyInFlight) {
				t.Errorf("unexpected error %v", err)
			}
		}
		var first requestid.ID
		for id := range ids {
			if first.IsZero() {
				first = id
			} else if id != first {
				t.Errorf("two ids for one key: %s and %s", first, id)
			}
		}
		var rows int
		if err := pg.Pool.QueryRow(ctx, `SELECT count(*) FROM async_requests`).Scan(&rows); err != nil || rows != 1 {
			t.Fatalf("rows = %d, %v; want exactly 1", rows, err)
		}
		p := insertParams(b)
		p.IdempotencyKey, p.BodyHash = "k1", []byte("other")
		if _, err := pg.RequestInsert(ctx, p); !errors.Is(err, postgres.ErrIdempotencyMismatch) {
			t.Errorf("different body: %v", err)
		}
		p.BodyHash = []byte("h1")
		res, err := pg.RequestInsert(ctx, p)
		if err != nil || !res.Replayed || res.ID != first {
			t.Errorf("replay = %+v, %v", res, err)
		}
	})

	t.Run("CountActive", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		for range 3 {
			if _, err := pg.RequestInsert(ctx, insertParams(b)); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := pg.RequestCountActive(ctx, b.org.ID, 2); err != nil || n != 2 {
			t.Errorf("count with limit 2 = %d, %v", n, err)
		}
		if n, _ := pg.RequestCountActive(ctx, b.org.ID, 100); n != 3 {
			t.Errorf("count = %d", n)
		}
	})

	t.Run("QueuePosition", func(t *testing.T) {
		t.Parallel()
		pg, b := setup(t)
		if err := pg.DeploymentCreate(ctx, b.org.ID, postgres.Deployment{ID: "d2", ModelID: "m1", URL: "http://model.invalid", MaxConcurrency: 1}); err != nil {
			t.Fatal(err)
		}
		// Each request is queued and then given its place by hand.
		put := func(deployment, set string) postgres.Request {
			t.Helper()
			p := insertParams(b)
			p.DeploymentID = deployment
			if _, err := pg.RequestInsert(ctx, p); err != nil {
				t.Fatal(err)
			}
			if _, err := pg.Pool.Exec(ctx, `UPDATE async_requests SET `+set+` WHERE id = $1`, p.ID); err != nil {
				t.Fatal(err)
			}
			r, err := pg.RequestGetByID(ctx, b.org.ID, p.ID)
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		first := put("d1", `priority = 1, due_at = now() - interval '10 seconds'`)
		second := put("d1", `priority = 1, due_at = now() - interval '5 seconds'`)
		urgent := put("d1", `priority = 0, due_at = now() - interval '1 second'`)
		retrying := put("d1", `priority = 1, due_at = now() + interval '1 hour'`)
		put("d1", `priority = 0, due_at = now() + interval '30 minutes'`) // ahead of retrying only
		put("d1", `priority = 0, due_at = now() - interval '20 seconds', deadline_at = now()`)
		put("d1", `priority = 0, due_at = now() - interval '1 minute', state = 'IN_PROGRESS'`)
		put("d2", `priority = 0, due_at = now() - interval '1 minute'`)

		for _, tt := range []struct {
			name string
			r    postgres.Request
			want int64
		}{
			{"Urgent", urgent, 0},
			{"First", first, 1},
			{"Second", second, 2},
			{"WaitingForRetry", retrying, 4},
		} {
			if got, err := pg.RequestQueuePosition(ctx, tt.r); err != nil || got != tt.want {
				t.Errorf("%s: position %d, %v; want %d", tt.name, got, err, tt.want)
			}
		}

		// A long queue is counted up to the cap.
		if _, err := pg.Pool.Exec(ctx, `
			INSERT INTO async_requests (id, organization_id, model_id, is_chain, deployment_id, state,
				webhook_state, priority, due_at, deadline_at, max_attempts, initial_delay_ms, max_delay_ms,
				input, created_at, status_at)
			SELECT gen_random_uuid(), $1, 'm1', false, 'd2', 'QUEUED', 'NO_WEBHOOK_PROVIDED', 0,
				now() - interval '1 hour', now() + interval '1 hour', 3, 1000, 5000, '{}', now(), now()
			FROM generate_series(1, $2)`, b.org.ID, postgres.QueuePositionMax+5); err != nil {
			t.Fatal(err)
		}
		last := put("d2", `priority = 0`)
		if got, err := pg.RequestQueuePosition(ctx, last); err != nil || got != postgres.QueuePositionMax {
			t.Errorf("behind %d: position %d, %v; want the cap, %d", postgres.QueuePositionMax+6, got, err, postgres.QueuePositionMax)
		}
	})
}
