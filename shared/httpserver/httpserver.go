// Package httpserver is the API's HTTP server in a long-running process
// (make run-server, make dev): an http.Server with a timeout on every phase
// of a request and a bounded header, behind a listener that caps open
// connections, so slow or abandoned clients cost a bounded number of file
// descriptors and bytes. A Lambda function has no server of its own and
// does not use it.
package httpserver

import (
	"bytes"
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// ShedWriteTimeoutDefault bounds writing the 503 to a connection refused at
// the cap. The answer fits in a fresh socket's buffer, so this only guards
// against the unexpected.
const ShedWriteTimeoutDefault = 100 * time.Millisecond

// EvictAfterDefault is how long a connection must have been open without
// completing a request header before the cap may close it to make room: an
// honest client sends its header at once, so a connection still silent
// after this is slow or abandoned, while a younger one may simply not have
// been read yet.
const EvictAfterDefault = time.Second

// ShedLogIntervalDefault is how often, at most, shedding is logged.
const ShedLogIntervalDefault = 10 * time.Second

// Options configure New.
type Options struct {
	// Handler serves the requests. New wraps it with CloseUnread.
	Handler http.Handler
	// Limits are the timeouts, the header bound and the connection cap.
	Limits config.APIServer
	// Overloaded answers a connection refused at the cap; it is called
	// once, by New, and its answer is sent as it is, followed by a close.
	// Nil closes such connections without an answer.
	Overloaded http.Handler
	// Logger logs shedding and the server's own errors. Default
	// slog.Default.
	Logger *slog.Logger
	// Metrics, when set, counts open and shed connections.
	Metrics *telemetry.Metrics
	// EvictAfter is how long a connection must have been silent to be
	// closed to make room. Default EvictAfterDefault.
	EvictAfter time.Duration
}

// Server is an http.Server whose Serve caps open connections.
type Server struct {
	*http.Server
	conns *conns
}

// New returns a server with o's limits. At the connection cap, an accepted
// connection makes room by closing the connection that has been idle, or
// open for EvictAfter without completing a request header, the longest;
// when there is none (every connection is in a request, or new), the new
// one gets o.Overloaded's answer and is closed.
// Either way the process never holds more than Limits.MaxConns
// connections, whatever clients do.
func New(o Options) *Server {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &conns{
		max:     o.Limits.MaxConns,
		evict:   cmp.Or(o.EvictAfter, EvictAfterDefault),
		open:    map[*conn]connState{},
		log:     log,
		metrics: o.Metrics,
	}
	if o.Overloaded != nil {
		c.shed = render(o.Overloaded)
	}
	s := &http.Server{
		Handler:           CloseUnread(o.Handler),
		ReadHeaderTimeout: o.Limits.ReadHeaderTimeout,
		ReadTimeout:       o.Limits.ReadTimeout,
		WriteTimeout:      o.Limits.WriteTimeout,
		IdleTimeout:       o.Limits.IdleTimeout,
		MaxHeaderBytes:    o.Limits.MaxHeaderBytes,
		ConnState:         c.setState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return &Server{Server: s, conns: c}
}

// Serve serves connections from l, at most Limits.MaxConns at once.
func (s *Server) Serve(l net.Listener) error {
	return s.Server.Serve(&listener{Listener: l, conns: s.conns})
}

// Open returns the number of connections the server holds.
func (s *Server) Open() int {
	s.conns.mu.Lock()
	defer s.conns.mu.Unlock()
	return len(s.conns.open)
}

// CloseUnread returns next, answering with "Connection: close" any request
// whose body next answers without reading to its end (unknown routes,
// wrong methods, missing keys, limits), and closing the connection once the
// answer is sent: net/http would otherwise read up to 256 KiB of the unread
// body before sending the answer, waiting on a slow client until the read
// timeout, and keep the connection for more.
func CloseUnread(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		b := &body{ReadCloser: r.Body}
		r.Body = b
		cw := &closeWriter{ResponseWriter: w, body: b}
		next.ServeHTTP(cw, r)
		if cw.closing {
			// net/http still reads what is left of the body (up to 256
			// KiB) after the answer, before closing: end that read now.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		}
	})
}

// body notes whether its reader reached the end.
type body struct {
	io.ReadCloser
	eof atomic.Bool
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil {
		b.eof.Store(true) // EOF, or an error after which nothing more is read
	}
	return n, err
}

// closeWriter adds "Connection: close" to an answer sent before its
// request's body was read.
type closeWriter struct {
	http.ResponseWriter
	body        *body
	wroteHeader bool
	closing     bool // Connection: close was added
}

func (w *closeWriter) WriteHeader(status int) {
	if !w.wroteHeader && status >= 200 {
		w.wroteHeader = true
		if !w.body.eof.Load() {
			w.Header().Set("Connection", "close")
			w.closing = true
		}
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *closeWriter) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

// Flush lets a long-poll flush through the wrapper.
func (w *closeWriter) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *closeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// connState is what the cap knows of an open connection: its net/http
// state and since when.
type connState struct {
	state http.ConnState
	since time.Time
}

// conns tracks the open connections of one server.
type conns struct {
	max     int
	evict   time.Duration // see EvictAfterDefault
	shed    []byte        // the raw answer to a refused connection; nil closes it silently
	log     *slog.Logger
	metrics *telemetry.Metrics

	mu      sync.Mutex
	open    map[*conn]connState
	lastLog time.Time
}

// admit makes room for c if the cap is reached, and reports whether c
// may be served.
func (cs *conns) admit(c *conn) bool {
	for {
		cs.mu.Lock()
		if len(cs.open) < cs.max {
			cs.open[c] = connState{state: http.StateNew, since: time.Now()}
			n := len(cs.open)
			cs.mu.Unlock()
			cs.gauge(n)
			return true
		}
		victim := cs.evictableLocked()
		cs.mu.Unlock()
		if victim == nil {
			cs.note("refused")
			return false
		}
		// Closing it makes net/http's reader fail, which ends its
		// goroutine; the conn leaves open now, in Close.
		_ = victim.Close()
		cs.note("evicted")
	}
}

// evictableLocked returns the connection idle, or open for cs.evict
// without a request header, for the longest time; nil when there is none.
// cs.mu must be held.
func (cs *conns) evictableLocked() *conn {
	var oldest *conn
	var since time.Time
	silent := time.Now().Add(-cs.evict)
	for c, st := range cs.open {
		if st.state != http.StateIdle && (st.state != http.StateNew || st.since.After(silent)) {
			continue
		}
		if oldest == nil || st.since.Before(since) {
			oldest, since = c, st.since
		}
	}
	return oldest
}

// setState is the server's ConnState hook.
func (cs *conns) setState(nc net.Conn, state http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	if state == http.StateClosed {
		cs.remove(c)
		return
	}
	cs.mu.Lock()
	if _, open := cs.open[c]; open {
		cs.open[c] = connState{state: state, since: time.Now()}
	}
	cs.mu.Unlock()
}

func (cs *conns) remove(c *conn) {
	cs.mu.Lock()
	_, open := cs.open[c]
	delete(cs.open, c)
	n := len(cs.open)
	cs.mu.Unlock()
	if open {
		cs.gauge(n)
	}
}

func (cs *conns) gauge(n int) {
	if cs.metrics != nil {
		cs.metrics.HTTPServerConnections.Set(float64(n))
	}
}

// note counts a shed connection and logs shedding, at most once per
// ShedLogIntervalDefault.
func (cs *conns) note(reason string) {
	if cs.metrics != nil {
		cs.metrics.HTTPServerConnectionsShed.WithLabelValues(reason).Inc()
	}
	cs.mu.Lock()
	now := time.Now()
	logIt := now.Sub(cs.lastLog) >= ShedLogIntervalDefault
	if logIt {
		cs.lastLog = now
	}
	cs.mu.Unlock()
	if logIt {
		cs.log.Warn("API connection cap reached: closing idle or silent connections, refusing new ones when all are busy",
			"max_conns", cs.max, "reason", reason)
	}
}

// refuse answers a connection refused at the cap and closes it.
func (cs *conns) refuse(nc net.Conn) {
	if cs.shed != nil {
		_ = nc.SetWriteDeadline(time.Now().Add(ShedWriteTimeoutDefault))
		_, _ = nc.Write(cs.shed)
	}
	_ = nc.Close()
}

// listener admits accepted connections into conns, refusing those past
// the cap at once.
type listener struct {
	net.Listener
	conns *conns
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		c := &conn{Conn: nc, conns: l.conns}
		if l.conns.admit(c) {
			return c, nil
		}
		l.conns.refuse(nc)
	}
}

// conn leaves its conns when closed.
type conn struct {
	net.Conn
	conns *conns
	once  sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.conns.remove(c) })
	return err
}

// render returns h's answer to a bare GET as raw HTTP/1.1 bytes, with
// "Connection: close".
func render(h http.Handler) []byte {
	rec := &recorder{header: http.Header{}}
	r, err := http.NewRequest(http.MethodGet, "/", nil)
	if err != nil {
		panic(err) // a constant request
	}
	h.ServeHTTP(rec, r)
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	rec.header.Set("Connection", "close")
	rec.header.Set("Content-Length", strconv.Itoa(rec.body.Len()))
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	_ = rec.header.Write(&b)
	b.WriteString("\r\n")
	b.Write(rec.body.Bytes())
	return b.Bytes()
}

// recorder keeps an answer in memory.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(p)
}
func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}
