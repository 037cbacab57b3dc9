// Package retryafter reads the Retry-After header of an HTTP answer, which
// the processor honours from a model and the deliverer from a webhook
// receiver.
package retryafter

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Parse reads a Retry-After value, delay-seconds or an HTTP-date, as a delay
// from now, capped at limit. It reports false, with zero, for an absent or
// unreadable value (a negative or fractional number, or anything else); a
// date in the past is a zero delay.
func Parse(v string, now time.Time, limit time.Duration) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	secs, err := strconv.ParseUint(v, 10, 64)
	switch {
	case errors.Is(err, strconv.ErrRange) || (err == nil && secs > uint64(limit/time.Second)):
		return limit, true
	case err == nil:
		return min(time.Duration(secs)*time.Second, limit), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	return min(max(0, t.Sub(now)), limit), true
}
