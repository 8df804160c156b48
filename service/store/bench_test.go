package store

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// seedMany stores n tokens over users owners in batches and returns their
// IDs and secret hashes, index for index.
func seedMany(b testing.TB, s *Store, n, users int) ([]uint64, []secret.Hash) {
	b.Helper()
	ids, hashes := make([]uint64, 0, n), make([]secret.Hash, 0, n)
	for len(ids) < n {
		batch := make([]token.Token, 0, min(5000, n-len(ids)))
		for i := len(ids); i < n && len(batch) < cap(batch); i++ {
			tok, h := newToken(b, fmt.Sprintf("user-%d", i%users), fmt.Sprintf("token %d", i))
			batch = append(batch, tok)
			hashes = append(hashes, h)
		}
		out, err := s.CreateBatch(batch)
		if err != nil {
			b.Fatal(err)
		}
		for _, t := range out {
			ids = append(ids, t.ID)
		}
	}
	return ids, hashes
}

// BenchmarkApplyUsage measures one usage flush of a store of 100k tokens:
// 20k distinct tokens, the size the benchmark harness's load makes, and
// 100 and 1000, a busy deployment's second. Besides time it reports the
// pages the flush writes (bbolt's count; a page is 4 KiB here), the
// usage flush's disk cost: each token's leaf page and the branch pages
// above it are rewritten whole.
func BenchmarkApplyUsage(b *testing.B) {
	s, _ := openTemp(b)
	ids, _ := seedMany(b, s, 100_000, 1000)
	rng := rand.New(rand.NewPCG(1, 2))
	batch := uint64(0)
	for _, n := range []int{100, 1000, 20_000} {
		b.Run(fmt.Sprintf("distinct=%d", n), func(b *testing.B) {
			var pages int64
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				deltas := make(map[uint64]usage.Delta, n)
				for len(deltas) < n {
					deltas[ids[rng.IntN(len(ids))]] = usage.Delta{Count: 1, Last: t0.Unix()}
				}
				batch++
				before := s.db.Stats()
				b.StartTimer()
				if err := s.ApplyUsage(batch, deltas); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				after := s.db.Stats()
				pages += after.TxStats.GetWrite() - before.TxStats.GetWrite()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/token")
			b.ReportMetric(float64(pages)/float64(b.N), "pages/flush")
		})
	}
}

// BenchmarkLookup measures Lookup of a random one of a store's tokens,
// with the default cache and without one. Of one token, a cached Lookup is
// a map read and an uncached one a read transaction; of 100k, the cached
// one is mostly misses that fill the cache and evict from it, as under
// the benchmark harness's load, and the uncached one the B-tree descents a
// cold token costs.
func BenchmarkLookup(b *testing.B) {
	for _, size := range []struct {
		name   string
		tokens int
	}{{"tokens=1", 1}, {"tokens=100k", 100_000}} {
		b.Run(size.name, func(b *testing.B) {
			for _, cache := range []string{"on", "off"} {
				b.Run("cache="+cache, func(b *testing.B) {
					s, _ := openTemp(b)
					if cache == "off" {
						s.cache.max = -1
					}
					_, hashes := seedMany(b, s, size.tokens, 1000)
					rng := rand.New(rand.NewPCG(1, 2))
					b.ReportAllocs()
					for b.Loop() {
						if _, err := s.Lookup(hashes[rng.IntN(len(hashes))], t0); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}

// seedHistory gives user "ci" past tokens, half revoked and half expired
// at t0, and then 5 that never expire.
func seedHistory(b *testing.B, s *Store, past int) {
	b.Helper()
	ts := make([]token.Token, 0, past+5)
	for i := range past + 5 {
		tok, _ := newToken(b, "ci", fmt.Sprintf("job %d", i))
		switch {
		case i >= past:
		case i%2 == 0:
			tok.RevokedAt = t0.Add(-time.Hour)
		default:
			tok.ExpiresAt = t0.Add(-time.Hour)
		}
		ts = append(ts, tok)
	}
	if _, err := s.CreateBatch(ts); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkCreateWithHistory measures a Create under the live-token quota
// for a user with a long history: past tokens, half revoked and half
// expired, as a CI system that creates a short-lived token per job leaves
// behind. Each create's token has expired by the next one, so the user's
// live set stays small while the history grows.
func BenchmarkCreateWithHistory(b *testing.B) {
	for _, past := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("past=%d", past), func(b *testing.B) {
			s, _ := openTemp(b)
			seedHistory(b, s, past)
			now := t0
			b.ReportAllocs()
			for b.Loop() {
				now = now.Add(2 * time.Second)
				tok, _ := newToken(b, "ci", "job")
				tok.ExpiresAt = now.Add(time.Second)
				if _, _, err := s.Create(tok, CreateOptions{Now: now, MaxLive: 100}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpenMigratesSchema2 measures the one-time upgrade of a
// schema-2 file of 100k tokens over 1000 users: Open builds the live
// index from every token.
func BenchmarkOpenMigratesSchema2(b *testing.B) {
	s, path := openTemp(b)
	seedMany(b, s, 100_000, 1000)
	closeAsSchema2(b, s, path)
	v2, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		p := filepath.Join(dir, fmt.Sprintf("v2-%d.db", i))
		if err := os.WriteFile(p, v2, 0o600); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		s, err := Open(p, Options{})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		_ = os.Remove(p)
		b.StartTimer()
	}
}

// BenchmarkListActiveWithHistory lists the active tokens (a page of 20)
// of a user who holds 5 and had 10k more, half revoked and half expired,
// walking all the user's tokens and only the live index, after a create
// has pruned the expired ones as the server's creates do.
func BenchmarkListActiveWithHistory(b *testing.B) {
	s, _ := openTemp(b)
	seedHistory(b, s, 10_000)
	tok, _ := newToken(b, "ci", "prune")
	if _, _, err := s.Create(tok, CreateOptions{Now: t0, MaxLive: 100}); err != nil {
		b.Fatal(err)
	}
	keep := func(t *token.Token) bool { return t.Status(t0) == token.StatusActive }
	for _, live := range []bool{false, true} {
		b.Run(fmt.Sprintf("live=%v", live), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ts, _, err := s.ListPage("ci", Page{Limit: 20, Keep: keep, Live: live})
				if err != nil || len(ts) != 6 {
					b.Fatalf("ListPage = %d tokens, %v; want 6", len(ts), err)
				}
			}
		})
	}
}
