// Package deliverwebhook sends the webhooks of finished requests (SPEC §6)
// from the webhook outbox, and records each delivery's outcome.
//
// The outbox is the webhook_deliveries table: the processor inserts a
// PENDING row in the same transaction that moves a request to SUCCEEDED,
// FAILED or EXPIRED, and the API inserts another on redelivery. A Deliverer
// claims due rows in batches under a lease, POSTs the signed payload to the
// request's webhook_endpoint through the SSRF-safe client, and records
// success, a retry on the configured schedule, or failure. A row whose
// deliverer died is made due again by the maintainer's sweep
// (shared/maintainer) once its lease runs out, and sent again with the same
// webhook-id, data, errors and status and a fresh time: delivery is at least
// once, and receivers deduplicate on webhook-id.
//
// The outcomes of many deliveries are written in one statement, each with
// its row of delivery history. Deliverers wake on NOTIFY
// (postgres.WebhookWakeChannel) and sleep until the earliest pending
// delivery comes due, with a poll as a safety net. Tick serves a scheduled
// function for a bounded time; Run loops in a long-running process until its
// context ends.
package deliverwebhook

import (
	"cmp"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/safehttp"
	"github.com/openasync/asyncrequest/shared/telemetry"
	"github.com/openasync/asyncrequest/shared/worker"
)

const (
	// PollIntervalDefault is how often a deliverer looks for due webhooks
	// when no wake-up arrives; retries that come due are found this way.
	PollIntervalDefault = time.Second
	// LeaseMarginDefault is added to the per-attempt timeout to make a
	// claim's lease: time to sign, record the outcome and absorb clock and
	// database delays. A lease never needs renewing, since an attempt
	// cannot outlast the timeout.
	LeaseMarginDefault = 30 * time.Second
	// ShutdownGraceDefault is how long Run lets in-flight deliveries finish
	// after its context ends before handing them back.
	ShutdownGraceDefault = 10 * time.Second
	// ConcurrencyDefault is how many webhooks one deliverer sends at once
	// when the configuration says nothing.
	ConcurrencyDefault = 64
	// secretsTTL is how long an organization's active secrets are cached,
	// so a burst of webhooks for one organization costs one query; a
	// rotation is picked up within it.
	secretsTTL = 5 * time.Second
	// recordTimeout bounds recording an outcome, which runs even while the
	// deliverer is stopping.
	recordTimeout = 10 * time.Second
	// minClaimGap is the shortest sleep between claims that found less
	// than they could take.
	minClaimGap = time.Millisecond
	// claimBatchMax and outcomeBatchMax cap the rows of one claim and one
	// outcome statement.
	claimBatchMax   = 1000
	outcomeBatchMax = 1000
)

// UserAgent is sent with every webhook.
const UserAgent = "asyncrequest-webhook/1"

// tracerName names the tracer of the delivery spans.
const tracerName = "github.com/openasync/asyncrequest/functions/deliverwebhook"

// Options configure a Deliverer. DB and Config are required.
type Options struct {
	DB *postgres.DB
	// Config is the webhook configuration: timeout, schedule, headers, URL
	// policy, concurrency. Zero fields take the config package's defaults.
	Config config.Webhook
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Metrics, when set, counts deliveries by outcome and times them.
	Metrics *telemetry.Metrics
	// Client sends the webhooks. Nil means safehttp.NewClient with the
	// policy of Config (AllowHTTP, AllowPrivate) and Config.Timeout, keeping
	// up to Config.Concurrency idle connections per host. Whatever the
	// client, redirects are never followed.
	Client *http.Client
	// TracerProvider makes the delivery spans; nil means the global one.
	TracerProvider trace.TracerProvider
	// ID names this deliverer as the owner of its leases; default the host
	// name and a random suffix.
	ID string
	// Now is the clock for webhook-timestamp and Retry-After dates; default
	// time.Now. Due times are the database's clock.
	Now func() time.Time
	// Jitter returns a value in [-1, 1] that moves each retry delay by up to
	// JitterFraction (see NextDelay); default uniformly random. It is called
	// from concurrent deliveries.
	Jitter func() float64
	// Clock times the claim loop's sleeps (until the next due delivery, or
	// the poll); default the system clock. Tests drive it by hand.
	Clock worker.Clock
	// PollInterval defaults to PollIntervalDefault.
	PollInterval time.Duration
	// Lease defaults to Config.Timeout + LeaseMarginDefault. A lease shorter
	// than an attempt lets another deliverer send the same webhook again.
	Lease time.Duration
	// ShutdownGrace defaults to ShutdownGraceDefault.
	ShutdownGrace time.Duration
	// Upstream, when set, is closed once the producer of this process's
	// webhooks (the processor loop beside it) has stopped and recorded its
	// last outcomes. On shutdown Run then goes on claiming until Upstream is
	// closed, within ShutdownGrace, so the webhooks of requests that finish
	// during the processor's grace are delivered, not left PENDING.
	Upstream <-chan struct{}
}

// Deliverer sends due webhooks. It is safe for one Tick or Run at a time.
type Deliverer struct {
	db       *postgres.DB
	cfg      config.Webhook
	log      *slog.Logger
	metrics  *telemetry.Metrics
	client   *http.Client
	tracer   trace.Tracer
	id       string
	now      func() time.Time
	clock    worker.Clock
	jitter   func() float64
	poll     time.Duration
	lease    time.Duration
	grace    time.Duration
	secrets  secretCache
	schedule []time.Duration
	upstream <-chan struct{}
	// claimBatch and outcomeBatch cap the rows of one claim and of one
	// outcome statement; dueTimer makes the claim loop sleep until the next
	// delivery comes due rather than until the poll.
	claimBatch, outcomeBatch int
	dueTimer                 bool
	// stats counts claim and outcome statements and their rows.
	stats struct{ claims, claimed, writes, written atomic.Int64 }
}

// New returns a Deliverer.
func New(o Options) *Deliverer {
	cfg := o.Config
	cfg.Timeout = cmp.Or(cfg.Timeout, safehttp.TimeoutDefault)
	cfg.Concurrency = cmp.Or(cfg.Concurrency, ConcurrencyDefault)
	if len(cfg.Schedule) == 0 {
		cfg.Schedule = ScheduleDefault
	}
	client := o.Client
	if client == nil {
		client = safehttp.NewClient(safehttp.Policy{AllowHTTP: cfg.AllowHTTP, AllowPrivate: cfg.AllowPrivate}, cfg.Timeout)
		if tr, ok := client.Transport.(*http.Transport); ok {
			// Keep a connection per concurrent delivery: a busy receiver
			// then costs no new connection per webhook.
			tr.MaxIdleConnsPerHost = cfg.Concurrency
			tr.MaxIdleConns = max(tr.MaxIdleConns, cfg.Concurrency)
		}
	} else {
		c := *client
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		client = &c
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	d := &Deliverer{
		db:           o.DB,
		cfg:          cfg,
		log:          cmp.Or(o.Logger, slog.Default()),
		metrics:      o.Metrics,
		client:       client,
		tracer:       tp.Tracer(tracerName),
		id:           cmp.Or(o.ID, defaultID()),
		now:          o.Now,
		clock:        cmp.Or[worker.Clock](o.Clock, worker.SystemClock),
		jitter:       o.Jitter,
		poll:         cmp.Or(o.PollInterval, PollIntervalDefault),
		lease:        cmp.Or(o.Lease, cfg.Timeout+LeaseMarginDefault),
		grace:        cmp.Or(o.ShutdownGrace, ShutdownGraceDefault),
		schedule:     cfg.Schedule,
		upstream:     o.Upstream,
		claimBatch:   claimBatchMax,
		outcomeBatch: outcomeBatchMax,
		dueTimer:     true,
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.jitter == nil {
		d.jitter = func() float64 { return rand.Float64()*2 - 1 }
	}
	d.secrets = secretCache{db: o.DB, entries: map[int64]secretEntry{}}
	return d
}

// defaultID is the host name and a random suffix: unique per process, and
// readable in the lease_owner column.
func defaultID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = crand.Read(b)
	return cmp.Or(host, "deliverer") + "-" + hex.EncodeToString(b)
}

// TickResult counts what one Tick did.
type TickResult struct {
	// Claimed is how many deliveries were attempted.
	Claimed int `json:"claimed"`
	// Succeeded, Retried and Failed count the attempts' outcomes.
	Succeeded int `json:"succeeded"`
	Retried   int `json:"retried"`
	Failed    int `json:"failed"`
	// HandedBack counts deliveries released unfinished when the tick's
	// context ended.
	HandedBack int `json:"handed_back"`
	// Lost counts outcomes that could not be recorded because the lease
	// had passed to another deliverer (or the database was unreachable);
	// those webhooks are sent again.
	Lost int `json:"lost"`
}

// counters is TickResult, updated by concurrent deliveries.
type counters struct {
	claimed, succeeded, retried, failed, handedBack, lost atomic.Int64
}

func (c *counters) result() TickResult {
	return TickResult{
		Claimed: int(c.claimed.Load()), Succeeded: int(c.succeeded.Load()), Retried: int(c.retried.Load()),
		Failed: int(c.failed.Load()), HandedBack: int(c.handedBack.Load()), Lost: int(c.lost.Load()),
	}
}

// Tick delivers due webhooks for budget, for a function run on a schedule:
// it claims what is due, listens for wake-ups and sleeps until the next
// delivery comes due (or the poll) until budget has passed, then lets the
// attempts under way finish (each is bounded by the per-attempt timeout), so
// it returns within budget plus one attempt. If ctx ends first, unfinished
// deliveries are handed back. It returns an error when the database fails a
// claim, after finishing the attempts under way.
func (d *Deliverer) Tick(ctx context.Context, budget time.Duration) (TickResult, error) {
	claimCtx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	return d.serve(claimCtx, ctx, nil, true)
}

// Run delivers webhooks until ctx ends, for a long-running process. It then
// stops claiming (with Options.Upstream, only once the upstream has stopped
// and what is due has been claimed), lets attempts under way finish, and
// hands the rest back for another deliverer; all of that within the
// shutdown grace from the moment ctx ends. Database errors are logged and
// retried; Run returns nil once stopped.
func (d *Deliverer) Run(ctx context.Context) error {
	grace, cancelGrace := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelGrace()
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(d.grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancelGrace()
		case <-grace.Done():
		}
	})
	defer stop()
	if d.upstream == nil {
		_, err := d.serve(ctx, grace, nil, false)
		return err
	}
	lastCall := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-grace.Done():
			return
		}
		select {
		case <-d.upstream:
			close(lastCall)
		case <-grace.Done():
		}
	}()
	_, err := d.serve(grace, grace, lastCall, false)
	return err
}

// session is the state of one Tick or Run.
type session struct {
	d         *Deliverer
	c         counters
	loop      *worker.Loop
	completer *worker.Completer[outcome]
	workCtx   context.Context
	// lastCall is closed once the upstream has stopped; stopFetch ends the
	// fetching then, once a claim finds nothing more due.
	lastCall  <-chan struct{}
	stopFetch context.CancelFunc

	mu      sync.Mutex
	sending int  // claimed, attempt under way
	held    int  // claimed, outcome not yet written or handed back
	full    bool // the last fetch was limited by free slots: wake the loop when one frees

	deliveries sync.WaitGroup
	claimErr   error // the last claim's error; only the fetch loop touches it
}

// outcome is an attempt's outcome on its way to the database.
type outcome struct {
	postgres.WebhookOutcome
	log *slog.Logger
}

// serve claims and dispatches deliveries until claimCtx ends, or, once
// lastCall is closed, until a claim finds nothing more due; it then waits
// for the deliveries under way, which run under workCtx, and for the
// completer to write their outcomes. With stopOnError a failed claim ends
// it; otherwise it is logged and retried at the next poll.
func (d *Deliverer) serve(claimCtx, workCtx context.Context, lastCall <-chan struct{}, stopOnError bool) (TickResult, error) {
	fetchCtx, stopFetch := context.WithCancel(claimCtx)
	defer stopFetch()
	s := &session{
		d:         d,
		loop:      worker.NewLoop(worker.LoopConfig{Poll: d.poll, Clock: d.clock}),
		workCtx:   workCtx,
		lastCall:  lastCall,
		stopFetch: stopFetch,
	}
	s.completer = worker.NewCompleter(worker.CompleterConfig[outcome]{
		Write:    s.write,
		MaxBatch: d.outcomeBatch,
		OnError: func(err error, batch []outcome) {
			d.log.Warn("recording webhook outcomes failed; retrying", "error", err, "count", len(batch))
		},
	})
	// Outcomes are written through the drain, and for a while after the
	// deliveries have stopped; those still unwritten then are sent again
	// when their lease runs out.
	bg, stopBg := context.WithCancel(context.WithoutCancel(workCtx))
	defer stopBg()
	completerDone := make(chan struct{})
	go func() {
		defer close(completerDone)
		s.completer.Run(bg)
	}()

	var helpers sync.WaitGroup
	helpers.Go(func() {
		d.db.WakeListen(fetchCtx, postgres.WebhookWakeChannel, s.loop.Wake, func(err error) {
			d.log.Warn("listen for webhook wake-ups; polling meanwhile", "error", err)
		})
	})
	if lastCall != nil {
		helpers.Go(func() {
			select {
			case <-lastCall:
				s.loop.Wake()
			case <-fetchCtx.Done():
			}
		})
	}

	var serveErr error
	s.loop.Run(fetchCtx, func(ctx context.Context) worker.Fetched {
		f := s.fetch(ctx)
		if s.claimErr != nil && stopOnError {
			serveErr = s.claimErr
			stopFetch()
		}
		return f
	})
	stopFetch()
	s.deliveries.Wait()
	s.completer.Close()
	select {
	case <-completerDone:
	case <-time.After(recordTimeout):
		d.log.Warn("could not record the last webhook outcomes in time; they are sent again when their lease runs out")
	}
	stopBg()
	<-completerDone
	for _, o := range s.completer.Pending() {
		s.c.lost.Add(1)
		o.log.Error("webhook outcome not recorded; the webhook will be sent again when its lease runs out")
	}
	helpers.Wait()
	return s.c.result(), serveErr
}

// fetch claims as many due deliveries as there are free slots, and reports
// whether the claim was full (claim again at once) and, when it was not, when
// the earliest pending delivery comes due, so that the loop sleeps until
// then at most. Between claims the loop waits for a wake-up, a freed slot,
// that due time or the poll.
func (s *session) fetch(ctx context.Context) worker.Fetched {
	d := s.d
	s.claimErr = nil
	s.mu.Lock()
	free := min(d.cfg.Concurrency-s.sending, d.cfg.Concurrency+d.outcomeBatch-s.held)
	s.full = free <= 0
	s.mu.Unlock()
	if free <= 0 {
		return worker.Fetched{} // a freed slot wakes the loop
	}
	limit := min(free, d.claimBatch)
	claim, err := d.db.WebhookDeliveryClaimBatch(ctx, postgres.WebhookDeliveryClaimParams{
		Owner: d.id, Limit: limit, Lease: d.lease,
	})
	batch := claim.Deliveries
	d.stats.claims.Add(1)
	d.stats.claimed.Add(int64(len(batch)))
	if err != nil {
		if ctx.Err() == nil {
			s.claimErr = err
			d.log.Error("claim webhook deliveries", "error", err)
		}
		return worker.Fetched{}
	}
	s.c.claimed.Add(int64(len(batch)))
	s.mu.Lock()
	s.sending += len(batch)
	s.held += len(batch)
	s.full = len(batch) == free
	s.mu.Unlock()
	for _, del := range batch {
		s.deliveries.Go(func() { s.deliver(s.workCtx, del) })
	}
	if len(batch) == limit {
		return worker.Fetched{More: limit < free}
	}
	select {
	case <-s.lastCall: // nil (never) without an upstream
		s.stopFetch() // the upstream has stopped and nothing more is due
		return worker.Fetched{}
	default:
	}
	if d.dueTimer && claim.Pending {
		// A millisecond late rather than early: a timer that fires before
		// the due time claims nothing and sleeps again. A delivery that came
		// due during the claim (or that another deliverer's claim holds
		// locked) is looked for again after minClaimGap.
		wait := max(claim.NextDue.Truncate(time.Millisecond)+time.Millisecond, minClaimGap)
		return worker.Fetched{Next: d.clock.Now().Add(wait)}
	}
	return worker.Fetched{}
}

// record queues an outcome for the completer.
func (s *session) record(o outcome) {
	if !s.completer.Add(o) { // never: the completer closes after the deliveries
		s.c.lost.Add(1)
		s.done(1)
	}
}

// sent frees the sending slot of an attempt whose answer is in: the next
// webhook goes out while the outcome waits for its write.
func (s *session) sent() {
	s.mu.Lock()
	s.sending--
	wake := s.full
	s.mu.Unlock()
	if wake {
		s.loop.Wake()
	}
}

// done lets go of n claimed rows whose outcomes were written or handed back.
// At most Concurrency plus one outcome statement's rows are held, so a slow
// database slows the claims.
func (s *session) done(n int) {
	s.mu.Lock()
	s.held -= n
	wake := s.full
	s.mu.Unlock()
	if wake {
		s.loop.Wake()
	}
}

// write records one batch of outcomes in one statement, and tells the loop
// when the retries among them come due.
func (s *session) write(ctx context.Context, batch []outcome) error {
	d := s.d
	ctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	outs := make([]postgres.WebhookOutcome, len(batch))
	for i, o := range batch {
		outs[i] = o.WebhookOutcome
	}
	written := d.clock.Now()
	ids, err := d.db.WebhookDeliveryRecordBatch(ctx, d.id, outs)
	if err != nil {
		return err
	}
	d.stats.writes.Add(1)
	d.stats.written.Add(int64(len(batch)))
	recorded := make(map[int64]bool, len(ids))
	for _, id := range ids {
		recorded[id] = true
	}
	for _, o := range batch {
		switch {
		case !recorded[o.ID]:
			s.c.lost.Add(1)
			o.log.Warn("webhook outcome not recorded: the lease passed to another deliverer")
		case o.Outcome == postgres.OutcomeRetry && d.dueTimer:
			s.loop.DueAt(written.Add(o.Delay))
		}
	}
	s.done(len(batch))
	return nil
}

// secretCache holds organizations' active secrets for secretsTTL, by the
// monotonic clock.
type secretCache struct {
	db      *postgres.DB
	mu      sync.Mutex
	entries map[int64]secretEntry
}

type secretEntry struct {
	secrets []string
	fetched time.Time
}

// get returns the organization's active secrets, from the cache when fresh.
func (c *secretCache) get(ctx context.Context, orgID int64) ([]string, error) {
	now := time.Now()
	c.mu.Lock()
	e, ok := c.entries[orgID]
	c.mu.Unlock()
	if ok && now.Sub(e.fetched) < secretsTTL {
		return e.secrets, nil
	}
	secrets, err := c.db.WebhookSecretsActive(ctx, orgID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	for id, old := range c.entries { // keep the map from growing without bound
		if now.Sub(old.fetched) >= secretsTTL {
			delete(c.entries, id)
		}
	}
	c.entries[orgID] = secretEntry{secrets: secrets, fetched: now}
	c.mu.Unlock()
	return secrets, nil
}

// errNoSecret is recorded when an organization has no webhook secret: an
// unsigned webhook cannot be told from a forged one, so none is sent.
var errNoSecret = errors.New("organization has no webhook secret; create one to receive webhooks")
