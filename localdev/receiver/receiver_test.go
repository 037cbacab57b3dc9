package receiver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/localdev/receiver"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/webhook"
)

const (
	secret      = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	otherSecret = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXkhIQ=="
)

type fixture struct {
	srv  *httptest.Server
	recv *receiver.Receiver
	logs *apitest.Buffer
}

func setup(t *testing.T, o receiver.Options) fixture {
	t.Helper()
	logs := &apitest.Buffer{}
	o.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	r := receiver.New(o)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	return fixture{srv: srv, recv: r, logs: logs}
}

// post sends body to path signed with secrets (none: unsigned) and returns
// the status.
func (f fixture) post(t *testing.T, path string, body []byte, secrets []string, tamper func(http.Header)) int {
	t.Helper()
	return f.postSigned(t, path, body, body, secrets, tamper)
}

// postSigned sends body with the signatures of signed.
func (f fixture) postSigned(t *testing.T, path string, body, signed []byte, secrets []string, tamper func(http.Header)) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if len(secrets) > 0 {
		h, err := webhook.Signer{Secrets: secrets, Compat: true}.Headers("0190f5b0c2a87d3e9b1f4c6a2d8e0f11", "0190f5b0c2a87d3e9b1f4c6a2d8e0f11", time.Now(), signed)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = h
	}
	req.Header.Set("Content-Type", "application/json")
	if tamper != nil {
		tamper(req.Header)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

func (f fixture) list(t *testing.T) []receiver.Webhook {
	t.Helper()
	resp, err := http.Get(f.srv.URL + "/webhooks")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /webhooks = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var out []receiver.Webhook
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReceiver(t *testing.T) {
	t.Parallel()
	// The body has characters a JSON re-encoding would change, so an exact
	// round trip shows the raw body is kept.
	body := []byte(`{"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11", "data": {"a":"<b>&é"}}`)

	t.Run("VerifiesBothSchemes", func(t *testing.T) {
		t.Parallel()
		f := setup(t, receiver.Options{Secrets: []string{secret}})
		if code := f.post(t, "/webhook", body, []string{secret}, nil); code != http.StatusOK {
			t.Fatalf("status = %d", code)
		}
		got := f.list(t)
		if len(got) != 1 {
			t.Fatalf("got %d webhooks", len(got))
		}
		h := got[0]
		if !h.Verified || !h.Standard || !h.Compat || h.VerifyError != "" {
			t.Errorf("verified=%v standard=%v compat=%v err=%q", h.Verified, h.Standard, h.Compat, h.VerifyError)
		}
		if h.Body != string(body) {
			t.Errorf("body = %q, want %q", h.Body, body)
		}
		if h.Headers["Webhook-Id"] != "0190f5b0c2a87d3e9b1f4c6a2d8e0f11" || h.Headers["X-Baseten-Signature"] == "" ||
			h.Headers["Content-Type"] != "application/json" {
			t.Errorf("headers = %v", h.Headers)
		}
		if h.Path != "/webhook" || time.Since(h.ReceivedAt) > time.Hour || h.ReceivedAt.IsZero() {
			t.Errorf("path %q received_at %v", h.Path, h.ReceivedAt)
		}
		logs := f.logs.String()
		if !strings.Contains(logs, `"request_id":"0190f5b0c2a87d3e9b1f4c6a2d8e0f11"`) || !strings.Contains(logs, `"verified":true`) {
			t.Errorf("log line = %s", logs)
		}
		if strings.Contains(logs, h.Headers["Webhook-Signature"]) || strings.Contains(logs, secret) {
			t.Error("a signature or secret was logged")
		}
	})

	t.Run("Unverified", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name    string
			secrets []string
			tamper  func(http.Header)
			body    []byte
			want    error
		}{
			{name: "WrongSecret", secrets: []string{otherSecret}, want: webhook.ErrNoMatchingSignature},
			{name: "Unsigned", want: webhook.ErrMissingHeaders},
			{name: "TamperedBody", secrets: []string{secret}, body: []byte(`{"request_id":"forged"}`), want: webhook.ErrNoMatchingSignature},
			{name: "StaleTimestamp", secrets: []string{secret}, want: webhook.ErrBadTimestamp, tamper: func(h http.Header) {
				h.Set(webhook.HeaderTimestamp, "1000000000")
			}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				f := setup(t, receiver.Options{Secrets: []string{secret}})
				sent := body // signed: always body
				if tt.body != nil {
					sent = tt.body
				}
				if code := f.postSigned(t, "/webhook", sent, body, tt.secrets, tt.tamper); code != http.StatusOK {
					t.Fatalf("status = %d, want 200 even when not verified", code)
				}
				got := f.list(t)
				if len(got) != 1 || got[0].Verified {
					t.Fatalf("got %+v, want one unverified webhook", got)
				}
				if got[0].VerifyError == "" || !strings.Contains(got[0].VerifyError, tt.want.Error()) {
					t.Errorf("verify_error = %q, want it to say %q", got[0].VerifyError, tt.want)
				}
				if !strings.Contains(f.logs.String(), `"verified":false`) {
					t.Errorf("log = %s", f.logs.String())
				}
			})
		}
	})

	t.Run("RotationAndSecretsFunc", func(t *testing.T) {
		t.Parallel()
		var mu sync.Mutex
		current := []string{secret}
		f := setup(t, receiver.Options{Secrets: []string{"whsec_aWdub3JlZA=="}, SecretsFunc: func(context.Context) ([]string, error) {
			mu.Lock()
			defer mu.Unlock()
			return current, nil
		}})
		f.post(t, "/webhook", body, []string{otherSecret, secret}, nil) // signed by both during a rotation
		mu.Lock()
		current = []string{otherSecret}
		mu.Unlock()
		f.post(t, "/webhook", body, []string{secret}, nil) // the receiver moved on
		got := f.list(t)
		if len(got) != 2 || got[0].Verified || !got[1].Verified {
			t.Fatalf("got verified newest-first = %v, %v; want false, true", got[0].Verified, got[1].Verified)
		}
	})

	t.Run("SecretsFuncError", func(t *testing.T) {
		t.Parallel()
		f := setup(t, receiver.Options{SecretsFunc: func(context.Context) ([]string, error) {
			return nil, errors.New("database down")
		}})
		f.post(t, "/webhook", body, []string{secret}, nil)
		if got := f.list(t); len(got) != 1 || got[0].Verified {
			t.Fatalf("got %+v", got)
		}
	})

	t.Run("Paths", func(t *testing.T) {
		t.Parallel()
		f := setup(t, receiver.Options{Secrets: []string{secret}})
		tests := []struct {
			method, path string
			want         int
		}{
			{http.MethodPost, "/webhook", http.StatusOK},
			{http.MethodPost, "/webhook/", http.StatusOK},
			{http.MethodPost, "/webhook/orders/42", http.StatusOK},
			{http.MethodPost, "/webhooks", http.StatusMethodNotAllowed},
			{http.MethodGet, "/webhook", http.StatusMethodNotAllowed},
			{http.MethodPost, "/other", http.StatusNotFound},
		}
		for _, tt := range tests {
			req, _ := http.NewRequest(tt.method, f.srv.URL+tt.path, strings.NewReader("{}"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.want)
			}
		}
		got := f.list(t)
		if len(got) != 3 || got[0].Path != "/webhook/orders/42" || got[2].Path != "/webhook" {
			t.Errorf("kept %d webhooks, paths newest first %+v", len(got), got)
		}
	})

	t.Run("RingNewestFirst", func(t *testing.T) {
		t.Parallel()
		f := setup(t, receiver.Options{Secrets: []string{secret}, Capacity: 3})
		if got := f.list(t); got == nil || len(got) != 0 {
			t.Fatalf("empty receiver lists %v, want []", got)
		}
		for i := range 5 {
			f.post(t, "/webhook", []byte(`{"n":`+string(rune('0'+i))+`}`), []string{secret}, nil)
		}
		got := f.list(t)
		var bodies []string
		for _, h := range got {
			bodies = append(bodies, h.Body)
		}
		if strings.Join(bodies, " ") != `{"n":4} {"n":3} {"n":2}` {
			t.Errorf("bodies = %v, want the last three newest first", bodies)
		}
	})

	t.Run("BodyTooLarge", func(t *testing.T) {
		t.Parallel()
		f := setup(t, receiver.Options{Secrets: []string{secret}})
		big := bytes.Repeat([]byte("a"), receiver.MaxBodyBytes+1)
		if code := f.post(t, "/webhook", big, nil, nil); code != http.StatusRequestEntityTooLarge {
			t.Errorf("status = %d, want 413", code)
		}
		if got := f.list(t); len(got) != 0 {
			t.Errorf("kept %d webhooks", len(got))
		}
		atLimit := bytes.Repeat([]byte("a"), receiver.MaxBodyBytes)
		if code := f.post(t, "/webhook", atLimit, []string{secret}, nil); code != http.StatusOK {
			t.Errorf("1 MiB body: status = %d", code)
		}
		if got := f.list(t); len(got) != 1 || !got[0].Verified || len(got[0].Body) != receiver.MaxBodyBytes {
			t.Errorf("1 MiB body not kept whole and verified")
		}
	})
}
