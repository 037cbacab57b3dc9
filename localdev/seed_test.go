package localdev_test

import (
	"context"
	"errors"
	"testing"

	"github.com/openasync/asyncrequest/localdev"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/webhook"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestSeed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	type bundle struct {
		db *postgres.DB
		// seed runs Seed and fails the test on error.
		seed func(o localdev.SeedOptions) localdev.Seeded
		// orgs counts organizations.
		orgs func() int
		// authenticates reports whether key is a valid key of org.
		authenticates func(key string, org int64) bool
		// resolve returns the deployment an environment of a model names.
		resolve func(org int64, kind postgres.ModelKind, model, env string) postgres.Deployment
	}
	setup := func(t *testing.T) bundle {
		t.Helper()
		db := pgtest.New(t)
		return bundle{
			db: db,
			seed: func(o localdev.SeedOptions) localdev.Seeded {
				t.Helper()
				s, err := localdev.Seed(ctx, db, o)
				if err != nil {
					t.Fatal(err)
				}
				return s
			},
			orgs: func() int {
				var n int
				if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM organizations`).Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			},
			authenticates: func(key string, org int64) bool {
				got, err := db.APIKeyAuthenticate(ctx, key)
				return err == nil && got == org
			},
			resolve: func(org int64, kind postgres.ModelKind, model, env string) postgres.Deployment {
				t.Helper()
				d, err := db.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: org, ModelID: model, Kind: kind, Environment: env})
				if err != nil {
					t.Fatalf("resolve %s %s: %v", model, env, err)
				}
				return d
			},
		}
	}

	t.Run("GivenKeyAndSecretTwice", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		secret, err := webhook.GenerateSecret()
		if err != nil {
			t.Fatal(err)
		}
		o := localdev.SeedOptions{APIKey: "ak_localdevTestKey0001", WebhookSecret: secret, ModelURL: "http://127.0.0.1:9004"}
		first := b.seed(o)
		second := b.seed(o)
		if first != second {
			t.Errorf("second run seeded %+v, first %+v", second, first)
		}
		if n := b.orgs(); n != 1 {
			t.Errorf("%d organizations, want 1", n)
		}
		if !b.authenticates(o.APIKey, first.OrganizationID) {
			t.Error("the given API key does not authenticate")
		}
		active, err := b.db.WebhookSecretsActive(ctx, first.OrganizationID)
		if err != nil {
			t.Fatal(err)
		}
		if len(active) != 1 || active[0] != secret {
			t.Errorf("active secrets %v, want only the given one", active)
		}
	})

	t.Run("GeneratedKeyAndSecret", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		o := localdev.SeedOptions{ModelURL: "http://127.0.0.1:9004"}
		first := b.seed(o)
		second := b.seed(o)
		if first.APIKey == "" || first.APIKey == second.APIKey {
			t.Errorf("keys %q and %q: want a new key each run", first.APIKey, second.APIKey)
		}
		for _, key := range []string{first.APIKey, second.APIKey} {
			if !b.authenticates(key, first.OrganizationID) {
				t.Errorf("key %q does not authenticate", key)
			}
		}
		if err := webhook.ValidSecret(first.WebhookSecret); err != nil {
			t.Errorf("generated secret: %v", err)
		}
		if second.WebhookSecret != first.WebhookSecret {
			t.Error("the second run replaced the webhook secret; want it kept")
		}
		if n := b.orgs(); n != 1 {
			t.Errorf("%d organizations, want 1", n)
		}
	})

	t.Run("Deployments", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		s := b.seed(localdev.SeedOptions{ModelURL: "http://127.0.0.1:9004"})
		// A later run on another port moves the deployments.
		b.seed(localdev.SeedOptions{ModelURL: "http://127.0.0.1:19004", ModelConcurrency: 3})
		tests := []struct {
			kind              postgres.ModelKind
			model, deployment string
		}{
			{postgres.KindModel, localdev.ModelID, localdev.DeploymentID},
			{postgres.KindChain, localdev.ChainID, localdev.ChainDeploymentID},
		}
		for _, tt := range tests {
			for _, env := range []string{"production", "development"} {
				d := b.resolve(s.OrganizationID, tt.kind, tt.model, env)
				if d.ID != tt.deployment || d.URL != "http://127.0.0.1:19004" || d.MaxConcurrency != 3 {
					t.Errorf("%s %s: got %+v, want %s at the new URL with max_concurrency 3", tt.model, env, d, tt.deployment)
				}
			}
		}
	})

	t.Run("DefaultConcurrency", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		s := b.seed(localdev.SeedOptions{ModelURL: "http://127.0.0.1:9004"})
		d := b.resolve(s.OrganizationID, postgres.KindModel, localdev.ModelID, "production")
		if d.MaxConcurrency != localdev.ModelConcurrencyDefault {
			t.Errorf("max_concurrency %d, want %d", d.MaxConcurrency, localdev.ModelConcurrencyDefault)
		}
	})

	t.Run("InvalidSecret", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, err := localdev.Seed(ctx, b.db, localdev.SeedOptions{WebhookSecret: "not-a-secret", ModelURL: "http://127.0.0.1:9004"})
		if !errors.Is(err, webhook.ErrInvalidSecret) {
			t.Fatalf("got %v, want ErrInvalidSecret", err)
		}
		if n := b.orgs(); n != 0 {
			t.Errorf("%d organizations after a refused seed, want 0", n)
		}
	})
}
