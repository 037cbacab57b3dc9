package functions_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
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

// originalRoute is what the original API's published OpenAPI document says
// of one of its async routes: the success status, the fields its success
// body requires, and the error statuses it documents, each answered with
// its ErrorResponse. Written down here as facts, so this test checks our
// answers against that document's contract without a copy of it.
type originalRoute struct {
	method, path string
	// host names the model the way the route expects it: "model", "chain",
	// or "regional" (model-{model_id}-{env}).
	host     string
	success  int
	required []string
	errors   []int
}

var (
	submitErrors      = []int{400, 401, 413, 429, 503}
	submitChainErrors = []int{400, 401, 429, 503} // the original lists no 413 for async_run_remote
	readErrors        = []int{401, 429}
	statusRequired    = []string{"request_id", "deployment_id", "status", "webhook_status", "created_at", "status_at", "errors"}
	queueRequired     = []string{"model_id", "deployment_id", "num_queued_requests", "num_in_progress_requests"}
)

var originalRoutes = []originalRoute{
	{"POST", "/production/async_predict", "model", 201, []string{"request_id"}, submitErrors},
	{"POST", "/development/async_predict", "model", 201, []string{"request_id"}, submitErrors},
	{"POST", "/environments/staging/async_predict", "model", 201, []string{"request_id"}, submitErrors},
	{"POST", "/deployment/m1-a/async_predict", "model", 201, []string{"request_id"}, submitErrors},
	{"POST", "/async_predict", "regional", 201, []string{"request_id"}, submitErrors},
	{"POST", "/production/async_run_remote", "chain", 201, []string{"request_id"}, submitChainErrors},
	{"POST", "/development/async_run_remote", "chain", 201, []string{"request_id"}, submitChainErrors},
	{"POST", "/environments/staging/async_run_remote", "chain", 201, []string{"request_id"}, submitChainErrors},
	{"POST", "/deployment/c1-a/async_run_remote", "chain", 201, []string{"request_id"}, submitChainErrors},
	{"GET", "/async_request/{request_id}", "model", 200, statusRequired, readErrors},
	{"DELETE", "/async_request/{request_id}", "model", 200, []string{"request_id", "canceled", "message"}, readErrors},
	{"GET", "/production/async_queue_status", "model", 200, queueRequired, readErrors},
	{"GET", "/development/async_queue_status", "model", 200, queueRequired, readErrors},
	{"GET", "/environments/staging/async_queue_status", "model", 200, queueRequired, readErrors},
	{"GET", "/deployment/m1-a/async_queue_status", "model", 200, queueRequired, readErrors},
	{"GET", "/async_queue_status", "regional", 200, queueRequired, readErrors},
}

// originalErrorResponse is the original's ErrorResponse, as its SDK
// decodes it.
type originalErrorResponse struct {
	Error     *string `json:"error"`
	ErrorCode *string `json:"error_code"`
	Detail    *string `json:"detail"`
}

// TestOriginalContract drives each async route of the original API
// through submit and status as deployed (Mux), and checks each answer
// decodes as the original document says: the success status and required
// fields, and for every error status it documents, an ErrorResponse whose
// error is a string and whose error_code is one of its enum.
func TestOriginalContract(t *testing.T) {
	t.Parallel()
	db := pgtest.New(t)
	tenant := pgtest.SeedTenant(t, db, "acme",
		[]postgres.Model{{ID: "m1", Kind: postgres.KindModel}, {ID: "c1", Kind: postgres.KindChain}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production", "development", "staging"}},
			{ID: "c1-a", ModelID: "c1", Environments: []string{"production", "development", "staging"}},
		})
	quiet := slog.New(slog.DiscardHandler)
	mux := func(db *postgres.DB, api config.API) http.Handler {
		return apitest.Validated(t, httpapi.Mux(
			submit.New(submit.Options{DB: db, API: api, Logger: quiet}),
			status.New(status.Options{DB: db, API: api, Logger: quiet})))
	}
	open := mux(db, config.API{SubmitRate: 1e9, SubmitBurst: 1e9, ReadRate: 1e9})
	unreachable, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unreachable.Close)
	down := mux(unreachable, config.API{})

	hosts := map[string]string{"model": "model-m1.api.example.com", "chain": "chain-c1.api.example.com", "regional": "model-m1-staging.api.example.com"}
	send := func(h http.Handler, rt originalRoute, id, body string, auth bool) *httptest.ResponseRecorder {
		r := httptest.NewRequest(rt.method, "http://placeholder/", strings.NewReader(body))
		r.URL.Path = strings.ReplaceAll(rt.path, "{request_id}", id)
		r.Host = hosts[rt.host]
		r.Header.Set("Content-Type", "application/json")
		if auth {
			r.Header.Set("Authorization", "Bearer "+tenant.Key)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	// newID submits a request of m1 for the routes that read one.
	newID := func(t *testing.T) string {
		rec := send(open, originalRoutes[0], "", `{"model_input": 1}`, true)
		var b struct {
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &b); err != nil || rec.Code != 201 {
			t.Fatalf("submit: %d %s", rec.Code, rec.Body)
		}
		return b.RequestID
	}

	for _, rt := range originalRoutes {
		t.Run(strings.ReplaceAll(rt.method+rt.path+"_"+rt.host, "/", "_"), func(t *testing.T) {
			t.Parallel()
			body := ""
			if rt.method == "POST" {
				body = `{"model_input": {"text": "hi"}, "webhook_endpoint": "", "priority": 1}`
			}
			rec := send(open, rt, newID(t), body, true)
			if rec.Code != rt.success {
				t.Fatalf("answered %d %s, want %d", rec.Code, rec.Body, rt.success)
			}
			var got map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
				t.Fatal(err)
			}
			for _, f := range rt.required {
				if _, ok := got[f]; !ok {
					t.Errorf("success body %s lacks %s", rec.Body, f)
				}
			}

			for _, code := range rt.errors {
				var rec *httptest.ResponseRecorder
				switch code {
				case 400:
					rec = send(open, rt, newID(t), `{"model_input": 1, "priority": 9}`, true)
				case 401:
					rec = send(open, rt, newID(t), body, false)
				case 413:
					rec = send(open, rt, "", `{"model_input": "`+strings.Repeat("x", httpapi.MaxBodyBytesDefault)+`"}`, true)
				case 429:
					limited := mux(db, config.API{SubmitRate: 1e-6, SubmitBurst: 1, ReadRate: 1e-6})
					id := newID(t)
					for range httpapi.ReadBurst(1e-6) + 1 {
						if rec = send(limited, rt, id, body, true); rec.Code == 429 {
							break
						}
					}
				case 503:
					rec = send(down, rt, newID(t), body, true)
				}
				if rec.Code != code {
					t.Errorf("provoking %d: answered %d %s", code, rec.Code, rec.Body)
					continue
				}
				var e originalErrorResponse
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
					t.Errorf("%d: %s does not decode as ErrorResponse: %v", code, rec.Body, err)
					continue
				}
				if e.Error == nil || *e.Error == "" || e.ErrorCode == nil || !slices.Contains(apitest.OriginalErrorCodes, *e.ErrorCode) {
					t.Errorf("%d: %s is not an ErrorResponse with a message and an error_code of its enum", code, rec.Body)
				}
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("%d: Content-Type %q", code, ct)
				}
			}
		})
	}
}
