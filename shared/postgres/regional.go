package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// DeploymentResolveRegionalParams name a deployment the way the original
// API's regional hostnames do: model-{model_id}-{env}.<domain>.
type DeploymentResolveRegionalParams struct {
	OrganizationID int64
	Kind           ModelKind
	// Label is what follows "model-" or "chain-" in the Host:
	// "{model_id}-{env}".
	Label string
}

// DeploymentResolveRegional returns the deployment that Label names, and
// the environment it was named by. Model ids and environment names may
// both contain "-", so the split is resolved against what exists: of the
// organization's models of Kind, the one with the longest id such that
// Label is that id, "-", and one of its environments wins. ErrNotFound when
// no split names an environment.
func (db *DB) DeploymentResolveRegional(ctx context.Context, p DeploymentResolveRegionalParams) (Deployment, string, error) {
	if !textStorable(p.Label) {
		return Deployment{}, "", ErrNotFound
	}
	var d Deployment
	var env string
	err := db.Pool.QueryRow(ctx, `
		SELECT d.id, d.model_id, d.url, d.max_concurrency, e.name
		FROM environments e
		JOIN deployments d ON d.id = e.deployment_id
		JOIN models m ON m.id = e.model_id
		WHERE m.organization_id = $1 AND m.kind = $2 AND e.model_id || '-' || e.name = $3
		ORDER BY length(e.model_id) DESC
		LIMIT 1`,
		p.OrganizationID, p.Kind, p.Label).Scan(&d.ID, &d.ModelID, &d.URL, &d.MaxConcurrency, &env)
	if errors.Is(err, pgx.ErrNoRows) {
		return Deployment{}, "", ErrNotFound
	}
	if err != nil {
		return Deployment{}, "", fmt.Errorf("resolve regional deployment: %w", err)
	}
	return d, env, nil
}
