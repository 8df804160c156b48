package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/token"
)

// liveEntries returns user's entries in the live index: token id → expiry
// in Unix seconds (0 for none).
func liveEntries(t *testing.T, s *Store, user string) map[uint64]int64 {
	t.Helper()
	got := map[uint64]int64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		lb := tx.Bucket(bucketLive).Bucket([]byte(user))
		if lb == nil {
			return nil
		}
		return lb.ForEach(func(k, v []byte) error {
			got[binary.BigEndian.Uint64(k)] = int64(binary.BigEndian.Uint64(v))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func assertLive(t *testing.T, s *Store, user string, want map[uint64]int64, when string) {
	t.Helper()
	if got := liveEntries(t, s, user); !maps.Equal(got, want) {
		t.Errorf("live index of %s %s = %v, want %v", user, when, got, want)
	}
}

// closeAsSchema2 closes s and makes its file at path what a schema-2
// tokend left: no live index, schema byte 2.
func closeAsSchema2(t testing.TB, s *Store, path string) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rawUpdate(t, path, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketLive); err != nil {
			return err
		}
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{2})
	})
}

// createExpiring creates a token of user that expires at exp (zero: never),
// as a request at now.
func createExpiring(t *testing.T, s *Store, user string, exp, now time.Time, maxLive int) (token.Token, error) {
	t.Helper()
	tok, _ := newToken(t, user, "t")
	tok.ExpiresAt = exp
	got, _, err := s.Create(tok, CreateOptions{Now: now, MaxLive: maxLive})
	return got, err
}

// TestLiveIndexFollowsTokens checks the index the quota counts from: a
// create lists its token with its expiry, a revoke unlists it, a create
// prunes the entries expired at its time and only those, and a later change
// to an expired token does not list it again. Without the pruning every
// create would read all the tokens a user ever had.
func TestLiveIndexFollowsTokens(t *testing.T) {
	s, _ := openTemp(t)
	never, _ := createExpiring(t, s, "alice", time.Time{}, t0, 0)
	soon, _ := createExpiring(t, s, "alice", t0.Add(time.Hour), t0, 0)
	later, _ := createExpiring(t, s, "alice", t0.Add(2*time.Hour), t0, 0)
	revoked, _ := createExpiring(t, s, "alice", time.Time{}, t0, 0)
	bob, _ := createExpiring(t, s, "bob", t0.Add(time.Hour), t0, 0)
	hour, twoHours := t0.Add(time.Hour).Unix(), t0.Add(2*time.Hour).Unix()
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0, soon.ID: hour, later.ID: twoHours, revoked.ID: 0}, "after the creates")

	if _, err := s.Revoke("alice", revoked.ID, t0); err != nil {
		t.Fatal(err)
	}
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0, soon.ID: hour, later.ID: twoHours}, "after a revoke")

	// At the very second soon expires: never and later count, soon is
	// pruned, and with a limit of 3 there is room for one more.
	next, err := createExpiring(t, s, "alice", time.Time{}, t0.Add(time.Hour), 3)
	if err != nil {
		t.Fatalf("Create with 2 live tokens and a limit of 3 = %v", err)
	}
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0, later.ID: twoHours, next.ID: 0}, "after a create at soon's expiry")
	if _, err := createExpiring(t, s, "alice", time.Time{}, t0.Add(time.Hour), 3); !errors.Is(err, token.ErrConflict) {
		t.Errorf("Create with 3 live tokens and a limit of 3 = %v, want token.ErrConflict", err)
	}

	if _, err := s.Mutate("alice", soon.ID, func(tk *token.Token) error { tk.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0, later.ID: twoHours, next.ID: 0}, "after renaming an expired token")
	assertLive(t, s, "bob", map[uint64]int64{bob.ID: hour}, "after alice's creates")
	if err := s.verifyAt(t0.Add(time.Hour)); err != nil { // the prune's time
		t.Errorf("Verify: %v", err)
	}
}

// TestOpenMigratesSchema2 checks that opening a schema-2 file, which has no
// live index, builds it from the tokens: the quota then counts exactly as
// before the upgrade.
func TestOpenMigratesSchema2(t *testing.T) {
	s, path := openTemp(t)
	never, _ := createExpiring(t, s, "alice", time.Time{}, t0, 0)
	expired, _ := createExpiring(t, s, "alice", t0.Add(-time.Hour), t0.Add(-2*time.Hour), 0)
	revoked, _ := createExpiring(t, s, "alice", time.Time{}, t0, 0)
	if _, err := s.Revoke("alice", revoked.ID, t0); err != nil {
		t.Fatal(err)
	}
	// Expired by the clock of the upgrade itself: never counts again, so
	// it is not indexed.
	past := time.Now().Add(-time.Hour)
	createExpiring(t, s, "alice", past, past.Add(-time.Hour), 0)
	bob, _ := createExpiring(t, s, "bob", time.Time{}, t0, 0)
	closeAsSchema2(t, s, path)

	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open of a schema-2 file = %v", err)
	}
	defer s.Close()
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0, expired.ID: t0.Add(-time.Hour).Unix()}, "after the migration")
	assertLive(t, s, "bob", map[uint64]int64{bob.ID: 0}, "after the migration")
	if err := s.Verify(); err != nil {
		t.Errorf("Verify after the migration: %v", err)
	}
	if _, err := createExpiring(t, s, "alice", time.Time{}, t0, 2); err != nil {
		t.Errorf("Create with 1 live token and a limit of 2 after the migration = %v", err)
	}
	if _, err := createExpiring(t, s, "alice", time.Time{}, t0, 2); !errors.Is(err, token.ErrConflict) {
		t.Errorf("Create with 2 live tokens and a limit of 2 after the migration = %v, want token.ErrConflict", err)
	}
	var schema []byte
	_ = s.db.View(func(tx *bolt.Tx) error {
		schema = slices.Clone(tx.Bucket(bucketMeta).Get(keySchema))
		return nil
	})
	if len(schema) != 1 || schema[0] != SchemaVersion {
		t.Errorf("schema after the migration = %v, want %d", schema, SchemaVersion)
	}
}

// TestOpenMigratesLargeSchema2 upgrades a file of more tokens than the
// migration reads at a time, so that it resumes after each chunk's writes:
// every active token must be indexed once, and nothing else.
func TestOpenMigratesLargeSchema2(t *testing.T) {
	s, path := openTemp(t)
	ids, _ := seedMany(t, s, 10_000, 7)
	var revoked int
	for i, id := range ids {
		if i%3 == 0 {
			if _, err := s.Revoke(fmt.Sprintf("user-%d", i%7), id, t0); err != nil {
				t.Fatal(err)
			}
			revoked++
		}
		if i > 600 {
			break
		}
	}
	closeAsSchema2(t, s, path)
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("Open of a schema-2 file = %v", err)
	}
	defer s.Close()
	if err := s.Verify(); err != nil {
		t.Errorf("Verify after the migration: %v", err)
	}
	n := 0
	for u := range 7 {
		n += len(liveEntries(t, s, fmt.Sprintf("user-%d", u)))
	}
	if want := len(ids) - revoked; n != want {
		t.Errorf("the live index holds %d entries, want %d (every unrevoked token once)", n, want)
	}
}

// TestRefusedCreateKeepsPrune checks that a create the quota refuses still
// commits the prune of the user's expired entries (and nothing else), so a
// user at the limit does not walk them again on every attempt.
func TestRefusedCreateKeepsPrune(t *testing.T) {
	s, _ := openTemp(t)
	never, _ := createExpiring(t, s, "alice", time.Time{}, t0, 0)
	for range 3 {
		createExpiring(t, s, "alice", t0.Add(time.Hour), t0, 0)
	}
	before := listAll(t, s, "alice")
	if _, err := createExpiring(t, s, "alice", time.Time{}, t0.Add(2*time.Hour), 1); !errors.Is(err, token.ErrConflict) {
		t.Fatalf("Create at the limit = %v, want token.ErrConflict", err)
	}
	assertLive(t, s, "alice", map[uint64]int64{never.ID: 0}, "after a refused create")
	assertSameTokens(t, "alice's tokens after a refused create", listAll(t, s, "alice"), before)
	assertNextID(t, s, uint64(len(before)+1))
	if err := s.verifyAt(t0.Add(2 * time.Hour)); err != nil { // the prune's time
		t.Errorf("Verify: %v", err)
	}
}
