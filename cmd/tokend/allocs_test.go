package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/tokend/tokend/gateway"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/telemetry"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// The stated allocation budgets of one authenticated GetToken of a token
// reading itself, server side, without the transport (the HTTP/1.1 or
// HTTP/2 server's own allocations are not counted). A regression past them
// fails here; the README states them.
// With metrics on (--metrics-addr), promhttp's instrumentation adds its
// own allocations to the REST path.
const (
	restAllocBudget        = 108
	rpcAllocBudget         = 40
	restMetricsAllocBudget = 115
)

// hotServer wires the request path as serve does, in-process, with metrics
// if m is set.
func hotServer(tb testing.TB, m *telemetry.Metrics) (http.Handler, *rpc.Public, createdToken) {
	tb.Helper()
	h, public, tok, _ := hotServerStore(tb, m)
	return h, public, tok
}

// hotServerStore is hotServer, also returning the store.
func hotServerStore(tb testing.TB, m *telemetry.Metrics) (http.Handler, *rpc.Public, createdToken, *store.Store) {
	tb.Helper()
	st, err := store.Open(filepath.Join(tb.TempDir(), "t.db"), store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	rec, err := usage.New(st, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	log := newLogger("json", discard{}) // format every line, as in production
	// As serve wires it, throttle included: its check runs on every request.
	authn := auth.New(st, rec, nil, time.Now).WithThrottle(auth.NewThrottle(20, time.Minute, 100_000))
	public := rpc.NewPublic(rpc.Deps{Store: st, Auth: authn, Usage: rec, Logger: log, Limits: service.DefaultLimits(), Now: time.Now, Metrics: m})
	h, err := gateway.New(context.Background(), gateway.Options{Conn: public.Local, Logger: log, Metrics: m})
	if err != nil {
		tb.Fatal(err)
	}
	sec, err := secret.New()
	if err != nil {
		tb.Fatal(err)
	}
	tok, _, err := st.Create(token.Token{UserID: "alice", Name: "hot", SecretHash: secret.HashOf(sec), CreatedAt: time.Now()}, store.CreateOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return h, public, createdToken{ID: int64(tok.ID), Secret: sec}, st
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func restGet(h http.Handler, tok createdToken) int {
	r := httptest.NewRequest(http.MethodGet, tokenPath(tok.ID), nil)
	r.RemoteAddr = "127.0.0.1:40000"
	r.Header.Set("Authorization", "Bearer "+tok.Secret)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w.Code
}

func TestRequestAllocationBudget(t *testing.T) {
	if raceEnabled {
		t.Skip("-race changes allocation counts; CI also runs this test without it")
	}
	h, public, tok := hotServer(t, nil)
	if code := restGet(h, tok); code != http.StatusOK {
		t.Fatalf("REST GetToken: status %d", code)
	}
	rest := testing.AllocsPerRun(200, func() { restGet(h, tok) })
	client := tokenv1.NewTokenServiceClient(public.Local)
	ctx := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok.Secret))
	req := &tokenv1.GetTokenRequest{TokenId: tok.ID}
	if _, err := client.GetToken(ctx, req); err != nil {
		t.Fatal(err)
	}
	rpcAllocs := testing.AllocsPerRun(200, func() {
		if _, err := client.GetToken(ctx, req); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("allocations per GetToken: REST %.0f (budget %d), interceptor chain and handler %.0f (budget %d)", rest, restAllocBudget, rpcAllocs, rpcAllocBudget)
	if rest > restAllocBudget {
		t.Errorf("a REST GetToken allocates %.0f times, over the budget of %d", rest, restAllocBudget)
	}
	if rpcAllocs > rpcAllocBudget {
		t.Errorf("a GetToken through the interceptor chain allocates %.0f times, over the budget of %d", rpcAllocs, rpcAllocBudget)
	}

	hm, _, tokm := hotServer(t, telemetry.NewMetrics(telemetry.Sources{}))
	if code := restGet(hm, tokm); code != http.StatusOK {
		t.Fatalf("REST GetToken with metrics: status %d", code)
	}
	restMetrics := testing.AllocsPerRun(200, func() { restGet(hm, tokm) })
	t.Logf("allocations per REST GetToken with metrics on: %.0f (budget %d)", restMetrics, restMetricsAllocBudget)
	if restMetrics > restMetricsAllocBudget {
		t.Errorf("a REST GetToken with metrics allocates %.0f times, over the budget of %d", restMetrics, restMetricsAllocBudget)
	}
}

func BenchmarkRESTGetToken(b *testing.B) {
	for _, bc := range []struct {
		name    string
		metrics *telemetry.Metrics
	}{{"metrics=off", nil}, {"metrics=on", telemetry.NewMetrics(telemetry.Sources{})}} {
		b.Run(bc.name, func(b *testing.B) {
			h, _, tok := hotServer(b, bc.metrics)
			b.ReportAllocs()
			for b.Loop() {
				if code := restGet(h, tok); code != http.StatusOK {
					b.Fatalf("status %d", code)
				}
			}
		})
	}
}
