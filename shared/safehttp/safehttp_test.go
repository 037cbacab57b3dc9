package safehttp

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestCheckURL(t *testing.T) {
	t.Parallel()

	var (
		prod = Policy{}
		dev  = Policy{AllowHTTP: true, AllowPrivate: true}
	)
	const (
		nonPublic = "webhook_endpoint points to a non-public address"
		badHost   = "webhook_endpoint has an invalid host"
		https     = "webhook_endpoint must use https"
	)
	tests := []struct {
		name    string
		url     string
		policy  Policy
		wantErr string // empty: allowed
	}{
		{"PublicHostname", "https://example.com/hooks/async?x=1", prod, ""},
		{"PublicHostnamePort", "https://hooks.example.com:8443/h", prod, ""},
		{"PublicIPv4", "https://93.184.216.34/webhook", prod, ""},
		{"PublicIPv6", "https://[2606:2800:220:1:248:1893:25c8:1946]/webhook", prod, ""},
		{"MappedPublicIPv4", "https://[::ffff:93.184.216.34]/", prod, ""},
		{"NAT64PublicIPv4", "https://[64:ff9b::5db8:d822]/", prod, ""},
		{"UppercaseScheme", "HTTPS://example.com/", prod, ""},

		{"HTTPRefused", "http://example.com/webhook", prod, https},
		{"HTTPWithAllowHTTP", "http://example.com/webhook", Policy{AllowHTTP: true}, ""},
		{"FTPRefused", "ftp://example.com/", prod, https},
		{"FTPRefusedWithAllowHTTP", "ftp://example.com/", Policy{AllowHTTP: true}, "webhook_endpoint must use http or https"},
		{"Relative", "/webhook", prod, https},
		{"Empty", "", prod, https},
		{"Opaque", "https:example.com", prod, "webhook_endpoint must include a host"},
		{"NoHost", "https:///webhook", prod, "webhook_endpoint must include a host"},
		{"UserInfo", "https://user:pass@example.com/", prod, "webhook_endpoint must not include user credentials"},
		{"UserOnly", "https://user@example.com/", prod, "webhook_endpoint must not include user credentials"},
		{"PortZero", "https://example.com:0/", prod, "webhook_endpoint has an invalid port"},
		{"PortTooLarge", "https://example.com:65536/", prod, "webhook_endpoint has an invalid port"},
		{"NotAURL", "https://exa mple.com/", prod, "webhook_endpoint is not a valid URL"},
		{"BadCharacter", "https://exa$mple.com/", prod, badHost},
		{"TooLong", "https://example.com/" + strings.Repeat("a", MaxURLLength), prod, "webhook_endpoint is longer than 2048 characters"},

		{"Loopback", "https://127.0.0.1/", prod, nonPublic},
		{"LoopbackTrailingDot", "https://127.0.0.1./", prod, nonPublic},
		{"Private10", "https://10.0.0.1/", prod, nonPublic},
		{"Private172", "https://172.16.0.1/", prod, nonPublic},
		{"Private192", "https://192.168.1.1/", prod, nonPublic},
		{"CGNAT", "https://100.64.0.1/", prod, nonPublic},
		{"Metadata", "https://169.254.169.254/latest/meta-data/", prod, nonPublic},
		{"ThisHost", "https://0.0.0.0/", prod, nonPublic},
		{"Broadcast", "https://255.255.255.255/", prod, nonPublic},
		{"IPv6Loopback", "https://[::1]/", prod, nonPublic},
		{"IPv6Unspecified", "https://[::]/", prod, nonPublic},
		{"IPv6MappedLoopback", "https://[::ffff:127.0.0.1]/", prod, nonPublic},
		{"IPv6MappedLoopbackHex", "https://[::ffff:7f00:1]/", prod, nonPublic},
		{"NAT64Loopback", "https://[64:ff9b::7f00:1]/", prod, nonPublic},
		{"NAT64Metadata", "https://[64:ff9b::169.254.169.254]/", prod, nonPublic},
		{"SixToFourLoopback", "https://[2002:7f00:1::1]/", prod, nonPublic},
		{"IPv6LinkLocalZone", "https://[fe80::1%25eth0]/", prod, nonPublic},
		{"IPv6UniqueLocal", "https://[fd12:3456:789a::1]/", prod, nonPublic},
		{"AWSMetadataIPv6", "https://[fd00:ec2::254]/", prod, nonPublic},
		{"Documentation", "https://[2001:db8::1]/", prod, nonPublic},
		{"Hex", "https://0x7f000001/", prod, nonPublic},
		{"HexUppercase", "https://0X7F000001/", prod, nonPublic},
		{"Decimal", "https://2130706433/", prod, nonPublic},
		{"Octal", "https://0177.0.0.1/", prod, nonPublic},
		{"Short", "https://127.1/", prod, nonPublic},
		{"ShortHex", "https://0x7f.1/", prod, nonPublic},
		{"MixedForms", "https://0x7f.0.00.01/", prod, nonPublic},
		{"Zero", "https://0/", prod, nonPublic},
		{"HexMetadata", "https://0xa9fea9fe/", prod, nonPublic},
		{"PercentEncodedRejectedByParser", "https://%31%32%37.0.0.1/", prod, "webhook_endpoint is not a valid URL"},
		{"FullwidthDigits", "https://１２７.０.０.１/", prod, nonPublic},
		{"Localhost", "https://localhost/", prod, nonPublic},
		{"LocalhostUppercaseDot", "https://LOCALHOST./", prod, nonPublic},
		{"LocalhostSubdomain", "https://api.localhost:8080/", prod, nonPublic},
		{"NumberTooLarge", "https://4294967296/", prod, badHost},
		{"PartTooLarge", "https://256.0.0.1/", prod, badHost},
		{"FiveParts", "https://1.2.3.4.5/", prod, badHost},
		{"NumericLastLabel", "https://example.123/", prod, badHost},
		{"EmptyLabel", "https://example..com/", prod, badHost},

		{"DevLoopback", "http://127.0.0.1:9003/webhook", dev, ""},
		{"DevLocalhost", "http://localhost:9003/webhook", dev, ""},
		{"DevIPv6Loopback", "http://[::1]:9003/webhook", dev, ""},
		{"DevStillNeedsHost", "http:///webhook", dev, "webhook_endpoint must include a host"},
		{"AllowPrivateStillHTTPS", "http://127.0.0.1/", Policy{AllowPrivate: true}, https},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckURL(tt.url, tt.policy)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckURL(%q) = %v, want nil", tt.url, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckURL(%q) = nil, want %q", tt.url, tt.wantErr)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("CheckURL(%q) = %q, want %q", tt.url, err, tt.wantErr)
			}
			var urlErr *URLError
			if !errors.Is(err, ErrURLNotAllowed) || !errors.As(err, &urlErr) {
				t.Errorf("CheckURL(%q) = %#v, want a *URLError matching ErrURLNotAllowed", tt.url, err)
			}
		})
	}
}

func TestIsPublic(t *testing.T) {
	t.Parallel()

	tests := []struct {
		addr   string
		public bool
	}{
		{"93.184.216.34", true},
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"2606:4700:4700::1111", true},
		{"::ffff:8.8.8.8", true},
		{"64:ff9b::808:808", true},
		{"2002:808:808::1", true},

		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.0.0.1", false},
		{"100.64.0.1", false},
		{"100.127.255.255", false},
		{"127.0.0.1", false},
		{"127.255.255.254", false},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.0.0.8", false},
		{"192.0.2.1", false},
		{"192.88.99.1", false},
		{"192.168.1.1", false},
		{"198.18.0.1", false},
		{"198.19.255.255", false},
		{"198.51.100.1", false},
		{"203.0.113.1", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},
		{"::", false},
		{"::1", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"::ffff:169.254.169.254", false},
		{"::127.0.0.1", false},
		{"64:ff9b::7f00:1", false},
		{"64:ff9b::a00:1", false},
		{"64:ff9b:1::808:808", false},
		{"100::1", false},
		{"2001::1", false},
		{"2001:db8::1", false},
		{"2002:7f00:1::", false},
		{"2002:a9fe:a9fe::", false},
		{"3fff::1", false},
		{"fc00::1", false},
		{"fd00:ec2::254", false},
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"ff02::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			t.Parallel()
			if got := IsPublic(netip.MustParseAddr(tt.addr)); got != tt.public {
				t.Fatalf("IsPublic(%s) = %v, want %v", tt.addr, got, tt.public)
			}
		})
	}
	if IsPublic(netip.Addr{}) {
		t.Error("IsPublic(zero Addr) = true, want false")
	}
}

func TestDialControl(t *testing.T) {
	t.Parallel()

	tests := []struct {
		name    string
		network string
		address string
		allowed bool
	}{
		{"Public", "tcp4", "93.184.216.34:443", true},
		{"PublicIPv6", "tcp6", "[2606:2800:220:1:248:1893:25c8:1946]:443", true},
		{"Private", "tcp4", "10.0.0.1:443", false},
		{"MappedPrivate", "tcp6", "[::ffff:10.0.0.1]:443", false},
		{"LocalhostResolvedIPv4", "tcp4", "127.0.0.1:9003", false},
		{"LocalhostResolvedIPv6", "tcp6", "[::1]:9003", false},
		{"Metadata", "tcp4", "169.254.169.254:80", false},
		{"NAT64Loopback", "tcp6", "[64:ff9b::7f00:1]:443", false},
		{"LinkLocalZone", "tcp6", "[fe80::1%eth0]:443", false},
		{"NotTCP", "udp4", "93.184.216.34:443", false},
		{"Unparsable", "tcp4", "example.com:443", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := dialControl(tt.network, tt.address, nil)
			if tt.allowed && err != nil {
				t.Fatalf("dialControl(%s, %s) = %v, want nil", tt.network, tt.address, err)
			}
			if !tt.allowed && !errors.Is(err, ErrBlockedAddress) {
				t.Fatalf("dialControl(%s, %s) = %v, want ErrBlockedAddress", tt.network, tt.address, err)
			}
		})
	}
}

func TestClient(t *testing.T) {
	t.Parallel()

	type bundle struct {
		url   string        // the server's URL, http://127.0.0.1:PORT
		port  string        // the server's port
		hits  *atomic.Int64 // requests the handler saw
		conns *atomic.Int64 // connections the server accepted
	}
	setup := func(t *testing.T, handler http.HandlerFunc) bundle {
		t.Helper()
		b := bundle{hits: new(atomic.Int64), conns: new(atomic.Int64)}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.hits.Add(1)
			handler(w, r)
		}))
		srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				b.conns.Add(1)
			}
		}
		srv.Start()
		t.Cleanup(srv.Close)
		u, err := url.Parse(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		b.url, b.port = srv.URL, u.Port()
		return b
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }

	t.Run("LoopbackRefusedBeforeConnecting", func(t *testing.T) {
		t.Parallel()
		b := setup(t, ok)
		client := NewClient(Policy{AllowHTTP: true}, 5*time.Second)
		resp, err := client.Post(b.url+"/webhook", "application/json", strings.NewReader(`{}`))
		if err == nil {
			resp.Body.Close()
			t.Fatalf("POST %s succeeded with status %d, want ErrBlockedAddress", b.url, resp.StatusCode)
		}
		if !errors.Is(err, ErrBlockedAddress) {
			t.Fatalf("POST %s = %v, want ErrBlockedAddress", b.url, err)
		}
		if hits, conns := b.hits.Load(), b.conns.Load(); hits != 0 || conns != 0 {
			t.Fatalf("server saw %d requests on %d connections, want none", hits, conns)
		}
	})

	t.Run("LocalhostNameRefused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, ok)
		client := NewClient(Policy{AllowHTTP: true}, 5*time.Second)
		target := "http://localhost:" + b.port + "/webhook"
		resp, err := client.Get(target)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("GET %s succeeded with status %d, want ErrBlockedAddress", target, resp.StatusCode)
		}
		if !errors.Is(err, ErrBlockedAddress) {
			t.Fatalf("GET %s = %v, want ErrBlockedAddress", target, err)
		}
		if hits, conns := b.hits.Load(), b.conns.Load(); hits != 0 || conns != 0 {
			t.Fatalf("server saw %d requests on %d connections, want none", hits, conns)
		}
	})

	t.Run("AllowPrivateReachesLoopback", func(t *testing.T) {
		t.Parallel()
		b := setup(t, ok)
		client := NewClient(Policy{AllowHTTP: true, AllowPrivate: true}, 5*time.Second)
		resp, err := client.Get(b.url + "/webhook")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "ok" {
			t.Fatalf("GET = %d %q, want 200 \"ok\"", resp.StatusCode, body)
		}
		if hits := b.hits.Load(); hits != 1 {
			t.Fatalf("server saw %d requests, want 1", hits)
		}
	})

	t.Run("RedirectNotFollowed", func(t *testing.T) {
		t.Parallel()
		var followed atomic.Bool
		b := setup(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/elsewhere" {
				followed.Store(true)
				return
			}
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
		})
		client := NewClient(Policy{AllowHTTP: true, AllowPrivate: true}, 5*time.Second)
		resp, err := client.Post(b.url+"/webhook", "application/json", strings.NewReader(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("status = %d, want 302 returned as it is", resp.StatusCode)
		}
		if loc := resp.Header.Get("Location"); loc != "/elsewhere" {
			t.Errorf("Location = %q, want /elsewhere", loc)
		}
		if followed.Load() || b.hits.Load() != 1 {
			t.Fatalf("redirect followed: server saw %d requests", b.hits.Load())
		}
	})

	t.Run("NoEnvironmentProxy", func(t *testing.T) {
		t.Parallel()
		for _, p := range []Policy{{}, {AllowHTTP: true, AllowPrivate: true}} {
			transport, ok := NewClient(p, 0).Transport.(*http.Transport)
			if !ok {
				t.Fatalf("Transport is %T, want *http.Transport", NewClient(p, 0).Transport)
			}
			if transport.Proxy != nil {
				t.Errorf("policy %+v: Transport.Proxy is set, want nil", p)
			}
		}
	})

	t.Run("TimeoutDefault", func(t *testing.T) {
		t.Parallel()
		if got := NewClient(Policy{}, 0).Timeout; got != TimeoutDefault {
			t.Errorf("Timeout = %s, want %s", got, TimeoutDefault)
		}
		if got := NewClient(Policy{}, time.Second).Timeout; got != time.Second {
			t.Errorf("Timeout = %s, want 1s", got)
		}
	})
}

// FuzzCheckURL checks, for any string, that CheckURL never panics, answers
// only *URLError, and never accepts under the strict policy a URL that is
// not https, carries credentials, or whose host is an IP literal outside
// the public ranges or localhost. `go test` runs the seeds; `go test -fuzz
// FuzzCheckURL ./shared/safehttp` looks for more.
func FuzzCheckURL(f *testing.F) {
	for _, seed := range []string{
		"https://hooks.example.com/x", "http://127.0.0.1/", "https://[::1]/", "https://[::ffff:127.0.0.1]/",
		"https://0x7f000001/", "https://2130706433/", "https://0177.0.0.1/", "https://127.1/",
		"https://localhost./", "https://a.localhost/", "https://user:pw@example.com/", "https://example.com:0/",
		"https://１２７.０.０.１/", "https://[64:ff9b::7f00:1]/", "https://169.254.169.254/latest", "https:///x",
		"https://%31%32%37.0.0.1/", "https://[fe80::1%25eth0]/", "javascript:alert(1)", "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		err := CheckURL(raw, Policy{})
		if err != nil {
			if _, ok := errors.AsType[*URLError](err); !ok || !errors.Is(err, ErrURLNotAllowed) {
				t.Fatalf("%q: %v is not a *URLError", raw, err)
			}
			return
		}
		u, perr := url.Parse(raw)
		if perr != nil || u.Scheme != "https" || u.User != nil || u.Hostname() == "" {
			t.Fatalf("accepted %q (parse error %v)", raw, perr)
		}
		host := strings.ToLower(strings.TrimSuffix(u.Hostname(), "."))
		if addr, aerr := netip.ParseAddr(host); aerr == nil && !IsPublic(addr) {
			t.Fatalf("accepted %q, whose host %s is not public", raw, addr)
		}
		if host == "localhost" || strings.HasSuffix(host, ".localhost") {
			t.Fatalf("accepted %q", raw)
		}
	})
}
