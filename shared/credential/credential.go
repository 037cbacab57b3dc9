// Package credential encrypts deployments' upstream credentials at rest,
// with AES-256-GCM under keys from the environment (UPSTREAM_CREDENTIAL_KEYS).
//
// A sealed credential is text: "v1:<key id>:<base64url of nonce and
// ciphertext>". The key id names the key that sealed it, so keys rotate: a
// Keyring seals with its first key and opens with any of them. To rotate,
// put a new key first, keep the old ones after it, re-seal the stored
// credentials (asyncctl reencrypt-credentials), then drop the old keys.
// Each credential is bound to its deployment (additional data), so a
// sealed value copied to another deployment does not open.
package credential

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// KeySize is the size of a key, in bytes, before base64: AES-256.
const KeySize = 32

// Version begins every sealed credential.
const Version = "v1"

var (
	// ErrNoKey means a credential was to be sealed or opened and no key is
	// configured.
	ErrNoKey = errors.New("no upstream credential key configured (set UPSTREAM_CREDENTIAL_KEYS)")
	// ErrUnknownKey means the credential was sealed under a key that is
	// not configured.
	ErrUnknownKey = errors.New("upstream credential sealed under a key that is not in UPSTREAM_CREDENTIAL_KEYS")
	// ErrNotSealed means the stored value is not a sealed credential: plain
	// text stored before credentials were encrypted, or damage.
	ErrNotSealed = errors.New("upstream credential is not sealed (run asyncctl reencrypt-credentials)")
	// ErrInvalid means the sealed credential does not open: altered, or
	// bound to another deployment.
	ErrInvalid = errors.New("upstream credential does not decrypt: altered, or bound to another deployment")
)

// Keyring holds the configured keys; the first seals. A nil Keyring has no
// keys: it opens and seals only the empty credential.
type Keyring struct {
	keys []key
}

type key struct {
	id   string
	aead cipher.AEAD
}

// ParseKeys reads a comma-separated list of base64 keys of KeySize bytes
// (standard or URL alphabet, padded or not). An empty list is a nil
// Keyring. Errors name the key by position, never by value.
func ParseKeys(list string) (*Keyring, error) {
	if strings.TrimSpace(list) == "" {
		return nil, nil
	}
	k := &Keyring{}
	seen := map[string]bool{}
	for i, field := range strings.Split(list, ",") {
		raw, err := decodeKey(strings.TrimSpace(field))
		if err != nil || len(raw) != KeySize {
			return nil, fmt.Errorf("key %d: want %d bytes in base64 (openssl rand -base64 32)", i+1, KeySize)
		}
		block, err := aes.NewCipher(raw)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i+1, err)
		}
		id := keyID(raw)
		if seen[id] {
			return nil, fmt.Errorf("key %d: listed twice", i+1)
		}
		seen[id] = true
		k.keys = append(k.keys, key{id: id, aead: aead})
	}
	return k, nil
}

func decodeKey(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// keyID names a key in sealed values: the first 4 bytes of its SHA-256,
// in hex, which say which key to use and nothing about the key.
func keyID(raw []byte) string {
	sum := sha256.Sum256(append([]byte("asyncrequest upstream credential key\x00"), raw...))
	return hex.EncodeToString(sum[:4])
}

// NewKey returns a new random key, in base64, for UPSTREAM_CREDENTIAL_KEYS.
func NewKey() string {
	b := make([]byte, KeySize)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.StdEncoding.EncodeToString(b)
}

// Seal encrypts credential under the first key, bound to deployment. The
// empty credential (none) seals to the empty string.
func (k *Keyring) Seal(credential, deployment string) (string, error) {
	if credential == "" {
		return "", nil
	}
	if k == nil || len(k.keys) == 0 {
		return "", ErrNoKey
	}
	first := k.keys[0]
	nonce := make([]byte, first.aead.NonceSize())
	_, _ = rand.Read(nonce)
	sealed := first.aead.Seal(nonce, nonce, []byte(credential), additionalData(deployment))
	return Version + ":" + first.id + ":" + base64.RawURLEncoding.EncodeToString(sealed), nil
}

// Open decrypts a value Seal returned for deployment. The empty string
// opens to the empty credential.
func (k *Keyring) Open(sealed, deployment string) (string, error) {
	if sealed == "" {
		return "", nil
	}
	version, rest, ok1 := strings.Cut(sealed, ":")
	id, payload, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || version != Version {
		return "", ErrNotSealed
	}
	if k == nil || len(k.keys) == 0 {
		return "", ErrNoKey
	}
	for _, key := range k.keys {
		if key.id != id {
			continue
		}
		b, err := base64.RawURLEncoding.DecodeString(payload)
		if err != nil || len(b) < key.aead.NonceSize() {
			return "", ErrInvalid
		}
		n := key.aead.NonceSize()
		plain, err := key.aead.Open(nil, b[:n], b[n:], additionalData(deployment))
		if err != nil {
			return "", ErrInvalid
		}
		return string(plain), nil
	}
	return "", ErrUnknownKey
}

// Current reports whether sealed is sealed under the first key, so that
// re-sealing it would change nothing but the nonce.
func (k *Keyring) Current(sealed string) bool {
	if k == nil || len(k.keys) == 0 {
		return false
	}
	return strings.HasPrefix(sealed, Version+":"+k.keys[0].id+":")
}

// IsSealed reports whether stored has the form of a sealed credential.
func IsSealed(stored string) bool {
	version, rest, ok := strings.Cut(stored, ":")
	_, _, ok2 := strings.Cut(rest, ":")
	return ok && ok2 && version == Version
}

func additionalData(deployment string) []byte {
	return []byte("asyncrequest upstream credential\x00" + Version + "\x00deployment\x00" + deployment)
}
