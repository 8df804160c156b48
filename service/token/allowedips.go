package token

import (
	"fmt"
	"net/netip"
	"strings"
)

// AllowedIPs is the set of addresses a token may be used from. A nil or
// empty list means the token is unrestricted.
type AllowedIPs []netip.Prefix

// ParseAllowedIPs parses IPv4/IPv6 addresses and CIDR ranges into canonical
// prefixes. A bare address becomes a full-length prefix; IPv4-mapped IPv6
// entries become IPv4. A CIDR with host bits set (10.0.0.1/24) is refused
// rather than silently widened or narrowed, because either guess could
// grant access the owner did not mean to. Duplicates are refused too.
func ParseAllowedIPs(entries []string) (AllowedIPs, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if len(entries) > MaxAllowedIPs {
		return nil, fmt.Errorf("%w: allowed_ips may hold at most %d entries, got %d", ErrInvalid, MaxAllowedIPs, len(entries))
	}
	out := make(AllowedIPs, 0, len(entries))
	seen := make(map[netip.Prefix]bool, len(entries))
	for _, e := range entries {
		p, err := parseEntry(e)
		if err != nil {
			return nil, err
		}
		if seen[p] {
			return nil, fmt.Errorf("%w: allowed_ips entry %q is listed twice", ErrInvalid, e)
		}
		seen[p] = true
		out = append(out, p)
	}
	return out, nil
}

func parseEntry(e string) (netip.Prefix, error) {
	quoted := e
	if len(quoted) > 64 {
		quoted = quoted[:64] + "…"
	}
	if strings.Contains(e, "%") {
		return netip.Prefix{}, fmt.Errorf("%w: allowed_ips entry %q must not carry an IPv6 zone", ErrInvalid, quoted)
	}
	if !strings.Contains(e, "/") {
		a, err := netip.ParseAddr(e)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: allowed_ips entry %q is not an IP address or CIDR range", ErrInvalid, quoted)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(e)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: allowed_ips entry %q is not an IP address or CIDR range", ErrInvalid, quoted)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%w: allowed_ips entry %q has host bits set; did you mean %s?", ErrInvalid, quoted, p.Masked())
	}
	return UnmapPrefix(p), nil
}

// UnmapPrefix returns the IPv4 range an IPv4-mapped IPv6 range p means,
// or p itself. Addresses are compared unmapped (an IPv4 client over an
// IPv6 socket is its IPv4 address), so a mapped range kept as written
// could never match. p must be masked: a masked IPv4-mapped range has at
// least 96 bits, as a shorter one would cut into the ffff.
func UnmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}

// Allows reports whether addr may use a token with these restrictions. An
// unrestricted list allows every address; an invalid address is allowed by
// no restricted list. IPv4-mapped IPv6 addresses match IPv4 entries.
func (l AllowedIPs) Allows(addr netip.Addr) bool {
	if len(l) == 0 {
		return true
	}
	addr = addr.Unmap().WithZone("")
	for _, p := range l {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// Strings returns the entries in canonical form: a bare address for a
// full-length prefix, CIDR notation otherwise. It returns nil for an
// unrestricted list.
func (l AllowedIPs) Strings() []string {
	if len(l) == 0 {
		return nil
	}
	out := make([]string, len(l))
	for i, p := range l {
		if p.IsSingleIP() {
			out[i] = p.Addr().String()
		} else {
			out[i] = p.String()
		}
	}
	return out
}
