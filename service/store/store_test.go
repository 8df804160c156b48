package store

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// t0 is a fixed whole-second UTC time the tests build tokens around.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t testing.TB) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokend.db")
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path
}

// newToken returns a valid token for user with a fresh secret, and that
// secret's hash.
func newToken(t testing.TB, user, name string) (token.Token, secret.Hash) {
	t.Helper()
	sec, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	h := secret.HashOf(sec)
	return token.Token{
		UserID:     user,
		Name:       name,
		SecretHash: h,
		CreatedAt:  t0,
	}, h
}

func create(t testing.TB, s *Store, user, name string) (token.Token, secret.Hash) {
	t.Helper()
	tok, h := newToken(t, user, name)
	got, _, err := s.Create(tok, CreateOptions{})
	if err != nil {
		t.Fatalf("Create(%s/%s) = %v", user, name, err)
	}
	return got, h
}

// use counts one use of the token with secret hash h at time at, the way
// the server does: Lookup, then a usage batch.
func use(t *testing.T, s *Store, h secret.Hash, at time.Time) token.Token {
	t.Helper()
	tok, err := s.Lookup(h, at)
	if err != nil {
		t.Fatalf("Lookup = %v", err)
	}
	last, err := s.LastUsageBatch()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyUsage(last+1, map[uint64]usage.Delta{tok.ID: {Count: 1, Last: at.Unix()}}); err != nil {
		t.Fatalf("ApplyUsage = %v", err)
	}
	got, err := s.GetForUser(tok.UserID, tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestOpenCreatesFileWithMode0600(t *testing.T) {
	_, path := openTemp(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("Stat(%q) = %v", path, err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Errorf("mode of %q = %v, want -rw-------", path, got)
	}
	if !fi.Mode().IsRegular() {
		t.Errorf("%q is not a regular file: %v", path, fi.Mode())
	}
}

func TestOpenMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "tokend.db")
	s, err := Open(path, Options{})
	if err == nil {
		_ = s.Close()
		t.Fatalf("Open(%q) = nil error, want one", path)
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(%q) = %v, want it to wrap os.ErrNotExist", path, err)
	}
}

func TestOpenEmptyExistingFile(t *testing.T) {
	// A zero-length file is what an interrupted first start can leave; bbolt
	// initialises it as a new database.
	path := filepath.Join(t.TempDir(), "tokend.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open(empty file) = %v", err)
	}
	defer s.Close()
	if _, _, err := s.Create(mustToken(t, "alice"), CreateOptions{}); err != nil {
		t.Errorf("Create on a fresh store = %v", err)
	}
}

func mustToken(t *testing.T, user string) token.Token {
	tok, _ := newToken(t, user, "n")
	return tok
}

func TestCreateAssignsIncreasingIDs(t *testing.T) {
	s, _ := openTemp(t)
	users := []string{"alice", "bob", "alice", "carol", "bob", "alice"}
	for i, u := range users {
		tok, h := newToken(t, u, fmt.Sprintf("tok%d", i))
		tok.ID = 999 // must be ignored
		got, _, err := s.Create(tok, CreateOptions{})
		if err != nil {
			t.Fatalf("Create #%d = %v", i, err)
		}
		if want := uint64(i + 1); got.ID != want {
			t.Errorf("Create #%d: ID = %d, want %d", i, got.ID, want)
		}
		if got.UserID != u || got.Name != tok.Name || got.SecretHash != h || !got.CreatedAt.Equal(t0) {
			t.Errorf("Create #%d returned %+v, want the input with only ID changed", i, got)
		}
	}
}

func TestCreateRefusesDuplicateHash(t *testing.T) {
	s, _ := openTemp(t)
	tok, _ := create(t, s, "alice", "first")
	dup := tok
	dup.ID = 0
	dup.Name = "second"
	if _, _, err := s.Create(dup, CreateOptions{}); err == nil {
		t.Fatal("Create with an existing secret hash succeeded, want an error")
	}
	// The failed create must not have consumed anything visible.
	list, err := s.List("alice")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "first" {
		t.Errorf("List after a failed create = %+v, want only the first token", list)
	}
	h := tok.SecretHash
	got, err := s.Lookup(h, t0)
	if err != nil || got.ID != tok.ID {
		t.Errorf("Lookup(first hash) = %+v, %v; want token %d", got, err, tok.ID)
	}
}

func TestGetForUser(t *testing.T) {
	s, _ := openTemp(t)
	a, _ := create(t, s, "alice", "a")
	b, _ := create(t, s, "bob", "b")

	tests := []struct {
		name    string
		user    string
		id      uint64
		want    *token.Token
		wantErr error
	}{
		{"owner alice", "alice", a.ID, &a, nil},
		{"owner bob", "bob", b.ID, &b, nil},
		{"other user's token", "alice", b.ID, nil, token.ErrNotFound},
		{"other user's token, reversed", "bob", a.ID, nil, token.ErrNotFound},
		{"unknown user", "mallory", a.ID, nil, token.ErrUserNotFound},
		{"unknown id", "alice", 12345, nil, token.ErrNotFound},
		{"id zero", "alice", 0, nil, token.ErrNotFound},
		{"max id", "alice", ^uint64(0), nil, token.ErrNotFound},
		{"empty user", "", a.ID, nil, token.ErrUserNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.GetForUser(tt.user, tt.id)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("GetForUser(%q, %d) = %v, want %v", tt.user, tt.id, err, tt.wantErr)
				}
				if got.ID != 0 || got.UserID != "" {
					t.Errorf("GetForUser(%q, %d) leaked %+v with the error", tt.user, tt.id, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("GetForUser(%q, %d) = %v", tt.user, tt.id, err)
			}
			assertTokenEqual(t, got, *tt.want)
		})
	}
}

func TestLookup(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	create(t, s, "alice", "b")

	got, err := s.Lookup(h, t0)
	if err != nil || got.ID != tok.ID || got.UserID != "alice" {
		t.Fatalf("Lookup = %+v, %v; want token %d of alice", got, err, tok.ID)
	}
	var unknown secret.Hash
	if _, err := rand.Read(unknown[:]); err != nil {
		t.Fatal(err)
	}
	for _, h := range []secret.Hash{unknown, {}} {
		got, err := s.Lookup(h, t0)
		if !errors.Is(err, token.ErrNotFound) || got.ID != 0 {
			t.Errorf("Lookup(%x) = %+v, %v; want token.ErrNotFound and no token", h, got, err)
		}
	}
}

func TestLookupPreviousSecretDuringGrace(t *testing.T) {
	s, _ := openTemp(t)
	tok, oldHash := create(t, s, "alice", "a")
	var newHash secret.Hash
	if _, err := rand.Read(newHash[:]); err != nil {
		t.Fatal(err)
	}
	until := t0.Add(time.Minute)
	if _, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
		t.PrevSecretHash, t.PrevSecretUntil, t.SecretHash = t.SecretHash, until, newHash
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		h    secret.Hash
		at   time.Time
		ok   bool
	}{
		{"new secret", newHash, t0, true},
		{"new secret after grace", newHash, until.Add(time.Hour), true},
		{"old secret within grace", oldHash, until.Add(-time.Second), true},
		{"old secret at the end of grace", oldHash, until, false},
		{"old secret after grace", oldHash, until.Add(time.Second), false},
	} {
		got, err := s.Lookup(tc.h, tc.at)
		if tc.ok && (err != nil || got.ID != tok.ID) {
			t.Errorf("%s: Lookup = %+v, %v; want token %d", tc.name, got, err, tok.ID)
		}
		if !tc.ok && !errors.Is(err, token.ErrNotFound) {
			t.Errorf("%s: Lookup = %v, want token.ErrNotFound", tc.name, err)
		}
	}
	// A second rotation without grace drops the old hash from the index.
	if _, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
		t.PrevSecretHash, t.PrevSecretUntil = [32]byte{}, time.Time{}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(oldHash, t0); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("old secret after its hash left the index: %v, want token.ErrNotFound", err)
	}
}

func TestApplyUsage(t *testing.T) {
	s, _ := openTemp(t)
	a, _ := create(t, s, "alice", "a")
	b, _ := create(t, s, "bob", "b")
	last := t0.Add(time.Hour).Truncate(time.Second)
	if err := s.ApplyUsage(7, map[uint64]usage.Delta{a.ID: {Count: 3, Last: last.Unix()}, 999: {Count: 1, Last: last.Unix()}}); err != nil {
		t.Fatalf("ApplyUsage = %v", err)
	}
	got, _ := s.GetForUser("alice", a.ID)
	if got.UsageCount != 3 || !got.LastUsedAt.Equal(last) || got.UsageBatch != 7 {
		t.Errorf("after ApplyUsage: usage %d, last %v, batch %d; want 3, %v, 7", got.UsageCount, got.LastUsedAt, got.UsageBatch, last)
	}
	other, _ := s.GetForUser("bob", b.ID)
	if other.UsageCount != 0 || other.UsageBatch != 0 {
		t.Errorf("untouched token changed: %+v", other)
	}
	if n, err := s.LastUsageBatch(); err != nil || n != 7 {
		t.Errorf("LastUsageBatch = %d, %v; want 7", n, err)
	}
	// An older use does not move LastUsedAt back.
	if err := s.ApplyUsage(8, map[uint64]usage.Delta{a.ID: {Count: 1, Last: t0.Unix()}}); err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetForUser("alice", a.ID)
	if got.UsageCount != 4 || !got.LastUsedAt.Equal(last) {
		t.Errorf("usage %d last %v, want 4 and %v", got.UsageCount, got.LastUsedAt, last)
	}
}

func TestRevoke(t *testing.T) {
	s, _ := openTemp(t)
	tok, _ := create(t, s, "alice", "a")
	keep, _ := create(t, s, "alice", "b")
	bobs, _ := create(t, s, "bob", "c")

	at := time.Date(2030, 6, 3, 9, 0, 0, 500_000_000, time.FixedZone("X", -5*3600))
	want := time.Date(2030, 6, 3, 14, 0, 0, 0, time.UTC)
	got, err := s.Revoke("alice", tok.ID, at)
	if err != nil {
		t.Fatalf("Revoke = %v", err)
	}
	if !got.RevokedAt.Equal(want) || got.RevokedAt.Location() != time.UTC {
		t.Errorf("RevokedAt = %v, want %v (whole seconds, UTC)", got.RevokedAt, want)
	}
	if got.Status(want) != token.StatusRevoked {
		t.Errorf("status after Revoke = %v, want revoked", got.Status(want))
	}
	stored, err := s.GetForUser("alice", tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !stored.RevokedAt.Equal(want) {
		t.Errorf("stored RevokedAt = %v, want %v", stored.RevokedAt, want)
	}

	t.Run("idempotent", func(t *testing.T) {
		again, err := s.Revoke("alice", tok.ID, want.Add(24*time.Hour))
		if err != nil {
			t.Fatalf("second Revoke = %v, want nil", err)
		}
		if !again.RevokedAt.Equal(want) {
			t.Errorf("second Revoke returned RevokedAt %v, want the first time %v", again.RevokedAt, want)
		}
		stored, _ := s.GetForUser("alice", tok.ID)
		if !stored.RevokedAt.Equal(want) {
			t.Errorf("stored RevokedAt after second Revoke = %v, want %v", stored.RevokedAt, want)
		}
	})

	t.Run("unknown user", func(t *testing.T) {
		got, err := s.Revoke("mallory", tok.ID, at)
		if !errors.Is(err, token.ErrUserNotFound) {
			t.Errorf("Revoke(unknown user) = %v, want token.ErrUserNotFound", err)
		}
		if got.ID != 0 {
			t.Errorf("Revoke(unknown user) leaked %+v", got)
		}
	})

	t.Run("another user's token", func(t *testing.T) {
		got, err := s.Revoke("bob", keep.ID, at)
		if !errors.Is(err, token.ErrNotFound) {
			t.Errorf("Revoke(bob, alice's token) = %v, want token.ErrNotFound", err)
		}
		if got.ID != 0 {
			t.Errorf("Revoke(bob, alice's token) leaked %+v", got)
		}
		stored, _ := s.GetForUser("alice", keep.ID)
		if !stored.RevokedAt.IsZero() {
			t.Errorf("alice's token was revoked by bob: %v", stored.RevokedAt)
		}
	})

	t.Run("unknown id of a known user", func(t *testing.T) {
		if _, err := s.Revoke("alice", 999, at); !errors.Is(err, token.ErrNotFound) {
			t.Errorf("Revoke(alice, 999) = %v, want token.ErrNotFound", err)
		}
	})

	t.Run("others untouched", func(t *testing.T) {
		for _, c := range []token.Token{keep, bobs} {
			got, err := s.GetForUser(c.UserID, c.ID)
			if err != nil {
				t.Fatal(err)
			}
			if !got.RevokedAt.IsZero() {
				t.Errorf("token %d revoked at %v, want not revoked", c.ID, got.RevokedAt)
			}
		}
	})
}

func TestList(t *testing.T) {
	s, _ := openTemp(t)
	var alice []token.Token
	for i := 0; i < 5; i++ {
		a, _ := create(t, s, "alice", fmt.Sprintf("a%d", i))
		alice = append(alice, a)
		create(t, s, "bob", fmt.Sprintf("b%d", i))
	}
	// Ids past 255 check that the big-endian keys sort numerically.
	for i := 0; i < 300; i++ {
		create(t, s, "carol", fmt.Sprintf("c%d", i))
	}
	a, _ := create(t, s, "alice", "last")
	alice = append(alice, a)

	got, err := s.List("alice")
	if err != nil {
		t.Fatalf("List = %v", err)
	}
	if len(got) != len(alice) {
		t.Fatalf("List returned %d tokens, want %d", len(got), len(alice))
	}
	for i := range got {
		want := alice[len(alice)-1-i]
		assertTokenEqual(t, got[i], want)
	}

	carol, err := s.List("carol")
	if err != nil {
		t.Fatal(err)
	}
	if len(carol) != 300 {
		t.Fatalf("List(carol) returned %d tokens, want 300", len(carol))
	}
	for i := 1; i < len(carol); i++ {
		if carol[i-1].ID <= carol[i].ID {
			t.Fatalf("List(carol) not newest first: id %d before %d", carol[i-1].ID, carol[i].ID)
		}
	}

	t.Run("unknown user", func(t *testing.T) {
		for _, u := range []string{"mallory", "", "alic", "alice\x00"} {
			got, err := s.List(u)
			if !errors.Is(err, token.ErrUserNotFound) {
				t.Errorf("List(%q) = %v, %v; want token.ErrUserNotFound", u, got, err)
			}
		}
	})

	t.Run("revoked tokens are listed", func(t *testing.T) {
		if _, err := s.Revoke("alice", alice[0].ID, t0); err != nil {
			t.Fatal(err)
		}
		got, err := s.List("alice")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(alice) || got[len(got)-1].RevokedAt.IsZero() {
			t.Errorf("List after Revoke = %+v, want the oldest token revoked and still listed", got)
		}
	})
}

func TestRoundTripAcrossReopen(t *testing.T) {
	s, path := openTemp(t)
	ips, err := token.ParseAllowedIPs([]string{"10.0.0.0/24", "192.168.1.7", "2001:db8::/32", "2001:db8::1", "::ffff:172.16.0.0/108"})
	if err != nil {
		t.Fatal(err)
	}
	full, h := newToken(t, "alice.smith+ci@example.com", "Jürgen's 令牌 🔑")
	full.CreatedAt = t0
	full.ExpiresAt = t0.Add(90 * 24 * time.Hour)
	full.AllowedIPs = ips
	full, _, err = s.Create(full, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	use(t, s, h, t0.Add(time.Hour))
	use(t, s, h, t0.Add(2*time.Hour))
	full, err = s.Revoke("alice.smith+ci@example.com", full.ID, t0.Add(3*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if full.UsageCount != 2 || full.LastUsedAt.IsZero() || full.RevokedAt.IsZero() {
		t.Fatalf("setup produced %+v", full)
	}

	bare, _ := create(t, s, "bob", "x") // every optional field zero

	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	s2, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("reopen = %v", err)
	}
	defer s2.Close()

	got, err := s2.GetForUser(full.UserID, full.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertTokenEqual(t, got, full)
	if got.SecretHash != h {
		t.Errorf("SecretHash = %x, want %x", got.SecretHash, h)
	}
	if !slices.Equal(got.AllowedIPs.Strings(), []string{"10.0.0.0/24", "192.168.1.7", "2001:db8::/32", "2001:db8::1", "172.16.0.0/12"}) {
		t.Errorf("AllowedIPs = %q", got.AllowedIPs.Strings())
	}
	if !got.AllowedIPs.Allows(netip.MustParseAddr("10.0.0.9")) || got.AllowedIPs.Allows(netip.MustParseAddr("10.0.1.9")) {
		t.Errorf("reloaded AllowedIPs %v match the wrong addresses", got.AllowedIPs)
	}

	gotBare, err := s2.GetForUser("bob", bare.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertTokenEqual(t, gotBare, bare)
	if !gotBare.ExpiresAt.IsZero() || !gotBare.RevokedAt.IsZero() || !gotBare.LastUsedAt.IsZero() || gotBare.AllowedIPs != nil {
		t.Errorf("zero fields did not stay zero: %+v", gotBare)
	}

	// The secret index and the ids survive too.
	if used := use(t, s2, h, t0.Add(4*time.Hour)); used.ID != full.ID || used.UsageCount != 3 {
		t.Errorf("use after reopen = %+v; want token %d with usage 3", used, full.ID)
	}
	next, _ := create(t, s2, "bob", "y")
	if next.ID != bare.ID+1 {
		t.Errorf("id after reopen = %d, want %d", next.ID, bare.ID+1)
	}
}

func TestOpenInUse(t *testing.T) {
	const timeout = 200 * time.Millisecond
	s, path := openTemp(t)

	start := time.Now()
	s2, err := Open(path, Options{LockTimeout: timeout})
	elapsed := time.Since(start)
	if err == nil {
		_ = s2.Close()
		t.Fatal("second Open of a database in use succeeded, want ErrInUse")
	}
	if !errors.Is(err, ErrInUse) {
		t.Errorf("second Open = %v, want ErrInUse", err)
	}
	if elapsed < timeout/2 || elapsed > 5*timeout {
		t.Errorf("second Open gave up after %v, want about %v", elapsed, timeout)
	}

	// Once the first is closed the file opens again.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s3, err := Open(path, Options{LockTimeout: timeout})
	if err != nil {
		t.Fatalf("Open after Close = %v", err)
	}
	_ = s3.Close()
}

func TestOpenGarbage(t *testing.T) {
	for _, size := range []int{1, 100, 1023, 1024, 2048, 2049, 4095, 4096, 5000, 8191, 8192, 16384, 65536} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "garbage.db")
			b := make([]byte, size)
			if _, err := rand.Read(b); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
			if err == nil {
				_ = s.Close()
				t.Fatalf("Open(%d garbage bytes) succeeded, want ErrCorrupt", size)
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Open(%d garbage bytes) = %v, want ErrCorrupt", size, err)
			}
			// The failed Open must not have written to the file.
			after, rerr := os.ReadFile(path)
			if rerr != nil || !slices.Equal(after, b) {
				t.Errorf("Open changed the garbage file (read error %v)", rerr)
			}
		})
	}
}

// TestOpenTruncated cuts a real tokend database short, as a full disk or a
// partial copy would. Open must refuse it with ErrCorrupt, not panic.
func TestOpenTruncated(t *testing.T) {
	s, path := openTemp(t)
	for i := 0; i < 20; i++ {
		create(t, s, "alice", fmt.Sprint(i))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	full, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{100, 4096, 8192, 12288} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			if n >= len(full) {
				t.Skipf("database is only %d bytes", len(full))
			}
			cut := filepath.Join(t.TempDir(), "cut.db")
			if err := os.WriteFile(cut, full[:n], 0o600); err != nil {
				t.Fatal(err)
			}
			err := func() (err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("panic: %v", r)
					}
				}()
				s, err := Open(cut, Options{LockTimeout: 200 * time.Millisecond})
				if err == nil {
					_ = s.Close()
				}
				return err
			}()
			if !errors.Is(err, ErrCorrupt) {
				t.Errorf("Open(database truncated to %d of %d bytes) = %v, want ErrCorrupt", n, len(full), err)
			}
		})
	}
}

func TestOpenNotATokendDatabase(t *testing.T) {
	// A valid bbolt file with a tokens bucket but no schema byte was written
	// by something else.
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucket([]byte("tokens"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err == nil {
		_ = s.Close()
		t.Fatal("Open succeeded, want ErrCorrupt")
	}
	if !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open = %v, want ErrCorrupt", err)
	}
}

func TestOpenSchemaVersions(t *testing.T) {
	tests := []struct {
		name    string
		schema  []byte
		wantErr error
	}{
		{"current", []byte{SchemaVersion}, nil},
		{"newer", []byte{SchemaVersion + 1}, ErrNewerSchema},
		{"much newer", []byte{255}, ErrNewerSchema},
		{"two bytes", []byte{SchemaVersion, 0}, ErrCorrupt},
		{"empty value", []byte{}, ErrCorrupt},
		{"version 0, never written", []byte{0}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, path := openTemp(t)
			tok, _ := create(t, s, "alice", "a")
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			setSchema(t, path, tt.schema)

			s2, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Open = %v", err)
				}
				defer s2.Close()
				if _, err := s2.GetForUser("alice", tok.ID); err != nil {
					t.Errorf("GetForUser after reopen = %v", err)
				}
				return
			}
			if err == nil {
				_ = s2.Close()
				t.Fatalf("Open with schema %v succeeded, want %v", tt.schema, tt.wantErr)
			}
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Open with schema %v = %v, want %v", tt.schema, err, tt.wantErr)
			}
			// The refused Open must leave the file alone and unlocked.
			if got := getSchema(t, path); !slices.Equal(got, tt.schema) {
				t.Errorf("schema after refused Open = %v, want %v unchanged", got, tt.schema)
			}
		})
	}
}

func setSchema(t *testing.T, path string, v []byte) {
	t.Helper()
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v)
	})
}

// rawUpdate changes the closed database at path with bbolt alone, for
// fixtures this package would never write.
func rawUpdate(t testing.TB, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func getSchema(t *testing.T, path string) []byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bolt.Open after refused Open = %v", err)
	}
	defer db.Close()
	var v []byte
	if err := db.View(func(tx *bolt.Tx) error {
		v = slices.Clone(tx.Bucket([]byte("meta")).Get([]byte("schema")))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestConcurrentMixedOperations(t *testing.T) {
	s, _ := openTemp(t)
	const workers = 10
	var wg sync.WaitGroup
	ids := make([][]uint64, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("user%d", w)
			for i := 0; i < 10; i++ {
				tok, h := newToken(t, user, fmt.Sprintf("t%d", i))
				got, _, err := s.Create(tok, CreateOptions{})
				if err != nil {
					t.Errorf("Create = %v", err)
					return
				}
				ids[w] = append(ids[w], got.ID)
				if got, err := s.Lookup(h, t0); err != nil || got.ID != ids[w][len(ids[w])-1] {
					t.Errorf("Lookup = %+v, %v", got, err)
				}
				if _, err := s.List(user); err != nil {
					t.Errorf("List = %v", err)
				}
			}
		}()
	}
	wg.Wait()
	var all []uint64
	for _, l := range ids {
		all = append(all, l...)
	}
	slices.Sort(all)
	for i, id := range all {
		if id != uint64(i+1) {
			t.Fatalf("ids from concurrent Create = %v, want 1..%d each once", all, workers*10)
		}
	}
}

func assertTokenEqual(t *testing.T, got, want token.Token) {
	t.Helper()
	eqTime := func(a, b time.Time) bool { return a.Equal(b) && a.IsZero() == b.IsZero() }
	if got.ID != want.ID ||
		got.UserID != want.UserID ||
		got.Name != want.Name ||
		got.SecretHash != want.SecretHash ||
		!eqTime(got.CreatedAt, want.CreatedAt) ||
		!eqTime(got.ExpiresAt, want.ExpiresAt) ||
		!eqTime(got.RevokedAt, want.RevokedAt) ||
		!eqTime(got.LastUsedAt, want.LastUsedAt) ||
		got.UsageCount != want.UsageCount ||
		!slices.Equal(got.AllowedIPs, want.AllowedIPs) {
		t.Errorf("token mismatch:\n got  %+v\n want %+v", got, want)
	}
}

// TestEncodeRefusesWhatDecodeRefuses checks that a record decode would
// call corrupt is never written: too many allowed IPs, or an invalid
// (zero) prefix, are refused with ErrInvalid and leave the user's other
// tokens readable.
func TestEncodeRefusesWhatDecodeRefuses(t *testing.T) {
	s, _ := openTemp(t)
	create(t, s, "alice", "ok")
	many := make(token.AllowedIPs, token.MaxAllowedIPs+1)
	for i := range many {
		many[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32)
	}
	for name, ips := range map[string]token.AllowedIPs{
		"too many":     many,
		"zero prefix":  {netip.Prefix{}},
		"bits too big": {netip.PrefixFrom(netip.MustParseAddr("10.0.0.1"), 33)},
	} {
		tok, _ := newToken(t, "alice", name)
		tok.AllowedIPs = ips
		if _, _, err := s.Create(tok, CreateOptions{}); !errors.Is(err, token.ErrInvalid) {
			t.Errorf("%s: Create = %v, want ErrInvalid", name, err)
		}
	}
	if ts, err := s.List("alice"); err != nil || len(ts) != 1 {
		t.Errorf("alice's tokens after refused creates: %d, %v; want the one valid token", len(ts), err)
	}
}
