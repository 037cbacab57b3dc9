package webhook

import (
	"crypto/hmac"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Result says which signature schemes of a webhook verified.
type Result struct {
	// Standard is true when webhook-signature matched one of the secrets and
	// webhook-timestamp was within TimestampTolerance.
	Standard bool
	// Compat is true when X-BASETEN-SIGNATURE matched one of the secrets.
	Compat bool
}

// Verify checks the signatures of a received webhook against the receiver's
// secrets, any one of which may match (so a rotation needs no coordination),
// and reports in Result which schemes verified.
//
// Each scheme whose headers are present is checked, and err is nil only when
// every present scheme verified. Requiring all of them, rather than any,
// keeps the timestamp meaningful: a replayed webhook whose compatibility
// signature (which signs no time) still matches is refused because its
// Standard Webhooks timestamp is stale. A webhook carrying only one scheme
// is judged by that scheme alone.
//
// The errors wrap ErrMissingHeaders when neither scheme is present (or the
// Standard Webhooks set is incomplete), ErrBadTimestamp when webhook-timestamp
// is unparsable or further than TimestampTolerance from now, and
// ErrNoMatchingSignature when no signature of a scheme matches. Signatures are
// compared in constant time. body must be the raw bytes as received.
func Verify(secrets []string, h http.Header, body []byte, now time.Time) (Result, error) {
	var res Result
	if len(secrets) == 0 {
		return res, ErrNoSecrets
	}
	keys := make([][]byte, len(secrets))
	for i, secret := range secrets {
		key, err := standardKey(secret)
		if err != nil {
			return res, fmt.Errorf("verify webhook with secret %d: %w", i, err)
		}
		keys[i] = key
	}

	_, hasID := h[http.CanonicalHeaderKey(HeaderID)]
	_, hasTS := h[http.CanonicalHeaderKey(HeaderTimestamp)]
	_, hasSig := h[http.CanonicalHeaderKey(HeaderSignature)]
	_, hasCompat := h[http.CanonicalHeaderKey(HeaderCompatSignature)]
	hasStandard := hasID || hasTS || hasSig
	if !hasStandard && !hasCompat {
		return res, ErrMissingHeaders
	}

	var errs []error
	if hasStandard {
		if err := verifyStandard(keys, h, body, now); err != nil {
			errs = append(errs, fmt.Errorf("standard webhooks signature: %w", err))
		} else {
			res.Standard = true
		}
	}
	if hasCompat {
		if err := verifyCompat(secrets, h, body); err != nil {
			errs = append(errs, fmt.Errorf("compatibility signature: %w", err))
		} else {
			res.Compat = true
		}
	}
	return res, errors.Join(errs...)
}

// verifyStandard checks webhook-timestamp against now and webhook-signature
// against every key.
func verifyStandard(keys [][]byte, h http.Header, body []byte, now time.Time) error {
	msgID := h.Get(HeaderID)
	unix := h.Get(HeaderTimestamp)
	sigs := h.Values(HeaderSignature)
	if msgID == "" || unix == "" || len(sigs) == 0 {
		return fmt.Errorf("%w: need %s, %s and %s", ErrMissingHeaders, HeaderID, HeaderTimestamp, HeaderSignature)
	}
	sec, err := strconv.ParseInt(unix, 10, 64)
	if err != nil {
		return fmt.Errorf("%w: %q is not unix seconds", ErrBadTimestamp, unix)
	}
	if skew := now.Sub(time.Unix(sec, 0)).Abs(); skew > TimestampTolerance {
		return fmt.Errorf("%w: %s from now", ErrBadTimestamp, skew.Round(time.Second))
	}

	expected := make([][]byte, len(keys))
	for i, key := range keys {
		expected[i] = standardMAC(key, msgID, unix, body)
	}
	for _, value := range sigs {
		for _, sig := range strings.Fields(value) {
			encoded, ok := strings.CutPrefix(sig, "v1,")
			if !ok {
				continue // another version; not ours to judge
			}
			got, err := base64.StdEncoding.DecodeString(encoded)
			if err != nil {
				continue
			}
			if anyEqual(expected, got) {
				return nil
			}
		}
	}
	return ErrNoMatchingSignature
}

// verifyCompat checks X-BASETEN-SIGNATURE against every secret.
func verifyCompat(secrets []string, h http.Header, body []byte) error {
	expected := make([][]byte, len(secrets))
	for i, secret := range secrets {
		expected[i] = compatMAC(secret, body)
	}
	for _, value := range h.Values(HeaderCompatSignature) {
		for sig := range strings.SplitSeq(value, ",") {
			encoded, ok := strings.CutPrefix(strings.TrimSpace(sig), "v1=")
			if !ok {
				continue
			}
			got, err := hex.DecodeString(encoded)
			if err != nil {
				continue
			}
			if anyEqual(expected, got) {
				return nil
			}
		}
	}
	return ErrNoMatchingSignature
}

// anyEqual reports whether got equals any of expected, comparing each in
// constant time.
func anyEqual(expected [][]byte, got []byte) bool {
	match := false
	for _, want := range expected {
		if hmac.Equal(want, got) {
			match = true
		}
	}
	return match
}
