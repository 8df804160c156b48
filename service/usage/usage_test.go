package usage_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/testutil"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// t0 is a whole-second UTC time the tests record uses around.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

var discard = slog.New(slog.DiscardHandler)

func dbPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "tokend.db")
}

// openAt opens the store at path and closes it when the test ends (closing
// twice is harmless).
func openAt(t *testing.T, path string) *store.Store {
	t.Helper()
	st, err := store.Open(path, store.Options{LockTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("store.Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func openTemp(t *testing.T) *store.Store {
	t.Helper()
	return openAt(t, dbPath(t))
}

func mustNew(t testing.TB) string {
	t.Helper()
	s, err := secret.New()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// create stores a fresh token for user and returns it with its secret hash.
func create(t testing.TB, st *store.Store, user, name string) (token.Token, secret.Hash) {
	t.Helper()
	h := secret.HashOf(mustNew(t))
	tok, _, err := st.Create(token.Token{
		UserID:     user,
		Name:       name,
		SecretHash: h,
		CreatedAt:  t0.Add(-time.Hour),
	}, store.CreateOptions{Now: time.Now()})
	if err != nil {
		t.Fatalf("Create(%s/%s) = %v", user, name, err)
	}
	return tok, h
}

func newRecorder(t testing.TB, st usage.Store) *usage.Recorder {
	t.Helper()
	r, err := usage.New(st, discard)
	if err != nil {
		t.Fatalf("usage.New = %v", err)
	}
	return r
}

// stored reads tok from disk, without anything in memory.
func stored(t testing.TB, st *store.Store, tok token.Token) token.Token {
	t.Helper()
	got, err := st.GetForUser(tok.UserID, tok.ID)
	if err != nil {
		t.Fatalf("GetForUser(%s, %d) = %v", tok.UserID, tok.ID, err)
	}
	return got
}

// merged reads tok from disk through Fresh, as a reader of usage counts
// does, so it includes the recorder's in-memory uses.
func merged(t testing.TB, st *store.Store, r *usage.Recorder, tok token.Token) token.Token {
	t.Helper()
	var got token.Token
	err := r.Fresh(func() ([]*token.Token, error) {
		var err error
		got, err = st.GetForUser(tok.UserID, tok.ID)
		return []*token.Token{&got}, err
	})
	if err != nil {
		t.Fatalf("Fresh(GetForUser(%s, %d)) = %v", tok.UserID, tok.ID, err)
	}
	return got
}

// applySince merges the in-memory uses into tok, a copy read after Gen
// returned gen, and fails the test if ApplySince refuses it.
func applySince(t testing.TB, r *usage.Recorder, tok *token.Token, gen uint64) {
	t.Helper()
	if !r.ApplySince(tok, gen) {
		t.Fatalf("ApplySince(token %d, gen %d) = false, but no flush has committed since (Gen() = %d)", tok.ID, gen, r.Gen())
	}
}

func flush(t testing.TB, r *usage.Recorder) {
	t.Helper()
	if err := r.Flush(); err != nil {
		t.Fatalf("Flush = %v", err)
	}
}

func lastBatch(t testing.TB, st usage.Store) uint64 {
	t.Helper()
	n, err := st.LastUsageBatch()
	if err != nil {
		t.Fatalf("LastUsageBatch = %v", err)
	}
	return n
}

func checkUsage(t *testing.T, what string, got token.Token, count uint64, last time.Time) {
	t.Helper()
	if got.UsageCount != count {
		t.Errorf("%s: UsageCount = %d, want %d", what, got.UsageCount, count)
	}
	if !got.LastUsedAt.Equal(last) || got.LastUsedAt.Location() != time.UTC {
		t.Errorf("%s: LastUsedAt = %v, want %v (UTC)", what, got.LastUsedAt, last)
	}
}

// gateStore wraps a real store; while armed, ApplyUsage stops before and
// after the real commit so a test can look at the world mid-flush.
type gateStore struct {
	*store.Store
	armed     atomic.Bool
	entered   chan uint64   // ApplyUsage was called with this batch
	proceed   chan struct{} // let it commit
	committed chan struct{} // the real commit is done
	finish    chan struct{} // let ApplyUsage return
}

func newGate(st *store.Store) *gateStore {
	return &gateStore{
		Store:     st,
		entered:   make(chan uint64),
		proceed:   make(chan struct{}),
		committed: make(chan struct{}),
		finish:    make(chan struct{}),
	}
}

func (g *gateStore) ApplyUsage(batch uint64, deltas map[uint64]usage.Delta) error {
	if !g.armed.Load() {
		return g.Store.ApplyUsage(batch, deltas)
	}
	g.entered <- batch
	<-g.proceed
	err := g.Store.ApplyUsage(batch, deltas)
	g.committed <- struct{}{}
	<-g.finish
	return err
}

// step waits for ch or fails the test after a while, so a broken flush
// cannot hang the run.
func step[T any](t *testing.T, what string, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

var errDisk = errors.New("disk on fire")

// failStore wraps a real store; while failing is set ApplyUsage writes
// nothing and returns errDisk. It logs every batch number it is given, and
// runs during (if set) inside every ApplyUsage call, flush in flight.
type failStore struct {
	*store.Store
	failing atomic.Bool
	// tookEffect makes a failing ApplyUsage commit before it fails, as a
	// commit whose last sync fails does.
	tookEffect atomic.Bool
	during     func()

	mu      sync.Mutex
	batches []uint64
}

func (f *failStore) ApplyUsage(batch uint64, deltas map[uint64]usage.Delta) error {
	f.mu.Lock()
	f.batches = append(f.batches, batch)
	f.mu.Unlock()
	if f.during != nil {
		f.during()
	}
	if f.failing.Load() {
		if f.tookEffect.Load() {
			if err := f.Store.ApplyUsage(batch, deltas); err != nil {
				return err
			}
		}
		return errDisk
	}
	return f.Store.ApplyUsage(batch, deltas)
}

func (f *failStore) seen() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.batches...)
}

// newFailRecorder wraps st in a failStore, not failing yet, and returns
// it with a Recorder over it that logs to log.
func newFailRecorder(t testing.TB, st *store.Store, log *slog.Logger) (*failStore, *usage.Recorder) {
	t.Helper()
	fs := &failStore{Store: st}
	r, err := usage.New(fs, log)
	if err != nil {
		t.Fatalf("usage.New = %v", err)
	}
	return fs, r
}

// withUses opens a store with one token of user's, and a failing-capable
// recorder that has counted n uses of it at t0.
func withUses(t *testing.T, user string, n int) (*store.Store, token.Token, *failStore, *usage.Recorder) {
	t.Helper()
	st := openTemp(t)
	a, _ := create(t, st, user, "a")
	fs, r := newFailRecorder(t, st, discard)
	for range n {
		r.Record(a.ID, t0)
	}
	return st, a, fs, r
}

// failFlush makes fs fail while r flushes once, and fails the test unless
// that Flush returns errDisk; what names the flush in the failure.
func failFlush(t *testing.T, fs *failStore, r *usage.Recorder, what string) {
	t.Helper()
	fs.failing.Store(true)
	defer fs.failing.Store(false)
	if err := r.Flush(); !errors.Is(err, errDisk) {
		t.Fatalf("%s = %v, want %v", what, err, errDisk)
	}
}

// nopStore accepts every batch and keeps nothing, for allocation counts
// and benchmarks.
type nopStore struct{}

func (nopStore) ApplyUsage(uint64, map[uint64]usage.Delta) error { return nil }
func (nopStore) LastUsageBatch() (uint64, error)                 { return 0, nil }

// Promise 1: N uses add exactly N, and LastUsedAt is the latest use.

func TestRecordAddsExactlyNAfterFlush(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "alice", "a")
	b, _ := create(t, st, "alice", "b")
	idle, _ := create(t, st, "bob", "idle")
	r := newRecorder(t, st)

	// Uses arrive out of time order; the latest one, which has a fraction
	// of a second, is neither the first nor the last recorded.
	const n = 1000
	latestA := t0.Add(90*time.Second + 700*time.Millisecond)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range n {
		at := t0.Add(time.Duration(rng.IntN(90_000)) * time.Millisecond)
		if i == n/3 {
			at = latestA.In(time.FixedZone("UTC+5", 5*3600))
		}
		r.Record(a.ID, at)
	}
	const m = 7
	for i := range m {
		r.Record(b.ID, t0.Add(time.Duration(i)*time.Second))
	}
	if got := r.Pending(); got != n+m {
		t.Fatalf("Pending() before flush = %d, want %d", got, n+m)
	}
	flush(t, r)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() after flush = %d, want 0", got)
	}
	checkUsage(t, "a on disk", stored(t, st, a), n, t0.Add(90*time.Second))
	checkUsage(t, "b on disk", stored(t, st, b), m, t0.Add((m-1)*time.Second))
	checkUsage(t, "idle on disk", stored(t, st, idle), 0, time.Time{})

	// A second batch adds to the first; an older use does not move
	// LastUsedAt back.
	r.Record(a.ID, t0.Add(-time.Hour))
	r.Record(a.ID, t0)
	flush(t, r)
	checkUsage(t, "a after second batch", stored(t, st, a), n+2, t0.Add(90*time.Second))

	// A later use moves it forward.
	r.Record(b.ID, t0.Add(time.Hour+999*time.Millisecond))
	flush(t, r)
	checkUsage(t, "b after third batch", stored(t, st, b), m+1, t0.Add(time.Hour))

	// Flushing with nothing pending writes nothing.
	before := lastBatch(t, st)
	flush(t, r)
	if got := lastBatch(t, st); got != before {
		t.Errorf("empty Flush moved LastUsageBatch from %d to %d", before, got)
	}
	checkUsage(t, "a after empty flush", stored(t, st, a), n+2, t0.Add(90*time.Second))
}

func TestConcurrentRecordsAddExactlyN(t *testing.T) {
	st := openTemp(t)
	toks := make([]token.Token, 3)
	for i := range toks {
		toks[i], _ = create(t, st, "carol", fmt.Sprintf("t%d", i))
	}
	r := newRecorder(t, st)
	const goroutines, each = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				r.Record(toks[(g+i)%len(toks)].ID, t0.Add(time.Duration(g)*time.Second))
				if i%100 == 0 {
					if err := r.Flush(); err != nil {
						t.Errorf("Flush = %v", err)
					}
				}
			}
		})
	}
	wg.Wait()
	flush(t, r)
	var total uint64
	for _, tok := range toks {
		got := stored(t, st, tok)
		total += got.UsageCount
		if want := t0.Add((goroutines - 1) * time.Second); !got.LastUsedAt.Equal(want) {
			t.Errorf("token %d LastUsedAt = %v, want %v", tok.ID, got.LastUsedAt, want)
		}
	}
	if total != goroutines*each {
		t.Errorf("stored uses = %d, want %d", total, goroutines*each)
	}
}

// Promise 2: read-your-writes before, after and during a flush.

func TestApplyBeforeAndAfterFlush(t *testing.T) {
	st := openTemp(t)
	a, h := create(t, st, "dave", "a")
	other, _ := create(t, st, "dave", "other")
	r := newRecorder(t, st)

	for i := range 5 {
		r.Record(a.ID, t0.Add(time.Duration(i)*time.Second))
	}
	checkUsage(t, "before flush", merged(t, st, r, a), 5, t0.Add(4*time.Second))
	checkUsage(t, "untouched token before flush", merged(t, st, r, other), 0, time.Time{})

	flush(t, r)
	checkUsage(t, "after flush, disk only", stored(t, st, a), 5, t0.Add(4*time.Second))
	checkUsage(t, "after flush, merged", merged(t, st, r, a), 5, t0.Add(4*time.Second))

	r.Record(a.ID, t0.Add(time.Minute))
	r.Record(a.ID, t0.Add(time.Second)) // older than what is on disk
	checkUsage(t, "pending over flushed", merged(t, st, r, a), 7, t0.Add(time.Minute))

	// The authentication path reads with Lookup after taking Gen, and
	// merges with ApplySince.
	gen := r.Gen()
	got, err := st.Lookup(h, t0)
	if err != nil {
		t.Fatalf("Lookup = %v", err)
	}
	applySince(t, r, &got, gen)
	checkUsage(t, "Lookup + ApplySince", got, 7, t0.Add(time.Minute))

	// A fresh read never counts anything twice.
	checkUsage(t, "fresh read again", merged(t, st, r, a), 7, t0.Add(time.Minute))
}

func TestApplyDuringFlush(t *testing.T) {
	st := openTemp(t)
	a, h := create(t, st, "erin", "a")
	b, _ := create(t, st, "erin", "b")
	g := newGate(st)
	r := newRecorder(t, g)

	// Two uses already on disk as batch 1.
	r.Record(a.ID, t0)
	r.Record(a.ID, t0.Add(time.Second))
	flush(t, r)
	if got := stored(t, st, a); got.UsageCount != 2 || got.UsageBatch != 1 {
		t.Fatalf("after first flush: count %d batch %d, want 2 and 1", got.UsageCount, got.UsageBatch)
	}

	// Five more go into the next batch; flush it, and stop it in flight.
	for i := range 5 {
		r.Record(a.ID, t0.Add(time.Duration(10+i)*time.Second))
	}
	g.armed.Store(true)
	done := make(chan error, 1)
	go func() { done <- r.Flush() }()
	defer func() {
		// Unblock the flush whatever happened, so the test never hangs.
		select {
		case g.proceed <- struct{}{}:
		default:
		}
	}()
	batch := step(t, "ApplyUsage", g.entered)
	if batch != 2 {
		t.Errorf("in-flight batch = %d, want 2", batch)
	}

	// Uses recorded while the flush is in flight are pending, not in it.
	for i := range 4 {
		r.Record(a.ID, t0.Add(time.Duration(20+i)*time.Second))
	}
	r.Record(b.ID, t0.Add(30*time.Second))
	const total = 2 + 5 + 4
	if got := r.Pending(); got != 5+4+1 {
		t.Errorf("Pending() in flight = %d, want %d", got, 5+4+1)
	}

	// Before the commit: disk has 2 (batch 1); in flight 5; pending 4.
	gen := r.Gen()
	pre := stored(t, st, a)
	if pre.UsageCount != 2 || pre.UsageBatch != 1 {
		t.Fatalf("disk before commit: count %d batch %d, want 2 and 1", pre.UsageCount, pre.UsageBatch)
	}
	checkUsage(t, "in flight, read before commit", merged(t, st, r, a), total, t0.Add(23*time.Second))
	checkUsage(t, "b in flight (not in batch)", merged(t, st, r, b), 1, t0.Add(30*time.Second))
	viaLookup, err := st.Lookup(h, t0)
	if err != nil {
		t.Fatalf("Lookup = %v", err)
	}
	applySince(t, r, &viaLookup, gen)
	checkUsage(t, "in flight, Lookup + ApplySince before commit", viaLookup, total, t0.Add(23*time.Second))

	// Let the real commit happen; Flush has not yet returned.
	g.proceed <- struct{}{}
	step(t, "commit", g.committed)
	post := stored(t, st, a)
	if post.UsageCount != 7 || post.UsageBatch != 2 {
		t.Fatalf("disk after commit: count %d batch %d, want 7 and 2", post.UsageCount, post.UsageBatch)
	}
	checkUsage(t, "in flight, read after commit", merged(t, st, r, a), total, t0.Add(23*time.Second))
	// Until Flush returns, both the copy read before the commit and one
	// read after it are merged right with ApplySince.
	stale := pre
	applySince(t, r, &stale, gen)
	checkUsage(t, "in flight, copy read before commit", stale, total, t0.Add(23*time.Second))
	fresh := post
	applySince(t, r, &fresh, gen)
	checkUsage(t, "in flight, copy read after commit", fresh, total, t0.Add(23*time.Second))
	checkUsage(t, "b after commit (not in batch)", merged(t, st, r, b), 1, t0.Add(30*time.Second))

	// Let Flush return.
	g.finish <- struct{}{}
	if err := step(t, "Flush", done); err != nil {
		t.Fatalf("Flush = %v", err)
	}
	g.armed.Store(false)
	if got := r.Pending(); got != 4+1 {
		t.Errorf("Pending() after flush = %d, want 5", got)
	}
	// Now the batch is no longer in memory: the copy read before the
	// commit is refused, and left alone.
	if r.Gen() == gen {
		t.Errorf("Gen() = %d after a committed flush, want it changed", gen)
	}
	stale = pre
	if r.ApplySince(&stale, gen) {
		t.Errorf("ApplySince of a copy read before a committed flush = true (count %d), want false", stale.UsageCount)
	} else if !reflect.DeepEqual(stale, pre) {
		t.Errorf("refused ApplySince changed the copy: %+v, was %+v", stale, pre)
	}
	checkUsage(t, "after flush", merged(t, st, r, a), total, t0.Add(23*time.Second))

	flush(t, r)
	checkUsage(t, "all on disk", stored(t, st, a), total, t0.Add(23*time.Second))
	checkUsage(t, "all on disk, merged", merged(t, st, r, a), total, t0.Add(23*time.Second))
	checkUsage(t, "b all on disk", stored(t, st, b), 1, t0.Add(30*time.Second))
}

// TestApplySinceRefusesCopyOlderThanFlush is the interleaving a reader
// cannot rule out: it reads the token, is descheduled while a whole flush
// runs, then merges. Merging that copy would miss the flushed batch, so
// ApplySince must refuse it.
func TestApplySinceRefusesCopyOlderThanFlush(t *testing.T) {
	st, a, fs, r := withUses(t, "frank", 5)
	gen := r.Gen()
	read := stored(t, st, a) // 0 on disk, 5 pending

	// A failed flush commits nothing: the copy is still good.
	failFlush(t, fs, r, "failing Flush")
	copy1 := read
	applySince(t, r, &copy1, gen)
	checkUsage(t, "copy read before a failed flush", copy1, 5, t0)

	flush(t, r) // the 5 go to disk; nothing pending or in flight
	copy2 := read
	if r.ApplySince(&copy2, gen) {
		t.Errorf("ApplySince of a copy read before a committed flush = true (count %d), want false", copy2.UsageCount)
	} else if !reflect.DeepEqual(copy2, read) {
		t.Errorf("refused ApplySince changed the copy: %+v, was %+v", copy2, read)
	}
	checkUsage(t, "read again", merged(t, st, r, a), 5, t0)
}

// TestFreshRetriesWhenFlushCommitsDuringRead makes a flush commit while
// Fresh's read runs; Fresh must read again rather than merge the stale copy.
func TestFreshRetriesWhenFlushCommitsDuringRead(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "frank", "a")
	b, _ := create(t, st, "frank", "b")
	r := newRecorder(t, st)
	for range 5 {
		r.Record(a.ID, t0)
	}
	r.Record(b.ID, t0.Add(time.Second))
	calls := 0
	var got []token.Token
	err := r.Fresh(func() ([]*token.Token, error) {
		calls++
		ts, err := st.List("frank")
		if err != nil {
			return nil, err
		}
		if calls == 1 {
			flush(t, r) // commits after the read, before the merge
			r.Record(a.ID, t0.Add(2*time.Second))
		}
		got = ts
		ptrs := make([]*token.Token, len(ts))
		for i := range ts {
			ptrs[i] = &ts[i]
		}
		return ptrs, nil
	})
	if err != nil {
		t.Fatalf("Fresh = %v", err)
	}
	if calls != 2 {
		t.Errorf("read ran %d times, want 2 (once more after the flush committed)", calls)
	}
	if len(got) != 2 {
		t.Fatalf("List returned %d tokens, want 2", len(got))
	}
	for _, tok := range got {
		switch tok.ID {
		case a.ID:
			checkUsage(t, "a", tok, 6, t0.Add(2*time.Second))
		case b.ID:
			checkUsage(t, "b", tok, 1, t0.Add(time.Second))
		default:
			t.Errorf("unexpected token %d", tok.ID)
		}
	}

	// Fresh returns read's error and merges nothing.
	boom := errors.New("boom")
	if err := r.Fresh(func() ([]*token.Token, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Errorf("Fresh with a failing read = %v, want %v", err, boom)
	}
	if _, err := st.GetForUser("nobody", a.ID); err == nil {
		t.Fatal("GetForUser(nobody) found a token")
	}
	if err := r.Fresh(func() ([]*token.Token, error) {
		tok, err := st.GetForUser("nobody", a.ID)
		return []*token.Token{&tok}, err
	}); err == nil {
		t.Error("Fresh over a read of someone else's token = nil error")
	}
}

// TestConcurrentReadYourWrites records, flushes and reads at once, and
// checks every merged count a reader sees against the uses that had
// completed before its read began and those that had started by the end of
// its Apply.
func TestConcurrentReadYourWrites(t *testing.T) {
	st := openTemp(t)
	const ntok = 3
	type tracked struct {
		tok                token.Token
		started, completed atomic.Uint64
	}
	toks := make([]*tracked, ntok)
	for i := range toks {
		tok, _ := create(t, st, "grace", fmt.Sprintf("t%d", i))
		toks[i] = &tracked{tok: tok}
	}
	r := newRecorder(t, st)

	const duration = 300 * time.Millisecond
	stop := make(chan struct{})
	var writers, others sync.WaitGroup
	const recorders = 4
	for g := range recorders {
		writers.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				tr := toks[rng.IntN(ntok)]
				tr.started.Add(1)
				r.Record(tr.tok.ID, time.Now())
				tr.completed.Add(1)
			}
		})
	}
	var flushes atomic.Uint64
	others.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if err := r.Flush(); err != nil {
				t.Errorf("Flush = %v", err)
				return
			}
			flushes.Add(1)
		}
	})
	var reads, retries atomic.Uint64
	const readers = 4
	for i := range readers {
		tr := toks[i%ntok]
		useFresh := i%2 == 0
		others.Go(func() {
			var prev uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				lo := tr.completed.Load()
				var got, disk token.Token
				var err error
				if useFresh {
					err = r.Fresh(func() ([]*token.Token, error) {
						var err error
						got, err = st.GetForUser(tr.tok.UserID, tr.tok.ID)
						disk = got
						return []*token.Token{&got}, err
					})
				} else {
					for {
						gen := r.Gen()
						got, err = st.GetForUser(tr.tok.UserID, tr.tok.ID)
						disk = got
						if err != nil || r.ApplySince(&got, gen) {
							break
						}
						retries.Add(1)
					}
				}
				hi := tr.started.Load()
				if err != nil {
					t.Errorf("read = %v", err)
					return
				}
				reads.Add(1)
				if got.UsageCount < lo || got.UsageCount > hi {
					now, _ := st.GetForUser(tr.tok.UserID, tr.tok.ID)
					t.Errorf("token %d: merged count %d outside [%d completed before the read, %d started by its end] (read: disk %d batch %d; disk now %d batch %d)",
						tr.tok.ID, got.UsageCount, lo, hi, disk.UsageCount, disk.UsageBatch, now.UsageCount, now.UsageBatch)
					return
				}
				if got.UsageCount < prev {
					t.Errorf("token %d: merged count went back from %d to %d", tr.tok.ID, prev, got.UsageCount)
					return
				}
				prev = got.UsageCount
			}
		})
	}

	time.Sleep(duration)
	close(stop)
	waitOrFail(t, &writers, "recorders")
	waitOrFail(t, &others, "flusher and readers")
	flush(t, r)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() after final flush = %d", got)
	}
	var total uint64
	for _, tr := range toks {
		want := tr.completed.Load()
		if s := tr.started.Load(); s != want {
			t.Fatalf("token %d: started %d != completed %d after stop", tr.tok.ID, s, want)
		}
		if got := stored(t, st, tr.tok).UsageCount; got != want {
			t.Errorf("token %d: stored count %d, want %d", tr.tok.ID, got, want)
		}
		total += want
	}
	t.Logf("%d uses, %d flushes, %d reads, %d ApplySince retries", total, flushes.Load(), reads.Load(), retries.Load())
	if flushes.Load() == 0 || reads.Load() == 0 || total == 0 {
		t.Errorf("stress test did not exercise anything: %d uses, %d flushes, %d reads", total, flushes.Load(), reads.Load())
	}
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	step(t, what, done)
}

// Promise 3: a failed flush keeps its uses for the next one.

func TestFailedFlushKeepsUses(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "heidi", "a")
	b, _ := create(t, st, "heidi", "b")
	fs, r := newFailRecorder(t, st, discard)

	// One successful batch first, so disk is not empty.
	r.Record(a.ID, t0)
	flush(t, r)
	before := lastBatch(t, st)
	if before != 1 {
		t.Fatalf("LastUsageBatch after first flush = %d, want 1", before)
	}

	for range 4 {
		r.Record(a.ID, t0.Add(time.Second))
	}
	r.Record(b.ID, t0.Add(2*time.Second))
	failFlush(t, fs, r, "failing Flush")
	if got := r.Pending(); got != 5 {
		t.Errorf("Pending() after failed flush = %d, want 5", got)
	}
	if err := r.Err(); !errors.Is(err, errDisk) {
		t.Errorf("Err() after a failed flush = %v, want %v (readiness reports it)", err, errDisk)
	}
	checkUsage(t, "a after failed flush", merged(t, st, r, a), 5, t0.Add(time.Second))
	checkUsage(t, "b after failed flush", merged(t, st, r, b), 1, t0.Add(2*time.Second))
	checkUsage(t, "a on disk after failed flush", stored(t, st, a), 1, t0)

	// Fail again, with uses arriving while the failing flush is in flight
	// (some for a token in the batch, some not).
	fs.during = func() {
		r.Record(a.ID, t0.Add(3*time.Second))
		r.Record(a.ID, t0.Add(3*time.Second))
		r.Record(b.ID, t0.Add(time.Second))
	}
	failFlush(t, fs, r, "second failing Flush")
	fs.during = nil
	if got := r.Pending(); got != 8 {
		t.Errorf("Pending() after second failed flush = %d, want 8", got)
	}
	checkUsage(t, "a after second failed flush", merged(t, st, r, a), 7, t0.Add(3*time.Second))
	checkUsage(t, "b after second failed flush", merged(t, st, r, b), 2, t0.Add(2*time.Second))
	if got := lastBatch(t, st); got != before {
		t.Errorf("LastUsageBatch after failed flushes = %d, want %d", got, before)
	}

	flush(t, r)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() after successful flush = %d, want 0", got)
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err() after a successful flush = %v, want nil (readiness recovers)", err)
	}
	after := lastBatch(t, st)
	if after <= before {
		t.Errorf("LastUsageBatch after success = %d, want > %d", after, before)
	}
	diskA := stored(t, st, a)
	checkUsage(t, "a on disk after success", diskA, 7, t0.Add(3*time.Second))
	checkUsage(t, "b on disk after success", stored(t, st, b), 2, t0.Add(2*time.Second))
	if diskA.UsageBatch != after {
		t.Errorf("a's UsageBatch = %d, want the last batch %d", diskA.UsageBatch, after)
	}
	checkUsage(t, "a merged after success", merged(t, st, r, a), 7, t0.Add(3*time.Second))

	// A later flush with nothing new writes nothing more.
	flush(t, r)
	checkUsage(t, "a after empty flush", stored(t, st, a), 7, t0.Add(3*time.Second))

	// Every batch number handed to the store is new and higher than the last.
	seen := fs.seen()
	for i := 1; i < len(seen); i++ {
		if seen[i] <= seen[i-1] {
			t.Errorf("batch numbers not increasing: %v", seen)
			break
		}
	}
	if len(seen) != 4 {
		t.Errorf("ApplyUsage calls = %v, want 4 (ok, fail, fail, ok)", seen)
	}
}

// TestFailedFlushThatTookEffectCountsOnce: a commit whose last sync fails
// is reported as failed though the file has it (bbolt has written the
// meta page). Folded back into pending, its uses would count twice, on
// every read and again on disk with the next flush. They are not known to
// be on disk either, so they count as pending and the failure stands until
// a later commit succeeds, which the next flush makes even with nothing
// new to write (an idle server must become ready again).
func TestFailedFlushThatTookEffectCountsOnce(t *testing.T) {
	st, a, fs, r := withUses(t, "judy", 5)
	fs.tookEffect.Store(true)
	failFlush(t, fs, r, "Flush whose commit took effect")
	checkUsage(t, "a read after the flush", merged(t, st, r, a), 5, t0)
	if got := r.Pending(); got != 5 {
		t.Errorf("Pending() = %d, want 5: in the file, but maybe not on disk", got)
	}
	if err := r.Err(); !errors.Is(err, errDisk) {
		t.Errorf("Err() = %v, want %v: the disk may not hold the batch, readiness must say so", err, errDisk)
	}
	before := lastBatch(t, st)

	flush(t, r) // nothing new recorded
	if got := lastBatch(t, st); got <= before {
		t.Errorf("LastUsageBatch = %d after a flush owed a commit, want above %d", got, before)
	}
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() after the next commit = %d, want 0", got)
	}
	if err := r.Err(); err != nil {
		t.Errorf("Err() after the next commit = %v, want nil", err)
	}
	checkUsage(t, "a on disk after the next flush", stored(t, st, a), 5, t0)

	r.Record(a.ID, t0.Add(time.Second))
	flush(t, r)
	checkUsage(t, "a on disk after a later use", stored(t, st, a), 6, t0.Add(time.Second))
}

// Promise 4: batch numbering continues across a reopen.

func TestBatchNumberingContinuesAcrossReopen(t *testing.T) {
	path := dbPath(t)
	st := openAt(t, path)
	a, _ := create(t, st, "ivan", "a")
	b, _ := create(t, st, "ivan", "b")
	r := newRecorder(t, st)
	for i := range 3 {
		r.Record(a.ID, t0.Add(time.Duration(i)*time.Second))
		r.Record(a.ID, t0.Add(time.Duration(i)*time.Second))
		flush(t, r)
	}
	r.Record(b.ID, t0) // b's only batch is 4
	flush(t, r)
	last := lastBatch(t, st)
	if last != 4 {
		t.Fatalf("LastUsageBatch = %d, want 4", last)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = openAt(t, path)
	if got := lastBatch(t, st); got != last {
		t.Fatalf("LastUsageBatch after reopen = %d, want %d", got, last)
	}
	g := newGate(st)
	r = newRecorder(t, g)

	// Nothing in flight: a token stamped with the last batch, and one
	// stamped with an older one, are not counted twice.
	diskA := stored(t, st, a)
	if diskA.UsageBatch != 3 {
		t.Fatalf("a's UsageBatch = %d, want 3", diskA.UsageBatch)
	}
	checkUsage(t, "a after reopen", merged(t, st, r, a), 6, t0.Add(2*time.Second))
	diskB := stored(t, st, b)
	if diskB.UsageBatch != last {
		t.Fatalf("b's UsageBatch = %d, want %d", diskB.UsageBatch, last)
	}
	checkUsage(t, "b after reopen", merged(t, st, r, b), 1, t0)

	r.Record(b.ID, t0.Add(time.Minute))
	checkUsage(t, "b with a pending use", merged(t, st, r, b), 2, t0.Add(time.Minute))

	// The next batch is numbered after the last one on disk, so a copy of
	// b stamped with the last batch is recognised as predating it.
	g.armed.Store(true)
	done := make(chan error, 1)
	go func() { done <- r.Flush() }()
	if batch := step(t, "ApplyUsage", g.entered); batch != last+1 {
		t.Errorf("first batch after reopen = %d, want %d", batch, last+1)
	}
	checkUsage(t, "b in flight, read before commit", merged(t, st, r, b), 2, t0.Add(time.Minute))
	g.proceed <- struct{}{}
	step(t, "commit", g.committed)
	checkUsage(t, "b in flight, read after commit", merged(t, st, r, b), 2, t0.Add(time.Minute))
	g.finish <- struct{}{}
	if err := step(t, "Flush", done); err != nil {
		t.Fatalf("Flush = %v", err)
	}
	g.armed.Store(false)
	if got := lastBatch(t, st); got != last+1 {
		t.Errorf("LastUsageBatch = %d, want %d", got, last+1)
	}
	checkUsage(t, "b on disk", stored(t, st, b), 2, t0.Add(time.Minute))
	checkUsage(t, "b merged", merged(t, st, r, b), 2, t0.Add(time.Minute))
}

// Promise 5: Run flushes periodically and returns when ctx is cancelled.

func TestRunFlushesPeriodically(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "judy", "a")
	r := newRecorder(t, st)
	const interval = 20 * time.Millisecond
	stop := startRun(t, r, interval)

	// Generous for a slow, raced disk, but still a bounded number of
	// intervals; Flush is never called by the test.
	waitStored := func(want uint64) time.Duration {
		t.Helper()
		start := time.Now()
		deadline := start.Add(50 * interval)
		for time.Now().Before(deadline) {
			if stored(t, st, a).UsageCount == want {
				return time.Since(start)
			}
			time.Sleep(interval / 4)
		}
		t.Fatalf("count %d did not reach disk within %v (have %d, pending %d)", want, 50*interval, stored(t, st, a).UsageCount, r.Pending())
		return 0
	}
	for range 3 {
		r.Record(a.ID, t0)
	}
	d1 := waitStored(3)
	// And again: Run keeps flushing, not just once.
	for range 2 {
		r.Record(a.ID, t0.Add(time.Second))
	}
	d2 := waitStored(5)
	t.Logf("reached disk after %v and %v (interval %v)", d1, d2, interval)
	checkUsage(t, "after Run flushes", stored(t, st, a), 5, t0.Add(time.Second))

	stop()
}

func TestRunReturnsWhenCancelled(t *testing.T) {
	r := newRecorder(t, nopStore{})
	stop := startRun(t, r, time.Hour)
	stop()

	// Already cancelled: returns at once.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	runBounded(t, r, ctx, time.Millisecond)
}

// goRun starts r.Run(ctx, interval) and returns a channel that is closed
// when Run returns.
func goRun(r *usage.Recorder, ctx context.Context, interval time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		r.Run(ctx, interval)
		close(done)
	}()
	return done
}

// startRun starts r.Run with interval under a context of its own, ended
// with the test's at the latest, and returns stop, which cancels that
// context and fails the test if Run has not returned after a while.
func startRun(t *testing.T, r *usage.Recorder, interval time.Duration) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := goRun(r, ctx, interval)
	return func() {
		t.Helper()
		cancel()
		step(t, "Run to return after cancel", done)
	}
}

// runBounded runs r.Run and fails the test if it has not returned after a
// while, instead of hanging the run.
func runBounded(t *testing.T, r *usage.Recorder, ctx context.Context, interval time.Duration) {
	t.Helper()
	step(t, "Run to return", goRun(r, ctx, interval))
}

// TestRunLeavesNoUseBehindWhenCancelled: Run leaves the last flush to its
// caller; whatever it did before returning, no use is lost or doubled and
// the caller's Flush writes the rest.
func TestRunLeavesNoUseBehindWhenCancelled(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "judy", "a")
	r := newRecorder(t, st)
	// Run flushes every millisecond while uses keep coming; it is
	// cancelled in the middle of that.
	stop := startRun(t, r, time.Millisecond)
	const n = 2000
	for i := range n {
		r.Record(a.ID, t0)
		if i == n/2 {
			deadline := time.Now().Add(10 * time.Second)
			for r.Stats().Flushes == 0 { // make sure Run has flushed meanwhile
				if time.Now().After(deadline) {
					t.Fatal("Run never flushed")
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	stop()
	if got, p := stored(t, st, a).UsageCount, r.Pending(); got+p != n {
		t.Errorf("after Run returned on cancel: stored %d + pending %d, want %d", got, p, n)
	}
	checkUsage(t, "merged after Run", merged(t, st, r, a), n, t0)
	flush(t, r)
	checkUsage(t, "after the caller's Flush", stored(t, st, a), n, t0)
}

func TestRunLogsFailedFlushAndRetries(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "judy", "a")
	var logs testutil.SyncBuffer
	fs, r := newFailRecorder(t, st, slog.New(slog.NewTextHandler(&logs, nil)))
	fs.failing.Store(true)
	r.Record(a.ID, t0)
	r.Record(a.ID, t0)
	stop := startRun(t, r, 5*time.Millisecond)
	defer stop()

	deadline := time.Now().Add(5 * time.Second)
	for len(fs.seen()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n := len(fs.seen()); n < 2 {
		t.Fatalf("Run tried %d flushes, want at least 2", n)
	}
	if s := logs.String(); !strings.Contains(s, "flush usage counts") || !strings.Contains(s, errDisk.Error()) {
		t.Errorf("log does not report the failed flush: %q", s)
	}
	checkUsage(t, "merged while failing", merged(t, st, r, a), 2, t0)
	fs.failing.Store(false)
	// Wait for the retry to finish, not just to commit: until Flush
	// returns, its uses still count as pending (in flight).
	for (stored(t, st, a).UsageCount != 2 || r.Pending() != 0) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	checkUsage(t, "on disk after recovery", stored(t, st, a), 2, t0)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() after recovery = %d, want 0", got)
	}
}

// Promise 6: uses of a token that does not exist are dropped, and the rest
// of the batch is written.

func TestUnknownTokenUsesAreDropped(t *testing.T) {
	st := openTemp(t)
	a, _ := create(t, st, "mallory", "a")
	b, _ := create(t, st, "trent", "b")
	r := newRecorder(t, st)
	const ghost = 1 << 40
	r.Record(ghost, t0.Add(time.Hour))
	r.Record(a.ID, t0)
	r.Record(ghost, t0)
	r.Record(b.ID, t0.Add(time.Second))
	r.Record(b.ID, t0.Add(time.Second))
	r.Record(0, t0)
	flush(t, r)
	if got := r.Pending(); got != 0 {
		t.Errorf("Pending() = %d, want 0 (the ghost's uses are dropped, not retried)", got)
	}
	checkUsage(t, "a", stored(t, st, a), 1, t0)
	checkUsage(t, "b", stored(t, st, b), 2, t0.Add(time.Second))
	if got := lastBatch(t, st); got != 1 {
		t.Errorf("LastUsageBatch = %d, want 1", got)
	}
	if _, err := st.GetForUser("mallory", ghost); !errors.Is(err, token.ErrNotFound) {
		t.Errorf("GetForUser(ghost) = %v, want ErrNotFound (ApplyUsage must not create it)", err)
	}
	// A batch of nothing but unknown ids succeeds too.
	if err := st.ApplyUsage(7, map[uint64]usage.Delta{ghost: {Count: 3, Last: t0.Unix()}}); err != nil {
		t.Errorf("ApplyUsage of only unknown ids = %v", err)
	}
	checkUsage(t, "a after ghost-only batch", stored(t, st, a), 1, t0)
}

// Promise 7: Record allocates nothing in steady state.

func TestRecordAllocatesNothingWhenPending(t *testing.T) {
	r := newRecorder(t, nopStore{})
	r.Record(1, t0)
	if n := testing.AllocsPerRun(1000, func() { r.Record(1, t0) }); n != 0 {
		t.Errorf("Record on a pending id: %v allocs, want 0", n)
	}
	tok := token.Token{ID: 1}
	gen := r.Gen()
	if n := testing.AllocsPerRun(1000, func() { r.ApplySince(&tok, gen) }); n != 0 {
		t.Errorf("ApplySince: %v allocs, want 0", n)
	}
	ts := []*token.Token{&tok}
	read := func() ([]*token.Token, error) { return ts, nil }
	if n := testing.AllocsPerRun(1000, func() { _ = r.Fresh(read) }); n != 0 {
		t.Errorf("Fresh (read allocating nothing): %v allocs, want 0", n)
	}
}

func TestRecordAllocatesNothingAfterFlush(t *testing.T) {
	r := newRecorder(t, nopStore{})
	const ids = 64
	recordAll := func() {
		for id := uint64(1); id <= ids; id++ {
			r.Record(id, t0)
		}
	}

	// The first Record of an id after the first flush goes into the map
	// that was spare until then. AllocsPerRun's warm-up call would hide it,
	// so count it directly.
	recordAll()
	flush(t, r)
	first := mallocs(func() { r.Record(1, t0) })
	recordAll()
	flush(t, r)
	second := mallocs(func() { r.Record(1, t0) })
	t.Logf("first Record after the 1st flush: %d mallocs; after the 2nd flush: %d", first, second)
	if second != 0 {
		t.Errorf("Record of a seen id after the 2nd flush (both maps reused): %d allocs, want 0", second)
	}
	if first != 0 {
		t.Logf("note: Record after the first flush allocates %d time(s): the spare map starts empty", first)
	}

	// Steady state: every run flushes (both maps have held every id) and
	// records every id again into the cleared map.
	recordAll()
	if n := testing.AllocsPerRun(200, func() {
		if err := r.Flush(); err != nil {
			t.Fatal(err)
		}
		recordAll()
	}); n != 0 {
		t.Errorf("Flush + Record of %d seen ids: %v allocs per run, want 0", ids, n)
	}
}

// mallocs counts the heap allocations of one call of f.
func mallocs(f func()) uint64 {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.Mallocs - before.Mallocs
}

func BenchmarkRecord(b *testing.B) {
	r := newRecorder(b, nopStore{})
	at := time.Now()
	r.Record(1, at)
	b.ReportAllocs()
	for b.Loop() {
		r.Record(1, at)
	}
}

func BenchmarkApply(b *testing.B) {
	r := newRecorder(b, nopStore{})
	at := time.Now()
	r.Record(1, at)
	tok := token.Token{ID: 1}
	b.ReportAllocs()
	for b.Loop() {
		t := tok
		if !r.ApplySince(&t, r.Gen()) {
			b.Fatal("ApplySince refused")
		}
	}
}

func BenchmarkFresh(b *testing.B) {
	r := newRecorder(b, nopStore{})
	r.Record(1, time.Now())
	var tok token.Token
	ts := []*token.Token{&tok}
	read := func() ([]*token.Token, error) {
		tok = token.Token{ID: 1}
		return ts, nil
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := r.Fresh(read); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRecordParallel(b *testing.B) {
	r := newRecorder(b, nopStore{})
	at := time.Now()
	const ids = 16
	for id := uint64(1); id <= ids; id++ {
		r.Record(id, at)
	}
	var next atomic.Uint64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		id := next.Add(1)%ids + 1
		for pb.Next() {
			r.Record(id, at)
		}
	})
}

// TestStats checks what metrics read: uses pending (including those a
// failed flush folded back), committed and failed flushes, and LastFlush,
// which is the start of the last committed flush (uses recorded while it
// commits are not on disk yet), not its end.
func TestStats(t *testing.T) {
	_, a, fs, r := withUses(t, "alice", 3)
	if s := r.Stats(); s.Pending != 3 || s.Flushes != 0 || s.Failures != 0 {
		t.Fatalf("after 3 uses: %+v", s)
	}
	before := r.Stats().LastFlush
	failFlush(t, fs, r, "failing Flush")
	if s := r.Stats(); s.Pending != 3 || s.Failures != 1 || s.Flushes != 0 || !s.LastFlush.Equal(before) {
		t.Fatalf("after a failed flush: %+v, want 3 pending, 1 failure, LastFlush unchanged", s)
	}
	var during time.Time
	fs.during = func() {
		r.Record(a.ID, t0) // recorded while the flush is in flight
		during = time.Now()
		time.Sleep(10 * time.Millisecond) // a commit that takes a while
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	if s.Pending != 1 || s.Flushes != 1 || s.Failures != 1 {
		t.Fatalf("after a committed flush: %+v, want 1 pending (recorded mid-flush), 1 flush, 1 failure", s)
	}
	if !s.LastFlush.Before(during) {
		t.Errorf("LastFlush %v is not before the use recorded mid-flush (%v): it claims that use is on disk", s.LastFlush, during)
	}
	if r.Pending() != s.Pending {
		t.Errorf("Pending() = %d, Stats().Pending = %d", r.Pending(), s.Pending)
	}
}
