package probe_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/probe"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// proxy forwards TCP to Postgres and can be cut and restored, standing in
// for a database that goes away and comes back.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.setDown(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.down {
				p.mu.Unlock()
				c.Close()
				continue
			}
			up, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

func TestProbe(t *testing.T) {
	t.Parallel()

	setup := func(t *testing.T) (*httptest.Server, *proxy, *postgres.DB) {
		t.Helper()
		u, err := url.Parse(pgtest.URL(t))
		if err != nil {
			t.Fatal(err)
		}
		p := newProxy(t, u.Host)
		u.Host = p.ln.Addr().String()
		pg, err := postgres.Open(context.Background(), u.String(), 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pg.Close)
		reg := prometheus.NewRegistry()
		reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "probe_test_total", Help: "x"}))
		srv := httptest.NewServer(probe.New(pg, reg))
		t.Cleanup(srv.Close)
		return srv, p, pg
	}

	get := func(t *testing.T, url string) (int, string) {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	t.Run("ReadyzFollowsDatabase", func(t *testing.T) {
		t.Parallel()
		srv, p, _ := setup(t)
		if code, body := get(t, srv.URL+"/readyz"); code != http.StatusOK {
			t.Fatalf("readyz with database up = %d %s", code, body)
		}
		p.setDown(true)
		code, body := get(t, srv.URL+"/readyz")
		if code != http.StatusServiceUnavailable {
			t.Fatalf("readyz with database down = %d %s", code, body)
		}
		var v map[string]string
		if err := json.Unmarshal([]byte(body), &v); err != nil || v["status"] != "unavailable" {
			t.Errorf("body = %s", body)
		}
		if code, _ := get(t, srv.URL+"/healthz"); code != http.StatusOK {
			t.Errorf("healthz with database down = %d", code)
		}
		p.setDown(false)
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, body = get(t, srv.URL+"/readyz")
			if code == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("readyz did not recover: %d %s", code, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("ReadyzNeedsMigrations", func(t *testing.T) {
		t.Parallel()
		srv, _, pg := setup(t)
		if _, err := pg.Pool.Exec(context.Background(), `DELETE FROM schema_migrations`); err != nil {
			t.Fatal(err)
		}
		code, body := get(t, srv.URL+"/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "migration") {
			t.Fatalf("readyz on an unmigrated database = %d %s", code, body)
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		t.Parallel()
		srv, _, _ := setup(t)
		code, body := get(t, srv.URL+"/metrics")
		if code != http.StatusOK || !strings.Contains(body, "probe_test_total 0") {
			t.Fatalf("metrics = %d %s", code, body)
		}
	})
}
