package rpc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// TestStorageUnavailableStatus checks what a client learns of a write the
// database could not take: Unavailable with a reason to match on and a
// delay to retry after, and not one word of the cause.
func TestStorageUnavailableStatus(t *testing.T) {
	cause := errors.New("write /var/lib/tokend/tokend.db: file too large")
	err := fmt.Errorf("create token: %w", fmt.Errorf("%w: %w", store.ErrUnavailable, cause))
	st := toStatus(err)
	if got, want := st.Code(), codes.Unavailable; got != want {
		t.Fatalf("code = %v, want %v", got, want)
	}
	if got, want := Reason(st), ReasonStorageUnavailable; got != want {
		t.Errorf("reason = %q, want %q", got, want)
	}
	if got, want := st.Message(), msgStorageUnavailable; got != want {
		t.Errorf("message = %q, want %q", got, want)
	}
	var retry time.Duration
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			retry = ri.GetRetryDelay().AsDuration()
		}
	}
	if retry < time.Second || retry > 30*time.Second {
		t.Errorf("RetryInfo delay = %v, want a few seconds", retry)
	}
	for _, leak := range []string{"tokend.db", "too large", store.ErrUnavailable.Error(), "/var/lib"} {
		if strings.Contains(fmt.Sprint(st.Proto()), leak) {
			t.Errorf("the status sent to clients contains %q: %v", leak, st.Proto())
		}
	}

	// Domain errors and unknown faults keep their codes: only
	// store.ErrUnavailable is Unavailable.
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("revoke: %w", token.ErrNotFound), codes.NotFound},
		{fmt.Errorf("create token: %w: quota", token.ErrConflict), codes.FailedPrecondition},
		{errors.New("secret hash collision"), codes.Internal},
	} {
		if got := toStatus(tc.err).Code(); got != tc.want {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestGuardLogsStorageCause checks that the cause of an
// Unavailable, which the client never sees, is logged once with the
// request's trace id.
func TestGuardLogsStorageCause(t *testing.T) {
	var buf bytes.Buffer
	ic := guardInterceptor(slog.New(slog.NewJSONHandler(&buf, nil)), 0)
	ri := &request.Info{TraceID: "0123456789abcdef0123456789abcdef"}
	ctx := request.NewContext(context.Background(), ri)
	failing := func(context.Context, any) (any, error) {
		return nil, fmt.Errorf("create token: %w: %w", store.ErrUnavailable, errors.New("write tokend.db: file too large"))
	}
	_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: "/tokend.v1.TokenService/CreateToken"}, failing)
	if got := status.Code(err); got != codes.Unavailable {
		t.Fatalf("code = %v, want Unavailable", got)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 1 {
		t.Fatalf("logged %d lines, want 1:\n%s", len(lines), buf.String())
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &line); err != nil {
		t.Fatal(err)
	}
	if line["level"] != "ERROR" || line["trace_id"] != ri.TraceID || !strings.Contains(fmt.Sprint(line["error"]), "file too large") {
		t.Errorf("log line = %s, want an ERROR with the trace id and the cause", lines[0])
	}
}
