// Package console is the web console (SPEC §14): server-rendered pages
// under /console/ for people, on the API port. It shows each deployment's
// queue and last hour, the requests and each one's timeline, the API keys
// and webhook secrets, and acts on them behind a confirmation step.
//
// Like River UI, it is one http.Handler with its assets embedded, so
// go build, make dev and the Lambda build need no Node toolchain. It reads
// and acts only through a Backend, the management code that the /v1 API
// and asyncctl call too. People sign in with an API key; the session lives
// in Postgres (any API instance or the status function serves it), and a
// key of scope invoke sees everything but may not act.
package console

import (
	"cmp"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

// Prefix is the path under which the console is served.
const Prefix = "/console/"

// Sign-in rate limit defaults: attempts per minute from one client address,
// and from everyone together, per instance.
const (
	SignInPerIPDefault       = 10
	SignInPerInstanceDefault = 120
)

// PageSizeDefault is how many requests the requests page shows at once.
const PageSizeDefault = 50

// Options are New's dependencies.
type Options struct {
	// Service is the management code the console reads and acts
	// through; its DB also holds the sessions.
	Service *manage.Service
	Logger  *slog.Logger
	// SessionTTL is how long a session lasts; default
	// postgres.ConsoleSessionTTLDefault.
	SessionTTL time.Duration
	// SignInPerIP and SignInPerInstance cap sign-in attempts per minute;
	// defaults SignInPerIPDefault and SignInPerInstanceDefault.
	SignInPerIP       int
	SignInPerInstance int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// New returns the console, serving paths under Prefix.
func New(o Options) http.Handler {
	s := &server{
		db:         o.Service.DB,
		backend:    backend{o.Service},
		log:        cmp.Or(o.Logger, slog.Default()),
		sessionTTL: cmp.Or(o.SessionTTL, postgres.ConsoleSessionTTLDefault),
		now:        o.Now,
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.limiter = newSignInLimiter(cmp.Or(o.SignInPerIP, SignInPerIPDefault), cmp.Or(o.SignInPerInstance, SignInPerInstanceDefault), s.now)

	mux := http.NewServeMux()
	mux.Handle("GET /console/assets/", http.StripPrefix("/console", assetHandler()))
	mux.HandleFunc("GET /console/signin", s.signInPage)
	mux.HandleFunc("POST /console/signin", s.signIn)
	mux.Handle("POST /console/signout", s.session(s.signOut))

	mux.Handle("GET /console/{$}", s.session(s.overview))
	mux.Handle("GET /console/requests", s.session(s.requests))
	mux.Handle("GET /console/requests/{id}", s.session(s.request))
	mux.Handle("GET /console/keys", s.session(s.keys))
	mux.Handle("GET /console/secrets", s.session(s.secrets))
	mux.Handle("POST /console/actions/{action}", s.session(s.action))
	mux.Handle("/console/", s.session(func(w http.ResponseWriter, r *http.Request, _ *sessionCtx) {
		s.errorPage(w, r, http.StatusNotFound, "Not found", "There is no such page in the console.")
	}))
	return securityHeaders(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r)
		telemetry.SetRoute(r.Context(), r.Pattern) // the page, for the HTTP server metrics
	}))
}

type server struct {
	db         *postgres.DB
	backend    backend
	log        *slog.Logger
	sessionTTL time.Duration
	now        func() time.Time
	limiter    *signInLimiter
}

// securityHeaders sets the headers every console answer carries: a strict
// Content-Security-Policy (no inline script or style, nothing from another
// origin, no framing), nosniff, no referrer to other sites, and no caching
// of pages that show an organization's data.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "+
			"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cache-Control", "no-store") // the assets' handler allows caching its files
		next.ServeHTTP(w, r)
	})
}

// Mount serves the console under Prefix and everything else with api, so
// the console shares the API's port (and, on Lambda, the status function).
// A bare /console redirects to Prefix.
func Mount(api, console http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, Prefix):
			console.ServeHTTP(w, r)
		case r.URL.Path == "/console":
			http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		default:
			api.ServeHTTP(w, r)
		}
	})
}
