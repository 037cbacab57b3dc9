package manage_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/openasync/asyncrequest/shared/httpapi/apitest"
	"github.com/openasync/asyncrequest/shared/postgres"
)

type deployment struct {
	ID                    string   `json:"id"`
	ModelID               string   `json:"model_id"`
	ChainID               string   `json:"chain_id"`
	URLHost               string   `json:"url_host"`
	Environments          []string `json:"environments"`
	MaxConcurrency        int      `json:"max_concurrency"`
	Paused                bool     `json:"paused"`
	Queued                int64    `json:"num_queued_requests"`
	InProgress            int64    `json:"num_in_progress_requests"`
	OldestQueuedAge       float64  `json:"oldest_queued_age_seconds"`
	HasUpstreamCredential bool     `json:"has_upstream_credential"`
}

func TestDeployments(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	list := func() map[string]deployment {
		t.Helper()
		var body struct {
			Deployments []deployment `json:"deployments"`
		}
		decode(t, b.do("GET", "/v1/deployments", b.key, nil), http.StatusOK, &body)
		out := map[string]deployment{}
		for _, d := range body.Deployments {
			out[d.ID] = d
		}
		return out
	}
	for range 3 {
		b.insert(b.acme, "m1", "m1-a", "")
	}
	running := b.insert(b.acme, "m1", "m1-a", "")
	b.exec(running, `UPDATE async_requests SET state = 'IN_PROGRESS', lease_owner = 'p', lease_expires_at = now() + interval '1 minute' WHERE id = $1`)
	b.exec(b.insert(b.acme, "m1", "m1-a", ""), `UPDATE async_requests SET created_at = now() - interval '90 seconds' WHERE id = $1`)

	ds := list()
	if len(ds) != 3 {
		t.Fatalf("deployments = %+v", ds)
	}
	a := ds["m1-a"]
	if a.ModelID != "m1" || a.URLHost != "m1.example.com" || a.MaxConcurrency != 4 || a.Paused ||
		a.Queued != 4 || a.InProgress != 1 || a.OldestQueuedAge < 90 || len(a.Environments) != 1 || a.Environments[0] != "production" {
		t.Errorf("m1-a = %+v", a)
	}
	if c := ds["c1-a"]; c.ChainID != "c1" || c.Queued != 0 || c.OldestQueuedAge != 0 {
		t.Errorf("c1-a = %+v", c)
	}

	t.Run("Pause", func(t *testing.T) {
		var d deployment
		decode(t, b.do("PATCH", "/v1/deployments/m1-b", b.key, map[string]any{"paused": true, "max_concurrency": 7}), http.StatusOK, &d)
		if !d.Paused || d.MaxConcurrency != 7 {
			t.Fatalf("after PATCH = %+v", d)
		}
		decode(t, b.do("PATCH", "/v1/deployments/m1-b", b.key, map[string]any{"paused": false}), http.StatusOK, &d)
		if d.Paused || d.MaxConcurrency != 7 {
			t.Fatalf("after resume = %+v", d)
		}
		apitest.CheckError(t, b.do("PATCH", "/v1/deployments/m1-b", b.key, map[string]any{"max_concurrency": 0}), http.StatusBadRequest, "INVALID_FIELD", "max_concurrency")
		apitest.CheckError(t, b.do("PATCH", "/v1/deployments/m1-b", b.key, map[string]any{}), http.StatusBadRequest, "INVALID_FIELD", "max_concurrency")
	})

	t.Run("Purge", func(t *testing.T) {
		var res struct {
			Canceled int64 `json:"canceled"`
		}
		decode(t, b.do("POST", "/v1/deployments/m1-a/purge", b.key, nil), http.StatusOK, &res)
		if res.Canceled != 4 {
			t.Fatalf("purge canceled %d, want the 4 queued", res.Canceled)
		}
		if a := list()["m1-a"]; a.Queued != 0 || a.InProgress != 1 {
			t.Errorf("after purge = %+v", a)
		}
		decode(t, b.do("POST", "/v1/deployments/m1-a/purge", b.key, nil), http.StatusOK, &res)
		if res.Canceled != 0 {
			t.Errorf("second purge canceled %d", res.Canceled)
		}
	})

	t.Run("PutModelAndDeployment", func(t *testing.T) {
		var m struct{ ID, Kind, Name string }
		decode(t, b.do("PUT", "/v1/models/m9", b.key, map[string]any{"name": "Nine"}), http.StatusOK, &m)
		if m.ID != "m9" || m.Kind != "model" || m.Name != "Nine" {
			t.Fatalf("model = %+v", m)
		}
		decode(t, b.do("PUT", "/v1/models/m9", b.key, map[string]any{"name": "Nine again"}), http.StatusOK, &m)
		apitest.CheckError(t, b.do("PUT", "/v1/models/m9", b.key, map[string]any{"kind": "chain"}), http.StatusConflict, "ID_TAKEN", "")
		apitest.CheckError(t, b.do("PUT", "/v1/models/om", b.key, map[string]any{}), http.StatusConflict, "ID_TAKEN", "")

		put := map[string]any{"model_id": "m9", "url": "https://nine.example.com/x", "environments": []string{"production"},
			"max_concurrency": 3, "upstream_credential": "Api-Key s3cret-upstream"}
		rec := b.do("PUT", "/v1/deployments/m9-a", b.key, put)
		if strings.Contains(rec.Body.String(), "s3cret") {
			t.Fatalf("the credential is returned: %s", rec.Body)
		}
		var d deployment
		decode(t, rec, http.StatusOK, &d)
		if d.ModelID != "m9" || d.URLHost != "nine.example.com" || d.MaxConcurrency != 3 || !d.HasUpstreamCredential {
			t.Fatalf("deployment = %+v", d)
		}
		// resolve returns the deployment production names and its
		// credential, opened as the processor opens it.
		resolve := func() (postgres.Deployment, string) {
			t.Helper()
			got, err := b.db.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: b.acme, ModelID: "m9", Kind: postgres.KindModel, Environment: "production"})
			if err != nil {
				t.Fatal(err)
			}
			var sealed *string
			if err := b.db.Pool.QueryRow(ctx, `SELECT upstream_credential FROM deployments WHERE id = $1`, got.ID).Scan(&sealed); err != nil {
				t.Fatal(err)
			}
			if sealed == nil {
				return got, ""
			}
			if strings.Contains(*sealed, "s3cret") {
				t.Fatalf("credential stored in the clear: %q", *sealed)
			}
			plain, err := b.db.UpstreamCredentialOpen(postgres.ClaimedRequest{DeploymentID: got.ID, UpstreamCredential: *sealed})
			if err != nil {
				t.Fatal(err)
			}
			return got, plain
		}
		if got, cred := resolve(); got.ID != "m9-a" || cred != "Api-Key s3cret-upstream" {
			t.Fatalf("stored = %+v %q", got, cred)
		}
		// Without upstream_credential the one set is kept; "" removes it.
		delete(put, "upstream_credential")
		put["max_concurrency"] = 5
		decode(t, b.do("PUT", "/v1/deployments/m9-a", b.key, put), http.StatusOK, &d)
		if got, cred := resolve(); got.MaxConcurrency != 5 || cred != "Api-Key s3cret-upstream" {
			t.Fatalf("after an update without the credential = %+v %q", got, cred)
		}
		put["upstream_credential"] = ""
		decode(t, b.do("PUT", "/v1/deployments/m9-a", b.key, put), http.StatusOK, &d)
		if _, cred := resolve(); cred != "" || d.HasUpstreamCredential {
			t.Fatalf("after removing the credential = %q, %+v", cred, d)
		}
		put["model_id"] = "om"
		apitest.CheckError(t, b.do("PUT", "/v1/deployments/m9-b", b.key, put), http.StatusNotFound, "NOT_FOUND", "")
		put["model_id"] = "m1"
		apitest.CheckError(t, b.do("PUT", "/v1/deployments/m9-a", b.key, put), http.StatusConflict, "ID_TAKEN", "")
		put["url"] = "ftp://x"
		apitest.CheckError(t, b.do("PUT", "/v1/deployments/m9-c", b.key, put), http.StatusBadRequest, "INVALID_FIELD", "url")
	})
}

func TestWebhookSecrets(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	var first, second struct {
		ID        int64   `json:"id"`
		Secret    string  `json:"secret"`
		CreatedAt string  `json:"created_at"`
		ExpiresAt *string `json:"expires_at"`
	}
	decode(t, b.do("POST", "/v1/webhook-secrets/rotate", b.key, nil), http.StatusCreated, &first)
	decode(t, b.do("POST", "/v1/webhook-secrets/rotate", b.key, nil), http.StatusCreated, &second)
	if !strings.HasPrefix(first.Secret, "whsec_") || first.Secret == second.Secret || second.ExpiresAt != nil || second.ID <= first.ID {
		t.Fatalf("rotations = %+v, %+v", first, second)
	}
	active, err := b.db.WebhookSecretsActive(ctx, b.acme)
	if err != nil || len(active) != 2 || active[0] != second.Secret {
		t.Fatalf("active = %v, %v", active, err)
	}
	rec := b.do("GET", "/v1/webhook-secrets", b.key, nil)
	if strings.Contains(rec.Body.String(), "whsec_") {
		t.Fatalf("list shows a secret: %s", rec.Body)
	}
	var list struct {
		WebhookSecrets []struct {
			ID        int64   `json:"id"`
			ExpiresAt *string `json:"expires_at"`
		} `json:"webhook_secrets"`
	}
	decode(t, rec, http.StatusOK, &list)
	if len(list.WebhookSecrets) != 2 || list.WebhookSecrets[0].ID != second.ID || list.WebhookSecrets[0].ExpiresAt != nil || list.WebhookSecrets[1].ExpiresAt == nil {
		t.Fatalf("list = %+v", list)
	}
	var theirs struct {
		WebhookSecrets []any `json:"webhook_secrets"`
	}
	decode(t, b.do("GET", "/v1/webhook-secrets", b.otherKey, nil), http.StatusOK, &theirs)
	if len(theirs.WebhookSecrets) != 0 {
		t.Errorf("another organization sees %v", theirs.WebhookSecrets)
	}
}

func TestRateLimited(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var limited bool
	for range 400 { // the read burst is 200
		if rec := b.do("GET", "/v1/webhook-secrets", b.key, nil); rec.Code == http.StatusTooManyRequests {
			apitest.CheckError(t, rec, http.StatusTooManyRequests, "RATE_LIMITED", "")
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("never rate-limited")
	}
}
