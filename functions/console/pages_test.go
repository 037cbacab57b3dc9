package console_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/postgres"
)

func TestPages(t *testing.T) {
	t.Parallel()

	t.Run("Overview", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		queued := b.insert(b.acme, "m1", "m1-a", "")
		b.insert(b.acme, "m1", "m1-a", "")
		done := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(done, `UPDATE async_requests SET state = 'SUCCEEDED', finished_at = now(), status_at = now() WHERE id = $1`)
		failed := b.insert(b.acme, "m1", "m1-b", "")
		b.exec(failed, `UPDATE async_requests SET state = 'FAILED', finished_at = now(), status_at = now() WHERE id = $1`)
		b.insert(b.other, "om", "om-a", "")
		_ = queued

		a := b.signedIn(t, b.key).get("/console/")
		if a.status != http.StatusOK {
			t.Fatalf("got %d", a.status)
		}
		for _, want := range []string{`id="dep-m1-a"`, `id="dep-m1-b"`, `<span class="n">2</span><span class="l">queued</span>`,
			"/ 4</small>", "1 finished in the last hour: 1 succeeded", "1 finished in the last hour: 1 failed",
			`<rect class="s-ok"`, `<rect class="s-bad"`, "<polyline", `id="pause-m1-a"`} {
			if !strings.Contains(a.body, want) {
				t.Errorf("overview lacks %q", want)
			}
		}
		if strings.Contains(a.body, "om-a") {
			t.Error("overview shows another organization's deployment")
		}
	})

	t.Run("Requests", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		var ids []string
		for range 55 {
			ids = append(ids, b.insert(b.acme, "m1", "m1-a", ""))
		}
		failed := b.insert(b.acme, "m1", "m1-b", "")
		b.exec(failed, `UPDATE async_requests SET state = 'FAILED', finished_at = now() WHERE id = $1`)
		foreign := b.insert(b.other, "om", "om-a", "")
		br := b.signedIn(t, b.key)

		first := br.get("/console/requests")
		if first.status != http.StatusOK || !strings.Contains(first.body, failed) || strings.Contains(first.body, foreign) {
			t.Fatalf("first page: %d", first.status)
		}
		next := regexpFind(t, first.body, `href="(/console/requests\?cursor=[^"]+)" id="older"`)
		second := br.get(strings.ReplaceAll(next, "&amp;", "&"))
		if second.status != http.StatusOK {
			t.Fatalf("second page: %d", second.status)
		}
		// Every request once across the two pages, newest first.
		for _, id := range append(ids, failed) {
			if n := strings.Count(first.body+second.body, `href="/console/requests/`+id+`"`); n != 1 {
				t.Errorf("request %s on %d pages", id, n)
			}
		}

		byState := br.get("/console/requests?state=FAILED")
		if !strings.Contains(byState.body, failed) || strings.Contains(byState.body, ids[0]) {
			t.Error("state filter")
		}
		byDep := br.get("/console/requests?deployment=m1-b")
		if !strings.Contains(byDep.body, failed) || strings.Contains(byDep.body, ids[0]) {
			t.Error("deployment filter")
		}
		if a := br.get("/console/requests?q=" + strings.ToUpper(failed)); a.status != http.StatusSeeOther ||
			a.header.Get("Location") != "/console/requests/"+failed {
			t.Errorf("search: %d %q", a.status, a.header.Get("Location"))
		}
		if a := br.get("/console/requests?cursor=not-a-cursor"); a.status != http.StatusOK || !strings.Contains(a.body, "no longer valid") {
			t.Errorf("bad cursor: %d", a.status)
		}
	})

	t.Run("Timeline", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "https://hooks.example.com/path?token=secret")
		b.exec(id, `UPDATE async_requests SET state = 'SUCCEEDED', attempts = 2, finished_at = now(), status_at = now(),
			output = convert_to('{"text": "fine"}', 'UTF8'),
			errors = '[{"code": "MODEL_UNAVAILABLE", "message": "model answered 503"}]' WHERE id = $1`)
		b.exec(id, `INSERT INTO request_attempts (request_id, number, started_at, finished_at, http_status, code, message, processor)
			VALUES ($1, 1, now() - interval '2 s', now() - interval '1 s', 503, 'MODEL_UNAVAILABLE', 'model answered 503', 'p1'),
			       ($1, 2, now() - interval '1 s', now(), 200, NULL, NULL, 'p1')`)
		b.exec(id, `INSERT INTO webhook_delivery_attempts (request_id, delivery_id, sent_at, duration_ms, http_status, outcome, error)
			VALUES ($1, 1, now(), 12, 500, 'RETRY', 'receiver answered 500'), ($1, 1, now() + interval '1 s', 8, 200, 'SUCCEEDED', NULL)`)
		a := b.signedIn(t, b.key).get("/console/requests/" + id)
		if a.status != http.StatusOK {
			t.Fatalf("got %d", a.status)
		}
		for _, want := range []string{"Submitted", "Attempt 1", "MODEL_UNAVAILABLE", "model answered HTTP 503", "Attempt 2",
			"Finished", "Webhook to hooks.example.com", "receiver answered HTTP 500", "RETRY", `id="redeliver"`,
			`{&#34;text&#34;: &#34;fine&#34;}`} {
			if !strings.Contains(a.body, want) {
				t.Errorf("timeline lacks %q", want)
			}
		}
		if strings.Contains(a.body, "token=secret") || strings.Contains(a.body, "/path") {
			t.Error("timeline shows the webhook URL's path or query")
		}
	})

	t.Run("HostileContentEscaped", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(id, `UPDATE async_requests SET state = 'FAILED', finished_at = now(), input = convert_to($2, 'UTF8'),
			output = convert_to($2, 'UTF8'), errors = jsonb_build_array(jsonb_build_object('code', 'MODEL_PREDICT_ERROR', 'message', $2::text))
			WHERE id = $1`, `"<script>alert(1)</script><img src=x onerror=alert(2)>"`)
		b.exec(id, `INSERT INTO request_attempts (request_id, number, started_at, finished_at, http_status, code, message, processor)
			VALUES ($1, 1, now(), now(), 500, 'MODEL_PREDICT_ERROR', $2, 'p1')`, `<script>alert(3)</script>`)
		if _, err := b.db.Pool.Exec(context.Background(), `UPDATE api_keys SET name = '<script>alert(4)</script>' WHERE organization_id = $1`, b.acme); err != nil {
			t.Fatal(err)
		}
		br := b.signedIn(t, b.key)
		for _, path := range []string{"/console/requests/" + id, "/console/keys", "/console/requests?q=%3Cscript%3Ealert(5)%3C/script%3E",
			"/console/requests/%3Cscript%3Ealert(6)%3C%2Fscript%3E", "/console/requests?deployment=%3Cscript%3E&state=%3Cscript%3E"} {
			a := br.get(path)
			if a.status >= 500 {
				t.Errorf("%s: %d", path, a.status)
			}
			if strings.Contains(a.body, "<script") || strings.Contains(a.body, "<img src=x") {
				t.Errorf("%s: unescaped markup", path)
			}
		}
		if a := br.get("/console/requests/" + id); !strings.Contains(a.body, "&lt;script&gt;alert(1)&lt;/script&gt;") ||
			!strings.Contains(a.body, "&lt;script&gt;alert(3)&lt;/script&gt;") {
			t.Error("hostile output not shown escaped")
		}
		if a := br.get("/console/requests?q=%3Cscript%3Ealert(5)%3C/script%3E"); !strings.Contains(a.body, "&lt;script&gt;alert(5)") {
			t.Error("search text not shown escaped")
		}
	})

	t.Run("LongOutputTruncated", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id := b.insert(b.acme, "m1", "m1-a", "")
		b.exec(id, `UPDATE async_requests SET state = 'SUCCEEDED', finished_at = now(), output = convert_to('"' || repeat('é', 10000) || '"', 'UTF8') WHERE id = $1`)
		a := b.signedIn(t, b.key).get("/console/requests/" + id)
		if !strings.Contains(a.body, "of 20002 bytes shown") || strings.Count(a.body, "é") > 4096 || strings.Contains(a.body, "\uFFFD") {
			t.Errorf("output not truncated at a character: %d é", strings.Count(a.body, "é"))
		}
	})

	t.Run("KeysAndSecrets", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		br := b.signedIn(t, b.key)
		keys := br.get("/console/keys")
		if keys.status != http.StatusOK || !strings.Contains(keys.body, "ci") || strings.Contains(keys.body, b.key) || strings.Contains(keys.body, b.invokeKey) {
			t.Fatalf("keys page: %d", keys.status)
		}
		if a := br.get("/console/secrets"); a.status != http.StatusOK {
			t.Fatalf("secrets page: %d", a.status)
		}
	})

	t.Run("CrossOrganizationNotFound", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		foreign := b.insert(b.other, "om", "om-a", "")
		br := b.signedIn(t, b.key)
		missing := br.get("/console/requests/00000000000000000000000000000001")
		other := br.get("/console/requests/" + foreign)
		if other.status != http.StatusNotFound || missing.status != http.StatusNotFound ||
			strings.ReplaceAll(other.body, foreign, "") != strings.ReplaceAll(missing.body, "00000000000000000000000000000001", "") {
			t.Fatalf("another organization's request: %d, a missing one: %d", other.status, missing.status)
		}
		for _, act := range []struct {
			action string
			form   url.Values
		}{
			{"cancel", url.Values{"id": {foreign}}},
			{"retry", url.Values{"id": {foreign}}},
			{"redeliver", url.Values{"id": {foreign}}},
			{"pause", url.Values{"deployment": {"om-a"}}},
			{"purge", url.Values{"deployment": {"om-a"}}},
			{"concurrency", url.Values{"deployment": {"om-a"}, "max_concurrency": {"3"}}},
		} {
			act.form.Set("confirm", "yes")
			if a := br.post("/console/actions/"+act.action, act.form); a.status != http.StatusNotFound {
				t.Errorf("%s on another organization's: %d", act.action, a.status)
			}
		}
		if r := b.row(b.other, foreign); r.State != postgres.StateQueued {
			t.Errorf("another organization's request is %s", r.State)
		}
		if a := br.get("/console/requests?deployment=om-a"); strings.Contains(a.body, foreign) {
			t.Error("requests page shows another organization's request")
		}
		if a := br.get("/console/nowhere"); a.status != http.StatusNotFound {
			t.Errorf("unknown page: %d", a.status)
		}
	})
}
