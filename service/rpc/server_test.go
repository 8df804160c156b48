package rpc

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/testutil"
)

// TestGuardCapsDeadline checks the deadline the handler sees: the cap when
// the client sent none or a later one, the client's own when it is
// earlier; and that a call reaching it ends with DeadlineExceeded.
func TestGuardCapsDeadline(t *testing.T) {
	const max = 50 * time.Millisecond
	ic := guardInterceptor(slog.New(slog.DiscardHandler), max)
	for _, tc := range []struct {
		name   string
		client time.Duration // 0: no client deadline
		capped bool          // the handler sees the cap, not the client's deadline
	}{
		{"no client deadline", 0, true},
		{"a longer client deadline is cut", time.Hour, true},
		{"a shorter client deadline stays", 10 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.client > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.client)
				defer cancel()
			}
			clientDeadline, _ := ctx.Deadline()
			start := time.Now()
			var seen time.Time
			_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"}, func(ctx context.Context, _ any) (any, error) {
				seen, _ = ctx.Deadline()
				select {
				case <-ctx.Done():
					return nil, ctx.Err()
				case <-time.After(5 * time.Second):
					return "finished", nil
				}
			})
			if status.Code(err) != codes.DeadlineExceeded {
				t.Fatalf("err = %v, want DeadlineExceeded", err)
			}
			if tc.capped {
				if seen.Before(start.Add(max)) || seen.After(time.Now().Add(max)) {
					t.Errorf("handler's deadline %v, want the cap, %v after the call began", seen, max)
				}
			} else if !seen.Equal(clientDeadline) {
				t.Errorf("handler's deadline %v, want the client's %v", seen, clientDeadline)
			}
		})
	}
}

// TestGuardStartsNoWorkPastDeadline checks that a call whose deadline has
// passed before it starts never reaches its handler, whether the client's
// deadline or the cap has passed.
func TestGuardStartsNoWorkPastDeadline(t *testing.T) {
	expired, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	for _, tc := range []struct {
		name string
		ctx  context.Context
		max  time.Duration
	}{
		{"client deadline passed", expired, time.Minute},
		{"cap of 1ns", context.Background(), time.Nanosecond},
	} {
		ran := false
		_, err := guardInterceptor(slog.New(slog.DiscardHandler), tc.max)(tc.ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/x/Y"},
			func(context.Context, any) (any, error) {
				ran = true
				return "ok", nil
			})
		if status.Code(err) != codes.DeadlineExceeded || ran {
			t.Errorf("%s: %v, handler ran: %v; want DeadlineExceeded and no run", tc.name, err, ran)
		}
	}
}

// TestRecoverTurnsPanicIntoInternal runs the chain's error mapping and
// panic recovery around a handler that panics: the caller gets Internal
// with the generic message (never the panic value), the panic and its
// stack are logged once, and the chain keeps serving.
func TestRecoverTurnsPanicIntoInternal(t *testing.T) {
	var logs testutil.SyncBuffer
	chain := guardInterceptor(slog.New(slog.NewJSONHandler(&logs, nil)), time.Minute)
	info := &grpc.UnaryServerInfo{FullMethod: "/tokend.v1.TokenService/GetToken"}
	_, err := chain(context.Background(), nil, info, func(context.Context, any) (any, error) {
		panic("secret internals")
	})
	st := status.Convert(err)
	if st.Code() != codes.Internal || st.Message() != MessageInternal || Reason(st) != ReasonInternal {
		t.Errorf("a panicking handler: %v %q (reason %q), want Internal %q", st.Code(), st.Message(), Reason(st), MessageInternal)
	}
	out := logs.String()
	if strings.Count(out, `"msg":"internal error"`) != 1 || !strings.Contains(out, "secret internals") || !strings.Contains(out, "goroutine") {
		t.Errorf("log lacks one internal-error line with the panic and its stack:\n%s", out)
	}
	resp, err := chain(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil })
	if err != nil || resp != "ok" {
		t.Errorf("after a panic: %v, %v; want the chain to keep serving", resp, err)
	}
}

// fakeServerStream is the least of a grpc.ServerStream the stream
// interceptor uses.
type fakeServerStream struct {
	grpc.ServerStream
	ctx    context.Context
	header metadata.MD
}

func (s *fakeServerStream) Context() context.Context { return s.ctx }
func (s *fakeServerStream) SetHeader(md metadata.MD) error {
	s.header = metadata.Join(s.header, md)
	return nil
}

// TestStreamInterceptorRecoversPanic checks that a panicking stream
// handler ends its stream with Internal and the generic message, its panic
// logged once with the stack and the trace id, never sent; and that the
// handler sees the request's Info.
func TestStreamInterceptorRecoversPanic(t *testing.T) {
	var logs testutil.SyncBuffer
	ic := streamInterceptor(slog.New(slog.NewJSONHandler(&logs, nil)), context.Background(), map[string]bool{"/grpc.health.v1.Health/Watch": true})
	ss := &fakeServerStream{ctx: context.Background()}
	info := &grpc.StreamServerInfo{FullMethod: "/grpc.health.v1.Health/Watch", IsServerStream: true}
	var seen *request.Info
	err := ic(nil, ss, info, func(_ any, s grpc.ServerStream) error {
		seen = request.FromContext(s.Context())
		panic("secret internals")
	})
	st := status.Convert(err)
	if st.Code() != codes.Internal || st.Message() != MessageInternal {
		t.Errorf("a panicking stream: %v %q, want Internal %q", st.Code(), st.Message(), MessageInternal)
	}
	if seen == nil || len(seen.TraceID) != 32 {
		t.Fatalf("the handler saw Info %+v, want one with a trace id", seen)
	}
	if got := ss.header.Get(TraceHeader); len(got) != 1 || got[0] != seen.TraceID {
		t.Errorf("x-trace-id header = %v, want %s", got, seen.TraceID)
	}
	out := logs.String()
	if strings.Count(out, `"msg":"internal error"`) != 1 || !strings.Contains(out, "secret internals") || !strings.Contains(out, "goroutine") {
		t.Errorf("log lacks one internal-error line with the panic and its stack:\n%s", out)
	}
	if !strings.Contains(out, `"msg":"request"`) || !strings.Contains(out, `"code":"Internal"`) || !strings.Contains(out, seen.TraceID) {
		t.Errorf("log lacks the stream's request line with its code and trace id:\n%s", out)
	}
}

// TestStreamInterceptorEndsStreams checks that ending the server's streams
// ends the context of a stream in flight, and of one that starts after.
func TestStreamInterceptorEndsStreams(t *testing.T) {
	ended, end := context.WithCancel(context.Background())
	ic := streamInterceptor(slog.New(slog.DiscardHandler), ended, nil)
	info := &grpc.StreamServerInfo{FullMethod: "/grpc.health.v1.Health/Watch", IsServerStream: true}
	waiting := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- ic(nil, &fakeServerStream{ctx: context.Background()}, info, func(_ any, s grpc.ServerStream) error {
			close(waiting)
			<-s.Context().Done() // as health's Watch waits
			return s.Context().Err()
		})
	}()
	<-waiting
	end()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("a stream in flight when streams ended: %v, want its context canceled", err)
	}
	err := ic(nil, &fakeServerStream{ctx: context.Background()}, info, func(_ any, s grpc.ServerStream) error {
		return s.Context().Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("a stream started after streams ended: %v, want its context canceled", err)
	}
}
