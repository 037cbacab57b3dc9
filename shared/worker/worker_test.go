package worker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/worker"
)

// loopHarness runs a Loop on a ManualClock; each fetch reports the clock's
// time on fetched and answers with the next reply.
type loopHarness struct {
	t       *testing.T
	clock   *worker.ManualClock
	loop    *worker.Loop
	fetched chan time.Time
	replies chan worker.Fetched
}

func setupLoop(t *testing.T, poll time.Duration) *loopHarness {
	t.Helper()
	h := &loopHarness{
		t:       t,
		clock:   worker.NewManualClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)),
		fetched: make(chan time.Time),
		replies: make(chan worker.Fetched),
	}
	h.loop = worker.NewLoop(worker.LoopConfig{Poll: poll, Clock: h.clock})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.loop.Run(ctx, func(ctx context.Context) worker.Fetched {
			select {
			case h.fetched <- h.clock.Now():
			case <-ctx.Done():
				return worker.Fetched{}
			}
			select {
			case f := <-h.replies:
				return f
			case <-ctx.Done():
				return worker.Fetched{}
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return h
}

// fetch waits for the loop's next fetch, answers it with f and returns the
// time it was made at.
func (h *loopHarness) fetch(f worker.Fetched) time.Time {
	h.t.Helper()
	select {
	case at := <-h.fetched:
		h.replies <- f
		return at
	case <-time.After(10 * time.Second):
		h.t.Fatal("no fetch")
	}
	return time.Time{}
}

// sleepsUntil waits for the loop to arm its timer and checks its firing time.
func (h *loopHarness) sleepsUntil(want time.Time) {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !h.clock.WaitTimerAt(ctx, want) {
		h.t.Fatalf("loop sleeps until %v, want %v", h.clock.WaitTimer(context.Background()), want)
	}
}

// TestLoopDueTime: the loop sleeps exactly until the earliest due time it
// knows, from the fetch or from DueAt, not the poll interval, and fetches
// when the clock gets there.
func TestLoopDueTime(t *testing.T) {
	t.Parallel()
	h := setupLoop(t, time.Second)
	start := h.fetch(worker.Fetched{Next: h.clock.Now().Add(200 * time.Millisecond)})
	h.sleepsUntil(start.Add(200 * time.Millisecond))
	h.clock.Advance(200 * time.Millisecond)
	at := h.fetch(worker.Fetched{})
	if want := start.Add(200 * time.Millisecond); !at.Equal(want) {
		t.Fatalf("fetched at %v, want %v", at, want)
	}

	// Nothing known: the poll. A DueAt while asleep moves the deadline
	// earlier; a later one does not move it back.
	h.sleepsUntil(at.Add(time.Second))
	h.loop.DueAt(at.Add(30 * time.Millisecond))
	h.sleepsUntil(at.Add(30 * time.Millisecond))
	h.loop.DueAt(at.Add(500 * time.Millisecond))
	h.sleepsUntil(at.Add(30 * time.Millisecond))
	h.clock.Advance(30 * time.Millisecond)
	if got := h.fetch(worker.Fetched{}); !got.Equal(at.Add(30 * time.Millisecond)) {
		t.Fatalf("fetched at %v, want the DueAt time", got)
	}
	// The hint was consumed by that fetch: back to the poll.
	h.sleepsUntil(at.Add(30*time.Millisecond + time.Second))
}

// TestLoopWake: a Wake fetches at once; a full fetch fetches again at once.
func TestLoopWake(t *testing.T) {
	t.Parallel()
	h := setupLoop(t, time.Hour)
	start := h.fetch(worker.Fetched{})
	h.sleepsUntil(start.Add(time.Hour))
	h.loop.Wake()
	h.fetch(worker.Fetched{More: true})
	if at := h.fetch(worker.Fetched{}); !at.Equal(start) {
		t.Fatalf("fetched at %v, want without the clock moving", at)
	}
}

// TestCompleter: outcomes that arrive while a batch is written go in the
// next batch, capped by MaxBatch; a failed write is retried; Close writes
// what is left, and Add is refused after it.
func TestCompleter(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var batches [][]int
	release := make(chan struct{})
	first := true
	failOnce := true
	c := worker.NewCompleter(worker.CompleterConfig[int]{
		MaxBatch: 3,
		Write: func(ctx context.Context, batch []int) error {
			if first {
				first = false
				<-release // hold the first batch while more arrive
			}
			if len(batch) == 3 && failOnce {
				failOnce = false
				return errors.New("database away")
			}
			mu.Lock()
			batches = append(batches, append([]int(nil), batch...))
			mu.Unlock()
			return nil
		},
	})
	done := make(chan struct{})
	go func() { defer close(done); c.Run(context.Background()) }()
	c.Add(0)
	for !func() bool { return len(c.Pending()) == 0 }() {
		time.Sleep(time.Millisecond) // until the first batch is taken
	}
	for i := 1; i <= 5; i++ {
		c.Add(i)
	}
	close(release)
	c.Close()
	<-done
	if c.Add(6) {
		t.Error("Add accepted after Close")
	}
	want := [][]int{{0}, {1, 2, 3}, {4, 5}}
	if len(batches) != len(want) {
		t.Fatalf("batches %v, want %v", batches, want)
	}
	for i := range want {
		if len(batches[i]) != len(want[i]) || batches[i][0] != want[i][0] {
			t.Fatalf("batches %v, want %v", batches, want)
		}
	}
}
