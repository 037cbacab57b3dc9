package httpapi

import (
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Rate limit defaults, per organization and API instance, matching the
// configuration's defaults.
const (
	SubmitRateDefault  = 200
	SubmitBurstDefault = 400
	ReadRateDefault    = 100
)

// ReadBurst is the burst allowed to status, cancel and queue reads: two
// seconds' worth, as for submits, and at least 1.
func ReadBurst(perSecond float64) int { return max(1, int(2*perSecond)) }

// RateLimit returns middleware that admits at most perSecond requests per
// organization (from Authenticate, which must run first), with bursts of
// burst, as a token bucket per organization held by this instance. Over the
// limit it answers 429 with Retry-After: the time until a token is free,
// rounded up to whole seconds. now is the clock; nil means time.Now.
func RateLimit(perSecond float64, burst int, now func() time.Time) func(http.Handler) http.Handler {
	if now == nil {
		now = time.Now
	}
	var (
		mu       sync.Mutex
		limiters = map[int64]*rate.Limiter{}
	)
	limiter := func(org int64) *rate.Limiter {
		mu.Lock()
		defer mu.Unlock()
		l, ok := limiters[org]
		if !ok {
			l = rate.NewLimiter(rate.Limit(perSecond), max(1, burst))
			limiters[org] = l
		}
		return l
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			l := limiter(OrganizationID(r.Context()))
			t := now()
			res := l.ReserveN(t, 1)
			if delay := res.DelayFrom(t); delay > 0 {
				res.CancelAt(t)
				e := *ErrRateLimited
				e.RetryAfter = delay
				WriteError(w, r, nil, &e)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
