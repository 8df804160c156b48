package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/secret"
)

// collector is a fake OTLP trace collector that keeps what it receives.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []*tracepb.Span
	res   []string // service.name of each resource seen
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				c.res = append(c.res, a.GetValue().GetStringValue())
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) byTrace(traceID string) []*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*tracepb.Span
	for _, s := range c.spans {
		if hex.EncodeToString(s.GetTraceId()) == traceID {
			out = append(out, s)
		}
	}
	return out
}

// startGRPCCollector serves c over OTLP/gRPC on 127.0.0.1 and returns its URL.
func startGRPCCollector(t *testing.T, c *collector) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return "http://" + ln.Addr().String()
}

// startHTTPCollector serves c over OTLP/HTTP (protobuf) on 127.0.0.1.
func startHTTPCollector(t *testing.T, c *collector) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusNotFound)
			return
		}
		body, _ := io.ReadAll(r.Body)
		req := &coltracepb.ExportTraceServiceRequest{}
		if err := proto.Unmarshal(body, req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		_, _ = c.Export(r.Context(), req)
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		_, _ = w.Write(out)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func spanAttrs(s *tracepb.Span) map[string]*commonpb.AnyValue {
	out := map[string]*commonpb.AnyValue{}
	for _, a := range s.GetAttributes() {
		out[a.GetKey()] = a.GetValue()
	}
	return out
}

// TestTracing runs tokend with an OTLP endpoint (over gRPC and over HTTP)
// and checks that both transports are traced: a client's traceparent
// continues its trace, whatever its sampled flag; the X-Trace-Id header, the
// problem's trace_id and the exported spans all carry the same trace id;
// spans are named by route, never by raw path; the client address recorded
// is the one derived from trusted proxies, not a forwarding header the
// client wrote; and no span holds a secret or an Authorization value.
func TestTracing(t *testing.T) {
	for _, tc := range []struct {
		protocol string
		start    func(*testing.T, *collector) string
	}{
		{"grpc", startGRPCCollector},
		{"http/protobuf", startHTTPCollector},
	} {
		t.Run(tc.protocol, func(t *testing.T) {
			col := &collector{}
			endpoint := tc.start(t, col)
			srv := startServer(t, "", "--otlp-endpoint", endpoint, "--otlp-protocol", tc.protocol)
			tok := createToken(t, srv.db, "alice", "ci")
			path := tokenPath(tok.ID)

			const (
				restTrace    = "4bf92f3577b34da6a3ce929d0e0e4736"
				refusedTrace = "0af7651916cd43dd8448eb211c80319c"
				grpcTrace    = "a3ce929d0e0e47364bf92f3577b34da6"
			)
			// A REST request continuing the client's trace, with a forged
			// forwarding header from an untrusted peer.
			resp, _ := srv.get(t, path, bearer(tok.Secret), "Traceparent: 00-"+restTrace+"-00f067aa0ba902b7-01",
				"X-Forwarded-For: 198.51.100.66")
			if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Trace-Id") != restTrace {
				t.Fatalf("REST GET: %d, X-Trace-Id %q, want 200 and %s", resp.StatusCode, resp.Header.Get("X-Trace-Id"), restTrace)
			}
			// A refused one, not sampled by its client: traced all the same,
			// and its problem names the trace.
			resp, body := srv.get(t, path, bearer(mustSecret(t)), "Traceparent: 00-"+refusedTrace+"-00f067aa0ba902b7-00")
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("REST GET with an unknown secret: %d", resp.StatusCode)
			}
			if got := decodeObject(t, body)["trace_id"]; got != refusedTrace {
				t.Errorf("problem trace_id = %v, want %s", got, refusedTrace)
			}
			// No traceparent: a fresh trace, and X-Trace-Id names it.
			resp, _ = srv.get(t, path, bearer(tok.Secret))
			freshTrace := resp.Header.Get("X-Trace-Id")
			// A gRPC call continuing the client's trace.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			ctx = as(ctx, tok.Secret, "traceparent", "00-"+grpcTrace+"-00f067aa0ba902b7-01")
			var header metadata.MD
			if _, err := srv.grpcClient().GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: tok.ID}, grpc.Header(&header)); err != nil {
				t.Fatalf("gRPC GetToken: %v", err)
			}
			if got := header.Get("x-trace-id"); len(got) != 1 || got[0] != grpcTrace {
				t.Errorf("gRPC x-trace-id = %v, want %s", got, grpcTrace)
			}

			// What a client writes stays out of spans: a secret in the path
			// and the user agent, a method HTTP does not define, a
			// tracestate.
			const oddTrace = "5bf92f3577b34da6a3ce929d0e0e4737"
			resp, _ = srv.get(t, "/api/v1/me/tokens/"+tok.Secret, "User-Agent: agent-"+tok.Secret,
				"Traceparent: 00-"+oddTrace+"-00f067aa0ba902b7-01", "Tracestate: vendor=client-"+tok.Secret[4:12])
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("GET with a secret for an id: %d, want 400", resp.StatusCode)
			}
			const methodTrace = "6bf92f3577b34da6a3ce929d0e0e4738"
			resp, _ = srv.do(t, "TKD-"+strings.Repeat("M", 300), path, "Traceparent: 00-"+methodTrace+"-00f067aa0ba902b7-01")
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("odd method: %d, want 405", resp.StatusCode)
			}

			// Stopping the server exports what is buffered.
			if err := srv.stop(); err != nil {
				t.Fatal(err)
			}
			for _, tr := range []string{restTrace, refusedTrace, freshTrace} {
				spans := col.byTrace(tr)
				if len(spans) != 1 {
					t.Errorf("trace %s: %d spans exported, want 1", tr, len(spans))
					continue
				}
				s := spans[0]
				if s.GetName() != "GET /api/v1/me/tokens/{token_id}" || s.GetKind() != tracepb.Span_SPAN_KIND_SERVER {
					t.Errorf("REST span %q kind %v, want the route's name and a server span", s.GetName(), s.GetKind())
				}
				attrs := spanAttrs(s)
				if got := attrs["client.address"].GetStringValue(); got != "127.0.0.1" {
					t.Errorf("REST span client.address = %q, want the TCP peer 127.0.0.1 (no trusted proxy)", got)
				}
				if got := attrs["http.route"].GetStringValue(); got != "/api/v1/me/tokens/{token_id}" {
					t.Errorf("REST span http.route = %q", got)
				}
				if tr != refusedTrace && attrs["tokend.token_id"].GetIntValue() != tok.ID {
					t.Errorf("REST span tokend.token_id = %v, want %d", attrs["tokend.token_id"], tok.ID)
				}
			}
			if spans := col.byTrace(oddTrace); len(spans) != 1 || spans[0].GetTraceState() != "" ||
				spanAttrs(spans[0])["http.response.status_code"].GetIntValue() != http.StatusBadRequest {
				t.Errorf("trace with a client's tracestate: %v, want one span, with no tracestate and status 400", spans)
			}
			if spans := col.byTrace(methodTrace); len(spans) != 1 || spans[0].GetName() != "HTTP /api/v1/me/tokens/{token_id}" ||
				spanAttrs(spans[0])["http.request.method"].GetStringValue() != "_OTHER" {
				t.Errorf("trace of an odd method: %v, want one span named HTTP and the route, method _OTHER", spans)
			}
			if spans := col.byTrace(restTrace); len(spans) == 1 && hex.EncodeToString(spans[0].GetParentSpanId()) != "00f067aa0ba902b7" {
				t.Errorf("REST span's parent = %x, want the client's span", spans[0].GetParentSpanId())
			}
			if spans := col.byTrace(grpcTrace); len(spans) != 1 || spans[0].GetName() != "tokend.v1.TokenService/GetToken" {
				t.Errorf("gRPC trace: %v, want one span tokend.v1.TokenService/GetToken", spans)
			}
			col.mu.Lock()
			defer col.mu.Unlock()
			t.Logf("%d spans exported", len(col.spans))
			if len(col.res) == 0 || col.res[0] != "tokend" {
				t.Errorf("resource service.name = %v, want tokend", col.res)
			}
			for _, s := range col.spans {
				dump := s.String()
				for _, leak := range []string{secret.Prefix, "Bearer", tok.Secret, tok.Secret[4:12], "198.51.100.66", "MMMM", "agent-"} {
					if strings.Contains(dump, leak) {
						t.Errorf("span %q holds %q: %s", s.GetName(), leak, dump)
					}
				}
			}
		})
	}
}

// TestTracingOffByDefault: without an endpoint nothing is traced, and the
// trace id still follows the client's traceparent.
func TestTracingOffByDefault(t *testing.T) {
	srv := startServer(t, "")
	tok := createToken(t, srv.db, "alice", "ci")
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	resp, _ := srv.get(t, tokenPath(tok.ID), bearer(tok.Secret), "Traceparent: 00-"+trace+"-00f067aa0ba902b7-01")
	if resp.Header.Get("X-Trace-Id") != trace {
		t.Errorf("X-Trace-Id = %q, want %s", resp.Header.Get("X-Trace-Id"), trace)
	}
	if !strings.Contains(srv.logs.String(), `"tracing":false`) {
		t.Errorf("the start line does not say tracing is off:\n%s", srv.logs)
	}
}

// TestTracingSamplesByItsOwnDraw: a client cannot pick trace ids that
// the sampler keeps. (Sampling by trace id, as sdktrace's
// TraceIDRatioBased does, kept every id whose last 16 hex digits are
// zeros, whatever the ratio.)
func TestTracingSamplesByItsOwnDraw(t *testing.T) {
	col := &collector{}
	srv := startServer(t, "", "--otlp-endpoint", startGRPCCollector(t, col), "--trace-sample-ratio", "0.000001")
	for i := range 20 {
		srv.get(t, "/healthz", fmt.Sprintf("Traceparent: 00-%016x0000000000000000-00f067aa0ba902b7-00", i+1))
	}
	if n := stopAndCount(t, srv, col); n != 0 {
		t.Errorf("%d of 20 requests with chosen trace ids exported at sample ratio 1e-6", n)
	}
}

// stopAndCount stops srv, which exports what it has buffered, and returns
// how many spans col has received.
func stopAndCount(t *testing.T, srv *testServer, col *collector) int {
	t.Helper()
	if err := srv.stop(); err != nil {
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	return len(col.spans)
}

// TestTracingIgnoresClientSampling: sampling follows the server's ratio,
// not the client's sampled flag. At ratio 0, a client asking for its
// request to be sampled gets no span exported, yet still its trace id.
func TestTracingIgnoresClientSampling(t *testing.T) {
	col := &collector{}
	srv := startServer(t, "", "--otlp-endpoint", startGRPCCollector(t, col), "--trace-sample-ratio", "0")
	tok := createToken(t, srv.db, "alice", "ci")
	const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	resp, _ := srv.get(t, tokenPath(tok.ID), bearer(tok.Secret), "Traceparent: 00-"+trace+"-00f067aa0ba902b7-01")
	if resp.StatusCode != http.StatusOK || resp.Header.Get("X-Trace-Id") != trace {
		t.Fatalf("REST GET: %d, X-Trace-Id %q, want 200 and %s", resp.StatusCode, resp.Header.Get("X-Trace-Id"), trace)
	}
	if n := stopAndCount(t, srv, col); n != 0 {
		t.Errorf("%d spans exported at sample ratio 0, because the client's flag said sampled", n)
	}
}
