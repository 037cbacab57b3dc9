package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
)

// Cookie names. Both are scoped to /console, HttpOnly and SameSite=Strict.
const (
	sessionCookie = "console_session"
	// signInCookie carries the sign-in form's CSRF token before there is a
	// session (double submit: the form and the cookie must agree).
	signInCookie = "console_signin"
)

// sessionCtx is the signed-in session a page or action runs under.
type sessionCtx struct {
	postgres.ConsoleSession
}

func (s *sessionCtx) actor() manage.Actor {
	return manage.Actor{OrganizationID: s.OrganizationID, KeyID: s.APIKeyID, KeyName: s.KeyName, Scope: postgres.KeyScope(s.Scope)}
}

// CanAct reports whether the session's key may act (scope manage).
func (s *sessionCtx) CanAct() bool { return postgres.KeyScope(s.Scope) == postgres.ScopeManage }

// session wraps a page or action that needs a signed-in user: without a
// live session a GET is sent to the sign-in page and anything else is a
// 401 page. Every unsafe method must come from the console's own origin
// and carry the session's CSRF token.
func (s *server) session(h func(http.ResponseWriter, *http.Request, *sessionCtx)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var sess postgres.ConsoleSession
		err := postgres.ErrNotFound
		if c, cerr := r.Cookie(sessionCookie); cerr == nil && c.Value != "" && len(c.Value) < 200 {
			sess, err = s.db.ConsoleSessionGet(r.Context(), c.Value)
		}
		if errors.Is(err, postgres.ErrNotFound) {
			if r.Method == http.MethodGet || r.Method == http.MethodHead {
				next := "/console/"
				if r.URL.Path != "/console/" && strings.HasPrefix(r.URL.Path, Prefix) {
					next = r.URL.RequestURI()
				}
				http.Redirect(w, r, "/console/signin?next="+url.QueryEscape(next), http.StatusSeeOther)
				return
			}
			s.errorPage(w, r, http.StatusUnauthorized, "Signed out", "Your session has ended. Sign in again.")
			return
		}
		if err != nil {
			s.serverError(w, r, err)
			return
		}
		ctx := &sessionCtx{ConsoleSession: sess}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !sameOrigin(r) {
				s.errorPage(w, r, http.StatusForbidden, "Refused", "This form was sent from another site.")
				return
			}
			if !tokenEqual(r.PostFormValue("csrf"), sess.CSRFToken) {
				s.errorPage(w, r, http.StatusForbidden, "Refused", "This form has expired or did not come from this console. Go back, reload the page and try again.")
				return
			}
		}
		h(w, r, ctx)
	})
}

func tokenEqual(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// secure reports whether the browser reached us over https, directly or
// through a proxy or gateway that says so.
func secure(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// sameOrigin reports whether an unsafe request comes from the console's
// own origin: Origin, when the browser sends one, must be this scheme and
// host; without it, Sec-Fetch-Site must not say cross-site. A request with
// neither (not a browser) passes here and still needs the CSRF token.
func sameOrigin(r *http.Request) bool {
	if origin := r.Header.Get("Origin"); origin != "" {
		scheme := "http"
		if secure(r) {
			scheme = "https"
		}
		return origin == scheme+"://"+r.Host
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return true
	}
	return false
}

func (s *server) setCookie(w http.ResponseWriter, r *http.Request, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{
		Name: name, Value: value, Path: "/console", MaxAge: maxAge,
		HttpOnly: true, Secure: secure(r), SameSite: http.SameSiteStrictMode,
	})
}

// signInPage shows the sign-in form, or, with ?token= (the dev harness's
// link), a one-button form that redeems the token: a link opened by a
// preview bot signs no one in.
func (s *server) signInPage(w http.ResponseWriter, r *http.Request) {
	s.renderSignIn(w, r, http.StatusOK, "")
}

func (s *server) renderSignIn(w http.ResponseWriter, r *http.Request, status int, problem string) {
	csrf := randomToken()
	s.setCookie(w, r, signInCookie, csrf, 3600)
	token := r.FormValue("token")
	if len(token) > 200 {
		token = ""
	}
	s.render(w, r, status, "signin", page{Title: "Sign in", Data: signInView{
		CSRF: csrf, Next: safeNext(r.FormValue("next")), Token: token, Problem: problem,
	}})
}

type signInView struct {
	CSRF, Next, Token, Problem string
}

// safeNext keeps a post-sign-in destination only when it is a console
// path, so the sign-in form cannot redirect elsewhere.
func safeNext(next string) string {
	if !strings.HasPrefix(next, Prefix) || strings.HasPrefix(next, "//") || strings.ContainsAny(next, "\\\r\n") {
		return Prefix
	}
	return next
}

func (s *server) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if !sameOrigin(r) {
		s.errorPage(w, r, http.StatusForbidden, "Refused", "This form was sent from another site.")
		return
	}
	c, err := r.Cookie(signInCookie)
	if err != nil || !tokenEqual(r.PostFormValue("csrf"), c.Value) {
		s.renderSignIn(w, r, http.StatusForbidden, "The sign-in form expired. Try again.")
		return
	}
	if wait, ok := s.limiter.allow(clientIP(r)); !ok {
		w.Header().Set("Retry-After", retryAfter(wait))
		s.renderSignIn(w, r, http.StatusTooManyRequests, "Too many sign-in attempts. Wait a minute and try again.")
		return
	}
	var sess postgres.ConsoleSession
	if token := r.PostFormValue("token"); token != "" {
		sess, err = s.db.ConsoleLoginTokenRedeem(r.Context(), token, s.sessionTTL)
	} else {
		key := strings.TrimSpace(r.PostFormValue("api_key"))
		if key == "" || len(key) > 200 {
			err = postgres.ErrNotFound
		} else {
			sess, err = s.db.ConsoleSessionSignIn(r.Context(), key, s.sessionTTL)
		}
	}
	if errors.Is(err, postgres.ErrNotFound) {
		s.renderSignIn(w, r, http.StatusUnauthorized, "That key or sign-in link is not valid (or was revoked, or already used).")
		return
	}
	if err != nil {
		s.serverError(w, r, err)
		return
	}
	s.setCookie(w, r, sessionCookie, sess.Secret, int(time.Until(sess.ExpiresAt).Seconds()))
	s.setCookie(w, r, signInCookie, "", -1)
	s.log.Info("console sign-in", "organization_id", sess.OrganizationID, "api_key_id", sess.APIKeyID, "scope", sess.Scope)
	http.Redirect(w, r, safeNext(r.PostFormValue("next")), http.StatusSeeOther)
}

func (s *server) signOut(w http.ResponseWriter, r *http.Request, _ *sessionCtx) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		if err := s.db.ConsoleSessionDelete(r.Context(), c.Value); err != nil {
			s.serverError(w, r, err)
			return
		}
	}
	s.setCookie(w, r, sessionCookie, "", -1)
	http.Redirect(w, r, "/console/signin", http.StatusSeeOther)
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// clientIP is the address sign-in attempts are counted by: the connection's
// (under Lambda, the gateway's sourceIp). X-Forwarded-For is not trusted,
// since any client can set it.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int((d+time.Second-1)/time.Second)))
}

// signInLimiter caps sign-in attempts per client address and per instance,
// each a token bucket refilled over a minute.
type signInLimiter struct {
	perIP    int
	instance *rate.Limiter
	now      func() time.Time

	mu  sync.Mutex
	ips map[string]*rate.Limiter
}

func newSignInLimiter(perIP, perInstance int, now func() time.Time) *signInLimiter {
	return &signInLimiter{
		perIP:    perIP,
		instance: rate.NewLimiter(rate.Limit(float64(perInstance)/60), perInstance),
		now:      now,
		ips:      map[string]*rate.Limiter{},
	}
}

// allow takes one attempt for ip, or says how long to wait.
func (l *signInLimiter) allow(ip string) (time.Duration, bool) {
	t := l.now()
	l.mu.Lock()
	ipl, ok := l.ips[ip]
	if !ok {
		if len(l.ips) >= 10_000 {
			clear(l.ips)
		}
		ipl = rate.NewLimiter(rate.Limit(float64(l.perIP)/60), l.perIP)
		l.ips[ip] = ipl
	}
	l.mu.Unlock()
	res := ipl.ReserveN(t, 1)
	if d := res.DelayFrom(t); d > 0 {
		res.CancelAt(t)
		return d, false
	}
	inst := l.instance.ReserveN(t, 1)
	if d := inst.DelayFrom(t); d > 0 {
		inst.CancelAt(t)
		res.CancelAt(t)
		return d, false
	}
	return 0, true
}
