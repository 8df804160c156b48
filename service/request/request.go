// Package request carries what tokend knows about one request across the
// layers it passes through: its trace id, the client address and, once
// authenticated, the token that made it. The transport edge (the HTTP
// middleware or the outermost gRPC interceptor) creates it; later layers
// fill it in; the edge writes it to the request's log line.
package request

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"net/netip"
	"strings"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"
)

// Info is the mutable, request-scoped record. It is owned by one request
// and touched by one goroutine at a time, as a request's layers run in turn.
type Info struct {
	// TraceID is 32 lowercase hex digits, from an incoming W3C traceparent
	// or freshly drawn.
	TraceID string
	// Route is the REST route template the request matched, or
	// "unmatched"; empty for gRPC calls. Logs and metrics use it, never
	// the raw path, which the client chooses.
	Route string
	// Peer is the transport peer's address (the TCP peer of the HTTP or
	// gRPC connection), set by the edge. Only tokend's own edges create an
	// Info, so nothing a client sends can set it.
	Peer netip.Addr
	// Header is the HTTP request's header as the REST edge received it;
	// nil for a gRPC call. Read it with Values.
	Header http.Header
	// Client is the client address as derived by authentication (the TCP
	// peer, or a forwarded address from a trusted proxy).
	Client netip.Addr
	// UserID and TokenID name the authenticated token, once there is one.
	UserID  string
	TokenID uint64
	// Failure says why authentication failed, for the log line; never the
	// presented secret.
	Failure string
}

type ctxKey struct{}

// NewContext returns ctx carrying info.
func NewContext(ctx context.Context, info *Info) context.Context {
	return context.WithValue(ctx, ctxKey{}, info)
}

// Values returns the values of a request header as the client sent it:
// for a REST request (info has the edge's Header), the lines of the HTTP
// header named header, as the edge received them; otherwise (a gRPC call,
// or no Info), ctx's incoming metadata's values of key, its lowercase
// name. The caller must not modify them. A method, so that a caller that
// holds the Info already (authentication, on every request) does not look
// it up in ctx again.
//
// For REST the service reads the headers it relies on here, never from
// the metadata grpc-gateway builds from them, because grpc-gateway drops
// whole any value that is not valid gRPC metadata (a tab, a non-ASCII
// byte): a second Authorization line would vanish instead of being
// refused, an invalid Idempotency-Key would vanish instead of being
// refused (and a retry would create a second token), and a proxy's
// X-Forwarded-For would vanish with the client's own line it appended to.
func (info *Info) Values(ctx context.Context, header, key string) []string {
	if info != nil && info.Header != nil {
		return info.Header.Values(header)
	}
	return metadata.ValueFromIncomingContext(ctx, key)
}

// FromContext returns the request's Info, or nil outside a request.
func FromContext(ctx context.Context) *Info {
	info, _ := ctx.Value(ctxKey{}).(*Info)
	return info
}

// TraceIDFrom returns the trace id for a request with context ctx: that of
// its OpenTelemetry span when it is traced (the span continues an incoming
// traceparent, so the ids agree), else TraceID(traceparent).
func TraceIDFrom(ctx context.Context, traceparent string) string {
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		return sc.TraceID().String()
	}
	return TraceID(traceparent)
}

// TraceID returns the trace id for a request whose W3C traceparent header
// (or metadata) is traceparent: its trace-id field if the header is
// well-formed, else a fresh random id. An attacker-chosen id is harmless: it
// only names log lines, and the format check keeps it to 32 hex digits.
func TraceID(traceparent string) string {
	if id, ok := ParseTraceparent(traceparent); ok {
		return id
	}
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go 1.24+).
	return hex.EncodeToString(b[:])
}

// ParseTraceparent extracts the trace-id from a W3C traceparent
// ("00-<32 hex>-<16 hex>-<2 hex>"), reading it exactly as OpenTelemetry's
// propagator does (a test holds them equal), so that a request's trace id
// does not depend on whether tracing is on: lowercase hex only; all-zero
// ids and version ff are invalid; version 00 allows no reserved flag bits
// and nothing after the flags but one trailing "-"; later versions may
// append "-"-separated fields.
func ParseTraceparent(h string) (string, bool) {
	version, h, _ := strings.Cut(h, "-")
	traceID, h, _ := strings.Cut(h, "-")
	parentID, h, _ := strings.Cut(h, "-")
	flags, rest, _ := strings.Cut(h, "-")
	if len(version) != 2 || len(traceID) != 32 || len(parentID) != 16 || len(flags) != 2 {
		return "", false
	}
	if !isHex(version) || version == "ff" || !isHex(traceID) || !isHex(parentID) || !isHex(flags) {
		return "", false
	}
	if version == "00" && (rest != "" || flags[0] != '0' || flags[1] > '3') {
		return "", false
	}
	if allZero(traceID) || allZero(parentID) {
		return "", false
	}
	return traceID, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}
