package store

import (
	"sync"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/token"
)

// DefaultCacheEntries bounds the lookup cache. An entry costs about 500
// bytes of heap (the token with its strings and allowed IPs), so this is
// about 10 MB, which keeps a server with a million tokens well inside a
// 64 MB heap. A miss costs a read transaction (about a microsecond and a
// dozen allocations), small beside a request, so hot tokens, not all
// tokens, are worth keeping.
const DefaultCacheEntries = 20_000

// lookupCache keeps recently authenticated tokens by secret hash, so that
// Lookup, which runs on every authenticated request, usually costs a map
// read and no allocation instead of a bbolt transaction and a decode.
//
// It is a read-through cache of the database, never ahead of it: entries
// are filled only from a committed read, and every write that can change a
// cached token updates or drops it after the write commits and before the
// write returns, so a revocation, rotation or restriction is in force for
// every request after it is acknowledged. A fill races writes through
// epoch: a write bumps it, and a fill whose read began under an older
// epoch is dropped, since its copy may predate the write.
type lookupCache struct {
	mu    sync.RWMutex
	max   int
	epoch uint64
	m     map[secret.Hash]cacheEntry
	// order is a ring of slots, one per entry, in about the order they
	// were filled: when the cache is full, a fill evicts the entry in the
	// slot after the last one it took, and takes that slot. That is O(1);
	// picking an arbitrary victim by starting a map iteration was a
	// measurable share of every miss. A slot is either the slot of the
	// entry whose hash it holds, or, after a drop, in free, to be taken by
	// the next fill before anything is evicted.
	order []secret.Hash
	free  []int
	next  int
}

// cacheEntry is a cached token and its slot in the ring.
type cacheEntry struct {
	t    token.Token
	slot int
}

func newLookupCache(max int) *lookupCache {
	return &lookupCache{max: max, m: make(map[secret.Hash]cacheEntry)}
}

func (c *lookupCache) get(h secret.Hash) (token.Token, bool, uint64) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.m[h]
	return e.t, ok, c.epoch
}

func (c *lookupCache) fill(h secret.Hash, t token.Token, epoch uint64) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != epoch {
		return
	}
	if e, ok := c.m[h]; ok {
		c.m[h] = cacheEntry{t: t, slot: e.slot}
		return
	}
	var slot int
	switch {
	case len(c.free) > 0:
		slot = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	case len(c.order) < c.max:
		slot = len(c.order)
		c.order = append(c.order, secret.Hash{})
	default: // full: every slot belongs to a live entry
		slot = c.next
		c.next = (c.next + 1) % c.max
		delete(c.m, c.order[slot])
	}
	c.order[slot] = h
	c.m[h] = cacheEntry{t: t, slot: slot}
}

// drop forgets the tokens with these hashes.
func (c *lookupCache) drop(hs ...secret.Hash) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	for _, h := range hs {
		if e, ok := c.m[h]; ok {
			delete(c.m, h)
			c.free = append(c.free, e.slot)
		}
	}
}

// reset forgets every token, and refuses every fill begun before it.
func (c *lookupCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	clear(c.m)
	c.order, c.free, c.next = nil, nil, 0
}

// refresh replaces the cached copies of these tokens, if cached, by their
// committed state.
func (c *lookupCache) refresh(ts []token.Token) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	var zero secret.Hash
	for _, t := range ts {
		for _, h := range []secret.Hash{t.SecretHash, t.PrevSecretHash} {
			if h == zero {
				continue
			}
			if e, ok := c.m[h]; ok {
				c.m[h] = cacheEntry{t: t, slot: e.slot}
			}
		}
	}
}
