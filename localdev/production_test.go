package localdev_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestProductionProcesses runs make run-server and make run-processor as
// an operator would, with the SSRF guard on: they honour
// WEBHOOK_ALLOW_PRIVATE=false (a metadata or loopback webhook is refused at
// submit, and at dial time by the processor), say so in a warning line
// when it is off, serve their probes and metrics on their own admin ports,
// and answer a slow body with no key at once instead of holding it.
func TestProductionProcesses(t *testing.T) {
	t.Parallel()
	url, _ := seededDatabase(t)
	var received atomic.Int32
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { received.Add(1) }))
	t.Cleanup(receiver.Close)
	hook := receiver.URL + "/webhook" // http://127.0.0.1:...: loopback

	bin := buildAsyncdev(t)
	ports := freePorts(t, 5)
	admin := "http://127.0.0.1:" + ports[1]
	strict := client{api: "http://127.0.0.1:" + ports[0]}
	server := startAsyncdev(t, bin, "server", []string{"DATABASE_URL=" + url, "API_PORT=" + ports[0], "API_ADMIN_PORT=" + ports[1],
		"WEBHOOK_ALLOW_HTTP=true", "WEBHOOK_ALLOW_PRIVATE=false"}, func(*process) bool { return answers(admin + "/readyz") })

	t.Run("SubmitRefusesPrivateWebhooks", func(t *testing.T) {
		for _, endpoint := range []string{"https://169.254.169.254/latest", hook} {
			status, raw := strict.raw(t, http.MethodPost, "/models/example/production/async_predict",
				`{"model_input": 1, "webhook_endpoint": "`+endpoint+`"}`)
			if status < 400 || status > 499 || !strings.Contains(raw, `"field":"webhook_endpoint"`) {
				t.Errorf("submit with webhook %s: %d %s; want a 4xx naming webhook_endpoint", endpoint, status, raw)
			}
		}
	})

	t.Run("WarningLine", func(t *testing.T) {
		logs := server.stderr.String()
		warnings := 0
		for line := range strings.Lines(logs) {
			if strings.Contains(line, "WEBHOOK_ALLOW_") {
				warnings++
				if !strings.Contains(line, "WARN") || !strings.Contains(line, "WEBHOOK_ALLOW_HTTP") || strings.Contains(line, "WEBHOOK_ALLOW_PRIVATE") {
					t.Errorf("warning line %q: want a WARN naming WEBHOOK_ALLOW_HTTP alone", line)
				}
			}
		}
		if warnings != 1 {
			t.Errorf("%d lines warn about webhook settings, want 1:\n%s", warnings, logs)
		}
	})

	t.Run("SlowBodyWithoutKey", func(t *testing.T) {
		// The reproduction (a path with no POST route), and a
		// submit route: refused by routing and by authentication.
		for path, want := range map[string]int{
			"/async_request/x":                         http.StatusMethodNotAllowed,
			"/models/example/production/async_predict": http.StatusUnauthorized,
		} {
			c, err := net.Dial("tcp", "127.0.0.1:"+ports[0])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _ = io.WriteString(c, "POST "+path+" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Second)) // well under API_READ_TIMEOUT's 30 s
			br := bufio.NewReader(c)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("POST %s: no answer to a slow body without a key: %v", path, err)
			}
			_, _ = io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != want || !res.Close {
				t.Errorf("POST %s: status %d, close %v; want %d and Connection: close", path, res.StatusCode, res.Close, want)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("POST %s: after the answer, read %v; want the connection closed", path, err)
			}
		}
	})

	t.Run("AdminPort", func(t *testing.T) {
		if !answers(admin + "/healthz") {
			t.Error("/healthz on API_ADMIN_PORT does not answer 200")
		}
		res, err := http.Get(admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(res.Body)
		res.Body.Close()
		metrics := string(raw)
		for _, want := range []string{
			`http_server_request_duration_seconds_bucket{http_request_method="POST",http_response_status_code="`,
			`http_route="/production/async_predict"`,
			`http_server_open_connections `,
		} {
			if !strings.Contains(metrics, want) {
				t.Errorf("/metrics on API_ADMIN_PORT has no %s", want)
			}
		}
		if strings.Contains(metrics, `http_route="/async_request/x"`) {
			t.Error("a raw path is a route label")
		}
		if answers("http://127.0.0.1:" + ports[0] + "/metrics") {
			t.Error("the API port serves /metrics; it belongs on the admin port")
		}
	})

	// A lax API accepts the loopback webhook, so that the processor,
	// strict, must refuse it when it dials.
	lax := client{api: "http://127.0.0.1:" + ports[2]}
	laxServer := startAsyncdev(t, bin, "server", []string{"DATABASE_URL=" + url, "API_PORT=" + ports[2], "API_ADMIN_PORT=" + ports[3],
		"WEBHOOK_ALLOW_HTTP=true", "WEBHOOK_ALLOW_PRIVATE=true"}, func(*process) bool { return answers("http://127.0.0.1:" + ports[3] + "/readyz") })
	if logs := laxServer.stderr.String(); !strings.Contains(logs, "WEBHOOK_ALLOW_PRIVATE") {
		t.Errorf("a server allowing private webhooks does not warn:\n%s", logs)
	}
	processor := startAsyncdev(t, bin, "processor", []string{"DATABASE_URL=" + url, "PROCESSOR_PORT=" + ports[4],
		"WEBHOOK_ALLOW_HTTP=true", "WEBHOOK_ALLOW_PRIVATE=false", "POLL_INTERVAL=200ms"},
		func(*process) bool { return answers("http://127.0.0.1:" + ports[4] + "/readyz") })

	t.Run("ProcessorRefusesPrivateWebhooks", func(t *testing.T) {
		id := lax.submit(t, "/models/example/production/async_predict", `{"model_input": "x", "webhook_endpoint": "`+hook+`"}`)
		status := lax.finalStatus(t, id)
		if status["status"] != "WEBHOOK_FAILED" || status["webhook_status"] != "FAILED" {
			t.Errorf("status %v; want WEBHOOK_FAILED, the webhook refused at dial time", status)
		}
		if n := received.Load(); n != 0 {
			t.Errorf("the loopback receiver got %d webhooks from a processor with WEBHOOK_ALLOW_PRIVATE=false", n)
		}
	})

	for _, p := range []*process{server, laxServer, processor} {
		p.stop(t)
	}
}

// raw sends a JSON request with the API key and returns the status and
// the body as text.
func (d client) raw(t *testing.T, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, d.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Api-Key "+testAPIKey)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(raw)
}
