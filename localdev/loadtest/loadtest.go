// Package loadtest drives a running service through its public API only,
// the way `make loadtest` sizes a deployment: it submits requests at a
// given concurrency with a webhook_endpoint pointing at a receiver of its
// own, verifies every webhook's signature with the secret it is given, and
// reports submit throughput and latency, completions per second,
// submit-to-webhook latency and duplicate deliveries.
package loadtest

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/openasync/asyncrequest/shared/webhook"
)

// Defaults of Options.
const (
	ConcurrencyDefault = 64
	CountDefault       = 10_000
	PathDefault        = "/models/example/production/async_predict"
	InputDefault       = `{"prompt": "load"}`
	ListenDefault      = "127.0.0.1:0"
	WaitDefault        = 2 * time.Minute
)

// Options say what to drive and how hard.
type Options struct {
	// URL is the API's base URL, e.g. http://localhost:9001.
	URL string
	// Path is the submit route under URL; default PathDefault.
	Path string
	// Key is the API key.
	Key string
	// Secret is the organization's webhook secret (whsec_...). Without it
	// no webhook_endpoint is sent and only submits are measured.
	Secret string
	// Listen is the receiver's listen address; default ListenDefault.
	Listen string
	// WebhookURL is the receiver as the service reaches it; default
	// http://{Listen's address}/webhook.
	WebhookURL string
	// Concurrency is how many submits are in flight at once.
	Concurrency int
	// Count is how many requests to submit.
	Count int
	// Input is each request's model_input; default InputDefault.
	Input string
	// Wait bounds the wait for webhooks after the last submit.
	Wait time.Duration
	// Client sends the submits; default one keeping Concurrency
	// connections open.
	Client *http.Client
}

// Result is what one run measured.
type Result struct {
	Submitted, Refused int
	// SubmitElapsed runs from the first submit to the last answer.
	SubmitElapsed        time.Duration
	SubmitP50, SubmitP99 time.Duration
	// Completed counts distinct requests whose webhook arrived verified.
	Completed int
	// Duplicates counts webhooks for a request that had one already.
	Duplicates int
	// Unverified counts webhooks whose signature did not verify.
	Unverified int
	// E2EElapsed runs from the first submit to the last webhook.
	E2EElapsed             time.Duration
	WebhookP50, WebhookP99 time.Duration
	// FirstError is the first refused submit's answer or error.
	FirstError string
}

// SubmitRate is submits answered 201 per second.
func (r Result) SubmitRate() float64 { return rate(r.Submitted, r.SubmitElapsed) }

// CompletionRate is verified webhooks of distinct requests per second, from
// the first submit.
func (r Result) CompletionRate() float64 { return rate(r.Completed, r.E2EElapsed) }

func rate(n int, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// Print writes r as a short report.
func (r Result) Print(w io.Writer) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }
	fmt.Fprintf(w, "submits     %d accepted, %d refused in %v: %.0f req/s, latency p50 %s, p99 %s\n",
		r.Submitted, r.Refused, r.SubmitElapsed.Round(time.Millisecond), r.SubmitRate(), ms(r.SubmitP50), ms(r.SubmitP99))
	if r.FirstError != "" {
		fmt.Fprintf(w, "first refusal: %s\n", r.FirstError)
	}
	if r.E2EElapsed > 0 || r.Completed > 0 {
		fmt.Fprintf(w, "webhooks    %d completed in %v: %.0f completed/s, submit-to-webhook p50 %s, p99 %s\n",
			r.Completed, r.E2EElapsed.Round(time.Millisecond), r.CompletionRate(), ms(r.WebhookP50), ms(r.WebhookP99))
		fmt.Fprintf(w, "            %d duplicates, %d unverified, %d missing\n",
			r.Duplicates, r.Unverified, r.Submitted-r.Completed)
	}
}

// Run submits o.Count requests and, with a secret, waits for their
// webhooks (until all have come, o.Wait has passed since the last submit,
// or ctx is done).
func Run(ctx context.Context, o Options) (Result, error) {
	o.Path = cmp.Or(o.Path, PathDefault)
	o.Concurrency = cmp.Or(o.Concurrency, ConcurrencyDefault)
	o.Count = cmp.Or(o.Count, CountDefault)
	o.Input = cmp.Or(o.Input, InputDefault)
	o.Wait = cmp.Or(o.Wait, WaitDefault)
	if o.URL == "" || o.Key == "" {
		return Result{}, errors.New("loadtest: the API's URL and an API key are required")
	}
	if !json.Valid([]byte(o.Input)) {
		return Result{}, errors.New("loadtest: the model input is not JSON")
	}
	client := o.Client
	if client == nil {
		client = &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			MaxIdleConns: o.Concurrency, MaxIdleConnsPerHost: o.Concurrency, IdleConnTimeout: time.Minute,
		}}
	}

	rcv := newReceiver(o.Secret, o.Count)
	body := []byte(`{"model_input": ` + o.Input + `}`)
	if o.Secret != "" {
		l, err := net.Listen("tcp", cmp.Or(o.Listen, ListenDefault))
		if err != nil {
			return Result{}, fmt.Errorf("loadtest: webhook receiver: %w", err)
		}
		srv := &http.Server{Handler: rcv, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(l) }()
		defer srv.Close()
		hook := cmp.Or(o.WebhookURL, "http://"+l.Addr().String()+"/webhook")
		hookJSON, _ := json.Marshal(hook)
		body = []byte(`{"model_input": ` + o.Input + `, "webhook_endpoint": ` + string(hookJSON) + `}`)
	}

	var (
		next       atomic.Int64
		mu         sync.Mutex
		submitted  = make(map[string]time.Time, o.Count)
		latencies  = make([]time.Duration, 0, o.Count)
		refused    int
		firstError string
		wg         sync.WaitGroup
	)
	url := strings.TrimSuffix(o.URL, "/") + o.Path
	start := time.Now()
	for range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(o.Count) && ctx.Err() == nil {
				sent := time.Now()
				id, err := submit(ctx, client, url, o.Key, body)
				took := time.Since(sent)
				mu.Lock()
				if err != nil {
					refused++
					if firstError == "" {
						firstError = err.Error()
					}
				} else {
					submitted[id] = sent
					latencies = append(latencies, took)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	res := Result{Submitted: len(submitted), Refused: refused, SubmitElapsed: time.Since(start), FirstError: firstError}
	res.SubmitP50, res.SubmitP99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
	if o.Secret == "" {
		return res, ctx.Err()
	}

	rcv.waitFor(ctx, submitted, o.Wait)
	arrivals, dups, bad := rcv.snapshot()
	var last time.Time
	var e2e []time.Duration
	for id, at := range arrivals {
		sent, ok := submitted[id]
		if !ok {
			continue // another run's request
		}
		res.Completed++
		e2e = append(e2e, at.Sub(sent))
		if at.After(last) {
			last = at
		}
	}
	res.Duplicates, res.Unverified = dups, bad
	if res.Completed > 0 {
		res.E2EElapsed = last.Sub(start)
	}
	res.WebhookP50, res.WebhookP99 = percentile(e2e, 0.50), percentile(e2e, 0.99)
	return res, nil
}

// submit posts one request and returns its id.
func submit(ctx context.Context, c *http.Client, url, key string, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Authorization", "Api-Key "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	var out struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.RequestID == "" {
		return "", fmt.Errorf("201 without a request_id: %s", b)
	}
	return out.RequestID, nil
}

// percentile returns the q-quantile of ds (sorting it), or 0 when empty.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

// receiver takes webhooks, verifies them and notes when each request's
// first one arrived.
type receiver struct {
	secrets []string

	mu         sync.Mutex
	arrivals   map[string]time.Time
	duplicates int
	unverified int
	changed    chan struct{} // closed and replaced on every arrival
}

func newReceiver(secret string, n int) *receiver {
	return &receiver{secrets: []string{secret}, arrivals: make(map[string]time.Time, n), changed: make(chan struct{})}
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	at := time.Now()
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	_, verr := webhook.Verify(rc.secrets, r.Header, body, at)
	id := r.Header.Get("webhook-id")
	rc.mu.Lock()
	switch {
	case verr != nil || id == "":
		rc.unverified++
	case !rc.arrivals[id].IsZero():
		rc.duplicates++
	default:
		rc.arrivals[id] = at
	}
	close(rc.changed)
	rc.changed = make(chan struct{})
	rc.mu.Unlock()
	if verr != nil {
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// waitFor waits until every submitted request's webhook has arrived, wait
// has passed with none arriving, or ctx is done.
func (rc *receiver) waitFor(ctx context.Context, submitted map[string]time.Time, wait time.Duration) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		rc.mu.Lock()
		done := len(rc.arrivals) >= len(submitted)
		if done {
			for id := range submitted {
				if rc.arrivals[id].IsZero() {
					done = false
					break
				}
			}
		}
		changed := rc.changed
		rc.mu.Unlock()
		if done {
			return
		}
		select {
		case <-changed:
			timer.Reset(wait)
		case <-timer.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

func (rc *receiver) snapshot() (map[string]time.Time, int, int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return maps.Clone(rc.arrivals), rc.duplicates, rc.unverified
}
