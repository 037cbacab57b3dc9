package console_test

import (
	"context"
	"html"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/postgres"
)

// confirmThenDo posts an action as its button does, checks that it only
// asks for confirmation, then confirms it; it returns the confirmed answer.
func confirmThenDo(t *testing.T, br *browser, action string, form url.Values, check func()) answer {
	t.Helper()
	form.Set("back", "/console/requests")
	ask := br.post("/console/actions/"+action, form)
	if ask.status != http.StatusOK || !strings.Contains(ask.body, `name="confirm" value="yes"`) {
		t.Fatalf("%s: confirmation page: %d\n%s", action, ask.status, ask.body)
	}
	if check != nil {
		check() // nothing has happened yet
	}
	form.Set("confirm", "yes")
	return br.post("/console/actions/"+action, form)
}

func TestActions(t *testing.T) {
	t.Parallel()

	t.Run("Cancel", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		br := b.signedIn(t, b.key)
		a := confirmThenDo(t, br, "cancel", url.Values{"id": {id}}, func() {
			if r := b.row(b.acme, id); r.State != postgres.StateQueued {
				t.Fatalf("canceled before confirmation: %s", r.State)
			}
		})
		if a.status != http.StatusSeeOther || a.header.Get("Location") != "/console/requests" {
			t.Fatalf("got %d %q\n%s", a.status, a.header.Get("Location"), a.body)
		}
		if r := b.row(b.acme, id); r.State != postgres.StateCanceled {
			t.Fatalf("state %s", r.State)
		}
		// The message is shown once, on the next page.
		if p := br.get("/console/requests"); !strings.Contains(p.body, "Request canceled.") {
			t.Error("no message after the action")
		}
		if p := br.get("/console/requests"); strings.Contains(p.body, "Request canceled.") {
			t.Error("message shown twice")
		}
		// Canceling again is refused, saying why.
		again := br.post("/console/actions/cancel", url.Values{"id": {id}, "confirm": {"yes"}})
		if again.status != http.StatusConflict || !strings.Contains(again.body, "CANCELED") {
			t.Fatalf("second cancel: %d\n%s", again.status, again.body)
		}
	})

	t.Run("Retry", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(id, `UPDATE async_requests SET state = 'FAILED', attempts = 3, finished_at = now(), status_at = now() WHERE id = $1`)
		br := b.signedIn(t, b.key)
		if p := br.get("/console/requests/" + id); !strings.Contains(p.body, `id="retry"`) {
			t.Fatal("no retry button on a failed request")
		}
		if a := confirmThenDo(t, br, "retry", url.Values{"id": {id}}, nil); a.status != http.StatusSeeOther {
			t.Fatalf("got %d\n%s", a.status, a.body)
		}
		if r := b.row(b.acme, id); r.State != postgres.StateQueued {
			t.Fatalf("state %s", r.State)
		}
		queued := br.post("/console/actions/retry", url.Values{"id": {id}, "confirm": {"yes"}})
		if queued.status != http.StatusConflict {
			t.Fatalf("retry of a queued request: %d", queued.status)
		}
	})

	t.Run("Redeliver", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "https://hooks.example.com/h")
		b.exec(id, `UPDATE async_requests SET state = 'FAILED', webhook_state = 'FAILED', finished_at = now() WHERE id = $1`)
		br := b.signedIn(t, b.key)
		if a := confirmThenDo(t, br, "redeliver", url.Values{"id": {id}}, nil); a.status != http.StatusSeeOther {
			t.Fatalf("got %d\n%s", a.status, a.body)
		}
		if r := b.row(b.acme, id); r.WebhookState != postgres.WebhookPending {
			t.Fatalf("webhook %s", r.WebhookState)
		}
		none := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(none, `UPDATE async_requests SET state = 'FAILED', finished_at = now() WHERE id = $1`)
		if a := br.post("/console/actions/redeliver", url.Values{"id": {none}, "confirm": {"yes"}}); a.status != http.StatusConflict {
			t.Fatalf("redeliver without webhook: %d", a.status)
		}
	})

	t.Run("Bulk", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		a1, a2 := b.insert(b.acme, "m1", "m1-a", ""), b.insert(b.acme, "m1", "m1-a", "")
		other := b.insert(b.acme, "m1", "m1-b", "")
		failed := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(failed, `UPDATE async_requests SET state = 'FAILED', finished_at = now() WHERE id = $1`)
		br := b.signedIn(t, b.key)
		a := confirmThenDo(t, br, "bulk-cancel", url.Values{"deployment": {"m1-a"}, "state": {""}}, nil)
		if a.status != http.StatusSeeOther {
			t.Fatalf("bulk cancel: %d\n%s", a.status, a.body)
		}
		if p := br.get("/console/requests"); !strings.Contains(p.body, "2 requests matched, 2 canceled.") {
			t.Error("no counts after bulk cancel")
		}
		for id, want := range map[string]postgres.RequestState{a1: postgres.StateCanceled, a2: postgres.StateCanceled,
			other: postgres.StateQueued, failed: postgres.StateFailed} {
			if r := b.row(b.acme, id); r.State != want {
				t.Errorf("%s: %s, want %s", id, r.State, want)
			}
		}
		if a := confirmThenDo(t, br, "bulk-retry", url.Values{"deployment": {"m1-a"}, "state": {"FAILED"}}, nil); a.status != http.StatusSeeOther {
			t.Fatalf("bulk retry: %d\n%s", a.status, a.body)
		}
		if r := b.row(b.acme, failed); r.State != postgres.StateQueued {
			t.Errorf("bulk retry left %s", r.State)
		}
		if a := br.post("/console/actions/bulk-retry", url.Values{"state": {"QUEUED"}, "confirm": {"yes"}}); a.status != http.StatusConflict {
			t.Errorf("bulk retry of queued requests: %d", a.status)
		}
	})

	t.Run("Deployment", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		q := b.insert(b.acme, "m1", "m1-a", "")
		br := b.signedIn(t, b.key)
		ctx := context.Background()
		dep := func() postgres.DeploymentInfo {
			d, err := b.db.DeploymentInfoGet(ctx, b.acme, "m1-a")
			if err != nil {
				t.Fatal(err)
			}
			return d
		}
		if a := confirmThenDo(t, br, "pause", url.Values{"deployment": {"m1-a"}}, func() {
			if dep().Paused {
				t.Fatal("paused before confirmation")
			}
		}); a.status != http.StatusSeeOther || !dep().Paused {
			t.Fatalf("pause: %d", a.status)
		}
		if p := br.get("/console/"); !strings.Contains(p.body, `id="resume-m1-a"`) || !strings.Contains(p.body, "PAUSED") {
			t.Error("overview does not show the pause")
		}
		if a := confirmThenDo(t, br, "resume", url.Values{"deployment": {"m1-a"}}, nil); a.status != http.StatusSeeOther || dep().Paused {
			t.Fatalf("resume: %d", a.status)
		}
		if a := confirmThenDo(t, br, "concurrency", url.Values{"deployment": {"m1-a"}, "max_concurrency": {"17"}}, nil); a.status != http.StatusSeeOther || dep().MaxConcurrency != 17 {
			t.Fatalf("concurrency: %d, now %d", a.status, dep().MaxConcurrency)
		}
		for _, bad := range []string{"0", "100001", "x", ""} {
			if a := br.post("/console/actions/concurrency", url.Values{"deployment": {"m1-a"}, "max_concurrency": {bad}}); a.status != http.StatusConflict {
				t.Errorf("max_concurrency %q: %d", bad, a.status)
			}
		}
		if a := confirmThenDo(t, br, "purge", url.Values{"deployment": {"m1-a"}}, nil); a.status != http.StatusSeeOther {
			t.Fatalf("purge: %d", a.status)
		}
		if r := b.row(b.acme, q); r.State != postgres.StateCanceled {
			t.Errorf("purge left %s", r.State)
		}
	})

	t.Run("KeysAndSecrets", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.signedIn(t, b.key)
		a := br.post("/console/actions/create-key", url.Values{"name": {"deploy bot"}, "scope": {"invoke"}})
		if a.status != http.StatusOK {
			t.Fatalf("create key: %d\n%s", a.status, a.body)
		}
		key := regexpFind(t, a.body, `id="new-key">(ak_[A-Za-z0-9_-]+)<`)
		if a.header.Get("Cache-Control") != "no-store" {
			t.Error("the page showing a new key may be cached")
		}
		if p := br.get("/console/keys"); strings.Contains(p.body, key) || !strings.Contains(p.body, "deploy bot") {
			t.Error("the key is shown again, or not listed")
		}
		// The new key signs in, with scope invoke.
		if a := b.browser(t).signIn(key); a.status != http.StatusSeeOther {
			t.Fatalf("new key signs in: %d", a.status)
		}
		if a := br.post("/console/actions/create-key", url.Values{"scope": {"root"}}); a.status != http.StatusConflict {
			t.Errorf("bad scope: %d", a.status)
		}

		rot := confirmThenDo(t, br, "rotate-secret", url.Values{}, nil)
		if rot.status != http.StatusOK {
			t.Fatalf("rotate: %d", rot.status)
		}
		secret := html.UnescapeString(regexpFind(t, rot.body, `id="new-secret">(whsec_[^<]+)<`))
		active, err := b.db.WebhookSecretsActive(context.Background(), b.acme)
		if err != nil || len(active) == 0 || active[0] != secret {
			t.Fatalf("rotated secret %q is not current: %v %v", secret, active, err)
		}
		if p := br.get("/console/secrets"); strings.Contains(p.body, secret) || !strings.Contains(p.body, "CURRENT") {
			t.Error("the secret is shown again, or not listed")
		}
	})

	t.Run("RefusedWithoutCSRFToken", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		br := b.signedIn(t, b.key)
		for name, form := range map[string]url.Values{
			"Missing": {"id": {id}, "confirm": {"yes"}, "csrf": {""}},
			"Wrong":   {"id": {id}, "confirm": {"yes"}, "csrf": {"x" + br.csrf}},
		} {
			if a := br.post("/console/actions/cancel", form); a.status != http.StatusForbidden {
				t.Errorf("%s token: %d", name, a.status)
			}
		}
		// Another session's token does not do either.
		other := b.signedIn(t, b.key)
		if a := br.post("/console/actions/cancel", url.Values{"id": {id}, "confirm": {"yes"}, "csrf": {other.csrf}}); a.status != http.StatusForbidden {
			t.Errorf("another session's token: %d", a.status)
		}
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/console/actions/cancel",
			strings.NewReader(url.Values{"id": {id}, "confirm": {"yes"}, "csrf": {br.csrf}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://evil.example")
		if a := br.do(req); a.status != http.StatusForbidden {
			t.Errorf("cross-origin post: %d", a.status)
		}
		req, _ = http.NewRequest(http.MethodPost, b.srv.URL+"/console/actions/cancel",
			strings.NewReader(url.Values{"id": {id}, "confirm": {"yes"}, "csrf": {br.csrf}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "cross-site")
		if a := br.do(req); a.status != http.StatusForbidden {
			t.Errorf("cross-site post: %d", a.status)
		}
		if r := b.row(b.acme, id); r.State != postgres.StateQueued {
			t.Fatalf("a refused form canceled the request: %s", r.State)
		}
		if a := br.post("/console/signout", url.Values{"csrf": {""}}); a.status != http.StatusForbidden {
			t.Errorf("sign-out without token: %d", a.status)
		}
	})

	t.Run("InvokeKeySeesButCannotAct", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		br := b.signedIn(t, b.invokeKey)
		for _, path := range []string{"/console/", "/console/requests", "/console/requests/" + id, "/console/keys", "/console/secrets"} {
			a := br.get(path)
			if a.status != http.StatusOK {
				t.Errorf("%s: %d", path, a.status)
			}
			if strings.Contains(a.body, `action="/console/actions/`) {
				t.Errorf("%s offers actions to an invoke key", path)
			}
		}
		for _, action := range []string{"cancel", "retry", "redeliver", "bulk-cancel", "bulk-retry", "purge", "pause",
			"resume", "concurrency", "create-key", "revoke-key", "rotate-secret"} {
			a := br.post("/console/actions/"+action, url.Values{"id": {id}, "deployment": {"m1-a"}, "confirm": {"yes"}, "scope": {"manage"}})
			if a.status != http.StatusForbidden {
				t.Errorf("%s: %d", action, a.status)
			}
		}
		if r := b.row(b.acme, id); r.State != postgres.StateQueued {
			t.Fatalf("an invoke key canceled: %s", r.State)
		}
	})
}
