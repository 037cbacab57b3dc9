// Package webhook builds and signs outgoing webhooks and verifies incoming
// ones.
//
// Every webhook carries two signature schemes so that both kinds of receiver
// work unchanged:
//
//   - Standard Webhooks (https://www.standardwebhooks.com): webhook-id,
//     webhook-timestamp and webhook-signature, an HMAC-SHA256 over
//     "id.timestamp.body" keyed with the base64-decoded part of the secret
//     after "whsec_". The timestamp inside the signed content is what protects
//     receivers against replays.
//   - Compatibility with the original async API: X-BASETEN-REQUEST-ID and
//     X-BASETEN-SIGNATURE, an HMAC-SHA256 over the body alone keyed with the
//     whole secret string, prefix included, as that API's verification sample
//     does. It can be switched off.
//
// Each scheme carries one signature per active secret, so a secret can be
// rotated without a window in which receivers reject webhooks: the new secret
// is added, both sign for a while, and the old one is then dropped.
//
// The package is pure: it has no state, does no I/O beyond reading random
// bytes, and is safe to import from a receiver written in Go.
package webhook

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names. They are written here as the specifications spell them;
// http.Header canonicalizes them (webhook-id becomes Webhook-Id), which does
// not matter on the wire because HTTP header names are case-insensitive.
const (
	// HeaderID is the Standard Webhooks message id. It stays the same across
	// delivery retries of one message so that receivers can deduplicate.
	HeaderID = "webhook-id"
	// HeaderTimestamp is the Standard Webhooks send time in unix seconds.
	HeaderTimestamp = "webhook-timestamp"
	// HeaderSignature holds the Standard Webhooks signatures, "v1,<base64>",
	// one per active secret, separated by spaces.
	HeaderSignature = "webhook-signature"
	// HeaderCompatRequestID is the compatibility header holding the request id.
	HeaderCompatRequestID = "X-BASETEN-REQUEST-ID"
	// HeaderCompatSignature holds the compatibility signatures, "v1=<hex>",
	// one per active secret, separated by commas.
	HeaderCompatSignature = "X-BASETEN-SIGNATURE"
)

// SecretPrefix starts every secret, as in the Standard Webhooks specification.
const SecretPrefix = "whsec_"

// secretBytes is how many random bytes GenerateSecret draws: 256 bits, the
// output size of SHA-256; a longer key adds no strength to HMAC-SHA256.
const secretBytes = 32

// TimestampTolerance is how far webhook-timestamp may be from the receiver's
// clock, in either direction, for Verify to accept a Standard Webhooks
// signature. Five minutes is the Standard Webhooks recommendation: enough for
// clock skew and slow networks, short enough to make replays useless.
const TimestampTolerance = 5 * time.Minute

var (
	// ErrInvalidSecret is returned for a secret that does not start with
	// "whsec_" or whose remainder is not base64.
	ErrInvalidSecret = errors.New("invalid webhook secret")
	// ErrNoSecrets is returned when signing or verifying with no secret at all.
	ErrNoSecrets = errors.New("no webhook secrets")
	// ErrMissingHeaders is returned by Verify when a request carries neither
	// a complete set of Standard Webhooks headers nor a compatibility
	// signature.
	ErrMissingHeaders = errors.New("missing webhook signature headers")
	// ErrBadTimestamp is returned by Verify when webhook-timestamp is not a
	// unix time in seconds or is further than TimestampTolerance from now.
	ErrBadTimestamp = errors.New("webhook timestamp invalid or outside tolerance")
	// ErrNoMatchingSignature is returned by Verify when a scheme's
	// signatures are present but none matches any of the secrets.
	ErrNoMatchingSignature = errors.New("no matching webhook signature")
)

// GenerateSecret returns a new secret: "whsec_" followed by the standard
// base64 encoding of 32 random bytes.
func GenerateSecret() (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate webhook secret: %w", err)
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// ValidSecret reports, as an error wrapping ErrInvalidSecret, whether s can
// sign webhooks. Like the Standard Webhooks libraries it is lenient: any
// "whsec_" value whose remainder base64-decodes (with or without padding) to
// at least one byte is accepted, so secrets made elsewhere can be imported.
// Secrets this package generates always carry 32 bytes.
func ValidSecret(s string) error {
	_, err := standardKey(s)
	return err
}

// standardKey returns the Standard Webhooks HMAC key of secret: the bytes
// that the part after "whsec_" encodes.
func standardKey(secret string) ([]byte, error) {
	encoded, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: must start with %q", ErrInvalidSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		key, err = base64.RawStdEncoding.DecodeString(encoded)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: the part after %q is not base64", ErrInvalidSecret, SecretPrefix)
	}
	if len(key) == 0 {
		return nil, fmt.Errorf("%w: empty key", ErrInvalidSecret)
	}
	return key, nil
}

// Signer produces the signature headers of outgoing webhooks. The zero
// value has no secrets and refuses to sign.
type Signer struct {
	// Secrets are the organization's active secrets, each "whsec_...". Each
	// one adds a signature to every scheme, so during a rotation the old
	// and the new secret both sign.
	Secrets []string
	// Compat adds the compatibility headers X-BASETEN-REQUEST-ID and
	// X-BASETEN-SIGNATURE next to the Standard Webhooks ones.
	Compat bool
}

// Headers returns the signature headers for one delivery of body.
//
// msgID becomes webhook-id and must be the same on every retry of the same
// message; requestID becomes X-BASETEN-REQUEST-ID when Compat is set; ts is
// the send time, truncated to seconds. body must be the exact bytes that will
// be sent: any re-encoding afterwards breaks the signatures.
//
// It fails, wrapping ErrNoSecrets or ErrInvalidSecret, rather than send a
// webhook that some secret did not sign.
func (s Signer) Headers(msgID, requestID string, ts time.Time, body []byte) (http.Header, error) {
	if len(s.Secrets) == 0 {
		return nil, ErrNoSecrets
	}
	unix := strconv.FormatInt(ts.Unix(), 10)
	standard := make([]string, 0, len(s.Secrets))
	compat := make([]string, 0, len(s.Secrets))
	for i, secret := range s.Secrets {
		key, err := standardKey(secret)
		if err != nil {
			return nil, fmt.Errorf("sign webhook with secret %d: %w", i, err)
		}
		standard = append(standard, "v1,"+base64.StdEncoding.EncodeToString(standardMAC(key, msgID, unix, body)))
		compat = append(compat, "v1="+hex.EncodeToString(compatMAC(secret, body)))
	}

	h := make(http.Header)
	h.Set(HeaderID, msgID)
	h.Set(HeaderTimestamp, unix)
	h.Set(HeaderSignature, strings.Join(standard, " "))
	if s.Compat {
		h.Set(HeaderCompatRequestID, requestID)
		h.Set(HeaderCompatSignature, strings.Join(compat, ","))
	}
	return h, nil
}

// standardMAC is the Standard Webhooks signature: HMAC-SHA256 keyed with the
// decoded secret over "msgID.timestamp.body".
func standardMAC(key []byte, msgID, unix string, body []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msgID))
	m.Write([]byte{'.'})
	m.Write([]byte(unix))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// compatMAC is the compatibility signature: HMAC-SHA256 keyed with the whole
// secret string, "whsec_" included, over the body alone.
func compatMAC(secret string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return m.Sum(nil)
}
