// Package postgres is the one module through which every handler reads and
// writes the database. Queries are methods on DB named Noun+Verb
// (RequestInsert, RequestClaimBatch), taking a params struct past two
// arguments.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/openasync/asyncrequest/shared/credential"
)

// DB is a pgx pool with the service's queries as methods.
type DB struct {
	Pool *pgxpool.Pool
	// StatusRetention is how long a request row is kept after its final
	// state. Default StatusRetentionDefault.
	StatusRetention time.Duration
	// OutputRetention is how long an output is kept after its webhook is
	// delivered or failed. Default OutputRetentionDefault.
	OutputRetention time.Duration
	// Credentials seals deployments' upstream credentials; nil when no key
	// is configured, and then no deployment may be given one.
	Credentials *credential.Keyring
}

const (
	StatusRetentionDefault = 24 * time.Hour
	OutputRetentionDefault = time.Hour
)

// WakeChannel is the LISTEN/NOTIFY channel that submit, retries and
// hand-backs signal on. A notification only wakes processors; a poll finds
// the same work without it.
const WakeChannel = "async_request_ready"

// WebhookWakeChannel wakes webhook deliverers.
const WebhookWakeChannel = "async_webhook_ready"

// Open creates a pool. It does not wait for the database: the first query
// does, so a function can start while the database is briefly away.
func Open(ctx context.Context, connString string, maxConns int32) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	cfg.MinConns = 0
	cfg.MaxConnIdleTime = 5 * time.Minute
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create pool: %w", err)
	}
	return &DB{Pool: pool, StatusRetention: StatusRetentionDefault, OutputRetention: OutputRetentionDefault}, nil
}

// Close closes the pool.
func (db *DB) Close() { db.Pool.Close() }

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error { return db.Pool.Ping(ctx) }

// ErrNotFound is returned when a row does not exist or belongs to another
// organization; callers cannot tell the two apart, by design.
var ErrNotFound = errors.New("not found")

// IsUnavailable reports whether err means the database could not be reached
// (as opposed to a query that was wrong): the API answers 503 for these.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &connErr), errors.As(err, &netErr),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET):
		return true
	case errors.As(err, &pgErr):
		// Class 08: connection exception; 57P01-03: admin shutdown, crash
		// shutdown, cannot connect now; 53300: too many connections.
		switch {
		case len(pgErr.Code) == 5 && pgErr.Code[:2] == "08",
			pgErr.Code == "57P01", pgErr.Code == "57P02", pgErr.Code == "57P03", pgErr.Code == "53300":
			return true
		}
	}
	return pgconn.SafeToRetry(err)
}

// querier is satisfied by the pool, a connection and a transaction, so a
// query can run inside or outside a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}
