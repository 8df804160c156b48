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
	"net/netip"
	"strings"

	"go.opentelemetry.io/otel/trace"
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
	// ForwardedFor are the X-Forwarded-For values as the transport received
	// them (the HTTP header's lines, or the gRPC metadata's values), set by
	// the edge. Authentication believes them only from a trusted peer.
	// They are read here, not from metadata the gateway builds, because
	// grpc-gateway drops any value that is not valid gRPC metadata whole,
	// and a proxy appends the client's address to the client's own value.
	ForwardedFor []string
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
