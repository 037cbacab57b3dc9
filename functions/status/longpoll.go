package status

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// Long-poll bounds: GET /async_request/{id}?wait_seconds=N takes N from 1
// to WaitSecondsMax.
const WaitSecondsMax = 60

// Caps on the long-polls one process holds open at once, in all and per
// organization. A long-poll over either cap is a 429 (TOO_MANY_WAITERS)
// with Retry-After: 1, so a client falls back to polling.
const (
	MaxWaitersDefault       = 10_000
	MaxWaitersPerOrgDefault = 1_000
)

// waitMargin is kept free before the request context's deadline (a Lambda
// invocation's), so that a long-poll answers before its function times
// out.
const waitMargin = 2 * time.Second

// listenIdle is how long the LISTEN connection stays open once no
// long-poll waits, before it is closed (and opened again by the next one).
const listenIdle = 30 * time.Second

var errTooManyWaiters = &httpapi.Error{Status: http.StatusTooManyRequests, Code: "TOO_MANY_WAITERS",
	Message: "too many long-polls are open; retry after the time in Retry-After, or poll without wait_seconds", RetryAfter: time.Second}

// waitSeconds reads the wait_seconds query parameter: 0 when absent.
func waitSeconds(r *http.Request) (time.Duration, error) {
	vs, ok := r.URL.Query()["wait_seconds"]
	if !ok {
		return 0, nil
	}
	n, err := strconv.Atoi(vs[0])
	if len(vs) != 1 || err != nil || n < 1 || n > WaitSecondsMax {
		return 0, httpapi.Invalid("wait_seconds", "wait_seconds must be one integer from 1 to "+strconv.Itoa(WaitSecondsMax))
	}
	return time.Duration(n) * time.Second, nil
}

// waiters is the process's fan-out of completion notifications to
// long-polls: one LISTEN connection on postgres.FinishedChannel, opened
// while anyone waits, and the waiting long-polls keyed by request id. A
// notification wakes only the waiters of its ids, each of which reads its
// request once; nothing polls the database while waiting.
type waiters struct {
	db        *postgres.DB
	log       *slog.Logger
	maxTotal  int
	maxPerOrg int

	mu     sync.Mutex
	byID   map[requestid.ID]map[*waiter]struct{}
	perOrg map[int64]int
	total  int
	parked int // waiters past their first read, for the tests
	// listening reports a listener connected (and not stopped since).
	listening bool
	stop      context.CancelFunc // of the listener; nil while none runs
	done      chan struct{}      // closed when the listener has returned
	idle      *time.Timer
}

// waiter is one long-poll; wake has room for one wake-up, so waking never
// blocks and wake-ups coalesce.
type waiter struct {
	wake   chan struct{}
	parked bool
}

func newWaiters(db *postgres.DB, log *slog.Logger, maxTotal, maxPerOrg int) *waiters {
	return &waiters{db: db, log: log, maxTotal: maxTotal, maxPerOrg: maxPerOrg,
		byID: map[requestid.ID]map[*waiter]struct{}{}, perOrg: map[int64]int{}}
}

// add registers a waiter for id, starting the listener if none runs;
// errTooManyWaiters over a cap.
func (ws *waiters) add(org int64, id requestid.ID) (*waiter, error) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.total >= ws.maxTotal || ws.perOrg[org] >= ws.maxPerOrg {
		return nil, errTooManyWaiters
	}
	w := &waiter{wake: make(chan struct{}, 1)}
	if ws.byID[id] == nil {
		ws.byID[id] = map[*waiter]struct{}{}
	}
	ws.byID[id][w] = struct{}{}
	ws.perOrg[org]++
	ws.total++
	if ws.idle != nil {
		ws.idle.Stop()
		ws.idle = nil
	}
	if ws.stop == nil {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		ws.stop, ws.done = cancel, done
		go func() {
			defer close(done)
			ws.db.FinishedListen(ctx, ws.wakeIDs, ws.wakeAll, func(err error) {
				ws.log.Warn("long-poll listener disconnected; reconnecting", "error", err)
			})
		}()
	}
	return w, nil
}

// remove unregisters w; the last waiter out starts the listener's idle
// timer.
func (ws *waiters) remove(org int64, id requestid.ID, w *waiter) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	delete(ws.byID[id], w)
	if len(ws.byID[id]) == 0 {
		delete(ws.byID, id)
	}
	if ws.perOrg[org]--; ws.perOrg[org] == 0 {
		delete(ws.perOrg, org)
	}
	ws.total--
	if w.parked {
		ws.parked--
	}
	if ws.total == 0 && ws.stop != nil && ws.idle == nil {
		ws.idle = time.AfterFunc(listenIdle, ws.stopIfIdle)
	}
}

func (ws *waiters) stopIfIdle() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.total == 0 && ws.stop != nil {
		ws.stop()
		ws.stop = nil
		ws.listening = false
	}
	ws.idle = nil
}

// close stops the listener, if one runs, and waits for it to return.
func (ws *waiters) close() {
	ws.mu.Lock()
	stop, done := ws.stop, ws.done
	ws.stop = nil
	ws.listening = false
	if ws.idle != nil {
		ws.idle.Stop()
		ws.idle = nil
	}
	ws.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// park marks w as waiting for a wake-up.
func (ws *waiters) park(w *waiter) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if !w.parked {
		w.parked = true
		ws.parked++
	}
}

// isListening reports whether the listener is connected.
func (ws *waiters) isListening() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.listening
}

// count returns how many waiters wait for a wake-up, past their first
// read.
func (ws *waiters) count() int {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.parked
}

func (ws *waiters) wakeIDs(ids []requestid.ID) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for _, id := range ids {
		for w := range ws.byID[id] {
			w.signal()
		}
	}
}

// wakeAll wakes every waiter once the listener has (re)connected: what
// finished while it was not listening went unannounced.
func (ws *waiters) wakeAll() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.listening = true
	for _, set := range ws.byID {
		for w := range set {
			w.signal()
		}
	}
}

func (w *waiter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// longPoll answers GET /async_request/{id}?wait_seconds=N: it reads the
// request, and while it is not final waits for a completion notification
// (reading it again on each) until the wait, capped to the request
// context's deadline less waitMargin, runs out; then it reads it once
// more. It returns the request as last read.
func (s *server) longPoll(r *http.Request, wait time.Duration) (postgres.Request, error) {
	ctx := r.Context()
	deadline := time.Now().Add(wait)
	if d, ok := ctx.Deadline(); ok && d.Add(-waitMargin).Before(deadline) {
		deadline = d.Add(-waitMargin)
	}
	id, err := requestid.Parse(r.PathValue("request_id"))
	if err != nil {
		return postgres.Request{}, errNoRequest
	}
	org := httpapi.OrganizationID(ctx)
	// Registered before the first read, so a completion between the two
	// is not missed.
	w, err := s.waiters.add(org, id)
	if err != nil {
		return postgres.Request{}, err
	}
	defer s.waiters.remove(org, id, w)
	req, err := s.request(r)
	if err != nil || req.State.Final() {
		return req, err
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	s.waiters.park(w)
	for {
		select {
		case <-w.wake:
			if req, err = s.request(r); err != nil || req.State.Final() {
				return req, err
			}
		case <-timer.C:
			return s.request(r)
		case <-ctx.Done():
			return postgres.Request{}, ctx.Err()
		}
	}
}
