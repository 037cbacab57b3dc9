// Package apitest holds what the tests of the HTTP pieces share: a settable
// clock, the two ways a URL names a model, the one check of the API's error
// body (DecodeError, CheckError), the wrapper that validates every answer
// of a handler against the OpenAPI document (Validated), and a buffer that
// goroutines may write logs to.
package apitest

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// Clock is a settable clock for caches and rate limiters.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock reading t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Form is one way of naming the model: the Host header or a path prefix.
type Form struct {
	Name string
	// URL returns the Host and path for kind ("model" or "chain"), id and
	// the route's path.
	URL func(kind, id, path string) (host, fullPath string)
}

// Forms are both ways; every route must work with each.
var Forms = []Form{
	{"Host", func(kind, id, path string) (string, string) { return kind + "-" + id + ".api.example.com", path }},
	{"PathPrefix", func(kind, id, path string) (string, string) { return "api.example.com", "/" + kind + "s/" + id + path }},
}

// Error is the API's error body as a client decodes it: the original API's
// ErrorResponse (error, error_code, detail) plus our code and field.
type Error struct {
	Error     string `json:"error"`
	ErrorCode string `json:"error_code"`
	Code      string `json:"code"`
	Field     string `json:"field"`
	Detail    string `json:"detail"`
}

// OriginalErrorCodes is the enum of the original API's
// ErrorResponse.error_code, as its published OpenAPI document lists it.
var OriginalErrorCodes = []string{
	"timeout", "client_error", "model_unavailable", "model_not_ready", "model_does_not_exist",
	"rate_limited", "payload_too_large", "unauthorized", "application_error", "internal_baseten_error",
}

// ErrorCodeFor is the error_code an answer of status must carry.
func ErrorCodeFor(status int) string {
	switch {
	case status == 401:
		return "unauthorized"
	case status == 413:
		return "payload_too_large"
	case status == 429:
		return "rate_limited"
	case status >= 500:
		return "internal_baseten_error"
	}
	return "client_error"
}

// DecodeError asserts that an answer of status, header and body is the
// API's error answer and returns it: Content-Type application/json, a JSON
// object of only the keys error, error_code, code, field and detail, a
// non-empty string error, the error_code status calls for (one of
// OriginalErrorCodes), and a code. Every test that reads an error goes
// through here, so the shape is checked in one place.
func DecodeError(t testing.TB, status int, header http.Header, body []byte) Error {
	t.Helper()
	if ct := header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json; body %s", ct, body)
	}
	var raw map[string]any
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatalf("body %s is not a JSON object: %v", body, err)
	}
	for k, v := range raw {
		switch k {
		case "error", "error_code", "code", "field", "detail":
			if _, ok := v.(string); !ok {
				t.Errorf("%s is %T, not a string: %s", k, v, body)
			}
		default:
			t.Errorf("unexpected key %q in %s", k, body)
		}
	}
	var e Error
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	if e.Error == "" {
		t.Errorf("empty error message: %s", body)
	}
	if !slices.Contains(OriginalErrorCodes, e.ErrorCode) {
		t.Errorf("error_code %q is not in the original enum: %s", e.ErrorCode, body)
	}
	if want := ErrorCodeFor(status); e.ErrorCode != want {
		t.Errorf("error_code = %q, want %q for %d; body %s", e.ErrorCode, want, status, body)
	}
	if e.Code == "" {
		t.Errorf("empty code: %s", body)
	}
	if _, has := raw["field"]; has && e.Field == "" {
		t.Errorf("empty field present: %s", body)
	}
	return e
}

// CheckError asserts that rec is the API's error answer (DecodeError) with
// status, code and field (absent when field is "").
func CheckError(t testing.TB, rec *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	e := DecodeError(t, rec.Code, rec.Header(), rec.Body.Bytes())
	if e.Code != code {
		t.Errorf("code = %q, want %q; body %s", e.Code, code, rec.Body)
	}
	if e.Field != field {
		t.Errorf("field = %q, want %q; body %s", e.Field, field, rec.Body)
	}
}

// Buffer collects output written from several goroutines, such as a
// handler's logs or a child process's output.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
