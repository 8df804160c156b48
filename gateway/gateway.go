// Package gateway is tokend's REST face: grpc-gateway routes in front of the
// in-process channel to the gRPC service, the JSON shapes of the published
// contract, and the one place where errors become RFC 9457 problem details.
package gateway

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/telemetry"
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
	// MaxBodyBytes caps request bodies (413 beyond it); zero means
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Ready reports whether the server can serve requests (its database
	// open and writable), for /readyz; nil means always ready.
	Ready func(context.Context) error
	// Metrics, if set, counts and times every request by route and status.
	Metrics *telemetry.Metrics
	// Tracing, if set, traces every request.
	Tracing *telemetry.Tracing
}

// The paths served beside the API.
const (
	pathOpenAPI = "/openapi.json"
	pathDocs    = "/docs"
	pathHealthz = "/healthz"
	pathReadyz  = "/readyz"
)

// DefaultMaxBodyBytes is the default cap on request bodies: the largest
// valid request (a 100-character name and 64 allowed IPs) is under 4 KiB.
const DefaultMaxBodyBytes = 64 << 10

// New returns the REST API as an http.Handler.
func New(ctx context.Context, opts Options) (http.Handler, error) {
	rt := newRouter()
	mux := runtime.NewServeMux(
		// The service reads the headers it relies on (Authorization,
		// Idempotency-Key, X-Forwarded-For) from the edge's copy of the
		// request (request.Info.Values), never from the metadata built here,
		// which drops whole any value that is not valid gRPC metadata. So
		// no client header is forwarded as metadata: grpc-gateway still
		// adds authorization, x-forwarded-for and x-forwarded-host itself,
		// which nothing reads, and turns Grpc-Timeout into a deadline
		// (which the server caps). Forwarding nothing else keeps clients
		// from planting metadata, such as a second credential via
		// Grpc-Metadata-Authorization, and keeps grpc-gateway from logging
		// a client's odd header.
		runtime.WithIncomingHeaderMatcher(func(string) (string, bool) { return "", false }),
		// Service metadata (the gRPC trace header) is not echoed as
		// Grpc-Metadata-* headers; the edge sets X-Trace-Id itself.
		runtime.WithOutgoingHeaderMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithOutgoingTrailerMatcher(func(string) (string, bool) { return "", false }),
		runtime.WithDisableHTTPMethodOverride(),
		// Nor may a form POST stand in for a GET: the route table and
		// Allow say which methods a path takes, and nothing else runs.
		runtime.WithDisablePathLengthFallback(),
		// Route on the path as escaped (see routingPath), as the route
		// table does.
		runtime.WithUnescapingMode(runtime.UnescapingModeAllExceptReserved),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newRESTMarshaler()),
		runtime.WithForwardResponseRewriter(rewriteResponse),
		runtime.WithForwardResponseOption(forwardResponse),
		runtime.WithErrorHandler(handleError),
		runtime.WithRoutingErrorHandler(rt.handleRoutingError),
	)
	if err := tokenv1.RegisterTokenServiceHandlerClient(ctx, mux, tokenv1.NewTokenServiceClient(opts.Conn)); err != nil {
		return nil, err
	}
	maxBody := opts.MaxBodyBytes
	if maxBody <= 0 {
		maxBody = DefaultMaxBodyBytes
	}
	docs, err := docsHandler()
	if err != nil {
		return nil, err
	}
	spec := getOnly(openAPIHandler())
	healthz, readyz := getOnly(probe(nil, opts.Logger)), getOnly(probe(opts.Ready, opts.Logger))
	docs = getOnly(docs)
	api := rt.checkBody(maxBody, mux)
	// Exact paths, not an http.ServeMux: its path cleaning would answer
	// "/api/v1/../x" with a redirect where the API says 404.
	root := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case pathOpenAPI:
			spec.ServeHTTP(w, r)
		case pathDocs:
			docs.ServeHTTP(w, r)
		case pathHealthz:
			healthz.ServeHTTP(w, r)
		case pathReadyz:
			readyz.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	})
	return wrap(opts, rt, root), nil
}

// wrap puts the per-request layers around h. Tracing runs outermost, so the
// edge finds the request's span (and takes its trace id); metrics run
// inside the edge, which has put the route on the request's Info by then;
// panics are recovered innermost, so that a panic's 500 is counted and
// logged like any other answer.
func wrap(opts Options, rt *router, h http.Handler) http.Handler {
	return opts.Tracing.InstrumentHTTP(edge(opts.Logger, rt, opts.Metrics.InstrumentHTTP(recoverPanics(opts.Logger, h))), rt.routeOf)
}

// recoverPanics turns a panic in h into a 500 problem (unless a response
// was already started) and an error log line with the trace id; the panic
// value is logged, never sent. http.ErrAbortHandler is let through, as
// net/http means it.
func recoverPanics(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw, ok := w.(*statusWriter)
		if !ok {
			sw = &statusWriter{ResponseWriter: w}
		}
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler {
				panic(p)
			}
			attrs := []any{slog.Any("panic", p)}
			if ri := request.FromContext(r.Context()); ri != nil {
				attrs = append(attrs, slog.String("trace_id", ri.TraceID))
			}
			log.ErrorContext(r.Context(), "panic serving request", attrs...)
			if sw.status == 0 {
				writeProblem(sw, r, http.StatusInternalServerError, detailInternal)
			}
		}()
		h.ServeHTTP(sw, r)
	})
}

// probe answers a health probe: 200 {"status":"ok"} when check (if any)
// passes, else a 503 problem whose cause is logged, not sent. Probes need no
// token: they say nothing about any.
func probe(check func(context.Context) error, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if check != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			defer cancel()
			if err := check(ctx); err != nil {
				attrs := []any{slog.String("error", err.Error())}
				if ri := request.FromContext(r.Context()); ri != nil {
					attrs = append(attrs, slog.String("trace_id", ri.TraceID))
				}
				log.WarnContext(r.Context(), "not ready", attrs...)
				writeProblem(w, r, http.StatusServiceUnavailable, "The server is not ready to serve requests.")
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
}

// getOnly answers methods other than GET and HEAD with a 405 problem.
func getOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeProblem(w, r, http.StatusMethodNotAllowed, fmt.Sprintf("Method %s is not allowed here; use GET.", r.Method))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// edge is the HTTP request edge: it starts the request's Info (trace id
// from traceparent, returned in X-Trace-Id), hands the TCP peer to the
// service as the gRPC peer, marks every response uncacheable, and writes
// the request's one log line.
func edge(log *slog.Logger, rt *router, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ri := &request.Info{TraceID: request.TraceIDFrom(r.Context(), r.Header.Get("Traceparent")), Route: rt.routeOf(r)}
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			// The TCP peer reaches authentication through the Info, which
			// only this edge creates, not through gRPC metadata.
			ri.Peer = ap.Addr().Unmap()
			ri.Client = ri.Peer
		}
		ri.Header = r.Header // the service reads headers here (request.Info.Values)
		ctx := request.NewContext(r.Context(), ri)
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		// Headers every response carries, the values in one allocation, as
		// they are set on every request: the trace id, no caching (the
		// answers are per caller), and no content sniffing.
		vals := make([]string, 3)
		vals[0], vals[1], vals[2] = ri.TraceID, "no-store", "nosniff"
		h := sw.Header()
		h[TraceHeader] = vals[0:1:1]
		h["Cache-Control"] = vals[1:2:2]
		h["X-Content-Type-Options"] = vals[2:3:3]
		defer func() {
			attrs := make([]slog.Attr, 0, 10)
			attrs = append(attrs,
				slog.String("trace_id", ri.TraceID),
				slog.String("transport", "http"),
				slog.String("method", r.Method),
				slog.String("route", ri.Route),
				slog.Int("status", sw.code()),
				slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
			)
			rpc.LogRequest(ctx, log, rpc.AppendCallerAttrs(attrs, ri))
			telemetry.Annotate(ctx, ri)
			telemetry.AnnotateHTTP(ctx, sw.code())
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
// it), the Allow header of 405 responses, which grpc-gateway does not
// compute, and the strict checking of request bodies. A test checks that it
// agrees with the generated routes. Literal routes come before templated
// ones that would also match them.
type route struct {
	method   string
	template string
	// body is the message a JSON body decodes into, or nil for routes that
	// take no body. Fields bound to path parameters are not accepted in it.
	// Routes with a body take nothing from the query string.
	body proto.Message
	// query, if set, is the message the query string fills; its integer
	// parameters are checked before grpc-gateway parses them.
	query proto.Message
}

func routes() []route {
	return []route{
		{http.MethodGet, "/api/v1/me/tokens/current", nil, nil},
		{http.MethodGet, "/api/v1/me/tokens/{token_id}", nil, nil},
		{http.MethodPatch, "/api/v1/me/tokens/{token_id}", &tokenv1.TokenUpdate{}, nil},
		{http.MethodDelete, "/api/v1/me/tokens/{token_id}", nil, nil},
		{http.MethodGet, "/api/v1/me/tokens", nil, &tokenv1.ListTokensRequest{}},
		{http.MethodPost, "/api/v1/me/tokens", &tokenv1.CreateTokenRequest{}, nil},
		{http.MethodPost, "/api/v1/me/tokens/{token_id}/rotate", &tokenv1.RotateTokenRequest{}, nil},
	}
}

// router is the route table compiled for matching without allocating, as
// it runs on every request.
type router struct {
	routes []compiledRoute
}

type compiledRoute struct {
	route
	segs    []string // template segments; "" stands for a {variable}
	literal bool     // no variables
	idSeg   int      // the index in segs of {token_id}, or -1
}

func newRouter() *router {
	rs := routes()
	out := &router{routes: make([]compiledRoute, len(rs))}
	for i, r := range rs {
		segs := strings.Split(strings.TrimPrefix(r.template, "/"), "/")
		literal, idSeg := true, -1
		for j, s := range segs {
			if s == "{token_id}" {
				idSeg = j
			}
			if strings.HasPrefix(s, "{") {
				segs[j], literal = "", false
			}
		}
		out.routes[i] = compiledRoute{route: r, segs: segs, literal: literal, idSeg: idSeg}
	}
	return out
}

// match reports whether path fits the route: the same number of segments,
// literal segments equal, variables non-empty. Only the leading slash is
// trimmed: "/tokens/1/" has an empty last segment and matches no route,
// exactly as grpc-gateway routes it.
func (c *compiledRoute) match(path string) bool {
	rest, ok := strings.CutPrefix(path, "/")
	if !ok {
		return false
	}
	for i, want := range c.segs {
		seg, tail, more := strings.Cut(rest, "/")
		if more != (i < len(c.segs)-1) {
			return false
		}
		if want == "" && seg == "" || want != "" && seg != want {
			return false
		}
		rest = tail
	}
	return true
}

// canonicalID reports whether path, which c matches, gives its token id
// (if it has one) in canonical form: a decimal without sign or leading
// zeros. grpc-gateway parses ids with strconv, which also takes "+1" and
// "001": other URLs of token 1, for caches, proxies' rules and logs.
// Whether a canonical id is in range is grpc-gateway's to say.
func (c *compiledRoute) canonicalID(path string) bool {
	if c.idSeg < 0 {
		return true
	}
	seg := strings.TrimPrefix(path, "/")
	for range c.idSeg {
		_, seg, _ = strings.Cut(seg, "/")
	}
	seg, _, _ = strings.Cut(seg, "/")
	if seg == "" || seg[0] < '1' || seg[0] > '9' {
		return false
	}
	for i := 1; i < len(seg); i++ {
		if seg[i] < '0' || seg[i] > '9' {
			return false
		}
	}
	return true
}

// resolution is what the route table says of one request.
type resolution struct {
	// template is that of the first route whose path matches, whatever
	// its method; "" if none does.
	template string
	// route is the route for the request's method, or nil.
	route *compiledRoute
	// otherMethods is set when the path is routed, but not for the
	// request's method: a 405.
	otherMethods bool
}

// resolve matches method and path against the table in one pass. A path
// that names a literal route exactly (such as /api/v1/me/tokens/current)
// is served only by literal routes, even where a templated route would
// match it too.
func (rt *router) resolve(method, path string) resolution {
	var res resolution
	literal := rt.literalPath(path)
	for i := range rt.routes {
		c := &rt.routes[i]
		if !c.serves(path, literal) {
			continue
		}
		if res.template == "" {
			res.template = c.template
		}
		if c.method == method {
			res.route, res.otherMethods = c, false
			return res
		}
		res.otherMethods = true
	}
	return res
}

// routingPath is the path requests are routed on, here and by grpc-gateway
// (UnescapingModeAllExceptReserved; checkBody hands it on as the request's
// RawPath): as the client escaped it, so that an escaped slash (%2F) is
// part of a segment, not a separator, and /api/v1/me/tokens/1%2Frotate is
// not another spelling of the rotate route; but with escaped unreserved
// characters decoded, which RFC 3986 (6.2.2.2) makes the same URI, so
// /api/v1/me/%74okens is /api/v1/me/tokens. net/url leaves RawPath empty
// when the path needs no escaping; then Path is the same path.
func routingPath(r *http.Request) string {
	if r.URL.RawPath == "" {
		return r.URL.Path
	}
	return decodeUnreserved(r.URL.RawPath)
}

// decodeUnreserved decodes the escapes in p of unreserved characters
// (letters, digits, "-", ".", "_", "~") and keeps every other escape.
func decodeUnreserved(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			if c, err := strconv.ParseUint(p[i+1:i+3], 16, 8); err == nil && unreserved(byte(c)) {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// routeOf returns the template that r's path matches, the path itself for
// the fixed documents and probes, or "unmatched".
func (rt *router) routeOf(r *http.Request) string {
	if t := rt.resolve(r.Method, routingPath(r)).template; t != "" {
		return t
	}
	switch r.URL.Path {
	case pathOpenAPI, pathDocs, pathHealthz, pathReadyz:
		return r.URL.Path
	}
	return "unmatched"
}

// serves reports whether route c serves path, whatever the method: its
// template matches, and, if path names a literal route exactly (literal,
// from literalPath), c is that literal route.
func (c *compiledRoute) serves(path string, literal bool) bool {
	return (!literal || c.template == path) && c.match(path)
}

// literalPath reports whether a literal route names path exactly.
func (rt *router) literalPath(path string) bool {
	for i := range rt.routes {
		if c := &rt.routes[i]; c.literal && c.template == path {
			return true
		}
	}
	return false
}

// allowedMethods lists the methods routed for r's path, for Allow: HEAD
// wherever GET is.
func (rt *router) allowedMethods(r *http.Request) []string {
	path := routingPath(r)
	literal := rt.literalPath(path)
	var out []string
	for i := range rt.routes {
		c := &rt.routes[i]
		if c.serves(path, literal) && !slices.Contains(out, c.method) {
			out = append(out, c.method)
			if c.method == http.MethodGet {
				out = append(out, http.MethodHead)
			}
		}
	}
	return out
}

// forwardResponse sets what grpc-gateway cannot derive from a response
// message: 201 with Location for a create (and Idempotent-Replayed for a
// retry), 204 for a revoke.
func forwardResponse(ctx context.Context, w http.ResponseWriter, resp proto.Message) error {
	switch m := resp.(type) {
	case *tokenv1.CreateTokenResponse:
		w.Header().Set("Location", fmt.Sprintf("/api/v1/me/tokens/%d", m.GetToken().GetId()))
		if md, ok := runtime.ServerMetadataFromContext(ctx); ok && len(md.HeaderMD.Get(service.ReplayedMetadata)) > 0 {
			w.Header().Set("Idempotent-Replayed", "true")
		}
		w.WriteHeader(http.StatusCreated)
	case *tokenv1.RevokeTokenResponse:
		w.Header().Del("Content-Type")
		w.WriteHeader(http.StatusNoContent)
	}
	return nil
}
