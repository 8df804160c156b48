package store

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// checkWrites calls every writing method of s and checks that each fails
// with ErrUnavailable wrapping a cause that satisfies isCause. tok is a
// token of user "alice" in s.
func checkWrites(t *testing.T, s *Store, tok token.Token, isCause func(error) bool) {
	t.Helper()
	fresh, _ := newToken(t, "alice", "fresh")
	writes := []struct {
		name string
		call func() error
	}{
		{"Create", func() error { _, _, err := s.Create(fresh, CreateOptions{Now: t0}); return err }},
		// It reads first, for a replay, then writes.
		{"idempotent Create", func() error {
			_, _, err := s.Create(fresh, CreateOptions{Now: t0, Idempotency: idemFor("alice", clientKey, "req", "s")})
			return err
		}},
		{"CreateBatch", func() error { _, err := s.CreateBatch([]token.Token{fresh}); return err }},
		{"Revoke", func() error { _, err := s.Revoke("alice", tok.ID, t0); return err }},
		{"Mutate", func() error {
			_, err := s.Mutate("alice", tok.ID, func(t *token.Token) error { t.Name = "renamed"; return nil })
			return err
		}},
		{"ApplyUsage", func() error { return s.ApplyUsage(99, map[uint64]usage.Delta{tok.ID: {Count: 1, Last: t0.Unix()}}) }},
		{"PurgeIdempotency", func() error { _, err := s.PurgeIdempotency(t0); return err }},
		{"CheckWritable", func() error { return s.CheckWritable(context.Background()) }},
	}
	for _, w := range writes {
		err := w.call()
		if !errors.Is(err, ErrUnavailable) || !isCause(err) {
			t.Errorf("%s = %v, want ErrUnavailable wrapping the cause", w.name, err)
		}
		if errors.Is(err, ErrNotDurable) {
			t.Errorf("%s = %v, want nothing written, not ErrNotDurable", w.name, err)
		}
	}
}

// TestReadOnlyDatabaseIsUnavailable opens a file read-only, so that bbolt
// refuses every write transaction, and checks that writes are
// ErrUnavailable (with bbolt's error still visible to errors.Is) while
// reads work.
func TestReadOnlyDatabaseIsUnavailable(t *testing.T) {
	s, path := openTemp(t)
	tok, h := create(t, s, "alice", "kept")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ro := &Store{db: db, cache: newLookupCache(DefaultCacheEntries)}
	t.Cleanup(func() { _ = ro.Close() })

	checkWrites(t, ro, tok, func(err error) bool { return errors.Is(err, berrors.ErrDatabaseReadOnly) })

	if got, err := ro.GetForUser("alice", tok.ID); err != nil || got.Name != "kept" || !got.RevokedAt.IsZero() {
		t.Errorf("GetForUser = %+v, %v; want the token as it was", got, err)
	}
	if got, err := ro.Lookup(h, t0); err != nil || got.ID != tok.ID {
		t.Errorf("Lookup = %d, %v; want token %d", got.ID, err, tok.ID)
	}
	if ts, err := ro.List("alice"); err != nil || len(ts) != 1 {
		t.Errorf("List = %d tokens, %v; want 1", len(ts), err)
	}
}

// TestClosedDatabaseIsUnavailable checks that a write after Close (as
// during shutdown) is ErrUnavailable, not an unknown error.
func TestClosedDatabaseIsUnavailable(t *testing.T) {
	s, _ := openTemp(t)
	tok, _ := create(t, s, "alice", "kept")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkWrites(t, s, tok, func(err error) bool { return errors.Is(err, berrors.ErrDatabaseNotOpen) })
}

// TestDomainErrorsAreNotUnavailable checks that errors returned from
// inside a write transaction keep their identity: they are answers about
// the data, not failures of the disk.
func TestDomainErrorsAreNotUnavailable(t *testing.T) {
	s, _ := openTemp(t)
	mine, _ := create(t, s, "alice", "mine")
	other, _ := create(t, s, "bob", "other")
	refuse := errors.New("refused by fn")
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"Revoke of an unknown user", func() error { _, err := s.Revoke("carol", mine.ID, t0); return err }, token.ErrUserNotFound},
		{"Revoke of another's token", func() error { _, err := s.Revoke("alice", other.ID, t0); return err }, token.ErrNotFound},
		{"Mutate refused by fn", func() error {
			_, err := s.Mutate("alice", mine.ID, func(*token.Token) error { return refuse })
			return err
		}, refuse},
		{"Create over the live limit", func() error {
			tok, _ := newToken(t, "alice", "one too many")
			_, _, err := s.Create(tok, CreateOptions{Now: t0, MaxLive: 1})
			return err
		}, token.ErrConflict},
	} {
		err := tc.call()
		if !errors.Is(err, tc.want) || errors.Is(err, ErrUnavailable) {
			t.Errorf("%s = %v, want %v and not ErrUnavailable", tc.name, err, tc.want)
		}
	}
}

// TestUpdateClassifiesByOrigin checks the rule in update directly: an error
// from fn is returned as it is, whatever it says, and a failure outside fn
// is ErrUnavailable.
func TestUpdateClassifiesByOrigin(t *testing.T) {
	s, _ := openTemp(t)
	fromFn := errors.New("file too large") // reads like an I/O error, but fn returned it
	if err := s.update(func(*bolt.Tx) error { return fromFn }); err != fromFn {
		t.Errorf("update with failing fn = %v, want fn's error unchanged", err)
	}
	if err := s.update(func(*bolt.Tx) error { return nil }); err != nil {
		t.Errorf("update = %v, want nil", err)
	}
	_ = s.Close()
	ran := false
	err := s.update(func(*bolt.Tx) error { ran = true; return nil })
	if !errors.Is(err, ErrUnavailable) || ran {
		t.Errorf("update on a closed file = %v (fn ran: %v), want ErrUnavailable without running fn", err, ran)
	}
}

// TestCommitFailingAtItsLastSyncTakesEffect: bbolt reports a commit whose
// meta page sync fails as failed, though the page is written and later
// reads see the write. hookCommitErr stands in for that failure after a
// real commit. The write is ErrUnavailable and ErrNotDurable, and the
// lookup cache follows the file: a flush's counts are in it, and a revoked
// token does not go on authenticating from it.
func TestCommitFailingAtItsLastSyncTakesEffect(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	if _, err := s.Lookup(h, t0); err != nil { // now cached
		t.Fatal(err)
	}
	failLate := func(what string, write func() error) {
		t.Helper()
		s.hookCommitErr = func() error { return syscall.EIO }
		defer func() { s.hookCommitErr = nil }()
		if err := write(); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrNotDurable) || !errors.Is(err, syscall.EIO) {
			t.Fatalf("%s = %v, want ErrUnavailable and ErrNotDurable wrapping EIO", what, err)
		}
	}

	failLate("ApplyUsage", func() error {
		return s.ApplyUsage(7, map[uint64]usage.Delta{tok.ID: {Count: 2, Last: t0.Unix()}})
	})
	if n, err := s.LastUsageBatch(); err != nil || n != 7 {
		t.Errorf("LastUsageBatch = %d, %v; want 7, the batch that took effect", n, err)
	}
	if got, err := s.Lookup(h, t0); err != nil || got.UsageCount != 2 || got.UsageBatch != 7 {
		t.Errorf("Lookup after the flush = count %d batch %d, %v; want 2 and 7", got.UsageCount, got.UsageBatch, err)
	}

	failLate("Revoke", func() error { _, err := s.Revoke("alice", tok.ID, t0); return err })
	if got, err := s.GetForUser("alice", tok.ID); err != nil || got.Status(t0) != token.StatusRevoked {
		t.Fatalf("GetForUser after the revoke = %+v, %v; want it revoked", got, err)
	}
	if got, err := s.Lookup(h, t0); err != nil || got.Status(t0) != token.StatusRevoked {
		t.Errorf("Lookup after the revoke = %v (%v); want the revoked token, not the cached active one", got.Status(t0), err)
	}
}
