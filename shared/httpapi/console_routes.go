package httpapi

import (
	"net/http"
	"strings"
)

// AuthSession is a signed-in console session: the console (functions/console)
// signs people in with an API key and checks the key's scope on each action
// itself, answering with HTML pages rather than the API's JSON.
const AuthSession Auth = "session"

// HandlerConsole names the console's handler.
const HandlerConsole = "console"

// ConsoleRoutes are the console's rows of the route table (SPEC §14): the
// whole of /console, served by the status function, which routes within it
// by the console's own pages. They are not part of the JSON API, so
// Routes and its OpenAPI document leave them out; template.yaml is checked
// against both.
var ConsoleRoutes = []Route{
	{http.MethodGet, "/console", FunctionStatus, AuthSession, ScopeNone, HandlerConsole},
	{http.MethodGet, "/console/{path...}", FunctionStatus, AuthSession, ScopeNone, HandlerConsole},
	{http.MethodPost, "/console/{path...}", FunctionStatus, AuthSession, ScopeNone, HandlerConsole},
}

// gatewayPath spells a ServeMux pattern as API Gateway does: a trailing
// wildcard {name...} is the greedy {name+}.
func gatewayPath(pattern string) string {
	if i := strings.LastIndex(pattern, "{"); i >= 0 && strings.HasSuffix(pattern, "...}") {
		return pattern[:i] + "{" + strings.TrimSuffix(pattern[i+1:], "...}") + "+}"
	}
	return pattern
}
