package deliverwebhook

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/openasync/asyncrequest/shared/retryafter"
	"github.com/openasync/asyncrequest/shared/safehttp"
)

// ScheduleDefault is the delay before each delivery attempt when the
// configuration gives none: at once, then after 5 s, 30 s, 2 min, 10 min and
// 30 min, six attempts spread over about 43 minutes.
var ScheduleDefault = []time.Duration{0, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute, 30 * time.Minute}

// JitterFraction is how far a retry delay may move either way, as a
// fraction of the delay: ±10 %, so that webhooks that failed together (a
// receiver that went down) do not all come back in the same instant.
const JitterFraction = 0.1

// RetryAfterMax caps a receiver's Retry-After, so that a receiver cannot
// park a webhook (and its stored output) for days.
const RetryAfterMax = time.Hour

// NextDelay returns how long to wait before the next delivery attempt after
// attempts attempts have failed, and false when the schedule is exhausted.
//
// schedule[i] is the delay before attempt i (0-based), so the schedule's
// length is the number of attempts, and the delay after the n-th failed
// attempt is schedule[n]. The first entry is the delay before the first
// attempt: the writer of the outbox row decides when that is due (the
// processor makes it due at once), so NextDelay never returns it.
//
// jitter, in [-1, 1], moves the delay by up to JitterFraction of itself:
// delay * (1 + JitterFraction*jitter). Callers pass a uniform random value;
// tests pass fixed ones.
//
// With the default schedule (0s, 5s, 30s, 2m, 10m, 30m) and no jitter:
//
//	attempts failed  1   2    3   4    5    6
//	next delay       5s  30s  2m  10m  30m  exhausted
func NextDelay(schedule []time.Duration, attempts int, jitter float64) (time.Duration, bool) {
	if attempts < 1 {
		attempts = 1
	}
	if attempts >= len(schedule) {
		return 0, false
	}
	jitter = max(-1, min(1, jitter))
	base := schedule[attempts]
	return time.Duration(float64(base) * (1 + JitterFraction*jitter)), true
}

// verdict is what one attempt's answer means.
type verdict int

const (
	verdictSuccess verdict = iota // 2xx: delivered
	verdictRetry                  // try again on the schedule
	verdictFail                   // never try again
)

func (v verdict) String() string {
	switch v {
	case verdictSuccess:
		return "success"
	case verdictRetry:
		return "retry"
	default:
		return "failed"
	}
}

// classification is an attempt's verdict with what the outbox records.
type classification struct {
	verdict verdict
	// reason is the outbox row's last_error: the status or the error.
	reason string
	// retryAfter is the receiver's Retry-After, capped at RetryAfterMax;
	// zero when absent.
	retryAfter time.Duration
}

// classify judges one attempt per SPEC §6 from its response (nil when the
// request failed) or its error: 2xx succeeds; network errors, timeouts, 408,
// 429 and 5xx are retried (429 and 503 honouring Retry-After); 3xx fails,
// since redirects are never followed; every other status fails at once, and
// so does a connection refused because the address is not public.
func classify(resp *http.Response, err error, now time.Time) classification {
	if err != nil {
		if errors.Is(err, safehttp.ErrBlockedAddress) {
			return classification{verdict: verdictFail, reason: "webhook_endpoint resolves to a non-public address: " + describeSendError(err)}
		}
		return classification{verdict: verdictRetry, reason: describeSendError(err)}
	}
	code := resp.StatusCode
	reason := fmt.Sprintf("receiver answered %d %s", code, http.StatusText(code))
	switch {
	case code >= 200 && code < 300:
		return classification{verdict: verdictSuccess}
	case code >= 300 && code < 400:
		return classification{verdict: verdictFail, reason: reason + " (redirects are not followed)"}
	case code == http.StatusTooManyRequests, code == http.StatusServiceUnavailable:
		after, _ := retryafter.Parse(resp.Header.Get("Retry-After"), now, RetryAfterMax)
		return classification{verdict: verdictRetry, reason: reason, retryAfter: after}
	case code == http.StatusRequestTimeout, code >= 500:
		return classification{verdict: verdictRetry, reason: reason}
	default:
		return classification{verdict: verdictFail, reason: reason}
	}
}
