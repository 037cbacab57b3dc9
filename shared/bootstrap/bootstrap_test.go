package bootstrap_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/shared/bootstrap"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T, env map[string]string) *bootstrap.Process {
	t.Helper()
	ctx := context.Background()
	cfg, err := config.LoadFrom(ctx, envconfig.MapLookuper(env))
	if err != nil {
		t.Fatal(err)
	}
	p, err := bootstrap.Start(ctx, "bootstrap-test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func TestStart(t *testing.T) {
	t.Parallel()
	p := setup(t, map[string]string{
		"DATABASE_URL":     pgtest.URL(t),
		"DB_MAX_CONNS":     "3",
		"RETENTION_STATUS": "2h",
		"RETENTION_OUTPUT": "3m",
	})
	if err := p.DB.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := p.DB.Pool.Config().MaxConns; got != 3 {
		t.Errorf("pool max conns %d, want 3", got)
	}
	if p.DB.StatusRetention != 2*time.Hour || p.DB.OutputRetention != 3*time.Minute {
		t.Errorf("retention %s/%s, want 2h/3m", p.DB.StatusRetention, p.DB.OutputRetention)
	}
	p.Metrics.Completed.WithLabelValues("SUCCEEDED").Inc()
	families, err := p.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
	}
	for _, want := range []string{"async_requests_completed_total", "go_goroutines"} {
		if !names[want] {
			t.Errorf("registry has no %s", want)
		}
	}
}

func TestTickBudget(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		deadline time.Duration // from now; 0 for none
		budget   time.Duration
		min, max time.Duration
	}{
		{"NoDeadline", 0, 50 * time.Second, 50 * time.Second, 50 * time.Second},
		{"DeadlineFar", 15 * time.Minute, 50 * time.Second, 50 * time.Second, 50 * time.Second},
		{"DeadlineNear", 20 * time.Second, 50 * time.Second, 10 * time.Second, 20*time.Second - bootstrap.TickMarginDefault},
		{"DeadlineInsideMargin", bootstrap.TickMarginDefault / 2, 50 * time.Second, 0, 0},
		{"DeadlinePassed", -time.Second, 50 * time.Second, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			if tt.deadline != 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				defer cancel()
			}
			got := bootstrap.TickBudget(ctx, tt.budget)
			if got < tt.min || got > tt.max {
				t.Errorf("budget %s, want between %s and %s", got, tt.min, tt.max)
			}
		})
	}
}

func TestTick(t *testing.T) {
	t.Parallel()
	p := setup(t, map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/unused", "TICK_BUDGET": "7s"})
	type result struct{ Claimed int }
	type event struct{ Source string }

	t.Run("Result", func(t *testing.T) {
		t.Parallel()
		var gotBudget time.Duration
		h := bootstrap.Tick[event](p, func(ctx context.Context, budget time.Duration) (result, error) {
			gotBudget = budget
			return result{Claimed: 4}, nil
		})
		res, err := h(context.Background(), event{Source: "aws.events"})
		if err != nil || res.Claimed != 4 {
			t.Fatalf("got %+v, %v", res, err)
		}
		if gotBudget != 7*time.Second {
			t.Errorf("tick got budget %s, want TICK_BUDGET 7s", gotBudget)
		}
	})

	t.Run("Error", func(t *testing.T) {
		t.Parallel()
		boom := errors.New("boom")
		h := bootstrap.Tick[event](p, func(context.Context, time.Duration) (result, error) { return result{}, boom })
		if _, err := h(context.Background(), event{}); !errors.Is(err, boom) {
			t.Fatalf("got %v, want the tick's error", err)
		}
	})
}
