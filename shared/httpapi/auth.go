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

// Key is the API key that Authenticate found for a request: its id, name
// and scope (never the key itself).
type Key struct {
	ID             int64
	OrganizationID int64
	Name           string
	Scope          postgres.KeyScope
}

type keyKey struct{}

// KeyFrom returns the key that Authenticate found for the request; ok is
// false outside Authenticate.
func KeyFrom(ctx context.Context) (Key, bool) {
	k, ok := ctx.Value(keyKey{}).(Key)
	return k, ok
}

// WithKey returns ctx carrying k and its organization, as Authenticate sets
// them.
func WithKey(ctx context.Context, k Key) context.Context {
	return WithOrganizationID(context.WithValue(ctx, keyKey{}, k), k.OrganizationID)
}

// KeyTouchInterval is how often an API instance records that a key was
// used (api_keys.last_used_at): at most once per key per interval, so a
// busy key costs no write per request.
const KeyTouchInterval = time.Minute

// AuthCache is the key cache of one API instance. Authenticate makes its own
// when given none; handlers of one process share one, so that revoking a
// key (Evict) refuses it at once on every route of the instance.
type AuthCache struct {
	mu      sync.Mutex
	entries map[[32]byte]authEntry
	touched map[int64]time.Time // when this instance last recorded each key's use
}

// NewAuthCache returns an empty cache.
func NewAuthCache() *AuthCache {
	return &AuthCache{entries: map[[32]byte]authEntry{}, touched: map[int64]time.Time{}}
}

// Evict forgets key id, so its next use is looked up again (and refused
// once revoked).
func (c *AuthCache) Evict(id int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for sum, e := range c.entries {
		if e.key.ID == id {
			delete(c.entries, sum)
		}
	}
}

func (c *AuthCache) get(sum [32]byte) (authEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[sum]
	return e, ok
}

func (c *AuthCache) put(sum [32]byte, e authEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= authCacheMaxEntries {
		clear(c.entries)
		clear(c.touched)
	}
	c.entries[sum] = e
}

// touchDue reports whether key id's use should be recorded now, and if so
// notes that it is.
func (c *AuthCache) touchDue(id int64, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t, ok := c.touched[id]; ok && now.Sub(t) < KeyTouchInterval {
		return false
	}
	c.touched[id] = now
	return true
}

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
	// Cache is the instance's key cache; nil makes one for this
	// middleware alone.
	Cache *AuthCache
}

type authEntry struct {
	key     Key
	expires time.Time
}

// Authenticate returns middleware that requires an API key, as
// "Authorization: Api-Key <key>" or "Authorization: Bearer <key>" (the
// scheme is case-insensitive), and puts its organization in the request's
// context (OrganizationID, and KeyFrom for its id, name and scope). A
// missing, malformed or unknown key is a 401; an unreachable database a
// 503. Two Authorization headers are a 400 (RepeatedHeader): which one
// counts is for no one to guess.
//
// Successful lookups are cached in memory for TTL, keyed by the key's
// SHA-256, never the key itself, so a busy client costs one database
// lookup per TTL. Failures are not cached. Keys are never logged. A
// revoked key is refused at once by the instance whose cache was evicted
// (AuthCache.Evict) and by every other within TTL.
//
// Each key's last_used_at is recorded at most once per KeyTouchInterval
// per instance (and per key across instances), not on every request.
func Authenticate(o AuthOptions) func(http.Handler) http.Handler {
	ttl := o.TTL
	if ttl <= 0 {
		ttl = AuthCacheTTLDefault
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	cache := o.Cache
	if cache == nil {
		cache = NewAuthCache()
	}
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
			e, hit := cache.get(sum)
			if !hit || !now().Before(e.expires) {
				k, err := o.DB.APIKeyLookup(r.Context(), key)
				if errors.Is(err, postgres.ErrNotFound) {
					w.Header().Set("WWW-Authenticate", `Api-Key, Bearer`)
					WriteError(w, r, o.Logger, ErrUnauthorized)
					return
				}
				if err != nil {
					WriteError(w, r, o.Logger, err)
					return
				}
				e = authEntry{key: Key{ID: k.ID, OrganizationID: k.OrganizationID, Name: k.Name, Scope: k.Scope}, expires: now().Add(ttl)}
				cache.put(sum, e)
			}
			if cache.touchDue(e.key.ID, now()) {
				if err := o.DB.APIKeyTouch(r.Context(), e.key.ID, KeyTouchInterval); err != nil && o.Logger != nil {
					o.Logger.WarnContext(r.Context(), "record api key use", "api_key_id", e.key.ID, "error", err)
				}
			}
			next.ServeHTTP(w, r.WithContext(WithKey(r.Context(), e.key)))
		})
	}
}

// ErrForbidden answers a key of scope invoke on a route or action that needs
// scope manage.
var ErrForbidden = &Error{Status: http.StatusForbidden, Code: "FORBIDDEN",
	Message: "this API key has scope invoke; managing needs a key of scope manage"}

// RequireScope returns the RouterOptions.Authenticate of a function whose
// routes authenticate with authenticate (Authenticate's middleware): every
// Auth authenticates, and AuthManage also refuses, with a 403
// (ErrForbidden), a key whose scope is not manage.
func RequireScope(authenticate func(http.Handler) http.Handler) func(Auth) func(http.Handler) http.Handler {
	return func(a Auth) func(http.Handler) http.Handler {
		if a != AuthManage {
			return authenticate
		}
		return func(next http.Handler) http.Handler {
			return authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if k, _ := KeyFrom(r.Context()); k.Scope != postgres.ScopeManage {
					WriteError(w, r, nil, ErrForbidden)
					return
				}
				next.ServeHTTP(w, r)
			}))
		}
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
