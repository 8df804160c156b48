package rpc

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/tap"
)

type ctxKey struct{}

// TestCapDeadlineWithoutDone checks the capped context when nothing waits
// on Done (the read path): the deadline is the cap, Err turns to
// DeadlineExceeded when it passes (so does context.Cause), and values pass
// through.
func TestCapDeadlineWithoutDone(t *testing.T) {
	parent := context.WithValue(context.Background(), ctxKey{}, "v")
	before := time.Now()
	c := capDeadline(parent, 30*time.Millisecond)
	if c == nil {
		t.Fatal("capDeadline of a context without a deadline = nil")
	}
	defer c.release()
	d, ok := c.Deadline()
	if !ok || d.Before(before.Add(30*time.Millisecond)) || d.After(time.Now().Add(30*time.Millisecond)) {
		t.Errorf("Deadline() = %v, %v; want now+30ms", d, ok)
	}
	if c.Value(ctxKey{}) != "v" {
		t.Error("the parent's values are lost")
	}
	if err := c.Err(); err != nil {
		t.Fatalf("Err() before the deadline = %v", err)
	}
	time.Sleep(time.Until(d) + time.Millisecond)
	if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Err() after the deadline = %v, want DeadlineExceeded", err)
	}
	if err := context.Cause(c); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Cause() after the deadline = %v, want DeadlineExceeded", err)
	}
	if c.timed.Load() != nil {
		t.Error("a timer context was made though nobody asked for Done")
	}
}

// TestCapDeadlineDone checks that asking for Done gives a channel that
// closes at the cap, that a context derived from the capped one ends with
// it, and that Err then agrees with Done.
func TestCapDeadlineDone(t *testing.T) {
	c := capDeadline(context.Background(), 20*time.Millisecond)
	defer c.release()
	derived, cancel := context.WithCancel(c)
	defer cancel()
	if err := c.Err(); err != nil {
		t.Fatalf("Err() = %v before the deadline", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed 5s after a 20ms cap")
	}
	select {
	case <-derived.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("a derived context did not end with the capped one")
	}
	if !errors.Is(c.Err(), context.DeadlineExceeded) || !errors.Is(derived.Err(), context.DeadlineExceeded) {
		t.Errorf("Err() = %v, derived %v; want DeadlineExceeded", c.Err(), derived.Err())
	}
	if err := context.Cause(derived); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Cause(derived) = %v, want DeadlineExceeded", err)
	}
}

// TestCapDeadlineEnds checks that a capped context ends, Canceled, when
// its parent is canceled or the call ends (release, as a
// context.WithTimeout's cancel does), whether Done was asked for before
// the end or only after.
func TestCapDeadlineEnds(t *testing.T) {
	for _, tc := range []struct {
		name string
		// start returns a capped context and what ends it.
		start func() (c *cappedContext, end func())
	}{
		{"parent canceled", func() (*cappedContext, func()) {
			parent, cancel := context.WithCancel(context.Background())
			return capDeadline(parent, time.Hour), cancel
		}},
		{"released", func() (*cappedContext, func()) {
			c := capDeadline(context.Background(), time.Hour)
			return c, c.release
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, early := range []bool{false, true} {
				when := "after"
				if early {
					when = "before"
				}
				t.Run("Done asked "+when, func(t *testing.T) {
					c, end := tc.start()
					defer c.release()
					if early {
						_ = c.Done()
					}
					end()
					if err := c.Err(); !errors.Is(err, context.Canceled) {
						t.Errorf("Err() after the end = %v, want Canceled", err)
					}
					select {
					case <-c.Done():
					case <-time.After(5 * time.Second):
						t.Fatal("Done not closed after the end")
					}
				})
			}
		})
	}
}

// TestCapDeadlineKeepsShorter checks that a client deadline before the cap
// is left alone: no capped context at all.
func TestCapDeadlineKeepsShorter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if c := capDeadline(ctx, time.Hour); c != nil {
		t.Errorf("capDeadline with an earlier client deadline = %v, want nil", c)
	}
	if c := capDeadline(ctx, time.Millisecond); c == nil {
		t.Error("capDeadline with a later client deadline = nil, want a capped context")
	} else {
		c.release()
	}
}

// TestGuardAllocations pins what the guard costs a call that succeeds
// without waiting: the capped context itself, one allocation.
func TestGuardAllocations(t *testing.T) {
	ic := guardInterceptor(slog.New(slog.DiscardHandler), time.Minute)
	handler := func(ctx context.Context, _ any) (any, error) { return nil, ctx.Err() }
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		if _, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, handler); err != nil {
			t.Fatal(err)
		}
	}); n > 1 {
		t.Errorf("the deadline cap allocates %v times per call, want at most 1", n)
	}
}

// TestCapDeadlineErrStays checks the Context contract that once Err has
// reported an error it keeps reporting that one, whatever happens after:
// the parent canceled, the call released, or Done asked for late.
func TestCapDeadlineErrStays(t *testing.T) {
	past := func(t *testing.T) (*cappedContext, context.CancelFunc) {
		t.Helper()
		parent, cancel := context.WithCancel(context.Background())
		c := capDeadline(parent, time.Millisecond)
		time.Sleep(2 * time.Millisecond)
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Err() past the deadline = %v", err)
		}
		return c, cancel
	}
	t.Run("parent canceled after the deadline", func(t *testing.T) {
		c, cancel := past(t)
		defer c.release()
		cancel()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Err() = %v, want DeadlineExceeded still", err)
		}
	})
	t.Run("released after the deadline", func(t *testing.T) {
		c, cancel := past(t)
		defer cancel()
		c.release()
		if err := c.Err(); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Err() = %v, want DeadlineExceeded still", err)
		}
	})
	t.Run("Done asked after release", func(t *testing.T) {
		c := capDeadline(context.Background(), time.Millisecond)
		c.release()
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Err() after release = %v, want Canceled", err)
		}
		time.Sleep(2 * time.Millisecond) // past the deadline too
		select {
		case <-c.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed after release")
		}
		if err := c.Err(); !errors.Is(err, context.Canceled) {
			t.Errorf("Err() = %v, want Canceled still", err)
		}
	})
}

// BenchmarkCallCap is what the call cap costs a call, with the context a
// transport gives a stream (a cancel context, cancelled when the stream
// ends), the stream's Done channel taken as grpc-go takes it:
//   - tap: a gRPC call whose client set no deadline, capped by capCalls
//     when its headers arrive (a timer context);
//   - tap/client-deadline: one whose client's deadline is sooner, which
//     grpc-go times itself and capCalls leaves alone;
//   - guard: a REST call through the in-process channel, capped by the
//     guard's lazy context, whose Done nothing asks for.
func BenchmarkCallCap(b *testing.B) {
	const limit = 10 * time.Second
	info := &tap.Info{FullMethodName: "/tokend.v1.TokenService/GetToken"}
	capTap := capCalls(limit, map[string]bool{})
	tapped := func(stream func() (context.Context, context.CancelFunc)) func(*testing.B) {
		return func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				ctx, end := stream()
				ctx, _ = capTap(ctx, info)
				_ = ctx.Done()
				end()
			}
		}
	}
	b.Run("tap", tapped(func() (context.Context, context.CancelFunc) {
		return context.WithCancel(context.Background())
	}))
	b.Run("tap/client-deadline", tapped(func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), time.Second)
	}))
	b.Run("guard", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			stream, end := context.WithCancel(context.Background())
			c := capDeadline(stream, limit)
			_ = c.Err()
			c.release()
			end()
		}
	})
}
