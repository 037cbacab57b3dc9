package apitest

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"

	"github.com/openasync/asyncrequest/shared/httpapi"
)

var (
	openAPIOnce sync.Once
	openAPIMu   sync.Mutex // the validator's caches are not documented as safe for concurrent use
	openAPIVal  validator.Validator
	openAPIErr  string
	// routeMux matches a path (without model prefix) to a route of the
	// table.
	routeMux http.ServeMux
)

// OpenAPIValidator returns a validator of httpapi.OpenAPI, failing t if
// the document does not parse or is not valid OpenAPI.
func OpenAPIValidator(t testing.TB) validator.Validator {
	t.Helper()
	openAPIOnce.Do(func() {
		doc, err := libopenapi.NewDocument(httpapi.OpenAPI)
		if err != nil {
			openAPIErr = "parse openapi.json: " + err.Error()
			return
		}
		v, errs := validator.NewValidator(doc)
		if len(errs) > 0 {
			openAPIErr = "openapi.json: " + errs[0].Error()
			return
		}
		if ok, verrs := v.ValidateDocument(); !ok {
			var b strings.Builder
			for _, e := range verrs {
				b.WriteString(e.Message + ": " + e.Reason + "; ")
			}
			openAPIErr = "openapi.json is not valid OpenAPI: " + b.String()
			return
		}
		openAPIVal = v
		seen := map[string]bool{}
		for _, r := range httpapi.Routes {
			if !seen[r.String()] {
				seen[r.String()] = true
				routeMux.Handle(r.String(), http.NotFoundHandler())
			}
		}
	})
	if openAPIErr != "" {
		t.Fatal(openAPIErr)
	}
	return openAPIVal
}

// Validated wraps h, a handler of the API, so that every answer it gives
// is checked against the OpenAPI document, failing t otherwise: an answer
// on a route of the table must be one its operation documents (status,
// Content-Type, body schema); any other error answer (an unknown path, a
// wrong method) must be the API's error body (DecodeError). Handler tests
// serve through it, so the document and the code cannot drift apart.
func Validated(t testing.TB, h http.Handler) http.Handler {
	t.Helper()
	v := OpenAPIValidator(t)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		check := &http.Request{Method: r.Method, Host: r.Host, Header: r.Header.Clone(), URL: cloneURL(r)}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		for k, vs := range rec.Header() {
			w.Header()[k] = vs
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())

		check.URL.Path = stripModelPrefix(check.URL.Path)
		check.URL.RawPath = ""
		_, pattern := routeMux.Handler(check)
		if r.Method == http.MethodHead || pattern == "" || !clean(check.URL.Path) {
			if rec.Code >= 300 {
				DecodeError(t, rec.Code, rec.Header(), rec.Body.Bytes())
			}
			return
		}
		resp := rec.Result()
		resp.Request = check
		openAPIMu.Lock()
		ok, errs := v.ValidateHttpResponse(check, resp)
		openAPIMu.Unlock()
		if !ok {
			for _, e := range errs {
				t.Errorf("%s %s answered %d %s: not as openapi.json says: %s: %s", r.Method, r.URL.Path, rec.Code, rec.Body, e.Message, e.Reason)
				for _, s := range e.SchemaValidationErrors {
					t.Errorf("  %s: %s", s.FieldPath, s.Reason)
				}
			}
		}
	})
}

func cloneURL(r *http.Request) *url.URL {
	u := *r.URL
	return &u
}

// stripModelPrefix removes a /models/{id} or /chains/{id} prefix, which
// the document describes in words rather than as paths.
func stripModelPrefix(p string) string {
	for _, prefix := range []string{"/models/", "/chains/"} {
		if rest, ok := strings.CutPrefix(p, prefix); ok {
			if _, after, ok := strings.Cut(rest, "/"); ok {
				return "/" + after
			}
		}
	}
	return p
}

func clean(p string) bool {
	return p != "" && p[0] == '/' && !strings.Contains(p, "//") && !strings.Contains(p, "/.") && (p == "/" || !strings.HasSuffix(p, "/"))
}
