// Package rpc builds tokend's gRPC servers and their interceptor chains, and
// the in-process channel through which the REST gateway reaches the same
// chain. It is the one place where a request's trace id is set, domain
// errors become status codes, panics are recovered and authentication runs.
package rpc

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	adminv1 "github.com/tokend/tokend/gen/tokend/admin/v1"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/telemetry"
	"github.com/tokend/tokend/service/usage"
)

// TraceHeader is the response header (gRPC metadata key) that carries the
// request's trace id.
const TraceHeader = "x-trace-id"

// Deps are what the servers are built from.
type Deps struct {
	Store  *store.Store
	Auth   *auth.Authenticator
	Logger *slog.Logger
	// Usage holds counted uses not yet on disk; nil where nothing is
	// counted (the CLI on the file).
	Usage *usage.Recorder
	// Limits bound what users may ask for.
	Limits service.Limits
	// Server bounds what one call or connection may cost the server.
	Server ServerLimits
	// Now is the clock; time.Now in production.
	Now func() time.Time
	// Metrics, if set, counts and times the network gRPC server's calls.
	Metrics *telemetry.Metrics
	// Tracing, if set, traces the network gRPC server's calls.
	Tracing *telemetry.Tracing
}

// ServerLimits bound what one call or connection may cost the server.
type ServerLimits struct {
	// MaxRecvMsgBytes caps a request message (ResourceExhausted beyond).
	MaxRecvMsgBytes int
	// MaxConcurrentStreams caps the calls in flight on one connection.
	MaxConcurrentStreams uint32
	// MaxHeaderListBytes caps a call's metadata (HTTP/2 header list, as
	// HPACK-decoded); a stream beyond it is reset. Without it grpc-go
	// accepts 16 MiB per stream, held before any interceptor runs.
	MaxHeaderListBytes uint32
	// MaxCallDuration caps every call's deadline, whatever the client asks
	// for (its own deadline, or the gateway's Grpc-Timeout header): a call
	// that reaches it ends with DeadlineExceeded (REST: 504). Reads do not
	// wait on anything; a write stops waiting for the disk then (and may
	// still complete afterwards).
	MaxCallDuration time.Duration
}

// DefaultServerLimits are the limits of a server started without flags.
// The largest valid request is under 4 KiB.
func DefaultServerLimits() ServerLimits {
	return ServerLimits{MaxRecvMsgBytes: 64 << 10, MaxConcurrentStreams: 100, MaxHeaderListBytes: 32 << 10, MaxCallDuration: 10 * time.Second}
}

func (l ServerLimits) orDefault() ServerLimits {
	def := DefaultServerLimits()
	if l.MaxRecvMsgBytes <= 0 {
		l.MaxRecvMsgBytes = def.MaxRecvMsgBytes
	}
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = def.MaxConcurrentStreams
	}
	if l.MaxHeaderListBytes == 0 {
		l.MaxHeaderListBytes = def.MaxHeaderListBytes
	}
	if l.MaxCallDuration <= 0 {
		l.MaxCallDuration = def.MaxCallDuration
	}
	return l
}

// streamWorkers is how many goroutines the network gRPC server keeps to run
// calls. Without them grpc-go starts a goroutine per call, whose stack then
// grows (runtime.morestack, copying it) through the interceptor chain and
// the log line on every call: 16% of the server's CPU under load. Workers
// keep their grown stacks. When all are busy a call gets its own goroutine
// as before, so the number bounds nothing; it covers the concurrency one
// core serves.
const streamWorkers = 64

// serverOptions are the transport limits of a network gRPC server:
// message and metadata size, streams per connection, and keepalive
// enforcement, so an idle or pinging client cannot hold resources forever;
// and its stream workers.
func serverOptions(l ServerLimits) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.NumStreamWorkers(streamWorkers),
		grpc.MaxRecvMsgSize(l.MaxRecvMsgBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.MaxHeaderListSize(l.MaxHeaderListBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second}),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 5 * time.Minute, Time: 2 * time.Minute, Timeout: 20 * time.Second}),
	}
}

// Public is the public API: the network gRPC server, the in-process channel
// the gateway calls, and the health service to flip at shutdown.
type Public struct {
	Server *grpc.Server
	Local  *Channel
	Health *health.Server
	// EndStreams ends the streaming calls (health Watch, reflection) in
	// flight and any that start later; a graceful stop would otherwise
	// wait for them, since a Watch never ends by itself.
	EndStreams func()
}

// NewPublic builds the public gRPC server with TokenService, health and
// reflection, and an in-process Channel to TokenService. Both run one chain:
// request edge (trace id, log line) → guard (deadline cap, for the channel;
// see capCalls for the network server's; panic recovery, error mapping) →
// authentication (skipped for health checks) → handler. The
// network server also has, outside that chain, the tracing stats handler
// and the metrics interceptors, unary and streaming (the gateway
// instruments REST requests itself, at the HTTP edge). The chain is unary: the streaming methods of
// reflection and health (Watch) need no token, and streamInterceptor gives
// them a trace id, a log line and panic recovery.
func NewPublic(d Deps) *Public {
	limits := d.Server.orDefault()
	// The network server's unary calls are capped by capCalls when their
	// headers arrive, so its guard does not cap them again; the in-process
	// channel's calls (REST) are capped by the guard.
	chain := func(callCap time.Duration) []grpc.UnaryServerInterceptor {
		return []grpc.UnaryServerInterceptor{
			edgeInterceptor(d.Logger),
			guardInterceptor(d.Logger, callCap),
			d.Auth.UnaryInterceptor(isPublicMethod),
		}
	}
	network := chain(0)
	if m := d.Metrics.UnaryServerInterceptor(); m != nil {
		network = append([]grpc.UnaryServerInterceptor{m}, network...)
	}
	registered := make(methods) // filled below, before the server serves
	streamsEnded, endStreams := context.WithCancel(context.Background())
	streams := []grpc.StreamServerInterceptor{streamInterceptor(d.Logger, streamsEnded, registered)}
	if m := d.Metrics.StreamServerInterceptor(); m != nil {
		streams = append([]grpc.StreamServerInterceptor{onlyRegistered(registered, m)}, streams...)
	}
	opts := append(append(serverOptions(limits), d.Tracing.ServerOptions(registered.has)...),
		grpc.InTapHandle(capCalls(limits.MaxCallDuration, registered)),
		grpc.ChainUnaryInterceptor(network...), grpc.ChainStreamInterceptor(streams...),
		// A call of a method the server does not have is answered by the
		// stream chain too, so it gets a trace id and a log line like any
		// other; the method it names is the client's and is logged as
		// "unknown" (see streamInterceptor), never made a metric label or
		// a span.
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.Unimplemented, "unknown service or method")
		}))
	srv := grpc.NewServer(opts...)
	tokens := service.NewTokenService(service.NewTokens(d.Store, d.Usage, d.Limits, d.Now), d.Now)
	tokenv1.RegisterTokenServiceServer(srv, tokens)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	d.Metrics.InitializeGRPC(srv)
	for name, si := range srv.GetServiceInfo() {
		for _, m := range si.Methods {
			registered["/"+name+"/"+m.Name] = m.IsClientStream || m.IsServerStream
		}
	}

	local := newChannel(chainUnary(chain(limits.MaxCallDuration)...))
	tokenv1.RegisterTokenServiceServer(local, tokens)
	return &Public{Server: srv, Local: local, Health: hs, EndStreams: endStreams}
}

// NewAdmin builds the admin gRPC server for the owner-only unix socket, and
// an in-process Channel with the same chain for the CLI when no server is
// running. The admin API has no bearer authentication: reaching it at all
// is the credential.
func NewAdmin(d Deps) (*grpc.Server, *Channel) {
	interceptors := []grpc.UnaryServerInterceptor{
		edgeInterceptor(d.Logger),
		guardInterceptor(d.Logger, 0),
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(interceptors...))
	admin := service.NewAdminService(service.NewTokens(d.Store, d.Usage, d.Limits, d.Now), d.Now)
	adminv1.RegisterAdminServiceServer(srv, admin)
	local := newChannel(chainUnary(interceptors...))
	adminv1.RegisterAdminServiceServer(local, admin)
	return srv, local
}

// isPublicMethod lists the unary methods that need no bearer token: health
// checks, which reveal nothing about any token. (Reflection is streaming
// only, so the unary chain never sees it.)
func isPublicMethod(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/")
}

// chainUnary composes interceptors in order, outermost first, for the
// in-process channel (grpc.ChainUnaryInterceptor does this for a server).
func chainUnary(ics ...grpc.UnaryServerInterceptor) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		next := handler
		for i := len(ics) - 1; i >= 0; i-- {
			ic, inner := ics[i], next
			next = func(ctx context.Context, req any) (any, error) { return ic(ctx, req, info, inner) }
		}
		return next(ctx, req)
	}
}

// edgeInterceptor starts the request's Info when the call arrived over
// gRPC: trace id from the traceparent metadata or fresh, returned in the
// x-trace-id header, and one log line when the call ends. A call through the
// gateway's channel already has an Info, and the gateway logs it.
func edgeInterceptor(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if request.FromContext(ctx) != nil {
			return handler(ctx, req)
		}
		start := time.Now()
		ctx, ri := startCall(ctx)
		_ = grpc.SetHeader(ctx, metadata.Pairs(TraceHeader, ri.TraceID))
		resp, err := handler(ctx, req)
		logCall(ctx, log, ri, info.FullMethod, err, start)
		telemetry.Annotate(ctx, ri)
		return resp, err
	}
}

// streamInterceptor is the edge and guard of the streaming methods, which
// the unary chain does not see: reflection, and health's Watch. They need
// no token. A stream gets a trace id (sent as x-trace-id) and one log line
// when it ends, and a panic in its handler becomes Internal, its cause
// logged with the stack, as in the unary chain. There is no deadline cap:
// a Watch is meant to last, until ended is done (the server is shutting
// down), which ends every stream, so that none holds up a graceful stop.
func streamInterceptor(log *slog.Logger, ended context.Context, registered methods) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		start := time.Now()
		method := info.FullMethod
		if !registered.has(method) {
			method = unknownMethod // the client's choice: not for the log
		}
		ctx, cancel := context.WithCancel(ss.Context())
		defer cancel()
		defer context.AfterFunc(ended, cancel)()
		if ended.Err() != nil {
			cancel() // at once: AfterFunc would run it in a goroutine of its own
		}
		ctx, ri := startCall(ctx)
		_ = ss.SetHeader(metadata.Pairs(TraceHeader, ri.TraceID))
		defer func() {
			if r := recover(); r != nil {
				err = mapError(ctx, log, method, panicError(method, r))
			}
			logCall(ctx, log, ri, method, err, start)
		}()
		return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
	}
}

// unknownMethod stands in the log for a method the server does not have.
const unknownMethod = "/unknown/unknown"

// methods are a server's methods by full name, each true if it streams.
type methods map[string]bool

// has reports whether the server has the method: one it does not have is
// the client's to invent, and names no log line, metric label or span.
func (m methods) has(fullMethod string) bool {
	_, ok := m[fullMethod]
	return ok
}

// onlyRegistered runs ic for calls of registered methods only: metrics
// label calls by method.
func onlyRegistered(registered methods, ic grpc.StreamServerInterceptor) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !registered.has(info.FullMethod) {
			return handler(srv, ss)
		}
		return ic(srv, ss, info, handler)
	}
}

// startCall starts the Info of a call that arrived over gRPC: its trace id
// from the traceparent metadata (the first, as OpenTelemetry's propagator
// reads it) or fresh, the transport peer and the x-forwarded-for values.
func startCall(ctx context.Context) (context.Context, *request.Info) {
	var tp string
	if v := metadata.ValueFromIncomingContext(ctx, "traceparent"); len(v) > 0 {
		tp = v[0]
	}
	peerAddr := auth.PeerAddr(ctx)
	ri := &request.Info{TraceID: request.TraceIDFrom(ctx, tp), Peer: peerAddr, Client: peerAddr}
	return request.NewContext(ctx, ri), ri
}

// logCall writes a gRPC call's request line.
func logCall(ctx context.Context, log *slog.Logger, ri *request.Info, fullMethod string, err error, start time.Time) {
	svc, method := splitMethod(fullMethod)
	LogRequest(ctx, log, AppendCallerAttrs([]slog.Attr{
		slog.String("trace_id", ri.TraceID),
		slog.String("transport", "grpc"),
		slog.String("service", svc),
		slog.String("method", method),
		slog.String("code", status.Code(err).String()),
		slog.Float64("latency_ms", float64(time.Since(start).Microseconds())/1000),
	}, ri))
}

// contextStream is a ServerStream whose handler sees ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }

// LogRequest writes the one "request" line a request ends with, at level
// Info, with attrs; both edges use it. It hands the record to the logger's
// handler itself: slog.Logger would also take the caller's program counter
// (runtime.Callers) on every request, for a source location that the log
// never shows.
func LogRequest(ctx context.Context, log *slog.Logger, attrs []slog.Attr) {
	h := log.Handler()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
	r.AddAttrs(attrs...)
	_ = h.Handle(ctx, r)
}

// AppendCallerAttrs appends the log attributes that describe who made a request; the
// gateway's log line uses them too, so both transports log callers alike.
func AppendCallerAttrs(attrs []slog.Attr, ri *request.Info) []slog.Attr {
	if ri.Client.IsValid() {
		attrs = append(attrs, slog.String("client", ri.Client.String()))
	}
	if ri.TokenID != 0 {
		attrs = append(attrs, slog.Uint64("token_id", ri.TokenID), slog.String("user", ri.UserID))
	}
	if ri.Failure != "" {
		attrs = append(attrs, slog.String("auth_failure", ri.Failure))
	}
	return attrs
}

// capCalls is the network server's tap: it gives every unary call's stream
// a deadline max after its headers arrive, unless the client's own comes
// sooner. grpc-go reads a unary call's request message before any
// interceptor runs, and with no deadline waits for it as long as the
// connection lives: a client, with no token, could hold a goroutine and
// the metadata of every stream it opens and never finishes. (So the
// network chain's guard has no cap of its own.) Streaming methods
// (health's Watch, reflection) are meant to last.
func capCalls(max time.Duration, registered methods) tap.ServerInHandle {
	return func(ctx context.Context, info *tap.Info) (context.Context, error) {
		if registered[info.FullMethodName] { // a streaming method
			return ctx, nil
		}
		if d, ok := ctx.Deadline(); ok && time.Until(d) <= max {
			return ctx, nil // grpc-go already times the client's deadline
		}
		ctx, cancel := context.WithTimeout(ctx, max)
		// Not called here: grpc-go cancels ctx's parent, the stream's own
		// context, when the stream ends, and that stops the timer.
		_ = cancel
		return ctx, nil
	}
}

// guardInterceptor is what every call needs around its handler, in one
// interceptor rather than three (each level of a chain costs a closure per
// call): the deadline cap (none if max is zero; see capDeadline), panic
// recovery, so that no input takes the server down, and the mapping of
// errors to statuses (mapError), which logs a panic with its stack and
// reports it as Internal. A call already past its deadline starts no work.
func guardInterceptor(log *slog.Logger, max time.Duration) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if max > 0 {
			if c := capDeadline(ctx, max); c != nil {
				defer c.release()
				ctx = c
			}
		}
		resp, err := callRecovering(ctx, req, info, handler)
		if err != nil {
			return nil, mapError(ctx, log, info.FullMethod, err)
		}
		return resp, nil
	}
}

// panicError is what a recovered panic in a handler of fullMethod becomes:
// an error carrying the panic value and the stack, for the log only
// (mapError reports it as Internal).
func panicError(fullMethod string, r any) error {
	return fmt.Errorf("panic in %s: %v\n%s", fullMethod, r, debug.Stack())
}

// callRecovering runs handler unless ctx has already ended, turning a panic
// into an error that carries the panic value and stack (for the log only).
func callRecovering(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, panicError(info.FullMethod, r)
		}
	}()
	return handler(ctx, req)
}
