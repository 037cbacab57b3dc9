package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/functions/console"
	"github.com/openasync/asyncrequest/shared/manage"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.DiscardHandler)

type bundle struct {
	db        *postgres.DB
	srv       *httptest.Server
	key       string // acme's, scope manage
	invokeKey string // acme's, scope invoke
	otherKey  string // other's, scope manage
	acme      int64
	other     int64
	// insert queues a request of org on deployment (of model) with input
	// and returns its id.
	insert func(org int64, model, deployment, webhook string) string
	// exec runs SQL with the request id as $1.
	exec func(id, sql string, args ...any)
	// row reads a request.
	row func(org int64, id string) postgres.Request
}

// setup seeds acme (model m1: deployments m1-a and m1-b) and other (model
// om: om-a) and serves the console with o's options.
func setup(t testing.TB, opts ...func(*console.Options)) bundle {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	acme := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production"}, MaxConcurrency: 4},
			{ID: "m1-b", ModelID: "m1", Environments: []string{"development"}},
		})
	other := pgtest.SeedTenant(t, db, "other", []postgres.Model{{ID: "om", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "om-a", ModelID: "om", Environments: []string{"production"}}})
	invoke := postgres.NewAPIKey()
	if _, err := db.APIKeyInsert(ctx, postgres.APIKeyInsertParams{OrganizationID: acme.ID, Key: invoke, Name: "ci", Scope: postgres.ScopeInvoke}); err != nil {
		t.Fatal(err)
	}
	o := console.Options{Service: &manage.Service{DB: db, Logger: quiet}, Logger: quiet}
	for _, f := range opts {
		f(&o)
	}
	srv := httptest.NewServer(console.New(o))
	t.Cleanup(srv.Close)
	b := bundle{db: db, srv: srv, key: acme.Key, invokeKey: invoke, otherKey: other.Key, acme: acme.ID, other: other.ID}
	b.insert = func(org int64, model, deployment, webhook string) string {
		t.Helper()
		res, err := db.RequestInsert(ctx, postgres.RequestInsertParams{
			ID: requestid.New(), OrganizationID: org, ModelID: model, DeploymentID: deployment,
			WebhookEndpoint: webhook, MaxTimeInQueue: time.Hour, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000,
			Input: []byte(`{"in": 1}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID.String()
	}
	b.exec = func(id, sql string, args ...any) {
		t.Helper()
		rid, err := requestid.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Pool.Exec(ctx, sql, append([]any{rid}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	b.row = func(org int64, id string) postgres.Request {
		t.Helper()
		rid, _ := requestid.Parse(id)
		r, err := db.RequestGetByID(ctx, org, rid)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return b
}

// browser is a cookie-keeping client that does not follow redirects.
type browser struct {
	t    testing.TB
	base string
	c    *http.Client
	csrf string // the session's, once signed in
}

func (b bundle) browser(t testing.TB) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: b.srv.URL, c: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

type answer struct {
	status int
	body   string
	header http.Header
}

func (br *browser) do(req *http.Request) answer {
	br.t.Helper()
	res, err := br.c.Do(req)
	if err != nil {
		br.t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return answer{res.StatusCode, string(body), res.Header}
}

func (br *browser) get(path string) answer {
	br.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, br.base+path, nil)
	return br.do(req)
}

// post sends form with the session's CSRF token (unless form has one) and
// the console's own Origin.
func (br *browser) post(path string, form url.Values) answer {
	br.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if !form.Has("csrf") {
		form.Set("csrf", br.csrf)
	}
	req, _ := http.NewRequest(http.MethodPost, br.base+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", br.base)
	return br.do(req)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func formCSRF(t testing.TB, body string) string {
	t.Helper()
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in:\n%s", body)
	}
	return m[1]
}

// signIn signs br in with key and keeps the session's CSRF token.
func (br *browser) signIn(key string) answer {
	br.t.Helper()
	page := br.get("/console/signin")
	a := br.post("/console/signin", url.Values{"csrf": {formCSRF(br.t, page.body)}, "api_key": {key}, "next": {"/console/requests"}})
	if a.status == http.StatusSeeOther {
		br.csrf = formCSRF(br.t, br.get("/console/").body)
	}
	return a
}

func (b bundle) signedIn(t testing.TB, key string) *browser {
	t.Helper()
	br := b.browser(t)
	if a := br.signIn(key); a.status != http.StatusSeeOther {
		t.Fatalf("sign in: %d\n%s", a.status, a.body)
	}
	return br
}

func TestSignIn(t *testing.T) {
	t.Parallel()

	t.Run("SignedOutGoesToSignIn", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		a := b.browser(t).get("/console/requests?state=FAILED")
		if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/signin?next=%2Fconsole%2Frequests%3Fstate%3DFAILED" {
			t.Fatalf("got %d %q", a.status, a.header.Get("Location"))
		}
		if a := b.browser(t).post("/console/actions/cancel", nil); a.status != http.StatusUnauthorized {
			t.Fatalf("signed-out action: got %d", a.status)
		}
	})

	t.Run("SessionCookie", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.browser(t)
		a := br.signIn(b.key)
		if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/requests" {
			t.Fatalf("got %d %q\n%s", a.status, a.header.Get("Location"), a.body)
		}
		var cookie string
		for _, c := range a.header.Values("Set-Cookie") {
			if strings.HasPrefix(c, "console_session=") {
				cookie = c
			}
		}
		for _, want := range []string{"Path=/console", "HttpOnly", "SameSite=Strict"} {
			if !strings.Contains(cookie, want) {
				t.Errorf("session cookie %q lacks %s", cookie, want)
			}
		}
		if strings.Contains(cookie, "Secure") {
			t.Errorf("session cookie over http is Secure: %q", cookie)
		}
		// The cookie holds a secret that the table stores only hashed.
		secret := strings.TrimPrefix(strings.SplitN(cookie, ";", 2)[0], "console_session=")
		var n int
		if err := b.db.Pool.QueryRow(context.Background(),
			`SELECT count(*) FROM console_sessions WHERE id_hash = convert_to($1, 'UTF8') OR csrf_token = $1`, secret).Scan(&n); err != nil || n != 0 {
			t.Errorf("session secret stored as it is (%d, %v)", n, err)
		}
		if a := br.get("/console/requests"); a.status != http.StatusOK {
			t.Fatalf("signed in: got %d", a.status)
		}
	})

	t.Run("SecureBehindHTTPS", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.browser(t)
		page := br.get("/console/signin")
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/console/signin",
			strings.NewReader(url.Values{"csrf": {formCSRF(t, page.body)}, "api_key": {b.key}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("X-Forwarded-Proto", "https")
		a := br.do(req)
		if a.status != http.StatusSeeOther || !strings.Contains(strings.Join(a.header.Values("Set-Cookie"), "\n"), "Secure") {
			t.Fatalf("got %d, cookies %q", a.status, a.header.Values("Set-Cookie"))
		}
	})

	t.Run("WrongKey", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		if a := b.browser(t).signIn("ak_not-a-key-at-all"); a.status != http.StatusUnauthorized {
			t.Fatalf("got %d", a.status)
		}
	})

	t.Run("NoFormToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.browser(t)
		br.get("/console/signin")
		if a := br.post("/console/signin", url.Values{"csrf": {"guessed"}, "api_key": {b.key}}); a.status != http.StatusForbidden {
			t.Fatalf("got %d", a.status)
		}
	})

	t.Run("CrossSiteForm", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.browser(t)
		page := br.get("/console/signin")
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/console/signin",
			strings.NewReader(url.Values{"csrf": {formCSRF(t, page.body)}, "api_key": {b.key}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://evil.example")
		if a := br.do(req); a.status != http.StatusForbidden {
			t.Fatalf("got %d", a.status)
		}
	})

	t.Run("RateLimited", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *console.Options) { o.SignInPerIP = 3 })
		br := b.browser(t)
		for i := range 3 {
			if a := br.signIn("ak_wrong-key-number-" + string(rune('a'+i))); a.status != http.StatusUnauthorized {
				t.Fatalf("attempt %d: got %d", i+1, a.status)
			}
		}
		a := br.signIn(b.key)
		if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
			t.Fatalf("4th attempt: got %d, Retry-After %q", a.status, a.header.Get("Retry-After"))
		}
	})

	t.Run("RateLimitedPerInstance", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *console.Options) { o.SignInPerIP, o.SignInPerInstance = 100, 2 })
		for i := range 2 {
			if a := b.browser(t).signIn(b.key); a.status != http.StatusSeeOther {
				t.Fatalf("attempt %d: got %d", i+1, a.status)
			}
		}
		if a := b.browser(t).signIn(b.key); a.status != http.StatusTooManyRequests {
			t.Fatalf("3rd attempt: got %d", a.status)
		}
	})

	t.Run("SecurityHeaders", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.signedIn(t, b.key)
		for _, path := range []string{"/console/signin", "/console/", "/console/assets/console.css"} {
			a := br.get(path)
			csp := a.header.Get("Content-Security-Policy")
			if !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "script-src 'self'") ||
				!strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "unsafe-inline") {
				t.Errorf("%s: CSP %q", path, csp)
			}
			if a.header.Get("X-Frame-Options") != "DENY" || a.header.Get("X-Content-Type-Options") != "nosniff" ||
				a.header.Get("Referrer-Policy") == "" {
				t.Errorf("%s: headers %v", path, a.header)
			}
		}
		// No inline script or style anywhere.
		for _, path := range []string{"/console/", "/console/requests", "/console/keys", "/console/secrets"} {
			body := br.get(path).body
			if regexp.MustCompile(`<script|<style|\sstyle=|\son[a-z]+=`).MatchString(body) {
				t.Errorf("%s has inline script or style", path)
			}
		}
	})

	t.Run("SignOut", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.signedIn(t, b.key)
		jarCookies := br.c.Jar.Cookies(mustURL(t, b.srv.URL+"/console/"))
		if a := br.post("/console/signout", nil); a.status != http.StatusSeeOther {
			t.Fatalf("sign out: %d", a.status)
		}
		if a := br.get("/console/"); a.status != http.StatusSeeOther {
			t.Fatalf("after sign-out: %d", a.status)
		}
		// The old cookie, replayed, no longer works: the session is gone.
		replay := b.browser(t)
		replay.c.Jar.SetCookies(mustURL(t, b.srv.URL+"/console/"), jarCookies)
		if a := replay.get("/console/"); a.status != http.StatusSeeOther {
			t.Fatalf("replayed cookie: %d", a.status)
		}
	})

	t.Run("OneTimeLink", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		token, err := b.db.ConsoleLoginTokenCreate(context.Background(), b.key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		br := b.browser(t)
		page := br.get("/console/signin?token=" + token)
		if page.status != http.StatusOK || !strings.Contains(page.body, `name="token" value="`+token+`"`) {
			t.Fatalf("link page: %d\n%s", page.status, page.body)
		}
		// Opening the link signs no one in by itself.
		if a := br.get("/console/"); a.status != http.StatusSeeOther {
			t.Fatalf("GET of the link signed in: %d", a.status)
		}
		form := url.Values{"csrf": {formCSRF(t, page.body)}, "token": {token}}
		if a := br.post("/console/signin", form); a.status != http.StatusSeeOther {
			t.Fatalf("redeem: %d\n%s", a.status, a.body)
		}
		if a := br.get("/console/"); a.status != http.StatusOK {
			t.Fatalf("signed in by link: %d", a.status)
		}
		again := b.browser(t)
		page = again.get("/console/signin?token=" + token)
		form = url.Values{"csrf": {formCSRF(t, page.body)}, "token": {token}}
		if a := again.post("/console/signin", form); a.status != http.StatusUnauthorized {
			t.Fatalf("second use: %d", a.status)
		}
	})

	t.Run("RevokedKeyEndsSessions", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		victim := b.signedIn(t, b.invokeKey)
		admin := b.signedIn(t, b.key)
		keys, err := b.db.APIKeyList(context.Background(), b.acme)
		if err != nil {
			t.Fatal(err)
		}
		var id int64
		for _, k := range keys {
			if k.Scope == postgres.ScopeInvoke {
				id = k.ID
			}
		}
		a := admin.post("/console/actions/revoke-key", url.Values{"key": {itoa(id)}, "confirm": {"yes"}, "back": {"/console/keys"}})
		if a.status != http.StatusSeeOther {
			t.Fatalf("revoke: %d\n%s", a.status, a.body)
		}
		if a := victim.get("/console/"); a.status != http.StatusSeeOther {
			t.Fatalf("revoked key's session still works: %d", a.status)
		}
		if a := admin.get("/console/keys"); a.status != http.StatusOK || strings.Contains(a.body, `id="key-`+itoa(id)+`"`) {
			t.Fatalf("keys page after revoke: %d", a.status)
		}
	})

	t.Run("ExpiredSession", func(t *testing.T) {
		t.Parallel()
		b := setup(t, func(o *console.Options) { o.SessionTTL = time.Second })
		br := b.signedIn(t, b.key)
		if _, err := b.db.Pool.Exec(context.Background(), `UPDATE console_sessions SET expires_at = now() - interval '1 second'`); err != nil {
			t.Fatal(err)
		}
		if a := br.get("/console/"); a.status != http.StatusSeeOther {
			t.Fatalf("expired session: %d", a.status)
		}
		// The next sign-in removes expired sessions.
		b.signedIn(t, b.key)
		var n int
		if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM console_sessions WHERE expires_at <= now()`).Scan(&n); err != nil || n != 0 {
			t.Fatalf("expired sessions left: %d (%v)", n, err)
		}
	})
}

func mustURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func regexpFind(t testing.TB, body, pattern string) string {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no %s in:\n%s", pattern, body)
	}
	return m[1]
}
