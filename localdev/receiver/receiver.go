// Package receiver is the dev harness's local webhook receiver (SPEC §11):
// it accepts webhooks on POST /webhook (and any path under it), verifies
// both signature schemes with the harness's secrets, logs one line per
// webhook, and lists the last ones received on GET /webhooks, so that a
// person or a script can see exactly what a real receiver would get.
package receiver

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openasync/asyncrequest/shared/webhook"
)

const (
	// CapacityDefault is how many webhooks GET /webhooks keeps.
	CapacityDefault = 1000
	// MaxBodyBytes is the largest webhook body accepted; a larger one is
	// answered 413 and not kept.
	MaxBodyBytes = 1 << 20
)

// Options configure a Receiver.
type Options struct {
	// Secrets are the secrets webhooks are verified with; any one may
	// match, as during a rotation.
	Secrets []string
	// SecretsFunc, when set, is asked for the secrets on every webhook
	// instead (the harness reads them from the database, so a rotation is
	// picked up); an error counts as no secrets.
	SecretsFunc func(ctx context.Context) ([]string, error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Capacity defaults to CapacityDefault.
	Capacity int
	// Now is the clock webhook-timestamp is checked against; default
	// time.Now.
	Now func() time.Time
}

// Webhook is one received webhook as GET /webhooks lists it.
type Webhook struct {
	// Path is the path it was posted to.
	Path string `json:"path"`
	// Headers holds every request header under its canonical name, the
	// values of a repeated header joined with ", ".
	Headers map[string]string `json:"headers"`
	// Body is the raw body exactly as received.
	Body string `json:"body"`
	// Verified is true when every signature scheme present verified with
	// one of the secrets (see webhook.Verify).
	Verified bool `json:"verified"`
	// Standard and Compat say which schemes verified.
	Standard bool `json:"standard_verified"`
	Compat   bool `json:"compat_verified"`
	// VerifyError says why verification failed; empty when verified.
	VerifyError string    `json:"verify_error,omitempty"`
	ReceivedAt  time.Time `json:"received_at"`
}

// Receiver is the webhook receiver, an http.Handler.
type Receiver struct {
	secrets     []string
	secretsFunc func(context.Context) ([]string, error)
	log         *slog.Logger
	now         func() time.Time
	mux         *http.ServeMux

	mu   sync.Mutex
	ring []Webhook // ring[next] is the oldest once full
	next int
	full bool
}

// New returns a Receiver.
func New(o Options) *Receiver {
	r := &Receiver{
		secrets:     o.Secrets,
		secretsFunc: o.SecretsFunc,
		log:         cmp.Or(o.Logger, slog.Default()),
		now:         o.Now,
		ring:        make([]Webhook, cmp.Or(max(o.Capacity, 0), CapacityDefault)),
	}
	if r.now == nil {
		r.now = time.Now
	}
	r.mux = http.NewServeMux()
	r.mux.HandleFunc("POST /webhook", r.receive)
	r.mux.HandleFunc("POST /webhook/", r.receive)
	r.mux.HandleFunc("GET /webhooks", r.list)
	return r
}

// ServeHTTP serves POST /webhook, POST /webhook/... and GET /webhooks.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.mux.ServeHTTP(w, req) }

// receive verifies and keeps one webhook. It answers 200 whether or not the
// signatures verified: the harness is for seeing what arrives, and refusing
// would make the deliverer mark the webhook failed and hide its payload;
// "verified" in GET /webhooks and the log line tell the two apart.
func (r *Receiver) receive(w http.ResponseWriter, req *http.Request) {
	body, err := readBody(w, req)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			r.log.Warn("webhook refused: body too large", "path", req.URL.Path, "limit_bytes", MaxBodyBytes)
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "webhook body exceeds 1 MiB")
			return
		}
		writeError(w, http.StatusBadRequest, "unreadable_body", "could not read the webhook body")
		return
	}

	now := r.now()
	secrets := r.secrets
	if r.secretsFunc != nil {
		secrets, err = r.secretsFunc(req.Context())
		if err != nil {
			r.log.Warn("load webhook secrets", "error", err)
			secrets = nil
		}
	}
	res, verr := webhook.Verify(secrets, req.Header, body, now)
	hook := Webhook{
		Path:       req.URL.Path,
		Headers:    flatten(req.Header),
		Body:       string(body),
		Verified:   verr == nil,
		Standard:   res.Standard,
		Compat:     res.Compat,
		ReceivedAt: now.UTC(),
	}
	if verr != nil {
		hook.VerifyError = verr.Error()
	}
	r.add(hook)

	attrs := []any{
		"request_id", requestID(req.Header, body), "path", req.URL.Path, "verified", hook.Verified,
		"standard", res.Standard, "compat", res.Compat, "bytes", len(body),
	}
	if verr != nil {
		attrs = append(attrs, "verify_error", verr.Error())
	}
	r.log.Info("webhook received", attrs...)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"received":true}` + "\n"))
}

func readBody(w http.ResponseWriter, req *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, req.Body, MaxBodyBytes))
}

// list answers the kept webhooks, newest first.
func (r *Receiver) list(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(r.Webhooks())
}

// Webhooks returns the kept webhooks, newest first.
func (r *Receiver) Webhooks() []Webhook {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.ring)
	}
	out := make([]Webhook, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.ring[(r.next-i+len(r.ring))%len(r.ring)])
	}
	return out
}

func (r *Receiver) add(h Webhook) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ring[r.next] = h
	r.next++
	if r.next == len(r.ring) {
		r.next, r.full = 0, true
	}
}

// flatten turns headers into one string per canonical name.
func flatten(h http.Header) map[string]string {
	out := make(map[string]string, len(h))
	for name, values := range h {
		out[http.CanonicalHeaderKey(name)] = strings.Join(values, ", ")
	}
	return out
}

// requestID names the webhook's request for the log line: the
// compatibility header, else the Standard Webhooks id (which this service
// sets to the request id), else the body's request_id.
func requestID(h http.Header, body []byte) string {
	if id := cmp.Or(h.Get(webhook.HeaderCompatRequestID), h.Get(webhook.HeaderID)); id != "" {
		return id
	}
	var p struct {
		RequestID string `json:"request_id"`
	}
	_ = json.Unmarshal(body, &p)
	return p.RequestID
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}
