package postgres

import (
	"cmp"
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of RequestBatcherOptions.
const (
	// BatchRowsDefault caps the rows of one insert statement.
	BatchRowsDefault = 500
	// BatchBytesDefault caps the inputs of one insert statement, so a batch
	// of large bodies stays a modest message.
	BatchBytesDefault = 8 << 20
	// BatchInFlightDefault is how many batches one process writes at once.
	// Two let one batch be sent while the other waits for its commit's
	// flush and wake-up; more only make each batch smaller (on two cores,
	// 64 clients: 31 rows a batch with one in flight, 10 with four, 6 with
	// eight, and fewer submits a second).
	BatchInFlightDefault = 2
	// BatchTimeoutDefault bounds the writing of one batch; it serves many
	// submits, so no one submit's context governs it.
	BatchTimeoutDefault = 30 * time.Second
)

// RequestBatcherOptions tune a RequestBatcher; zero values take the
// defaults above.
type RequestBatcherOptions struct {
	MaxRows     int
	MaxBytes    int
	MaxInFlight int
	Timeout     time.Duration
}

// RequestBatcher group-commits submits: concurrent Inserts in one process
// go into one statement and one commit (RequestInsertBatch), and each
// returns after that commit. There is no linger: a lone Insert is written
// at once, and while MaxInFlight batches are being written the Inserts
// that arrive wait and go together in the next one, so batches grow with
// the load (a dynamic buffer). After each commit that queued anything it
// wakes processors once (RequestWake), outside the insert's transaction,
// before answering, so the wake-up is sent even where the process may be
// frozen as soon as it answers (AWS Lambda, where each process has one
// submit at a time: a batch of one).
//
// Two Inserts with the same organization and idempotency key never share
// a batch: the second waits for the first's batch, then replays its id
// (or is told the body differs), as it would had it come later.
type RequestBatcher struct {
	db   *DB
	opts RequestBatcherOptions

	mu       sync.Mutex
	queue    []*pendingInsert
	inFlight int             // batches being written
	keys     map[orgKey]bool // idempotency keys in batches being written

	batches, rows atomic.Int64
}

type pendingInsert struct {
	ctx  context.Context
	p    RequestInsertParams
	done chan RequestInsertOutcome
}

// NewRequestBatcher returns a batcher writing to db. It starts no
// goroutine until there is something to write.
func NewRequestBatcher(db *DB, o RequestBatcherOptions) *RequestBatcher {
	o.MaxRows = cmp.Or(o.MaxRows, BatchRowsDefault)
	o.MaxBytes = cmp.Or(o.MaxBytes, BatchBytesDefault)
	o.MaxInFlight = cmp.Or(o.MaxInFlight, BatchInFlightDefault)
	o.Timeout = cmp.Or(o.Timeout, BatchTimeoutDefault)
	return &RequestBatcher{db: db, opts: o, keys: map[orgKey]bool{}}
}

// Insert queues p with whatever else is being submitted and returns once
// its batch has committed, with its own outcome (see RequestInsertBatch).
// A submit whose ctx is done before its batch is written is not inserted.
func (b *RequestBatcher) Insert(ctx context.Context, p RequestInsertParams) (RequestInsertResult, error) {
	pi := &pendingInsert{ctx: ctx, p: p, done: make(chan RequestInsertOutcome, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, pi)
	if b.inFlight < b.opts.MaxInFlight {
		b.inFlight++
		go b.write()
	}
	b.mu.Unlock()
	o := <-pi.done
	return o.RequestInsertResult, o.Err
}

// RequestBatcherStats counts what a RequestBatcher wrote: Batches
// statements (each one commit) carrying Rows submits.
type RequestBatcherStats struct {
	Batches, Rows int64
}

// Stats reports the batches written so far.
func (b *RequestBatcher) Stats() RequestBatcherStats {
	return RequestBatcherStats{Batches: b.batches.Load(), Rows: b.rows.Load()}
}

// write writes batches until the queue is empty.
func (b *RequestBatcher) write() {
	for {
		b.mu.Lock()
		batch := b.take()
		if len(batch) == 0 {
			b.inFlight--
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.flush(batch)
		b.mu.Lock()
		for _, pi := range batch {
			if pi.p.IdempotencyKey != "" {
				delete(b.keys, orgKey{pi.p.OrganizationID, pi.p.IdempotencyKey})
			}
		}
		b.mu.Unlock()
	}
}

// take removes the next batch from the queue: up to MaxRows submits and
// MaxBytes of inputs (at least one), leaving those whose idempotency key is
// in a batch being written. b.mu must be held.
func (b *RequestBatcher) take() []*pendingInsert {
	var batch []*pendingInsert
	rest := b.queue[:0]
	size := 0
	for _, pi := range b.queue {
		k := orgKey{pi.p.OrganizationID, pi.p.IdempotencyKey}
		full := len(batch) >= b.opts.MaxRows || (len(batch) > 0 && size+len(pi.p.Input) > b.opts.MaxBytes)
		if full || (pi.p.IdempotencyKey != "" && b.keys[k]) {
			rest = append(rest, pi)
			continue
		}
		if pi.p.IdempotencyKey != "" {
			b.keys[k] = true
		}
		batch = append(batch, pi)
		size += len(pi.p.Input)
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	return batch
}

// flush writes one batch and answers each of its submits.
func (b *RequestBatcher) flush(batch []*pendingInsert) {
	live := batch[:0:0]
	for _, pi := range batch {
		if err := pi.ctx.Err(); err != nil {
			pi.done <- RequestInsertOutcome{Err: err}
			continue
		}
		live = append(live, pi)
	}
	if len(live) == 0 {
		return
	}
	ps := make([]RequestInsertParams, len(live))
	for i, pi := range live {
		ps[i] = pi.p
	}
	ctx, cancel := context.WithTimeout(context.Background(), b.opts.Timeout)
	defer cancel()
	out, err := b.db.RequestInsertBatch(ctx, ps)
	b.batches.Add(1)
	b.rows.Add(int64(len(ps)))
	queued := false
	for _, o := range out {
		queued = queued || (o.Err == nil && !o.Replayed)
	}
	if queued {
		b.db.RequestWake(ctx)
	}
	for i, pi := range live {
		if err != nil {
			pi.done <- RequestInsertOutcome{Err: err}
		} else {
			pi.done <- out[i]
		}
	}
}
