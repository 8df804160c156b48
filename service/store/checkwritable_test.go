package store

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestCheckWritableDoesNotHang holds the database's write lock, as a
// stuck fsync would, and checks that CheckWritable gives up when its
// context ends instead of hanging its caller, that probes arriving while
// the disk hangs share the one check in flight instead of piling up, and
// that the check succeeds again once the disk does.
func TestCheckWritableDoesNotHang(t *testing.T) {
	st, _ := openTemp(t)
	if err := st.CheckWritable(context.Background()); err != nil {
		t.Fatalf("CheckWritable on a healthy disk: %v", err)
	}

	release, held := make(chan struct{}), make(chan struct{})
	go func() {
		_ = st.db.Update(func(*bolt.Tx) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := st.CheckWritable(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("CheckWritable while writes hang = %v, want DeadlineExceeded", err)
		}
	}
	if n := checkGoroutines(); n != 1 {
		t.Errorf("20 probes of a hung disk left %d write checks running, want them to share one", n)
	}
	close(release)
	if err := st.CheckWritable(context.Background()); err != nil {
		t.Fatalf("CheckWritable after the disk recovered: %v", err)
	}
}

// checkGoroutines counts the goroutines running a CheckWritable write.
func checkGoroutines() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "store.(*Store).CheckWritable.func")
}
