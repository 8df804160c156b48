// Package auth is where a bearer is checked. Every authenticated RPC,
// whether it arrived over gRPC or through the REST gateway's in-process
// channel, passes through UnaryInterceptor and so through Authenticate.
package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"github.com/tokend/tokend/service/request"
	"github.com/tokend/tokend/service/secret"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/token"
)

// Errors that the rpc layer maps to Unauthenticated. Both kinds of failure
// are reported to the caller identically apart from RFC 6750's error code:
// an attacker learns nothing about why a presented token was refused.
var (
	// ErrNoCredentials means no bearer token was presented.
	ErrNoCredentials = errors.New("no bearer credentials")
	// ErrInvalidToken means a bearer token was presented and refused:
	// malformed, unknown, revoked, expired, or used from a disallowed
	// address. The wrapping error names which, for the server's log only.
	ErrInvalidToken = errors.New("invalid bearer token")
)

// ErrPreviousSecret means a change (create, update, rotate, revoke) was
// asked for with a secret a rotation has replaced, in its grace period.
// The rpc layer maps it to PermissionDenied: the grace period is for
// deployed clients to keep reading while they move to the new secret, and
// whoever holds the old one (leaked, it may be why the token was rotated)
// must not be able to rotate again and take the token over.
var ErrPreviousSecret = errors.New("a rotated-out secret cannot change tokens")

// Reasons for a failed authentication, as metrics label them: a short,
// closed set. The presented secret is never part of any of them.
const (
	ReasonMissing   = "missing"         // no bearer credentials
	ReasonMultiple  = "multiple"        // more than one authorization value
	ReasonMalformed = "malformed"       // not a well-formed tokend secret
	ReasonUnknown   = "unknown"         // no token has this secret
	ReasonRevoked   = "revoked"         // the token was revoked
	ReasonExpired   = "expired"         // the token expired
	ReasonAddress   = "address_refused" // the client address is not allowed
	ReasonError     = "error"           // the lookup itself failed
)

// Reasons lists every reason FailureReason can return.
func Reasons() []string {
	return []string{ReasonMissing, ReasonMultiple, ReasonMalformed, ReasonUnknown, ReasonRevoked, ReasonExpired, ReasonAddress, ReasonError}
}

// refusal is an ErrInvalidToken that knows its reason.
type refusal struct{ reason, detail string }

func (r *refusal) Error() string        { return ErrInvalidToken.Error() + ": " + r.detail }
func (r *refusal) Is(target error) bool { return target == ErrInvalidToken }

// The refusals, made once: a failed attempt allocates no error.
var (
	errMultiple   = &refusal{ReasonMultiple, "more than one authorization value"}
	errBadBearer  = &refusal{ReasonMalformed, "malformed bearer token"}
	errBadSecret  = &refusal{ReasonMalformed, "malformed secret"}
	errUnknown    = &refusal{ReasonUnknown, "unknown secret"}
	errRevoked    = &refusal{ReasonRevoked, "revoked"}
	errExpired    = &refusal{ReasonExpired, "expired"}
	errNotAllowed = &refusal{ReasonAddress, "client address not allowed"}
)

// FailureReason returns the Reason of an error from Authenticate.
func FailureReason(err error) string {
	var r *refusal
	switch {
	case errors.As(err, &r):
		return r.reason
	case errors.Is(err, ErrNoCredentials):
		return ReasonMissing
	}
	return ReasonError
}

// Observer is told of failed authentications, for metrics. Its methods
// must be cheap and safe for concurrent use.
type Observer interface {
	// Refused is called once per failed authentication with its Reason.
	Refused(reason string)
	// Throttled is called once per request refused by the Throttle.
	Throttled()
}

// Principal is the authenticated caller: the owner of the token and the
// token itself.
type Principal struct {
	UserID  string
	TokenID uint64
	// Token is the token as authentication read it, before this request's
	// use was counted, and UsageGen the usage recorder's Gen before that
	// read: together they let a handler show the token without reading it
	// again (see usage.Recorder.ApplySince).
	Token    token.Token
	UsageGen uint64
	// Previous is set when the secret presented was the token's previous
	// one, within its rotation grace period: it may read, not change (see
	// ErrPreviousSecret).
	Previous bool
}

// MayChange returns ErrPreviousSecret if p authenticated with a secret a
// rotation has replaced, else nil. Every handler that changes tokens asks.
func (p Principal) MayChange() error {
	if p.Previous {
		return ErrPreviousSecret
	}
	return nil
}

type principalKey struct{}

// FromContext returns the principal that authenticated the request, if any.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(principalKey{}).(Principal)
	return p, ok
}

// NewContext returns ctx carrying p. Tests of handlers use it; the
// interceptor is the only caller in the server.
func NewContext(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// UsageRecorder counts successful uses of tokens.
type UsageRecorder interface {
	Record(id uint64, at time.Time)
	Gen() uint64
}

// Authenticator checks bearer secrets against the store and counts each
// successful use.
type Authenticator struct {
	throttle *Throttle
	observer Observer
	store    *store.Store
	usage    UsageRecorder
	proxies  []netip.Prefix
	now      func() time.Time
}

// New returns an Authenticator that looks secrets up in st and counts uses
// with usage. trustedProxies lists the peers whose X-Forwarded-For is
// believed; with none, the client address is always the TCP peer. now is
// the clock (time.Now in production).
func New(st *store.Store, usage UsageRecorder, trustedProxies []netip.Prefix, now func() time.Time) *Authenticator {
	return &Authenticator{store: st, usage: usage, proxies: trustedProxies, now: now}
}

// WithThrottle makes the interceptor refuse clients that t says have
// failed too often, and count their failures; it returns a.
func (a *Authenticator) WithThrottle(t *Throttle) *Authenticator {
	a.throttle = t
	return a
}

// WithObserver makes a tell o of every failed authentication; it returns a.
func (a *Authenticator) WithObserver(o Observer) *Authenticator {
	a.observer = o
	return a
}

// Authenticate checks the values of the authorization header (or metadata)
// presented from client, and on success records the use and returns the
// principal. Exactly one value is accepted: a second credential, however it
// got there, is refused rather than guessed between.
func (a *Authenticator) Authenticate(authorization []string, client netip.Addr) (Principal, error) {
	if len(authorization) == 0 {
		return Principal{}, ErrNoCredentials
	}
	if len(authorization) > 1 {
		return Principal{}, errMultiple
	}
	sec, err := ParseBearer(authorization[0])
	if err != nil {
		return Principal{}, err
	}
	if secret.Check(sec) != nil {
		return Principal{}, errBadSecret
	}
	now := a.now()
	gen := a.usage.Gen()
	h := secret.HashOf(sec)
	t, err := a.store.Lookup(h, now)
	switch {
	case errors.Is(err, token.ErrNotFound):
		return Principal{}, errUnknown
	case err != nil:
		return Principal{}, err
	}
	switch t.Status(now) {
	case token.StatusRevoked:
		return Principal{}, errRevoked
	case token.StatusExpired:
		return Principal{}, errExpired
	}
	if !t.AllowedIPs.Allows(client) {
		return Principal{}, errNotAllowed
	}
	// Counted before the handler runs, so a token reading itself sees the
	// request it is making.
	a.usage.Record(t.ID, now)
	// The lookup matched the current secret or, in a grace period, the
	// previous one.
	previous := subtle.ConstantTimeCompare(h[:], t.SecretHash[:]) != 1
	return Principal{UserID: t.UserID, TokenID: t.ID, Token: t, UsageGen: gen, Previous: previous}, nil
}

// ParseBearer extracts the token from an Authorization value of the form
// "Bearer <token>" (RFC 6750; the scheme is case-insensitive). A value in
// another scheme, or with no token, is ErrNoCredentials: no bearer token was
// presented. A token with inner whitespace is ErrInvalidToken.
func ParseBearer(v string) (string, error) {
	scheme, rest, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", fmt.Errorf("%w: not a bearer authorization", ErrNoCredentials)
	}
	tok := strings.TrimLeft(rest, " ")
	if tok == "" {
		return "", fmt.Errorf("%w: empty bearer token", ErrNoCredentials)
	}
	if strings.ContainsAny(tok, " \t") {
		return "", errBadBearer
	}
	return tok, nil
}

// ClientAddr derives the client address from the TCP peer and the values of
// X-Forwarded-For. Forwarded values are believed only from a trusted proxy,
// and then only as far as the chain of trusted proxies goes: walking from the
// right, the first address that is not a trusted proxy is the client. An
// unparsable entry ends the walk at the last address known to be honest.
func (a *Authenticator) ClientAddr(peerAddr netip.Addr, forwardedFor []string) netip.Addr {
	client := peerAddr.Unmap()
	if !a.trusted(client) {
		return client
	}
	for i := len(forwardedFor) - 1; i >= 0; i-- {
		hops := strings.Split(forwardedFor[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			hop, err := netip.ParseAddr(strings.TrimSpace(hops[j]))
			if err != nil || hop.Zone() != "" {
				return client
			}
			client = hop.Unmap()
			if !a.trusted(client) {
				return client
			}
		}
	}
	return client
}

func (a *Authenticator) trusted(addr netip.Addr) bool {
	for _, p := range a.proxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// PeerAddr returns the IP address of the request's transport peer, or the
// zero Addr if it has none (such as a unix socket).
func PeerAddr(ctx context.Context) netip.Addr {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return netip.Addr{}
	}
	if tcp, ok := p.Addr.(*net.TCPAddr); ok {
		return tcp.AddrPort().Addr().Unmap()
	}
	ap, err := netip.ParseAddrPort(p.Addr.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// UnaryInterceptor authenticates every call except those for which public
// reports true (health checks, reflection). It derives the client address,
// authenticates, records the outcome on the request's Info, and hands the
// handler a context carrying the Principal.
func (a *Authenticator) UnaryInterceptor(public func(fullMethod string) bool) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if public(info.FullMethod) {
			return handler(ctx, req)
		}
		// Incoming metadata keys are lowercase on both transports (grpc-go's
		// HTTP/2 transport, and the in-process Channel, which builds it with
		// metadata.FromOutgoingContext), so these exact lookups see every
		// value a client sent under either name; they copy only the two
		// keys, not the whole metadata.
		ri := request.FromContext(ctx)
		var peerAddr netip.Addr
		if ri != nil && ri.Peer.IsValid() {
			peerAddr = ri.Peer // set by either edge; for REST, the HTTP client's TCP peer
		} else {
			peerAddr = PeerAddr(ctx) // a call that did not pass an edge (tests)
		}
		// As the edge received them: for REST, the HTTP header's lines, not
		// the metadata grpc-gateway builds (see request.Info.Values).
		client := a.ClientAddr(peerAddr, ri.Values(ctx, "X-Forwarded-For", "x-forwarded-for"))
		if ri != nil {
			ri.Client = client
		}
		if err := a.throttle.Check(client, a.now()); err != nil {
			if a.observer != nil {
				a.observer.Throttled()
			}
			if ri != nil {
				ri.Failure = err.Error()
			}
			return nil, err
		}
		p, err := a.Authenticate(ri.Values(ctx, "Authorization", "authorization"), client)
		if err != nil {
			if errors.Is(err, ErrInvalidToken) {
				// A refused token is a guess; no credentials at all is not.
				a.throttle.Fail(client, a.now())
			}
			if a.observer != nil {
				a.observer.Refused(FailureReason(err))
			}
			if ri != nil {
				ri.Failure = err.Error()
			}
			return nil, err
		}
		if ri != nil {
			ri.UserID, ri.TokenID = p.UserID, p.TokenID
		}
		return handler(NewContext(ctx, p), req)
	}
}
