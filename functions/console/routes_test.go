package console_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/functions/console"
	"github.com/openasync/asyncrequest/shared/httpapi"
)

// TestMountServesConsoleRoutes: every path of the route table's console
// rows reaches the console, and the API's paths do not.
func TestMountServesConsoleRoutes(t *testing.T) {
	t.Parallel()
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	h := console.Mount(api, page)
	for _, route := range httpapi.ConsoleRoutes {
		path := strings.Replace(route.Pattern, "{path...}", "requests", 1)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(route.Method, path, nil))
		if rec.Code == http.StatusTeapot {
			t.Errorf("%s %s went to the API, not the console", route.Method, path)
		}
	}
	for _, route := range httpapi.Routes {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(route.Method, route.Pattern, nil))
		if rec.Code != http.StatusTeapot {
			t.Errorf("%s went to the console, not the API", route)
		}
	}
}
