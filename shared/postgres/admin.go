package postgres

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/openasync/asyncrequest/shared/credential"
)

// Organization is a tenant.
type Organization struct {
	ID   int64
	Name string
}

// OrganizationEnsure returns the organization named name, creating it if it
// does not exist.
func (db *DB) OrganizationEnsure(ctx context.Context, name string) (Organization, error) {
	o := Organization{Name: name}
	err := db.Pool.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO organizations (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id
		)
		SELECT id FROM ins UNION ALL SELECT id FROM organizations WHERE name = $1 LIMIT 1`, name).Scan(&o.ID)
	if err != nil {
		return Organization{}, fmt.Errorf("ensure organization: %w", err)
	}
	return o, nil
}

// OrganizationGetByName returns ErrNotFound when there is no such organization.
func (db *DB) OrganizationGetByName(ctx context.Context, name string) (Organization, error) {
	o := Organization{Name: name}
	err := db.Pool.QueryRow(ctx, `SELECT id FROM organizations WHERE name = $1`, name).Scan(&o.ID)
	if errors.Is(err, pgx.ErrNoRows) {
		return Organization{}, ErrNotFound
	}
	if err != nil {
		return Organization{}, fmt.Errorf("get organization: %w", err)
	}
	return o, nil
}

// NewAPIKey returns a fresh API key: "ak_" and 40 random base64url
// characters (240 bits).
func NewAPIKey() string {
	b := make([]byte, 30)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // crypto/rand never fails on supported platforms
	}
	return "ak_" + base64.RawURLEncoding.EncodeToString(b)
}

// hashAPIKey returns the stored form of a key: its SHA-256, and the lookup id
// (the hash's first 8 bytes in hex) that finds the row. A fast hash is right
// here: keys are long random strings, not passwords.
func hashAPIKey(key string) (lookupID string, hash []byte) {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:8]), sum[:]
}

// APIKeyCreate stores key (only its hash) for an organization. Creating the
// same key twice is a no-op, so seeding is idempotent.
func (db *DB) APIKeyCreate(ctx context.Context, organizationID int64, key, name string) error {
	if len(key) < 8 {
		return errors.New("api key must be at least 8 characters")
	}
	lookupID, hash := hashAPIKey(key)
	tag, err := db.Pool.Exec(ctx, `
		INSERT INTO api_keys (organization_id, lookup_id, key_hash, prefix, name)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (lookup_id) DO NOTHING`,
		organizationID, lookupID, hash, key[:6], name)
	if err != nil {
		return fmt.Errorf("create api key: %w", err)
	}
	if tag.RowsAffected() == 0 {
		var owner int64
		if err := db.Pool.QueryRow(ctx, `SELECT organization_id FROM api_keys WHERE lookup_id = $1`, lookupID).Scan(&owner); err != nil {
			return fmt.Errorf("create api key: %w", err)
		}
		if owner != organizationID {
			return errors.New("create api key: this key already belongs to another organization")
		}
	}
	return nil
}

// APIKeyAuthenticate returns the organization that owns key, or ErrNotFound.
// The stored hash is compared in constant time.
func (db *DB) APIKeyAuthenticate(ctx context.Context, key string) (int64, error) {
	lookupID, hash := hashAPIKey(key)
	var orgID int64
	var stored []byte
	err := db.Pool.QueryRow(ctx, `
		SELECT organization_id, key_hash FROM api_keys WHERE lookup_id = $1 AND revoked_at IS NULL`,
		lookupID).Scan(&orgID, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, ErrNotFound
	}
	if err != nil {
		return 0, fmt.Errorf("authenticate api key: %w", err)
	}
	if subtle.ConstantTimeCompare(stored, hash) != 1 {
		return 0, ErrNotFound
	}
	return orgID, nil
}

// ModelKind is "model" or "chain".
type ModelKind string

const (
	KindModel ModelKind = "model"
	KindChain ModelKind = "chain"
)

// Model is a model or a chain.
type Model struct {
	ID             string
	OrganizationID int64
	Kind           ModelKind
	Name           string
}

// ErrConflict is returned when a create would overwrite something that
// belongs to someone else or differs from what exists.
var ErrConflict = errors.New("already exists")

// ModelCreate creates a model or chain. Creating one that exists with the
// same organization and kind is a no-op; anything else is ErrConflict.
func (db *DB) ModelCreate(ctx context.Context, m Model) error {
	var orgID int64
	var kind ModelKind
	err := db.Pool.QueryRow(ctx, `
		WITH ins AS (
			INSERT INTO models (id, organization_id, kind, name) VALUES ($1, $2, $3, $4)
			ON CONFLICT (id) DO NOTHING RETURNING organization_id, kind
		)
		SELECT organization_id, kind FROM ins
		UNION ALL SELECT organization_id, kind FROM models WHERE id = $1 LIMIT 1`,
		m.ID, m.OrganizationID, m.Kind, m.Name).Scan(&orgID, &kind)
	if err != nil {
		return fmt.Errorf("create model: %w", describeCheck(err))
	}
	if orgID != m.OrganizationID || kind != m.Kind {
		return fmt.Errorf("create model %q: %w", m.ID, ErrConflict)
	}
	return nil
}

// Deployment is a deployment of a model.
type Deployment struct {
	ID             string
	ModelID        string
	URL            string
	Environments   []string
	MaxConcurrency int
	// UpstreamCredential is what the processor sends the model as its
	// Authorization (empty: none). DeploymentCreate stores it sealed
	// (DB.Credentials); it is never read back into a Deployment.
	UpstreamCredential string
	// KeepCredential makes DeploymentCreate leave the stored credential of
	// an existing deployment as it is (UpstreamCredential is then ignored):
	// an update that does not mention the write-only credential.
	KeepCredential bool
}

// DeploymentCreate creates (or updates, for the same model) a deployment and
// points each of its environments at it, taking them from any other
// deployment of the model (promotion).
func (db *DB) DeploymentCreate(ctx context.Context, organizationID int64, d Deployment) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var owner int64
		err := tx.QueryRow(ctx, `SELECT organization_id FROM models WHERE id = $1`, d.ModelID).Scan(&owner)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && owner != organizationID) {
			return fmt.Errorf("create deployment: model %q: %w", d.ModelID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("create deployment: %w", err)
		}
		plain := d.UpstreamCredential
		if d.KeepCredential {
			plain = ""
		}
		sealed, err := db.Credentials.Seal(plain, d.ID)
		if err != nil {
			return fmt.Errorf("create deployment %q: %w", d.ID, err)
		}
		var cred *string
		if sealed != "" {
			cred = &sealed
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO deployments (id, model_id, url, max_concurrency, upstream_credential)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (id) DO UPDATE SET url = excluded.url, max_concurrency = excluded.max_concurrency,
				upstream_credential = CASE WHEN $6 THEN deployments.upstream_credential ELSE excluded.upstream_credential END
			WHERE deployments.model_id = excluded.model_id`,
			d.ID, d.ModelID, d.URL, d.MaxConcurrency, cred, d.KeepCredential)
		if err != nil {
			return fmt.Errorf("create deployment: %w", describeCheck(err))
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("create deployment %q: belongs to another model: %w", d.ID, ErrConflict)
		}
		for _, env := range d.Environments {
			_, err := tx.Exec(ctx, `
				INSERT INTO environments (model_id, name, deployment_id) VALUES ($1, $2, $3)
				ON CONFLICT (model_id, name) DO UPDATE SET deployment_id = excluded.deployment_id`,
				d.ModelID, env, d.ID)
			if err != nil {
				return fmt.Errorf("create deployment: environment %q: %w", env, describeCheck(err))
			}
		}
		return nil
	})
}

// DeploymentTarget names a deployment the way a URL does: exactly one of
// Environment and DeploymentID is set.
type DeploymentTarget struct {
	OrganizationID int64
	ModelID        string
	Kind           ModelKind
	Environment    string
	DeploymentID   string
}

// DeploymentResolve finds the deployment a URL names. A model of another
// organization, of the other kind, an unknown environment or a deployment of
// another model are all ErrNotFound.
func (db *DB) DeploymentResolve(ctx context.Context, t DeploymentTarget) (Deployment, error) {
	// Names come from the URL as sent; one Postgres text can't hold (invalid
	// UTF-8, NUL) names nothing stored, and would fail the query.
	if !textStorable(t.ModelID) || !textStorable(t.Environment) || !textStorable(t.DeploymentID) {
		return Deployment{}, ErrNotFound
	}
	var d Deployment
	var err error
	if t.DeploymentID != "" {
		err = db.Pool.QueryRow(ctx, `
			SELECT d.id, d.model_id, d.url, d.max_concurrency
			FROM deployments d JOIN models m ON m.id = d.model_id
			WHERE d.id = $1 AND d.model_id = $2 AND m.organization_id = $3 AND m.kind = $4`,
			t.DeploymentID, t.ModelID, t.OrganizationID, t.Kind).Scan(&d.ID, &d.ModelID, &d.URL, &d.MaxConcurrency)
	} else {
		err = db.Pool.QueryRow(ctx, `
			SELECT d.id, d.model_id, d.url, d.max_concurrency
			FROM environments e
			JOIN deployments d ON d.id = e.deployment_id
			JOIN models m ON m.id = e.model_id
			WHERE e.model_id = $1 AND e.name = $2 AND m.organization_id = $3 AND m.kind = $4`,
			t.ModelID, t.Environment, t.OrganizationID, t.Kind).Scan(&d.ID, &d.ModelID, &d.URL, &d.MaxConcurrency)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return Deployment{}, ErrNotFound
	}
	if err != nil {
		return Deployment{}, fmt.Errorf("resolve deployment: %w", err)
	}
	return d, nil
}

// UpstreamCredentialOpen returns the plain upstream credential of a claimed
// request's deployment (empty when it has none). This is the one place a
// stored credential is decrypted.
func (db *DB) UpstreamCredentialOpen(c ClaimedRequest) (string, error) {
	plain, err := db.Credentials.Open(c.UpstreamCredential, c.DeploymentID)
	if err != nil {
		return "", fmt.Errorf("deployment %q: %w", c.DeploymentID, err)
	}
	return plain, nil
}

// DeploymentCredentialsReencrypt seals every stored upstream credential
// under the first key of DB.Credentials (credential rotation), and seals
// any stored in plain text before credentials were encrypted. It returns
// how many it rewrote. It runs in one transaction: a credential that does
// not open under any configured key leaves them all as they were.
func (db *DB) DeploymentCredentialsReencrypt(ctx context.Context) (int, error) {
	if db.Credentials == nil {
		return 0, fmt.Errorf("re-encrypt credentials: %w", credential.ErrNoKey)
	}
	n := 0
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT id, upstream_credential FROM deployments
			WHERE upstream_credential IS NOT NULL ORDER BY id FOR UPDATE`)
		if err != nil {
			return err
		}
		type stored struct{ ID, Value string }
		all, err := pgx.CollectRows(rows, pgx.RowToStructByPos[stored])
		if err != nil {
			return err
		}
		for _, s := range all {
			if db.Credentials.Current(s.Value) {
				continue
			}
			plain := s.Value
			if credential.IsSealed(s.Value) {
				if plain, err = db.Credentials.Open(s.Value, s.ID); err != nil {
					return fmt.Errorf("deployment %q: %w", s.ID, err)
				}
			}
			sealed, err := db.Credentials.Seal(plain, s.ID)
			if err != nil {
				return fmt.Errorf("deployment %q: %w", s.ID, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE deployments SET upstream_credential = $2 WHERE id = $1`, s.ID, sealed); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("re-encrypt credentials: %w", err)
	}
	return n, nil
}

// WebhookSecretOverlapDefault is how long a rotated-out secret keeps signing.
const WebhookSecretOverlapDefault = 24 * time.Hour

// WebhookSecretRotate makes secret the organization's current webhook secret.
// Secrets that were current keep signing for overlap, so receivers can
// switch without losing a webhook. Rotating to the current secret is a no-op.
func (db *DB) WebhookSecretRotate(ctx context.Context, organizationID int64, secret string, overlap time.Duration) error {
	return pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var exists bool
		err := tx.QueryRow(ctx, `
			SELECT EXISTS (SELECT 1 FROM webhook_secrets
			               WHERE organization_id = $1 AND secret = $2 AND expires_at IS NULL)`,
			organizationID, secret).Scan(&exists)
		if err != nil || exists {
			return err
		}
		if _, err := tx.Exec(ctx, `
			UPDATE webhook_secrets SET expires_at = now() + make_interval(secs => $2)
			WHERE organization_id = $1 AND expires_at IS NULL`,
			organizationID, overlap.Seconds()); err != nil {
			return fmt.Errorf("rotate webhook secret: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO webhook_secrets (organization_id, secret) VALUES ($1, $2)`,
			organizationID, secret); err != nil {
			return fmt.Errorf("rotate webhook secret: %w", describeCheck(err))
		}
		return nil
	})
}

// WebhookSecretsActive returns the organization's secrets that still sign,
// newest first.
func (db *DB) WebhookSecretsActive(ctx context.Context, organizationID int64) ([]string, error) {
	rows, err := db.Pool.Query(ctx, `
		SELECT secret FROM webhook_secrets
		WHERE organization_id = $1 AND (expires_at IS NULL OR expires_at > now())
		ORDER BY id DESC`, organizationID)
	if err != nil {
		return nil, fmt.Errorf("list webhook secrets: %w", err)
	}
	secrets, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list webhook secrets: %w", err)
	}
	return secrets, nil
}

// describeCheck turns a violated CHECK constraint into a readable error.
func describeCheck(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" {
		return fmt.Errorf("invalid value (%s): %w", pgErr.ConstraintName, err)
	}
	return err
}
