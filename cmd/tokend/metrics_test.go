package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// scrape reads the server's /metrics and parses it.
func (s *testServer) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	if s.addrs.Metrics == "" {
		t.Fatal("the server has no metrics listener")
	}
	resp, err := s.client.Get("http://" + s.addrs.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %d %s", resp.StatusCode, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not the Prometheus text format: %v", err)
	}
	return fams
}

// metricValue returns the value of the sample of family name whose labels
// include all of labels ("k=v" pairs): a counter's or gauge's value, a
// histogram's count. It fails the test unless exactly one sample matches.
func metricValue(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	fam, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s is not exported", name)
	}
	var found []float64
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		match := true
		for _, kv := range labels {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			found = append(found, m.GetCounter().GetValue())
		case m.Gauge != nil:
			found = append(found, m.GetGauge().GetValue())
		case m.Histogram != nil:
			found = append(found, float64(m.GetHistogram().GetSampleCount()))
		case m.Untyped != nil:
			found = append(found, m.GetUntyped().GetValue())
		}
	}
	if len(found) != 1 {
		t.Fatalf("metric %s%v: %d samples match, want 1", name, labels, len(found))
	}
	return found[0]
}

// TestMetrics drives a known mix of requests over both transports and
// checks that the Prometheus endpoint, on its own listener, counts each of
// them exactly once, where it belongs: REST requests by route and status,
// gRPC calls by method and code (REST requests reach the gRPC chain
// in-process and must not be counted twice), failed authentications by
// reason, throttled requests, and the usage flusher and database state.
func TestMetrics(t *testing.T) {
	srv := startServer(t, "", "--metrics-addr", "127.0.0.1:0", "--auth-failure-limit", "3", "--usage-flush-interval", "20ms")
	good := createToken(t, srv.db, "alice", "ci")
	fenced := createToken(t, srv.db, "alice", "fenced", "--allowed-ip", "203.0.113.0/24")
	path := tokenPath(good.ID)
	gc := srv.grpcClient()
	call := func(secret string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ctx = as(ctx, secret)
		_, err := gc.GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: good.ID})
		return err
	}
	restStatus := func(headers ...string) int {
		resp, _ := srv.get(t, path, headers...)
		return resp.StatusCode
	}

	// A streaming call: one health Watch, ended by the client.
	wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
	watch, err := healthpb.NewHealthClient(srv.conn).Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("health Watch: %v", err)
	}
	wcancel()

	// Successes first: once the address is throttled, everything from it is refused.
	for range 3 {
		if got := restStatus(bearer(good.Secret)); got != http.StatusOK {
			t.Fatalf("REST GET: %d", got)
		}
	}
	for range 2 {
		if err := call(good.Secret); err != nil {
			t.Fatalf("gRPC GetToken: %v", err)
		}
	}
	if got := restStatus(); got != http.StatusUnauthorized { // missing: not a guess, not throttled
		t.Fatalf("REST without credentials: %d", got)
	}
	if got := restStatus(bearer(mustSecret(t))); got != http.StatusUnauthorized {
		t.Fatalf("REST with an unknown secret: %d", got)
	}
	if got := restStatus("Authorization: Bearer not-a-tokend-secret"); got != http.StatusUnauthorized {
		t.Fatalf("REST with a malformed secret: %d", got)
	}
	if err := call(fenced.Secret); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("gRPC from a refused address: %v", err)
	}
	// Three failures: the address is now throttled on both transports.
	if got := restStatus(bearer(good.Secret)); got != http.StatusTooManyRequests {
		t.Fatalf("REST after 3 failures: %d, want 429", got)
	}
	if err := call(good.Secret); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("gRPC after 3 failures: %v, want ResourceExhausted", err)
	}
	if got := restStatus(); got != http.StatusTooManyRequests {
		t.Fatalf("REST without credentials from a throttled address: %d, want 429", got)
	}

	// Wait for the 5 uses to be flushed, then read everything at once. A
	// scrape reads its gauges one after another, so one taken while the
	// flush commits can see the uses pending in one gauge (a lag) and
	// written in another: wait for a scrape that saw them written in all.
	var fams map[string]*dto.MetricFamily
	if !waitFor(10*time.Second, func() bool {
		fams = srv.scrape(t)
		return metricValue(t, fams, "tokend_usage_pending") == 0 && metricValue(t, fams, "tokend_usage_flushes_total") >= 1 &&
			metricValue(t, fams, "tokend_usage_flush_lag_seconds") == 0
	}) {
		t.Fatal("usage was not flushed within 10s (pending 0, a flush, and a flush lag of 0, in one scrape)")
	}

	route := "route=/api/v1/me/tokens/{token_id}"
	want := []struct {
		name   string
		labels []string
		value  float64
	}{
		{"tokend_http_requests_total", []string{route, "method=get", "code=200"}, 3},
		{"tokend_http_requests_total", []string{route, "method=get", "code=401"}, 3},
		{"tokend_http_requests_total", []string{route, "method=get", "code=429"}, 2},
		{"tokend_http_request_duration_seconds", []string{route, "method=get", "code=200"}, 3},
		{"grpc_server_handled_total", []string{"grpc_service=tokend.v1.TokenService", "grpc_method=GetToken", "grpc_code=OK"}, 2},
		{"grpc_server_handled_total", []string{"grpc_service=tokend.v1.TokenService", "grpc_method=GetToken", "grpc_code=Unauthenticated"}, 1},
		{"grpc_server_handled_total", []string{"grpc_service=tokend.v1.TokenService", "grpc_method=GetToken", "grpc_code=ResourceExhausted"}, 1},
		{"grpc_server_handling_seconds", []string{"grpc_service=tokend.v1.TokenService", "grpc_method=GetToken"}, 4},
		{"grpc_server_handled_total", []string{"grpc_service=tokend.v1.TokenService", "grpc_method=CreateToken", "grpc_code=OK"}, 0},
		{"grpc_server_started_total", []string{"grpc_service=grpc.health.v1.Health", "grpc_method=Watch"}, 1},
		{"tokend_auth_failures_total", []string{"reason=missing"}, 1},
		{"tokend_auth_failures_total", []string{"reason=unknown"}, 1},
		{"tokend_auth_failures_total", []string{"reason=malformed"}, 1},
		{"tokend_auth_failures_total", []string{"reason=address_refused"}, 1},
		{"tokend_auth_failures_total", []string{"reason=revoked"}, 0},
		{"tokend_auth_throttled_total", nil, 3},
		{"tokend_usage_flush_failures_total", nil, 0},
		{"tokend_usage_flush_lag_seconds", nil, 0},
	}
	for _, w := range want {
		if got := metricValue(t, fams, w.name, w.labels...); got != w.value {
			t.Errorf("%s%v = %v, want %v", w.name, w.labels, got, w.value)
		}
	}
	if got := metricValue(t, fams, "tokend_db_size_bytes"); got < 16<<10 {
		t.Errorf("tokend_db_size_bytes = %v, want the file's size", got)
	}
	if got := metricValue(t, fams, "tokend_build_info", "version="+versionString()); got != 1 {
		t.Errorf("tokend_build_info{version=%q} = %v, want 1", versionString(), got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("runtime metric %s is not exported", name)
		}
	}
	// The public port does not serve metrics.
	if resp, body := srv.get(t, "/metrics"); resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "go_goroutines") {
		t.Errorf("GET /metrics on the public port: %d %s", resp.StatusCode, body)
	}
}

// TestMetricsOffByDefault: without --metrics-addr nothing listens for them.
func TestMetricsOffByDefault(t *testing.T) {
	srv := startServer(t, "")
	if srv.addrs.Metrics != "" {
		t.Errorf("metrics listen on %s without --metrics-addr", srv.addrs.Metrics)
	}
}

// TestUnknownGRPCMethod: a call of a method the server does not have is
// answered like any other call, Unimplemented with its trace id and one log
// line, while the method, which the client invents, stays out of the log,
// the metrics' labels and the spans.
func TestUnknownGRPCMethod(t *testing.T) {
	col := &collector{}
	srv := startServer(t, "", "--metrics-addr", "127.0.0.1:0", "--otlp-endpoint", startGRPCCollector(t, col))
	const invented = "/inventedsvc.V1/InventedMethod"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var header metadata.MD
	err := srv.conn.Invoke(ctx, invented, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&header))
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("call of an unknown method: %v, want Unimplemented", err)
	}
	trace := header.Get("x-trace-id")
	if len(trace) != 1 || len(trace[0]) != 32 {
		t.Fatalf("x-trace-id = %v, want one trace id", trace)
	}
	fams := srv.scrape(t)
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	for _, l := range procLogLines(srv.logs.String(), "request") {
		if l["trace_id"] == trace[0] {
			line = l
		}
	}
	if line == nil || line["service"] != "unknown" || line["method"] != "unknown" || line["code"] != "Unimplemented" {
		t.Errorf("request line = %v, want one for trace %s, service and method unknown, code Unimplemented", line, trace[0])
	}
	for name, fam := range fams {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetValue(), "invented") {
					t.Errorf("metric %s has a label the client invented: %v", name, m)
				}
			}
		}
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, s := range col.spans {
		if strings.Contains(s.GetName(), "invented") {
			t.Errorf("a span is named by the client's method: %q", s.GetName())
		}
	}
	if strings.Contains(srv.logs.String(), "invented") {
		t.Errorf("the log holds the client's method name:\n%s", srv.logs)
	}
}
