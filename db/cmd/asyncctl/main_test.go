package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/sethvargo/go-envconfig"

	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestCLI(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	setup := func(t *testing.T) (func(args ...string) (int, string, string), *postgres.DB) {
		t.Helper()
		dbURL := pgtest.URL(t)
		pg, err := postgres.Open(ctx, dbURL, 2)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pg.Close)
		env := envconfig.MapLookuper(map[string]string{"DATABASE_URL": dbURL, "UPSTREAM_KEY": "s3cret", "UPSTREAM_CREDENTIAL_KEYS": pgtest.CredentialKeys})
		return func(args ...string) (int, string, string) {
			var out, errOut bytes.Buffer
			code := run(ctx, args, &out, &errOut, env)
			return code, out.String(), errOut.String()
		}, pg
	}

	t.Run("FullSetup", func(t *testing.T) {
		t.Parallel()
		run, pg := setup(t)
		steps := [][]string{
			{"migrate"},
			{"create-org", "acme"},
			{"create-org", "acme"},
			{"create-model", "--org", "acme", "--id", "m1"},
			{"create-model", "--org", "acme", "--id", "c1", "--chain"},
			{"create-deployment", "--org", "acme", "--model", "m1", "--id", "d1", "--url", "https://model.example.com", "--env", "production,development", "--max-concurrency", "4", "--credential-env", "UPSTREAM_KEY"},
		}
		for _, s := range steps {
			if code, out, errOut := run(s...); code != 0 {
				t.Fatalf("%v = %d %s %s", s, code, out, errOut)
			}
		}
		code, key, _ := run("create-api-key", "--org", "acme")
		if code != 0 || !strings.HasPrefix(key, "ak_") {
			t.Fatalf("create-api-key = %d %q", code, key)
		}
		org, err := pg.APIKeyAuthenticate(ctx, strings.TrimSpace(key))
		if err != nil {
			t.Fatalf("printed key does not authenticate: %v", err)
		}
		d, err := pg.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: org, ModelID: "m1", Kind: postgres.KindModel, Environment: "development"})
		if err != nil || d.ID != "d1" || d.MaxConcurrency != 4 || d.UpstreamCredential != "" {
			t.Fatalf("deployment = %+v, %v", d, err)
		}
		var stored string
		if err := pg.Pool.QueryRow(ctx, `SELECT upstream_credential FROM deployments WHERE id = 'd1'`).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		keys, _ := credential.ParseKeys(pgtest.CredentialKeys)
		if plain, err := keys.Open(stored, "d1"); err != nil || plain != "s3cret" || strings.Contains(stored, "s3cret") {
			t.Fatalf("stored credential %q opens to %q, %v; want it sealed, opening to s3cret", stored, plain, err)
		}
		code, secret, _ := run("rotate-webhook-secret", "--org", "acme")
		if code != 0 || !strings.HasPrefix(secret, "whsec_") {
			t.Fatalf("rotate = %d %q", code, secret)
		}
		active, _ := pg.WebhookSecretsActive(ctx, org)
		if len(active) != 1 || active[0] != strings.TrimSpace(secret) {
			t.Fatalf("active secrets = %v", active)
		}
	})

	t.Run("BadArguments", func(t *testing.T) {
		t.Parallel()
		run, _ := setup(t)
		if code, _, _ := run("create-org", "acme"); code != 0 {
			t.Fatal("create-org failed")
		}
		tests := []struct {
			name    string
			args    []string
			mention string
		}{
			{"NoCommand", nil, "missing command"},
			{"UnknownCommand", []string{"frobnicate"}, "unknown command"},
			{"UnknownFlag", []string{"create-model", "--bogus"}, "bogus"},
			{"OrgMissing", []string{"create-api-key"}, "--org"},
			{"OrgUnknown", []string{"create-api-key", "--org", "nope"}, "does not exist"},
			{"BadModelID", []string{"create-model", "--org", "acme", "--id", "has space"}, "--id"},
			{"BadURL", []string{"create-deployment", "--org", "acme", "--model", "m", "--id", "d", "--url", "ftp://x"}, "--url"},
			{"BadConcurrency", []string{"create-deployment", "--org", "acme", "--model", "m", "--id", "d", "--url", "https://x", "--max-concurrency", "0"}, "--max-concurrency"},
			{"UnknownModel", []string{"create-deployment", "--org", "acme", "--model", "ghost", "--id", "d", "--url", "https://x"}, "does not exist"},
			{"MissingCredentialVar", []string{"create-deployment", "--org", "acme", "--model", "m", "--id", "d", "--url", "https://x", "--credential-env", "NOPE"}, "NOPE"},
			{"BadSecret", []string{"rotate-webhook-secret", "--org", "acme", "--secret", "hunter2"}, "whsec_"},
			{"ExtraArgument", []string{"create-org", "a", "b"}, "exactly one"},
			{"OrgNameNotText", []string{"create-org", "a\xffb"}, "printable"},
			{"OrgNameControl", []string{"create-org", "a\x01b"}, "printable"},
			{"OrgFlagNotText", []string{"create-api-key", "--org", "a\xff"}, "printable"},
			{"URLNotText", []string{"create-deployment", "--org", "acme", "--model", "m", "--id", "d", "--url", "https://x/\xff"}, "--url"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				code, _, line := run(tt.args...)
				if code != 2 {
					t.Errorf("exit = %d, want 2", code)
				}
				if strings.Count(line, "\n") != 1 || !strings.Contains(line, tt.mention) {
					t.Errorf("stderr = %q, want one line mentioning %q", line, tt.mention)
				}
			})
		}
	})
}

// TestMigrateCreatesDatabase runs migrate against a database the server
// does not have: it is created and migrated.
func TestMigrateCreatesDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	u, err := url.Parse(pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	name := "asyncctl_migrate_" + strings.ToLower(rand.Text()[:8])
	u.Path = "/" + name
	t.Cleanup(func() {
		if conn, err := pgx.Connect(context.Background(), pgtest.ServerURL(t)); err == nil {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			conn.Close(context.Background())
		}
	})
	var out, errOut bytes.Buffer
	env := envconfig.MapLookuper(map[string]string{"DATABASE_URL": u.String()})
	if code := run(ctx, []string{"migrate"}, &out, &errOut, env); code != 0 {
		t.Fatalf("migrate = %d %s %s", code, out.String(), errOut.String())
	}
	pg, err := postgres.Open(ctx, u.String(), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if _, err := pg.OrganizationEnsure(ctx, "acme"); err != nil {
		t.Fatalf("the migrated database: %v", err)
	}
}

// TestCredentialWithoutKey refuses a deployment with a credential when no
// key is configured to encrypt it, before touching the database.
func TestCredentialWithoutKey(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	env := envconfig.MapLookuper(map[string]string{"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none", "UPSTREAM_KEY": "s3cret"})
	code := run(context.Background(), []string{"create-deployment", "--org", "acme", "--model", "m", "--id", "d", "--url", "https://x", "--credential-env", "UPSTREAM_KEY"}, &out, &errOut, env)
	if code != 2 || !strings.Contains(errOut.String(), "UPSTREAM_CREDENTIAL_KEYS") || strings.Contains(errOut.String(), "s3cret") {
		t.Fatalf("exit %d, stderr %q; want 2 naming UPSTREAM_CREDENTIAL_KEYS", code, errOut.String())
	}
}
