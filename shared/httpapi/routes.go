package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"path"
	"strings"
)

// Function is the deployed function (the Lambda of template.yaml) that
// serves a route.
type Function string

const (
	// FunctionSubmit accepts requests: SubmitFunction in template.yaml.
	FunctionSubmit Function = "submit"
	// FunctionStatus serves everything else, and answers every path no
	// route has (the gateway's $default route): StatusFunction.
	FunctionStatus Function = "status"
)

// Auth is what a route requires of the caller.
type Auth string

const (
	// AuthNone serves anyone, such as GET /openapi.json.
	AuthNone Auth = "none"
	// AuthInvoke needs an API key of any scope: the routes of SPEC §3.
	AuthInvoke Auth = "invoke"
	// AuthManage needs a key of scope manage: the management API.
	AuthManage Auth = "manage"
)

// Scope says where a route's path sits relative to the model it names.
type Scope string

const (
	// ScopeNone is a path of the service itself, such as /openapi.json or
	// /v1/...: it names no model, and takes no /models/{model_id} prefix.
	ScopeNone Scope = "none"
	// ScopeModel is a path that may name a model or chain, by the Host
	// (model-{model_id}.<domain>) or by a path prefix (/models/{model_id}
	// or /chains/{chain_id}): the deployment routes, which need one, and
	// the /async_request routes, which are narrowed by one.
	ScopeModel Scope = "model"
	// ScopeRegional is a bare path of the original API's regional
	// hostnames, model-{model_id}-{env}.<domain>: the Host names the model
	// and the environment, and there is no path-prefix form.
	ScopeRegional Scope = "regional"
)

// Route is one row of the route table: everything that routes a request
// to its handler, and that template.yaml and the OpenAPI document are
// checked against.
type Route struct {
	Method string
	// Pattern is the path as http.ServeMux reads it, without any model
	// prefix: "/async_request/{request_id}".
	Pattern  string
	Function Function
	Auth     Auth
	Scope    Scope
	// Handler names the handler, a key of RouterOptions.Handlers; routes
	// of one handler (the four deployment forms of submit) share it.
	Handler string
}

// Handler names of Routes, as their functions' New provide them.
const (
	HandlerSubmitModel   = "submit_model"
	HandlerSubmitChain   = "submit_chain"
	HandlerRequestStatus = "request_status"
	HandlerRequestCancel = "request_cancel"
	HandlerResult        = "request_result"
	HandlerRedeliver     = "request_redeliver"
	HandlerQueueStatus   = "queue_status"
	HandlerOpenAPI       = "openapi"
)

// Routes is the route table of the whole API. submit and status register
// their routes from it (NewRouter), Mux routes between them by it, and the
// tests check template.yaml and the OpenAPI document against it.
//
// Adding a route is three edits: its handler (in its function's New,
// under a Handler name), one row here, and its events in template.yaml (one
// per path of Route.Paths). A package that brings several routes, such as
// the management API, may keep its rows in a slice of its own and append
// it here.
var Routes = []Route{
	{http.MethodPost, "/production/async_predict", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitModel},
	{http.MethodPost, "/development/async_predict", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitModel},
	{http.MethodPost, "/environments/{env}/async_predict", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitModel},
	{http.MethodPost, "/deployment/{deployment_id}/async_predict", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitModel},
	{http.MethodPost, "/async_predict", FunctionSubmit, AuthInvoke, ScopeRegional, HandlerSubmitModel},
	{http.MethodPost, "/production/async_run_remote", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitChain},
	{http.MethodPost, "/development/async_run_remote", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitChain},
	{http.MethodPost, "/environments/{env}/async_run_remote", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitChain},
	{http.MethodPost, "/deployment/{deployment_id}/async_run_remote", FunctionSubmit, AuthInvoke, ScopeModel, HandlerSubmitChain},
	{http.MethodPost, "/async_run_remote", FunctionSubmit, AuthInvoke, ScopeRegional, HandlerSubmitChain},

	{http.MethodGet, "/async_request/{request_id}", FunctionStatus, AuthInvoke, ScopeModel, HandlerRequestStatus},
	{http.MethodDelete, "/async_request/{request_id}", FunctionStatus, AuthInvoke, ScopeModel, HandlerRequestCancel},
	{http.MethodGet, "/async_request/{request_id}/result", FunctionStatus, AuthInvoke, ScopeModel, HandlerResult},
	{http.MethodPost, "/async_request/{request_id}/webhook", FunctionStatus, AuthInvoke, ScopeModel, HandlerRedeliver},
	{http.MethodGet, "/production/async_queue_status", FunctionStatus, AuthInvoke, ScopeModel, HandlerQueueStatus},
	{http.MethodGet, "/development/async_queue_status", FunctionStatus, AuthInvoke, ScopeModel, HandlerQueueStatus},
	{http.MethodGet, "/environments/{env}/async_queue_status", FunctionStatus, AuthInvoke, ScopeModel, HandlerQueueStatus},
	{http.MethodGet, "/deployment/{deployment_id}/async_queue_status", FunctionStatus, AuthInvoke, ScopeModel, HandlerQueueStatus},
	{http.MethodGet, "/async_queue_status", FunctionStatus, AuthInvoke, ScopeRegional, HandlerQueueStatus},

	{http.MethodGet, "/openapi.json", FunctionStatus, AuthNone, ScopeNone, HandlerOpenAPI},
}

// ModelPrefixes are the path prefixes that name a model or chain (SPEC §2),
// as template.yaml spells them.
var ModelPrefixes = []string{"/models/{model_id}", "/chains/{chain_id}"}

// Paths returns every path the gateway must route to rt's function: the
// pattern, and for ScopeModel the pattern under each of ModelPrefixes.
// A trailing {name...} wildcard is spelled as the gateway's greedy {name+}.
func (rt Route) Paths() []string {
	paths := []string{gatewayPath(rt.Pattern)}
	if rt.Scope == ScopeModel {
		for _, p := range ModelPrefixes {
			paths = append(paths, gatewayPath(p+rt.Pattern))
		}
	}
	return paths
}

func (rt Route) String() string { return rt.Method + " " + rt.Pattern }

// RouterOptions configure NewRouter.
type RouterOptions struct {
	// Function is whose routes get their handlers; the other functions'
	// routes answer 404 (the gateway never sends them here), so that a
	// wrong method on them is still a 405.
	Function Function
	// Handlers are Function's handlers by Route.Handler. Every route of
	// Function must have one.
	Handlers map[string]http.Handler
	// Authenticate returns the middleware that enforces auth, for every
	// Auth other than AuthNone that Function's routes need.
	Authenticate func(Auth) func(http.Handler) http.Handler
	// Routes is the table; default Routes.
	Routes []Route
}

// NewRouter returns the handler of o.Function's routes of the table: a
// Router, under WithTarget so either form of model routing works. It
// panics when a route of o.Function has no handler or a handler no route,
// since that is a bug the first test finds.
func NewRouter(o RouterOptions) http.Handler {
	routes := o.Routes
	if routes == nil {
		routes = Routes
	}
	used := map[string]bool{}
	var rt Router
	for _, route := range routes {
		if route.Function != o.Function {
			rt.Handle(route.String(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				WriteError(w, r, nil, ErrNotFound)
			}))
			continue
		}
		h, ok := o.Handlers[route.Handler]
		if !ok {
			panic(fmt.Sprintf("httpapi: no handler %q for %s", route.Handler, route))
		}
		used[route.Handler] = true
		if route.Auth != AuthNone {
			h = o.Authenticate(route.Auth)(h)
		}
		rt.Handle(route.String(), scoped(route.Scope, h))
	}
	for name := range o.Handlers {
		if !used[name] {
			panic(fmt.Sprintf("httpapi: handler %q has no route", name))
		}
	}
	return WithTarget(&rt)
}

type regionalKey struct{}

// IsRegional reports whether the request came through a ScopeRegional
// route, whose Host names both the model and the environment.
func IsRegional(r *http.Request) bool {
	v, _ := r.Context().Value(regionalKey{}).(bool)
	return v
}

// scoped makes h answer 404 where its scope does not apply: a ScopeNone
// route under a model path prefix, and a ScopeRegional one without a
// model Host.
func scoped(s Scope, h http.Handler) http.Handler {
	switch s {
	case ScopeNone:
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if t, ok := TargetFrom(r.Context()); ok && t.Prefixed {
				WriteError(w, r, nil, ErrNotFound)
				return
			}
			h.ServeHTTP(w, r)
		})
	case ScopeRegional:
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if t, ok := TargetFrom(r.Context()); !ok || t.Prefixed {
				WriteError(w, r, nil, ErrNotFound)
				return
			}
			h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), regionalKey{}, true)))
		})
	}
	return h
}

// Mux serves submit and status on one listener, the way the API gateway
// routes them: a request matching a submit route of Routes, in any of its
// forms (Route.Paths), goes to submit, everything else to status, which
// answers unknown paths with the API's 404.
func Mux(submit, status http.Handler) http.Handler {
	var mux http.ServeMux
	for _, route := range Routes {
		if route.Function != FunctionSubmit {
			continue
		}
		for _, p := range route.Paths() {
			mux.Handle(route.Method+" "+p, submit)
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if cleanPath(r.URL.Path) {
			if _, pattern := mux.Handler(r); pattern != "" {
				submit.ServeHTTP(w, r)
				return
			}
		}
		status.ServeHTTP(w, r)
	})
}

// cleanPath reports whether p is a path the routers serve rather than
// answer 404: absolute, without double slashes, dot segments or a
// trailing slash.
func cleanPath(p string) bool {
	return p != "" && p[0] == '/' && (p == "/" || (path.Clean(p) == p && !strings.HasSuffix(p, "/")))
}
