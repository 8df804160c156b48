package store

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// commitFailureChild, set in the environment, makes
// TestCommitFailureIsUnavailable run its body: in a child process, since
// the file size limit it lowers holds for the whole process.
const commitFailureChild = "TOKEND_STORE_COMMIT_FAILURE_CHILD"

// TestCommitFailureIsUnavailable makes bbolt's commits fail for real: it
// lowers RLIMIT_FSIZE below the offset of every page but the two meta
// pages, so writing a transaction's pages fails with EFBIG (Go ignores the
// SIGXFSZ that comes with it). It checks that such writes are
// ErrUnavailable and leave the data as it was, that reads and domain
// errors are unaffected, and that writes work again once the limit is
// lifted, leaving a consistent file.
func TestCommitFailureIsUnavailable(t *testing.T) {
	if os.Getenv(commitFailureChild) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCommitFailureIsUnavailable$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), commitFailureChild+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestCommitFailureIsUnavailable") {
			t.Fatalf("child with a lowered file size limit: %v\n%s", err, out)
		}
		return
	}

	path := filepath.Join(t.TempDir(), "tokend.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	kept, h := create(t, s, "alice", "kept")
	if err := s.ApplyUsage(1, map[uint64]usage.Delta{kept.ID: {Count: 3, Last: t0.Unix()}}); err != nil {
		t.Fatal(err)
	}

	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	restore := sync.OnceFunc(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
			t.Fatalf("restore RLIMIT_FSIZE: %v", err)
		}
	})
	defer restore()
	low := lim
	low.Cur = uint64(2 * os.Getpagesize())
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &low); err != nil {
		t.Fatalf("lower RLIMIT_FSIZE: %v", err)
	}

	checkWrites(t, s, kept, func(err error) bool { return strings.Contains(err.Error(), "file too large") })

	// Nothing of the failed writes is visible, and reads still work.
	got, err := s.GetForUser("alice", kept.ID)
	if err != nil || got.Name != "kept" || !got.RevokedAt.IsZero() || got.UsageCount != 3 {
		t.Errorf("after failed writes: %+v, %v; want the token unchanged", got, err)
	}
	if got, err := s.Lookup(h, t0); err != nil || got.ID != kept.ID {
		t.Errorf("Lookup after failed writes = %d, %v", got.ID, err)
	}
	if n, err := s.LastUsageBatch(); err != nil || n != 1 {
		t.Errorf("LastUsageBatch = %d, %v; want 1", n, err)
	}
	// Answers about the data are decided before the commit, so they stay
	// what they are while the disk fails.
	if _, err := s.Revoke("carol", kept.ID, t0); !errors.Is(err, token.ErrUserNotFound) || errors.Is(err, ErrUnavailable) {
		t.Errorf("Revoke of an unknown user while writes fail = %v, want token.ErrUserNotFound", err)
	}
	if _, err := s.Revoke("alice", kept.ID+100, t0); !errors.Is(err, token.ErrNotFound) || errors.Is(err, ErrUnavailable) {
		t.Errorf("Revoke of a missing token while writes fail = %v, want token.ErrNotFound", err)
	}

	restore()
	if _, err := s.Revoke("alice", kept.ID, t0); err != nil {
		t.Errorf("Revoke after the limit is lifted = %v", err)
	}
	if err := s.ApplyUsage(2, map[uint64]usage.Delta{kept.ID: {Count: 2, Last: t0.Unix()}}); err != nil {
		t.Errorf("ApplyUsage after the limit is lifted = %v", err)
	}
	again, _ := create(t, s, "alice", "again")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	_ = db.Close()
	if err != nil {
		t.Fatalf("bbolt consistency check: %v", err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ts, err := s.List("alice")
	if err != nil || len(ts) != 2 || ts[0].ID != again.ID || ts[1].ID != kept.ID {
		t.Fatalf("List after reopen = %+v, %v; want tokens %d and %d only", ts, err, again.ID, kept.ID)
	}
	if k := ts[1]; k.RevokedAt.IsZero() || k.UsageCount != 5 || k.Name != "kept" {
		t.Errorf("after reopen: %+v; want revoked, named kept, with 5 uses", k)
	}
}
