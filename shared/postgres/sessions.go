package postgres

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ConsoleSessionTTLDefault is how long a console session lasts after
// sign-in.
const ConsoleSessionTTLDefault = 12 * time.Hour

// ConsoleLoginTokenTTLDefault is how long a one-time sign-in token is good
// for.
const ConsoleLoginTokenTTLDefault = 15 * time.Minute

// ConsoleSession is a signed-in console user.
type ConsoleSession struct {
	// Secret is the cookie value: shown once, at creation, and stored only
	// hashed. Empty when the session was looked up.
	Secret         string
	OrganizationID int64
	APIKeyID       int64
	// KeyName and KeyPrefix say which key signed in, for the page header.
	KeyName   string
	KeyPrefix string
	Scope     string
	// CSRFToken must come back with every form the session posts.
	CSRFToken string
	CreatedAt time.Time
	ExpiresAt time.Time
}

// randomToken returns 32 random bytes as base64url.
func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("read random: %v", err)) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func tokenHash(secret string) []byte {
	sum := sha256.Sum256([]byte(secret))
	return sum[:]
}

// apiKeyLookup finds an unrevoked key by its value, comparing the stored
// hash in constant time: its id, organization and scope, or ErrNotFound.
func apiKeyLookup(ctx context.Context, q querier, key string) (id, orgID int64, scope string, err error) {
	lookupID, hash := hashAPIKey(key)
	var stored []byte
	err = q.QueryRow(ctx, `
		SELECT id, organization_id, scope, key_hash FROM api_keys WHERE lookup_id = $1 AND revoked_at IS NULL`,
		lookupID).Scan(&id, &orgID, &scope, &stored)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, "", ErrNotFound
	}
	if err != nil {
		return 0, 0, "", err
	}
	if subtle.ConstantTimeCompare(stored, hash) != 1 {
		return 0, 0, "", ErrNotFound
	}
	return id, orgID, scope, nil
}

// ConsoleSessionSignIn starts a session for the holder of API key key,
// lasting ttl (default ConsoleSessionTTLDefault), or returns ErrNotFound
// for an unknown or revoked key. Expired sessions and sign-in tokens are
// deleted in the same transaction.
func (db *DB) ConsoleSessionSignIn(ctx context.Context, key string, ttl time.Duration) (ConsoleSession, error) {
	var s ConsoleSession
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		keyID, _, _, err := apiKeyLookup(ctx, tx, key)
		if err != nil {
			return err
		}
		s, err = consoleSessionInsert(ctx, tx, keyID, ttl)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return ConsoleSession{}, ErrNotFound
	}
	if err != nil {
		return ConsoleSession{}, fmt.Errorf("sign in to the console: %w", err)
	}
	return s, nil
}

// consoleSessionInsert makes a session for key keyID and removes expired
// sessions and tokens.
func consoleSessionInsert(ctx context.Context, tx pgx.Tx, keyID int64, ttl time.Duration) (ConsoleSession, error) {
	if ttl <= 0 {
		ttl = ConsoleSessionTTLDefault
	}
	if _, err := tx.Exec(ctx, `DELETE FROM console_sessions WHERE expires_at <= now()`); err != nil {
		return ConsoleSession{}, err
	}
	if _, err := tx.Exec(ctx, `DELETE FROM console_login_tokens WHERE expires_at <= now()`); err != nil {
		return ConsoleSession{}, err
	}
	s := ConsoleSession{Secret: randomToken(), CSRFToken: randomToken(), APIKeyID: keyID}
	err := tx.QueryRow(ctx, `
		WITH k AS (SELECT id, organization_id, scope, name, prefix FROM api_keys WHERE id = $4 AND revoked_at IS NULL),
		ins AS (
			INSERT INTO console_sessions (id_hash, organization_id, api_key_id, scope, csrf_token, expires_at)
			SELECT $1, organization_id, id, scope, $2, now() + make_interval(secs => $3) FROM k
			RETURNING organization_id, scope, created_at, expires_at
		)
		SELECT ins.organization_id, ins.scope, ins.created_at, ins.expires_at, k.name, k.prefix FROM ins, k`,
		tokenHash(s.Secret), s.CSRFToken, ttl.Seconds(), keyID).
		Scan(&s.OrganizationID, &s.Scope, &s.CreatedAt, &s.ExpiresAt, &s.KeyName, &s.KeyPrefix)
	if errors.Is(err, pgx.ErrNoRows) {
		return ConsoleSession{}, ErrNotFound
	}
	return s, err
}

// ConsoleSessionGet returns the live session whose cookie value is secret:
// ErrNotFound when it is unknown, expired, signed out or its key revoked.
func (db *DB) ConsoleSessionGet(ctx context.Context, secret string) (ConsoleSession, error) {
	var s ConsoleSession
	err := db.Pool.QueryRow(ctx, `
		SELECT s.organization_id, s.api_key_id, k.name, k.prefix, s.scope, s.csrf_token, s.created_at, s.expires_at
		FROM console_sessions s JOIN api_keys k ON k.id = s.api_key_id
		WHERE s.id_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL`, tokenHash(secret)).
		Scan(&s.OrganizationID, &s.APIKeyID, &s.KeyName, &s.KeyPrefix, &s.Scope, &s.CSRFToken, &s.CreatedAt, &s.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return ConsoleSession{}, ErrNotFound
	}
	if err != nil {
		return ConsoleSession{}, fmt.Errorf("get console session: %w", err)
	}
	return s, nil
}

// ConsoleSessionDelete ends the session whose cookie value is secret (sign
// out). Ending an unknown session is not an error.
func (db *DB) ConsoleSessionDelete(ctx context.Context, secret string) error {
	if _, err := db.Pool.Exec(ctx, `DELETE FROM console_sessions WHERE id_hash = $1`, tokenHash(secret)); err != nil {
		return fmt.Errorf("delete console session: %w", err)
	}
	return nil
}

// ConsoleLoginTokenCreate returns a one-time sign-in token for API key key,
// good for ttl (default ConsoleLoginTokenTTLDefault). The dev harness puts
// it in the console link it prints, so the key itself never appears in a
// URL.
func (db *DB) ConsoleLoginTokenCreate(ctx context.Context, key string, ttl time.Duration) (string, error) {
	if ttl <= 0 {
		ttl = ConsoleLoginTokenTTLDefault
	}
	token := randomToken()
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		keyID, _, _, err := apiKeyLookup(ctx, tx, key)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO console_login_tokens (token_hash, api_key_id, expires_at)
			VALUES ($1, $2, now() + make_interval(secs => $3))`, tokenHash(token), keyID, ttl.Seconds())
		return err
	})
	if err != nil {
		return "", fmt.Errorf("create console sign-in token: %w", err)
	}
	return token, nil
}

// ConsoleLoginTokenRedeem uses up a sign-in token and starts a session of
// ttl for its key, in one transaction: a token signs in once. An unknown,
// used or expired token, or one whose key was revoked, is ErrNotFound.
func (db *DB) ConsoleLoginTokenRedeem(ctx context.Context, token string, ttl time.Duration) (ConsoleSession, error) {
	var s ConsoleSession
	err := pgx.BeginFunc(ctx, db.Pool, func(tx pgx.Tx) error {
		var keyID int64
		err := tx.QueryRow(ctx, `
			DELETE FROM console_login_tokens WHERE token_hash = $1 AND expires_at > now()
			RETURNING api_key_id`, tokenHash(token)).Scan(&keyID)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		s, err = consoleSessionInsert(ctx, tx, keyID, ttl)
		return err
	})
	if errors.Is(err, ErrNotFound) {
		return ConsoleSession{}, ErrNotFound
	}
	if err != nil {
		return ConsoleSession{}, fmt.Errorf("redeem console sign-in token: %w", err)
	}
	return s, nil
}
