package httpapi

import (
	_ "embed"
	"net/http"
)

// OpenAPI is the OpenAPI 3.1 document of the whole API (openapi.json
// beside this file), served at GET /openapi.json. It lists exactly the
// paths of Routes, as the tests check, and every response the handler
// tests see is validated against it. A route added to Routes gets its
// operation here, under the route's pattern.
//
//go:embed openapi.json
var OpenAPI []byte

// ServeOpenAPI answers with OpenAPI.
func ServeOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(OpenAPI)
}
