// Package retry is the processor's retry policy (SPEC §4): pure functions
// of an attempt, the model's answer and the time, deciding whether and when
// a request runs again. shared/postgres runs the statements; this decides,
// so the schedule is tested as a table, with the time passed in.
package retry

import (
	"math"
	"time"

	"github.com/openasync/asyncrequest/shared/retryafter"
)

// Defaults of a Policy's zero fields.
const (
	// BackpressureDelayDefault is the wait after a back-pressure answer
	// (429, connection refused, DNS failure) without a Retry-After.
	BackpressureDelayDefault = 2 * time.Second
	// BackpressureMinDefault is the floor on every back-pressure wait, a
	// model's Retry-After included: a 429 with Retry-After: 0 costs at most
	// one model call per floor, so at most deadline/floor + 1 calls in a
	// request's time in the queue.
	BackpressureMinDefault = 100 * time.Millisecond
	// RetryAfterMax caps a model's Retry-After at the longest queue time a
	// request can have (72 h): a longer wait would end in EXPIRED all the
	// same.
	RetryAfterMax = 72 * time.Hour
)

// Backoff is how long a request waits after its failed attempt number
// attempt (1-based): initial * 2^(attempt-1), capped at max. With the API's
// defaults (1 s, 5 s) the schedule is 1 s, 2 s, 4 s, 5 s, 5 s, ...; an
// initial delay of 0 retries at once. Attempts below 1 count as 1.
func Backoff(attempt int, initial, max time.Duration) time.Duration {
	if initial <= 0 || max <= 0 {
		return 0
	}
	d := initial
	for i := 1; i < attempt; i++ {
		if d >= max || d > math.MaxInt64/2 {
			return max
		}
		d *= 2
	}
	return min(d, max)
}

// Kind is what an attempt came to, in the terms of SPEC §4's table.
type Kind int

const (
	// Success: a 2xx answer.
	Success Kind = iota
	// NotReady: back-pressure (429, connection refused, DNS failure); not
	// an attempt.
	NotReady
	// Retryable: a failed attempt, retried while attempts last (500, 502,
	// 503, 504, a timeout, a lost lease).
	Retryable
	// Failed: a failure that ends the request at once.
	Failed
	// Stopped: the attempt was cut off by a stop; handed back uncounted.
	Stopped
)

// Attempt is what the policy knows of the attempt that ended.
type Attempt struct {
	// Number is the attempt's number, 1-based, as the claim counted it.
	Number, MaxAttempts    int
	InitialDelay, MaxDelay time.Duration
}

// Answer is how the attempt ended.
type Answer struct {
	Kind Kind
	// RetryAfter is the model's Retry-After header, "" when none.
	RetryAfter string
}

// Decision is what becomes of the request.
type Decision struct {
	// Again: back to QUEUED, due after Delay; otherwise final.
	Again bool
	Delay time.Duration
	// Uncount takes the attempt back: it was not one (back-pressure, a
	// hand-back).
	Uncount bool
}

// Policy holds the settings of the decisions; its zero value is usable.
type Policy struct {
	// BackpressureDelay defaults to BackpressureDelayDefault.
	BackpressureDelay time.Duration
	// BackpressureMin defaults to BackpressureMinDefault.
	BackpressureMin time.Duration
}

// Decide says what follows answer a, at time now (for a Retry-After date):
//
//   - Success and Failed: final.
//   - NotReady: again, uncounted, after the model's Retry-After, else
//     BackpressureDelay; never sooner than BackpressureMin.
//   - Retryable: again after Backoff while attempts remain, else final. A
//     Retry-After (a 503's) lengthens the wait, never shortens it, up to
//     RetryAfterMax.
//   - Stopped: again at once, uncounted.
func (p Policy) Decide(at Attempt, a Answer, now time.Time) Decision {
	switch a.Kind {
	case NotReady:
		floor := p.BackpressureMin
		if floor <= 0 {
			floor = BackpressureMinDefault
		}
		d := p.BackpressureDelay
		if d <= 0 {
			d = BackpressureDelayDefault
		}
		if after, ok := retryafter.Parse(a.RetryAfter, now, RetryAfterMax); ok {
			d = after
		}
		return Decision{Again: true, Uncount: true, Delay: max(d, floor)}
	case Retryable:
		if at.Number >= at.MaxAttempts {
			return Decision{}
		}
		d := Backoff(at.Number, at.InitialDelay, at.MaxDelay)
		if after, ok := retryafter.Parse(a.RetryAfter, now, RetryAfterMax); ok {
			d = max(d, after)
		}
		return Decision{Again: true, Delay: d}
	case Stopped:
		return Decision{Again: true, Uncount: true}
	}
	return Decision{}
}

// Lost decides for an attempt whose processor was lost (its lease ran
// out): a failed attempt, retried after Backoff while attempts remain.
func Lost(at Attempt) Decision {
	return Policy{}.Decide(at, Answer{Kind: Retryable}, time.Time{})
}
