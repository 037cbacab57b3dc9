// Package db holds the database migrations, embedded so that every binary
// carries the schema it was built against, and the functions that apply them.
//
// Migrations are dbmate files (db/migrations/*.sql). They are applied by the
// operator command (asyncctl migrate) and by the dev harness, never implicitly
// by a function's cold start.
package db

import (
	"context"
	"embed"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	_ "github.com/amacneil/dbmate/v2/pkg/driver/postgres" // registers the postgres driver with dbmate
)

// Migrations holds db/migrations/*.sql.
//
//go:embed migrations/*.sql
var Migrations embed.FS

func newDBMate(databaseURL string, log io.Writer) (*dbmate.DB, error) {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	m := dbmate.New(u)
	m.FS = Migrations
	m.MigrationsDir = []string{"migrations"}
	m.AutoDumpSchema = false
	if log == nil {
		log = io.Discard
	}
	m.Log = log
	return m, nil
}

// Migrate applies every pending migration. When create is true the database
// is created first if it does not exist (the dev harness does this; the
// operator command does not).
func Migrate(ctx context.Context, databaseURL string, create bool, log io.Writer) error {
	m, err := newDBMate(databaseURL, log)
	if err != nil {
		return err
	}
	if create {
		if err := m.CreateAndMigrate(); err != nil {
			return fmt.Errorf("create and migrate: %w", err)
		}
		return nil
	}
	if err := m.Migrate(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// LatestVersion is the version of the newest embedded migration: the version
// a database must be at for this binary to be ready.
func LatestVersion() string {
	entries, err := fs.ReadDir(Migrations, "migrations")
	if err != nil {
		panic(err) // embedded at build time; cannot fail
	}
	var versions []string
	for _, e := range entries {
		name := path.Base(e.Name())
		if v, _, ok := strings.Cut(name, "_"); ok && strings.HasSuffix(name, ".sql") {
			versions = append(versions, v)
		}
	}
	sort.Strings(versions)
	if len(versions) == 0 {
		return ""
	}
	return versions[len(versions)-1]
}
