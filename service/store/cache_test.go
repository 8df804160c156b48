package store

import (
	"encoding/binary"
	"errors"
	"maps"
	"math/rand/v2"
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
	checkWritesVisible(t, s, true)
}

// checkWritesVisible makes a series of writes to one token of s (usage,
// a rename, rotations with and without grace, a revoke, a rotation after
// it) and checks that each is visible to the very next Lookups, by the
// token's current hash, by its previous one within and past the grace
// period, and by hashes it no longer has. Each lookup runs twice, the
// second one from the cache if s has one, so every write meets a cached
// token. With cached, every hash found must be in the cache afterwards;
// without, the cache must stay empty.
func checkWritesVisible(t *testing.T, s *Store, cached bool) {
	t.Helper()
	tok, h := create(t, s, "alice", "a")
	at := t0.Add(time.Minute)
	var h2, h3, h4 secret.Hash
	h2[0], h3[0], h4[0] = 2, 3, 4
	until := at.Add(time.Hour)

	type lookup struct {
		h    secret.Hash
		at   time.Time
		want func(token.Token) bool // nil: not found
	}
	steps := []struct {
		name    string
		write   func() error
		lookups []lookup
	}{
		{"created", func() error { return nil }, []lookup{
			{h, at, func(g token.Token) bool { return g.ID == tok.ID && g.UsageCount == 0 }},
		}},
		{"usage applied", func() error {
			return s.ApplyUsage(1, map[uint64]usage.Delta{tok.ID: {Count: 3, Last: at.Unix()}})
		}, []lookup{
			{h, at, func(g token.Token) bool { return g.UsageCount == 3 && g.UsageBatch == 1 && g.LastUsedAt.Equal(at) }},
		}},
		{"renamed", func() error {
			_, err := s.Mutate("alice", tok.ID, func(t *token.Token) error { t.Name = "renamed"; return nil })
			return err
		}, []lookup{
			{h, at, func(g token.Token) bool { return g.Name == "renamed" && g.UsageCount == 3 }},
		}},
		{"rotated with grace", func() error {
			_, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
				t.PrevSecretHash, t.PrevSecretUntil, t.SecretHash = t.SecretHash, until, h2
				return nil
			})
			return err
		}, []lookup{
			{h2, at, func(g token.Token) bool { return g.ID == tok.ID && g.SecretHash == h2 }},
			{h, at, func(g token.Token) bool { return g.ID == tok.ID }},
			{h, until, nil},
		}},
		// A rotation without grace makes the old hashes unknown at once.
		{"rotated without grace", func() error {
			_, err := s.Mutate("alice", tok.ID, func(t *token.Token) error {
				t.PrevSecretHash, t.PrevSecretUntil, t.SecretHash = [32]byte{}, time.Time{}, h3
				return nil
			})
			return err
		}, []lookup{
			{h3, at, func(g token.Token) bool { return g.ID == tok.ID && g.PrevSecretHash == [32]byte{} }},
			{h2, at, nil},
			{h, at, nil},
		}},
		{"more usage", func() error {
			return s.ApplyUsage(2, map[uint64]usage.Delta{tok.ID: {Count: 1, Last: at.Unix() + 5}})
		}, []lookup{
			{h3, at, func(g token.Token) bool { return g.UsageCount == 4 && g.UsageBatch == 2 }},
		}},
		{"revoked", func() error { _, err := s.Revoke("alice", tok.ID, at); return err }, []lookup{
			{h3, at, func(g token.Token) bool { return g.RevokedAt.Equal(at) && g.Status(at) == token.StatusRevoked }},
		}},
		{"rotated without grace after the revoke", func() error {
			_, err := s.Mutate("alice", tok.ID, func(t *token.Token) error { t.SecretHash = h4; return nil })
			return err
		}, []lookup{
			{h4, at, func(g token.Token) bool { return g.ID == tok.ID && g.RevokedAt.Equal(at) }},
			{h3, at, nil},
		}},
	}
	for _, st := range steps {
		if err := st.write(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		for i, l := range st.lookups {
			for range 2 { // a second Lookup would be the cached one
				got, err := s.Lookup(l.h, l.at)
				switch {
				case l.want == nil && !errors.Is(err, token.ErrNotFound):
					t.Errorf("%s: lookup %d = token %d, %v; want token.ErrNotFound", st.name, i, got.ID, err)
				case l.want != nil && (err != nil || !l.want(got)):
					t.Errorf("%s: lookup %d = %+v, %v; not what the write left", st.name, i, got, err)
				}
			}
			if cached && l.want != nil {
				if _, ok, _ := s.cache.get(l.h); !ok {
					t.Errorf("%s: lookup %d found the token but did not cache it", st.name, i)
				}
			}
		}
		if n := len(s.cache.m); !cached && n != 0 {
			t.Errorf("%s: the disabled cache holds %d entries", st.name, n)
		}
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

// TestLookupCacheEvictsOldest checks the cache's bound and eviction over
// a random mix of fills, refills and drops: it never holds more than max
// entries, never evicts while it holds fewer, the latest fill is always
// there, and a full cache evicts its oldest fill.
func TestLookupCacheEvictsOldest(t *testing.T) {
	const max = 8
	c := newLookupCache(max)
	hash := func(i int) secret.Hash { return secret.Hash{byte(i), byte(i >> 8)} }
	for i := range max + 1 {
		c.fill(hash(i), token.Token{ID: uint64(i)}, c.epoch)
	}
	if _, ok := c.m[hash(0)]; ok || len(c.m) != max {
		t.Errorf("after %d fills into %d: %d entries, oldest still cached: %v", max+1, max, len(c.m), ok)
	}
	// A drop frees a slot: the refill after it evicts nothing, and the
	// next fill evicts the oldest, not the refilled entry.
	c.drop(hash(3))
	c.fill(hash(3), token.Token{ID: 3}, c.epoch)
	if len(c.m) != max {
		t.Errorf("a refill after a drop left %d entries, want %d", len(c.m), max)
	}
	c.fill(hash(100), token.Token{ID: 100}, c.epoch)
	if _, ok := c.m[hash(1)]; ok {
		t.Error("a full cache kept its oldest fill")
	}
	if _, ok := c.m[hash(3)]; !ok {
		t.Error("a full cache evicted a fresh refill")
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for step := range 10_000 {
		h := hash(rng.IntN(3 * max))
		before := maps.Clone(c.m)
		switch rng.IntN(3) {
		case 0:
			c.drop(h)
			if _, ok := c.m[h]; ok {
				t.Fatalf("step %d: dropped entry still cached", step)
			}
		default:
			c.fill(h, token.Token{ID: uint64(step)}, c.epoch)
			if got, ok := c.m[h]; !ok || got.t.ID != uint64(step) {
				t.Fatalf("step %d: the entry just filled is %v, %v", step, got.t.ID, ok)
			}
			if _, had := before[h]; len(before) < max || had {
				for k := range before {
					if _, ok := c.m[k]; !ok {
						t.Fatalf("step %d: a fill into a cache of %d/%d entries evicted one", step, len(before), max)
					}
				}
			}
		}
		if len(c.m) > max {
			t.Fatalf("step %d: %d entries, max %d", step, len(c.m), max)
		}
		for k, e := range c.m {
			if c.order[e.slot] != k {
				t.Fatalf("step %d: entry's slot %d holds another hash", step, e.slot)
			}
		}
	}
}

// BenchmarkLookupCacheFillFull measures a fill into a full cache of the
// default size: a miss's cost beyond its read, as most requests under the
// benchmark harness's load are misses.
func BenchmarkLookupCacheFillFull(b *testing.B) {
	c := newLookupCache(DefaultCacheEntries)
	var h secret.Hash
	i := uint64(0)
	fill := func() {
		i++
		binary.LittleEndian.PutUint64(h[:], i*0x9e3779b97f4a7c15)
		c.fill(h, token.Token{ID: i}, c.epoch)
	}
	for range 2 * DefaultCacheEntries {
		fill()
	}
	b.ReportAllocs()
	for b.Loop() {
		fill()
	}
}

// TestLookupCacheFlushCountsOnce lets a Lookup refill the cache between a
// usage flush's commit and its cache upkeep: the copy it caches has the
// batch already, and the upkeep must not add the uses a second time. A
// copy cached before the flush must get them.
func TestLookupCacheFlushCountsOnce(t *testing.T) {
	s, _ := openTemp(t)
	early, he := create(t, s, "alice", "early")
	late, hl := create(t, s, "alice", "late")
	at := t0.Add(time.Minute)
	if _, err := s.Lookup(he, at); err != nil { // cached before the flush
		t.Fatal(err)
	}
	s.hookCommitted = func() {
		s.hookCommitted = nil
		if _, err := s.Lookup(hl, at); err != nil { // cached after its commit
			t.Error(err)
		}
	}
	if err := s.ApplyUsage(1, map[uint64]usage.Delta{early.ID: {Count: 3, Last: at.Unix()}, late.ID: {Count: 5, Last: at.Unix()}}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		h    secret.Hash
		want uint64
	}{{he, 3}, {hl, 5}} {
		cached, ok, _ := s.cache.get(c.h)
		if !ok || cached.UsageCount != c.want || cached.UsageBatch != 1 || !cached.LastUsedAt.Equal(time.Unix(at.Unix(), 0)) {
			t.Errorf("cached after the flush: %v uses, batch %d, last used %v (cached %v); want %d, 1, %v",
				cached.UsageCount, cached.UsageBatch, cached.LastUsedAt, ok, c.want, at.Unix())
		}
	}
}
