package token

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestParseAllowedIPs(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string // Strings() of the result
	}{
		{"nil", nil, nil},
		{"empty", []string{}, nil},
		{"IPv4 address", []string{"10.0.0.1"}, []string{"10.0.0.1"}},
		{"IPv4 /32 shown bare", []string{"10.0.0.1/32"}, []string{"10.0.0.1"}},
		{"IPv4 CIDR", []string{"10.0.0.0/24"}, []string{"10.0.0.0/24"}},
		{"IPv4 /0", []string{"0.0.0.0/0"}, []string{"0.0.0.0/0"}},
		{"IPv6 address", []string{"2001:db8::1"}, []string{"2001:db8::1"}},
		{"IPv6 upper case canonicalised", []string{"2001:DB8::1"}, []string{"2001:db8::1"}},
		{"IPv6 long form canonicalised", []string{"2001:0db8:0000:0000:0000:0000:0000:0001"}, []string{"2001:db8::1"}},
		{"IPv6 /128 shown bare", []string{"2001:db8::1/128"}, []string{"2001:db8::1"}},
		{"IPv6 CIDR", []string{"2001:db8::/32"}, []string{"2001:db8::/32"}},
		{"IPv6 CIDR upper case", []string{"2001:DB8:ABCD::/48"}, []string{"2001:db8:abcd::/48"}},
		{"IPv6 /0", []string{"::/0"}, []string{"::/0"}},
		{"IPv4-mapped address", []string{"::ffff:10.0.0.1"}, []string{"10.0.0.1"}},
		{"IPv4-mapped address hex form", []string{"::ffff:a00:1"}, []string{"10.0.0.1"}},
		{"IPv4-mapped CIDR", []string{"::ffff:10.0.0.0/120"}, []string{"10.0.0.0/24"}},
		{"IPv4-mapped /128", []string{"::ffff:10.0.0.1/128"}, []string{"10.0.0.1"}},
		{"IPv4-mapped /96 is all of IPv4", []string{"::ffff:0.0.0.0/96"}, []string{"0.0.0.0/0"}},
		{"mixed list keeps order", []string{"192.168.1.0/24", "2001:db8::1", "10.0.0.1"}, []string{"192.168.1.0/24", "2001:db8::1", "10.0.0.1"}},
		{"overlapping ranges are fine", []string{"10.0.0.0/8", "10.0.0.0/24", "10.0.0.1"}, []string{"10.0.0.0/8", "10.0.0.0/24", "10.0.0.1"}},
		{"IPv4 and its mapped CIDR twin differ in length", []string{"10.0.0.0/24", "::ffff:10.0.0.0/112"}, []string{"10.0.0.0/24", "10.0.0.0/16"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := ParseAllowedIPs(tt.in)
			if err != nil {
				t.Fatalf("ParseAllowedIPs(%q) = %v", tt.in, err)
			}
			if got := l.Strings(); !slices.Equal(got, tt.want) {
				t.Errorf("ParseAllowedIPs(%q).Strings() = %q, want %q", tt.in, got, tt.want)
			}
			if len(tt.want) == 0 && l != nil {
				t.Errorf("ParseAllowedIPs(%q) = %#v, want nil", tt.in, l)
			}
			for _, p := range l {
				if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
					t.Errorf("ParseAllowedIPs(%q) holds non-canonical prefix %v", tt.in, p)
				}
			}
		})
	}
}

func TestParseAllowedIPsPrefixes(t *testing.T) {
	// Strings() could hide a wrong bit length; check the prefixes themselves.
	l, err := ParseAllowedIPs([]string{"10.0.0.1", "2001:db8::1", "::ffff:10.0.0.0/120", "10.1.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	want := AllowedIPs{
		netip.MustParsePrefix("10.0.0.1/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
		netip.MustParsePrefix("10.0.0.0/24"),
		netip.MustParsePrefix("10.1.0.0/16"),
	}
	if !slices.Equal(l, want) {
		t.Errorf("got %v, want %v", l, want)
	}
}

func TestParseAllowedIPsErrors(t *testing.T) {
	tooMany := make([]string, MaxAllowedIPs+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("10.0.%d.%d", i/256, i%256)
	}
	tests := []struct {
		name    string
		in      []string
		wantMsg string // substring of the error message, if not empty
	}{
		{"empty entry", []string{""}, "not an IP address"},
		{"garbage", []string{"not-an-ip"}, "not an IP address"},
		{"hostname", []string{"example.com"}, "not an IP address"},
		{"garbage after a good entry", []string{"10.0.0.1", "bogus"}, `"bogus"`},
		{"IPv4 with too many octets", []string{"10.0.0.0.1"}, ""},
		{"IPv4 octet out of range", []string{"10.0.0.256"}, ""},
		{"IPv4 leading zeros", []string{"010.0.0.1"}, ""},
		{"leading space", []string{" 10.0.0.1"}, ""},
		{"trailing space", []string{"10.0.0.1 "}, ""},
		{"IPv4 bits too large", []string{"10.0.0.0/33"}, ""},
		{"IPv6 bits too large", []string{"2001:db8::/129"}, ""},
		{"negative bits", []string{"10.0.0.0/-1"}, ""},
		{"empty bits", []string{"10.0.0.0/"}, ""},
		{"slash only", []string{"/24"}, ""},
		{"two slashes", []string{"10.0.0.0/24/24"}, ""},
		{"IPv4 host bits set", []string{"10.0.0.1/24"}, "did you mean 10.0.0.0/24?"},
		{"IPv4 host bits set /31", []string{"192.168.1.5/31"}, "did you mean 192.168.1.4/31?"},
		{"IPv4 host bits set /0", []string{"1.2.3.4/0"}, "did you mean 0.0.0.0/0?"},
		{"IPv6 host bits set", []string{"2001:db8::1/64"}, "did you mean 2001:db8::/64?"},
		{"IPv4-mapped host bits set", []string{"::ffff:10.0.0.1/120"}, "host bits set"},
		// A mapped prefix shorter than /96 always has host bits set (the
		// ffff marker itself), so it is refused before the mixed-space check.
		{"IPv4-mapped prefix shorter than /96", []string{"::ffff:0.0.0.0/95"}, "did you mean ::fffe:0:0/95?"},
		{"IPv4-mapped prefix /80", []string{"::ffff:0.0.0.0/80"}, "did you mean ::/80?"},
		{"IPv6 zone", []string{"fe80::1%eth0"}, "zone"},
		{"IPv6 zone with CIDR", []string{"fe80::%eth0/64"}, "zone"},
		{"percent anywhere", []string{"10.0.0.1%"}, "zone"},
		{"duplicate address", []string{"10.0.0.1", "10.0.0.1"}, "listed twice"},
		{"duplicate address and /32", []string{"10.0.0.1", "10.0.0.1/32"}, "listed twice"},
		{"duplicate IPv6 spelt differently", []string{"2001:db8::1", "2001:DB8:0::1"}, "listed twice"},
		{"duplicate via IPv4-mapped", []string{"10.0.0.1", "::ffff:10.0.0.1"}, "listed twice"},
		{"duplicate CIDR via IPv4-mapped", []string{"10.0.0.0/24", "::ffff:10.0.0.0/120"}, "listed twice"},
		{"too many entries", tooMany, fmt.Sprintf("at most %d entries, got %d", MaxAllowedIPs, MaxAllowedIPs+1)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := ParseAllowedIPs(tt.in)
			if err == nil {
				t.Fatalf("ParseAllowedIPs(%q) = %v, nil; want an error", tt.in, l)
			}
			if l != nil {
				t.Errorf("ParseAllowedIPs(%q) returned %v alongside the error, want nil", tt.in, l)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseAllowedIPs(%q) = %v, want it to wrap ErrInvalid", tt.in, err)
			}
			if tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("ParseAllowedIPs(%q) = %q, want a message containing %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestParseAllowedIPsMaxEntries(t *testing.T) {
	max := make([]string, MaxAllowedIPs)
	for i := range max {
		max[i] = fmt.Sprintf("10.0.0.%d", i)
	}
	l, err := ParseAllowedIPs(max)
	if err != nil {
		t.Fatalf("ParseAllowedIPs with %d entries = %v, want success", MaxAllowedIPs, err)
	}
	if len(l) != MaxAllowedIPs {
		t.Errorf("got %d entries, want %d", len(l), MaxAllowedIPs)
	}
}

func TestParseAllowedIPsLongEntryQuotedShort(t *testing.T) {
	long := strings.Repeat("x", 10_000)
	_, err := ParseAllowedIPs([]string{long})
	if err == nil {
		t.Fatal("want an error")
	}
	if len(err.Error()) > 300 {
		t.Errorf("error message is %d bytes long; a long entry should be truncated: %.100q...", len(err.Error()), err)
	}
}

func TestAllows(t *testing.T) {
	restricted := mustParse(t, "10.0.0.0/24", "192.168.1.7", "2001:db8::/32", "2001:db8:ffff::1", "fd00::1")
	tests := []struct {
		name string
		list AllowedIPs
		addr string // "" means the zero netip.Addr
		want bool
	}{
		{"unrestricted nil allows v4", nil, "203.0.113.9", true},
		{"unrestricted nil allows v6", nil, "2001:db8::1", true},
		{"unrestricted empty allows v4", AllowedIPs{}, "203.0.113.9", true},
		{"unrestricted allows zero addr", nil, "", true},

		{"v4 first in range", restricted, "10.0.0.0", true},
		{"v4 inside range", restricted, "10.0.0.7", true},
		{"v4 last in range", restricted, "10.0.0.255", true},
		{"v4 just below range", restricted, "9.255.255.255", false},
		{"v4 just above range", restricted, "10.0.1.0", false},
		{"v4 exact single", restricted, "192.168.1.7", true},
		{"v4 next to single", restricted, "192.168.1.8", false},
		{"v4 before single", restricted, "192.168.1.6", false},
		{"v4 unrelated", restricted, "8.8.8.8", false},

		{"v6 first in range", restricted, "2001:db8::", true},
		{"v6 inside range", restricted, "2001:db8:1234::42", true},
		{"v6 last in range", restricted, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
		{"v6 just below range", restricted, "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", false},
		{"v6 just above range", restricted, "2001:db9::", false},
		{"v6 exact single", restricted, "fd00::1", true},
		{"v6 next to single", restricted, "fd00::2", false},
		{"v6 with zone matches its address", restricted, "fd00::1%eth0", true},
		{"v6 unrelated", restricted, "2606:4700::1111", false},

		{"IPv4-mapped client matches v4 range", restricted, "::ffff:10.0.0.7", true},
		{"IPv4-mapped client matches v4 single", restricted, "::ffff:192.168.1.7", true},
		{"IPv4-mapped client outside v4 range", restricted, "::ffff:10.0.1.7", false},
		{"v6 client does not match v4 rule", mustParse(t, "0.0.0.0/0"), "2001:db8::1", false},
		{"v4 client does not match v6 rule", mustParse(t, "::/0"), "10.0.0.1", false},
		{"v4 /0 allows all v4", mustParse(t, "0.0.0.0/0"), "203.0.113.9", true},
		{"v6 /0 allows all v6", mustParse(t, "::/0"), "2001:db8::1", true},
		{"v4 rule does not match NAT64 address", mustParse(t, "10.0.0.0/8"), "64:ff9b::a00:1", false},
		{"v4 rule does not match v4-compatible address", mustParse(t, "10.0.0.0/8"), "::a00:1", false},

		{"zero addr not allowed by restricted list", restricted, "", false},
		{"zero addr not allowed by v4 /0", mustParse(t, "0.0.0.0/0"), "", false},
		{"zero addr not allowed by v6 /0", mustParse(t, "::/0"), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addr netip.Addr
			if tt.addr != "" {
				addr = netip.MustParseAddr(tt.addr)
			}
			if got := tt.list.Allows(addr); got != tt.want {
				t.Errorf("%v.Allows(%v) = %v, want %v", tt.list.Strings(), addr, got, tt.want)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		name string
		list AllowedIPs
		want []string
	}{
		{"nil", nil, nil},
		{"empty", AllowedIPs{}, nil},
		{"v4 /32 bare", AllowedIPs{netip.MustParsePrefix("10.0.0.1/32")}, []string{"10.0.0.1"}},
		{"v6 /128 bare", AllowedIPs{netip.MustParsePrefix("2001:db8::1/128")}, []string{"2001:db8::1"}},
		{"v4 /31 keeps CIDR", AllowedIPs{netip.MustParsePrefix("10.0.0.0/31")}, []string{"10.0.0.0/31"}},
		{"v6 /127 keeps CIDR", AllowedIPs{netip.MustParsePrefix("2001:db8::/127")}, []string{"2001:db8::/127"}},
		{"v4 /0", AllowedIPs{netip.MustParsePrefix("0.0.0.0/0")}, []string{"0.0.0.0/0"}},
		{"order kept", AllowedIPs{
			netip.MustParsePrefix("2001:db8::/32"),
			netip.MustParsePrefix("10.0.0.1/32"),
			netip.MustParsePrefix("10.0.0.0/8"),
		}, []string{"2001:db8::/32", "10.0.0.1", "10.0.0.0/8"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.list.Strings(); !slices.Equal(got, tt.want) || (got == nil) != (tt.want == nil) {
				t.Errorf("Strings() = %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestStringsRoundTrip checks that Strings is what ParseAllowedIPs reads.
func TestStringsRoundTrip(t *testing.T) {
	in := mustParse(t, "10.0.0.1", "10.0.0.0/24", "2001:DB8::1", "2001:db8::/48", "::ffff:192.168.0.0/112", "0.0.0.0/0", "::/0")
	again, err := ParseAllowedIPs(in.Strings())
	if err != nil {
		t.Fatalf("ParseAllowedIPs(%q) = %v", in.Strings(), err)
	}
	if !slices.Equal(in, again) {
		t.Errorf("round trip changed the list: %v -> %v", in, again)
	}
}

func mustParse(t testing.TB, entries ...string) AllowedIPs {
	t.Helper()
	l, err := ParseAllowedIPs(entries)
	if err != nil {
		t.Fatalf("ParseAllowedIPs(%q) = %v", entries, err)
	}
	return l
}

func FuzzParseAllowedIPs(f *testing.F) {
	seeds := [][2]string{
		{"10.0.0.1", ""},
		{"10.0.0.0/24", "2001:db8::/32"},
		{"2001:DB8::1", "::ffff:10.0.0.1"},
		{"::ffff:10.0.0.0/120", "0.0.0.0/0"},
		{"::ffff:0.0.0.0/96", "::/0"},
		{"10.0.0.1/24", ""},
		{"fe80::1%eth0", ""},
		{"::ffff:0:0/95", "1.2.3.4/32"},
		{"10.0.0.1", "10.0.0.1/32"},
		{"garbage", "\xff/\x00"},
		{"::ffff:a00:0/120", "::1"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		for _, entries := range [][]string{{a}, {b}, {a, b}} {
			l, err := ParseAllowedIPs(entries)
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("ParseAllowedIPs(%q) = %v, want it to wrap ErrInvalid", entries, err)
				}
				if l != nil {
					t.Fatalf("ParseAllowedIPs(%q) returned %v with error %v", entries, l, err)
				}
				continue
			}
			if len(l) != len(entries) {
				t.Fatalf("ParseAllowedIPs(%q) = %v: %d entries, want %d", entries, l, len(l), len(entries))
			}
			strs := l.Strings()
			if len(strs) != len(l) {
				t.Fatalf("Strings() = %q for %v", strs, l)
			}
			for i, p := range l {
				if !p.IsValid() || p.Masked() != p || p.Addr().Is4In6() || p.Addr().Zone() != "" {
					t.Fatalf("ParseAllowedIPs(%q)[%d] = %v is not canonical", entries, i, p)
				}
				re, err := ParseAllowedIPs([]string{strs[i]})
				if err != nil {
					t.Fatalf("Strings()[%d] = %q of %q does not re-parse: %v", i, strs[i], entries, err)
				}
				if len(re) != 1 || re[0] != p {
					t.Fatalf("Strings()[%d] = %q of %q re-parses to %v, want %v", i, strs[i], entries, re, p)
				}
				if !l.Allows(p.Addr()) {
					t.Fatalf("ParseAllowedIPs(%q).Allows(%v) = false, want true", entries, p.Addr())
				}
				if !l.Allows(netip.AddrFrom16(p.Addr().As16())) && p.Addr().Is4() {
					t.Fatalf("ParseAllowedIPs(%q) refuses the IPv4-mapped form of %v", entries, p.Addr())
				}
			}
			if l.Allows(netip.Addr{}) {
				t.Fatalf("ParseAllowedIPs(%q) allows the zero address", entries)
			}
		}
	})
}
