// Package examplemodel is the dev harness's built-in model (SPEC §11): a
// synchronous model endpoint that the processor can call without any real
// model running, and that a person or a test can steer into the slow and
// failing answers a real model gives.
//
// It answers POST /predict (models) and POST /run_remote (chains) with
// {"output": ..., "traceparent": "..."}: the output is the input with a
// string upper-cased and any other JSON echoed unchanged, and traceparent is
// the header the processor sent. When the input is an object, these fields
// steer the answer, in this order:
//
//   - sleep_ms: wait this many milliseconds first;
//   - fail_status: answer with this HTTP status (200 to 599) every time;
//   - fail_attempts: answer 503 to the first N attempts of each request,
//     which are told apart by the trace id in traceparent (the request id),
//     so retries end to end can be seen.
//
// A steering field of the wrong type is answered 422, which the processor
// records as MODEL_INVALID_INPUT.
package examplemodel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

const (
	// MaxBodyBytes is the largest input read: four times the API's 256 KiB
	// submit limit, so every valid request fits.
	MaxBodyBytes = 1 << 20
	// MaxTrackedRequests bounds the memory fail_attempts uses: past it, the
	// attempt counts start over.
	MaxTrackedRequests = 100_000
)

// Options configure a Model.
type Options struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Model is the example model's http.Handler.
type Model struct {
	log *slog.Logger
	mux *http.ServeMux

	mu       sync.Mutex
	attempts map[string]int // attempts seen, by trace id
}

// New returns the example model.
func New(o Options) *Model {
	m := &Model{log: o.Logger, mux: http.NewServeMux(), attempts: map[string]int{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	m.mux.HandleFunc("POST /predict", m.serve)
	m.mux.HandleFunc("POST /run_remote", m.serve)
	return m
}

// ServeHTTP implements http.Handler.
func (m *Model) ServeHTTP(w http.ResponseWriter, r *http.Request) { m.mux.ServeHTTP(w, r) }

// steering is the part of an object input that steers the answer.
type steering struct {
	SleepMS      *int `json:"sleep_ms"`
	FailStatus   *int `json:"fail_status"`
	FailAttempts *int `json:"fail_attempts"`
}

func (m *Model) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "input larger than 1 MiB"})
		return
	}
	var input any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&input); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "input is not JSON: " + err.Error()})
		return
	}
	traceparent := r.Header.Get("traceparent")
	var steer steering
	if _, ok := input.(map[string]any); ok {
		if err := json.Unmarshal(body, &steer); err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": steeringError(err)})
			return
		}
		if msg := steer.validate(); msg != "" {
			writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": msg})
			return
		}
	}

	if steer.SleepMS != nil {
		t := time.NewTimer(time.Duration(*steer.SleepMS) * time.Millisecond)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if steer.FailStatus != nil {
		m.log.Info("example model: failing as asked", "status", *steer.FailStatus, "traceparent", traceparent)
		writeJSON(w, *steer.FailStatus, map[string]any{"error": "fail_status asked for this answer"})
		return
	}
	if steer.FailAttempts != nil {
		if n := m.attempt(traceID(traceparent)); n <= *steer.FailAttempts {
			m.log.Info("example model: failing attempt as asked", "attempt", n, "fail_attempts", *steer.FailAttempts, "traceparent", traceparent)
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{
				"error": fmt.Sprintf("attempt %d of the first %d fails, as fail_attempts asked", n, *steer.FailAttempts),
			})
			return
		}
	}

	var output any = json.RawMessage(body)
	if s, ok := input.(string); ok {
		output = strings.ToUpper(s)
	}
	writeJSON(w, http.StatusOK, map[string]any{"output": output, "traceparent": traceparent})
}

func (s steering) validate() string {
	switch {
	case s.SleepMS != nil && *s.SleepMS < 0:
		return "sleep_ms: must not be negative"
	case s.FailStatus != nil && (*s.FailStatus < 200 || *s.FailStatus > 599):
		return "fail_status: must be an HTTP status from 200 to 599"
	case s.FailAttempts != nil && *s.FailAttempts < 0:
		return "fail_attempts: must not be negative"
	}
	return ""
}

// steeringError names the steering field of the wrong type.
func steeringError(err error) string {
	if te, ok := err.(*json.UnmarshalTypeError); ok && te.Field != "" {
		return te.Field + ": must be an integer"
	}
	return "steering fields: " + err.Error()
}

// attempt counts an attempt of the request with traceID and returns its
// number, 1 for the first.
func (m *Model) attempt(traceID string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.attempts) >= MaxTrackedRequests {
		clear(m.attempts)
	}
	m.attempts[traceID]++
	return m.attempts[traceID]
}

// traceID returns the trace id of a W3C traceparent
// (version-traceid-spanid-flags), or the whole header when it has no such
// shape; requests without one all count as the same request.
func traceID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) == 4 {
		return parts[1]
	}
	return traceparent
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
