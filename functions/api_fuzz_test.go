package functions_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

// FuzzAPI sends requests made of any method, Host, path and body, with a
// valid API key, through submit and status as `make run-server` serves them,
// against a real database. Whatever arrives, the answer is never a 5xx, and
// every answer but a 2xx is the API's JSON error body. `go test` runs the
// seeds; `go test -run '^$' -fuzz FuzzAPI ./functions` looks for more (each
// fuzzing worker uses its own database).
func FuzzAPI(f *testing.F) {
	db := pgtest.New(f)
	tenant := pgtest.SeedTenant(f, db, "acme",
		[]postgres.Model{{ID: "m1", Kind: postgres.KindModel}, {ID: "c1", Kind: postgres.KindChain}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production", "development"}},
			{ID: "c1-a", ModelID: "c1", Environments: []string{"production"}},
		})
	quiet := slog.New(slog.DiscardHandler)
	// Limits high enough that the fuzzer reaches the database, not a 429.
	api := config.API{SubmitRate: 1e9, SubmitBurst: 1e9, ReadRate: 1e9, MaxActiveRequests: 1e9}
	h := httpapi.Mux(
		submit.New(submit.Options{DB: db, API: api, Logger: quiet}),
		status.New(status.Options{DB: db, API: api, Logger: quiet}))

	serve := func(method, host, path string, body []byte) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodGet, "http://placeholder/", bytes.NewReader(body))
		r.Method = method
		r.URL.Path = "/" + strings.TrimPrefix(path, "/")
		r.Host = host
		r.Header.Set("Authorization", "Api-Key "+tenant.Key)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	rec := serve(http.MethodPost, "model-m1.example.com", "/production/async_predict", []byte(`{"model_input": 1}`))
	var created struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &created); rec.Code != http.StatusCreated || err != nil {
		f.Fatalf("seed submit: %d %s", rec.Code, rec.Body)
	}
	id := created.RequestID

	methods := []string{http.MethodGet, http.MethodPost, http.MethodDelete, http.MethodPut, http.MethodPatch, http.MethodOptions}
	for _, seed := range []struct {
		method     uint8
		host, path string
		body       string
	}{
		{1, "model-m1.example.com", "/production/async_predict", `{"model_input": {"a": 1}, "priority": 1}`},
		{1, "api.example.com", "/chains/c1/production/async_run_remote", `{"model_input": 1, "webhook_endpoint": "https://hooks.example.com/x"}`},
		{1, "api.example.com", "/models/m1/environments/qa\xff/async_predict", `{"model_input": 1}`},
		{1, "api.example.com", "/models/m1/deployment/m1-a\x00/async_predict", `{"model_input": 1}`},
		{1, "model-m\xff1.example.com", "/production/async_predict", `{"model_input": 1}`},
		{0, "api.example.com", "/async_request/" + id, ``},
		{0, "model-m1.example.com", "/async_request/" + id + "/result", ``},
		{1, "api.example.com", "/async_request/" + id + "/webhook", ``},
		{2, "api.example.com", "/async_request/" + id, ``},
		{0, "api.example.com", "/models/m1/deployment/m1-a/async_queue_status", ``},
		{0, "chain-c1.example.com", "/environments/production/async_queue_status", ``},
		{0, "api.example.com", "/async_request/\x00", ``},
		{3, "api.example.com", "//async_request/../production/async_predict", `{}`},
	} {
		f.Add(seed.method, seed.host, seed.path, []byte(seed.body))
	}
	f.Fuzz(func(t *testing.T, method uint8, host, path string, body []byte) {
		m := methods[int(method)%len(methods)]
		rec := serve(m, host, path, body)
		if rec.Code >= 500 {
			t.Fatalf("%s %q Host %q body %q: %d %s", m, path, host, body, rec.Code, rec.Body)
		}
		if rec.Code < 300 {
			return
		}
		apitest.DecodeError(t, rec.Code, rec.Header(), rec.Body.Bytes())
	})
}
