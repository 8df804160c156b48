package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
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

// isChild reports whether args name a baseline server subcommand.
func isChild(args []string) bool {
	return len(args) > 0 && (args[0] == "bare-http" || args[0] == "bare-grpc")
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
	case "bare-http":
		return serveBareHTTP(ctx, ln)
	default:
		return serveBareGRPC(ctx, ln)
	}
}

// serveBareHTTP is baseline A: net/http returning the example JSON, with
// the same server timeouts tokend sets.
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
	srv := &http.Server{
		Handler:           mux,
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
