// Package pgtest gives tests a real, migrated Postgres database of their own.
//
// A test package calls Main from TestMain. The server is TEST_DATABASE_URL
// when set; otherwise a Postgres container is started with testcontainers;
// when neither works, every test that needs a database is skipped with the
// reason. Each call to New clones a migrated template database, so tests
// that commit never see each other's rows and can run in parallel.
package pgtest

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/postgres"
)

var (
	server     *pgtestdb.Config
	skipReason string
)

// Main finds or starts the Postgres server, runs the tests, and stops the
// container if it started one.
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
		var err error
		raw, stop, err = startContainer()
		if err != nil {
			skipReason = "no database for tests: TEST_DATABASE_URL is unset and a Postgres container could not start (" + err.Error() + ")"
			fmt.Fprintln(os.Stderr, "pgtest: "+skipReason)
			return func() {}
		}
	}
	conf, err := parse(raw)
	if err != nil {
		skipReason = "TEST_DATABASE_URL: " + err.Error()
		fmt.Fprintln(os.Stderr, "pgtest: "+skipReason)
		return stop
	}
	server = conf
	return stop
}

// startContainer starts Postgres in Docker. testcontainers panics in some
// versions when no Docker engine is found, so the panic is turned into an
// error.
func startContainer() (connString string, stop func(), err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("testcontainers: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := tcpostgres.Run(ctx, "postgres:15-alpine",
		tcpostgres.WithDatabase("postgres"),
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		return "", nil, err
	}
	connString, err = c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		_ = c.Terminate(context.Background())
		return "", nil, err
	}
	return connString, func() { _ = c.Terminate(context.Background()) }, nil
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
// dropped when the test ends. It skips the test when no server is available.
func URL(t testing.TB) string {
	t.Helper()
	if server == nil {
		if skipReason == "" {
			t.Fatal("pgtest: call pgtest.Main from TestMain")
		}
		t.Skip(skipReason)
	}
	return pgtestdb.Custom(t, *server, migrator{}).URL()
}

// New returns a pool on a fresh, migrated database of the test's own.
func New(t testing.TB) *postgres.DB {
	t.Helper()
	pg, err := postgres.Open(context.Background(), URL(t), 20)
	if err != nil {
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
