package db_test

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/openasync/asyncrequest/db"
	"github.com/openasync/asyncrequest/shared/postgres/pgtest"
	"github.com/openasync/asyncrequest/shared/postgres/throwaway"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestMigrateCreates migrates a database that does not exist yet, on the
// real server, as asyncctl migrate and make dev do: it is created, then
// migrated; migrating it again changes nothing.
func TestMigrateCreates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	server := pgtest.ServerURL(t)
	name := "migrate_creates_" + strings.ToLower(rand.Text()[:8])
	u, err := url.Parse(server)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	target := u.String()

	admin, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		admin.Close(context.Background())
	})
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil || exists {
		t.Fatalf("database %s exists before the test: %v, %v", name, exists, err)
	}

	for range 2 {
		if err := db.Migrate(ctx, target, true, nil); err != nil {
			t.Fatalf("migrate a missing database: %v", err)
		}
	}
	conn, err := pgx.Connect(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var version string
	if err := conn.QueryRow(ctx, "SELECT max(version) FROM schema_migrations").Scan(&version); err != nil || version != db.LatestVersion() {
		t.Fatalf("schema version %q, %v; want %s", version, err, db.LatestVersion())
	}
}

// TestMigrateWithoutCreate leaves a missing database missing.
func TestMigrateWithoutCreate(t *testing.T) {
	t.Parallel()
	u, err := url.Parse(pgtest.ServerURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/migrate_missing_" + strings.ToLower(rand.Text()[:8])
	if err := db.Migrate(context.Background(), u.String(), false, nil); err == nil {
		t.Fatal("migrating a missing database without create succeeded")
	}
}

// TestMigrateWithoutSSLMode migrates through a URL without sslmode on a
// server without TLS (a throwaway initdb cluster), as pgx connects to it
// (prefer): lib/pq, which runs the migrations, alone would require TLS.
func TestMigrateWithoutSSLMode(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s, err := throwaway.StartInitdb(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	u, _ := url.Parse(s.DatabaseURL("asyncrequest"))
	q := u.Query()
	q.Del("sslmode")
	u.RawQuery = q.Encode()
	if err := db.Migrate(ctx, u.String(), true, nil); err != nil {
		t.Fatalf("migrate %s: %v", u.Redacted(), err)
	}
}
