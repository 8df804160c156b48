package rpc

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// TestDeadlineInterceptorCaps checks that a call cannot outlive the cap,
// whatever deadline the client sent, and that a shorter one is kept.
func TestDeadlineInterceptorCaps(t *testing.T) {
	ic := deadlineInterceptor(50 * time.Millisecond)
	slow := func(ctx context.Context, _ any) (any, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Second):
			return "finished", nil
		}
	}
	for _, tc := range []struct {
		name   string
		client time.Duration // 0: no client deadline
		max    time.Duration
	}{
		{"no client deadline", 0, time.Second},
		{"a longer client deadline is cut", time.Hour, time.Second},
		{"a shorter client deadline stays", 10 * time.Millisecond, 40 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.client)
				defer cancel()
			}
			start := time.Now()
			_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, slow)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("err = %v, want DeadlineExceeded", err)
			}
			if took := time.Since(start); took > tc.max {
				t.Errorf("the call ran %v, want it cut by %v", took, tc.max)
			}
		})
	}
	if status := toStatus(context.DeadlineExceeded); status.Code().String() != "DeadlineExceeded" {
		t.Errorf("a capped call maps to %v, want DeadlineExceeded", status.Code())
	}
}
