// Package usage counts token uses in memory and persists them in batches,
// so that authenticating a request costs no disk write.
//
// Promises: N successful uses add exactly N; a reader sees every use
// already recorded (read-your-writes), whether it is pending, being
// flushed, or on disk; a flush writes all pending uses in one transaction;
// a failed flush keeps its uses for the next one; a Flush after the servers
// stop taking requests writes everything.
// A crash loses at most the uses since the last committed flush: one
// interval plus the flush in flight. (While flushes keep failing, uses
// pile up in memory, and a crash loses all of them.)
package usage

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokend/tokend/service/token"
)

// Delta is the uses of one token not yet on disk.
type Delta struct {
	Count uint64
	// Last is the time of the latest use, Unix seconds.
	Last int64
}

// Store persists batches of deltas.
type Store interface {
	// ApplyUsage adds the deltas to the tokens in one transaction and
	// stamps each with batch, so readers can tell whether a token read from
	// disk already includes it. The same transaction records batch as the
	// last applied.
	ApplyUsage(batch uint64, deltas map[uint64]Delta) error
	// LastUsageBatch returns the number of the last batch applied: after
	// ApplyUsage fails, whether its batch took effect all the same.
	LastUsageBatch() (uint64, error)
}

// Recorder is the in-memory usage ledger, safe for concurrent use.
type Recorder struct {
	store Store
	log   *slog.Logger

	mu       sync.Mutex
	pending  map[uint64]Delta
	spare    map[uint64]Delta // reused between flushes so steady state allocates nothing
	inflight map[uint64]Delta // being written as batch `batch`
	batch    uint64           // number of the in-flight or, if none, last batch
	gen      atomic.Uint64    // counts committed flushes (changed under mu); see Fresh
	lastErr  error            // of the last flush; nil once one succeeds
	flushed  time.Time        // when disk last held every use recorded before it
	failures uint64           // flushes that failed
	// nPending and nInflight are the uses in pending and inflight, kept
	// as they change so that Stats need not walk the maps.
	nPending, nInflight uint64
	// owed is the uses of batches that took effect in the file though
	// their commit failed at its last sync, so the disk may not hold them:
	// not pending (reads must not add them again), but not known to be on
	// disk until a later commit succeeds. While it is non-zero, Flush
	// commits even with nothing pending.
	owed uint64

	flushMu sync.Mutex // one flush at a time
}

// New returns a Recorder over st, continuing its batch numbering.
func New(st Store, log *slog.Logger) (*Recorder, error) {
	last, err := st.LastUsageBatch()
	if err != nil {
		return nil, err
	}
	return &Recorder{
		store:   st,
		log:     log,
		pending: make(map[uint64]Delta),
		spare:   make(map[uint64]Delta),
		batch:   last,
		flushed: time.Now(),
	}, nil
}

// Record counts one use of token id at time at.
func (r *Recorder) Record(id uint64, at time.Time) {
	sec := at.Unix()
	r.mu.Lock()
	d := r.pending[id]
	d.Count++
	if sec > d.Last {
		d.Last = sec
	}
	r.pending[id] = d
	r.nPending++
	r.mu.Unlock()
}

// Fresh runs read, which reads tokens from disk, and adds to each token it
// returns the uses not yet on disk, so a reader sees every use already
// recorded. A use being flushed is added only if the copy read from disk
// predates its batch; if a flush commits while read runs, read runs again,
// because its copies may then predate a batch that is no longer in memory.
// Flushes commit about once an interval, so the retry is rare.
func (r *Recorder) Fresh(read func() ([]*token.Token, error)) error {
	for {
		gen := r.gen.Load()
		ts, err := read()
		if err != nil {
			return err
		}
		r.mu.Lock()
		if r.gen.Load() != gen {
			r.mu.Unlock()
			continue
		}
		for _, t := range ts {
			r.applyLocked(t)
		}
		r.mu.Unlock()
		return nil
	}
}

// Gen returns the count of committed flushes, to pass to ApplySince later.
// Authentication calls it on every request, so it takes no lock.
func (r *Recorder) Gen() uint64 {
	return r.gen.Load()
}

// ApplySince adds the uses not yet on disk to t, a copy read from disk after
// Gen returned gen, and reports true; or reports false, changing nothing, if
// a flush has committed since, and the caller must read t again (or use
// Fresh). It lets a request reuse the token its authentication just read.
func (r *Recorder) ApplySince(t *token.Token, gen uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gen.Load() != gen {
		return false
	}
	r.applyLocked(t)
	return true
}

func (r *Recorder) applyLocked(t *token.Token) {
	d := r.pending[t.ID]
	if in, ok := r.inflight[t.ID]; ok && t.UsageBatch < r.batch {
		d.Count += in.Count
		d.Last = max(d.Last, in.Last)
	}
	t.UsageCount += d.Count
	if d.Last > 0 {
		if last := time.Unix(d.Last, 0).UTC(); last.After(t.LastUsedAt) {
			t.LastUsedAt = last
		}
	}
}

// Flush writes all pending uses in one transaction. On failure they stay
// pending, to be written by a later flush. A commit that failed only at its
// last sync took effect: its uses are in the file, and count as pending
// (Pending, Stats) until a later flush commits, which the next Flush does
// even if nothing new was recorded; until then Err reports the failure.
func (r *Recorder) Flush() error {
	r.flushMu.Lock()
	defer r.flushMu.Unlock()
	r.mu.Lock()
	if len(r.pending) == 0 && r.owed == 0 {
		r.flushed = time.Now() // nothing was waiting: disk is up to date
		r.mu.Unlock()
		return nil
	}
	r.inflight, r.pending, r.spare = r.pending, r.spare, nil
	r.nInflight, r.nPending = r.nPending, 0
	r.batch++
	batch, deltas := r.batch, r.inflight
	// Every use recorded until now is in this batch: if it commits, disk
	// holds them all as of this instant, not of the commit.
	swapped := time.Now()
	r.mu.Unlock()

	err := r.store.ApplyUsage(batch, deltas)
	// A failed commit can have taken effect all the same (a failed sync of
	// bbolt's last page): the batch number, stamped in the same
	// transaction, says whether the file has it. Folded back, its uses
	// would count twice.
	applied := err == nil
	if !applied {
		last, lerr := r.store.LastUsageBatch()
		applied = lerr == nil && last >= batch
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if !applied {
		// Fold the batch back into pending. Its number is spent: the file
		// does not have it, so no token carries it, and the next batch is
		// higher.
		for id, d := range deltas {
			p := r.pending[id]
			p.Count += d.Count
			p.Last = max(p.Last, d.Last)
			r.pending[id] = p
		}
		r.nPending += r.nInflight
		r.lastErr = err
		r.failures++
	} else {
		r.gen.Add(1)
		if err == nil {
			// Durable, and with it every batch before it.
			r.owed = 0
			r.lastErr = nil
			r.flushed = swapped
		} else {
			// Reads have the batch, but the disk may not: the error shows
			// (readiness), the uses count as pending (the flush lag keeps
			// growing), and the next Flush commits again.
			r.owed += r.nInflight
			r.lastErr = err
			r.failures++
		}
	}
	r.nInflight = 0
	clear(deltas)
	r.spare, r.inflight = deltas, nil
	return err
}

// Err returns the error of the last flush if it failed, so readiness can
// report that counts are piling up in memory; nil once a flush succeeds.
func (r *Recorder) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}

// Pending returns how many uses are not yet on disk, for metrics and
// tests.
func (r *Recorder) Pending() uint64 { return r.Stats().Pending }

// Stats describe the Recorder for metrics.
type Stats struct {
	// Pending is the number of uses not yet on disk.
	Pending uint64
	// LastFlush is when disk last held every use recorded before it: the
	// start of the last flush that committed, or the last flush that found
	// nothing to write.
	LastFlush time.Time
	// Flushes and Failures count committed and failed flushes; one whose
	// commit failed only at its last sync took effect, and counts in both.
	Flushes, Failures uint64
}

// Stats returns the Recorder's current Stats.
func (r *Recorder) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return Stats{Pending: r.nPending + r.nInflight + r.owed, LastFlush: r.flushed, Flushes: r.gen.Load(), Failures: r.failures}
}

// Run flushes every interval until ctx is done. It does not flush at the
// end, since requests may still be in flight then: call Flush once the
// servers have stopped, for that flush to be the last word.
func (r *Recorder) Run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := r.Flush(); err != nil {
				r.log.Error("flush usage counts; they stay in memory and are retried", slog.String("error", err.Error()))
			}
		}
	}
}
