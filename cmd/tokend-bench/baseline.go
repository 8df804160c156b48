package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tokend/tokend/gateway"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/logjson"
)

// exampleBody is the seed's example REST response: the body baseline A
// returns, byte for byte.
const exampleBody = `{"data":{"id":23145,"name":"CI Deployments","status":"active","last_used_at":"2024-04-11T14:35:05Z","usage_count":12,"expires_at":"2024-12-31T06:00:00Z","created_at":"2024-03-01T18:11:00Z","allowed_ips":["10.0.0.0/24","203.0.113.12"]}}`

// exampleID is the id of the example token.
const exampleID = 23145

// exampleToken is the same token as a TokenService message: what baseline
// B returns.
func exampleToken() *tokenv1.Token {
	ts := func(s string) *timestamppb.Timestamp {
		t, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		return timestamppb.New(t)
	}
	return &tokenv1.Token{
		Id:         exampleID,
		Name:       "CI Deployments",
		Status:     tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE,
		LastUsedAt: ts("2024-04-11T14:35:05Z"),
		UsageCount: 12,
		ExpiresAt:  ts("2024-12-31T06:00:00Z"),
		CreatedAt:  ts("2024-03-01T18:11:00Z"),
		AllowedIps: []string{"10.0.0.0/24", "203.0.113.12"},
	}
}

// The baseline server subcommands.
const (
	subBareHTTP    = "bare-http"
	subGatewayOnly = "gateway-only"
	subBareGRPC    = "bare-grpc"
)

// isChild reports whether args name a baseline server subcommand.
func isChild(args []string) bool {
	return len(args) > 0 && slices.Contains([]string{subBareHTTP, subGatewayOnly, subBareGRPC}, args[0])
}

// runChild runs a baseline server subcommand until SIGTERM or SIGINT. It
// prints the address it bound, one line, on stdout.
func runChild(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tokend-bench "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:0", "listen address")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	if _, err := fmt.Fprintln(stdout, ln.Addr().String()); err != nil {
		return err
	}
	switch args[0] {
	case subBareHTTP:
		return serveBareHTTP(ctx, ln)
	case subGatewayOnly:
		return serveGatewayOnly(ctx, ln)
	default:
		return serveBareGRPC(ctx, ln)
	}
}

// serveBareHTTP is baseline A: net/http returning the example JSON.
func serveBareHTTP(ctx context.Context, ln net.Listener) error {
	body := []byte(exampleBody)
	length := strconv.Itoa(len(body))
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/me/tokens/{id}", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		_, _ = w.Write(body)
	})
	return serveHTTP(ctx, ln, mux)
}

// serveGatewayOnly is baseline G: tokend's REST gateway as tokend builds it
// (the edge and its request log line, grpc-gateway's generated handler, the
// contract's JSON, the problem writer) in front of a service that answers
// the example token at once: no interceptor chain, authentication, storage
// or usage counting. What G costs beyond A is the REST layer the design
// fixes; what T-REST costs beyond G is tokend's service. The log lines are
// formatted as tokend formats them and then dropped, where tokend writes
// them to its log in 100 ms batches.
func serveGatewayOnly(ctx context.Context, ln net.Listener) error {
	h, err := gateway.New(ctx, gateway.Options{
		Conn:   fixedConn{token: exampleToken()},
		Logger: slog.New(logjson.NewHandler(io.Discard)),
	})
	if err != nil {
		return err
	}
	return serveHTTP(ctx, ln, h)
}

// fixedConn is an in-process channel whose every GetToken answers token.
// Like tokend's in-process channel it hands over the response rather than
// copying it, and the gateway only reads it.
type fixedConn struct{ token *tokenv1.Token }

func (c fixedConn) Invoke(_ context.Context, method string, _, reply any, _ ...grpc.CallOption) error {
	r, ok := reply.(*tokenv1.GetTokenResponse)
	if !ok {
		return status.Errorf(codes.Unimplemented, "%s is not served by this baseline", method)
	}
	r.Token = c.token
	return nil
}

func (fixedConn) NewStream(_ context.Context, _ *grpc.StreamDesc, method string, _ ...grpc.CallOption) (grpc.ClientStream, error) {
	return nil, status.Errorf(codes.Unimplemented, "%s is not served by this baseline", method)
}

// serveHTTP serves h on ln until ctx is done, with the same server
// timeouts tokend sets.
func serveHTTP(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// bareTokenService is baseline B's TokenService: GetToken returns the
// example token, built once, with no authentication, storage or
// interceptors. (Concurrent marshalling of one message is safe: it is only
// read.)
type bareTokenService struct {
	tokenv1.UnimplementedTokenServiceServer
	resp *tokenv1.GetTokenResponse
}

func (s bareTokenService) GetToken(context.Context, *tokenv1.GetTokenRequest) (*tokenv1.GetTokenResponse, error) {
	return s.resp, nil
}

// serveBareGRPC is baseline B: a default grpc-go server with one unary
// method.
func serveBareGRPC(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer()
	tokenv1.RegisterTokenServiceServer(srv, bareTokenService{resp: &tokenv1.GetTokenResponse{Token: exampleToken()}})
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}
