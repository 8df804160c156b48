package auth_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/request"
)

const testMethod = "/tokend.v1.TokenService/GetToken"

func isHealth(m string) bool { return strings.HasPrefix(m, "/grpc.health.v1.Health/") }

// callCtx returns a context with incoming metadata md (key, value pairs)
// from TCP peer addr, carrying a fresh request.Info with that peer, as the
// gRPC edge makes it.
func callCtx(addr string, kv ...string) (context.Context, *request.Info) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(kv...))
	ap := netip.MustParseAddrPort(addr)
	ctx = peer.NewContext(ctx, &peer.Peer{Addr: net.TCPAddrFromAddrPort(ap)})
	// As the gRPC edge (rpc.startCall) starts it.
	ri := &request.Info{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Peer: ap.Addr()}
	return request.NewContext(ctx, ri), ri
}

// TestUnaryInterceptorTakesThePeerFromTheEdge: a REST call reaches the
// chain in-process with no gRPC peer; the client address is the one the
// HTTP edge put on the Info, and a token restricted to it is accepted
// (and refused for another).
func TestUnaryInterceptorTakesThePeerFromTheEdge(t *testing.T) {
	e := newEnv(t)
	_, sec := e.create(t, "alice", allowedIPs(t, "198.51.100.7"))
	ic := e.a.UnaryInterceptor(isHealth)
	for _, tc := range []struct {
		peer string
		ok   bool
	}{{"198.51.100.7", true}, {"203.0.113.9", false}} {
		ri := &request.Info{TraceID: "4bf92f3577b34da6a3ce929d0e0e4736", Peer: netip.MustParseAddr(tc.peer)}
		ctx := request.NewContext(metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+sec)), ri)
		var h recordingHandler
		_, err := ic(ctx, "request", &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle)
		if (err == nil) != tc.ok || ri.Client != netip.MustParseAddr(tc.peer) {
			t.Errorf("edge peer %s: err %v, client %v; want accepted=%v and that client", tc.peer, err, ri.Client, tc.ok)
		}
	}
}

// recordingHandler is a grpc.UnaryHandler that remembers its context.
type recordingHandler struct {
	called int
	ctx    context.Context
	req    any
}

func (h *recordingHandler) handle(ctx context.Context, req any) (any, error) {
	h.called++
	h.ctx, h.req = ctx, req
	return "response", nil
}

func TestUnaryInterceptorSuccess(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice")
	ic := e.a.UnaryInterceptor(isHealth)

	ctx, ri := callCtx("203.0.113.7:4242", "authorization", "Bearer "+sec)
	var h recordingHandler
	resp, err := ic(ctx, "request", &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle)
	if err != nil || resp != "response" {
		t.Fatalf("interceptor = %v, %v; want the handler's response", resp, err)
	}
	if h.called != 1 || h.req != "request" {
		t.Fatalf("handler called %d times with %v, want once with the request", h.called, h.req)
	}
	p, ok := auth.FromContext(h.ctx)
	if !ok || p.UserID != "alice" || p.TokenID != tok.ID || p.Token.ID != tok.ID {
		t.Errorf("FromContext(handler ctx) = %+v, %v; want alice's token %d", p, ok, tok.ID)
	}
	if request.FromContext(h.ctx) != ri {
		t.Error("handler context lost the request.Info")
	}
	wantClient := netip.MustParseAddr("203.0.113.7")
	if ri.Client != wantClient || ri.UserID != "alice" || ri.TokenID != tok.ID || ri.Failure != "" {
		t.Errorf("request.Info = %+v, want client %v, alice/%d, no failure", ri, wantClient, tok.ID)
	}
	if n, _ := e.usage(t, tok); n != 1 {
		t.Errorf("usage = %d, want 1", n)
	}
}

func TestUnaryInterceptorWithoutRequestInfo(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice")
	ic := e.a.UnaryInterceptor(isHealth)
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+sec))
	var h recordingHandler
	if _, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle); err != nil {
		t.Fatalf("interceptor without peer or Info = %v", err)
	}
	if p, ok := auth.FromContext(h.ctx); !ok || p.TokenID != tok.ID {
		t.Errorf("FromContext = %+v, %v; want token %d", p, ok, tok.ID)
	}
	if _, err := ic(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle); !errors.Is(err, auth.ErrNoCredentials) {
		t.Errorf("interceptor without metadata = %v, want ErrNoCredentials", err)
	}
}

func TestUnaryInterceptorPublicMethod(t *testing.T) {
	e := newEnv(t)
	ic := e.a.UnaryInterceptor(isHealth)
	for _, kv := range [][]string{nil, {"authorization", "Bearer garbage"}} {
		ctx, ri := callCtx("203.0.113.7:4242", kv...)
		var h recordingHandler
		resp, err := ic(ctx, "ping", &grpc.UnaryServerInfo{FullMethod: "/grpc.health.v1.Health/Check"}, h.handle)
		if err != nil || resp != "response" || h.called != 1 {
			t.Fatalf("metadata %q: public method = %v, %v, handler called %d; want the handler's response", kv, resp, err, h.called)
		}
		if p, ok := auth.FromContext(h.ctx); ok {
			t.Errorf("metadata %q: public method handler got principal %+v", kv, p)
		}
		if !reflect.DeepEqual(*ri, request.Info{TraceID: ri.TraceID, Peer: ri.Peer}) {
			t.Errorf("metadata %q: public method touched request.Info: %+v", kv, ri)
		}
	}
}

func TestUnaryInterceptorFailure(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice", allowedIPs(t, "198.51.100.1"))
	unknown := "Bearer " + strings.Repeat("0", 10)
	ic := e.a.UnaryInterceptor(isHealth)

	tests := []struct {
		name    string
		addr    string
		kv      []string
		wantErr error
		secret  string
	}{
		{"no credentials", "203.0.113.7:1", nil, auth.ErrNoCredentials, ""},
		{"other metadata only", "203.0.113.7:1", []string{"x-other", "v"}, auth.ErrNoCredentials, ""},
		{"malformed secret", "203.0.113.7:1", []string{"authorization", unknown}, auth.ErrInvalidToken, unknown},
		{"two credentials", "198.51.100.1:1", []string{"authorization", "Bearer " + sec, "authorization", "Bearer " + sec}, auth.ErrInvalidToken, sec},
		{"client not allowed", "203.0.113.7:1", []string{"authorization", "Bearer " + sec}, auth.ErrInvalidToken, sec},
		// An untrusted peer cannot claim an allowed address through XFF.
		{"spoofed XFF from untrusted peer", "203.0.113.7:1", []string{"authorization", "Bearer " + sec, "x-forwarded-for", "198.51.100.1"}, auth.ErrInvalidToken, sec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, ri := callCtx(tt.addr, tt.kv...)
			var h recordingHandler
			resp, err := ic(ctx, "request", &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("interceptor = %v, %v; want error wrapping %v", resp, err, tt.wantErr)
			}
			if resp != nil {
				t.Errorf("interceptor returned response %v alongside an error", resp)
			}
			if h.called != 0 {
				t.Errorf("handler called %d times after a failed authentication", h.called)
			}
			if ri.Failure == "" || ri.Failure != err.Error() {
				t.Errorf("request.Info.Failure = %q, want the error %q", ri.Failure, err)
			}
			if tt.secret != "" && strings.Contains(ri.Failure, strings.TrimPrefix(tt.secret, "Bearer ")) {
				t.Errorf("request.Info.Failure %q contains the presented secret", ri.Failure)
			}
			if ri.UserID != "" || ri.TokenID != 0 {
				t.Errorf("request.Info names a token after a failure: %+v", ri)
			}
			if want := netip.MustParseAddrPort(tt.addr).Addr(); ri.Client != want {
				t.Errorf("request.Info.Client = %v, want the peer %v", ri.Client, want)
			}
		})
	}
	if n, _ := e.usage(t, tok); n != 0 {
		t.Errorf("usage after failures = %d, want 0", n)
	}
}

func TestUnaryInterceptorForwardedFor(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice", allowedIPs(t, "198.51.100.1"))
	ic := e.a.UnaryInterceptor(isHealth)
	tests := []struct {
		name       string
		addr       string
		xff        string
		wantClient string
		wantOK     bool
	}{
		{"untrusted peer's XFF ignored", "203.0.113.7:1", "198.51.100.1", "203.0.113.7", false},
		{"trusted peer's XFF believed", "10.1.2.3:1", "198.51.100.1", "198.51.100.1", true},
		{"mapped trusted peer's XFF believed", "[::ffff:127.0.0.1]:1", "198.51.100.1", "198.51.100.1", true},
		{"trusted peer, spoofed left hop ignored", "10.1.2.3:1", "198.51.100.1, 203.0.113.9", "203.0.113.9", false},
	}
	uses := uint64(0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, ri := callCtx(tt.addr, "authorization", "Bearer "+sec, "x-forwarded-for", tt.xff)
			var h recordingHandler
			_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle)
			if want := netip.MustParseAddr(tt.wantClient); ri.Client != want {
				t.Errorf("request.Info.Client = %v, want %v", ri.Client, want)
			}
			if tt.wantOK {
				uses++
				if err != nil || h.called != 1 {
					t.Errorf("interceptor = %v, handler called %d; want success", err, h.called)
				}
			} else if !errors.Is(err, auth.ErrInvalidToken) || h.called != 0 {
				t.Errorf("interceptor = %v, handler called %d; want ErrInvalidToken", err, h.called)
			}
		})
	}
	if n, _ := e.usage(t, tok); n != uses {
		t.Errorf("usage = %d, want %d", n, uses)
	}
}

// TestUnaryInterceptorReadsTheEdgesHeaders: for a REST request, the
// credentials and forwarded addresses are the HTTP header's lines as the
// edge received them (request.Info.Header), not the metadata grpc-gateway
// builds from them, which drops whole a line that is not valid metadata:
// a second credential would vanish instead of being refused, and with a
// proxy's X-Forwarded-For line the client address it appended.
func TestUnaryInterceptorReadsTheEdgesHeaders(t *testing.T) {
	e := newEnv(t)
	_, sec := e.create(t, "alice", allowedIPs(t, "10.1.2.3"))
	ic := e.a.UnaryInterceptor(isHealth)
	for _, tc := range []struct {
		name       string
		header     http.Header
		wantClient string
	}{
		{"a proxy's line the gateway drops", http.Header{
			"Authorization":   {"Bearer " + sec},
			"X-Forwarded-For": {"\u00e9, 198.51.100.7"},
		}, "198.51.100.7"},
		{"a second credential the gateway drops", http.Header{
			"Authorization": {"Bearer " + sec, "Bearer\tjunk"},
		}, "10.1.2.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The metadata as grpc-gateway builds it: only the valid lines.
			ctx, ri := callCtx("10.1.2.3:1", "authorization", "Bearer "+sec, "x-forwarded-for", "10.1.2.3")
			ri.Header = tc.header
			var h recordingHandler
			_, err := ic(ctx, nil, &grpc.UnaryServerInfo{FullMethod: testMethod}, h.handle)
			if want := netip.MustParseAddr(tc.wantClient); ri.Client != want {
				t.Errorf("request.Info.Client = %v, want %v", ri.Client, want)
			}
			if !errors.Is(err, auth.ErrInvalidToken) || h.called != 0 {
				t.Errorf("interceptor = %v, handler called %d; want the token refused", err, h.called)
			}
		})
	}
}

func TestPeerAddr(t *testing.T) {
	tests := []struct {
		name string
		ctx  context.Context
		want netip.Addr
	}{
		{"no peer", context.Background(), netip.Addr{}},
		{"nil addr", peer.NewContext(context.Background(), &peer.Peer{}), netip.Addr{}},
		{"tcp", peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.ParseIP("203.0.113.7"), Port: 1}}), netip.MustParseAddr("203.0.113.7")},
		{"tcp mapped", peer.NewContext(context.Background(), &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"))}), netip.MustParseAddr("10.0.0.1")},
		{"unix", peer.NewContext(context.Background(), &peer.Peer{Addr: &net.UnixAddr{Name: "/tmp/x.sock", Net: "unix"}}), netip.Addr{}},
		{"udp", peer.NewContext(context.Background(), &peer.Peer{Addr: &net.UDPAddr{IP: net.ParseIP("2001:db8::1"), Port: 53}}), netip.MustParseAddr("2001:db8::1")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := auth.PeerAddr(tt.ctx); got != tt.want {
				t.Errorf("PeerAddr = %v, want %v", got, tt.want)
			}
		})
	}
}

// Authentication of one token from many goroutines counts every use.
func TestAuthenticateConcurrent(t *testing.T) {
	e := newEnv(t)
	tok, sec := e.create(t, "alice")
	a := e.a
	const n = 50
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := a.Authenticate([]string{"Bearer " + sec}, client)
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("Authenticate = %v", err)
		}
	}
	if got, _ := e.usage(t, tok); got != n {
		t.Errorf("usage = %d, want %d", got, n)
	}
}
