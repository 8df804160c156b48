package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
)

// Store-level tests of the parts of the API that were covered only end to
// end: idempotent and quota-bound Create, PurgeIdempotency, MustExist,
// ListPage, the CacheEntries option, Size, Close, Mutate's failure paths
// and CreateBatch.

// idemWindow is the idempotency window the tests use (the server's).
const idemWindow = 24 * time.Hour

// clientKey is an Idempotency-Key as a client would send it.
const clientKey = "3f0c9a4e-1b2d-4c5e-8f70-9a1b2c3d4e5f"

// idemFor returns the Idempotency of a create by user under the client's
// key ckey for the request req, keyed as Idempotency.Key documents it: a
// hash of the user and the client's key (the way package service does).
func idemFor(user, ckey, req, sealed string) *Idempotency {
	return &Idempotency{
		Key:         sha256.Sum256([]byte("tokend idempotency\x00" + user + "\x00" + ckey)),
		Fingerprint: sha256.Sum256([]byte(req)),
		Sealed:      []byte(sealed),
		Window:      idemWindow,
	}
}

// createWith creates a new token of user under opts and fails the test on
// an error.
func createWith(t *testing.T, s *Store, user, name string, opts CreateOptions) (token.Token, secret.Hash, *Replay) {
	t.Helper()
	tok, h := newToken(t, user, name)
	got, replay, err := s.Create(tok, opts)
	if err != nil {
		t.Fatalf("Create(%s/%s) = %v", user, name, err)
	}
	return got, h, replay
}

func tokenIDs(ts []token.Token) []uint64 {
	ids := make([]uint64, len(ts))
	for i := range ts {
		ids[i] = ts[i].ID
	}
	return ids
}

// listAll returns all of user's tokens as List has them, and nil for a
// user the store does not know.
func listAll(t *testing.T, s *Store, user string) []token.Token {
	t.Helper()
	ts, err := s.List(user)
	if errors.Is(err, token.ErrUserNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("List(%q) = %v", user, err)
	}
	return ts
}

// assertSameTokens fails unless got and want hold equal tokens (every
// field) in the same order.
func assertSameTokens(t *testing.T, what string, got, want []token.Token) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d tokens %v, want %d tokens %v", what, len(got), tokenIDs(got), len(want), tokenIDs(want))
		return
	}
	for i := range got {
		if !equalTokens(got[i], want[i]) {
			t.Errorf("%s: token #%d\n got  %+v\n want %+v", what, i, got[i], want[i])
		}
	}
}

// assertNotIndexed fails if h finds a token.
func assertNotIndexed(t *testing.T, s *Store, h secret.Hash, what string) {
	t.Helper()
	if got, err := s.Lookup(h, t0); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("Lookup(%s) = token %d, %v; want token.ErrNotFound", what, got.ID, err)
	}
}

// assertNextID creates a token and checks that it gets id want, proving
// which ids earlier calls took from the sequence.
func assertNextID(t *testing.T, s *Store, want uint64) {
	t.Helper()
	got, _ := create(t, s, "zed", "probe")
	if got.ID != want {
		t.Errorf("next Create got id %d, want %d", got.ID, want)
	}
}

func TestCreateIdempotency(t *testing.T) {
	tests := []struct {
		name       string
		user       string // who retries: alice made the first request
		req        string // the retry's request; the first was "req-A"
		at         time.Time
		wantReplay bool
		wantErr    error // else a new token
	}{
		{"same request, same instant", "alice", "req-A", t0, true, nil},
		{"same request, a second later", "alice", "req-A", t0.Add(time.Second), true, nil},
		{"same request, last second of the window", "alice", "req-A", t0.Add(idemWindow - time.Second), true, nil},
		{"same request, window over", "alice", "req-A", t0.Add(idemWindow), false, nil},
		{"different request within the window", "alice", "req-B", t0.Add(time.Minute), false, token.ErrConflict},
		{"different request, last second of the window", "alice", "req-B", t0.Add(idemWindow - time.Second), false, token.ErrConflict},
		{"different request, window over", "alice", "req-B", t0.Add(idemWindow), false, nil},
		{"another user, same client key and request", "bob", "req-A", t0.Add(time.Second), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTemp(t)
			bobs, _ := create(t, s, "bob", "bystander")
			first, firstHash, replay := createWith(t, s, "alice", "first",
				CreateOptions{Now: t0, Idempotency: idemFor("alice", clientKey, "req-A", "sealed-1")})
			if replay != nil {
				t.Fatalf("first idempotent Create returned a replay %+v", replay)
			}
			if got, err := s.Lookup(firstHash, t0); err != nil || got.ID != first.ID {
				t.Fatalf("Lookup(first secret) = %d, %v; want token %d", got.ID, err, first.ID)
			}
			before := map[string][]token.Token{"alice": listAll(t, s, "alice"), "bob": listAll(t, s, "bob")}

			retry, retryHash := newToken(t, tt.user, "retry")
			got, replay, err := s.Create(retry, CreateOptions{Now: tt.at, Idempotency: idemFor(tt.user, clientKey, tt.req, "sealed-2")})
			nextID := first.ID + 1
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) || errors.Is(err, ErrUnavailable) {
					t.Fatalf("Create = %v, want %v (and not ErrUnavailable)", err, tt.wantErr)
				}
				if got.ID != 0 || replay != nil {
					t.Errorf("refused Create returned token %d, replay %+v; want neither", got.ID, replay)
				}
			case tt.wantReplay:
				if err != nil || replay == nil {
					t.Fatalf("Create = %v, replay %+v; want a replay", err, replay)
				}
				if string(replay.Sealed) != "sealed-1" {
					t.Errorf("Replay.Sealed = %q, want the first request's %q", replay.Sealed, "sealed-1")
				}
				if !equalTokens(got, first) {
					t.Errorf("replayed token\n got  %+v\n want %+v (the first one)", got, first)
				}
			default:
				if err != nil || replay != nil {
					t.Fatalf("Create = %v, replay %+v; want a new token", err, replay)
				}
				if got.ID != first.ID+1 || got.UserID != tt.user || got.SecretHash != retryHash || got.Name != "retry" {
					t.Errorf("new token = %+v, want id %d of %s named retry with the retry's secret", got, first.ID+1, tt.user)
				}
				nextID++
			}

			if tt.wantErr != nil || tt.wantReplay {
				// Nothing new is stored: not the token, not its secret.
				for _, u := range []string{"alice", "bob"} {
					assertSameTokens(t, "List("+u+") after the retry", listAll(t, s, u), before[u])
				}
				assertNotIndexed(t, s, retryHash, "the retry's secret")
			} else {
				want := append([]token.Token{got}, before[tt.user]...)
				assertSameTokens(t, "List("+tt.user+") after the retry", listAll(t, s, tt.user), want)
				for u, ts := range before {
					if u != tt.user {
						assertSameTokens(t, "List("+u+") after the retry", listAll(t, s, u), ts)
					}
				}
				if l, err := s.Lookup(retryHash, t0); err != nil || l.ID != got.ID {
					t.Errorf("Lookup(retry's secret) = %d, %v; want token %d", l.ID, err, got.ID)
				}
				// The key now names the new token: a retry of the new
				// request replays it.
				again, r, err := s.Create(mustToken(t, tt.user), CreateOptions{Now: tt.at.Add(time.Second), Idempotency: idemFor(tt.user, clientKey, tt.req, "sealed-3")})
				if err != nil || r == nil || again.ID != got.ID || string(r.Sealed) != "sealed-2" {
					t.Errorf("retry of the new request = token %d, replay %+v, %v; want a replay of token %d with sealed-2", again.ID, r, err, got.ID)
				}
			}
			if tt.user != "alice" {
				// Alice's key is untouched by bob's use of the same client key.
				again, r, err := s.Create(mustToken(t, "alice"), CreateOptions{Now: t0.Add(2 * time.Second), Idempotency: idemFor("alice", clientKey, "req-A", "sealed-4")})
				if err != nil || r == nil || again.ID != first.ID || string(r.Sealed) != "sealed-1" {
					t.Errorf("alice's retry after bob's create = token %d, replay %+v, %v; want a replay of %d", again.ID, r, err, first.ID)
				}
			}
			if got, err := s.GetForUser("bob", bobs.ID); err != nil || !equalTokens(got, bobs) {
				t.Errorf("bob's bystander token = %+v, %v; want it unchanged", got, err)
			}
			assertNextID(t, s, nextID)
			if err := s.Verify(); err != nil {
				t.Errorf("Verify = %v", err)
			}
		})
	}
}

// TestCreateIdempotentReplayOfRevokedToken checks that a retry within the
// window answers with the token created the first time, as it is now,
// rather than minting a second one because the first was revoked.
func TestCreateIdempotentReplayOfRevokedToken(t *testing.T) {
	s, _ := openTemp(t)
	first, _, _ := createWith(t, s, "alice", "first", CreateOptions{Now: t0, Idempotency: idemFor("alice", clientKey, "req", "sealed")})
	revoked, err := s.Revoke("alice", first.ID, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	got, replay, err := s.Create(mustToken(t, "alice"), CreateOptions{Now: t0.Add(time.Hour), Idempotency: idemFor("alice", clientKey, "req", "other")})
	if err != nil || replay == nil {
		t.Fatalf("retry = %v, replay %+v; want a replay", err, replay)
	}
	if !equalTokens(got, revoked) {
		t.Errorf("replayed %+v, want the first token as it is now %+v", got, revoked)
	}
	if ids := tokenIDs(listAll(t, s, "alice")); !slices.Equal(ids, []uint64{first.ID}) {
		t.Errorf("alice's tokens = %v, want only %d", ids, first.ID)
	}
}

// tokenSpec describes a token to set up: whose, when it expires (zero:
// never) and whether it is revoked.
type tokenSpec struct {
	user    string
	expires time.Time
	revoked bool
}

func TestCreateMaxLive(t *testing.T) {
	active := tokenSpec{user: "alice"}
	tests := []struct {
		name     string
		existing []tokenSpec
		maxLive  int
		now      time.Time
		refused  bool
	}{
		{"no tokens, limit 1", nil, 1, t0, false},
		{"one below the limit", []tokenSpec{active, active}, 3, t0, false},
		{"at the limit", []tokenSpec{active, active}, 2, t0, true},
		{"at a limit of 1", []tokenSpec{active}, 1, t0, true},
		{"zero means no limit", []tokenSpec{active, active, active}, 0, t0, false},
		{"revoked tokens do not count", []tokenSpec{active, {user: "alice", revoked: true}, {user: "alice", revoked: true}}, 2, t0, false},
		{"only expired tokens", []tokenSpec{{user: "alice", expires: t0.Add(-time.Hour)}, {user: "alice", expires: t0}}, 1, t0, false},
		{"expired tokens do not count, room left", []tokenSpec{active, {user: "alice", expires: t0.Add(-time.Hour)}, {user: "alice", expires: t0}}, 2, t0, false},
		{"a token expiring after now counts", []tokenSpec{active, {user: "alice", expires: t0.Add(time.Second)}}, 2, t0, true},
		{"expiry is judged at Now", []tokenSpec{active, {user: "alice", expires: t0.Add(time.Hour)}}, 2, t0.Add(time.Hour), false},
		{"revoked and expired does not count", []tokenSpec{active, {user: "alice", expires: t0.Add(-time.Hour), revoked: true}}, 2, t0, false},
		{"other users' tokens do not count", []tokenSpec{{user: "bob"}, {user: "bob"}, {user: "bob"}}, 1, t0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTemp(t)
			for i, sp := range tt.existing {
				tok, _ := newToken(t, sp.user, fmt.Sprint("existing ", i))
				tok.ExpiresAt = sp.expires
				tok, _, err := s.Create(tok, CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if sp.revoked {
					if _, err := s.Revoke(sp.user, tok.ID, t0.Add(-2*time.Hour)); err != nil {
						t.Fatal(err)
					}
				}
			}
			before := listAll(t, s, "alice")

			tok, h := newToken(t, "alice", "new")
			got, replay, err := s.Create(tok, CreateOptions{Now: tt.now, MaxLive: tt.maxLive})
			if tt.refused {
				if !errors.Is(err, token.ErrConflict) || errors.Is(err, ErrUnavailable) {
					t.Fatalf("Create past the limit = %v, want token.ErrConflict", err)
				}
				if got.ID != 0 || replay != nil {
					t.Errorf("refused Create returned token %d, replay %+v", got.ID, replay)
				}
				assertSameTokens(t, "List(alice) after the refusal", listAll(t, s, "alice"), before)
				assertNotIndexed(t, s, h, "the refused token's secret")
				assertNextID(t, s, uint64(len(tt.existing)+1))
				return
			}
			if err != nil || replay != nil {
				t.Fatalf("Create = %v, replay %+v; want a new token", err, replay)
			}
			if want := uint64(len(tt.existing) + 1); got.ID != want {
				t.Errorf("new token id = %d, want %d", got.ID, want)
			}
			if ids := tokenIDs(listAll(t, s, "alice")); len(ids) != len(before)+1 || ids[0] != got.ID {
				t.Errorf("alice's tokens = %v, want %d first, then the %d before", ids, got.ID, len(before))
			}
		})
	}
}

// TestCreateMaxLiveWithIdempotency checks how the quota and idempotency
// meet: a retry of a create that succeeded is replayed even once the user
// is at the limit, and a create the quota refused leaves no idempotency
// record behind, so its retry after room is made creates the token.
func TestCreateMaxLiveWithIdempotency(t *testing.T) {
	s, _ := openTemp(t)
	opts := func(ckey, sealed string, at time.Time) CreateOptions {
		return CreateOptions{Now: at, MaxLive: 1, Idempotency: idemFor("alice", ckey, "req", sealed)}
	}
	first, _, _ := createWith(t, s, "alice", "first", opts("key-one-0123456789", "s1", t0))

	got, replay, err := s.Create(mustToken(t, "alice"), opts("key-one-0123456789", "s1-retry", t0.Add(time.Minute)))
	if err != nil || replay == nil || got.ID != first.ID {
		t.Fatalf("retry at the limit = token %d, replay %+v, %v; want a replay of %d", got.ID, replay, err, first.ID)
	}

	_, replay, err = s.Create(mustToken(t, "alice"), opts("key-two-0123456789", "s2", t0.Add(time.Minute)))
	if !errors.Is(err, token.ErrConflict) || replay != nil {
		t.Fatalf("second key at the limit = %v, replay %+v; want token.ErrConflict", err, replay)
	}
	if _, err := s.Revoke("alice", first.ID, t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	second, h, replay := createWith(t, s, "alice", "second", opts("key-two-0123456789", "s2-retry", t0.Add(3*time.Minute)))
	if replay != nil || second.ID == first.ID || second.SecretHash != h {
		t.Fatalf("retry of the refused create after a revoke = token %d, replay %+v; want a new token", second.ID, replay)
	}
	got, replay, err = s.Create(mustToken(t, "alice"), opts("key-two-0123456789", "s2-again", t0.Add(4*time.Minute)))
	if err != nil || replay == nil || got.ID != second.ID || string(replay.Sealed) != "s2-retry" {
		t.Errorf("retry of the now successful create = token %d, replay %+v, %v; want a replay of %d with s2-retry", got.ID, replay, err, second.ID)
	}
}

func TestPurgeIdempotency(t *testing.T) {
	// Three idempotent creates, at t0, t0+1h and t0+2h.
	created := []time.Time{t0, t0.Add(time.Hour), t0.Add(2 * time.Hour)}
	tests := []struct {
		name   string
		cutoff time.Time
		want   int
	}{
		{"cutoff before all", t0.Add(-time.Second), 0},
		{"cutoff at the oldest", t0, 0},
		{"cutoff a second after the oldest", t0.Add(time.Second), 1},
		{"cutoff at the middle", t0.Add(time.Hour), 1},
		{"cutoff just after the middle", t0.Add(time.Hour + time.Second), 2},
		{"cutoff at the newest", t0.Add(2 * time.Hour), 2},
		{"cutoff after all", t0.Add(3 * time.Hour), 3},
		{"cutoff far in the future", t0.Add(1000 * idemWindow), 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTemp(t)
			var firsts []token.Token
			for i, at := range created {
				tok, _, _ := createWith(t, s, "alice", fmt.Sprint("first ", i),
					CreateOptions{Now: at, Idempotency: idemFor("alice", fmt.Sprint("client-key-", i, "-0123456789"), "req", fmt.Sprint("sealed ", i))})
				firsts = append(firsts, tok)
			}
			// Someone else's token without a key, which no purge touches.
			bobs, _ := create(t, s, "bob", "no key")
			before := listAll(t, s, "alice")

			n, err := s.PurgeIdempotency(tt.cutoff)
			if err != nil || n != tt.want {
				t.Fatalf("PurgeIdempotency(%v) = %d, %v; want %d", tt.cutoff, n, err, tt.want)
			}
			// Purging forgets keys, never tokens.
			assertSameTokens(t, "List(alice) after the purge", listAll(t, s, "alice"), before)
			if got, err := s.GetForUser("bob", bobs.ID); err != nil || !equalTokens(got, bobs) {
				t.Errorf("bob's token after the purge = %+v, %v", got, err)
			}
			// A second purge with the same cutoff has nothing left to do.
			if n, err := s.PurgeIdempotency(tt.cutoff); err != nil || n != 0 {
				t.Errorf("second PurgeIdempotency(%v) = %d, %v; want 0", tt.cutoff, n, err)
			}

			// Retries, all within every key's window: a kept key replays its
			// token, a purged one creates a new token.
			retryAt := t0.Add(3 * time.Hour)
			nextID := bobs.ID + 1
			for i, at := range created {
				got, replay, err := s.Create(mustToken(t, "alice"),
					CreateOptions{Now: retryAt, Idempotency: idemFor("alice", fmt.Sprint("client-key-", i, "-0123456789"), "req", "retry")})
				if err != nil {
					t.Fatalf("retry of key %d = %v", i, err)
				}
				if kept := !at.Before(tt.cutoff); kept {
					if replay == nil || got.ID != firsts[i].ID || string(replay.Sealed) != fmt.Sprint("sealed ", i) {
						t.Errorf("retry of kept key %d (created %v) = token %d, replay %+v; want a replay of %d", i, at, got.ID, replay, firsts[i].ID)
					}
					continue
				}
				if replay != nil || got.ID != nextID {
					t.Errorf("retry of purged key %d (created %v) = token %d, replay %+v; want new token %d", i, at, got.ID, replay, nextID)
				}
				nextID++
			}
		})
	}

	t.Run("empty store", func(t *testing.T) {
		s, _ := openTemp(t)
		if n, err := s.PurgeIdempotency(t0); err != nil || n != 0 {
			t.Errorf("PurgeIdempotency on an empty store = %d, %v; want 0", n, err)
		}
	})
}

func TestOpenMustExist(t *testing.T) {
	tests := []struct {
		name string
		// setup returns the path to open; dir is empty.
		setup     func(t *testing.T, dir string) string
		mustExist bool
		wantErr   error
		wantTok   bool // the existing database's token is there
	}{
		{"existing database", existingDB, true, nil, true},
		{"existing empty file", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "empty.db")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return p
		}, true, nil, false},
		{"missing file", func(t *testing.T, dir string) string { return filepath.Join(dir, "typo.db") }, true, ErrNoDatabase, false},
		{"missing directory", func(t *testing.T, dir string) string { return filepath.Join(dir, "no", "such", "typo.db") }, true, ErrNoDatabase, false},
		{"dangling symlink", func(t *testing.T, dir string) string {
			p := filepath.Join(dir, "link.db")
			if err := os.Symlink(filepath.Join(dir, "target.db"), p); err != nil {
				t.Skipf("symlink: %v", err)
			}
			return p
		}, true, ErrNoDatabase, false},
		{"missing file without MustExist", func(t *testing.T, dir string) string { return filepath.Join(dir, "new.db") }, false, nil, false},
		{"existing database without MustExist", existingDB, false, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tt.setup(t, dir)
			before := dirEntries(t, dir)
			s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond, MustExist: tt.mustExist})
			if tt.wantErr != nil {
				if err == nil {
					_ = s.Close()
					t.Fatalf("Open(%q, MustExist) succeeded, want %v", path, tt.wantErr)
				}
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Open(%q, MustExist) = %v, want %v", path, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the path %q", err, path)
				}
				// No empty database (or directory) is left behind.
				if after := dirEntries(t, dir); !slices.Equal(after, before) {
					t.Errorf("refused Open changed %s: %v, was %v", dir, after, before)
				}
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("Stat(%q) after refused Open = %v, want it still missing", path, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q, MustExist=%v) = %v", path, tt.mustExist, err)
			}
			defer s.Close()
			ts, err := s.List("alice")
			switch {
			case tt.wantTok && (err != nil || len(ts) != 1 || ts[0].Name != "kept"):
				t.Errorf("List(alice) = %+v, %v; want the existing token", ts, err)
			case !tt.wantTok && !errors.Is(err, token.ErrUserNotFound):
				t.Errorf("List(alice) on a new database = %v, want token.ErrUserNotFound", err)
			}
			// The store is writable either way.
			create(t, s, "bob", "new")
		})
	}
}

// existingDB makes a database with one token of alice's, named kept.
func existingDB(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "tokend.db")
	s, err := Open(p, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	create(t, s, "alice", "kept")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// pageAll reads every page of user's tokens with p's limit and filter,
// checking each page's shape (at most Limit tokens; full unless it is the
// last; the cursor is the page's last id, and 0 on the last page, so no
// empty page follows), and returns the tokens in page order. If onPage is
// not nil, it is called with each page and its cursor as soon as the page
// is read, before the next one is.
func pageAll(t *testing.T, s *Store, user string, p Page, onPage func(ts []token.Token, next uint64)) []token.Token {
	t.Helper()
	var all []token.Token
	p.Before = 0
	for page := 0; ; page++ {
		if page > 100 {
			t.Fatalf("ListPage(%q) is still paging after %d pages", user, page)
		}
		ts, next, err := s.ListPage(user, p)
		if err != nil {
			t.Fatalf("ListPage(%q, page %d) = %v", user, page, err)
		}
		if p.Limit > 0 && len(ts) > p.Limit {
			t.Errorf("page %d holds %d tokens, over the limit %d", page, len(ts), p.Limit)
		}
		if len(ts) == 0 && page > 0 {
			t.Errorf("page %d is empty: the cursor of page %d should have been 0", page, page-1)
		}
		all = append(all, ts...)
		if onPage != nil {
			onPage(ts, next)
		}
		if next == 0 {
			return all
		}
		if p.Limit > 0 && len(ts) != p.Limit {
			t.Errorf("page %d, not the last, holds %d tokens, want the limit %d", page, len(ts), p.Limit)
		}
		if len(ts) == 0 || next != ts[len(ts)-1].ID {
			t.Fatalf("page %d %v has cursor %d, want its last id", page, tokenIDs(ts), next)
		}
		p.Before = next
	}
}

func TestListPagePaging(t *testing.T) {
	s, _ := openTemp(t)
	// Seven of alice's tokens, each followed by one of bob's, so that her
	// ids are not contiguous.
	for i := range 7 {
		create(t, s, "alice", fmt.Sprint("a", i))
		create(t, s, "bob", fmt.Sprint("b", i))
	}
	all := listAll(t, s, "alice")
	if len(all) != 7 {
		t.Fatalf("alice has %d tokens, want 7", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i-1].ID <= all[i].ID {
			t.Fatalf("List not newest first: %v", tokenIDs(all))
		}
	}
	for _, limit := range []int{1, 2, 3, 6, 7, 8, 100, 0} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			got := pageAll(t, s, "alice", Page{Limit: limit}, nil)
			// Every token exactly once, newest first, none of bob's.
			assertSameTokens(t, "pages", got, all)
		})
	}
	t.Run("pages", func(t *testing.T) {
		for _, tc := range []struct {
			limit int
			want  []int // page sizes
		}{
			{1, []int{1, 1, 1, 1, 1, 1, 1}},
			{3, []int{3, 3, 1}},
			{7, []int{7}}, // a full last page has no cursor: no empty page follows
			{0, []int{7}},
		} {
			var sizes []int
			pageAll(t, s, "alice", Page{Limit: tc.limit}, func(ts []token.Token, _ uint64) {
				sizes = append(sizes, len(ts))
			})
			if !slices.Equal(sizes, tc.want) {
				t.Errorf("limit %d: page sizes %v, want %v", tc.limit, sizes, tc.want)
			}
		}
	})
}

// TestListPageStableWhileCreating checks Page.Before's promise: ids only
// grow, so tokens created between page reads do not shift later pages:
// every token there at the first read is listed once, and the new ones
// show up only on a fresh first page.
func TestListPageStableWhileCreating(t *testing.T) {
	s, _ := openTemp(t)
	for i := range 5 {
		create(t, s, "alice", fmt.Sprint("a", i))
	}
	orig := listAll(t, s, "alice")

	var created []uint64
	page := 0
	got := pageAll(t, s, "alice", Page{Limit: 2}, func(_ []token.Token, next uint64) {
		if next == 0 {
			return
		}
		// Others create tokens between page reads, alice among them.
		for i := range page + 1 {
			n, _ := create(t, s, "alice", fmt.Sprint("new", page, i))
			created = append(created, n.ID)
			create(t, s, "bob", fmt.Sprint("b", page, i))
		}
		page++
	})
	assertSameTokens(t, "pages read while creating", got, orig)

	first, _, err := s.ListPage("alice", Page{Limit: 1})
	if err != nil || len(first) != 1 || first[0].ID != created[len(created)-1] {
		t.Errorf("a fresh first page = %v, %v; want the newest token %d", tokenIDs(first), err, created[len(created)-1])
	}
}

func TestListPageStatusFilter(t *testing.T) {
	s, _ := openTemp(t)
	now := t0.Add(time.Hour)
	// Alice's tokens, oldest first, each with the status it has at now.
	specs := []struct {
		name    string
		expires time.Time
		revoked bool
		want    token.Status
	}{
		{"active, oldest", time.Time{}, false, token.StatusActive},
		{"expired long ago", t0.Add(-time.Hour), false, token.StatusExpired},
		{"revoked", time.Time{}, true, token.StatusRevoked},
		{"active, expires after now", now.Add(time.Second), false, token.StatusActive},
		{"revoked and expired", t0, true, token.StatusRevoked},
		{"expires exactly now", now, false, token.StatusExpired},
		{"active", time.Time{}, false, token.StatusActive},
		{"revoked, newest", time.Time{}, true, token.StatusRevoked},
		{"expired, newest", t0.Add(time.Minute), false, token.StatusExpired},
	}
	want := map[token.Status][]uint64{}
	for _, sp := range specs {
		tok, _ := newToken(t, "alice", sp.name)
		tok.ExpiresAt = sp.expires
		tok, _, err := s.Create(tok, CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sp.revoked {
			if _, err := s.Revoke("alice", tok.ID, t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
		}
		want[sp.want] = append([]uint64{tok.ID}, want[sp.want]...) // newest first
		// Bob's tokens of every kind, which no filter may let through.
		b, _ := newToken(t, "bob", sp.name)
		b.ExpiresAt = sp.expires
		if _, _, err := s.Create(b, CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Prune alice's live index at now, as her next create would, so that
	// Live walks an index that lost entries as well as one that holds
	// expired tokens.
	pruned := func() {
		err := s.update(func(tx *bolt.Tx) error { _, _, err := countLive(tx, "alice", now); return err })
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		st   token.Status
		live bool
		prep func()
	}{
		{token.StatusActive, false, nil},
		{token.StatusExpired, false, nil},
		{token.StatusRevoked, false, nil},
		{token.StatusActive, true, nil},
		{token.StatusActive, true, pruned},
	} {
		if tc.prep != nil {
			tc.prep()
		}
		for _, limit := range []int{1, 2, 3, 0} {
			t.Run(fmt.Sprint(tc.st, " live ", tc.live, " limit ", limit), func(t *testing.T) {
				keep := func(tk *token.Token) bool {
					if tk.UserID != "alice" {
						t.Errorf("Keep saw %s's token %d", tk.UserID, tk.ID)
					}
					if tc.live && !tk.RevokedAt.IsZero() {
						t.Errorf("Keep saw revoked token %d with Live: the walk is not of the live index", tk.ID)
					}
					return tk.Status(now) == tc.st
				}
				got := pageAll(t, s, "alice", Page{Limit: limit, Keep: keep, Live: tc.live}, nil)
				if ids := tokenIDs(got); !slices.Equal(ids, want[tc.st]) {
					t.Errorf("%s tokens = %v, want %v", tc.st, ids, want[tc.st])
				}
			})
		}
	}
	if n := len(liveEntries(t, s, "alice")); n != 3 {
		t.Errorf("alice's live index holds %d entries after the prune, want her 3 active tokens", n)
	}
	t.Run("live, no live tokens", func(t *testing.T) {
		for _, tk := range listAll(t, s, "bob") {
			if _, err := s.Revoke("bob", tk.ID, t0); err != nil {
				t.Fatal(err)
			}
		}
		ts, next, err := s.ListPage("bob", Page{Limit: 2, Live: true})
		if err != nil || len(ts) != 0 || next != 0 {
			t.Errorf("Live ListPage of a user with only revoked tokens = %v, cursor %d, %v; want none", tokenIDs(ts), next, err)
		}
	})
	t.Run("nothing kept", func(t *testing.T) {
		ts, next, err := s.ListPage("alice", Page{Limit: 2, Keep: func(*token.Token) bool { return false }})
		if err != nil || len(ts) != 0 || next != 0 {
			t.Errorf("ListPage keeping nothing = %v, cursor %d, %v; want no tokens, no cursor, no error", tokenIDs(ts), next, err)
		}
	})
}

// TestListPageCursors checks cursors that are not simply the last page's:
// Before is an id to continue below, whoever owns it or whether it exists
// at all, and never brings in another user's tokens. (The API's cursors
// are opaque strings that package service decodes and refuses when
// malformed; the store takes any id.)
func TestListPageCursors(t *testing.T) {
	s, _ := openTemp(t)
	var bobIDs []uint64
	for i := range 4 {
		create(t, s, "alice", fmt.Sprint("a", i))
		b, _ := create(t, s, "bob", fmt.Sprint("b", i))
		bobIDs = append(bobIDs, b.ID)
	}
	all := listAll(t, s, "alice") // ids 7, 5, 3, 1
	below := func(before uint64) []uint64 {
		var ids []uint64
		for _, tk := range all {
			if tk.ID < before {
				ids = append(ids, tk.ID)
			}
		}
		return ids
	}
	for _, tc := range []struct {
		name   string
		before uint64
	}{
		{"max uint64", math.MaxUint64},
		{"past the newest id ever", all[0].ID + 100},
		{"just past alice's newest", all[0].ID + 1},
		{"alice's newest", all[0].ID},
		{"a bob token's id", bobIDs[1]},
		{"alice's oldest", all[len(all)-1].ID},
		{"1", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts, next, err := s.ListPage("alice", Page{Before: tc.before})
			if err != nil {
				t.Fatalf("ListPage(Before %d) = %v", tc.before, err)
			}
			if ids, want := tokenIDs(ts), below(tc.before); !slices.Equal(ids, want) {
				t.Errorf("ListPage(Before %d) = %v, want %v", tc.before, ids, want)
			}
			if next != 0 {
				t.Errorf("ListPage(Before %d) without a limit has cursor %d, want 0", tc.before, next)
			}
		})
	}
	t.Run("unknown user", func(t *testing.T) {
		for _, p := range []Page{{}, {Limit: 1}, {Before: all[0].ID, Limit: 2, Keep: func(*token.Token) bool { return true }}} {
			for _, u := range []string{"mallory", "alic", ""} {
				ts, next, err := s.ListPage(u, p)
				if !errors.Is(err, token.ErrUserNotFound) || len(ts) != 0 || next != 0 {
					t.Errorf("ListPage(%q, %+v) = %v, cursor %d, %v; want token.ErrUserNotFound and nothing else", u, p, tokenIDs(ts), next, err)
				}
			}
		}
	})
}

// TestOpenCacheEntries checks how Options.CacheEntries is read: zero means
// DefaultCacheEntries, a positive number bounds the cache, and a negative
// one turns it off.
func TestOpenCacheEntries(t *testing.T) {
	for _, tc := range []struct {
		entries int
		wantMax int // 0: off
		wantLen int // entries cached after looking up 4 tokens
	}{
		{0, DefaultCacheEntries, 4},
		{2, 2, 2},
		{-1, 0, 0},
		{-1000, 0, 0},
	} {
		t.Run(fmt.Sprint(tc.entries), func(t *testing.T) {
			s, err := Open(filepath.Join(t.TempDir(), "c.db"), Options{CacheEntries: tc.entries})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if tc.wantMax > 0 && s.cache.max != tc.wantMax || tc.wantMax == 0 && s.cache.max > 0 {
				t.Errorf("cache bound = %d, want %d (0: off)", s.cache.max, tc.wantMax)
			}
			for i := range 4 {
				tok, h := create(t, s, "alice", fmt.Sprint(i))
				for range 2 {
					if got, err := s.Lookup(h, t0); err != nil || got.ID != tok.ID {
						t.Fatalf("Lookup = %d, %v; want %d", got.ID, err, tok.ID)
					}
				}
			}
			if n := len(s.cache.m); n != tc.wantLen {
				t.Errorf("cache holds %d entries, want %d", n, tc.wantLen)
			}
		})
	}
}

// TestLookupCacheDisabled checks that with the cache off every write is
// visible to the next Lookup, and nothing is ever cached.
func TestLookupCacheDisabled(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "nocache.db"), Options{CacheEntries: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkWritesVisible(t, s, false)
}

func TestSize(t *testing.T) {
	s, path := openTemp(t)
	fileSize := func() int64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	n0 := s.Size()
	if n0 <= 0 || n0%int64(os.Getpagesize()) != 0 {
		t.Errorf("Size of a new store = %d, want a positive number of %d-byte pages", n0, os.Getpagesize())
	}
	if fs := fileSize(); n0 > fs {
		t.Errorf("Size = %d, more than the file's %d bytes", n0, fs)
	}
	batch := make([]token.Token, 2000)
	for i := range batch {
		batch[i], _ = newToken(t, fmt.Sprint("user-", i%10), strings.Repeat("n", 90)+fmt.Sprint(i))
	}
	if _, err := s.CreateBatch(batch); err != nil {
		t.Fatal(err)
	}
	n1 := s.Size()
	// 2000 records of over 100 bytes, with their index entries.
	if n1 < n0+2000*100 {
		t.Errorf("Size after 2000 tokens = %d, want at least %d more than %d", n1, 2000*100, n0)
	}
	if fs := fileSize(); n1 > fs {
		t.Errorf("Size = %d, more than the file's %d bytes", n1, fs)
	}
	if n := s.Size(); n != n1 {
		t.Errorf("Size with no write between = %d, then %d", n1, n)
	}
}

// TestCloseTwice checks that a second Close is harmless, that reads after
// Close fail rather than panic, and that the file can be opened again.
func TestCloseTwice(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokend.db")
	s, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tok, h := create(t, s, "alice", "kept")
	if _, err := s.Lookup(h, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	var unknown secret.Hash
	unknown[0] = 1
	for name, read := range map[string]func() error{
		"GetForUser": func() error { _, err := s.GetForUser("alice", tok.ID); return err },
		"List":       func() error { _, err := s.List("alice"); return err },
		"ListPage":   func() error { _, _, err := s.ListPage("alice", Page{Limit: 1}); return err },
		"Lookup":     func() error { _, err := s.Lookup(unknown, t0); return err },
		// The token was cached by the Lookup before Close.
		"Lookup of a cached token": func() error { _, err := s.Lookup(h, t0); return err },
		"LastUsageBatch":           func() error { _, err := s.LastUsageBatch(); return err },
		"Verify":                   func() error { return s.Verify() },
	} {
		if err := read(); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s after Close = %v, want ErrUnavailable", name, err)
		}
	}
	_ = s.Size() // must not panic

	s2, err := Open(path, Options{LockTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open after two Closes = %v", err)
	}
	defer s2.Close()
	if got, err := s2.GetForUser("alice", tok.ID); err != nil || got.Name != "kept" {
		t.Errorf("GetForUser after reopen = %+v, %v", got, err)
	}
}

// TestMutateFnErrorWritesNothing checks that when fn fails after changing
// the token, nothing of its changes is stored or indexed, whether or not
// the token was cached, and fn's error comes back.
func TestMutateFnErrorWritesNothing(t *testing.T) {
	var newHash secret.Hash
	newHash[0] = 0xab
	ips, err := token.ParseAllowedIPs([]string{"10.0.0.0/8"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(*token.Token)
	}{
		{"rename", func(t *token.Token) { t.Name = "renamed" }},
		{"rotate", func(t *token.Token) {
			t.PrevSecretHash, t.PrevSecretUntil, t.SecretHash = t.SecretHash, t0.Add(time.Hour), newHash
		}},
		{"rotate without grace", func(t *token.Token) { t.SecretHash = newHash }},
		{"revoke", func(t *token.Token) { t.RevokedAt = t0 }},
		{"restrict", func(t *token.Token) { t.AllowedIPs = ips }},
		{"change allowed IPs in place", func(t *token.Token) { t.AllowedIPs[0] = netip.MustParsePrefix("192.0.2.0/24") }},
	} {
		for _, cached := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, cached %v", tc.name, cached), func(t *testing.T) {
				s, _ := openTemp(t)
				tok, h := newToken(t, "alice", "a")
				tok.AllowedIPs = token.AllowedIPs{netip.MustParsePrefix("198.51.100.0/24")}
				tok, _, err := s.Create(tok, CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if cached {
					if _, err := s.Lookup(h, t0); err != nil {
						t.Fatal(err)
					}
				}
				refuse := errors.New("refused by fn")
				got, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
					tc.change(t)
					return refuse
				})
				if !errors.Is(err, refuse) || got.ID != 0 {
					t.Fatalf("Mutate = %+v, %v; want fn's error and no token", got, err)
				}
				if stored, err := s.GetForUser("alice", tok.ID); err != nil || !equalTokens(stored, tok) {
					t.Errorf("stored after a failed Mutate = %+v, %v; want %+v", stored, err, tok)
				}
				if l, err := s.Lookup(h, t0.Add(2*time.Hour)); err != nil || !equalTokens(l, tok) {
					t.Errorf("Lookup(old secret) after a failed Mutate = %+v, %v; want %+v", l, err, tok)
				}
				assertNotIndexed(t, s, newHash, "the new secret of a failed rotation")
				if err := s.Verify(); err != nil {
					t.Errorf("Verify = %v", err)
				}
			})
		}
	}
}

// TestMutateKeepsIDAndOwner checks that fn cannot move a token to another
// id or user: Mutate stores it where it was.
func TestMutateKeepsIDAndOwner(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	got, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
		t.ID, t.UserID, t.Name = 999, "mallory", "renamed"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != tok.ID || got.UserID != "alice" || got.Name != "renamed" {
		t.Errorf("Mutate returned %+v, want token %d of alice, renamed", got, tok.ID)
	}
	if l, err := s.Lookup(h, t0); err != nil || l.ID != tok.ID || l.UserID != "alice" || l.Name != "renamed" {
		t.Errorf("Lookup = %+v, %v", l, err)
	}
	if _, err := s.List("mallory"); !errors.Is(err, token.ErrUserNotFound) {
		t.Errorf("List(mallory) = %v, want token.ErrUserNotFound", err)
	}
	if _, err := s.GetForUser("alice", 999); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("GetForUser(alice, 999) = %v, want token.ErrNotFound", err)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify = %v", err)
	}
}

// TestMutateRotationOntoTakenSecret checks that a rotation to a secret
// hash another token holds is refused and changes neither token.
func TestMutateRotationOntoTakenSecret(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rotate func(t *token.Token, taken secret.Hash)
	}{
		{"as the secret", func(t *token.Token, taken secret.Hash) { t.SecretHash = taken }},
		{"as the previous secret", func(t *token.Token, taken secret.Hash) {
			t.PrevSecretHash, t.PrevSecretUntil = taken, t0.Add(time.Hour)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := openTemp(t)
			a, ah := create(t, s, "alice", "a")
			b, bh := create(t, s, "bob", "b")
			if _, err := s.Lookup(bh, t0); err != nil { // cache bob's
				t.Fatal(err)
			}
			_, err := s.Mutate("alice", a.ID, func(t *token.Token) error { tc.rotate(t, bh); return nil })
			if err == nil || errors.Is(err, ErrUnavailable) {
				t.Fatalf("Mutate onto bob's secret hash = %v, want a (non-ErrUnavailable) error", err)
			}
			for _, c := range []struct {
				h    secret.Hash
				want token.Token
			}{{ah, a}, {bh, b}} {
				if got, err := s.Lookup(c.h, t0); err != nil || !equalTokens(got, c.want) {
					t.Errorf("Lookup = %+v, %v; want %+v", got, err, c.want)
				}
				if got, err := s.GetForUser(c.want.UserID, c.want.ID); err != nil || !equalTokens(got, c.want) {
					t.Errorf("GetForUser = %+v, %v; want %+v", got, err, c.want)
				}
			}
			if err := s.Verify(); err != nil {
				t.Errorf("Verify = %v", err)
			}
		})
	}
}

func TestCreateBatch(t *testing.T) {
	s, _ := openTemp(t)
	pre, preHash := create(t, s, "alice", "pre")

	in := make([]token.Token, 3)
	hashes := make([]secret.Hash, 3)
	for i, u := range []string{"alice", "bob", "alice"} {
		in[i], hashes[i] = newToken(t, u, fmt.Sprint("batch ", i))
	}
	out, err := s.CreateBatch(in)
	if err != nil {
		t.Fatalf("CreateBatch = %v", err)
	}
	if len(out) != len(in) {
		t.Fatalf("CreateBatch returned %d tokens, want %d", len(out), len(in))
	}
	for i := range out {
		want := in[i]
		want.ID = pre.ID + 1 + uint64(i) // in input order
		if !equalTokens(out[i], want) {
			t.Errorf("CreateBatch #%d = %+v, want %+v", i, out[i], want)
		}
		if got, err := s.Lookup(hashes[i], t0); err != nil || !equalTokens(got, want) {
			t.Errorf("Lookup(batch #%d) = %+v, %v", i, got, err)
		}
	}
	if ids := tokenIDs(listAll(t, s, "alice")); !slices.Equal(ids, []uint64{out[2].ID, out[0].ID, pre.ID}) {
		t.Errorf("alice's tokens = %v, want %d, %d, %d", ids, out[2].ID, out[0].ID, pre.ID)
	}

	t.Run("empty", func(t *testing.T) {
		for _, batch := range [][]token.Token{nil, {}} {
			out, err := s.CreateBatch(batch)
			if err != nil || len(out) != 0 {
				t.Errorf("CreateBatch(%v) = %v, %v; want nothing", batch, out, err)
			}
		}
	})

	// A batch with one bad token stores none of it.
	dupInBatch, _ := newToken(t, "carol", "dup")
	tooMany := make(token.AllowedIPs, token.MaxAllowedIPs+1)
	for i := range tooMany {
		tooMany[i] = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 32)
	}
	for _, tc := range []struct {
		name    string
		bad     func() token.Token
		wantErr error // nil: any error
	}{
		{"secret of an existing token", func() token.Token { b, _ := newToken(t, "carol", "x"); b.SecretHash = preHash; return b }, nil},
		{"secret repeated in the batch", func() token.Token { return dupInBatch }, nil},
		{"too many allowed IPs", func() token.Token { b, _ := newToken(t, "carol", "x"); b.AllowedIPs = tooMany; return b }, token.ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			good, goodHash := newToken(t, "carol", "good")
			before := map[string][]token.Token{"alice": listAll(t, s, "alice"), "bob": listAll(t, s, "bob")}
			_, err := s.CreateBatch([]token.Token{dupInBatch, good, tc.bad()})
			if err == nil || errors.Is(err, ErrUnavailable) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("CreateBatch with a bad token = %v, want an error (%v)", err, tc.wantErr)
			}
			if ts := listAll(t, s, "carol"); len(ts) != 0 {
				t.Errorf("carol's tokens after a failed batch = %v, want none", tokenIDs(ts))
			}
			for u, ts := range before {
				assertSameTokens(t, "List("+u+")", listAll(t, s, u), ts)
			}
			assertNotIndexed(t, s, goodHash, "a good token of a failed batch")
			assertNotIndexed(t, s, dupInBatch.SecretHash, "the first token of a failed batch")
		})
	}
	assertNextID(t, s, out[2].ID+1)
	if err := s.Verify(); err != nil {
		t.Errorf("Verify = %v", err)
	}
}

// TestIdempotencyWindowSubSecond checks that a key is remembered for the
// whole Window from the request's time, and that PurgeIdempotency keeps a
// key created after its cutoff, when the request's time is not a whole
// second (the server passes time.Now()).
func TestIdempotencyWindowSubSecond(t *testing.T) {
	at := t0.Add(900 * time.Millisecond)

	s, _ := openTemp(t)
	first, _, _ := createWith(t, s, "alice", "first", CreateOptions{Now: at, Idempotency: idemFor("alice", clientKey, "req", "sealed")})
	got, replay, err := s.Create(mustToken(t, "alice"), CreateOptions{Now: at.Add(idemWindow - 100*time.Millisecond), Idempotency: idemFor("alice", clientKey, "req", "retry")})
	if err != nil || replay == nil || got.ID != first.ID {
		t.Errorf("retry 100ms before the window ends = token %d, replay %v, %v; want a replay of %d", got.ID, replay != nil, err, first.ID)
	}

	s2, _ := openTemp(t)
	createWith(t, s2, "alice", "first", CreateOptions{Now: at, Idempotency: idemFor("alice", clientKey, "req", "sealed")})
	if n, err := s2.PurgeIdempotency(t0.Add(500 * time.Millisecond)); err != nil || n != 0 {
		t.Errorf("PurgeIdempotency(t0+500ms) of a key created at t0+900ms removed %d, %v; want 0", n, err)
	}
}

// TestCreateReplayCommitsNothing checks Create's "for a retry ... it
// writes nothing": a replay commits no write transaction, so it neither
// costs a disk sync nor fails when the disk takes no writes.
func TestCreateReplayCommitsNothing(t *testing.T) {
	s, _ := openTemp(t)
	first, _, _ := createWith(t, s, "alice", "first", CreateOptions{Now: t0, Idempotency: idemFor("alice", clientKey, "req", "sealed")})
	txid := func() (id int) {
		t.Helper()
		if err := s.db.View(func(tx *bolt.Tx) error { id = tx.ID(); return nil }); err != nil {
			t.Fatal(err)
		}
		return id
	}
	before := txid()
	got, replay, err := s.Create(mustToken(t, "alice"), CreateOptions{Now: t0.Add(time.Minute), Idempotency: idemFor("alice", clientKey, "req", "retry")})
	if err != nil || replay == nil || got.ID != first.ID {
		t.Fatalf("retry = token %d, replay %v, %v; want a replay of %d", got.ID, replay != nil, err, first.ID)
	}
	if after := txid(); after != before {
		t.Errorf("a replay committed a write transaction (txid %d -> %d)", before, after)
	}
}

// TestIdempotencyRecordWithoutNanoseconds checks that a record written
// before created_ns existed is still read, by its whole seconds.
func TestIdempotencyRecordWithoutNanoseconds(t *testing.T) {
	fp := bytes.Repeat([]byte{7}, 32)
	v, err := json.Marshal(map[string]any{"fp": fp, "id": 5, "created": 1700000000, "sealed": []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	e, err := decodeIdem(v)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Created.Equal(time.Unix(1700000000, 0)) || e.TokenID != 5 || string(e.Sealed) != "s" || !bytes.Equal(e.Fingerprint[:], fp) {
		t.Errorf("decodeIdem(old record) = %+v", e)
	}
}

// TestCreateReplayNeverCrossesUsers checks that a key that, by a caller's
// mistake, is the same for two users (the user not mixed in) never
// replays one user's token to the other: the second create is a conflict
// and stores nothing.
func TestCreateReplayNeverCrossesUsers(t *testing.T) {
	s, _ := openTemp(t)
	shared := &Idempotency{Key: sha256.Sum256([]byte("no user in this key")), Fingerprint: sha256.Sum256([]byte("req")), Sealed: []byte("a"), Window: idemWindow}
	createWith(t, s, "alice", "a", CreateOptions{Now: t0, Idempotency: shared})
	createWith(t, s, "bob", "b0", CreateOptions{Now: t0}) // bob exists
	before := listAll(t, s, "bob")
	tok, _ := newToken(t, "bob", "b")
	got, replay, err := s.Create(tok, CreateOptions{Now: t0.Add(time.Second), Idempotency: shared})
	if !errors.Is(err, token.ErrConflict) || replay != nil || got.UserID == "alice" {
		t.Errorf("bob's create under alice's key = %+v, replay %v, %v; want token.ErrConflict", got, replay != nil, err)
	}
	assertSameTokens(t, "bob's tokens", listAll(t, s, "bob"), before)
}

// TestOpenErrorNamesThePathOnce: a file system error opening the database
// says which file, once (it said "open X: open X: not a directory").
func TestOpenErrorNamesThePathOnce(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(notDir, "tokend.db")
	_, err := Open(path, Options{})
	if err == nil || strings.Count(err.Error(), path) != 1 {
		t.Errorf("Open = %v, want an error naming %s once", err, path)
	}
}
