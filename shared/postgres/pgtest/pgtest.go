// Package pgtest gives tests a real, migrated Postgres database of their own.
//
// A test package calls Main from TestMain. The server is TEST_DATABASE_URL
// when set; otherwise a throwaway server is started exactly as make dev
// starts one (throwaway.Start: a Postgres container where Docker runs, else
// an initdb cluster from the local binaries), one per test process, and
// removed when the tests end. When no server can be had, every test that
// needs a database fails with the reason, unless TEST_DATABASE_SKIP=1, which
// skips them instead. Each call to New clones a migrated template database,
// so tests that commit never see each other's rows and can run in parallel.
package pgtest

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/credential"
	"github.com/openasync/asyncrequest/shared/postgres"
	"github.com/openasync/asyncrequest/shared/postgres/throwaway"
)

// SkipVariable names the variable that, set to 1, makes tests that need a
// database skip rather than fail when none can be had.
const SkipVariable = "TEST_DATABASE_SKIP"

var (
	server    *pgtestdb.Config
	serverURL string
	noServer  string // why there is no server
)

// Main finds or starts the Postgres server, runs the tests, and stops the
// server if it started one.
func Main(m *testing.M) {
	stop := setup()
	code := m.Run()
	stop()
	os.Exit(code)
}

func setup() (stop func()) {
	stop = func() {}
	raw := os.Getenv("TEST_DATABASE_URL")
	if raw == "" {
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		s, err := throwaway.Start(context.Background(), log)
		if err != nil {
			noServer = "no database for tests: TEST_DATABASE_URL is unset and no throwaway Postgres could start: " + err.Error()
			fmt.Fprintln(os.Stderr, "pgtest: "+noServer)
			return stop
		}
		fmt.Fprintf(os.Stderr, "pgtest: TEST_DATABASE_URL is unset; testing on a throwaway Postgres (%s)\n", s.Kind)
		raw = s.URL
		stop = func() {
			if err := s.Stop(); err != nil {
				fmt.Fprintln(os.Stderr, "pgtest: stop the throwaway Postgres:", err)
			}
		}
	}
	conf, err := parse(raw)
	if err != nil {
		noServer = "TEST_DATABASE_URL: " + err.Error()
		fmt.Fprintln(os.Stderr, "pgtest: "+noServer)
		return stop
	}
	server, serverURL = conf, raw
	return stop
}

func parse(raw string) (*pgtestdb.Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, err
	}
	pw, _ := u.User.Password()
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	q := u.Query()
	if q.Get("sslmode") == "" {
		q.Set("sslmode", "disable")
	}
	return &pgtestdb.Config{
		DriverName:                "pgx",
		Host:                      u.Hostname(),
		Port:                      port,
		User:                      u.User.Username(),
		Password:                  pw,
		Database:                  firstNonEmpty(u.Path[min(1, len(u.Path)):], "postgres"),
		Options:                   q.Encode(),
		ForceTerminateConnections: true,
	}, nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

// URL returns the connection string of a fresh, migrated database that is
// dropped when the test ends.
func URL(t testing.TB) string {
	t.Helper()
	requireServer(t)
	return pgtestdb.Custom(t, *server, migrator{}).URL()
}

// ServerURL returns the connection string of the server's own database
// (TEST_DATABASE_URL's, or the throwaway server's postgres), for tests that
// create databases of their own.
func ServerURL(t testing.TB) string {
	t.Helper()
	requireServer(t)
	return serverURL
}

// requireServer fails t when there is no server, or skips it when
// SkipVariable is 1.
func requireServer(t testing.TB) {
	t.Helper()
	if server != nil {
		return
	}
	if noServer == "" {
		t.Fatal("pgtest: call pgtest.Main from TestMain")
	}
	if os.Getenv(SkipVariable) == "1" {
		t.Skip(noServer + " (skipped: " + SkipVariable + "=1)")
	} else {
		t.Fatal(noServer + " (set " + SkipVariable + "=1 to skip the tests that need one)")
	}
}

// CredentialKeys is the UPSTREAM_CREDENTIAL_KEYS of tests: the pools New
// returns seal and open upstream credentials with it.
const CredentialKeys = "chHXwHGJrHvtG75dGoGBfw3okNhjvBZsQhC+bn/SVcc="

// New returns a pool on a fresh, migrated database of the test's own, with
// CredentialKeys.
func New(t testing.TB) *postgres.DB {
	t.Helper()
	pg, err := postgres.Open(context.Background(), URL(t), 20)
	if err != nil {
		t.Fatal(err)
	}
	if pg.Credentials, err = credential.ParseKeys(CredentialKeys); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pg.Close)
	return pg
}

// migrator applies the embedded dbmate migrations to the template database.
type migrator struct{}

func (migrator) Hash() (string, error) {
	h := sha256.New()
	err := fs.WalkDir(db.Migrations, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(db.Migrations, path)
		h.Write([]byte(path))
		h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil))[:16], err
}

func (migrator) Migrate(ctx context.Context, _ *sql.DB, conf pgtestdb.Config) error {
	return db.Migrate(ctx, conf.URL(), false, nil)
}

// Tenant is an organization seeded by SeedTenant.
type Tenant struct {
	ID  int64
	Key string // an API key of the organization
}

// SeedTenant creates organization name with a fresh API key, models and
// deployments (a deployment without a URL gets http://model.invalid, one
// without max_concurrency gets 1).
func SeedTenant(t testing.TB, pg *postgres.DB, name string, models []postgres.Model, deployments []postgres.Deployment) Tenant {
	t.Helper()
	ctx := context.Background()
	o, err := pg.OrganizationEnsure(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	key := postgres.NewAPIKey()
	if err := pg.APIKeyCreate(ctx, o.ID, key, ""); err != nil {
		t.Fatal(err)
	}
	for _, m := range models {
		m.OrganizationID = o.ID
		if err := pg.ModelCreate(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range deployments {
		d.URL = firstNonEmpty(d.URL, "http://model.invalid")
		d.MaxConcurrency = max(d.MaxConcurrency, 1)
		if err := pg.DeploymentCreate(ctx, o.ID, d); err != nil {
			t.Fatal(err)
		}
	}
	return Tenant{ID: o.ID, Key: key}
}
