package safehttp

import (
	"errors"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// MaxURLLength is the longest webhook URL CheckURL accepts. Real endpoints
// are far shorter; the bound keeps a request row from carrying a megabyte of
// "URL".
const MaxURLLength = 2048

// ErrURLNotAllowed is matched, through errors.Is, by every error CheckURL
// returns, so that the API can map them all to a 400 in one place.
var ErrURLNotAllowed = errors.New("webhook_endpoint not allowed")

// URLError is the error CheckURL returns. Its message is written for the
// client who submitted the URL and is safe to return in a 400 as it is: it
// names the field and the reason, never internal details.
type URLError struct {
	// Message is the whole human-readable message, such as
	// "webhook_endpoint must use https".
	Message string
}

func (e *URLError) Error() string { return e.Message }

// Unwrap makes errors.Is(err, ErrURLNotAllowed) true.
func (e *URLError) Unwrap() error { return ErrURLNotAllowed }

func rejectURL(reason string) error {
	return &URLError{Message: "webhook_endpoint " + reason}
}

// CheckURL validates a webhook URL when it is submitted, so that a client
// learns at once (with a 400) that a URL can never be delivered to, rather
// than from a failed webhook later.
//
// It requires valid UTF-8 without U+FFFD, the character encoding/json puts
// in place of invalid UTF-8 (so a URL the client did not send is never
// stored), and an absolute https URL (http too with p.AllowHTTP) with a host,
// a valid port if any, and no user credentials. Unless p.AllowPrivate is set,
// it refuses a host that is an IP address outside the public ranges (see
// IsPublic) and the names localhost and *.localhost. IPv4 hosts are read the
// way browsers and inet_aton read them, so 0x7f000001, 2130706433,
// 0177.0.0.1 and 127.1 are all 127.0.0.1, and a host whose last label is a
// number must be a valid IPv4 address. Non-ASCII hosts are mapped through
// IDNA first, as net/http does before dialing, so full-width digits gain
// nothing.
//
// Host names are not resolved: DNS can answer differently at delivery time,
// so the check that counts is the one the client of NewClient makes on the
// address it actually dials. Errors are *URLError.
func CheckURL(raw string, p Policy) error {
	if len(raw) > MaxURLLength {
		return rejectURL("is longer than " + strconv.Itoa(MaxURLLength) + " characters")
	}
	if !utf8.ValidString(raw) || strings.ContainsRune(raw, utf8.RuneError) {
		return rejectURL("must be valid UTF-8")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return rejectURL("is not a valid URL")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !p.AllowHTTP {
			return rejectURL("must use https")
		}
	default:
		if p.AllowHTTP {
			return rejectURL("must use http or https")
		}
		return rejectURL("must use https")
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return rejectURL("must include a host")
	}
	if u.User != nil {
		return rejectURL("must not include user credentials")
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return rejectURL("has an invalid port")
		}
	}

	public, err := publicHost(u.Hostname())
	if err != nil {
		return err
	}
	if !public && !p.AllowPrivate {
		return rejectURL("points to a non-public address")
	}
	return nil
}

// publicHost reports whether host, a URL's host without brackets or port,
// may be public. A name is presumed public unless it is localhost; the
// dial-time check decides for names.
func publicHost(host string) (bool, error) {
	if strings.Contains(host, ":") {
		addr, err := netip.ParseAddr(host)
		if err != nil {
			return false, rejectURL("has an invalid host")
		}
		return IsPublic(addr), nil
	}

	if !isASCII(host) {
		ascii, err := idna.Lookup.ToASCII(host)
		if err != nil {
			return false, rejectURL("has an invalid host")
		}
		host = ascii
	}
	host = strings.ToLower(host)

	if endsInNumber(host) {
		addr, ok := parseIPv4(host)
		if !ok {
			return false, rejectURL("has an invalid host")
		}
		return IsPublic(addr), nil
	}

	name := strings.TrimSuffix(host, ".")
	if !validHostname(name) {
		return false, rejectURL("has an invalid host")
	}
	if name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return false, nil
	}
	return true, nil
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// validHostname reports whether name is a DNS name: at most 253 characters
// of dot-separated labels of 1 to 63 letters, digits, hyphens or
// underscores.
func validHostname(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for label := range strings.SplitSeq(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := range len(label) {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ipv4Parts splits a host into its dot-separated parts, dropping one
// trailing empty part (a trailing dot), as the WHATWG URL standard does.
func ipv4Parts(host string) []string {
	parts := strings.Split(host, ".")
	if len(parts) > 1 && parts[len(parts)-1] == "" {
		parts = parts[:len(parts)-1]
	}
	return parts
}

// endsInNumber reports whether host's last label is a number (decimal, or
// 0x-prefixed hexadecimal), which per the WHATWG URL standard makes the
// whole host an IPv4 address, valid or not.
func endsInNumber(host string) bool {
	parts := ipv4Parts(host)
	last := parts[len(parts)-1]
	if last == "" {
		return false
	}
	if strings.Trim(last, "0123456789") == "" {
		return true
	}
	_, ok := parseIPv4Number(last)
	return ok
}

// parseIPv4 reads host as the WHATWG URL standard (and inet_aton) reads an
// IPv4 address: one to four parts, each decimal, 0x-prefixed hexadecimal or
// 0-prefixed octal, the last part filling all the remaining bytes.
func parseIPv4(host string) (netip.Addr, bool) {
	parts := ipv4Parts(host)
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var n uint64
	for i, part := range parts {
		v, ok := parseIPv4Number(part)
		if !ok {
			return netip.Addr{}, false
		}
		if i < len(parts)-1 {
			if v > 255 {
				return netip.Addr{}, false
			}
			n |= v << (8 * (3 - i))
			continue
		}
		if v >= 1<<(8*(5-len(parts))) {
			return netip.Addr{}, false
		}
		n |= v
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}), true
}

// parseIPv4Number reads one part of an IPv4 address: "0x" or "0X" means
// hexadecimal, a leading "0" octal, anything else decimal. "0x" alone is 0.
func parseIPv4Number(s string) (uint64, bool) {
	if s == "" {
		return 0, false
	}
	base := 10
	switch {
	case len(s) >= 2 && (s[:2] == "0x" || s[:2] == "0X"):
		s, base = s[2:], 16
	case len(s) >= 2 && s[0] == '0':
		s, base = s[1:], 8
	}
	if s == "" {
		return 0, true
	}
	// ParseUint with an explicit base accepts no sign, prefix or
	// underscore; values past 64 bits fail, and are invalid anyway.
	v, err := strconv.ParseUint(s, base, 64)
	return v, err == nil
}
