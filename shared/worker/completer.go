package worker

import (
	"cmp"
	"context"
	"sync"
	"time"
)

// CompleterConfig configures a Completer of items of type T.
type CompleterConfig[T any] struct {
	// Write writes one batch, in one statement. An error is retried, with
	// backoff, while Run's context lasts; Write must be safe to repeat
	// (a lease-guarded completion is).
	Write func(ctx context.Context, batch []T) error
	// OnError, when set, hears of each failed Write before its retry.
	OnError func(err error, batch []T)
	// MaxBatch caps the items of one batch. Default MaxBatchDefault.
	MaxBatch int
	// Size and MaxBytes, when both set, cap the total size of one batch;
	// a first item larger than MaxBytes still goes, alone.
	Size     func(T) int
	MaxBytes int
}

// MaxBatchDefault is the default item cap of a Completer's batch.
const MaxBatchDefault = 1000

// Completer writes outcomes in batches: whatever accumulated while one
// batch was being written goes in the next, so batches grow with the load
// and a lone outcome is written at once. Add may be called from any
// goroutine; Run from one.
type Completer[T any] struct {
	cfg     CompleterConfig[T]
	mu      sync.Mutex
	pending []T
	closed  bool
	ready   chan struct{} // 1-buffered: pending has items, or closed
}

// NewCompleter returns a Completer, applying the defaults to c's zero
// fields.
func NewCompleter[T any](c CompleterConfig[T]) *Completer[T] {
	c.MaxBatch = cmp.Or(c.MaxBatch, MaxBatchDefault)
	return &Completer[T]{cfg: c, ready: make(chan struct{}, 1)}
}

// Add queues item for writing. It reports false, queueing nothing, once
// Close was called: the caller then disposes of item another way (a
// hand-back).
func (c *Completer[T]) Add(item T) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.pending = append(c.pending, item)
	c.signal()
	return true
}

// Close refuses further Adds; Run writes what is queued and returns.
func (c *Completer[T]) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.signal()
}

func (c *Completer[T]) signal() {
	select {
	case c.ready <- struct{}{}:
	default:
	}
}

// Run writes batches until Close was called and everything queued is
// written, or until ctx is done; items it could not write then stay
// unwritten (Pending returns them).
func (c *Completer[T]) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.ready:
		}
		for {
			c.mu.Lock()
			n := c.batchLen()
			batch := c.pending[:n:n]
			c.pending = c.pending[n:]
			closed := c.closed
			c.mu.Unlock()
			if n == 0 {
				if closed {
					return
				}
				break
			}
			if !c.write(ctx, batch) {
				c.mu.Lock()
				c.pending = append(batch, c.pending...)
				c.mu.Unlock()
				return
			}
		}
	}
}

// Pending returns the items queued and not written.
func (c *Completer[T]) Pending() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]T(nil), c.pending...)
}

// batchLen is how many of the first pending items one batch takes: at most
// MaxBatch and MaxBytes, but always the first. c.mu must be held.
func (c *Completer[T]) batchLen() int {
	n, size := 0, 0
	for n < len(c.pending) && n < c.cfg.MaxBatch {
		if c.cfg.Size != nil && c.cfg.MaxBytes > 0 {
			size += c.cfg.Size(c.pending[n])
			if n > 0 && size > c.cfg.MaxBytes {
				break
			}
		}
		n++
	}
	return n
}

// write writes batch, retrying with backoff; it reports false when ctx
// ended first.
func (c *Completer[T]) write(ctx context.Context, batch []T) bool {
	backoff := 50 * time.Millisecond
	for {
		err := c.cfg.Write(ctx, batch)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if c.cfg.OnError != nil {
			c.cfg.OnError(err, batch)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}
