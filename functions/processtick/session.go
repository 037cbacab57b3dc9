package processtick

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/worker"
)

const (
	// claimBatchMax caps one claim statement.
	claimBatchMax = 1000
	// completeBatchMax caps one completion statement.
	completeBatchMax = 1000
	// completeBatchBytesMax caps the outputs one completion statement
	// carries (one larger output still goes alone). Postgres refuses a
	// message over 1 GiB, and outputs run to MaxOutputBytes each: without a
	// cap, a few hundred large answers finishing together would make a
	// statement that can never be written.
	completeBatchBytesMax = 64 << 20
	// claimTimeout bounds a claim. A claim is not canceled by a stop: one
	// that committed must hand its rows to attempts, not to the reclaim
	// sweep.
	claimTimeout = 30 * time.Second
)

// session is the state of one Run or Tick.
type session struct {
	p *Processor

	mu       sync.Mutex
	inflight map[requestid.ID]*flight // claimed, outcome not yet written

	// loop schedules the claims: woken by notifications and by written
	// outcomes (freed slots), and at the earliest due time known.
	loop *worker.Loop
	// completer writes the outcomes in batches.
	completer *worker.Completer[finished]
	attempts  sync.WaitGroup // the workers

	// work holds the claimed requests no worker has taken yet; it has room
	// for Concurrency, more than can be in flight.
	work chan attempt
	// workers is the number of workers started; only fetch reads or
	// changes it.
	workers int
	// due is the last answer of nextDue, asked at dueAskedAt; only fetch
	// reads or changes them. dueStale says a write queued retries since.
	due, dueAskedAt time.Time
	dueStale        atomic.Bool
	// attemptBase is the work context: attempts run under it until they
	// finish or are cut off, not until the claiming stops.
	attemptBase context.Context

	claimed, recorded, handedBack atomic.Int64
	claimErr                      atomic.Pointer[error]
}

// flight is a claimed request whose outcome is not written yet.
type flight struct {
	req    postgres.ClaimedRequest
	cancel context.CancelCauseFunc
}

// attempt is a claimed request on its way to a worker.
type attempt struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	req    postgres.ClaimedRequest
}

// finished is an attempt's outcome on its way to the database.
type finished struct {
	req     postgres.ClaimedRequest
	result  result
	outcome postgres.AttemptOutcome
}

// run claims and processes requests until claimCtx is done, then waits for
// the attempts in flight until abortAt() fires, cuts off the rest and hands
// them back.
func (p *Processor) run(claimCtx context.Context, abortAt func() <-chan struct{}, long bool) (TickResult, error) {
	s := &session{
		p:        p,
		inflight: map[requestid.ID]*flight{},
		loop:     worker.NewLoop(worker.LoopConfig{Poll: p.cfg.PollInterval, Clock: p.clock}),
		work:     make(chan attempt, p.cfg.Concurrency),
	}
	s.completer = worker.NewCompleter(worker.CompleterConfig[finished]{
		Write:    s.write,
		MaxBatch: p.completeBatch,
		Size:     func(f finished) int { return len(f.outcome.Output) },
		MaxBytes: p.completeBatchBytes,
		OnError: func(err error, batch []finished) {
			p.log.Warn("writing outcomes failed; retrying", "error", err, "count", len(batch))
		},
	})

	// The claim context is claimCtx. Writing outcomes and renewing leases go
	// on through the drain; attempts run until they finish or are cut off,
	// not until the claiming stops.
	bg, stopBg := context.WithCancel(context.WithoutCancel(claimCtx))
	defer stopBg()
	attemptBase, abort := context.WithCancelCause(context.WithoutCancel(claimCtx))
	defer abort(nil)
	s.attemptBase = attemptBase

	completerDone := make(chan struct{})
	go func() {
		defer close(completerDone)
		s.completer.Run(bg)
	}()
	var helpers sync.WaitGroup
	helpers.Go(func() { s.renewLoop(bg) })
	helpers.Go(func() {
		p.db.WakeListen(claimCtx, postgres.WakeChannel, s.loop.Wake, func(err error) {
			p.log.Warn("wake-up listener disconnected; polling meanwhile", "error", err)
		})
	})
	sweeps := p.maintainer.Totals()
	helpers.Go(func() { p.maintainer.Run(claimCtx) })
	if long && p.metrics != nil {
		helpers.Go(func() { s.queueDepthLoop(claimCtx) })
	}

	s.loop.Run(claimCtx, s.fetch)
	close(s.work)

	attemptsDone := make(chan struct{})
	go func() {
		s.attempts.Wait()
		close(attemptsDone)
	}()
	select {
	case <-attemptsDone:
	case <-abortAt():
		abort(errStopped)
		select {
		case <-attemptsDone:
		case <-time.After(finalWriteTimeout):
			p.log.Warn("attempts did not stop in time; handing their requests back")
		}
	}
	s.completer.Close()
	select {
	case <-completerDone:
	case <-time.After(finalWriteTimeout):
		p.log.Warn("could not write the last outcomes in time")
	}
	stopBg()
	<-completerDone
	s.handBackRest()
	helpers.Wait()

	swept := p.maintainer.Totals()
	res := TickResult{
		Claimed:    int(s.claimed.Load()),
		Recorded:   int(s.recorded.Load()),
		HandedBack: int(s.handedBack.Load()),
		Reclaimed:  swept.Reclaimed - sweeps.Reclaimed,
		Expired:    swept.Expired - sweeps.Expired,
	}
	if errp := s.claimErr.Load(); errp != nil && res.Claimed == 0 {
		return res, *errp
	}
	return res, nil
}

// fetch claims while there is room, and reports whether the claim was
// full (claim again at once) and, when it was not, the earliest due time of
// the requests waiting (retries, back-pressure waits), so that the loop
// sleeps until then at most. Between claims the loop waits for a wake-up,
// a written outcome (freed slots), that due time or the poll.
func (s *session) fetch(ctx context.Context) worker.Fetched {
	s.mu.Lock()
	free := s.p.cfg.Concurrency - len(s.inflight)
	s.mu.Unlock()
	if free <= 0 {
		return worker.Fetched{} // a written outcome wakes the loop
	}
	limit := min(free, s.p.claimBatch)
	claimStart := s.p.clock.Now()
	claimed, err := s.claim(ctx, limit)
	if err != nil {
		s.claimErr.Store(&err)
		s.p.log.Error("claim failed", "error", err)
	}
	s.start(s.attemptBase, claimed)
	if len(claimed) == limit {
		return worker.Fetched{More: true}
	}
	if err != nil || ctx.Err() != nil || s.p.noDueTimes {
		return worker.Fetched{}
	}
	return worker.Fetched{Next: s.nextDue(ctx, claimStart)}
}

// nextDueReuse is how long an answer of RequestNextDue is reused while
// its due time is still ahead: under a steady load every claim falls short
// of its limit, and asking after each would double the claims' round trips.
// A write of retries makes the next fetch ask again: DueAt keeps only the
// earliest of them.
const nextDueReuse = 100 * time.Millisecond

// nextDue is the earliest due time of the waiting requests after the
// start of the claim that just fell short, zero when none is known.
func (s *session) nextDue(ctx context.Context, claimStart time.Time) time.Time {
	now := s.p.clock.Now()
	if !s.dueStale.Swap(false) && now.Sub(s.dueAskedAt) < nextDueReuse && s.due.After(now) {
		return s.due
	}
	wait, ok, err := s.p.db.RequestNextDue(ctx, claimStart)
	s.dueAskedAt, s.due = now, time.Time{}
	if err == nil && ok {
		s.due = now.Add(wait)
	}
	return s.due
}

func (s *session) claim(ctx context.Context, limit int) ([]postgres.ClaimedRequest, error) {
	if ctx.Err() != nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimTimeout)
	defer cancel()
	claimed, err := s.p.db.RequestClaimBatch(ctx, postgres.RequestClaimParams{
		Owner: s.p.id, Limit: limit, LeaseDuration: s.p.cfg.LeaseDuration,
	})
	s.p.stats.claims.Add(1)
	s.p.stats.claimed.Add(int64(len(claimed)))
	return claimed, err
}

// start hands each claimed request to a worker, starting workers as the
// number of requests in flight grows (up to Concurrency). Workers live as
// long as the session, so an attempt does not pay for a goroutine and its
// stack growth of its own.
func (s *session) start(base context.Context, claimed []postgres.ClaimedRequest) {
	s.claimed.Add(int64(len(claimed)))
	attempts := make([]attempt, len(claimed))
	s.mu.Lock()
	for i, c := range claimed {
		ctx, cancel := context.WithCancelCause(base)
		s.inflight[c.ID] = &flight{req: c, cancel: cancel}
		attempts[i] = attempt{ctx: ctx, cancel: cancel, req: c}
	}
	inflight := len(s.inflight)
	s.mu.Unlock()
	for ; s.workers < inflight; s.workers++ {
		s.attempts.Go(s.worker)
	}
	for _, a := range attempts {
		s.work <- a // never blocks: work has room for every request in flight
	}
	if m := s.p.metrics; m != nil {
		for _, c := range claimed {
			m.QueueWait.Observe(max(c.ClaimedAt.Sub(c.DueAt), 0).Seconds())
		}
	}
}

// worker runs attempts until the claiming stops.
func (s *session) worker() {
	for a := range s.work {
		c := a.req
		began := time.Now()
		r := s.p.call(a.ctx, c)
		if m := s.p.metrics; m != nil && r.kind != resultStopped {
			m.Attempts.WithLabelValues(r.label()).Inc()
			m.InferenceDuration.Observe(time.Since(began).Seconds())
		}
		o := s.p.decide(c, r)
		o.StartedAt, o.FinishedAt, o.HTTPStatus = began, time.Now(), r.status
		s.finish(finished{req: c, result: r, outcome: o})
		a.cancel(nil)
	}
}

// finish queues an outcome for the completer. After the completer closed,
// the request stays in flight and is handed back instead (handBackRest).
func (s *session) finish(f finished) { s.completer.Add(f) }

// write records a batch in one statement; the completer retries it while
// the database is away. Requests whose outcome is never written stay in
// flight and are handed back, or reclaimed once their leases run out.
func (s *session) write(ctx context.Context, batch []finished) error {
	outcomes := make([]postgres.AttemptOutcome, len(batch))
	var size int64
	for i, f := range batch {
		outcomes[i] = f.outcome
		size += int64(len(f.outcome.Output))
	}
	for seen := s.p.stats.writeBytesMax.Load(); size > seen && !s.p.stats.writeBytesMax.CompareAndSwap(seen, size); {
		seen = s.p.stats.writeBytesMax.Load()
	}
	// The statement's now(), which its due times count from, is no earlier
	// than this.
	writing := s.p.clock.Now()
	recorded, err := s.p.db.RequestCompleteBatch(ctx, s.p.id, outcomes)
	s.p.stats.writes.Add(1)
	if err != nil {
		if ctx.Err() != nil {
			s.p.log.Error("outcomes not written", "error", err, "count", len(batch))
		}
		return err
	}
	s.p.stats.written.Add(int64(len(outcomes)))
	written := make(map[requestid.ID]postgres.RecordedOutcome, len(recorded))
	for _, r := range recorded {
		written[r.ID] = r
	}
	s.mu.Lock()
	for _, f := range batch {
		delete(s.inflight, f.req.ID)
	}
	s.mu.Unlock()
	s.loop.Wake() // slots are free
	s.p.notify(ctx, postgres.NoticeOf(recorded))
	s.recorded.Add(int64(len(recorded)))
	for _, f := range batch {
		r, ok := written[f.req.ID]
		if ok && r.State == postgres.StateQueued && f.outcome.Delay > 0 && !s.p.noDueTimes {
			s.loop.DueAt(writing.Add(f.outcome.Delay)) // a retry or back-pressure wait of ours
			s.dueStale.Store(true)
		}
		if ok && f.result.kind == resultStopped {
			s.handedBack.Add(1)
		}
		if ok && r.State.Final() && s.p.metrics != nil {
			s.p.metrics.Completed.WithLabelValues(string(r.State)).Inc()
		}
		s.logOutcome(f, ok)
	}
	return nil
}

func (s *session) logOutcome(f finished, recorded bool) {
	c, o := f.req, f.outcome
	level, msg := slog.LevelInfo, "attempt finished"
	switch {
	case !recorded:
		level, msg = slog.LevelWarn, "outcome not recorded: the lease was lost to another processor"
	case f.result.kind == resultStopped:
		msg = "request handed back"
	case f.result.kind == resultNotReady:
		msg = "model not ready; request waits"
	case f.result.kind == resultSuccess:
		level = slog.LevelDebug
	case o.State == postgres.StateFailed:
		level = slog.LevelWarn
	}
	ctx := context.Background()
	if !s.p.log.Enabled(ctx, level) {
		return
	}
	attrs := []any{"request_id", c.ID.String(), "model_id", c.ModelID, "deployment_id", c.DeploymentID,
		"attempt", c.Attempt, "state", string(o.State)}
	if o.Error != nil {
		attrs = append(attrs, "code", o.Error.Code, "message", o.Error.Message)
	}
	if o.State == postgres.StateQueued && o.Delay > 0 {
		attrs = append(attrs, "delay", o.Delay.String())
	}
	s.p.log.Log(ctx, level, msg, attrs...)
}

// handBackRest returns the requests still in flight (cut off, or whose
// outcome could not be written) to QUEUED, the attempt not counted.
func (s *session) handBackRest() {
	s.mu.Lock()
	var outcomes []postgres.AttemptOutcome
	held := make(map[requestid.ID]postgres.ClaimedRequest, len(s.inflight))
	for id, f := range s.inflight {
		outcomes = append(outcomes, postgres.AttemptOutcome{ID: id, State: postgres.StateQueued, Uncount: true})
		held[id] = f.req
	}
	s.mu.Unlock()
	if len(outcomes) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), finalWriteTimeout)
	defer cancel()
	recorded, err := s.p.db.RequestCompleteBatch(ctx, s.p.id, outcomes)
	if err != nil {
		s.p.log.Error("hand-back failed; the requests return when their leases run out", "error", err, "count", len(outcomes))
		return
	}
	s.p.notify(ctx, postgres.NoticeOf(recorded))
	s.recorded.Add(int64(len(recorded)))
	s.handedBack.Add(int64(len(recorded)))
	for _, r := range recorded {
		c := held[r.ID]
		s.p.log.Info("request handed back", "request_id", r.ID.String(), "model_id", c.ModelID,
			"deployment_id", c.DeploymentID, "attempt", c.Attempt)
	}
}

// renewLoop extends the leases of the requests in flight every third of the
// lease duration, and cuts off the attempts whose lease was lost.
func (s *session) renewLoop(ctx context.Context) {
	t := time.NewTicker(s.p.cfg.LeaseDuration / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		ids := make([]requestid.ID, 0, len(s.inflight))
		for id := range s.inflight {
			ids = append(ids, id)
		}
		s.mu.Unlock()
		held, err := s.p.db.RequestLeaseRenew(ctx, s.p.id, ids, s.p.cfg.LeaseDuration)
		if err != nil {
			if ctx.Err() == nil {
				s.p.log.Warn("lease renewal failed", "error", err, "count", len(ids))
			}
			continue
		}
		still := make(map[requestid.ID]bool, len(held))
		for _, id := range held {
			still[id] = true
		}
		s.mu.Lock()
		for _, id := range ids {
			if f, ok := s.inflight[id]; ok && !still[id] {
				f.cancel(errLeaseLost)
				s.p.log.Warn("lease lost; attempt cut off", "request_id", id.String(),
					"model_id", f.req.ModelID, "deployment_id", f.req.DeploymentID, "attempt", f.req.Attempt)
			}
		}
		s.mu.Unlock()
	}
}

// queueDepthLoop refreshes the queue-depth gauge.
func (s *session) queueDepthLoop(ctx context.Context) {
	t := time.NewTicker(QueueDepthIntervalDefault)
	defer t.Stop()
	for {
		if err := s.p.RefreshQueueDepth(ctx); err != nil && ctx.Err() == nil {
			s.p.log.Warn("queue depth refresh failed", "error", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// notify sends the notifications a committed write calls for. They only
// shorten waits, so a failure is logged, not retried.
func (p *Processor) notify(ctx context.Context, n postgres.Notice) {
	if err := p.db.Notify(ctx, n); err != nil && ctx.Err() == nil {
		p.log.Warn("notification failed; listeners will poll", "error", err)
	}
}
