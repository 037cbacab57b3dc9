package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/requestid"
)

// TestUpstreamCredential: a deployment's credential is stored sealed, never
// as its plain text, is opened only for a claimed request of its own
// deployment, and re-encrypts under a new key.
func TestUpstreamCredential(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const secret = "Bearer upstream-secret-4b1d"
	keys := func(t *testing.T, list ...string) *credential.Keyring {
		t.Helper()
		k, err := credential.ParseKeys(strings.Join(list, ","))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	setup := func(t *testing.T) (*postgres.DB, int64) {
		t.Helper()
		db := pgtest.New(t)
		org := pgtest.SeedTenant(t, db, "acme", []postgres.Model{{ID: "m1", Kind: postgres.KindModel}}, nil)
		return db, org.ID
	}
	create := func(t *testing.T, db *postgres.DB, org int64, id, cred string) {
		t.Helper()
		err := db.DeploymentCreate(ctx, org, postgres.Deployment{ID: id, ModelID: "m1", URL: "http://model.invalid", MaxConcurrency: 1, UpstreamCredential: cred})
		if err != nil {
			t.Fatal(err)
		}
	}
	stored := func(t *testing.T, db *postgres.DB, id string) string {
		t.Helper()
		var s *string
		if err := db.Pool.QueryRow(ctx, `SELECT upstream_credential FROM deployments WHERE id = $1`, id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		if s == nil {
			return ""
		}
		return *s
	}

	t.Run("StoredSealedOpenedAtClaim", func(t *testing.T) {
		t.Parallel()
		db, org := setup(t)
		create(t, db, org, "d1", secret)
		create(t, db, org, "d2", "")
		s := stored(t, db, "d1")
		if !strings.HasPrefix(s, "v1:") || strings.Contains(s, "upstream-secret") {
			t.Fatalf("stored credential %q: want it sealed, without the plain text", s)
		}
		if s := stored(t, db, "d2"); s != "" {
			t.Errorf("no credential stored as %q, want NULL", s)
		}
		d, err := db.DeploymentResolve(ctx, postgres.DeploymentTarget{OrganizationID: org, ModelID: "m1", Kind: postgres.KindModel, DeploymentID: "d1"})
		if err != nil || d.UpstreamCredential != "" {
			t.Errorf("resolved deployment %+v, %v: the credential must not be read back", d, err)
		}
		for _, dep := range []string{"d1", "d2"} {
			_, err := db.RequestInsert(ctx, postgres.RequestInsertParams{ID: requestid.New(), OrganizationID: org, ModelID: "m1", DeploymentID: dep,
				MaxTimeInQueue: time.Minute, MaxAttempts: 1, Input: []byte(`{}`)})
			if err != nil {
				t.Fatal(err)
			}
		}
		claimed, err := db.RequestClaimBatch(ctx, postgres.RequestClaimParams{Owner: "p", Limit: 10, LeaseDuration: time.Minute})
		if err != nil || len(claimed) != 2 {
			t.Fatalf("claimed %d, %v", len(claimed), err)
		}
		want := map[string]string{"d1": secret, "d2": ""}
		for _, c := range claimed {
			got, err := db.UpstreamCredentialOpen(c)
			if err != nil || got != want[c.DeploymentID] {
				t.Errorf("%s: credential %q, %v; want %q", c.DeploymentID, got, err, want[c.DeploymentID])
			}
		}
		// A sealed value moved to another deployment does not open there.
		if _, err := db.Pool.Exec(ctx, `UPDATE deployments SET upstream_credential = $1 WHERE id = 'd2'`, s); err != nil {
			t.Fatal(err)
		}
		moved := claimed[0]
		moved.DeploymentID, moved.UpstreamCredential = "d2", s
		if _, err := db.UpstreamCredentialOpen(moved); !errors.Is(err, credential.ErrInvalid) {
			t.Errorf("a credential moved to another deployment: %v, want ErrInvalid", err)
		}
		db.Credentials = nil
		if _, err := db.UpstreamCredentialOpen(claimed[0]); !errors.Is(err, credential.ErrNoKey) {
			t.Errorf("without keys: %v, want ErrNoKey", err)
		}
	})

	t.Run("NoKeyIsAConfigurationError", func(t *testing.T) {
		t.Parallel()
		db, org := setup(t)
		db.Credentials = nil
		err := db.DeploymentCreate(ctx, org, postgres.Deployment{ID: "d1", ModelID: "m1", URL: "http://model.invalid", MaxConcurrency: 1, UpstreamCredential: secret})
		if !errors.Is(err, credential.ErrNoKey) || !strings.Contains(err.Error(), "UPSTREAM_CREDENTIAL_KEYS") {
			t.Fatalf("create with a credential and no key: %v, want ErrNoKey naming UPSTREAM_CREDENTIAL_KEYS", err)
		}
		var n int
		if err := db.Pool.QueryRow(ctx, `SELECT count(*) FROM deployments`).Scan(&n); err != nil || n != 0 {
			t.Errorf("%d deployments stored, %v", n, err)
		}
		create(t, db, org, "d2", "") // no credential needs no key
	})

	t.Run("Reencrypt", func(t *testing.T) {
		t.Parallel()
		db, org := setup(t)
		oldKey, newKey := credential.NewKey(), credential.NewKey()
		db.Credentials = keys(t, oldKey)
		create(t, db, org, "d1", secret)
		create(t, db, org, "d2", "other")
		create(t, db, org, "d3", "")
		// A credential stored in plain text before encryption.
		if _, err := db.Pool.Exec(ctx, `INSERT INTO deployments (id, model_id, url, max_concurrency, upstream_credential) VALUES ('legacy', 'm1', 'http://model.invalid', 1, 'plain-legacy')`); err != nil {
			t.Fatal(err)
		}
		before := stored(t, db, "d1")

		db.Credentials = keys(t, newKey, oldKey)
		n, err := db.DeploymentCredentialsReencrypt(ctx)
		if err != nil || n != 3 {
			t.Fatalf("re-encrypted %d, %v; want 3", n, err)
		}
		if n, err := db.DeploymentCredentialsReencrypt(ctx); err != nil || n != 0 {
			t.Errorf("again: re-encrypted %d, %v; want 0", n, err)
		}
		db.Credentials = keys(t, newKey) // the old key retired
		for id, want := range map[string]string{"d1": secret, "d2": "other", "legacy": "plain-legacy"} {
			s := stored(t, db, id)
			got, err := db.Credentials.Open(s, id)
			if err != nil || got != want || strings.Contains(s, want) {
				t.Errorf("%s: stored %q opens to %q, %v; want %q", id, s, got, err, want)
			}
		}
		if s := stored(t, db, "d3"); s != "" {
			t.Errorf("d3 got credential %q", s)
		}
		if s := stored(t, db, "d1"); s == before {
			t.Error("d1 was not re-encrypted")
		}
	})

	t.Run("ReencryptUnknownKeyChangesNothing", func(t *testing.T) {
		t.Parallel()
		db, org := setup(t)
		lost := credential.NewKey()
		db.Credentials = keys(t, lost)
		create(t, db, org, "d1", secret)
		db.Credentials = keys(t, pgtest.CredentialKeys)
		create(t, db, org, "d0", "fine")
		before := stored(t, db, "d0")
		if _, err := db.DeploymentCredentialsReencrypt(ctx); !errors.Is(err, credential.ErrUnknownKey) || !strings.Contains(err.Error(), `"d1"`) {
			t.Fatalf("re-encrypt with a lost key: %v, want ErrUnknownKey naming d1", err)
		}
		if s := stored(t, db, "d0"); s != before {
			t.Error("a failed re-encryption changed another deployment")
		}
	})
}
