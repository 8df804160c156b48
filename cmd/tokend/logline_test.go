package main

import (
	"context"
	"net/http"
	"testing"
	"time"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// TestRequestLogLine checks the README's promise for the request log:
// exactly one line per request on either transport (a REST request passes
// the gRPC chain in-process and must not be logged twice), with trace id,
// transport, method, route or service, status or code, latency, the client
// address, and the token and user once authenticated or why
// authentication failed.
func TestRequestLogLine(t *testing.T) {
	s := startServer(t, "")
	tok := createToken(t, s.db, "alice", "logged")
	path := tokenPath(tok.ID)
	const (
		okTrace     = "11111111111111111111111111111111"
		failedTrace = "22222222222222222222222222222222"
		grpcTrace   = "33333333333333333333333333333333"
	)
	tp := func(id string) string { return "00-" + id + "-00f067aa0ba902b7-01" }
	if resp, _ := s.get(t, path, bearer(tok.Secret), "Traceparent: "+tp(okTrace)); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	if resp, _ := s.get(t, path, bearer(mustSecret(t)), "Traceparent: "+tp(failedTrace)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET with an unknown secret: %d", resp.StatusCode)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := s.grpcClient().GetToken(as(ctx, tok.Secret, "traceparent", tp(grpcTrace)),
		&tokenv1.GetTokenRequest{TokenId: tok.ID}); err != nil {
		t.Fatal(err)
	}
	if err := s.stop(); err != nil { // flushes the buffered log
		t.Fatal(err)
	}
	logs := s.logs.String()
	only := func(trace string) map[string]any {
		got := procTraceLines(logs, "request", trace)
		if len(got) != 1 {
			t.Fatalf("trace %s: %d request lines, want exactly 1:\n%v", trace, len(got), got)
		}
		return got[0]
	}
	want := func(trace string, fields map[string]any, absent ...string) {
		t.Helper()
		l := only(trace)
		for k, v := range fields {
			if l[k] != v {
				t.Errorf("trace %s: %s = %v, want %v (line %v)", trace, k, l[k], v, l)
			}
		}
		if ms, ok := l["latency_ms"].(float64); !ok || ms < 0 {
			t.Errorf("trace %s: latency_ms = %v", trace, l["latency_ms"])
		}
		for _, k := range absent {
			if _, ok := l[k]; ok {
				t.Errorf("trace %s: has %s = %v, want none", trace, k, l[k])
			}
		}
	}
	id := float64(tok.ID)
	want(okTrace, map[string]any{"level": "INFO", "transport": "http", "method": "GET", "route": "/api/v1/me/tokens/{token_id}",
		"status": float64(200), "client": "127.0.0.1", "token_id": id, "user": "alice"}, "auth_failure")
	want(failedTrace, map[string]any{"transport": "http", "status": float64(401), "client": "127.0.0.1",
		"auth_failure": "invalid bearer token: unknown secret"}, "token_id", "user")
	want(grpcTrace, map[string]any{"transport": "grpc", "service": "tokend.v1.TokenService", "method": "GetToken",
		"code": "OK", "client": "127.0.0.1", "token_id": id, "user": "alice"}, "auth_failure")
}
