package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/store"
)

const (
	// crashFlushInterval is the --usage-flush-interval of the killed server:
	// the most usage a crash may lose, by the promise of package usage.
	crashFlushInterval = 200 * time.Millisecond
	// crashFlushSlack is what a crash may lose beyond one interval. A flush
	// swaps the pending counts out and then commits them, and the commit
	// takes time: it waits for bbolt's single writer (here busy with the
	// creates and revokes, each of which fsyncs) and then fsyncs itself. A
	// SIGKILL that lands after the swap but before the commit is durable
	// loses that batch entirely (bbolt's transaction is atomic, so it is all
	// or nothing, never half), and the last committed batch is then the one
	// swapped an interval earlier: the loss reaches back one interval plus
	// that commit's duration. Ticker and scheduling delays on a busy machine
	// (the test runs under -race with a dozen client goroutines) add a
	// little more. 300ms covers both with a wide margin.
	crashFlushSlack = 300 * time.Millisecond
)

// crashServeFlags are the flags of every server in TestCrashKill9. The
// live-token limit is lifted so that the creator is never refused with a 409.
var crashServeFlags = []string{
	"--usage-flush-interval", crashFlushInterval.String(),
	"--max-tokens-per-user", "0",
}

// crashCreate creates a token named name over REST. The token is
// acknowledged only when the status is 201 and err is nil.
func crashCreate(hc *http.Client, api, secret, name string) (createdToken, int, error) {
	body, _ := json.Marshal(map[string]string{"name": name})
	status, b, err := restDo(hc, http.MethodPost, api, secret, body)
	if err != nil {
		return createdToken{}, status, err
	}
	if status != http.StatusCreated {
		return createdToken{}, status, fmt.Errorf("answer %s", b)
	}
	var got struct {
		Data createdToken `json:"data"`
	}
	if err := json.Unmarshal(b, &got); err != nil || got.Data.ID <= 0 || got.Data.Secret == "" {
		return createdToken{}, status, fmt.Errorf("create answer %s: %v", b, err)
	}
	return got.Data, status, nil
}

// crashReader is what one usage worker saw.
type crashReader struct {
	token int // index into the usage tokens
	// done holds the completion time of every acknowledged use: a 200
	// whose body was read in full.
	done []time.Time
	// unacked counts requests without a complete answer. The server may
	// have counted each of them (a use is recorded before the request is
	// served) and even flushed it before the kill, so they bound how far
	// the stored count may exceed the acknowledged one.
	unacked int
}

// TestCrashKill9 kills a loaded server with SIGKILL and checks what the
// file promises afterwards: bbolt's consistency check passes, every
// acknowledged create and revoke is there, and usage counts lose at most
// about one flush interval (and never count more than was served).
func TestCrashKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary, then kills it")
	}
	dir := t.TempDir()
	bin := procBuild(t)
	db := filepath.Join(dir, "tokend.db")
	const user = "alice"

	srv := procStart(t, bin, db, crashServeFlags...)
	boot := createToken(t, db, user, "bootstrap") // over the child's admin socket

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	defer hc.CloseIdleConnections()
	api := "http://" + srv.http + "/api/v1/me/tokens"

	// The tokens whose usage is checked; each worker reads its own token
	// with its own secret, two workers per token.
	const nTokens, nWorkers = 4, 8
	readers := make([]createdToken, nTokens)
	for i := range readers {
		c, status, err := crashCreate(hc, api, boot.Secret, fmt.Sprintf("reader%d", i))
		if err != nil || status != http.StatusCreated {
			t.Fatalf("create usage token: status %d, %v", status, err)
		}
		readers[i] = c
	}

	var (
		killed     atomic.Bool // set just before the SIGKILL is sent
		stop       = make(chan struct{})
		wg         sync.WaitGroup
		failMu     sync.Mutex
		failures   []string // unexpected answers before the kill
		created    []int64  // acknowledged creates (201)
		revoked    []int64  // acknowledged revokes (204)
		toRevoke   = make(chan int64, 4096)
		workerSeen = make([]crashReader, nWorkers)
	)
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	// fail records a problem unless the server has been killed, in which
	// case failing is what requests do.
	fail := func(format string, args ...any) {
		if killed.Load() {
			return
		}
		failMu.Lock()
		failures = append(failures, fmt.Sprintf(format, args...))
		failMu.Unlock()
	}
	for _, r := range readers {
		created = append(created, r.ID)
	}

	wg.Go(func() { // creator
		for i := 0; !stopped(); i++ {
			c, status, err := crashCreate(hc, api, boot.Secret, "c"+strconv.Itoa(i))
			if err != nil || status != http.StatusCreated {
				fail("create c%d: status %d, %v", i, status, err)
				return
			}
			created = append(created, c.ID)
			if i%2 == 0 {
				select {
				case toRevoke <- c.ID:
				default:
				}
			}
		}
	})
	wg.Go(func() { // revoker
		for {
			select {
			case <-stop:
				return
			case id := <-toRevoke:
				status, body, err := restDo(hc, http.MethodDelete, "http://"+srv.http+tokenPath(id), boot.Secret, nil)
				if err != nil || status != http.StatusNoContent {
					fail("revoke %d: status %d, %v %s", id, status, err, body)
					return
				}
				revoked = append(revoked, id)
			}
		}
	})
	for w := range workerSeen {
		seen := &workerSeen[w]
		seen.token = w % nTokens
		tok := readers[seen.token]
		url := "http://" + srv.http + tokenPath(tok.ID)
		wg.Go(func() {
			for !stopped() {
				status, body, err := restDo(hc, http.MethodGet, url, tok.Secret, nil)
				if err != nil {
					seen.unacked++
					fail("GET token %d: %v", tok.ID, err)
					return
				}
				if status != http.StatusOK {
					fail("GET token %d: status %d %s", tok.ID, status, body)
					return
				}
				seen.done = append(seen.done, time.Now())
			}
		})
	}

	// Stop the load and wait for it, also when the test fails early.
	endLoad := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer endLoad()
	loadStart := time.Now()
	// Kill somewhere in the load, at a different phase of the flush cycle
	// each run.
	time.Sleep(900*time.Millisecond + rand.N(500*time.Millisecond))
	killed.Store(true)
	killTime := time.Now()
	if err := srv.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-srv.done:
		srv.done <- err
	case <-time.After(5 * time.Second):
		t.Fatal("tokend serve did not die within 5s of SIGKILL")
	}
	if ws, ok := srv.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("tokend serve ended with %v, want killed by SIGKILL\nstderr:\n%s", srv.cmd.ProcessState, srv.stderr)
	}
	endLoad()
	hc.CloseIdleConnections()
	for _, f := range failures {
		t.Errorf("before the kill: %s", f)
	}
	if len(failures) > 0 {
		t.Logf("killed server's log:\n%s", srv.stderr)
	}
	if len(created) <= nTokens || len(revoked) == 0 {
		t.Fatalf("load too light to prove anything: %d creates, %d revokes acknowledged", len(created)-nTokens, len(revoked))
	}

	// 1. The file passes bbolt's own consistency check.
	boltCheck(t, db)

	// 2. Every acknowledged create and revoke survived.
	st, err := store.Open(db, store.Options{LockTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("store.Open after SIGKILL: %v", err)
	}
	for _, id := range created {
		if _, err := st.GetForUser(user, uint64(id)); err != nil {
			t.Errorf("acknowledged create of token %d lost: %v", id, err)
		}
	}
	for _, id := range revoked {
		tok, err := st.GetForUser(user, uint64(id))
		if err != nil {
			t.Errorf("revoked token %d: %v", id, err)
		} else if tok.RevokedAt.IsZero() {
			t.Errorf("acknowledged revoke of token %d lost: RevokedAt is zero", id)
		}
	}

	// 3. Nothing is half-written, acknowledged or not: every token on
	// disk, including creates cut off by the kill, is whole, indexed by
	// its secret and listed under its owner.
	if err := st.Verify(); err != nil {
		t.Errorf("store.Verify after SIGKILL: %v", err)
	}

	// 4. Usage: never more than was served, and at most about one interval
	// lost.
	window := crashFlushInterval + crashFlushSlack
	acked := make([][]time.Time, nTokens)
	unacked := make([]int, nTokens)
	for _, s := range workerSeen {
		acked[s.token] = append(acked[s.token], s.done...)
		unacked[s.token] += s.unacked
	}
	stored := make([]uint64, nTokens)
	for i, r := range readers {
		tok, err := st.GetForUser(user, uint64(r.ID))
		if err != nil {
			t.Fatalf("usage token %d: %v", r.ID, err)
		}
		stored[i] = tok.UsageCount
		slices.SortFunc(acked[i], func(a, b time.Time) int { return a.Compare(b) })
		n := uint64(len(acked[i]))
		inWindow := uint64(0)
		for _, c := range acked[i] {
			if killTime.Sub(c) <= window {
				inWindow++
			}
		}
		// How far back before the kill the loss reaches at least: the
		// lost uses are the latest ones, so it is the completion of the
		// oldest of them.
		var reach time.Duration
		if lost := int64(n) - int64(stored[i]); lost > 0 {
			reach = killTime.Sub(acked[i][n-uint64(lost)])
		}
		t.Logf("token %d: %d acknowledged uses, %d unacknowledged, %d stored, lost %d (allowed %d: uses completed within %v of the kill; loss reaches back %v)",
			r.ID, n, unacked[i], stored[i], int64(n)-int64(stored[i]), inWindow, window, reach.Round(time.Millisecond))
		if stored[i] == 0 {
			t.Errorf("token %d: nothing was flushed in %d uses; the test proves nothing", r.ID, n)
		}
		if stored[i] > n+uint64(unacked[i]) {
			t.Errorf("token %d: stored usage_count %d exceeds the %d uses served (%d acknowledged, %d in flight at the kill)",
				r.ID, stored[i], n+uint64(unacked[i]), n, unacked[i])
		}
		if n > stored[i] && n-stored[i] > inWindow {
			t.Errorf("token %d: lost %d uses, more than the %d completed within %v of the kill", r.ID, n-stored[i], inWindow, window)
		}
	}
	t.Logf("%d creates and %d revokes acknowledged; killed %v into the load", len(created)-nTokens, len(revoked), killTime.Sub(loadStart).Round(time.Millisecond))
	if err := st.Close(); err != nil {
		t.Fatalf("store close: %v", err)
	}

	// 5. The killed server's file serves again, counting on from disk, and
	// a graceful stop flushes.
	srv2 := procStart(t, bin, db, crashServeFlags...)
	status, body := procGet(t, srv2.http, tokenPath(readers[0].ID), readers[0].Secret)
	if status != http.StatusOK {
		t.Fatalf("GET after restart: status %d, body %s", status, body)
	}
	var got struct {
		Data struct {
			UsageCount uint64 `json:"usage_count"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &got); err != nil || got.Data.UsageCount != stored[0]+1 {
		t.Errorf("GET after restart: usage_count %d, want %d (%v)", got.Data.UsageCount, stored[0]+1, err)
	}
	if err := srv2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := srv2.wait(t, 10*time.Second); code != 0 {
		t.Fatalf("restarted tokend serve exited %d after SIGTERM, want 0\nstderr:\n%s", code, srv2.stderr)
	}
	for _, logs := range []string{srv.stderr.String(), srv2.stderr.String()} {
		if leak := logLeak(logs); leak != "" {
			t.Errorf("a server log contains %q", leak)
		}
	}
	st, err = store.Open(db, store.Options{LockTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("store.Open after graceful stop: %v", err)
	}
	defer st.Close()
	if tok, err := st.GetForUser(user, uint64(readers[0].ID)); err != nil || tok.UsageCount != stored[0]+1 {
		t.Errorf("after graceful stop: usage_count %d, want %d (%v)", tok.UsageCount, stored[0]+1, err)
	}
}

// boltCheck fails the test unless the bbolt file at db opens and passes
// bbolt's own consistency check (every page reachable exactly once, the
// B+trees well-formed).
func boltCheck(t *testing.T, db string) {
	t.Helper()
	bdb, err := bolt.Open(db, 0o600, &bolt.Options{Timeout: 2 * time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("bbolt open: %v", err)
	}
	err = bdb.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if cerr := bdb.Close(); cerr != nil {
		t.Fatalf("bbolt close: %v", cerr)
	}
	if err != nil {
		t.Fatalf("bbolt consistency check:\n%v", err)
	}
}
