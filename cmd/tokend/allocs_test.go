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
	"github.com/tokend/tokend/gateway/gatewaytest"
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
	h, public, tok, _ := hotServerStore(tb, m, store.Options{})
	return h, public, tok
}

// hotServerStore is hotServer on a store opened with opts, also returning
// the store.
func hotServerStore(tb testing.TB, m *telemetry.Metrics, opts store.Options) (http.Handler, *rpc.Public, createdToken, *store.Store) {
	tb.Helper()
	st, err := store.Open(filepath.Join(tb.TempDir(), "t.db"), opts)
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

// BenchmarkRESTGetToken is one REST GetToken of a token reading itself,
// in-process (no socket; the request is built the same way for every
// case), layer by layer, so that what each layer costs is a difference
// within one run:
//   - baseline=net-http: baseline A of the benchmark harness, an
//     http.ServeMux handler writing the fixed example JSON;
//   - baseline=gateway: tokend's REST gateway as served (the edge and its
//     log line, grpc-gateway's generated handler, the contract's JSON)
//     over a channel that answers a fixed token at once: no interceptor
//     chain, authentication or storage;
//   - metrics=off: all of tokend, the token in the lookup cache;
//   - metrics=off,cache=off: the same with no lookup cache, so every
//     lookup is a read transaction, as most are under the harness's load
//     (every request names a different one of 100k tokens);
//   - metrics=on: all of tokend with --metrics-addr set.
func BenchmarkRESTGetToken(b *testing.B) {
	get := func(b *testing.B, h http.Handler, tok createdToken) {
		b.Helper()
		b.ReportAllocs()
		for b.Loop() {
			if code := restGet(h, tok); code != http.StatusOK {
				b.Fatalf("status %d", code)
			}
		}
	}
	b.Run("baseline=net-http", func(b *testing.B) {
		body := []byte(gatewaytest.ExampleJSON)
		mux := http.NewServeMux()
		mux.HandleFunc("GET /api/v1/me/tokens/{id}", func(w http.ResponseWriter, _ *http.Request) {
			w.Header()["Content-Type"] = []string{"application/json"}
			_, _ = w.Write(body)
		})
		get(b, mux, createdToken{ID: gatewaytest.ExampleID, Secret: "unused"})
	})
	b.Run("baseline=gateway", func(b *testing.B) {
		h, err := gateway.New(context.Background(), gateway.Options{Conn: gatewaytest.FixedConn{Token: gatewaytest.ExampleToken()}, Logger: newLogger("json", discard{})})
		if err != nil {
			b.Fatal(err)
		}
		get(b, h, createdToken{ID: gatewaytest.ExampleID, Secret: "unused"})
	})
	for _, bc := range []struct {
		name    string
		metrics *telemetry.Metrics
		opts    store.Options
	}{
		{"metrics=off", nil, store.Options{}},
		{"metrics=off,cache=off", nil, store.Options{CacheEntries: -1}},
		{"metrics=on", telemetry.NewMetrics(telemetry.Sources{}), store.Options{}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h, _, tok, _ := hotServerStore(b, bc.metrics, bc.opts)
			get(b, h, tok)
		})
	}
}
