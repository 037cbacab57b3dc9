package status_test

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// TestRegional drives the original API's regional hostnames,
// model-{model_id}-{env}.<domain> with bare paths, through Mux: model ids
// and environment names containing "-" resolve to the longest model id
// that has the rest as an environment.
func TestRegional(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	for _, m := range []postgres.Model{
		{ID: "example", Kind: postgres.KindModel}, {ID: "example-chain", Kind: postgres.KindChain},
		{ID: "ex", Kind: postgres.KindModel}, {ID: "ex-a", Kind: postgres.KindModel},
	} {
		m.OrganizationID = b.acme
		if err := b.db.ModelCreate(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []postgres.Deployment{
		{ID: "example-1", ModelID: "example", Environments: []string{"production"}},
		{ID: "example-2", ModelID: "example", Environments: []string{"prod-us"}},
		{ID: "example-chain-1", ModelID: "example-chain", Environments: []string{"production"}},
		{ID: "ex-1", ModelID: "ex", Environments: []string{"a-prod"}},
		{ID: "ex-a-1", ModelID: "ex-a", Environments: []string{"prod"}},
	} {
		d.URL, d.MaxConcurrency = "http://model.invalid", 1
		if err := b.db.DeploymentCreate(ctx, b.acme, d); err != nil {
			t.Fatal(err)
		}
	}
	mux := apitest.Validated(t, httpapi.Mux(submit.New(submit.Options{DB: b.db}), b.h))
	do := func(method, host, path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://placeholder/", strings.NewReader(body))
		r.URL.Path, r.Host = path, host
		r.Header.Set("Authorization", "Api-Key "+b.key)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, r)
		return rec
	}

	tests := []struct {
		name, host, action   string
		wantModel, wantChain string
		wantDeployment       string
	}{
		{"Model", "model-example-production.api.example.com", "/async_predict", "example", "", "example-1"},
		{"EnvWithDash", "model-example-prod-us.api.example.com", "/async_predict", "example", "", "example-2"},
		{"ModelWithDash", "model-m1-staging.api.example.com", "/async_predict", "m1", "", "m1-a"},
		{"ChainWithDash", "chain-example-chain-production.api.example.com", "/async_run_remote", "", "example-chain", "example-chain-1"},
		// ex + a-prod and ex-a + prod both exist: the longer model id wins.
		{"AmbiguousLongestModelWins", "model-ex-a-prod.api.example.com", "/async_predict", "ex-a", "", "ex-a-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := decode(t, do("POST", tt.host, tt.action, `{"model_input": 1}`), http.StatusCreated)
			id, _ := m["request_id"].(string)
			st := decode(t, do("GET", "api.example.com", "/async_request/"+id, ""), http.StatusOK)
			if st["deployment_id"] != tt.wantDeployment || st["model_id"] != nilIfEmpty(tt.wantModel) || st["chain_id"] != nilIfEmpty(tt.wantChain) {
				t.Errorf("status %v, want model %q chain %q on %s", st, tt.wantModel, tt.wantChain, tt.wantDeployment)
			}
			q := decode(t, do("GET", tt.host, "/async_queue_status", ""), http.StatusOK)
			if q["deployment_id"] != tt.wantDeployment || q["model_id"] != nilIfEmpty(tt.wantModel) || q["chain_id"] != nilIfEmpty(tt.wantChain) || q["num_queued_requests"] != 1.0 {
				t.Errorf("queue status %v", q)
			}
		})
	}

	for _, tt := range []struct{ name, method, host, path string }{
		{"UnknownEnvironment", "POST", "model-example-staging.api.example.com", "/async_predict"},
		{"NoEnvironment", "POST", "model-example.api.example.com", "/async_predict"},
		{"ChainOnModelRoute", "POST", "chain-example-chain-production.api.example.com", "/async_predict"},
		{"ModelOnChainRoute", "POST", "model-example-production.api.example.com", "/async_run_remote"},
		{"PathPrefix", "POST", "api.example.com", "/models/example-production/async_predict"},
		{"NoModelHost", "POST", "api.example.com", "/async_predict"},
		{"OtherOrganization", "POST", "model-om-production.api.example.com", "/async_predict"},
		{"QueueStatusUnknown", "GET", "model-example-nope.api.example.com", "/async_queue_status"},
		{"QueueStatusPathPrefix", "GET", "api.example.com", "/models/example/async_queue_status"},
		// The path-based routes are not regional: the whole label is the model id.
		{"PathRouteOnRegionalHost", "POST", "model-example-production.api.example.com", "/production/async_predict"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			apitest.CheckError(t, do(tt.method, tt.host, tt.path, `{"model_input": 1}`), http.StatusNotFound, "NOT_FOUND", "")
		})
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// TestOpenAPIDocument serves the document without auth, as the service's
// own path: not under a model prefix, and not to another method.
func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	b := setup(t)
	serve := func(method, host, path string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://placeholder/", nil)
		r.URL.Path, r.Host = path, host
		rec := httptest.NewRecorder()
		b.h.ServeHTTP(rec, r)
		return rec
	}
	rec := serve("GET", "api.example.com", "/openapi.json")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" || !bytes.Equal(rec.Body.Bytes(), httpapi.OpenAPI) {
		t.Fatalf("GET /openapi.json: %d %q, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
	if rec := serve("GET", "model-m1.api.example.com", "/openapi.json"); rec.Code != http.StatusOK {
		t.Errorf("GET /openapi.json on a model host: %d", rec.Code)
	}
	apitest.CheckError(t, serve("GET", "api.example.com", "/models/m1/openapi.json"), http.StatusNotFound, "NOT_FOUND", "")
	apitest.CheckError(t, serve("POST", "api.example.com", "/openapi.json"), http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "")
}
