// Package maintainer runs the sweeps that keep the queues moving when
// nobody claims: lost leases of requests and of webhook deliveries, queue
// deadlines (expiry), and retention (request rows, outputs with the inputs
// kept beside them, idempotency keys).
//
// One process at a time runs them, the leader: the holder of a Postgres
// session advisory lock (postgres.MaintainerLockKey) taken with
// pg_try_advisory_lock on a connection of its own. Every processor runs a
// Maintainer; the others try the lock again every interval, so when the
// leader stops or dies (the server releases the lock with its connection)
// another takes over within an interval. A leader whose connection died
// learns it at its next check, before its next sweep, so it may finish one
// sweep beside its successor: the sweeps are safe to run twice at once (they
// lock their rows and skip locked ones); the lock saves the work, not
// correctness.
//
// The leader sweeps every interval and also at the earliest queue deadline,
// so a request expires within milliseconds of its deadline, not a sweep
// later.
package maintainer

import (
	"cmp"
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/retry"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/worker"
)

const (
	// IntervalDefault is how often the leader sweeps and the others try to
	// lead.
	IntervalDefault = 5 * time.Second
	// batch is the row limit of one sweep statement; a sweep repeats it up
	// to rounds times when there is a backlog.
	batch  = 1000
	rounds = 10
)

// Options are what New needs.
type Options struct {
	DB *postgres.DB
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics may be nil.
	Metrics *telemetry.Metrics
	// Interval defaults to IntervalDefault.
	Interval time.Duration
	// Clock defaults to the system clock.
	Clock worker.Clock
}

// Maintainer runs the sweeps while it leads.
type Maintainer struct {
	db       *postgres.DB
	log      *slog.Logger
	metrics  *telemetry.Metrics
	interval time.Duration
	clock    worker.Clock
	leading  atomic.Bool
	// totals count every sweep's reclaimed and expired requests.
	totals struct{ reclaimed, expired, webhooks atomic.Int64 }
}

// New returns a Maintainer, applying the defaults to unset options.
func New(o Options) *Maintainer {
	return &Maintainer{
		db:       o.DB,
		log:      cmp.Or(o.Logger, slog.Default()),
		metrics:  o.Metrics,
		interval: cmp.Or(o.Interval, IntervalDefault),
		clock:    cmp.Or[worker.Clock](o.Clock, worker.SystemClock),
	}
}

// Leading reports whether m holds the leadership now.
func (m *Maintainer) Leading() bool { return m.leading.Load() }

// Counts says what sweeps did.
type Counts struct {
	// Reclaimed: requests of lost processors, counted as failed attempts.
	Reclaimed int
	// Expired: requests moved to EXPIRED.
	Expired int
	// WebhooksReclaimed: deliveries of lost deliverers made due again.
	WebhooksReclaimed int
	// Purged: what the retention sweep removed.
	Purged postgres.PurgeCounts
}

// Totals counts what m's sweeps did over its life (Purged is left zero).
func (m *Maintainer) Totals() Counts {
	return Counts{
		Reclaimed: int(m.totals.reclaimed.Load()), Expired: int(m.totals.expired.Load()),
		WebhooksReclaimed: int(m.totals.webhooks.Load()),
	}
}

// Run leads when it can, sweeping, until ctx is done.
func (m *Maintainer) Run(ctx context.Context) {
	for ctx.Err() == nil {
		lead, err := m.db.LeadershipTry(ctx, postgres.MaintainerLockKey)
		if err != nil && ctx.Err() == nil {
			m.log.Warn("maintainer: could not try for leadership", "error", err)
		}
		if lead != nil {
			m.lead(ctx, lead)
		}
		t := m.clock.NewTimer(m.interval)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C():
		}
	}
}

// lead sweeps until ctx is done or the leadership is lost, then releases it.
func (m *Maintainer) lead(ctx context.Context, lead *postgres.Leadership) {
	m.leading.Store(true)
	m.log.Info("maintainer: leading the sweeps")
	leadCtx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		m.leading.Store(false) // before the lock goes: never two leaders
		lead.Release(ctx)
	}()
	loop := worker.NewLoop(worker.LoopConfig{Poll: m.interval, Clock: m.clock})
	loop.Run(leadCtx, func(ctx context.Context) worker.Fetched {
		if err := lead.Check(ctx); err != nil {
			if ctx.Err() == nil {
				m.log.Warn("maintainer: leadership lost", "error", err)
			}
			cancel()
			return worker.Fetched{}
		}
		m.Sweep(ctx)
		wait, ok, err := m.db.RequestNextDeadline(ctx)
		if err != nil || !ok {
			return worker.Fetched{}
		}
		return worker.Fetched{Next: m.clock.Now().Add(wait)}
	})
}

// SweepOnce sweeps once if no other process leads, for a scheduled
// function, and reports whether it did.
func (m *Maintainer) SweepOnce(ctx context.Context) (Counts, bool) {
	lead, err := m.db.LeadershipTry(ctx, postgres.MaintainerLockKey)
	if err != nil || lead == nil {
		if err != nil && ctx.Err() == nil {
			m.log.Warn("maintainer: could not try for leadership", "error", err)
		}
		return Counts{}, false
	}
	m.leading.Store(true)
	defer func() {
		m.leading.Store(false)
		lead.Release(ctx)
	}()
	return m.Sweep(ctx), true
}

// Sweep runs every sweep once, in bounded batches, whether or not m leads
// (callers lead: Run and SweepOnce).
func (m *Maintainer) Sweep(ctx context.Context) Counts {
	var c Counts
	for range rounds {
		lost, err := m.db.RequestReclaimLost(ctx, postgres.RequestReclaimLostParams{Limit: batch, Retry: lostRetry})
		if err != nil {
			m.warn(ctx, "reclaim sweep failed", err)
			break
		}
		c.Reclaimed += len(lost)
		m.totals.reclaimed.Add(int64(len(lost)))
		recorded := make([]postgres.RecordedOutcome, len(lost))
		for i, l := range lost {
			recorded[i] = l.RecordedOutcome
			m.log.Warn("processor lost; attempt counted as failed", "request_id", l.ID.String(),
				"model_id", l.ModelID, "deployment_id", l.DeploymentID, "attempt", l.Attempt, "state", string(l.State))
			if m.metrics != nil {
				m.metrics.Attempts.WithLabelValues(postgres.CodeInternalServerError).Inc()
				if l.State.Final() {
					m.metrics.Completed.WithLabelValues(string(l.State)).Inc()
				}
			}
		}
		m.notify(ctx, postgres.NoticeOf(recorded))
		if len(lost) < batch {
			break
		}
	}
	for range rounds {
		expired, err := m.db.RequestExpireBatch(ctx, batch)
		if err != nil {
			m.warn(ctx, "expiry sweep failed", err)
			break
		}
		c.Expired += len(expired)
		m.totals.expired.Add(int64(len(expired)))
		recorded := make([]postgres.RecordedOutcome, len(expired))
		for i, e := range expired {
			recorded[i] = e.RecordedOutcome
			m.log.Info("request expired in the queue", "request_id", e.ID.String(), "model_id", e.ModelID,
				"deployment_id", e.DeploymentID, "attempt", e.Attempts)
			if m.metrics != nil {
				m.metrics.Completed.WithLabelValues(string(e.State)).Inc()
			}
		}
		m.notify(ctx, postgres.NoticeOf(recorded))
		if len(expired) < batch {
			break
		}
	}
	if n, err := m.db.WebhookDeliveryReclaimExpired(ctx); err != nil {
		m.warn(ctx, "webhook reclaim sweep failed", err)
	} else {
		c.WebhooksReclaimed = n
		m.totals.webhooks.Add(int64(n))
		if n > 0 {
			m.notify(ctx, postgres.Notice{Deliverers: true})
		}
	}
	for range rounds {
		p, err := m.db.RetentionPurge(ctx, batch)
		if err != nil {
			m.warn(ctx, "retention sweep failed", err)
			break
		}
		c.Purged.Requests += p.Requests
		c.Purged.Outputs += p.Outputs
		c.Purged.IdempotencyKeys += p.IdempotencyKeys
		if p.Requests < batch && p.Outputs < batch && p.IdempotencyKeys < batch {
			break
		}
	}
	return c
}

// lostRetry is the retry policy's decision for a lost attempt.
func lostRetry(l postgres.LostAttempt) (time.Duration, bool) {
	d := retry.Lost(retry.Attempt{Number: l.Attempt, MaxAttempts: l.MaxAttempts, InitialDelay: l.InitialDelay, MaxDelay: l.MaxDelay})
	return d.Delay, d.Again
}

func (m *Maintainer) notify(ctx context.Context, n postgres.Notice) {
	if err := m.db.Notify(ctx, n); err != nil && ctx.Err() == nil {
		m.log.Warn("notification failed; listeners will poll", "error", err)
	}
}

func (m *Maintainer) warn(ctx context.Context, msg string, err error) {
	if ctx.Err() == nil {
		m.log.Warn(msg, "error", err)
	}
}
