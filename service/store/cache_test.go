package store

import (
	"errors"
	"testing"
	"time"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// TestLookupCacheNeverStale checks that every write is visible to the very
// next Lookup, whether the token was cached or not.
func TestLookupCacheNeverStale(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	at := t0.Add(time.Minute)
	if _, err := s.Lookup(h, at); err != nil { // fills the cache
		t.Fatal(err)
	}
	if _, ok, _ := s.cache.get(h); !ok {
		t.Fatal("Lookup did not fill the cache")
	}
	if err := s.ApplyUsage(1, map[uint64]usage.Delta{tok.ID: {Count: 2, Last: at.Unix()}}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Lookup(h, at); err != nil || got.UsageCount != 2 || got.UsageBatch != 1 {
		t.Errorf("after ApplyUsage: Lookup = usage %d batch %d, %v; want 2, 1", got.UsageCount, got.UsageBatch, err)
	}
	if _, err := s.Mutate("alice", tok.ID, func(t *token.Token) error { t.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(h, at); got.Name != "renamed" {
		t.Errorf("after a rename: Lookup name = %q", got.Name)
	}
	if _, err := s.Revoke("alice", tok.ID, at); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Lookup(h, at); got.RevokedAt.IsZero() {
		t.Error("after a revoke: Lookup still shows the token unrevoked")
	}
	// A rotation without grace makes the old hash unknown at once.
	var fresh secret.Hash
	fresh[0] = 0xfe
	if _, err := s.Mutate("alice", tok.ID, func(t *token.Token) error { t.SecretHash = fresh; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(h, at); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("old hash after rotation: %v, want token.ErrNotFound", err)
	}
}

// TestLookupCacheFillRace checks that a fill whose read began before a
// write is dropped rather than caching the old copy.
func TestLookupCacheFillRace(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "a")
	_, _, epoch := s.cache.get(h)
	old, err := s.GetForUser("alice", tok.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke("alice", tok.ID, t0); err != nil {
		t.Fatal(err)
	}
	s.cache.fill(h, old, epoch) // a slow reader arriving after the revoke
	got, err := s.Lookup(h, t0)
	if err != nil || got.RevokedAt.IsZero() {
		t.Errorf("Lookup after a racing fill = %+v, %v; want the revoked token", got, err)
	}
}

func TestLookupCacheBounded(t *testing.T) {
	s, _ := openTemp(t)
	s.cache.max = 3
	for i := range 10 {
		_, h := create(t, s, "alice", string(rune('a'+i)))
		if _, err := s.Lookup(h, t0); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(s.cache.m); n > 3 {
		t.Errorf("cache holds %d entries, want at most 3", n)
	}
}

func TestLookupCachedAllocatesNothing(t *testing.T) {
	s, _ := openTemp(t)
	_, h := create(t, s, "alice", "a")
	if _, err := s.Lookup(h, t0); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := s.Lookup(h, t0); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("a cached Lookup allocates %v times, want 0", n)
	}
}

func BenchmarkLookupCached(b *testing.B) {
	s, _ := openTemp(b)
	_, h := create(b, s, "alice", "a")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Lookup(h, t0); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupUncached(b *testing.B) {
	s, _ := openTemp(b)
	s.cache.max = -1
	_, h := create(b, s, "alice", "a")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Lookup(h, t0); err != nil {
			b.Fatal(err)
		}
	}
}

// TestLookupCacheRevokeRacesFlush lets a usage flush commit, then stalls
// it before its cache upkeep while a revoke of the same token and a Lookup
// try to run. The flush's copy predates the revoke: if the revoke could
// commit and the Lookup refill the entry before the flush's upkeep, that
// upkeep would bring the unrevoked token back. Cache upkeep must happen in
// commit order.
func TestLookupCacheRevokeRacesFlush(t *testing.T) {
	s, _ := openTemp(t)
	tok, h := create(t, s, "alice", "r")
	at := t0.Add(time.Minute)
	if _, err := s.Lookup(h, at); err != nil {
		t.Fatal(err)
	}
	revoked := make(chan error, 1)
	s.hookCommitted = func() {
		s.hookCommitted = nil
		go func() {
			_, err := s.Revoke("alice", tok.ID, at)
			if err == nil {
				_, _ = s.Lookup(h, at) // a request refilling the entry at once
			}
			revoked <- err
		}()
		select { // give the revoke every chance to overtake the flush's upkeep
		case err := <-revoked:
			revoked <- err
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := s.ApplyUsage(1, map[uint64]usage.Delta{tok.ID: {Count: 1, Last: at.Unix()}}); err != nil {
		t.Fatal(err)
	}
	if err := <-revoked; err != nil {
		t.Fatal(err)
	}
	got, err := s.Lookup(h, at)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevokedAt.IsZero() {
		t.Error("after Revoke returned, Lookup sees the token unrevoked: a flush's late cache upkeep restored it")
	}
}
