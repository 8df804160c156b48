package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

func withAuth(ctx context.Context, kv ...string) context.Context {
	return metadata.NewOutgoingContext(ctx, metadata.Pairs(kv...))
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestGRPCGetToken(t *testing.T) {
	f := newFixture(t)
	c := f.s.grpcClient()
	ctx := testCtx(t)

	t.Run("returns the caller's token with derived status", func(t *testing.T) {
		for _, tc := range []struct {
			tok  createdToken
			want tokenv1.TokenStatus
		}{
			{f.unused, tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE},
			{f.expired, tokenv1.TokenStatus_TOKEN_STATUS_EXPIRED},
			{f.revoked, tokenv1.TokenStatus_TOKEN_STATUS_REVOKED},
		} {
			var header metadata.MD
			resp, err := c.GetToken(withAuth(ctx, "authorization", "Bearer "+f.active.Secret),
				&tokenv1.GetTokenRequest{TokenId: tc.tok.ID}, grpc.Header(&header))
			if err != nil {
				t.Fatalf("GetToken(%d): %v", tc.tok.ID, err)
			}
			got := resp.GetToken()
			if got.GetId() != tc.tok.ID || got.GetStatus() != tc.want {
				t.Errorf("GetToken(%d) = id %d status %v, want status %v", tc.tok.ID, got.GetId(), got.GetStatus(), tc.want)
			}
			if got.GetCreatedAt() == nil || got.GetCreatedAt().GetNanos() != 0 {
				t.Errorf("created_at = %v, want whole seconds", got.GetCreatedAt())
			}
			if len(header.Get("x-trace-id")) != 1 || len(header.Get("x-trace-id")[0]) != 32 {
				t.Errorf("x-trace-id header = %v, want one 32-hex id", header.Get("x-trace-id"))
			}
		}
	})

	t.Run("reading itself counts this call", func(t *testing.T) {
		md := withAuth(ctx, "authorization", "bearer "+f.loopbackOnly.Secret)
		first, err := c.GetToken(md, &tokenv1.GetTokenRequest{TokenId: f.loopbackOnly.ID})
		if err != nil {
			t.Fatal(err)
		}
		second, err := c.GetToken(md, &tokenv1.GetTokenRequest{TokenId: f.loopbackOnly.ID})
		if err != nil {
			t.Fatal(err)
		}
		if d := second.GetToken().GetUsageCount() - first.GetToken().GetUsageCount(); d != 1 || first.GetToken().GetLastUsedAt() == nil {
			t.Errorf("usage went %d → %d, last_used_at %v; want +1 and set", first.GetToken().GetUsageCount(), second.GetToken().GetUsageCount(), first.GetToken().GetLastUsedAt())
		}
		if got := second.GetToken().GetAllowedIps(); len(got) != 1 || got[0] != "127.0.0.1" {
			t.Errorf("allowed_ips = %v", got)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			md     []string
			id     int64
			code   codes.Code
			reason string
		}{
			{"no credentials", nil, f.active.ID, codes.Unauthenticated, "MISSING_CREDENTIALS"},
			{"garbage", []string{"authorization", "Bearer nope"}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"unknown secret", []string{"authorization", "Bearer " + mustSecret(t)}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"revoked", []string{"authorization", "Bearer " + f.revoked.Secret}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"expired", []string{"authorization", "Bearer " + f.expired.Secret}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"address not allowed", []string{"authorization", "Bearer " + f.restricted.Secret}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"spoofed x-forwarded-for", []string{"authorization", "Bearer " + f.restricted.Secret, "x-forwarded-for", "10.0.0.1"}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"two credentials", []string{"authorization", "Bearer " + f.active.Secret, "authorization", "Bearer " + f.unused.Secret}, f.active.ID, codes.Unauthenticated, "INVALID_TOKEN"},
			{"another user's token", []string{"authorization", "Bearer " + f.active.Secret}, f.bob.ID, codes.NotFound, "NOT_FOUND"},
			{"missing token", []string{"authorization", "Bearer " + f.active.Secret}, 999999, codes.NotFound, "NOT_FOUND"},
			{"zero id", []string{"authorization", "Bearer " + f.active.Secret}, 0, codes.InvalidArgument, "INVALID_ARGUMENT"},
			{"negative id", []string{"authorization", "Bearer " + f.active.Secret}, -7, codes.InvalidArgument, "INVALID_ARGUMENT"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := c.GetToken(withAuth(ctx, tc.md...), &tokenv1.GetTokenRequest{TokenId: tc.id})
				st := status.Convert(err)
				if st.Code() != tc.code {
					t.Fatalf("code = %v (%s), want %v", st.Code(), st.Message(), tc.code)
				}
				var reason string
				for _, d := range st.Details() {
					if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == "tokend" {
						reason = info.GetReason()
					}
				}
				if reason != tc.reason {
					t.Errorf("ErrorInfo reason = %q, want %q", reason, tc.reason)
				}
			})
		}
		// The BOLA case: another user's token and a missing one look alike.
		_, errBob := c.GetToken(withAuth(ctx, "authorization", "Bearer "+f.active.Secret), &tokenv1.GetTokenRequest{TokenId: f.bob.ID})
		_, errNone := c.GetToken(withAuth(ctx, "authorization", "Bearer "+f.active.Secret), &tokenv1.GetTokenRequest{TokenId: 999999})
		if status.Convert(errBob).Message() != status.Convert(errNone).Message() {
			t.Errorf("another user's token says %q, a missing one %q", status.Convert(errBob).Message(), status.Convert(errNone).Message())
		}
	})

	t.Run("failed attempts count nothing", func(t *testing.T) {
		resp, err := c.GetToken(withAuth(ctx, "authorization", "Bearer "+f.active.Secret), &tokenv1.GetTokenRequest{TokenId: f.restricted.ID})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetToken().GetUsageCount() != 0 || resp.GetToken().GetLastUsedAt() != nil {
			t.Errorf("refused token shows usage %d, last used %v", resp.GetToken().GetUsageCount(), resp.GetToken().GetLastUsedAt())
		}
	})

	t.Run("health and reflection need no token", func(t *testing.T) {
		hr, err := healthpb.NewHealthClient(f.s.conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v, %v; want SERVING", hr, err)
		}
		stream, err := reflectionpb.NewServerReflectionClient(f.s.conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
			t.Fatal(err)
		}
		rr, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, s := range rr.GetListServicesResponse().GetService() {
			found = found || s.GetName() == "tokend.v1.TokenService"
		}
		if !found {
			t.Errorf("reflection lists %v, want tokend.v1.TokenService", rr.GetListServicesResponse().GetService())
		}
		for _, s := range rr.GetListServicesResponse().GetService() {
			if s.GetName() == "tokend.admin.v1.AdminService" {
				t.Error("the public server exposes the admin service")
			}
		}
		// A stream has a trace id, sent back, and one log line when it ends.
		const tid = "5bf92f3577b34da6a3ce929d0e0e4736"
		traced, err := reflectionpb.NewServerReflectionClient(f.s.conn).ServerReflectionInfo(
			metadata.AppendToOutgoingContext(ctx, "traceparent", "00-"+tid+"-00f067aa0ba902b7-01"))
		if err != nil {
			t.Fatal(err)
		}
		if err := traced.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := traced.Recv(); err != io.EOF {
			t.Fatalf("reflection stream ended with %v, want EOF", err)
		}
		if header, err := traced.Header(); err != nil || len(header.Get("x-trace-id")) != 1 || header.Get("x-trace-id")[0] != tid {
			t.Errorf("stream x-trace-id = %v (%v), want %s", header.Get("x-trace-id"), err, tid)
		}
		if logs := f.s.logs.String(); !containsAll(logs, `"trace_id":"`+tid+`"`, `"method":"ServerReflectionInfo"`, `"code":"OK"`) {
			t.Errorf("no log line for the stream with its trace id")
		}
	})

	t.Run("traceparent is honoured and logged", func(t *testing.T) {
		const tid = "0af7651916cd43dd8448eb211c80319c"
		var header metadata.MD
		_, err := c.GetToken(withAuth(ctx, "authorization", "Bearer "+f.active.Secret, "traceparent", "00-"+tid+"-b7ad6b7169203331-01"),
			&tokenv1.GetTokenRequest{TokenId: 999999}, grpc.Header(&header))
		if status.Code(err) != codes.NotFound {
			t.Fatalf("err = %v", err)
		}
		if got := header.Get("x-trace-id"); len(got) != 1 || got[0] != tid {
			t.Errorf("x-trace-id = %v, want %s", got, tid)
		}
		if logs := f.s.logs.String(); !containsAll(logs, `"trace_id":"`+tid+`"`, `"code":"NotFound"`) {
			t.Errorf("no log line for the call with its trace id")
		}
	})
}

func TestGRPCTrustedProxy(t *testing.T) {
	f := newFixture(t, "--trusted-proxy", "127.0.0.1/32")
	c := f.s.grpcClient()
	ctx := testCtx(t)
	for _, tc := range []struct {
		xff  string
		want codes.Code
	}{
		{"10.20.30.40", codes.OK},
		{"10.20.30.40, 198.51.100.9", codes.Unauthenticated},
		{"", codes.Unauthenticated},
	} {
		md := []string{"authorization", "Bearer " + f.restricted.Secret}
		if tc.xff != "" {
			md = append(md, "x-forwarded-for", tc.xff)
		}
		_, err := c.GetToken(withAuth(ctx, md...), &tokenv1.GetTokenRequest{TokenId: f.restricted.ID})
		if status.Code(err) != tc.want {
			t.Errorf("x-forwarded-for %q: %v, want %v", tc.xff, err, tc.want)
		}
	}
}

func TestGRPCConcurrentUsageIsExact(t *testing.T) {
	s := startServer(t, "")
	tok := createToken(t, s.db, "dave", "parallel grpc")
	c := s.grpcClient()
	ctx := withAuth(testCtx(t), "authorization", "Bearer "+tok.Secret)
	const n = 40
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: tok.ID}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// REST and gRPC count into the same record.
	_, body := s.get(t, tokenPath(tok.ID), bearer(tok.Secret))
	if got := fmt.Sprint(decodeObject(t, body)["data"].(map[string]any)["usage_count"]); got != fmt.Sprint(n+1) {
		t.Errorf("usage_count = %s, want %d", got, n+1)
	}
}

// containsAll reports whether one line of s contains every sub.
func containsAll(s string, subs ...string) bool {
	for _, line := range strings.Split(s, "\n") {
		ok := true
		for _, sub := range subs {
			if !strings.Contains(line, sub) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}
