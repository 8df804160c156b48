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
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/tokend/tokend/gateway"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/store"
)

// serveConfig is the server's configuration, from flags and environment.
type serveConfig struct {
	DB              string
	HTTPAddr        string
	GRPCAddr        string
	TrustedProxies  []netip.Prefix
	LogFormat       string
	ShutdownTimeout time.Duration
	LockTimeout     time.Duration
}

// listening reports where a started server listens; tests use it to find
// servers bound to port 0.
type listening struct {
	HTTP, GRPC, Admin string
}

func parseServe(args []string, getenv func(string) string, stderr io.Writer) (serveConfig, error) {
	fs := flag.NewFlagSet("tokend serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := serveConfig{}
	fs.StringVar(&cfg.DB, "db", envOr(getenv, "TOKEND_DB", "tokend.db"), "bbolt database file, created if missing (env TOKEND_DB)")
	fs.StringVar(&cfg.HTTPAddr, "http-addr", envOr(getenv, "TOKEND_HTTP_ADDR", "127.0.0.1:8080"), "REST listen address (env TOKEND_HTTP_ADDR)")
	fs.StringVar(&cfg.GRPCAddr, "grpc-addr", envOr(getenv, "TOKEND_GRPC_ADDR", "127.0.0.1:9090"), "gRPC listen address (env TOKEND_GRPC_ADDR)")
	var proxies stringList
	fs.Var(&proxies, "trusted-proxy", "CIDR of a proxy whose X-Forwarded-For is believed; repeatable (env TOKEND_TRUSTED_PROXIES, comma-separated)")
	fs.StringVar(&cfg.LogFormat, "log-format", envOr(getenv, "TOKEND_LOG_FORMAT", "json"), "log format: json or text (env TOKEND_LOG_FORMAT)")
	shutdown := envOr(getenv, "TOKEND_SHUTDOWN_TIMEOUT", "10s")
	fs.Func("shutdown-timeout", "how long to drain in-flight requests on SIGTERM (env TOKEND_SHUTDOWN_TIMEOUT, default 10s)", func(v string) error {
		shutdown = v
		return nil
	})
	pos, err := parseFlags(fs, args)
	if err != nil {
		return cfg, err
	}
	if len(pos) > 0 {
		return cfg, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, pos[0])
	}
	if len(proxies) == 0 {
		if env := getenv("TOKEND_TRUSTED_PROXIES"); env != "" {
			proxies = strings.Split(env, ",")
		}
	}
	for _, p := range proxies {
		prefix, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return cfg, fmt.Errorf("%w: --trusted-proxy %q is not a CIDR range such as 10.0.0.0/8", errUsage, p)
		}
		if prefix.Masked() != prefix {
			return cfg, fmt.Errorf("%w: --trusted-proxy %q has host bits set; did you mean %s?", errUsage, p, prefix.Masked())
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, prefix)
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		return cfg, fmt.Errorf("%w: --log-format must be json or text, got %q", errUsage, cfg.LogFormat)
	}
	cfg.ShutdownTimeout, err = time.ParseDuration(shutdown)
	if err != nil || cfg.ShutdownTimeout <= 0 {
		return cfg, fmt.Errorf("%w: --shutdown-timeout must be a positive duration such as 10s, got %q", errUsage, shutdown)
	}
	cfg.LockTimeout = 2 * time.Second
	return cfg, nil
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

func runServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready func(listening)) error {
	cfg, err := parseServe(args, getenv, stderr)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, newLogger(cfg.LogFormat, stderr), ready)
}

// serve runs tokend until ctx is done, then drains in-flight requests
// (bounded by cfg.ShutdownTimeout) and closes the database.
func serve(ctx context.Context, cfg serveConfig, log *slog.Logger, ready func(listening)) (err error) {
	st, err := store.Open(cfg.DB, store.Options{LockTimeout: cfg.LockTimeout})
	if err != nil {
		if errors.Is(err, store.ErrInUse) {
			return fmt.Errorf("database %s is in use by another process (is another tokend serve running?)", cfg.DB)
		}
		return err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close database: %w", cerr)
		}
	}()

	deps := rpc.Deps{
		Store:  st,
		Auth:   auth.New(st, cfg.TrustedProxies, time.Now),
		Logger: log,
		Now:    time.Now,
	}
	public := rpc.NewPublic(deps)
	admin, _ := rpc.NewAdmin(deps)
	api, err := gateway.New(ctx, gateway.Options{Conn: public.Local, Logger: log})
	if err != nil {
		return err
	}
	httpSrv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	var lc net.ListenConfig
	httpLn, err := lc.Listen(ctx, "tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen for HTTP on %s: %w", cfg.HTTPAddr, err)
	}
	defer httpLn.Close()
	grpcLn, err := lc.Listen(ctx, "tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen for gRPC on %s: %w", cfg.GRPCAddr, err)
	}
	defer grpcLn.Close()
	adminLn, err := listenAdmin(ctx, socketPath(cfg.DB), log)
	if err != nil {
		return err
	}
	defer adminLn.Close()

	addrs := listening{HTTP: httpLn.Addr().String(), GRPC: grpcLn.Addr().String(), Admin: adminLn.Addr().String()}
	log.Info("tokend listening", slog.String("http", addrs.HTTP), slog.String("grpc", addrs.GRPC),
		slog.String("admin_socket", addrs.Admin), slog.String("db", cfg.DB))
	if ready != nil {
		ready(addrs)
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve HTTP: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := public.Server.Serve(grpcLn); err != nil {
			return fmt.Errorf("serve gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := admin.Serve(adminLn); err != nil {
			return fmt.Errorf("serve admin socket: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("tokend shutting down", slog.Duration("drain_timeout", cfg.ShutdownTimeout))
		public.Health.Shutdown()
		drain, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		var wg errgroup.Group
		wg.Go(func() error {
			if err := httpSrv.Shutdown(drain); err != nil {
				_ = httpSrv.Close()
			}
			return nil
		})
		wg.Go(func() error { gracefulStop(drain, public.Server.GracefulStop, public.Server.Stop); return nil })
		wg.Go(func() error { gracefulStop(drain, admin.GracefulStop, admin.Stop); return nil })
		return wg.Wait()
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("tokend stopped")
	return nil
}

// gracefulStop waits for graceful to finish until ctx is done, then forces
// stop: a client holding a stream open cannot keep the server up.
func gracefulStop(ctx context.Context, graceful, stop func()) {
	done := make(chan struct{})
	go func() {
		graceful()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		stop()
		<-done
	}
}

// socketPath is where the admin socket of the database at db lives.
func socketPath(db string) string { return db + ".sock" }
