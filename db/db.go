// Package db holds the database migrations, embedded so that every binary
// carries the schema it was built against, and the functions that apply them.
//
// Migrations are dbmate files (db/migrations/*.sql). They are applied by the
// operator command (asyncctl migrate) and by the dev harness, never implicitly
// by a function's cold start.
package db

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"path"
	"sort"
	"strings"

	"github.com/amacneil/dbmate/v2/pkg/dbmate"
	_ "github.com/amacneil/dbmate/v2/pkg/driver/postgres" // registers the postgres driver with dbmate
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
// is created first if it does not exist (EnsureDatabase): the dev harness
// and the operator command (asyncctl migrate) do this; tests migrate a
// template database that exists already.
func Migrate(ctx context.Context, databaseURL string, create bool, log io.Writer) error {
	if create {
		if err := EnsureDatabase(ctx, databaseURL); err != nil {
			return err
		}
	}
	databaseURL, err := withSSLMode(ctx, databaseURL)
	if err != nil {
		return err
	}
	m, err := newDBMate(databaseURL, log)
	if err != nil {
		return err
	}
	if err := m.Migrate(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// withSSLMode gives a URL without sslmode the one that pgx, and so every
// other binary, uses for it: "prefer", TLS when the server offers it. The
// migrations run through lib/pq, which has no prefer and requires TLS when
// sslmode is unset, so the URL gets sslmode=require or sslmode=disable
// after a connection shows which one the server takes.
func withSSLMode(ctx context.Context, databaseURL string) (string, error) {
	u, err := url.Parse(databaseURL)
	if err != nil {
		return "", fmt.Errorf("parse database url: %w", err)
	}
	q := u.Query()
	if q.Get("sslmode") != "" {
		return databaseURL, nil
	}
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		return "", fmt.Errorf("connect to database: %w", err)
	}
	_, isTLS := conn.PgConn().Conn().(*tls.Conn)
	_ = conn.Close(ctx)
	q.Set("sslmode", "disable")
	if isTLS {
		q.Set("sslmode", "require")
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// MaintenanceDatabases are the databases EnsureDatabase connects to, in
// order, to create a missing one: every Postgres server has them.
var MaintenanceDatabases = []string{"postgres", "template1"}

// EnsureDatabase creates the database databaseURL names when the server
// says it does not exist, from one of MaintenanceDatabases with the same
// role, host and options. A database that exists is left alone without
// touching any other, so a role that may connect only to its own database
// can still migrate it; two processes creating the same database at once
// both succeed.
func EnsureDatabase(ctx context.Context, databaseURL string) error {
	conf, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parse database url: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, conf)
	if err == nil {
		return conn.Close(ctx)
	}
	if !isPgCode(err, codeInvalidCatalogName) {
		return fmt.Errorf("connect to database %q: %w", conf.Database, err)
	}
	name := conf.Database
	var errs []error
	for _, maintenance := range MaintenanceDatabases {
		c := conf.Copy()
		c.Database = maintenance
		conn, err := pgx.ConnectConfig(ctx, c)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		_ = conn.Close(ctx)
		if err != nil && !isPgCode(err, codeDuplicateDatabase) {
			return fmt.Errorf("create database %q: %w", name, err)
		}
		return nil
	}
	return fmt.Errorf("create database %q: no maintenance database to connect to: %w", name, errors.Join(errs...))
}

// Postgres error codes: the database does not exist; it exists already.
const (
	codeInvalidCatalogName = "3D000"
	codeDuplicateDatabase  = "42P04"
)

func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
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
