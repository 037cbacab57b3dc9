// Package apitest holds what the tests of the HTTP pieces share: a settable
// clock, the two ways a URL names a model, the check of the API's error
// body, and a buffer that goroutines may write logs to.
package apitest

import (
	"bytes"
	"encoding/json"
	"net/http/httptest"
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

// CheckError asserts that rec is the API's error answer: status, and a body
// of exactly {"error": {"code", "message", "field"}} with the given code, a
// message, and field (absent when field is "").
func CheckError(t testing.TB, rec *httptest.ResponseRecorder, status int, code, field string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &outer); err != nil || len(outer) != 1 || outer["error"] == nil {
		t.Fatalf("body %s is not {\"error\": {...}}", rec.Body)
	}
	var inner map[string]any
	if err := json.Unmarshal(outer["error"], &inner); err != nil {
		t.Fatalf("error is not an object: %s", rec.Body)
	}
	for k := range inner {
		if k != "code" && k != "message" && k != "field" {
			t.Errorf("unexpected key %q in %s", k, rec.Body)
		}
	}
	if inner["code"] != code {
		t.Errorf("code = %v, want %q; body %s", inner["code"], code, rec.Body)
	}
	if msg, _ := inner["message"].(string); msg == "" {
		t.Errorf("empty message: %s", rec.Body)
	}
	gotField, hasField := inner["field"].(string)
	if gotField != field || (field == "" && hasField) {
		t.Errorf("field = %q (present %v), want %q; body %s", gotField, hasField, field, rec.Body)
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
