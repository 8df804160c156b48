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
)

// t0 is a fixed whole-second UTC time the tests build tokens around.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t *testing.T) (*Store, string) {
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
func newToken(t *testing.T, user, name string) (token.Token, secret.Hash) {
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

func create(t *testing.T, s *Store, user, name string) (token.Token, secret.Hash) {
	t.Helper()
	tok, h := newToken(t, user, name)
	got, _, err := s.Create(tok, CreateOptions{})
	if err != nil {
		t.Fatalf("Create(%s/%s) = %v", user, name, err)
	}
	return got, h
}

func allow(*token.Token) error { return nil }

func TestOpenCreatesFileWithMode0600(t *testing.T) {
	s, path := openTemp(t)
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
	if got := s.Path(); got != path {
		t.Errorf("Path() = %q, want %q", got, path)
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
	got, err := s.Use(h, t0, allow)
	if err != nil || got.ID != tok.ID {
		t.Errorf("Use(first hash) = %+v, %v; want token %d", got, err, tok.ID)
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
		{"unknown user", "mallory", a.ID, nil, token.ErrNotFound},
		{"unknown id", "alice", 12345, nil, token.ErrNotFound},
		{"id zero", "alice", 0, nil, token.ErrNotFound},
		{"max id", "alice", ^uint64(0), nil, token.ErrNotFound},
		{"empty user", "", a.ID, nil, token.ErrNotFound},
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

func TestUse(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	other, _ := create(t, s, "alice", "b")

	at := time.Date(2030, 6, 2, 15, 4, 5, 987654321, time.FixedZone("CEST", 2*3600))
	var seen token.Token
	got, err := s.Use(h, at, func(t *token.Token) error { seen = *t; return nil })
	if err != nil {
		t.Fatalf("Use = %v", err)
	}
	if seen.ID != tok.ID || seen.UsageCount != 0 || !seen.LastUsedAt.IsZero() {
		t.Errorf("check saw %+v, want token %d before counting", seen, tok.ID)
	}
	wantAt := time.Date(2030, 6, 2, 13, 4, 5, 0, time.UTC)
	if got.ID != tok.ID || got.UsageCount != 1 {
		t.Errorf("Use returned id %d with usage %d, want id %d with usage 1", got.ID, got.UsageCount, tok.ID)
	}
	if !got.LastUsedAt.Equal(wantAt) || got.LastUsedAt.Location() != time.UTC {
		t.Errorf("LastUsedAt = %v, want %v (whole seconds, UTC)", got.LastUsedAt, wantAt)
	}

	stored, err := s.GetForUser("alice", tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.UsageCount != 1 || !stored.LastUsedAt.Equal(wantAt) {
		t.Errorf("stored usage %d at %v, want 1 at %v", stored.UsageCount, stored.LastUsedAt, wantAt)
	}

	// A second use adds exactly one more and moves LastUsedAt.
	later := wantAt.Add(time.Hour)
	got, err = s.Use(h, later, allow)
	if err != nil {
		t.Fatal(err)
	}
	if got.UsageCount != 2 || !got.LastUsedAt.Equal(later) {
		t.Errorf("second Use: usage %d at %v, want 2 at %v", got.UsageCount, got.LastUsedAt, later)
	}

	// The other token is untouched.
	o, err := s.GetForUser("alice", other.ID)
	if err != nil {
		t.Fatal(err)
	}
	if o.UsageCount != 0 || !o.LastUsedAt.IsZero() {
		t.Errorf("unrelated token changed: usage %d at %v", o.UsageCount, o.LastUsedAt)
	}
}

func TestUseUnknownHash(t *testing.T) {
	s, _ := openTemp(t)
	create(t, s, "alice", "a")
	called := false
	var unknown secret.Hash
	if _, err := rand.Read(unknown[:]); err != nil {
		t.Fatal(err)
	}
	for _, h := range []secret.Hash{unknown, {}} {
		got, err := s.Use(h, t0, func(*token.Token) error { called = true; return nil })
		if !errors.Is(err, token.ErrNotFound) {
			t.Errorf("Use(%x) = %v, want token.ErrNotFound", h, err)
		}
		if got.ID != 0 {
			t.Errorf("Use(%x) returned token %+v with the error", h, got)
		}
	}
	if called {
		t.Error("check was called for an unknown hash")
	}
}

func TestUseCheckErrorChangesNothing(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	if _, err := s.Use(h, t0, allow); err != nil {
		t.Fatal(err)
	}
	before, err := s.GetForUser("alice", tok.ID)
	if err != nil {
		t.Fatal(err)
	}

	refuse := errors.New("address not allowed")
	for i := 0; i < 3; i++ {
		got, err := s.Use(h, t0.Add(time.Hour), func(t *token.Token) error {
			// Even a check that scribbles on the token must not be saved.
			t.UsageCount = 1000
			t.Name = "scribbled"
			return fmt.Errorf("wrapped: %w", refuse)
		})
		if !errors.Is(err, refuse) {
			t.Fatalf("Use with a refusing check = %v, want the check's error", err)
		}
		if got.ID != 0 || got.UsageCount != 0 {
			t.Errorf("Use with a refusing check returned %+v, want the zero token", got)
		}
	}

	after, err := s.GetForUser("alice", tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	assertTokenEqual(t, after, before)
	if after.UsageCount != 1 {
		t.Errorf("usage = %d after refused uses, want 1", after.UsageCount)
	}
}

func TestUseSeesRevocationInCheck(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	if _, err := s.Revoke("alice", tok.ID, t0); err != nil {
		t.Fatal(err)
	}
	errRevoked := errors.New("revoked")
	_, err := s.Use(h, t0.Add(time.Minute), func(t *token.Token) error {
		if t.Status(t0.Add(time.Minute)) == token.StatusRevoked {
			return errRevoked
		}
		return nil
	})
	if !errors.Is(err, errRevoked) {
		t.Errorf("Use of a revoked token = %v, want the check to refuse it", err)
	}
	got, _ := s.GetForUser("alice", tok.ID)
	if got.UsageCount != 0 {
		t.Errorf("revoked token counted %d uses, want 0", got.UsageCount)
	}
}

func TestUseConcurrent(t *testing.T) {
	const n = 50
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	other, oh := create(t, s, "bob", "b")

	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	counts := make(chan uint64, n)
	for i := 0; i < n; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			got, err := s.Use(h, t0.Add(time.Duration(i)*time.Second), allow)
			if err != nil {
				errs <- err
				return
			}
			counts <- got.UsageCount
		}()
		go func() {
			defer wg.Done()
			if _, err := s.Use(oh, t0, allow); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	close(counts)
	for err := range errs {
		t.Errorf("concurrent Use = %v", err)
	}

	// Every use saw a distinct count: 1..n, each once.
	var seen []uint64
	for c := range counts {
		seen = append(seen, c)
	}
	slices.Sort(seen)
	for i, c := range seen {
		if c != uint64(i+1) {
			t.Fatalf("counts returned by concurrent Use = %v, want 1..%d each once", seen, n)
		}
	}

	for _, c := range []struct {
		user string
		id   uint64
	}{{"alice", tok.ID}, {"bob", other.ID}} {
		got, err := s.GetForUser(c.user, c.id)
		if err != nil {
			t.Fatal(err)
		}
		if got.UsageCount != n {
			t.Errorf("%s's token: usage = %d after %d concurrent uses, want %d", c.user, got.UsageCount, n, n)
		}
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
	full, err = s.Use(h, t0.Add(time.Hour), allow)
	if err != nil {
		t.Fatal(err)
	}
	full, err = s.Use(h, t0.Add(2*time.Hour), allow)
	if err != nil {
		t.Fatal(err)
	}
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
	used, err := s2.Use(h, t0.Add(4*time.Hour), allow)
	if err != nil || used.ID != full.ID || used.UsageCount != 3 {
		t.Errorf("Use after reopen = %+v, %v; want token %d with usage 3", used, err, full.ID)
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
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("schema"), v)
	}); err != nil {
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
				if _, err := s.Use(h, t0, allow); err != nil {
					t.Errorf("Use = %v", err)
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
