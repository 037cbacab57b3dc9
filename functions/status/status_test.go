package status_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/openasync/asyncrequest/functions/status"
	"github.com/openasync/asyncrequest/functions/submit"
	"github.com/openasync/asyncrequest/shared/config"
	"github.com/openasync/asyncrequest/shared/httpapi"
	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
	"github.com/openasync/asyncrequest/shared/telemetry"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type bundle struct {
	db       *postgres.DB
	h        http.Handler
	clock    *apitest.Clock
	key      string // acme's
	otherKey string // other's
	acme     int64
	other    int64
	// insert queues a request of org for model (a chain when isChain) on
	// deployment, with webhook ("" for none), and returns its id.
	insert func(org int64, model string, isChain bool, deployment, webhook string) string
	// exec runs SQL with the request id as $1.
	exec func(id, sql string)
	// do sends an authenticated request (key "" means acme's).
	do func(method, host, path, key string) *httptest.ResponseRecorder
	// row reads a request of acme.
	row func(id string) postgres.Request
}

// setup seeds acme (model m1: m1-a production and staging, m1-b
// development; model m2: m2-a production; chain c1: c1-a production and
// development) and other (model om: om-a production).
func setup(t testing.TB, opts ...func(*status.Options)) bundle {
	t.Helper()
	ctx := context.Background()
	db := pgtest.New(t)
	seed := func(org string, models []postgres.Model, deps []postgres.Deployment) (string, int64) {
		tenant := pgtest.SeedTenant(t, db, org, models, deps)
		return tenant.Key, tenant.ID
	}
	key, acme := seed("acme",
		[]postgres.Model{{ID: "m1", Kind: postgres.KindModel}, {ID: "m2", Kind: postgres.KindModel}, {ID: "c1", Kind: postgres.KindChain}},
		[]postgres.Deployment{
			{ID: "m1-a", ModelID: "m1", Environments: []string{"production", "staging"}},
			{ID: "m1-b", ModelID: "m1", Environments: []string{"development"}},
			{ID: "m2-a", ModelID: "m2", Environments: []string{"production"}},
			{ID: "c1-a", ModelID: "c1", Environments: []string{"production", "development"}},
		})
	otherKey, other := seed("other", []postgres.Model{{ID: "om", Kind: postgres.KindModel}},
		[]postgres.Deployment{{ID: "om-a", ModelID: "om", Environments: []string{"production"}}})

	c := apitest.NewClock(time.Date(2026, 11, 28, 14, 0, 0, 0, time.UTC))
	o := status.Options{DB: db, Now: c.Now}
	for _, f := range opts {
		f(&o)
	}
	h := apitest.Validated(t, status.New(o))
	b := bundle{db: db, h: h, clock: c, key: key, otherKey: otherKey, acme: acme, other: other}
	b.insert = func(org int64, model string, isChain bool, deployment, webhook string) string {
		res, err := db.RequestInsert(ctx, postgres.RequestInsertParams{
			ID: requestid.New(), OrganizationID: org, ModelID: model, IsChain: isChain, DeploymentID: deployment,
			WebhookEndpoint: webhook, MaxTimeInQueue: time.Hour, MaxAttempts: 3, InitialDelayMS: 1000, MaxDelayMS: 5000,
			Input: []byte(`{"in": 1}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID.String()
	}
	b.exec = func(id, sql string) {
		t.Helper()
		rid, err := requestid.Parse(id)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.Pool.Exec(ctx, sql, rid); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	b.do = func(method, host, path, k string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://placeholder/", nil)
		r.URL.Path = path
		r.Host = host
		r.Header.Set("Authorization", "Api-Key "+cmpOr(k, key))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		return rec
	}
	b.row = func(id string) postgres.Request {
		t.Helper()
		rid, _ := requestid.Parse(id)
		r, err := db.RequestGetByID(ctx, acme, rid)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	return b
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// decode asserts status and returns the JSON object body.
func decode(t *testing.T, rec *httptest.ResponseRecorder, status int) map[string]any {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status = %d, want %d; body %s", rec.Code, status, rec.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
	return m
}

func keys(m map[string]any) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return strings.Join(sortStrings(ks), ",")
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

var timeFormat = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$`)

func TestGet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	model := b.insert(b.acme, "m1", false, "m1-a", "")
	chain := b.insert(b.acme, "c1", true, "c1-a", "https://hooks.example.com/x")
	b.exec(model, `UPDATE async_requests SET state = 'QUEUED', attempts = 2, errors =
		'[{"code": "MODEL_UNAVAILABLE", "message": "first"}, {"code": "MODEL_PREDICT_ERROR", "message": "second"}]' WHERE id = $1`)

	tests := []struct {
		name, kind, id, request, idKey, webhook string
		attempts                                float64
		errors                                  int
	}{
		{"Model", "model", "m1", model, "model_id", "NO_WEBHOOK_PROVIDED", 2, 2},
		{"Chain", "chain", "c1", chain, "chain_id", "PENDING", 0, 0},
	}
	for _, f := range append(apitest.Forms, apitest.Form{Name: "NoTarget", URL: func(_, _, path string) (string, string) { return "api.example.com", path }}) {
		for _, tt := range tests {
			t.Run(f.Name+tt.name, func(t *testing.T) {
				t.Parallel()
				host, path := f.URL(tt.kind, tt.id, "/async_request/"+tt.request)
				m := decode(t, b.do("GET", host, path, ""), http.StatusOK)
				want := "attempts,created_at,deployment_id,errors," + tt.idKey + ",queue_position,request_id,status,status_at,webhook_status"
				if got := keys(m); got != strings.Join(sortStrings(strings.Split(want, ",")), ",") {
					t.Errorf("keys %s, want %s", got, want)
				}
				if m["request_id"] != tt.request || m[tt.idKey] != tt.id || m["status"] != "QUEUED" ||
					m["webhook_status"] != tt.webhook || m["attempts"] != tt.attempts || m["queue_position"] != 0.0 {
					t.Errorf("body %v", m)
				}
				for _, k := range []string{"created_at", "status_at"} {
					if s, _ := m[k].(string); !timeFormat.MatchString(s) {
						t.Errorf("%s = %q, want RFC 3339 UTC with microseconds", k, s)
					}
				}
				errs, ok := m["errors"].([]any)
				if !ok || len(errs) != tt.errors {
					t.Fatalf("errors = %v, want an array of %d", m["errors"], tt.errors)
				}
				if tt.errors == 2 {
					first, _ := errs[0].(map[string]any)
					if first["code"] != "MODEL_UNAVAILABLE" || first["message"] != "first" {
						t.Errorf("errors not oldest first: %v", errs)
					}
				}
			})
		}
	}

	t.Run("QueuePosition", func(t *testing.T) {
		t.Parallel()
		// m2-a is this subtest's alone.
		ids := []string{b.insert(b.acme, "m2", false, "m2-a", ""), b.insert(b.acme, "m2", false, "m2-a", ""), b.insert(b.acme, "m2", false, "m2-a", "")}
		position := func(id string) any {
			t.Helper()
			return decode(t, b.do("GET", "model-m2.api.example.com", "/async_request/"+id, ""), http.StatusOK)["queue_position"]
		}
		if got := position(ids[2]); got != 2.0 {
			t.Errorf("third in line: queue_position = %v, want 2", got)
		}
		b.exec(ids[0], `UPDATE async_requests SET state = 'IN_PROGRESS' WHERE id = $1`)
		if got := position(ids[2]); got != 1.0 {
			t.Errorf("once the first runs: queue_position = %v, want 1", got)
		}
		if got := position(ids[0]); got != nil {
			t.Errorf("a running request: queue_position = %v, want none", got)
		}
	})

	t.Run("TimesAreUTCMicroseconds", func(t *testing.T) {
		t.Parallel()
		id := b.insert(b.acme, "m1", false, "m1-a", "")
		b.exec(id, `UPDATE async_requests SET created_at = '2026-11-28T15:00:00.1234567+01:00', status_at = '2026-11-28T14:00:01Z' WHERE id = $1`)
		m := decode(t, b.do("GET", "api.example.com", "/async_request/"+id, ""), http.StatusOK)
		if m["created_at"] != "2026-11-28T14:00:00.123457Z" || m["status_at"] != "2026-11-28T14:00:01.000000Z" {
			t.Errorf("created_at %v status_at %v", m["created_at"], m["status_at"])
		}
	})
}

func TestRequestNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mine := b.insert(b.acme, "m1", false, "m1-a", "https://hooks.example.com/x")
	theirs := b.insert(b.other, "om", false, "om-a", "https://hooks.example.com/x")
	b.exec(theirs, `UPDATE async_requests SET state = 'SUCCEEDED', output = '{"secret": 1}' WHERE id = $1`)
	missing := requestid.New().String()

	routes := []struct{ method, suffix string }{
		{"GET", ""}, {"DELETE", ""}, {"GET", "/result"}, {"POST", "/webhook"},
	}
	for _, rt := range routes {
		t.Run(rt.method+strings.ReplaceAll(rt.suffix, "/", "_"), func(t *testing.T) {
			ref := b.do(rt.method, "api.example.com", "/async_request/"+missing+rt.suffix, "")
			apitest.CheckError(t, ref, http.StatusNotFound, "NOT_FOUND", "")
			tests := []struct {
				name, host, path string
			}{
				{"AnotherOrgs", "api.example.com", "/async_request/" + theirs},
				{"AnotherOrgsWithItsModel", "model-om.api.example.com", "/async_request/" + theirs},
				{"Malformed", "api.example.com", "/async_request/not-an-id"},
				{"Uppercase", "api.example.com", "/async_request/" + strings.ToUpper(mine)},
				{"AllZeros", "api.example.com", "/async_request/" + strings.Repeat("0", 32)},
				{"OtherModelHost", "model-m2.api.example.com", "/async_request/" + mine},
				{"OtherModelPath", "api.example.com", "/models/m2/async_request/" + mine},
				{"ChainPrefixForModel", "api.example.com", "/chains/m1/async_request/" + mine},
				{"ChainHostForModel", "chain-m1.api.example.com", "/async_request/" + mine},
			}
			for _, tt := range tests {
				rec := b.do(rt.method, tt.host, tt.path+rt.suffix, "")
				if rec.Code != http.StatusNotFound || rec.Body.String() != ref.Body.String() {
					t.Errorf("%s: %d %s, want the bytes of a missing request's answer %s", tt.name, rec.Code, rec.Body, ref.Body)
				}
			}
		})
	}

	t.Run("TheirsUntouched", func(t *testing.T) {
		// After every route above ran: the other organization's request was
		// neither canceled nor queued for redelivery.
		rid, _ := requestid.Parse(theirs)
		r, err := b.db.RequestGetByID(context.Background(), b.other, rid)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookPending {
			t.Errorf("state %s webhook %s", r.State, r.WebhookState)
		}
		var n int
		if err := b.db.Pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_deliveries`).Scan(&n); err != nil || n != 0 {
			t.Errorf("%d deliveries (%v), want 0", n, err)
		}
	})
}

func TestCancel(t *testing.T) {
	t.Parallel()
	b := setup(t)

	type answer struct {
		RequestID string `json:"request_id"`
		Canceled  bool   `json:"canceled"`
		Message   string `json:"message"`
	}
	cancel := func(t *testing.T, host, path string) answer {
		t.Helper()
		rec := b.do("DELETE", host, path, "")
		m := decode(t, rec, http.StatusOK)
		if got := keys(m); got != "canceled,message,request_id" {
			t.Errorf("keys %s", got)
		}
		var a answer
		_ = json.Unmarshal(rec.Body.Bytes(), &a)
		if a.Message == "" {
			t.Error("empty message")
		}
		return a
	}

	for _, f := range apitest.Forms {
		t.Run(f.Name+"Queued", func(t *testing.T) {
			t.Parallel()
			id := b.insert(b.acme, "c1", true, "c1-a", "https://hooks.example.com/x")
			host, path := f.URL("chain", "c1", "/async_request/"+id)
			if a := cancel(t, host, path); !a.Canceled || a.RequestID != id {
				t.Errorf("first cancel %+v, want canceled", a)
			}
			r := b.row(id)
			if r.State != postgres.StateCanceled || r.WebhookState != postgres.WebhookCanceled {
				t.Errorf("after cancel: %s %s", r.State, r.WebhookState)
			}
			if a := cancel(t, host, path); a.Canceled || !strings.Contains(a.Message, "already canceled") {
				t.Errorf("second cancel %+v, want not canceled, already", a)
			}
		})
	}
	for _, state := range []string{"IN_PROGRESS", "SUCCEEDED", "FAILED", "EXPIRED"} {
		t.Run(state, func(t *testing.T) {
			t.Parallel()
			id := b.insert(b.acme, "m1", false, "m1-a", "")
			b.exec(id, `UPDATE async_requests SET state = '`+state+`' WHERE id = $1`)
			a := cancel(t, "model-m1.example.com", "/async_request/"+id)
			if a.Canceled || a.Message != "request is "+state+" and can no longer be canceled" {
				t.Errorf("%+v", a)
			}
			if r := b.row(id); string(r.State) != state {
				t.Errorf("state changed to %s", r.State)
			}
		})
	}
}

func TestCancelCounted(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	metrics := telemetry.NewMetrics(reg)
	b := setup(t, func(o *status.Options) { o.Metrics = metrics })
	canceled := func() float64 {
		return testCounter(t, metrics.Completed.WithLabelValues("CANCELED"))
	}
	id := b.insert(b.acme, "m1", false, "m1-a", "")
	for range 2 { // the second cancel finds it canceled already and counts nothing
		if rec := b.do("DELETE", "", "/async_request/"+id, ""); rec.Code != http.StatusOK {
			t.Fatalf("cancel = %d %s", rec.Code, rec.Body)
		}
	}
	if got := canceled(); got != 1 {
		t.Errorf("completed{status=CANCELED} = %v, want 1", got)
	}
}

func testCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestQueueStatus(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for range 3 {
		b.insert(b.acme, "m1", false, "m1-a", "")
	}
	running := b.insert(b.acme, "m1", false, "m1-a", "")
	b.exec(running, `UPDATE async_requests SET state = 'IN_PROGRESS' WHERE id = $1`)
	done := b.insert(b.acme, "m1", false, "m1-a", "")
	b.exec(done, `UPDATE async_requests SET state = 'SUCCEEDED' WHERE id = $1`)
	b.insert(b.acme, "m1", false, "m1-b", "")
	b.insert(b.acme, "c1", true, "c1-a", "")
	b.insert(b.other, "om", false, "om-a", "")

	tests := []struct {
		kind, id, where, deployment string
		queued, inProgress          float64
	}{
		{"model", "m1", "/production", "m1-a", 3, 1},
		{"model", "m1", "/environments/staging", "m1-a", 3, 1},
		{"model", "m1", "/development", "m1-b", 1, 0},
		{"model", "m1", "/deployment/m1-b", "m1-b", 1, 0},
		{"model", "m2", "/production", "m2-a", 0, 0},
		{"chain", "c1", "/development", "c1-a", 1, 0},
	}
	for _, f := range apitest.Forms {
		for _, tt := range tests {
			t.Run(f.Name+tt.id+strings.ReplaceAll(tt.where, "/", "_"), func(t *testing.T) {
				t.Parallel()
				host, path := f.URL(tt.kind, tt.id, tt.where+"/async_queue_status")
				m := decode(t, b.do("GET", host, path, ""), http.StatusOK)
				idKey := tt.kind + "_id"
				if got, want := keys(m), strings.Join(sortStrings([]string{"deployment_id", idKey, "num_in_progress_requests", "num_queued_requests"}), ","); got != want {
					t.Errorf("keys %s, want %s", got, want)
				}
				if m[idKey] != tt.id || m["deployment_id"] != tt.deployment ||
					m["num_queued_requests"] != tt.queued || m["num_in_progress_requests"] != tt.inProgress {
					t.Errorf("body %v", m)
				}
			})
		}
	}

	ref := b.do("GET", "model-nope.example.com", "/production/async_queue_status", "")
	apitest.CheckError(t, ref, http.StatusNotFound, "NOT_FOUND", "")
	for _, tt := range []struct{ name, host, path string }{
		{"AnotherOrgsModel", "model-om.example.com", "/production/async_queue_status"},
		{"AnotherOrgsDeployment", "api.example.com", "/models/om/deployment/om-a/async_queue_status"},
		{"UnknownEnvironment", "model-m1.example.com", "/environments/qa/async_queue_status"},
		{"DeploymentOfAnotherModel", "model-m1.example.com", "/deployment/m2-a/async_queue_status"},
		{"ChainAsModel", "model-c1.example.com", "/production/async_queue_status"},
		{"EnvironmentInvalidUTF8", "model-m1.example.com", "/environments/\xffqa/async_queue_status"},
		{"DeploymentNUL", "api.example.com", "/models/m1/deployment/m1-a\x00/async_queue_status"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := b.do("GET", tt.host, tt.path, "")
			if rec.Code != http.StatusNotFound || rec.Body.String() != ref.Body.String() {
				t.Errorf("%d %s, want the bytes of an unknown model's answer %s", rec.Code, rec.Body, ref.Body)
			}
		})
	}
	t.Run("NoTarget", func(t *testing.T) {
		t.Parallel()
		apitest.CheckError(t, b.do("GET", "api.example.com", "/production/async_queue_status", ""), http.StatusNotFound, "NOT_FOUND", "")
	})
}

func TestResult(t *testing.T) {
	t.Parallel()
	b := setup(t)

	t.Run("Succeeded", func(t *testing.T) {
		t.Parallel()
		for _, tt := range []struct{ kind, id, deployment string }{{"model", "m1", "m1-a"}, {"chain", "c1", "c1-a"}} {
			for _, f := range apitest.Forms {
				id := b.insert(b.acme, tt.id, tt.kind == "chain", tt.deployment, "")
				b.exec(id, `UPDATE async_requests SET state = 'SUCCEEDED', output = '{"output": [1, "two"]}' WHERE id = $1`)
				host, path := f.URL(tt.kind, tt.id, "/async_request/"+id+"/result")
				rec := b.do("GET", host, path, "")
				m := decode(t, rec, http.StatusOK)
				want := strings.Join(sortStrings([]string{"deployment_id", tt.kind + "_id", "output", "request_id", "status"}), ",")
				if got := keys(m); got != want {
					t.Errorf("keys %s, want %s", got, want)
				}
				if m["request_id"] != id || m[tt.kind+"_id"] != tt.id || m["deployment_id"] != tt.deployment || m["status"] != "SUCCEEDED" {
					t.Errorf("body %v", m)
				}
				var out struct{ Output json.RawMessage }
				_ = json.Unmarshal(rec.Body.Bytes(), &out)
				if string(out.Output) != `{"output":[1,"two"]}` && string(out.Output) != `{"output": [1, "two"]}` {
					t.Errorf("output %s", out.Output)
				}
			}
		}
	})

	tests := []struct {
		name, sql, code string
		status          int
	}{
		{"Queued", `SELECT $1::uuid`, "RESULT_NOT_READY", 404},
		{"InProgress", `UPDATE async_requests SET state = 'IN_PROGRESS' WHERE id = $1`, "RESULT_NOT_READY", 404},
		{"OutputGone", `UPDATE async_requests SET state = 'SUCCEEDED', output = NULL WHERE id = $1`, "RESULT_EXPIRED", 404},
		{"WebhookFailedOutputGone", `UPDATE async_requests SET state = 'WEBHOOK_FAILED' WHERE id = $1`, "RESULT_EXPIRED", 404},
		{"Failed", `UPDATE async_requests SET state = 'FAILED' WHERE id = $1`, "NO_RESULT", 404},
		{"Canceled", `UPDATE async_requests SET state = 'CANCELED' WHERE id = $1`, "NO_RESULT", 404},
		{"WebhookFailedWithOutput", `UPDATE async_requests SET state = 'WEBHOOK_FAILED', output = '"text"' WHERE id = $1`, "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := b.insert(b.acme, "m1", false, "m1-a", "")
			b.exec(id, tt.sql)
			rec := b.do("GET", "model-m1.example.com", "/async_request/"+id+"/result", "")
			if tt.status == 200 {
				if m := decode(t, rec, 200); m["output"] != "text" {
					t.Errorf("body %v", m)
				}
				return
			}
			apitest.CheckError(t, rec, tt.status, tt.code, "")
		})
	}
}

func TestRedeliver(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()

	deliveries := func(t *testing.T, id string) (pending int) {
		t.Helper()
		rid, _ := requestid.Parse(id)
		if err := b.db.Pool.QueryRow(ctx, `SELECT count(*) FROM webhook_deliveries WHERE request_id = $1 AND state = 'PENDING' AND due_at <= now()`,
			rid).Scan(&pending); err != nil {
			t.Fatal(err)
		}
		return pending
	}

	t.Run("Succeeded", func(t *testing.T) {
		t.Parallel()
		conn, err := b.db.Pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, `LISTEN `+postgres.WebhookWakeChannel); err != nil {
			t.Fatal(err)
		}
		for _, f := range apitest.Forms {
			id := b.insert(b.acme, "c1", true, "c1-a", "https://hooks.example.com/x")
			b.exec(id, `UPDATE async_requests SET state = 'SUCCEEDED', webhook_state = 'SUCCEEDED', output = '1',
				output_expires_at = now() + interval '1 hour' WHERE id = $1`)
			host, path := f.URL("chain", "c1", "/async_request/"+id+"/webhook")
			m := decode(t, b.do("POST", host, path, ""), http.StatusAccepted)
			if m["request_id"] != id {
				t.Errorf("body %v", m)
			}
			r := b.row(id)
			if r.WebhookState != postgres.WebhookPending || r.State != postgres.StateSucceeded || r.OutputExpiresAt != nil {
				t.Errorf("after redeliver: %s %s output expires %v", r.State, r.WebhookState, r.OutputExpiresAt)
			}
			if n := deliveries(t, id); n != 1 {
				t.Errorf("%d pending deliveries, want 1", n)
			}
			// Again while one is pending: accepted, nothing added.
			decode(t, b.do("POST", host, path, ""), http.StatusAccepted)
			if n := deliveries(t, id); n != 1 {
				t.Errorf("%d pending deliveries after a second redeliver, want 1", n)
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := conn.Conn().WaitForNotification(wctx); err != nil {
			t.Errorf("no wake-up on %s: %v", postgres.WebhookWakeChannel, err)
		}
	})

	t.Run("WebhookFailedBackToSucceeded", func(t *testing.T) {
		t.Parallel()
		id := b.insert(b.acme, "m1", false, "m1-a", "https://hooks.example.com/x")
		b.exec(id, `UPDATE async_requests SET state = 'WEBHOOK_FAILED', webhook_state = 'FAILED', output = '1' WHERE id = $1`)
		b.exec(id, `INSERT INTO webhook_deliveries (request_id, state, attempts) VALUES ($1, 'FAILED', 6)`)
		decode(t, b.do("POST", "model-m1.example.com", "/async_request/"+id+"/webhook", ""), http.StatusAccepted)
		r := b.row(id)
		if r.State != postgres.StateSucceeded || r.WebhookState != postgres.WebhookPending {
			t.Errorf("after redeliver: %s %s", r.State, r.WebhookState)
		}
		if n := deliveries(t, id); n != 1 {
			t.Errorf("%d pending deliveries, want 1", n)
		}
	})

	for _, state := range []string{"FAILED", "EXPIRED"} {
		t.Run(state+"WithoutOutput", func(t *testing.T) {
			t.Parallel()
			id := b.insert(b.acme, "m1", false, "m1-a", "https://hooks.example.com/x")
			b.exec(id, `UPDATE async_requests SET state = '`+state+`', webhook_state = 'SUCCEEDED' WHERE id = $1`)
			decode(t, b.do("POST", "api.example.com", "/async_request/"+id+"/webhook", ""), http.StatusAccepted)
			if n := deliveries(t, id); n != 1 {
				t.Errorf("%d pending deliveries, want 1", n)
			}
		})
	}

	refusals := []struct {
		name, webhook, sql, code string
	}{
		{"NoWebhook", "", `UPDATE async_requests SET state = 'SUCCEEDED', output = '1' WHERE id = $1`, "NO_WEBHOOK_ENDPOINT"},
		{"Queued", "https://hooks.example.com/x", `SELECT $1::uuid`, "REQUEST_NOT_FINISHED"},
		{"InProgress", "https://hooks.example.com/x", `UPDATE async_requests SET state = 'IN_PROGRESS' WHERE id = $1`, "REQUEST_NOT_FINISHED"},
		{"Canceled", "https://hooks.example.com/x", `UPDATE async_requests SET state = 'CANCELED', webhook_state = 'CANCELED' WHERE id = $1`, "REQUEST_NOT_FINISHED"},
		{"OutputGone", "https://hooks.example.com/x", `UPDATE async_requests SET state = 'SUCCEEDED', webhook_state = 'SUCCEEDED' WHERE id = $1`, "OUTPUT_EXPIRED"},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := b.insert(b.acme, "m1", false, "m1-a", tt.webhook)
			b.exec(id, tt.sql)
			before := b.row(id)
			apitest.CheckError(t, b.do("POST", "api.example.com", "/models/m1/async_request/"+id+"/webhook", ""), http.StatusConflict, tt.code, "")
			if n := deliveries(t, id); n != 0 {
				t.Errorf("%d deliveries queued by a refusal", n)
			}
			if after := b.row(id); after.State != before.State || after.WebhookState != before.WebhookState {
				t.Errorf("refusal changed the request: %s/%s -> %s/%s", before.State, before.WebhookState, after.State, after.WebhookState)
			}
		})
	}
}

func TestStatusAuth(t *testing.T) {
	t.Parallel()
	b := setup(t)
	id := b.insert(b.acme, "m1", false, "m1-a", "")
	for _, tt := range []struct {
		name, header string
		status       int
	}{
		{"Missing", "", 401},
		{"Malformed", "Api-Key", 401},
		{"UnknownKey", "Bearer " + postgres.NewAPIKey(), 401},
		{"Bearer", "Bearer " + b.key, 200},
		{"ApiKey", "Api-Key " + b.key, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest("GET", "/models/m1/async_request/"+id, nil)
			if tt.header != "" {
				r.Header.Set("Authorization", tt.header)
			}
			rec := httptest.NewRecorder()
			b.h.ServeHTTP(rec, r)
			if tt.status == 200 {
				decode(t, rec, 200)
				return
			}
			apitest.CheckError(t, rec, tt.status, "UNAUTHORIZED", "")
		})
	}
}

func TestUnknownRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for _, tt := range []struct {
		name, method, host, path string
		status                   int
		code, allow              string
	}{
		{"UnknownPath", "GET", "api.example.com", "/nothing/here", 404, "NOT_FOUND", ""},
		{"UnknownPathWithModel", "GET", "api.example.com", "/models/m1/nothing", 404, "NOT_FOUND", ""},
		{"Root", "GET", "api.example.com", "/", 404, "NOT_FOUND", ""},
		{"GetOnSubmit", "GET", "model-m1.example.com", "/production/async_predict", 405, "METHOD_NOT_ALLOWED", "POST"},
		{"GetOnSubmitPrefixed", "GET", "api.example.com", "/chains/c1/deployment/c1-a/async_run_remote", 405, "METHOD_NOT_ALLOWED", "POST"},
		{"PutOnRequest", "PUT", "api.example.com", "/async_request/" + requestid.New().String(), 405, "METHOD_NOT_ALLOWED", "DELETE, GET, HEAD"},
		{"GetOnWebhook", "GET", "api.example.com", "/async_request/" + requestid.New().String() + "/webhook", 405, "METHOD_NOT_ALLOWED", "POST"},
		{"PostOnQueueStatus", "POST", "api.example.com", "/models/m1/production/async_queue_status", 405, "METHOD_NOT_ALLOWED", "GET, HEAD"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := httptest.NewRequest(tt.method, "http://placeholder/", nil)
			r.URL.Path, r.Host = tt.path, tt.host // no credentials: routing answers first
			rec := httptest.NewRecorder()
			b.h.ServeHTTP(rec, r)
			apitest.CheckError(t, rec, tt.status, tt.code, "")
			if got := rec.Header().Get("Allow"); got != tt.allow {
				t.Errorf("Allow = %q, want %q", got, tt.allow)
			}
		})
	}
}

func TestReadRateLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *status.Options) { o.API = config.API{ReadRate: 1} })
	id := b.insert(b.acme, "m1", false, "m1-a", "")
	for range httpapi.ReadBurst(1) {
		decode(t, b.do("GET", "api.example.com", "/async_request/"+id, ""), 200)
	}
	rec := b.do("DELETE", "api.example.com", "/async_request/"+id, "")
	apitest.CheckError(t, rec, http.StatusTooManyRequests, "RATE_LIMITED", "")
	if rec.Header().Get("Retry-After") != "1" {
		t.Errorf("Retry-After = %q", rec.Header().Get("Retry-After"))
	}
	if r := b.row(id); r.State != postgres.StateQueued {
		t.Errorf("a limited cancel canceled: %s", r.State)
	}
	// Another organization has its own bucket.
	apitest.CheckError(t, b.do("GET", "api.example.com", "/async_request/"+id, b.otherKey), http.StatusNotFound, "NOT_FOUND", "")
	b.clock.Advance(time.Second)
	decode(t, b.do("GET", "api.example.com", "/async_request/"+id, ""), 200)
}

func TestStatusDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	db, err := postgres.Open(context.Background(), "postgres://postgres@127.0.0.1:1/x?connect_timeout=2", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	h := status.New(status.Options{DB: db})
	r := httptest.NewRequest("GET", "/async_request/"+requestid.New().String(), nil)
	r.Header.Set("Authorization", "Bearer "+postgres.NewAPIKey())
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	apitest.CheckError(t, rec, http.StatusServiceUnavailable, "SERVICE_UNAVAILABLE", "")
	if rec.Header().Get("Retry-After") == "" {
		t.Error("no Retry-After")
	}
}

// TestMux drives submit and status through httpapi.Mux, as the dev server
// on :9001 does: submit, read, queue status, cancel.
func TestMux(t *testing.T) {
	t.Parallel()
	b := setup(t)
	mux := apitest.Validated(t, httpapi.Mux(submit.New(submit.Options{DB: b.db}), b.h))
	do := func(method, host, path, body string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(method, "http://placeholder/", strings.NewReader(body))
		r.URL.Path, r.Host = path, host
		r.Header.Set("Authorization", "Api-Key "+b.key)
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, r)
		return rec
	}
	for _, f := range apitest.Forms {
		t.Run(f.Name, func(t *testing.T) {
			host, path := f.URL("model", "m1", "/development/async_predict")
			m := decode(t, do("POST", host, path, `{"model_input": "hi"}`), http.StatusCreated)
			id, _ := m["request_id"].(string)
			host, path = f.URL("model", "m1", "/async_request/"+id)
			if m := decode(t, do("GET", host, path, ""), 200); m["status"] != "QUEUED" || m["deployment_id"] != "m1-b" {
				t.Errorf("status %v", m)
			}
			host, path = f.URL("model", "m1", "/development/async_queue_status")
			if m := decode(t, do("GET", host, path, ""), 200); m["num_queued_requests"] != 1.0 {
				t.Errorf("queue status %v", m)
			}
			host, path = f.URL("model", "m1", "/async_request/"+id)
			if m := decode(t, do("DELETE", host, path, ""), 200); m["canceled"] != true {
				t.Errorf("cancel %v", m)
			}
			host, path = f.URL("model", "m1", "/production/async_predict")
			apitest.CheckError(t, do("PATCH", host, path, ""), http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "")
		})
	}
}
