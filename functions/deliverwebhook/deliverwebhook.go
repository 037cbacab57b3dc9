// Package deliverwebhook sends the webhooks of finished requests (SPEC §6)
// from the webhook outbox, and records each delivery's outcome.
//
// The outbox is the webhook_deliveries table: the processor inserts a
// PENDING row in the same transaction that moves a request to SUCCEEDED,
// FAILED or EXPIRED, and the API inserts another on redelivery. A Deliverer
// claims due rows in batches under a lease, POSTs the signed payload to the
// request's webhook_endpoint through the SSRF-safe client, and records
// success, a retry on the configured schedule, or failure. A row whose
// deliverer died is reclaimed when its lease runs out and sent again with the
// same webhook-id and body: delivery is at least once, and receivers
// deduplicate on webhook-id.
//
// Deliverers wake on NOTIFY (postgres.WebhookWakeChannel), with a poll as a
// safety net. Tick serves a scheduled function for a bounded time; Run loops
// in a long-running process until its context ends.
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
	// policy of Config (AllowHTTP, AllowPrivate) and Config.Timeout. Whatever
	// the client, redirects are never followed.
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
	// PollInterval defaults to PollIntervalDefault.
	PollInterval time.Duration
	// Lease defaults to Config.Timeout + LeaseMarginDefault. A lease shorter
	// than an attempt lets another deliverer send the same webhook again.
	Lease time.Duration
	// ShutdownGrace defaults to ShutdownGraceDefault.
	ShutdownGrace time.Duration
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
	jitter   func() float64
	poll     time.Duration
	lease    time.Duration
	grace    time.Duration
	secrets  secretCache
	schedule []time.Duration
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
		db:       o.DB,
		cfg:      cfg,
		log:      cmp.Or(o.Logger, slog.Default()),
		metrics:  o.Metrics,
		client:   client,
		tracer:   tp.Tracer(tracerName),
		id:       cmp.Or(o.ID, defaultID()),
		now:      o.Now,
		jitter:   o.Jitter,
		poll:     cmp.Or(o.PollInterval, PollIntervalDefault),
		lease:    cmp.Or(o.Lease, cfg.Timeout+LeaseMarginDefault),
		grace:    cmp.Or(o.ShutdownGrace, ShutdownGraceDefault),
		schedule: cfg.Schedule,
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
	// Reclaimed counts deliveries of dead deliverers made due again.
	Reclaimed int `json:"reclaimed"`
	// Lost counts outcomes that could not be recorded because the lease
	// had passed to another deliverer (or the database was unreachable);
	// those webhooks are sent again.
	Lost int `json:"lost"`
}

// counters is TickResult, updated by concurrent deliveries.
type counters struct {
	claimed, succeeded, retried, failed, handedBack, reclaimed, lost atomic.Int64
}

func (c *counters) result() TickResult {
	return TickResult{
		Claimed: int(c.claimed.Load()), Succeeded: int(c.succeeded.Load()), Retried: int(c.retried.Load()),
		Failed: int(c.failed.Load()), HandedBack: int(c.handedBack.Load()), Reclaimed: int(c.reclaimed.Load()),
		Lost: int(c.lost.Load()),
	}
}

// Tick delivers due webhooks for budget, for a function run on a schedule:
// it claims what is due, listens for wake-ups and polls until budget has
// passed, then lets the attempts under way finish (each is bounded by the
// per-attempt timeout), so it returns within budget plus one attempt. If ctx
// ends first, unfinished deliveries are handed back. It returns an error
// when the database fails a claim, after finishing the attempts under way.
func (d *Deliverer) Tick(ctx context.Context, budget time.Duration) (TickResult, error) {
	claimCtx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	return d.serve(claimCtx, ctx, true)
}

// Run delivers webhooks until ctx ends, for a long-running process. It then
// claims nothing new, lets attempts under way finish for the shutdown grace,
// and hands the rest back for another deliverer. Database errors are logged
// and retried; Run returns nil once stopped.
func (d *Deliverer) Run(ctx context.Context) error {
	workCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(d.grace)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-workCtx.Done():
		}
	})
	defer stop()
	_, err := d.serve(ctx, workCtx, false)
	return err
}

// serve claims and dispatches deliveries until claimCtx ends, then waits for
// the deliveries under way, which run under workCtx. With stopOnError a
// failed claim ends it; otherwise it is logged and retried at the next poll.
func (d *Deliverer) serve(claimCtx, workCtx context.Context, stopOnError bool) (TickResult, error) {
	var c counters
	wake := make(chan struct{}, 1)
	freed := make(chan struct{}, 1)
	slots := make(chan struct{}, d.cfg.Concurrency)
	var wg sync.WaitGroup

	listenCtx, stopListen := context.WithCancel(claimCtx)
	var listenDone sync.WaitGroup
	listenDone.Go(func() { d.listen(listenCtx, wake) })

	poll := time.NewTimer(0)
	defer poll.Stop()
	var serveErr error
	full := false // the last claim took every free slot: look again when one frees
	for {
		select {
		case <-claimCtx.Done():
		case <-wake:
		case <-poll.C:
		case <-freedIf(full, freed):
		}
		if claimCtx.Err() != nil {
			break
		}
		poll.Reset(d.poll)

		if n, err := d.db.WebhookDeliveryReclaimExpired(claimCtx); err != nil {
			if claimCtx.Err() != nil {
				break
			}
			d.log.Warn("reclaim webhook deliveries", "error", err)
		} else if n > 0 {
			c.reclaimed.Add(int64(n))
			d.log.Info("reclaimed webhook deliveries whose lease ran out", "count", n)
		}

		free := cap(slots) - len(slots)
		full = free == 0
		if free == 0 {
			continue
		}
		batch, err := d.db.WebhookDeliveryClaimBatch(claimCtx, postgres.WebhookDeliveryClaimParams{
			Owner: d.id, Limit: free, Lease: d.lease,
		})
		if err != nil {
			if claimCtx.Err() != nil {
				break
			}
			if stopOnError {
				serveErr = err
				break
			}
			d.log.Error("claim webhook deliveries", "error", err)
			continue
		}
		full = len(batch) == free
		c.claimed.Add(int64(len(batch)))
		for _, del := range batch {
			slots <- struct{}{}
			wg.Go(func() {
				defer func() {
					<-slots
					select {
					case freed <- struct{}{}:
					default:
					}
				}()
				d.deliver(workCtx, del, &c)
			})
		}
	}
	stopListen()
	wg.Wait()
	listenDone.Wait()
	return c.result(), serveErr
}

// freedIf returns freed when the deliverer is waiting for a slot, and a nil
// channel (never ready) otherwise, so that a finished delivery triggers a
// claim only when claims were limited by concurrency.
func freedIf(full bool, freed chan struct{}) <-chan struct{} {
	if full {
		return freed
	}
	return nil
}

// listen turns notifications on postgres.WebhookWakeChannel into wake-ups,
// coalesced in the 1-buffered wake, until ctx ends. A lost connection is
// re-established; the poll covers the gap.
func (d *Deliverer) listen(ctx context.Context, wake chan<- struct{}) {
	d.db.WakeListen(ctx, postgres.WebhookWakeChannel, func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	}, func(err error) {
		d.log.Warn("listen for webhook wake-ups; polling meanwhile", "error", err)
	})
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
