package auth_test

import (
	"errors"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// t0 is a fixed whole-second UTC time the tests build tokens around.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func TestParseBearer(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{"canonical", "Bearer x", "x", nil},
		{"real secret shape", "Bearer tkd_abc123", "tkd_abc123", nil},
		{"lowercase scheme", "bearer x", "x", nil},
		{"uppercase scheme", "BEARER x", "x", nil},
		{"mixed case scheme", "bEaReR x", "x", nil},
		{"two spaces after scheme", "Bearer  x", "x", nil},
		{"many spaces after scheme", "Bearer      x", "x", nil},
		{"token68 punctuation", "Bearer a-b._~+/c==", "a-b._~+/c==", nil},

		{"scheme only", "Bearer", "", auth.ErrNoCredentials},
		{"scheme and space", "Bearer ", "", auth.ErrNoCredentials},
		{"scheme and spaces", "Bearer    ", "", auth.ErrNoCredentials},
		{"empty", "", "", auth.ErrNoCredentials},
		{"basic scheme", "Basic abc", "", auth.ErrNoCredentials},
		{"token scheme", "Token x", "", auth.ErrNoCredentials},
		{"scheme prefix", "Bear x", "", auth.ErrNoCredentials},
		{"scheme with suffix", "Bearerx y", "", auth.ErrNoCredentials},
		{"leading space", " Bearer x", "", auth.ErrNoCredentials},
		{"bare token", "tkd_abc", "", auth.ErrNoCredentials},

		{"inner space", "Bearer a b", "", auth.ErrInvalidToken},
		{"inner tab", "Bearer a\tb", "", auth.ErrInvalidToken},
		{"tab after spaces", "Bearer \tx", "", auth.ErrInvalidToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := auth.ParseBearer(tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ParseBearer(%q) = %q, %v; want error wrapping %v", tt.in, got, err, tt.wantErr)
				}
				other := auth.ErrInvalidToken
				if tt.wantErr == auth.ErrInvalidToken {
					other = auth.ErrNoCredentials
				}
				if errors.Is(err, other) {
					t.Errorf("ParseBearer(%q) error %v also wraps %v", tt.in, err, other)
				}
				if got != "" {
					t.Errorf("ParseBearer(%q) returned token %q alongside an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseBearer(%q) = %q, %v; want %q, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

var testProxies = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("2001:db8:1::/48"),
}

func TestClientAddr(t *testing.T) {
	a := auth.New(nil, nil, testProxies, time.Now)
	tests := []struct {
		name string
		peer string // "" is the zero Addr
		xff  []string
		want string // "" is the zero Addr
	}{
		{"untrusted peer, no XFF", "203.0.113.5", nil, "203.0.113.5"},
		{"untrusted peer ignores XFF", "203.0.113.5", []string{"198.51.100.1"}, "203.0.113.5"},
		{"untrusted peer ignores trusted-looking XFF", "203.0.113.5", []string{"10.0.0.9"}, "203.0.113.5"},
		{"untrusted mapped peer is unmapped", "::ffff:203.0.113.5", []string{"198.51.100.1"}, "203.0.113.5"},
		{"untrusted IPv6 peer", "2001:db8:2::1", []string{"198.51.100.1"}, "2001:db8:2::1"},

		{"trusted peer, no XFF", "10.0.0.1", nil, "10.0.0.1"},
		{"trusted peer, empty XFF slice", "10.0.0.1", []string{}, "10.0.0.1"},
		{"trusted peer, empty XFF value", "10.0.0.1", []string{""}, "10.0.0.1"},
		{"trusted peer takes forwarded client", "10.0.0.1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"rightmost untrusted hop wins over spoofed left", "10.0.0.1", []string{"6.6.6.6, 198.51.100.1"}, "198.51.100.1"},
		{"rightmost untrusted hop before trusted hops", "10.0.0.1", []string{"6.6.6.6, 203.0.113.9, 10.0.0.2"}, "203.0.113.9"},
		{"trusted chain in one value", "10.0.0.1", []string{"198.51.100.1, 10.0.0.2, 10.0.0.3"}, "198.51.100.1"},
		{"trusted chain across values", "10.0.0.1", []string{"198.51.100.1", "10.0.0.2", "10.0.0.3"}, "198.51.100.1"},
		{"trusted chain across mixed values", "10.0.0.1", []string{"6.6.6.6, 198.51.100.1", "10.0.0.2, 127.0.0.1"}, "198.51.100.1"},
		{"later value's untrusted hop wins", "10.0.0.1", []string{"198.51.100.1", "203.0.113.9"}, "203.0.113.9"},
		{"all trusted returns leftmost", "10.0.0.1", []string{"10.0.0.5, 10.0.0.4", "10.0.0.3"}, "10.0.0.5"},
		{"all trusted single hop", "127.0.0.1", []string{"127.0.0.2"}, "127.0.0.2"},

		{"garbage stops at last trusted", "10.0.0.1", []string{"198.51.100.1, garbage, 10.0.0.2"}, "10.0.0.2"},
		{"garbage rightmost stops at peer", "10.0.0.1", []string{"198.51.100.1, junk"}, "10.0.0.1"},
		{"garbage in later value", "10.0.0.1", []string{"198.51.100.1", "10.0.0.2, nonsense"}, "10.0.0.1"},
		{"garbage value between trusted", "10.0.0.1", []string{"198.51.100.1", "???", "10.0.0.3"}, "10.0.0.3"},
		{"empty hop is garbage", "10.0.0.1", []string{"198.51.100.1, , 10.0.0.2"}, "10.0.0.2"},
		{"trailing comma is garbage", "10.0.0.1", []string{"198.51.100.1,"}, "10.0.0.1"},
		{"hop with port is garbage", "10.0.0.1", []string{"198.51.100.1:443"}, "10.0.0.1"},
		{"bracketed IPv6 is garbage", "10.0.0.1", []string{"[2001:db8:9::1]"}, "10.0.0.1"},
		{"CIDR is garbage", "10.0.0.1", []string{"198.51.100.0/24"}, "10.0.0.1"},
		{"garbage left of client is never reached", "10.0.0.1", []string{"junk, 198.51.100.1"}, "198.51.100.1"},

		{"whitespace around entries", "10.0.0.1", []string{"  198.51.100.1  ,   10.0.0.2   "}, "198.51.100.1"},
		{"tabs around entries", "10.0.0.1", []string{"\t198.51.100.1\t,\t10.0.0.2\t"}, "198.51.100.1"},
		{"no space after comma", "10.0.0.1", []string{"198.51.100.1,10.0.0.2"}, "198.51.100.1"},

		{"mapped loopback peer is trusted", "::ffff:127.0.0.1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"mapped loopback peer alone is unmapped", "::ffff:127.0.0.1", nil, "127.0.0.1"},
		{"mapped forwarded address is unmapped", "10.0.0.1", []string{"::ffff:198.51.100.1"}, "198.51.100.1"},
		{"mapped trusted hop continues the walk", "10.0.0.1", []string{"198.51.100.1, ::ffff:10.0.0.2"}, "198.51.100.1"},
		{"mapped all-trusted chain returns unmapped leftmost", "10.0.0.1", []string{"::ffff:10.0.0.7"}, "10.0.0.7"},

		{"IPv6 trusted proxy", "2001:db8:1::1", []string{"2001:db8:ffff::7"}, "2001:db8:ffff::7"},
		{"IPv6 trusted proxy forwards IPv4", "2001:db8:1::1", []string{"198.51.100.1"}, "198.51.100.1"},
		{"IPv6 trusted chain", "10.0.0.1", []string{"2001:db8:ffff::7, 2001:db8:1::2"}, "2001:db8:ffff::7"},
		{"IPv6 just outside trusted prefix", "2001:db8:2::1", []string{"198.51.100.1"}, "2001:db8:2::1"},

		{"zone entry is garbage", "10.0.0.1", []string{"198.51.100.1, fe80::1%eth0"}, "10.0.0.1"},
		{"zone entry after trusted hop", "10.0.0.1", []string{"fe80::1%eth0, 10.0.0.2"}, "10.0.0.2"},
		{"zone entry alone", "10.0.0.1", []string{"fe80::1%eth0"}, "10.0.0.1"},

		{"no peer ignores XFF", "", []string{"198.51.100.1"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var peer, want netip.Addr
			if tt.peer != "" {
				peer = netip.MustParseAddr(tt.peer)
			}
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			if got := a.ClientAddr(peer, tt.xff); got != want {
				t.Errorf("ClientAddr(%v, %q) = %v, want %v", peer, tt.xff, got, want)
			}
		})
	}
}

func TestClientAddrWithoutTrustedProxies(t *testing.T) {
	for _, proxies := range [][]netip.Prefix{nil, {}} {
		a := auth.New(nil, nil, proxies, time.Now)
		peer := netip.MustParseAddr("::ffff:127.0.0.1")
		got := a.ClientAddr(peer, []string{"198.51.100.1", "10.0.0.2"})
		if want := netip.MustParseAddr("127.0.0.1"); got != want {
			t.Errorf("proxies %v: ClientAddr = %v, want the unmapped peer %v", proxies, got, want)
		}
	}
}

// env is a store with an Authenticator over it and a settable clock.
type env struct {
	st  *store.Store
	rec *usage.Recorder
	a   *auth.Authenticator
	now time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokend.db")
	st, err := store.Open(path, store.Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("store.Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	rec, err := usage.New(st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, rec: rec, now: t0}
	e.a = auth.New(st, rec, testProxies, func() time.Time { return e.now })
	return e
}

// create stores a token for user and returns it with its secret. Each
// option may adjust the token before it is stored.
func (e *env) create(t *testing.T, user string, opts ...func(*token.Token)) (token.Token, string) {
	t.Helper()
	sec, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	tok := token.Token{UserID: user, Name: "test", SecretHash: secret.HashOf(sec), CreatedAt: t0.Add(-time.Hour)}
	for _, o := range opts {
		o(&tok)
	}
	got, _, err := e.st.Create(tok, store.CreateOptions{})
	if err != nil {
		t.Fatalf("Create = %v", err)
	}
	return got, sec
}

// usage returns tok's uses as a reader sees them; it flushes first, so the
// counts must also have reached the disk.
func (e *env) usage(t *testing.T, tok token.Token) (uint64, time.Time) {
	t.Helper()
	if err := e.rec.Flush(); err != nil {
		t.Fatalf("Flush = %v", err)
	}
	got, err := e.st.GetForUser(tok.UserID, tok.ID)
	if err != nil {
		t.Fatalf("GetForUser(%s, %d) = %v", tok.UserID, tok.ID, err)
	}
	if e.rec.Pending() != 0 {
		t.Fatalf("uses still pending after Flush: %d", e.rec.Pending())
	}
	return got.UsageCount, got.LastUsedAt
}

func allowedIPs(t *testing.T, entries ...string) func(*token.Token) {
	t.Helper()
	l, err := token.ParseAllowedIPs(entries)
	if err != nil {
		t.Fatalf("ParseAllowedIPs(%q) = %v", entries, err)
	}
	return func(tok *token.Token) { tok.AllowedIPs = l }
}

var client = netip.MustParseAddr("198.51.100.1")

func TestAuthenticateSuccess(t *testing.T) {
	e := newEnv(t)
	other, _ := e.create(t, "bob")
	tok, sec := e.create(t, "alice")

	e.now = t0.Add(1500 * time.Millisecond)
	p, err := e.a.Authenticate([]string{"Bearer " + sec}, client)
	if err != nil {
		t.Fatalf("Authenticate = %v", err)
	}
	if p.UserID != "alice" || p.TokenID != tok.ID || p.Token.ID != tok.ID || p.Token.UsageCount != 0 {
		t.Errorf("Authenticate = %+v, want alice's token %d as read before this use", p, tok.ID)
	}
	if n, last := e.usage(t, tok); n != 1 || !last.Equal(t0.Add(time.Second)) {
		t.Errorf("after one use: usage %d, last used %v; want 1, %v", n, last, t0.Add(time.Second))
	}

	e.now = t0.Add(time.Minute)
	if _, err := e.a.Authenticate([]string{"bearer   " + sec}, client); err != nil {
		t.Fatalf("second Authenticate = %v", err)
	}
	if n, last := e.usage(t, tok); n != 2 || !last.Equal(t0.Add(time.Minute)) {
		t.Errorf("after two uses: usage %d, last used %v; want 2, %v", n, last, t0.Add(time.Minute))
	}
	if n, _ := e.usage(t, other); n != 0 {
		t.Errorf("another user's token usage = %d, want 0", n)
	}
}

func TestAuthenticateRefusals(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice")
	revoked, revokedSec := e.create(t, "alice")
	if _, err := e.st.Revoke("alice", revoked.ID, t0); err != nil {
		t.Fatal(err)
	}
	expiring, expiringSec := e.create(t, "alice", func(tk *token.Token) { tk.ExpiresAt = t0.Add(time.Hour) })
	restricted, restrictedSec := e.create(t, "alice", allowedIPs(t, "203.0.113.0/24", "2001:db8:5::1"))

	unknown, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	badChecksum := sec[:len(sec)-1] + string(rune(sec[len(sec)-1])^1)
	if badChecksum == sec {
		t.Fatal("checksum tweak did nothing")
	}

	tests := []struct {
		name    string
		now     time.Time
		values  []string
		client  netip.Addr
		wantErr error
		reason  string
	}{
		{"no values", t0, nil, client, auth.ErrNoCredentials, "missing"},
		{"empty values", t0, []string{}, client, auth.ErrNoCredentials, "missing"},
		{"empty value", t0, []string{""}, client, auth.ErrNoCredentials, "missing"},
		{"basic scheme", t0, []string{"Basic " + sec}, client, auth.ErrNoCredentials, "missing"},
		{"two values, both valid", t0, []string{"Bearer " + sec, "Bearer " + sec}, client, auth.ErrInvalidToken, "multiple"},
		{"two values, second empty", t0, []string{"Bearer " + sec, ""}, client, auth.ErrInvalidToken, "multiple"},
		{"inner whitespace", t0, []string{"Bearer " + sec + " x"}, client, auth.ErrInvalidToken, "malformed"},
		{"bad checksum", t0, []string{"Bearer " + badChecksum}, client, auth.ErrInvalidToken, "malformed"},
		{"truncated", t0, []string{"Bearer " + sec[:len(sec)-1]}, client, auth.ErrInvalidToken, "malformed"},
		{"wrong prefix", t0, []string{"Bearer xyz_" + sec[4:]}, client, auth.ErrInvalidToken, "malformed"},
		{"not a secret", t0, []string{"Bearer hunter2"}, client, auth.ErrInvalidToken, "malformed"},
		{"unknown", t0, []string{"Bearer " + unknown}, client, auth.ErrInvalidToken, "unknown"},
		{"revoked", t0, []string{"Bearer " + revokedSec}, client, auth.ErrInvalidToken, "revoked"},
		{"revoked, later", t0.Add(24 * time.Hour), []string{"Bearer " + revokedSec}, client, auth.ErrInvalidToken, "revoked"},
		{"expired exactly at expiry", t0.Add(time.Hour), []string{"Bearer " + expiringSec}, client, auth.ErrInvalidToken, "expired"},
		{"expired after expiry", t0.Add(2 * time.Hour), []string{"Bearer " + expiringSec}, client, auth.ErrInvalidToken, "expired"},
		{"allowed_ips refuses client", t0, []string{"Bearer " + restrictedSec}, client, auth.ErrInvalidToken, "address_refused"},
		{"allowed_ips refuses neighbour", t0, []string{"Bearer " + restrictedSec}, netip.MustParseAddr("203.0.114.1"), auth.ErrInvalidToken, "address_refused"},
		{"allowed_ips refuses other IPv6", t0, []string{"Bearer " + restrictedSec}, netip.MustParseAddr("2001:db8:5::2"), auth.ErrInvalidToken, "address_refused"},
		{"allowed_ips refuses unknown client", t0, []string{"Bearer " + restrictedSec}, netip.Addr{}, auth.ErrInvalidToken, "address_refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.now = tt.now
			p, err := e.a.Authenticate(tt.values, tt.client)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Authenticate = %+v, %v; want error wrapping %v", p, err, tt.wantErr)
			}
			if got := auth.FailureReason(err); got != tt.reason || !slices.Contains(auth.Reasons(), got) {
				t.Errorf("FailureReason = %q, want %q, one of auth.Reasons()", got, tt.reason)
			}
			if p.UserID != "" || p.TokenID != 0 || p.Token.ID != 0 {
				t.Errorf("Authenticate returned principal %+v alongside an error", p)
			}
			for _, s := range []string{sec, revokedSec, expiringSec, restrictedSec, unknown} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains a presented secret", err)
				}
			}
		})
	}
	for _, tk := range []token.Token{tok, revoked, expiring, restricted} {
		if n, last := e.usage(t, tk); n != 0 || !last.IsZero() {
			t.Errorf("token %d after refusals: usage %d, last used %v; want 0, never", tk.ID, n, last)
		}
	}
}

func TestAuthenticateBoundaries(t *testing.T) {
	e := newEnv(t)
	expiring, expiringSec := e.create(t, "alice", func(tk *token.Token) { tk.ExpiresAt = t0.Add(time.Hour) })
	restricted, restrictedSec := e.create(t, "carol", allowedIPs(t, "203.0.113.0/24", "2001:db8:5::1"))

	e.now = t0.Add(time.Hour - time.Nanosecond)
	if _, err := e.a.Authenticate([]string{"Bearer " + expiringSec}, client); err != nil {
		t.Errorf("a nanosecond before expiry: Authenticate = %v, want success", err)
	}
	e.now = t0
	for _, c := range []string{"203.0.113.0", "203.0.113.255", "2001:db8:5::1", "::ffff:203.0.113.7"} {
		p, err := e.a.Authenticate([]string{"Bearer " + restrictedSec}, netip.MustParseAddr(c))
		if err != nil {
			t.Errorf("allowed client %s: Authenticate = %v, want success", c, err)
			continue
		}
		if p.UserID != "carol" || p.TokenID != restricted.ID {
			t.Errorf("allowed client %s: principal %+v, want carol/%d", c, p, restricted.ID)
		}
	}
	if n, _ := e.usage(t, expiring); n != 1 {
		t.Errorf("expiring token usage = %d, want 1", n)
	}
	if n, _ := e.usage(t, restricted); n != 4 {
		t.Errorf("restricted token usage = %d, want 4", n)
	}
}

// TestAuthenticatePreviousSecret: in a rotation's grace period the previous
// secret authenticates, and its Principal says so, so that it may read but
// not change (MayChange); the current secret's does not.
func TestAuthenticatePreviousSecret(t *testing.T) {
	e := newEnv(t)
	tok, old := e.create(t, "alice")
	cur, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Mutate("alice", tok.ID, func(tk *token.Token) error { // a rotation with a minute's grace
		tk.PrevSecretHash, tk.PrevSecretUntil, tk.SecretHash = tk.SecretHash, t0.Add(time.Minute), secret.HashOf(cur)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name     string
		sec      string
		previous bool
	}{{"current secret", cur, false}, {"previous secret in its grace period", old, true}} {
		p, err := e.a.Authenticate([]string{"Bearer " + c.sec}, client)
		if err != nil || p.TokenID != tok.ID {
			t.Fatalf("%s: Authenticate = %+v, %v; want token %d", c.name, p, err, tok.ID)
		}
		if p.Previous != c.previous || (p.MayChange() != nil) != c.previous || c.previous && !errors.Is(p.MayChange(), auth.ErrPreviousSecret) {
			t.Errorf("%s: Previous = %v, MayChange = %v; want %v", c.name, p.Previous, p.MayChange(), c.previous)
		}
	}
}
