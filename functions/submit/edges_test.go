package submit_test

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
)

// TestSubmitRepeatedHeaders checks that a submit sending Authorization or
// Idempotency-Key twice is refused, naming the header, and writes nothing:
// net/http would silently take the first.
func TestSubmitRepeatedHeaders(t *testing.T) {
	t.Parallel()
	for _, header := range []string{"Authorization", "Idempotency-Key"} {
		t.Run(strings.ReplaceAll(header, "-", ""), func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			r := httptest.NewRequest("POST", "/production/async_predict", strings.NewReader(`{"model_input": 1}`))
			r.Host = "model-m1.api.example.com"
			r.Header.Set("Authorization", "Api-Key "+b.key)
			r.Header.Set("Idempotency-Key", "k-1")
			r.Header.Add(header, r.Header.Get(header)) // the same value twice: still ambiguous
			rec := httptest.NewRecorder()
			b.h.ServeHTTP(rec, r)
			want := httpapi.RepeatedHeader(header)
			apitest.CheckError(t, rec, want.Status, want.Code, header)
			if n := b.rows(); n != 0 {
				t.Errorf("%d rows written", n)
			}
		})
	}
}

// TestSubmitWebhookEncoding checks that a webhook_endpoint that is not
// valid UTF-8 is refused rather than stored with U+FFFD in its place, and
// that "" means no webhook, as null does.
func TestSubmitWebhookEncoding(t *testing.T) {
	t.Parallel()
	const host, path = "model-m1.api.example.com", "/production/async_predict"
	for _, tt := range []struct{ name, endpoint string }{
		{"InvalidByte", "https://hooks.example.com/a\xffb"},
		{"TruncatedSequence", "https://hooks.example.com/\xe2\x82"},
		{"LoneSurrogateEscape", `https://hooks.example.com/\ud800`},
		{"ReplacementCharacter", "https://hooks.example.com/\uFFFD"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			rec := b.do("POST", host, path, `{"model_input": 1, "webhook_endpoint": "`+tt.endpoint+`"}`)
			apitest.CheckError(t, rec, httpapi.ErrInvalid.Status, httpapi.ErrInvalid.Code, "webhook_endpoint")
			if n := b.rows(); n != 0 {
				t.Errorf("%d rows written", n)
			}
		})
	}
	t.Run("NonASCIIPath", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := created(t, b.do("POST", host, path, `{"model_input": 1, "webhook_endpoint": "https://hooks.example.com/café"}`))
		if got := b.row(id).WebhookEndpoint; got != "https://hooks.example.com/café" {
			t.Errorf("stored webhook_endpoint %q", got)
		}
	})
	for _, tt := range []struct{ name, endpoint string }{{"Empty", `""`}, {"Null", `null`}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			id := created(t, b.do("POST", host, path, `{"model_input": 1, "webhook_endpoint": `+tt.endpoint+`}`))
			if r := b.row(id); r.WebhookEndpoint != "" || r.WebhookState != "NO_WEBHOOK_PROVIDED" {
				t.Errorf("webhook_endpoint %q, webhook state %s; want none", r.WebhookEndpoint, r.WebhookState)
			}
		})
	}
}

// TestSubmitHalfClosed sends a submit over TCP and half-closes the
// connection at once, as many scripts do. net/http then cancels the
// request's context; the submit must still be stored exactly once, the
// client must read its 201, and the log must say the client went away,
// not that the database is unavailable.
func TestSubmitHalfClosed(t *testing.T) {
	t.Parallel()
	var logs apitest.Buffer
	b := setup(t, func(o *submit.Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	})
	srv := httptest.NewServer(b.h)
	t.Cleanup(srv.Close)

	const n = 5
	for i := range n {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		body := fmt.Sprintf(`{"model_input": %d}`, i)
		fmt.Fprintf(conn, "POST /models/m1/production/async_predict HTTP/1.1\r\nHost: api.example.com\r\n"+
			"Authorization: Api-Key %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
			b.key, len(body), body)
		if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("submit %d: reading the answer: %v", i, err)
		}
		res.Body.Close()
		conn.Close()
		if res.StatusCode != http.StatusCreated {
			t.Errorf("submit %d: status %d, want %d", i, res.StatusCode, http.StatusCreated)
		}
	}
	if got := b.rows(); got != n {
		t.Errorf("%d rows, want %d (one per submit)", got, n)
	}
	if strings.Contains(logs.String(), "database unavailable") {
		t.Errorf("a departed client was logged as a database outage:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "client went away") {
		t.Errorf("no log line says the client went away:\n%s", logs.String())
	}
}
