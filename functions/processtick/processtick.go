// Package processtick is the processor: it claims due requests from
// Postgres, calls the model for each, and records the outcome (success,
// retry with backoff, back-pressure wait, failure), as SPEC §4 and §5 say.
//
// The same Processor runs as a scheduled function (Tick: one bounded run per
// invocation) and as a long-running loop (Run: until SIGTERM, then a
// graceful stop). Either way it runs on the shared loop (shared/worker):
// it claims when woken by LISTEN/NOTIFY, when slots free up and at the
// earliest due time of the waiting requests, and polls as a safety net;
// it renews the leases of the requests it works on; and it runs a
// maintainer (shared/maintainer), which sweeps lost leases, queue deadlines
// and retention whenever this process holds the maintainers' lock.
// Whether and when a request runs again is the retry policy's
// (shared/retry).
package processtick

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/maintainer"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/retry"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/worker"
)

// Defaults applied by New to a zero Config field; they match shared/config.
const (
	ModelTimeoutDefault      = 3600 * time.Second
	ConcurrencyDefault       = 256
	LeaseDurationDefault     = 30 * time.Second
	PollIntervalDefault      = time.Second
	ShutdownGraceDefault     = 25 * time.Second
	BackpressureDelayDefault = retry.BackpressureDelayDefault
	// BackpressureMinDelayDefault is the floor on every back-pressure wait.
	BackpressureMinDelayDefault = retry.BackpressureMinDefault
	// SweepIntervalDefault is how often the maintainer, when this processor
	// leads it, reclaims lost leases, expires requests past their queue
	// deadline (and at the earliest deadline besides) and purges retained
	// data.
	SweepIntervalDefault = maintainer.IntervalDefault
	// QueueDepthIntervalDefault is how often Run refreshes the queue-depth
	// gauge.
	QueueDepthIntervalDefault = 5 * time.Second
)

const (
	// MaxOutputBytes caps a model answer; a larger one fails the request.
	MaxOutputBytes = 10 << 20
	// handBackMargin is the time a Tick keeps, before its context's
	// deadline, to hand unfinished requests back.
	handBackMargin = 2 * time.Second
	// finalWriteTimeout bounds the writes made after a stop: the last
	// outcomes and the hand-back.
	finalWriteTimeout = 5 * time.Second
)

// Options are what New needs.
type Options struct {
	DB     *postgres.DB
	Config config.Processor
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics may be nil: then nothing is measured.
	Metrics *telemetry.Metrics
	// Client calls the models. The default has no overall timeout (the
	// per-attempt timeout is Config.ModelTimeout), keeps up to
	// Config.Concurrency idle connections per host and follows no
	// redirects: a 3xx is an answer like any other.
	Client *http.Client
	// ID names this processor as the owner of its leases. Default: the host
	// name and a random suffix.
	ID string
	// SweepInterval defaults to SweepIntervalDefault.
	SweepInterval time.Duration
	// TracerProvider makes the attempt spans; nil means the global one.
	TracerProvider trace.TracerProvider
	// Clock defaults to the system clock; tests drive due times with a
	// worker.ManualClock.
	Clock worker.Clock
}

// Processor claims and processes requests. Run and Tick may be called one
// at a time; a Processor is reusable across Lambda invocations.
type Processor struct {
	db         *postgres.DB
	cfg        config.Processor
	log        *slog.Logger
	metrics    *telemetry.Metrics
	client     *http.Client
	id         string
	maintainer *maintainer.Maintainer
	tracer     trace.Tracer
	policy     retry.Policy
	clock      worker.Clock
	// noDueTimes leaves the claims to wake-ups and the poll (benchmarks'
	// baseline).
	noDueTimes bool
	// claimBatch and completeBatch cap the requests of one claim and one
	// completion statement; completeBatchBytes caps the outputs of one
	// completion statement.
	claimBatch, completeBatch, completeBatchBytes int
	// stats counts claim and completion statements and their rows, and
	// keeps the most output bytes one completion statement carried.
	stats struct{ claims, claimed, writes, written, writeBytesMax atomic.Int64 }

	depthMu    sync.Mutex
	depthSeen  map[[2]string]bool // queue-depth series set so far
	pausedSeen map[string]bool    // paused-deployment series set so far
}

// New returns a Processor, applying the defaults to unset options.
func New(o Options) *Processor {
	cfg := o.Config
	cfg.ModelTimeout = cmp.Or(cfg.ModelTimeout, ModelTimeoutDefault)
	cfg.Concurrency = cmp.Or(cfg.Concurrency, ConcurrencyDefault)
	cfg.LeaseDuration = cmp.Or(cfg.LeaseDuration, LeaseDurationDefault)
	cfg.PollInterval = cmp.Or(cfg.PollInterval, PollIntervalDefault)
	cfg.ShutdownGrace = cmp.Or(cfg.ShutdownGrace, ShutdownGraceDefault)
	cfg.BackpressureDelay = cmp.Or(cfg.BackpressureDelay, BackpressureDelayDefault)
	cfg.BackpressureMinDelay = cmp.Or(cfg.BackpressureMinDelay, BackpressureMinDelayDefault)
	client := o.Client
	if client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns = 0
		tr.MaxIdleConnsPerHost = cfg.Concurrency
		client = &http.Client{
			Transport:     tr,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	log := cmp.Or(o.Logger, slog.Default())
	return &Processor{
		db:      o.DB,
		cfg:     cfg,
		log:     log,
		metrics: o.Metrics,
		client:  client,
		id:      cmp.Or(o.ID, defaultID()),
		maintainer: maintainer.New(maintainer.Options{DB: o.DB, Logger: log, Metrics: o.Metrics,
			Interval: cmp.Or(o.SweepInterval, SweepIntervalDefault), Clock: o.Clock}),
		tracer:             tp.Tracer("github.com/openasync/asyncrequest/functions/processtick"),
		policy:             retry.Policy{BackpressureDelay: cfg.BackpressureDelay, BackpressureMin: cfg.BackpressureMinDelay},
		clock:              cmp.Or[worker.Clock](o.Clock, worker.SystemClock),
		claimBatch:         claimBatchMax,
		completeBatch:      completeBatchMax,
		completeBatchBytes: completeBatchBytesMax,
	}
}

func defaultID() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%s", cmp.Or(host, "processor"), hex.EncodeToString(b))
}

// ID returns the name this processor holds its leases under.
func (p *Processor) ID() string { return p.id }

// TickResult counts what one Tick (or Run) did.
type TickResult struct {
	// Claimed is the number of attempts started.
	Claimed int `json:"claimed"`
	// Recorded is the number of attempt outcomes written, hand-backs
	// included.
	Recorded int `json:"recorded"`
	// HandedBack is the number of unfinished requests returned to QUEUED
	// with the attempt not counted, because the run stopped.
	HandedBack int `json:"handed_back"`
	// Reclaimed is the number of other processors' lost requests recovered.
	Reclaimed int `json:"reclaimed"`
	// Expired is the number of requests moved to EXPIRED.
	Expired int `json:"expired"`
}

// Tick is one bounded run, for a scheduled function: it sweeps, then claims
// and processes requests until budget has passed (or ctx is done), waking on
// notifications in between; then it stops claiming and waits for the
// attempts in flight. If ctx is done first (or within a short margin of its
// deadline), unfinished requests are handed back to QUEUED, their attempt
// not counted. Give ctx the invocation's deadline and a budget well inside
// it.
func (p *Processor) Tick(ctx context.Context, budget time.Duration) (TickResult, error) {
	claimUntil := time.Now().Add(budget)
	abortAt := ctx.Done()
	if deadline, ok := ctx.Deadline(); ok {
		claimUntil = minTime(claimUntil, deadline.Add(-handBackMargin))
		abortCtx, cancel := context.WithDeadline(ctx, deadline.Add(-handBackMargin))
		defer cancel()
		abortAt = abortCtx.Done()
	}
	claimCtx, cancel := context.WithDeadline(ctx, claimUntil)
	defer cancel()
	return p.run(claimCtx, func() <-chan struct{} { return abortAt }, false)
}

// Run processes requests until ctx is canceled, then stops gracefully: it
// claims nothing more, lets the attempts in flight finish within
// Config.ShutdownGrace, and hands the unfinished ones back to QUEUED with
// the attempt not counted. Database errors along the way are logged and
// retried, not returned: it returns nil after a graceful stop.
func (p *Processor) Run(ctx context.Context) error {
	_, _ = p.run(ctx, func() <-chan struct{} {
		graceOver := make(chan struct{})
		time.AfterFunc(p.cfg.ShutdownGrace, func() { close(graceOver) })
		return graceOver
	}, true)
	return nil
}

// RefreshQueueDepth sets the queue-depth gauge from the database: one series
// per deployment and state (QUEUED, IN_PROGRESS) with requests in it; the
// series of a deployment and state that emptied are removed. It does nothing
// without metrics.
func (p *Processor) RefreshQueueDepth(ctx context.Context) error {
	if p.metrics == nil {
		return nil
	}
	depths, err := p.db.QueueDepthList(ctx)
	if err != nil {
		return err
	}
	p.depthMu.Lock()
	defer p.depthMu.Unlock()
	seen := map[[2]string]bool{}
	for _, d := range depths {
		seen[[2]string{string(d.State), d.DeploymentID}] = true
		p.metrics.QueueDepth.WithLabelValues(string(d.State), d.DeploymentID).Set(float64(d.Count))
	}
	for series := range p.depthSeen {
		if !seen[series] {
			p.metrics.QueueDepth.DeleteLabelValues(series[0], series[1])
		}
	}
	p.depthSeen = seen
	paused, err := p.db.DeploymentPausedList(ctx)
	if err != nil {
		return err
	}
	pausedNow := map[string]bool{}
	for _, id := range paused {
		pausedNow[id] = true
		p.metrics.DeploymentPaused.WithLabelValues(id).Set(1)
	}
	for id := range p.pausedSeen {
		if !pausedNow[id] {
			p.metrics.DeploymentPaused.DeleteLabelValues(id)
		}
	}
	p.pausedSeen = pausedNow
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
