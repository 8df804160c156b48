package main

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRecentCheck: recent answers from the last result while it is
// younger than maxAge, so unauthenticated /readyz probes share the health
// monitor's write; run always checks and remembers; a check that misses
// its deadline (a hung disk) is a remembered failure, and one whose
// caller went away is not the disk's answer.
func TestRecentCheck(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	var calls int
	var result error
	c := &recentCheck{
		check:  func(ctx context.Context) error { calls++; return errors.Join(result, ctx.Err()) },
		maxAge: 2 * time.Second,
		now:    func() time.Time { return now },
	}
	ctx := context.Background()
	for range 100 {
		if err := c.recent(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Errorf("100 probes ran the check %d times, want 1", calls)
	}
	now = now.Add(2 * time.Second)
	result = errors.New("disk full")
	if err := c.recent(ctx); err == nil || calls != 2 {
		t.Errorf("probe after maxAge = %v after %d checks, want the new failure after 2", err, calls)
	}
	now = now.Add(time.Second)
	if err := c.recent(ctx); err == nil || calls != 2 {
		t.Errorf("probe within maxAge of a failure = %v after %d checks, want the remembered failure", err, calls)
	}
	result = nil
	if err := c.run(ctx); err != nil || calls != 3 {
		t.Errorf("run = %v after %d checks, want a fresh pass", err, calls)
	}
	if err := c.recent(ctx); err != nil || calls != 3 {
		t.Errorf("probe after run = %v after %d checks, want run's pass", err, calls)
	}
	now = now.Add(time.Minute)
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.run(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("run with a canceled ctx = %v", err)
	}
	if err := c.recent(ctx); err != nil || calls != 5 {
		t.Errorf("after a run whose caller went away: %v after %d checks; want a fresh check, not the caller's cancellation", err, calls)
	}
	now = now.Add(time.Minute)
	late, cancelLate := context.WithDeadline(ctx, time.Now().Add(-time.Second)) // a hung write: the monitor's deadline passed
	defer cancelLate()
	if err := c.run(late); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("run past its deadline = %v", err)
	}
	if err := c.recent(ctx); !errors.Is(err, context.DeadlineExceeded) || calls != 6 {
		t.Errorf("probe after a check that missed its deadline = %v after %d checks; want that failure, remembered", err, calls)
	}
}
