package httpapi

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/openasync/asyncrequest/shared/postgres"
)

// AuthCacheTTLDefault is how long a successful key lookup is remembered by
// one API instance. A revoked key keeps working on an instance that looked
// it up within this window.
const AuthCacheTTLDefault = 30 * time.Second

// authCacheMaxEntries bounds the cache; past it, the cache starts over.
const authCacheMaxEntries = 10_000

type orgKey struct{}

// OrganizationID returns the organization that Authenticate found for the
// request; 0 outside Authenticate.
func OrganizationID(ctx context.Context) int64 {
	id, _ := ctx.Value(orgKey{}).(int64)
	return id
}

// WithOrganizationID returns ctx carrying organization id, as Authenticate
// sets it.
func WithOrganizationID(ctx context.Context, id int64) context.Context {
	return context.WithValue(ctx, orgKey{}, id)
}

// AuthOptions configures Authenticate.
type AuthOptions struct {
	DB     *postgres.DB
	Logger *slog.Logger
	// TTL is how long a successful lookup is cached. Default
	// AuthCacheTTLDefault.
	TTL time.Duration
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

type authEntry struct {
	orgID   int64
	expires time.Time
}

// Authenticate returns middleware that requires an API key, as
// "Authorization: Api-Key <key>" or "Authorization: Bearer <key>" (the
// scheme is case-insensitive), and puts its organization in the request's
// context (OrganizationID). A missing, malformed or unknown key is a 401;
// an unreachable database a 503. Two Authorization headers are a 400
// (RepeatedHeader): which one counts is for no one to guess.
//
// Successful lookups are cached in memory for TTL, keyed by the key's
// SHA-256, never the key itself, so a busy client costs one database
// lookup per TTL. Failures are not cached. Keys are never logged.
func Authenticate(o AuthOptions) func(http.Handler) http.Handler {
	ttl := o.TTL
	if ttl <= 0 {
		ttl = AuthCacheTTLDefault
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	var (
		mu    sync.Mutex
		cache = map[[32]byte]authEntry{}
	)
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if len(r.Header.Values("Authorization")) > 1 {
				WriteError(w, r, o.Logger, RepeatedHeader("Authorization"))
				return
			}
			key, ok := apiKey(r.Header.Get("Authorization"))
			if !ok {
				w.Header().Set("WWW-Authenticate", `Api-Key, Bearer`)
				WriteError(w, r, o.Logger, ErrUnauthorized)
				return
			}
			sum := sha256.Sum256([]byte(key))
			mu.Lock()
			e, hit := cache[sum]
			mu.Unlock()
			if !hit || !now().Before(e.expires) {
				orgID, err := o.DB.APIKeyAuthenticate(r.Context(), key)
				if errors.Is(err, postgres.ErrNotFound) {
					w.Header().Set("WWW-Authenticate", `Api-Key, Bearer`)
					WriteError(w, r, o.Logger, ErrUnauthorized)
					return
				}
				if err != nil {
					WriteError(w, r, o.Logger, err)
					return
				}
				e = authEntry{orgID: orgID, expires: now().Add(ttl)}
				mu.Lock()
				if len(cache) >= authCacheMaxEntries {
					clear(cache)
				}
				cache[sum] = e
				mu.Unlock()
			}
			next.ServeHTTP(w, r.WithContext(WithOrganizationID(r.Context(), e.orgID)))
		})
	}
}

// apiKey reads the key from an Authorization header value.
func apiKey(header string) (string, bool) {
	scheme, key, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || (!strings.EqualFold(scheme, "Api-Key") && !strings.EqualFold(scheme, "Bearer")) {
		return "", false
	}
	key = strings.TrimSpace(key)
	if key == "" || strings.ContainsAny(key, " \t") {
		return "", false
	}
	return key, true
}
