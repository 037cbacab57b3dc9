package status

import "net/http"

// NewWithWaiters returns New's handler, the number of long-polls it holds
// open past their first read, whether its LISTEN connection is up, and a
// function that stops that connection.
func NewWithWaiters(o Options) (h http.Handler, waiting func() int, listening func() bool, stop func()) {
	h, s := newHandler(o)
	return h, s.waiters.count, s.waiters.isListening, s.waiters.close
}
