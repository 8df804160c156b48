package auth_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/service/auth"
)

func FuzzParseBearer(f *testing.F) {
	for _, s := range []string{
		"", "Bearer", "Bearer ", "Bearer x", "bearer x", "BEARER x", "Bearer    x",
		"Bearer a b", "Bearer a\tb", "Bearer \tx", "Basic abc", "Token x",
		"Bearer tkd_0123456789ABCDEFGHIJKLMNOPQRSTUV000000", "Bearer\tx", " Bearer x",
		"Bearer x\n", "Bearer \x00", "Bearer ÿ", "BEARER\u00a0x", "Bearer x ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		tok, err := auth.ParseBearer(v)
		if err != nil {
			if tok != "" {
				t.Errorf("ParseBearer(%q) = %q alongside error %v", v, tok, err)
			}
			return
		}
		if tok == "" {
			t.Fatalf("ParseBearer(%q) succeeded with an empty token", v)
		}
		if strings.ContainsAny(tok, " \t") {
			t.Errorf("ParseBearer(%q) = %q, which contains a space or tab", v, tok)
		}
		if !strings.HasSuffix(v, tok) {
			t.Errorf("ParseBearer(%q) = %q, not a suffix of the value", v, tok)
		}
		scheme, _, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			t.Errorf("ParseBearer(%q) succeeded without the Bearer scheme", v)
		}
	})
}

func FuzzClientAddr(f *testing.F) {
	seeds := [][3]string{
		{"10.0.0.1", "198.51.100.1", ""},
		{"10.0.0.1", "198.51.100.1, 10.0.0.2", "10.0.0.3"},
		{"203.0.113.5", "198.51.100.1", ""},
		{"::ffff:127.0.0.1", "::ffff:198.51.100.1", ""},
		{"2001:db8:1::1", "2001:db8:ffff::7", "fe80::1%eth0"},
		{"10.0.0.1", "garbage, 10.0.0.2", ""},
		{"10.0.0.1", "  198.51.100.1 ,\t10.0.0.2", ", ,"},
		{"10.0.0.1", "10.0.0.5, 10.0.0.4", "10.0.0.3"},
		{"", "198.51.100.1", ""},
		{"fe80::1%eth0", "198.51.100.1", ""},
		{"10.0.0.1", "::ffff:10.0.0.9", "::"},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1], s[2])
	}
	trusting := auth.New(nil, nil, testProxies, time.Now)
	trustless := auth.New(nil, nil, nil, time.Now)
	f.Fuzz(func(t *testing.T, peerStr, xff1, xff2 string) {
		peer, _ := netip.ParseAddr(peerStr) // the zero Addr if unparsable
		var xff []string
		for _, v := range []string{xff1, xff2} {
			if v != "" {
				xff = append(xff, v)
			}
		}
		if got := trustless.ClientAddr(peer, xff); got != peer.Unmap() {
			t.Errorf("no trusted proxies: ClientAddr(%v, %q) = %v, want the unmapped peer %v", peer, xff, got, peer.Unmap())
		}
		got := trusting.ClientAddr(peer, xff)
		if got == peer.Unmap() {
			return
		}
		if got.Is4In6() {
			t.Errorf("ClientAddr(%v, %q) = %v, an IPv4-mapped address", peer, xff, got)
		}
		if got.Zone() != "" {
			t.Errorf("ClientAddr(%v, %q) = %v, a zoned forwarded address", peer, xff, got)
		}
		for _, v := range xff {
			for _, hop := range strings.Split(v, ",") {
				if a, err := netip.ParseAddr(strings.TrimSpace(hop)); err == nil && a.Unmap() == got {
					return
				}
			}
		}
		t.Errorf("ClientAddr(%v, %q) = %v, neither the peer nor any forwarded hop", peer, xff, got)
	})
}
