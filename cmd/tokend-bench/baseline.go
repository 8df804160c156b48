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

	"github.com/tokend/tokend/gateway"
	"github.com/tokend/tokend/gateway/gatewaytest"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/logjson"
)

// The seed's example, as REST body, id and TokenService message: what the
// baselines return and what every answer is checked against.
const (
	exampleBody = gatewaytest.ExampleJSON
	exampleID   = gatewaytest.ExampleID
)

var exampleToken = gatewaytest.ExampleToken

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
		Conn:   gatewaytest.FixedConn{Token: exampleToken()},
		Logger: slog.New(logjson.NewHandler(io.Discard)),
	})
	if err != nil {
		return err
	}
	return serveHTTP(ctx, ln, h)
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
