package examplemodel_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/localdev/examplemodel"
)

const traceA = "00-0190f5b0c2a87d3e9b1f4c6a2d8e0f11-1111111111111111-01"
const traceB = "00-0190f5b0c2a87d3e9b1f4c6a2d8e0f22-2222222222222222-01"

type answer struct {
	status int
	body   map[string]any
	raw    string
}

type bundle struct {
	server *httptest.Server
}

func setup(t *testing.T) *bundle {
	t.Helper()
	s := httptest.NewServer(examplemodel.New(examplemodel.Options{Logger: slog.New(slog.DiscardHandler)}))
	t.Cleanup(s.Close)
	return &bundle{server: s}
}

func (b *bundle) post(t *testing.T, path, traceparent, body string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, b.server.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if traceparent != "" {
		req.Header.Set("traceparent", traceparent)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	a := answer{status: res.StatusCode, raw: string(raw)}
	if err := json.Unmarshal(raw, &a.body); err != nil {
		t.Fatalf("%s answered %d with non-JSON %q", path, res.StatusCode, raw)
	}
	return a
}

func TestOutput(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tests := []struct {
		name, path, input, want string
	}{
		{"StringUpperCased", "/predict", `"hello"`, `"HELLO"`},
		{"ChainStringUpperCased", "/run_remote", `"chain me"`, `"CHAIN ME"`},
		{"ObjectEchoed", "/predict", `{"prompt": "hi", "n": 2}`, `{"prompt":"hi","n":2}`},
		{"NumberEchoed", "/predict", `42.5`, `42.5`},
		{"ArrayEchoed", "/run_remote", `["a", 1, null]`, `["a",1,null]`},
		{"NullEchoed", "/predict", `null`, `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			a := b.post(t, tt.path, traceA, tt.input)
			if a.status != http.StatusOK {
				t.Fatalf("status %d, body %s", a.status, a.raw)
			}
			var want any
			if err := json.Unmarshal([]byte(tt.want), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a.body["output"], want) {
				t.Errorf("output %v, want %s", a.body["output"], tt.want)
			}
			if a.body["traceparent"] != traceA {
				t.Errorf("traceparent %v, want %s", a.body["traceparent"], traceA)
			}
		})
	}
}

func TestSteering(t *testing.T) {
	t.Parallel()

	t.Run("SleepMS", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		// A lower bound only: the answer comes after the sleep, however
		// slow the machine.
		start := time.Now()
		a := b.post(t, "/predict", traceA, `{"sleep_ms": 200, "prompt": "x"}`)
		if elapsed := time.Since(start); elapsed < 200*time.Millisecond {
			t.Errorf("answered after %s, before sleep_ms passed", elapsed)
		}
		if a.status != http.StatusOK {
			t.Fatalf("status %d, body %s", a.status, a.raw)
		}
	})

	t.Run("FailStatus", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		for _, status := range []int{500, 429, 404, 422, 502} {
			for range 2 { // every time, not only the first
				a := b.post(t, "/predict", traceA, `{"fail_status": `+itoa(status)+`}`)
				if a.status != status {
					t.Errorf("fail_status %d: answered %d", status, a.status)
				}
			}
		}
	})

	t.Run("FailAttempts", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		input := `{"fail_attempts": 2, "prompt": "x"}`
		var got []int
		for range 4 {
			got = append(got, b.post(t, "/predict", traceA, input).status)
		}
		want := []int{503, 503, 200, 200}
		if !equal(got, want) {
			t.Errorf("attempts of one request answered %v, want %v", got, want)
		}
		// Another request (trace id) counts its own attempts.
		if s := b.post(t, "/run_remote", traceB, input).status; s != 503 {
			t.Errorf("first attempt of another request answered %d, want 503", s)
		}
	})

	t.Run("Invalid", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		tests := []struct{ input, field string }{
			{`{"sleep_ms": "10"}`, "sleep_ms"},
			{`{"sleep_ms": -1}`, "sleep_ms"},
			{`{"fail_status": 1.5}`, "fail_status"},
			{`{"fail_status": 99}`, "fail_status"},
			{`{"fail_status": 600}`, "fail_status"},
			{`{"fail_attempts": true}`, "fail_attempts"},
			{`{"fail_attempts": -3}`, "fail_attempts"},
		}
		for _, tt := range tests {
			a := b.post(t, "/predict", traceA, tt.input)
			msg, _ := a.body["error"].(string)
			if a.status != http.StatusUnprocessableEntity || !strings.HasPrefix(msg, tt.field+":") {
				t.Errorf("%s: answered %d %s, want 422 naming %s", tt.input, a.status, a.raw, tt.field)
			}
		}
		if a := b.post(t, "/predict", traceA, `{not json`); a.status != http.StatusBadRequest {
			t.Errorf("malformed input answered %d, want 400", a.status)
		}
	})
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
