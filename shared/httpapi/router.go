package httpapi

import (
	"net/http"
	"strings"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// Router is an http.ServeMux that answers in the API's JSON error format:
// a path no route has is a 404, a known path with another method a 405
// with Allow. Paths that are not clean (double slashes, dot segments, a
// trailing slash) are 404s rather than redirects, since a redirected POST
// loses its body.
type Router struct {
	mux http.ServeMux
}

// Handle registers h for pattern, as http.ServeMux does.
func (rt *Router) Handle(pattern string, h http.Handler) { rt.mux.Handle(pattern, h) }

func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !cleanPath(r.URL.Path) {
		WriteError(w, r, nil, ErrNotFound)
		return
	}
	h, pattern := rt.mux.Handler(r)
	if pattern != "" {
		telemetry.SetRoute(r.Context(), pattern)
		rt.mux.ServeHTTP(w, r) // sets the path values, which Handler does not
		return
	}
	// No route: let the mux decide between 404 and 405 (it computes Allow),
	// then answer in the API's format.
	rec := &recorder{header: http.Header{}}
	h.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		w.Header().Set("Allow", rec.header.Get("Allow"))
		WriteError(w, r, nil, ErrMethodNotAllowed)
		return
	}
	WriteError(w, r, nil, ErrNotFound)
}

// recorder keeps the status and headers of the mux's own 404 or 405.
type recorder struct {
	header http.Header
	status int
}

func (rec *recorder) Header() http.Header         { return rec.header }
func (rec *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (rec *recorder) WriteHeader(status int)      { rec.status = status }

// DeploymentTarget reads which deployment r names, for a route registered
// with a deployment path (/production, /development, /environments/{env},
// /deployment/{deployment_id}): an environment (production, development, or
// {env}) or a deployment id.
func DeploymentTarget(r *http.Request, org int64, t Target) postgres.DeploymentTarget {
	dt := postgres.DeploymentTarget{OrganizationID: org, ModelID: t.ID, Kind: t.Kind}
	switch {
	case r.PathValue("deployment_id") != "":
		dt.DeploymentID = r.PathValue("deployment_id")
	case r.PathValue("env") != "":
		dt.Environment = r.PathValue("env")
	default:
		dt.Environment, _, _ = strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	}
	return dt
}
