package worker

import (
	"context"
	"sync"
	"time"
)

// Clock is the time a Loop runs on.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock is the real time.
var SystemClock Clock = systemClock{}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) NewTimer(d time.Duration) Timer { return systemTimer{time.NewTimer(d)} }

type systemTimer struct{ t *time.Timer }

func (t systemTimer) C() <-chan time.Time { return t.t.C }
func (t systemTimer) Stop() bool          { return t.t.Stop() }

// ManualClock is a Clock for tests: its time moves only by Advance, which
// fires the timers it reaches.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
	armed  chan struct{} // signaled when a timer is created
}

// NewManualClock returns a ManualClock reading now.
func NewManualClock(now time.Time) *ManualClock {
	return &ManualClock{now: now, armed: make(chan struct{}, 1)}
}

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer firing when the clock reaches Now()+d.
func (c *ManualClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	t := &manualTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
	} else {
		c.timers = append(c.timers, t)
	}
	c.mu.Unlock()
	select {
	case c.armed <- struct{}{}:
	default:
	}
	return t
}

// Advance moves the clock by d and fires the timers due by then.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

// WaitTimer blocks until a timer is pending and returns the earliest
// pending timer's firing time, or the zero time if ctx ends first.
func (c *ManualClock) WaitTimer(ctx context.Context) time.Time {
	return c.waitTimer(ctx, func(time.Time) bool { return true })
}

// WaitTimerAt blocks until the earliest pending timer fires at at, and
// reports false if ctx ends first.
func (c *ManualClock) WaitTimerAt(ctx context.Context, at time.Time) bool {
	return !c.waitTimer(ctx, at.Equal).IsZero()
}

func (c *ManualClock) waitTimer(ctx context.Context, ok func(time.Time) bool) time.Time {
	for {
		c.mu.Lock()
		var first time.Time
		for _, t := range c.timers {
			if first.IsZero() || t.at.Before(first) {
				first = t.at
			}
		}
		c.mu.Unlock()
		if !first.IsZero() && ok(first) {
			return first
		}
		select {
		case <-ctx.Done():
			return time.Time{}
		case <-c.armed:
		}
	}
}

type manualTimer struct {
	c  *ManualClock
	at time.Time
	ch chan time.Time
}

func (t *manualTimer) C() <-chan time.Time { return t.ch }

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, o := range t.c.timers {
		if o == t {
			t.c.timers = append(t.c.timers[:i], t.c.timers[i+1:]...)
			return true
		}
	}
	return false
}
