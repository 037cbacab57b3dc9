package httpapi_test

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
)

// TestOpenAPICoversRoutes checks that openapi.json is valid OpenAPI 3.1 and
// documents exactly the operations of the route table, no more, no less.
func TestOpenAPICoversRoutes(t *testing.T) {
	t.Parallel()
	apitest.OpenAPIValidator(t)

	var doc struct {
		OpenAPI string                                `json:"openapi"`
		Paths   map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(httpapi.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi %q, want 3.1.x", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths {
		for method := range item {
			switch method {
			case "parameters", "summary", "description", "servers":
				continue
			}
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	routed := map[string]bool{}
	for _, r := range httpapi.Routes {
		routed[r.String()] = true
	}
	for _, r := range slices.Sorted(maps.Keys(routed)) {
		if !documented[r] {
			t.Errorf("route %s is not in openapi.json", r)
		}
	}
	for _, op := range slices.Sorted(maps.Keys(documented)) {
		if !routed[op] {
			t.Errorf("openapi.json documents %s, which httpapi.Routes does not have", op)
		}
	}
}
