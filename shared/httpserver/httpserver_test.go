package httpserver_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpserver"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// stall bounds how long a test waits on a server that does not answer;
// reaching it means the behaviour under test is missing.
const stall = 20 * time.Second

// limits are generous timeouts, so that what a test sees is not a timeout
// unless it sets one.
var limits = config.APIServer{
	ReadHeaderTimeout: time.Minute, ReadTimeout: time.Minute, WriteTimeout: time.Minute, IdleTimeout: time.Minute,
	MaxHeaderBytes: 64 << 10, MaxConns: 1000,
}

// start serves h with l on a loopback port until the test ends.
func start(t *testing.T, l config.APIServer, h http.Handler, overloaded http.Handler) (*httpserver.Server, string) {
	t.Helper()
	return startWith(t, httpserver.Options{Handler: h, Limits: l, Overloaded: overloaded})
}

func startWith(t *testing.T, o httpserver.Options) (*httpserver.Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := httpserver.New(o)
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return s, ln.Addr().String()
}

// refuse answers 401 without reading the body, as a missing API key is.
var refuse = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, `{"error":"unauthorized"}`)
})

// slowBody sends a request header promising 100 bytes of body, and one.
func slowBody(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, err = io.WriteString(c, "POST /async_request/x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(stall))
	return c
}

// TestUnreadBody checks that a request answered without reading its body
// (a slow one, with no key) gets its answer at once, with Connection:
// close, and that the connection is then closed: net/http alone would
// first wait for the rest of the body, for as long as the read timeout.
func TestUnreadBody(t *testing.T) {
	t.Parallel()
	_, addr := start(t, limits, refuse, nil)
	c := slowBody(t, addr)
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to a slow body refused without reading it: %v", err)
	}
	_, _ = io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized || !res.Close {
		t.Errorf("status %d, Connection %q; want 401 and close", res.StatusCode, res.Header.Get("Connection"))
	}
	if b, err := br.ReadByte(); err == nil {
		rest, _ := br.Peek(br.Buffered())
		t.Errorf("the server sent more after its answer (%q); want the connection closed", string(b)+string(rest))
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("the connection stayed open after the answer")
	}
}

// TestSlowBodyReadTimeout checks that a body that never finishes, sent
// to a handler that reads it, is cut at the read timeout.
func TestSlowBodyReadTimeout(t *testing.T) {
	t.Parallel()
	l := limits
	l.ReadTimeout = time.Second
	read := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			http.Error(w, "body not read", http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	_, addr := start(t, l, read, nil)
	c := slowBody(t, addr)
	_, err := io.ReadAll(c) // an answer or not, the server must end the connection
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection was still open after %v with a read timeout of %v", stall, l.ReadTimeout)
	}
}

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(entries)
}

// TestConnectionCap opens 2,000 connections that send half a request
// header and wait, and checks that the server holds at most its cap of
// them (counted in /proc/self/fd, where the clients' own 2,000 sockets
// also are) and still serves a well-behaved client at once.
func TestConnectionCap(t *testing.T) {
	// Not parallel: the descriptor count is of the whole test process.
	const slow, maxConns = 2000, 100
	l := limits
	l.MaxConns = maxConns
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	const evictAfter = 100 * time.Millisecond
	m := telemetry.NewMetrics(prometheus.NewRegistry())
	s, addr := startWith(t, httpserver.Options{Handler: ok, Limits: l, EvictAfter: evictAfter, Metrics: m})

	before := openFDs(t)
	for i := range slow {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		// Evicted connections may already be closed by the server; the
		// write may fail, which is the point.
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
	}
	// Once the server has taken every slow one from the backlog (each is
	// held or shed), they have all been silent for long enough to be
	// closed to make room.
	deadline := time.Now().Add(stall)
	for shed(t, m)+s.Open() < slow && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(2 * evictAfter)

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: stall}
	res, err := client.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("a well-behaved client behind %d slow ones: %v", slow, err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || string(body) != "ok" {
		t.Errorf("a well-behaved client got %d %q, want 200 ok", res.StatusCode, body)
	}

	// The clients hold slow descriptors; the server may hold maxConns
	// more, plus a few for the runtime.
	const slack = 20
	if grown := openFDs(t) - before; grown > slow+maxConns+slack {
		t.Errorf("descriptors grew by %d for %d slow clients; want at most %d (the clients' own plus the cap of %d)",
			grown, slow, slow+maxConns+slack, maxConns)
	}
	if n := s.Open(); n > maxConns {
		t.Errorf("the server holds %d connections, over its cap of %d", n, maxConns)
	}
}

// shed is the number of connections m counted as shed, for any reason.
func shed(t *testing.T, m *telemetry.Metrics) int {
	t.Helper()
	var n float64
	for _, reason := range []string{"evicted", "refused"} {
		var d dto.Metric
		if err := m.HTTPServerConnectionsShed.WithLabelValues(reason).Write(&d); err != nil {
			t.Fatal(err)
		}
		n += d.GetCounter().GetValue()
	}
	return int(n)
}

// TestConnectionCapBusy checks that when every connection under the cap
// is in a request, a new one gets the overloaded answer and is closed.
func TestConnectionCapBusy(t *testing.T) {
	t.Parallel()
	l := limits
	l.MaxConns = 2
	entered, release := make(chan struct{}, 2), make(chan struct{})
	busy := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-release
	})
	overloaded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":"overloaded"}`)
	})
	_, addr := start(t, l, busy, overloaded)
	defer close(release)
	for range 2 {
		go func() {
			res, err := http.Get("http://" + addr + "/")
			if err == nil {
				res.Body.Close()
			}
		}()
		select {
		case <-entered:
		case <-time.After(stall):
			t.Fatal("a request under the cap was not served")
		}
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(stall))
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a connection over the cap: %v", err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusServiceUnavailable || !res.Close || !strings.Contains(string(body), "overloaded") ||
		res.Header.Get("Retry-After") != "1" {
		t.Errorf("over the cap: %d %v %q (Connection %q); want the overloaded 503 and close",
			res.StatusCode, res.Header, body, res.Header.Get("Connection"))
	}
}

// TestConnectionCapYoung checks that a connection that has not yet had
// EvictAfter to send its header is not closed to make room: the newcomer
// is refused instead.
func TestConnectionCapYoung(t *testing.T) {
	t.Parallel()
	l := limits
	l.MaxConns = 1
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	s, addr := startWith(t, httpserver.Options{Handler: ok, Limits: l, EvictAfter: time.Hour, Overloaded: ok})
	young, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer young.Close()
	deadline := time.Now().Add(stall)
	for s.Open() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(stall))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || !res.Close {
		t.Fatalf("a newcomer at the cap: %v; want the overloaded answer and close", err)
	}
	res.Body.Close()

	// The young connection is still served.
	fmt.Fprint(young, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	_ = young.SetReadDeadline(time.Now().Add(stall))
	res, err = http.ReadResponse(bufio.NewReader(young), nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("the young connection after a newcomer was refused: %v", err)
	}
	res.Body.Close()
}
