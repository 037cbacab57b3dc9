package safehttp

import "net/netip"

// blocked4 are the IPv4 ranges that are not publicly routable: this host,
// private networks, carrier-grade NAT, loopback, link-local (which holds the
// cloud metadata service at 169.254.169.254), IETF protocol assignments,
// documentation, 6to4 relays, benchmarking, multicast, reserved and broadcast.
var blocked4 = prefixes(
	"0.0.0.0/8",
	"10.0.0.0/8",
	"100.64.0.0/10",
	"127.0.0.0/8",
	"169.254.0.0/16",
	"172.16.0.0/12",
	"192.0.0.0/24",
	"192.0.2.0/24",
	"192.88.99.0/24",
	"192.168.0.0/16",
	"198.18.0.0/15",
	"198.51.100.0/24",
	"203.0.113.0/24",
	"224.0.0.0/4",
	"240.0.0.0/4", // includes 255.255.255.255
)

var (
	// global6 is the IPv6 global unicast space. Everything outside it is
	// refused, which covers ::/128, ::1, 100::/64 (discard), fc00::/7
	// (unique-local, including the AWS metadata address fd00:ec2::254),
	// fe80::/10 (link-local) and ff00::/8 (multicast) without listing them.
	global6 = netip.MustParsePrefix("2000::/3")
	// mapped6 and nat64 embed an IPv4 address in their last four bytes;
	// dialing them reaches (or translates to) that IPv4 address, so it is
	// the IPv4 address that is judged.
	mapped6 = netip.MustParsePrefix("::ffff:0:0/96")
	nat64   = netip.MustParsePrefix("64:ff9b::/96")
	// sixToFour embeds an IPv4 address in bytes 2 to 5 (RFC 3056).
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// blocked6 are the parts of global6, and the IPv6 ranges outside it, that are
// not publicly routable. The latter are refused by the global6 test already
// and are listed so that the table reads as the complete policy.
var blocked6 = prefixes(
	"::/128",
	"::1/128",
	"64:ff9b:1::/48", // local-use NAT64
	"100::/64",
	"2001::/23", // IETF protocol assignments, including Teredo
	"2001:db8::/32",
	"3fff::/20", // documentation (RFC 9637)
	"fc00::/7",
	"fd00:ec2::254/128",
	"fe80::/10",
	"ff00::/8",
)

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = netip.MustParsePrefix(s)
	}
	return ps
}

// IsPublic reports whether addr is a publicly routable unicast address, one
// that a webhook may be sent to. IPv4-mapped IPv6 (::ffff:a.b.c.d), NAT64
// (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::) addresses are judged by the
// IPv4 address they embed; IPv6 zones are ignored.
func IsPublic(addr netip.Addr) bool {
	addr = addr.WithZone("")
	switch {
	case !addr.IsValid():
		return false
	case addr.Is4():
		return !within(addr, blocked4)
	case mapped6.Contains(addr):
		return IsPublic(addr.Unmap())
	case nat64.Contains(addr):
		b := addr.As16()
		return IsPublic(netip.AddrFrom4([4]byte(b[12:16])))
	case sixToFour.Contains(addr):
		b := addr.As16()
		return IsPublic(netip.AddrFrom4([4]byte(b[2:6])))
	case !global6.Contains(addr):
		return false
	default:
		return !within(addr, blocked6)
	}
}

func within(addr netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}
