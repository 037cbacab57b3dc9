package manage_test

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/openasync/asyncrequest/functions/manage"
	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
)

// TestServedByStatus: the status function serves the management API from
// the route table beside its own routes, sharing one key cache.
func TestServedByStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cache := httpapi.NewAuthCache()
	h := apitest.Validated(t, status.New(status.Options{DB: b.db, Logger: quiet, AuthCache: cache,
		Handlers: manage.Handlers(manage.Options{DB: b.db, Logger: quiet, AuthCache: cache})}))
	var ds struct {
		Deployments []any `json:"deployments"`
	}
	decode(t, send(h, "GET", "/v1/deployments", b.key, nil), http.StatusOK, &ds)
	if len(ds.Deployments) != 3 {
		t.Fatalf("deployments = %v", ds.Deployments)
	}
	apitest.CheckError(t, send(h, "GET", "/v1/deployments", b.invokeKey, nil), http.StatusForbidden, "FORBIDDEN", "")
	if rec := send(h, "DELETE", "/v1/deployments", b.key, nil); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("DELETE /v1/deployments = %d", rec.Code)
	}
	apitest.CheckError(t, send(h, "GET", "/models/m1/v1/deployments", b.key, nil), http.StatusNotFound, "NOT_FOUND", "")
	// The async API is still served, to invoke keys too.
	id := b.insert(b.acme, "m1", "m1-a", "")
	if rec := send(h, "GET", "/async_request/"+id, b.invokeKey, nil); rec.Code != http.StatusOK {
		t.Errorf("status with an invoke key = %d %s", rec.Code, rec.Body)
	}
	// Revoking through /v1 evicts the key from the cache the status routes use.
	var k struct {
		ID  int64  `json:"id"`
		Key string `json:"key"`
	}
	decode(t, send(h, "POST", "/v1/api-keys", b.key, map[string]any{"scope": "invoke"}), http.StatusCreated, &k)
	if rec := send(h, "GET", "/async_request/"+id, k.Key, nil); rec.Code != http.StatusOK {
		t.Fatalf("new key = %d", rec.Code)
	}
	decode(t, send(h, "DELETE", fmt.Sprintf("/v1/api-keys/%d", k.ID), b.key, nil), http.StatusOK, &struct{}{})
	apitest.CheckError(t, send(h, "GET", "/async_request/"+id, k.Key, nil), http.StatusUnauthorized, "UNAUTHORIZED", "")
}
