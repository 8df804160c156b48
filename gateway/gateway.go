// Package gateway is tokend's REST face: grpc-gateway routes in front of the
// in-process channel to the gRPC service, the JSON shapes of the published
// contract, and the one place where errors become RFC 9457 problem details.
package gateway

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/rpc"
)

// TraceHeader is the response header that carries the request's trace id.
const TraceHeader = "X-Trace-Id"

// Options configure New.
type Options struct {
	// Conn reaches TokenService; in production the rpc package's in-process
	// Channel, so REST requests run the same interceptors as gRPC calls.
	Conn grpc.ClientConnInterface
	// Logger receives one line per request.
	Logger *slog.Logger
}

// New returns the REST API as an http.Handler.
func New(ctx context.Context, opts Options) (http.Handler, error) {
	mux := runtime.NewServeMux(
		// Only the Authorization header reaches the service (the gateway
		// always forwards it as "authorization"). Forwarding nothing else
		// keeps clients from planting metadata, such as a second credential
		// via Grpc-Metadata-Authorization.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		// Service metadata (the gRPC trace header) is not echoed as
		// Grpc-Metadata-* headers; the edge sets X-Trace-Id itself.
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithForwardResponseRewriter(rewriteResponse),
		runtime.WithErrorHandler(handleError),
		runtime.WithRoutingErrorHandler(handleRoutingError),
	)
	if err := tokenv1.RegisterTokenServiceHandlerClient(ctx, mux, tokenv1.NewTokenServiceClient(opts.Conn)); err != nil {
		return nil, err
	}
	return edge(opts.Logger, mux), nil
}

// edge is the HTTP request edge: it starts the request's Info (trace id
// from traceparent, returned in X-Trace-Id), hands the TCP peer to the
// service as the gRPC peer, marks every response uncacheable, turns a panic
// into a problem response, and writes the request's one log line.
func edge(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &request.Info{TraceID: request.TraceID(r.Header.Get("Traceparent"))}
		ctx := request.NewContext(r.Context(), ri)
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			ri.Client = ap.Addr().Unmap()
			ctx = peer.NewContext(ctx, &peer.Peer{Addr: net.TCPAddrFromAddrPort(ap)})
		}
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		sw.Header().Set(TraceHeader, ri.TraceID)
		sw.Header().Set("Cache-Control", "no-store")
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.ErrorContext(ctx, "panic serving request", slog.String("trace_id", ri.TraceID), slog.Any("panic", p))
				if sw.status == 0 {
					writeProblem(sw, r, http.StatusInternalServerError, detailInternal)
				}
			}
			attrs := []slog.Attr{
				slog.String("trace_id", ri.TraceID),
				slog.String("transport", "http"),
				slog.String("method", r.Method),
				slog.String("route", routeOf(r)),
				slog.Int("status", sw.code()),
				slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
			}
			attrs = append(attrs, rpc.CallerAttrs(ri)...)
			log.LogAttrs(ctx, slog.LevelInfo, "request", attrs...)
		}()
		next.ServeHTTP(sw, r)
	})
}

// statusWriter remembers the status code for the log line.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// route is one REST route, as declared in the HTTP rule file
// (proto/tokend/v1/token_service_http.yaml). The table serves the log line
// (which logs the template, not the raw path, so ids and junk stay out of
// it) and the Allow header of 405 responses, which grpc-gateway does not
// compute. A test checks that it agrees with the generated routes.
type route struct {
	method   string
	template string
}

func routes() []route {
	return []route{
		{http.MethodGet, "/api/v1/me/tokens/{token_id}"},
	}
}

// matchTemplate reports whether path fits template, whose {name} segments
// match any one non-empty segment.
func matchTemplate(template, path string) bool {
	ts := strings.Split(strings.Trim(template, "/"), "/")
	ps := strings.Split(strings.Trim(path, "/"), "/")
	if len(ts) != len(ps) || strings.HasSuffix(path, "//") {
		return false
	}
	for i, t := range ts {
		if strings.HasPrefix(t, "{") {
			if ps[i] == "" {
				return false
			}
			continue
		}
		if t != ps[i] {
			return false
		}
	}
	return true
}

// routeOf returns the template that r's path matches, or "unmatched".
func routeOf(r *http.Request) string {
	for _, rt := range routes() {
		if matchTemplate(rt.template, r.URL.Path) {
			return rt.template
		}
	}
	return "unmatched"
}

// allowedMethods lists the methods routed for r's path, for Allow.
func allowedMethods(r *http.Request) []string {
	var out []string
	for _, rt := range routes() {
		if matchTemplate(rt.template, r.URL.Path) {
			out = append(out, rt.method)
		}
	}
	return out
}
