package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

func TestHelp(t *testing.T) {
	t.Parallel()
	env := envconfig.MapLookuper(nil)
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			if code := run(context.Background(), []string{c.name, "--help"}, &out, &errOut, env); code != 0 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			help := out.String()
			if !strings.Contains(help, "usage: asyncctl "+c.name) || !strings.Contains(help, "-json") {
				t.Errorf("help = %q", help)
			}
			if !c.noOrg && !strings.Contains(help, "-org") {
				t.Errorf("help lists no --org: %q", help)
			}
		})
	}
	var out bytes.Buffer
	run(context.Background(), []string{"help"}, &out, &out, env)
	for _, c := range commands {
		if !strings.Contains(out.String(), c.name) {
			t.Errorf("asyncctl help does not list %s", c.name)
		}
	}
	// Flags of one command are not another's.
	var errOut bytes.Buffer
	if code := run(context.Background(), []string{"list-api-keys", "--org", "a", "--url", "https://x"}, &out, &errOut, env); code != 2 {
		t.Errorf("list-api-keys --url: exit %d", code)
	}
}

func TestManageCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dbURL := pgtest.URL(t)
	pg, err := postgres.Open(ctx, dbURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	env := envconfig.MapLookuper(map[string]string{"DATABASE_URL": dbURL})
	cli := func(args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := run(ctx, args, &out, &errOut, env)
		return code, out.String(), errOut.String()
	}
	must := func(args ...string) string {
		t.Helper()
		code, out, errOut := cli(args...)
		if code != 0 {
			t.Fatalf("%v = %d %s %s", args, code, out, errOut)
		}
		return out
	}
	asJSON := func(v any, args ...string) {
		t.Helper()
		out := must(append(args, "--json")...)
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("%v --json: %v\n%s", args, err, out)
		}
	}
	must("create-org", "--org", "acme")
	must("create-org", "other")
	must("create-model", "--org", "acme", "--id", "m1")
	must("create-deployment", "--org", "acme", "--model", "m1", "--id", "d1", "--url", "https://model.example.com/p", "--env", "production")
	o, _ := pg.OrganizationGetByName(ctx, "acme")

	insert := func() requestid.ID {
		res, err := pg.RequestInsert(ctx, postgres.RequestInsertParams{
			ID: requestid.New(), OrganizationID: o.ID, ModelID: "m1", DeploymentID: "d1",
			MaxTimeInQueue: time.Hour, MaxAttempts: 3, Input: []byte(`{}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return res.ID
	}
	var ids []requestid.ID
	for range 5 {
		ids = append(ids, insert())
	}

	t.Run("APIKeys", func(t *testing.T) {
		var k struct {
			ID    int64  `json:"id"`
			Key   string `json:"key"`
			Scope string `json:"scope"`
		}
		asJSON(&k, "create-api-key", "--org", "acme", "--name", "ci", "--scope", "invoke")
		got, err := pg.APIKeyLookup(ctx, k.Key)
		if err != nil || got.Scope != postgres.ScopeInvoke || k.Scope != "invoke" {
			t.Fatalf("created %+v: %+v, %v", k, got, err)
		}
		if out := must("list-api-keys", "--org", "acme"); !strings.Contains(out, "invoke") || strings.Contains(out, k.Key) {
			t.Errorf("list-api-keys = %s", out)
		}
		must("revoke-api-key", "--org", "acme", "--id", strconv.FormatInt(k.ID, 10))
		if _, err := pg.APIKeyLookup(ctx, k.Key); err == nil {
			t.Error("revoked key still authenticates")
		}
		if code, _, _ := cli("revoke-api-key", "--org", "other", "--id", strconv.FormatInt(k.ID, 10)); code != 1 {
			t.Errorf("revoking another organization's key: exit %d", code)
		}
	})

	t.Run("Deployments", func(t *testing.T) {
		must("pause-deployment", "--org", "acme", "--id", "d1")
		var list struct {
			Deployments []struct {
				ID             string `json:"id"`
				Paused         bool   `json:"paused"`
				MaxConcurrency int    `json:"max_concurrency"`
				Queued         int64  `json:"num_queued_requests"`
			} `json:"deployments"`
		}
		asJSON(&list, "list-deployments", "--org", "acme")
		if len(list.Deployments) != 1 || !list.Deployments[0].Paused || list.Deployments[0].Queued != 5 {
			t.Fatalf("list-deployments = %+v", list)
		}
		must("resume-deployment", "--org", "acme", "--id", "d1")
		must("set-concurrency", "--org", "acme", "--id", "d1", "--max-concurrency", "12")
		asJSON(&list, "list-deployments", "--org", "acme")
		if d := list.Deployments[0]; d.Paused || d.MaxConcurrency != 12 {
			t.Fatalf("after resume and set-concurrency = %+v", d)
		}
		if out := must("list-deployments", "--org", "acme"); !strings.Contains(out, "model.example.com") || strings.Contains(out, "/p") {
			t.Errorf("list-deployments = %s", out)
		}
		if code, _, _ := cli("pause-deployment", "--org", "other", "--id", "d1"); code != 1 {
			t.Errorf("pausing another organization's deployment: exit %d", code)
		}
	})

	t.Run("Requests", func(t *testing.T) {
		var page struct {
			Requests []struct {
				RequestID string `json:"request_id"`
			} `json:"requests"`
			NextCursor *string `json:"next_cursor"`
		}
		asJSON(&page, "list-requests", "--org", "acme", "--limit", "3")
		if len(page.Requests) != 3 || page.NextCursor == nil || page.Requests[0].RequestID != ids[4].String() {
			t.Fatalf("page 1 = %+v", page)
		}
		asJSON(&page, "list-requests", "--org", "acme", "--limit", "3", "--cursor", *page.NextCursor)
		if len(page.Requests) != 2 || page.NextCursor != nil {
			t.Fatalf("page 2 = %+v", page)
		}
		if out := must("show-request", "--org", "acme", "--id", ids[0].String()); !strings.Contains(out, "QUEUED") || !strings.Contains(out, "attempts:") {
			t.Errorf("show-request = %s", out)
		}
		if code, _, _ := cli("show-request", "--org", "other", "--id", ids[0].String()); code != 1 {
			t.Errorf("another organization's request: exit %d", code)
		}
		var res struct{ Matched, Changed int64 }
		asJSON(&res, "cancel-requests", "--org", "acme", "--ids", ids[0].String()+","+ids[1].String())
		if res.Matched != 2 || res.Changed != 2 {
			t.Errorf("cancel-requests --ids = %+v", res)
		}
		if _, err := pg.Pool.Exec(ctx, `UPDATE async_requests SET state = 'FAILED', finished_at = now() WHERE id = $1`, ids[2]); err != nil {
			t.Fatal(err)
		}
		asJSON(&res, "retry-requests", "--org", "acme", "--state", "FAILED")
		if res.Matched != 1 || res.Changed != 1 {
			t.Errorf("retry-requests --state FAILED = %+v", res)
		}
		if code, _, errOut := cli("retry-request", "--org", "acme", "--id", ids[2].String()); code != 1 || !strings.Contains(errOut, "QUEUED") {
			t.Errorf("retry-request of a queued request = %d %s", code, errOut)
		}
		if _, err := pg.Pool.Exec(ctx, `UPDATE async_requests SET state = 'EXPIRED', finished_at = now() WHERE id = $1`, ids[2]); err != nil {
			t.Fatal(err)
		}
		if out := must("retry-request", "--org", "acme", "--id", ids[2].String()); !strings.Contains(out, "QUEUED") {
			t.Errorf("retry-request = %s", out)
		}
		var purged struct{ Canceled int64 }
		asJSON(&purged, "purge-queue", "--org", "acme", "--id", "d1")
		if purged.Canceled != 3 {
			t.Errorf("purge-queue canceled %d, want 3", purged.Canceled)
		}
	})

	t.Run("WebhookSecrets", func(t *testing.T) {
		secret := strings.TrimSpace(must("rotate-webhook-secret", "--org", "acme"))
		if out := must("list-webhook-secrets", "--org", "acme"); strings.Contains(out, secret) || strings.Count(out, "\n") != 2 {
			t.Errorf("list-webhook-secrets = %s", out)
		}
	})

	t.Run("ReencryptCredentials", func(t *testing.T) {
		// A credential stored in plain text (before credentials were
		// sealed) is sealed by reencrypt-credentials.
		if _, err := pg.Pool.Exec(ctx, `UPDATE deployments SET upstream_credential = 'plain' WHERE id = 'd1'`); err != nil {
			t.Fatal(err)
		}
		var out struct {
			Reencrypted int `json:"reencrypted"`
		}
		var buf, errOut bytes.Buffer
		keyed := envconfig.MapLookuper(map[string]string{"DATABASE_URL": dbURL, "UPSTREAM_CREDENTIAL_KEYS": pgtest.CredentialKeys})
		if code := run(ctx, []string{"reencrypt-credentials", "--json"}, &buf, &errOut, keyed); code != 0 {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
		if err := json.Unmarshal(buf.Bytes(), &out); err != nil || out.Reencrypted != 1 {
			t.Fatalf("reencrypt-credentials --json = %s, %v", buf.String(), err)
		}
		var stored string
		if err := pg.Pool.QueryRow(ctx, `SELECT upstream_credential FROM deployments WHERE id = 'd1'`).Scan(&stored); err != nil || stored == "plain" {
			t.Fatalf("stored = %q, %v", stored, err)
		}
	})

	t.Run("BadArguments", func(t *testing.T) {
		for _, args := range [][]string{
			{"list-requests", "--org", "acme", "--state", "DONE"},
			{"list-requests", "--org", "acme", "--limit", "0"},
			{"list-requests", "--org", "acme", "--created-after", "yesterday"},
			{"cancel-requests", "--org", "acme"},
			{"cancel-requests", "--org", "acme", "--ids", "x", "--state", "QUEUED"},
			{"retry-requests", "--org", "acme", "--ids", "not-an-id"},
			{"set-concurrency", "--org", "acme", "--id", "d1"},
			{"revoke-api-key", "--org", "acme"},
			{"create-api-key", "--org", "acme", "--scope", "root"},
			{"show-request", "--org", "acme"},
			{"list-deployments"},
			{"create-org", "--org", "a", "b"},
		} {
			if code, _, errOut := cli(args...); code != 2 || strings.Count(errOut, "\n") != 1 {
				t.Errorf("%v = exit %d, stderr %q; want 2 and one line", args, code, errOut)
			}
		}
	})
}
