// Package worker is the loop shape the queue consumers share, the processor
// and the webhook deliverer, after River's producer: a fetch loop that
// claims batches under one context, work that runs under another, and a
// completer that writes outcomes in batches.
//
// A consumer's session reads:
//
//	fetchCtx := ctx                                   // canceled at stop: nothing new is fetched
//	workCtx := context.WithoutCancel(ctx)             // work in flight runs on, until a grace period ends
//	loop := worker.NewLoop(worker.LoopConfig{Poll: cfg.PollInterval})
//	go db.WakeListen(fetchCtx, channel, loop.Wake, onError)
//	completer := worker.NewCompleter(worker.CompleterConfig[outcome]{Write: writeBatch, MaxBatch: 1000})
//	go completer.Run(writeCtx)                        // ends after Close, once drained
//	loop.Run(fetchCtx, func(ctx context.Context) worker.Fetched {
//		batch := claim(ctx, freeSlots())              // start each item under workCtx; each ends in completer.Add
//		return worker.Fetched{More: len(batch) == limit, Next: nextDueTime()}
//	})
//	// drain: wait for the work, then completer.Close()
//
// The loop fetches at once, again at once after a full batch, and otherwise
// sleeps until the first of: a Wake (a notification, a freed slot), the
// earliest due time it knows (Fetched.Next, or DueAt from the process's
// own writes, such as a retry it just scheduled), or the poll interval, the
// safety net for wake-ups lost or never sent. So work due in the future
// starts within the timer's precision of its due time, not a poll later.
//
// Time comes from a Clock, so tests drive due times with a ManualClock and
// wait on signals, never on sleeps.
package worker

import (
	"cmp"
	"context"
	"sync"
	"time"
)

// PollDefault is the safety-net poll interval of a Loop.
const PollDefault = time.Second

// LoopConfig configures a Loop.
type LoopConfig struct {
	// Poll is the longest the loop sleeps without a fetch. Default
	// PollDefault.
	Poll time.Duration
	// Clock defaults to the system clock.
	Clock Clock
}

// Fetched is what one fetch reports to its Loop.
type Fetched struct {
	// More: the fetch was full, more may be ready; the loop fetches again
	// at once.
	More bool
	// Next is the earliest time known at which work not yet due becomes
	// due; zero when none is known.
	Next time.Time
}

// Loop schedules a consumer's fetches. Wake and DueAt may be called from
// any goroutine; Run from one at a time.
type Loop struct {
	poll  time.Duration
	clock Clock
	wake  chan struct{} // 1-buffered
	moved chan struct{} // 1-buffered: the hint moved earlier
	mu    sync.Mutex
	hint  time.Time // earliest DueAt not yet fetched for; zero when none
}

// NewLoop returns a Loop, applying the defaults to c's zero fields.
func NewLoop(c LoopConfig) *Loop {
	return &Loop{
		poll:  cmp.Or(c.Poll, PollDefault),
		clock: cmp.Or[Clock](c.Clock, SystemClock),
		wake:  make(chan struct{}, 1),
		moved: make(chan struct{}, 1),
	}
}

// Wake makes the loop fetch as soon as the fetch under way, if any, ends.
// Wake-ups coalesce: many before a fetch cause one.
func (l *Loop) Wake() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// DueAt tells the loop that work becomes due at t, so that it fetches then
// at the latest. Only the earliest time not yet fetched for is kept: the
// fetch reports the later ones (Fetched.Next).
func (l *Loop) DueAt(t time.Time) {
	l.mu.Lock()
	earlier := l.hint.IsZero() || t.Before(l.hint)
	if earlier {
		l.hint = t
	}
	l.mu.Unlock()
	if earlier {
		select { // the sleeping loop recomputes its deadline
		case l.moved <- struct{}{}:
		default:
		}
	}
}

// Run calls fetch until ctx is done, as the package comment describes.
// fetch should return promptly once ctx is done.
func (l *Loop) Run(ctx context.Context, fetch func(ctx context.Context) Fetched) {
	for ctx.Err() == nil {
		l.mu.Lock()
		if !l.hint.IsZero() && !l.hint.After(l.clock.Now()) {
			l.hint = time.Time{} // this fetch covers it
		}
		l.mu.Unlock()
		f := fetch(ctx)
		if f.More {
			continue
		}
		l.sleep(ctx, f.Next)
	}
}

// sleep waits until ctx is done, a Wake, or the deadline: the earliest of
// next, the DueAt hint and a poll from now, recomputed when DueAt moves the
// hint earlier.
func (l *Loop) sleep(ctx context.Context, next time.Time) {
	pollAt := l.clock.Now().Add(l.poll)
	for {
		deadline := pollAt
		if !next.IsZero() && next.Before(deadline) {
			deadline = next
		}
		l.mu.Lock()
		if !l.hint.IsZero() && l.hint.Before(deadline) {
			deadline = l.hint
		}
		l.mu.Unlock()
		wait := deadline.Sub(l.clock.Now())
		if wait <= 0 {
			return
		}
		t := l.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
			return
		case <-l.wake:
			t.Stop()
			return
		case <-l.moved:
			t.Stop()
		}
	}
}
