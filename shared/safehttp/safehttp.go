// Package safehttp is the HTTP client for URLs that users supply, webhook
// endpoints above all, guarded against server-side request forgery (SSRF).
//
// A webhook URL is an instruction from a client to make our network send a
// request somewhere. Left unchecked it reaches what only we can reach: the
// cloud metadata service, the database, other internal services. The guard
// has two layers:
//
//   - CheckURL, at submit time, refuses what can never be delivered to
//     (wrong scheme, credentials, IP literals in non-public ranges, however
//     they are spelled), so clients get a clear 400 at once.
//   - The client from NewClient checks, at dial time and after DNS, the IP
//     address actually being connected to. This is the check that counts:
//     a name can resolve to a public address at submit and to 127.0.0.1 at
//     delivery (DNS rebinding). The client also never uses a proxy from the
//     environment and never follows redirects, either of which would send
//     the request somewhere the dial check did not see.
//
// Policy.AllowPrivate turns the address checks off for local development,
// where the webhook receiver is on localhost.
package safehttp

import (
	"cmp"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// Policy says which URLs and addresses are allowed. The zero value is the
// production policy: https only, public addresses only.
type Policy struct {
	// AllowHTTP accepts http URLs as well as https. Local development only:
	// over http a webhook's body and signatures travel in the clear.
	AllowHTTP bool
	// AllowPrivate accepts loopback, private and every other non-public
	// address, at submit and at dial time. Local development only.
	AllowPrivate bool
}

// ErrBlockedAddress is the error, wrapped in the usual *url.Error and
// *net.OpError, that a client from NewClient returns when it refuses to
// connect to a non-public address. errors.Is finds it.
var ErrBlockedAddress = errors.New("connection to a non-public address refused")

const (
	// TimeoutDefault bounds a whole exchange (connect, TLS, request,
	// response headers and body) when NewClient is given no timeout. It is
	// the per-attempt limit of a webhook delivery.
	TimeoutDefault = 15 * time.Second
	// DialTimeoutDefault bounds establishing a TCP connection.
	DialTimeoutDefault = 10 * time.Second
	// TLSHandshakeTimeoutDefault bounds the TLS handshake.
	TLSHandshakeTimeoutDefault = 10 * time.Second
)

// NewClient returns an HTTP client that connects only where p allows.
//
// Unless p.AllowPrivate is set, every connection's IP address, as resolved,
// is checked with IsPublic just before connecting, and refused with
// ErrBlockedAddress otherwise; no packet reaches a blocked address. The
// client ignores HTTP_PROXY and friends, and returns a 3xx response as it is
// instead of following it. timeout bounds each whole request, response body
// included; zero means TimeoutDefault.
//
// The client keeps idle connections for reuse, so create one per process and
// share it.
func NewClient(p Policy, timeout time.Duration) *http.Client {
	dialer := &net.Dialer{
		Timeout:   DialTimeoutDefault,
		KeepAlive: 30 * time.Second,
	}
	if !p.AllowPrivate {
		dialer.Control = dialControl
	}
	transport := &http.Transport{
		Proxy:                  nil, // never the environment's proxy: it would dial for us, unchecked
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		TLSClientConfig:        &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    TLSHandshakeTimeoutDefault,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    10,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   cmp.Or(timeout, TimeoutDefault),
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// dialControl is the net.Dialer Control function of a client that allows
// public addresses only. It runs after DNS resolution and before connect,
// once for every address tried, with network "tcp4" or "tcp6" and address
// the literal IP and port.
func dialControl(network, address string, _ syscall.RawConn) error {
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return fmt.Errorf("%w: network %s", ErrBlockedAddress, network)
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unparsable address %q", ErrBlockedAddress, address)
	}
	if !IsPublic(ap.Addr()) {
		return fmt.Errorf("%w: %s", ErrBlockedAddress, ap.Addr())
	}
	return nil
}
