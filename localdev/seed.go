package localdev

import (
	"cmp"
	"context"
	"fmt"

	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/webhook"
)

// The names the harness seeds. They are fixed so that the printed curl
// commands, the README and scripts can name them.
const (
	OrganizationName  = "localdev"
	ModelID           = "example"
	DeploymentID      = "example-1"
	ChainID           = "example-chain"
	ChainDeploymentID = "example-chain-1"
)

// ModelConcurrencyDefault is the example deployments' max_concurrency when
// LOCALDEV_MODEL_CONCURRENCY is unset.
const ModelConcurrencyDefault = 8

// seedEnvironments are the environments both example deployments serve.
var seedEnvironments = []string{"production", "development"}

// SeedOptions say what to seed.
type SeedOptions struct {
	// APIKey is stored for the organization when set (LOCALDEV_API_KEY);
	// otherwise a new key is generated. Keys are stored hashed, so an old
	// generated key cannot be shown again: each run prints a new one, and
	// the old ones keep working.
	APIKey string
	// WebhookSecret becomes the organization's current secret when set
	// (LOCALDEV_WEBHOOK_SECRET). Otherwise the current secret is kept, or
	// one is generated when there is none, so a receiver set up once keeps
	// verifying across runs.
	WebhookSecret string
	// ModelURL is the base URL of the example model; both deployments point
	// at it (a run on another port moves them).
	ModelURL string
	// ModelConcurrency is both deployments' max_concurrency; default
	// ModelConcurrencyDefault.
	ModelConcurrency int
}

// Seeded is what Seed made or found.
type Seeded struct {
	OrganizationID int64
	APIKey         string
	WebhookSecret  string
}

// Seed creates, idempotently, the harness's organization, API key, webhook
// secret, the model ModelID with deployment DeploymentID and the chain
// ChainID with deployment ChainDeploymentID, both deployments serving the
// production and development environments at o.ModelURL.
func Seed(ctx context.Context, pg *postgres.DB, o SeedOptions) (Seeded, error) {
	if o.WebhookSecret != "" {
		if err := webhook.ValidSecret(o.WebhookSecret); err != nil {
			return Seeded{}, fmt.Errorf("LOCALDEV_WEBHOOK_SECRET: %w", err)
		}
	}
	org, err := pg.OrganizationEnsure(ctx, OrganizationName)
	if err != nil {
		return Seeded{}, fmt.Errorf("seed: %w", err)
	}
	s := Seeded{OrganizationID: org.ID, APIKey: cmp.Or(o.APIKey, postgres.NewAPIKey())}
	if err := pg.APIKeyCreate(ctx, org.ID, s.APIKey, "localdev"); err != nil {
		return Seeded{}, fmt.Errorf("seed (LOCALDEV_API_KEY): %w", err)
	}
	if s.WebhookSecret, err = seedSecret(ctx, pg, org.ID, o.WebhookSecret); err != nil {
		return Seeded{}, fmt.Errorf("seed: %w", err)
	}
	concurrency := cmp.Or(o.ModelConcurrency, ModelConcurrencyDefault)
	for _, m := range []struct {
		id, deployment string
		kind           postgres.ModelKind
	}{
		{ModelID, DeploymentID, postgres.KindModel},
		{ChainID, ChainDeploymentID, postgres.KindChain},
	} {
		if err := pg.ModelCreate(ctx, postgres.Model{ID: m.id, OrganizationID: org.ID, Kind: m.kind, Name: m.id}); err != nil {
			return Seeded{}, fmt.Errorf("seed: %w", err)
		}
		err := pg.DeploymentCreate(ctx, org.ID, postgres.Deployment{
			ID: m.deployment, ModelID: m.id, URL: o.ModelURL,
			Environments: seedEnvironments, MaxConcurrency: concurrency,
		})
		if err != nil {
			return Seeded{}, fmt.Errorf("seed: %w", err)
		}
	}
	return s, nil
}

// seedSecret makes secret the current one, or keeps the current one when
// secret is empty, or generates one when there is none.
func seedSecret(ctx context.Context, pg *postgres.DB, orgID int64, secret string) (string, error) {
	if secret == "" {
		active, err := pg.WebhookSecretsActive(ctx, orgID)
		if err != nil {
			return "", err
		}
		if len(active) > 0 {
			return active[0], nil
		}
		if secret, err = webhook.GenerateSecret(); err != nil {
			return "", err
		}
	}
	if err := pg.WebhookSecretRotate(ctx, orgID, secret, postgres.WebhookSecretOverlapDefault); err != nil {
		return "", err
	}
	return secret, nil
}
