package main

import (
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/tokend/tokend/gateway"
	"github.com/tokend/tokend/service"
	"github.com/tokend/tokend/service/auth"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/usage"
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
	Limits          service.Limits
	MaxBodyBytes    int64
	// FlushInterval is how often counted uses are written to disk: the
	// most a crash can lose.
	FlushInterval time.Duration
	// CacheEntries bounds the cache of recently authenticated tokens.
	CacheEntries int
	// HTTP bounds what one REST connection may cost the server.
	HTTP httpLimits
	// AuthFailureLimit failed authentications per AuthFailureWindow from
	// one client address get it refused (429) for the rest of the window.
	AuthFailureLimit  int
	AuthFailureWindow time.Duration
	// DebugAddr, if set, serves expvar (/debug/vars, with memstats) and
	// pprof (/debug/pprof/) there, for benchmarks and profiling.
	DebugAddr string
}

// httpLimits are the REST server's timeouts and header cap: a client that
// sends its headers slowly, or never reads, cannot hold a connection.
type httpLimits struct {
	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	MaxHeaderBytes                                            int
}

// listening reports where a started server listens; tests use it to find
// servers bound to port 0.
type listening struct {
	HTTP, GRPC, Admin, Debug string
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
	def := service.DefaultLimits()
	maxLifetime := envOr(getenv, "TOKEND_MAX_TOKEN_LIFETIME", def.MaxLifetime.String())
	fs.Func("max-token-lifetime", "longest lifetime a token may be created with, 0 for no bound (env TOKEND_MAX_TOKEN_LIFETIME, default "+def.MaxLifetime.String()+")", func(v string) error {
		maxLifetime = v
		return nil
	})
	maxGrace := envOr(getenv, "TOKEND_MAX_ROTATION_GRACE", def.MaxRotationGrace.String())
	fs.Func("max-rotation-grace", "longest a rotated-out secret may keep working (env TOKEND_MAX_ROTATION_GRACE, default "+def.MaxRotationGrace.String()+")", func(v string) error {
		maxGrace = v
		return nil
	})
	maxLive := envOr(getenv, "TOKEND_MAX_TOKENS_PER_USER", strconv.Itoa(def.MaxLivePerUser))
	fs.Func("max-tokens-per-user", "most active tokens one user may hold, 0 for no bound (env TOKEND_MAX_TOKENS_PER_USER, default "+strconv.Itoa(def.MaxLivePerUser)+")", func(v string) error {
		maxLive = v
		return nil
	})
	maxBody := envOr(getenv, "TOKEND_MAX_BODY_BYTES", strconv.Itoa(gateway.DefaultMaxBodyBytes))
	fs.Func("max-body-bytes", "largest REST request body accepted (env TOKEND_MAX_BODY_BYTES, default "+strconv.Itoa(gateway.DefaultMaxBodyBytes)+")", func(v string) error {
		maxBody = v
		return nil
	})
	fs.StringVar(&cfg.DebugAddr, "debug-addr", envOr(getenv, "TOKEND_DEBUG_ADDR", ""), "if set, serve expvar and pprof on this address; keep it on loopback (env TOKEND_DEBUG_ADDR)")
	durations := []struct {
		flag, env, def, help string
		dst                  *time.Duration
	}{
		{"http-read-header-timeout", "TOKEND_HTTP_READ_HEADER_TIMEOUT", "5s", "how long a client may take to send its request headers", &cfg.HTTP.ReadHeaderTimeout},
		{"http-read-timeout", "TOKEND_HTTP_READ_TIMEOUT", "15s", "how long a client may take to send a whole request", &cfg.HTTP.ReadTimeout},
		{"http-write-timeout", "TOKEND_HTTP_WRITE_TIMEOUT", "30s", "how long writing a response may take", &cfg.HTTP.WriteTimeout},
		{"http-idle-timeout", "TOKEND_HTTP_IDLE_TIMEOUT", "2m", "how long an idle keep-alive connection stays open", &cfg.HTTP.IdleTimeout},
	}
	raw := make([]string, len(durations))
	for i, d := range durations {
		raw[i] = envOr(getenv, d.env, d.def)
		fs.Func(d.flag, d.help+" (env "+d.env+", default "+d.def+")", func(v string) error {
			raw[i] = v
			return nil
		})
	}
	maxHeader := envOr(getenv, "TOKEND_HTTP_MAX_HEADER_BYTES", "32768")
	fs.Func("http-max-header-bytes", "largest request header block; larger gets 431 (env TOKEND_HTTP_MAX_HEADER_BYTES, default 32768)", func(v string) error {
		maxHeader = v
		return nil
	})
	failLimit := envOr(getenv, "TOKEND_AUTH_FAILURE_LIMIT", "20")
	fs.Func("auth-failure-limit", "failed authentications one client address may make per window before it gets 429; 0 turns throttling off (env TOKEND_AUTH_FAILURE_LIMIT, default 20)", func(v string) error {
		failLimit = v
		return nil
	})
	failWindow := envOr(getenv, "TOKEND_AUTH_FAILURE_WINDOW", "1m")
	fs.Func("auth-failure-window", "the window of --auth-failure-limit (env TOKEND_AUTH_FAILURE_WINDOW, default 1m)", func(v string) error {
		failWindow = v
		return nil
	})
	cacheEntries := envOr(getenv, "TOKEND_CACHE_ENTRIES", strconv.Itoa(store.DefaultCacheEntries))
	fs.Func("cache-entries", "most recently authenticated tokens kept in memory, about 500 bytes each; 0 turns the cache off (env TOKEND_CACHE_ENTRIES, default "+strconv.Itoa(store.DefaultCacheEntries)+")", func(v string) error {
		cacheEntries = v
		return nil
	})
	flush := envOr(getenv, "TOKEND_USAGE_FLUSH_INTERVAL", "1s")
	fs.Func("usage-flush-interval", "how often usage counts are written to disk, at most 1m; a crash loses about this much of them (env TOKEND_USAGE_FLUSH_INTERVAL, default 1s)", func(v string) error {
		flush = v
		return nil
	})
	pos, err := parseFlags(fs, args)
	if err != nil {
		return cfg, err
	}
	if len(pos) > 0 {
		return cfg, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, pos[0])
	}
	for i, d := range durations {
		if *d.dst, err = time.ParseDuration(raw[i]); err != nil || *d.dst <= 0 {
			return cfg, fmt.Errorf("%w: --%s must be a positive duration, got %q", errUsage, d.flag, raw[i])
		}
	}
	if cfg.HTTP.MaxHeaderBytes, err = strconv.Atoi(maxHeader); err != nil || cfg.HTTP.MaxHeaderBytes < 4096 {
		return cfg, fmt.Errorf("%w: --http-max-header-bytes must be a whole number of at least 4096, got %q", errUsage, maxHeader)
	}
	if cfg.AuthFailureLimit, err = strconv.Atoi(failLimit); err != nil || cfg.AuthFailureLimit < 0 {
		return cfg, fmt.Errorf("%w: --auth-failure-limit must be a whole number, got %q", errUsage, failLimit)
	}
	if cfg.AuthFailureWindow, err = time.ParseDuration(failWindow); err != nil || cfg.AuthFailureWindow <= 0 {
		return cfg, fmt.Errorf("%w: --auth-failure-window must be a positive duration, got %q", errUsage, failWindow)
	}
	if cfg.CacheEntries, err = strconv.Atoi(cacheEntries); err != nil || cfg.CacheEntries < 0 {
		return cfg, fmt.Errorf("%w: --cache-entries must be a whole number, got %q", errUsage, cacheEntries)
	}
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = -1 // store.Options: negative disables
	}
	if cfg.FlushInterval, err = time.ParseDuration(flush); err != nil || cfg.FlushInterval < time.Millisecond || cfg.FlushInterval > time.Minute {
		return cfg, fmt.Errorf("%w: --usage-flush-interval must be a duration from 1ms to 1m, got %q", errUsage, flush)
	}
	if cfg.Limits.MaxLifetime, err = time.ParseDuration(maxLifetime); err != nil || cfg.Limits.MaxLifetime < 0 {
		return cfg, fmt.Errorf("%w: --max-token-lifetime must be a duration such as 8760h, got %q", errUsage, maxLifetime)
	}
	if cfg.Limits.MaxRotationGrace, err = time.ParseDuration(maxGrace); err != nil || cfg.Limits.MaxRotationGrace < 0 {
		return cfg, fmt.Errorf("%w: --max-rotation-grace must be a duration such as 1h, got %q", errUsage, maxGrace)
	}
	if cfg.Limits.MaxLivePerUser, err = strconv.Atoi(maxLive); err != nil || cfg.Limits.MaxLivePerUser < 0 {
		return cfg, fmt.Errorf("%w: --max-tokens-per-user must be a whole number, got %q", errUsage, maxLive)
	}
	if cfg.MaxBodyBytes, err = strconv.ParseInt(maxBody, 10, 64); err != nil || cfg.MaxBodyBytes < 1024 {
		return cfg, fmt.Errorf("%w: --max-body-bytes must be a whole number of at least 1024, got %q", errUsage, maxBody)
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
	st, err := store.Open(cfg.DB, store.Options{LockTimeout: cfg.LockTimeout, CacheEntries: cfg.CacheEntries})
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

	rec, err := usage.New(st, log)
	if err != nil {
		return fmt.Errorf("read usage state: %w", err)
	}
	// Runs last (deferred calls run in reverse): every request has been
	// answered by then, so this flush is the final word on usage.
	defer func() {
		if ferr := rec.Flush(); ferr != nil {
			log.Error("final usage flush failed; uses since the last flush are lost", slog.String("error", ferr.Error()))
			if err == nil {
				err = fmt.Errorf("flush usage counts: %w", ferr)
			}
		}
	}()
	deps := rpc.Deps{
		Store: st,
		Auth: auth.New(st, rec, cfg.TrustedProxies, time.Now).
			WithThrottle(auth.NewThrottle(cfg.AuthFailureLimit, cfg.AuthFailureWindow, 100_000)),
		Usage:  rec,
		Logger: log,
		Limits: cfg.Limits,
		Now:    time.Now,
	}
	public := rpc.NewPublic(deps)
	admin, _ := rpc.NewAdmin(deps)
	// writable fails while usage counts cannot be written (they wait in
	// memory, and a crash would lose them), or if the file takes no write.
	// /readyz and the gRPC health status (watchWrites) both follow it.
	writable := func(ctx context.Context) error {
		if err := rec.Err(); err != nil {
			return fmt.Errorf("usage flush failing: %w", err)
		}
		return st.CheckWritable(ctx)
	}
	api, err := gateway.New(ctx, gateway.Options{Conn: public.Local, Logger: log, MaxBodyBytes: cfg.MaxBodyBytes, Ready: writable})
	if err != nil {
		return err
	}
	httpSrv := &http.Server{
		Handler:           api,
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout,
		ReadTimeout:       cfg.HTTP.ReadTimeout,
		WriteTimeout:      cfg.HTTP.WriteTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		MaxHeaderBytes:    cfg.HTTP.MaxHeaderBytes,
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

	var debugSrv *http.Server
	var debugLn net.Listener
	if cfg.DebugAddr != "" {
		debugLn, err = lc.Listen(ctx, "tcp", cfg.DebugAddr)
		if err != nil {
			return fmt.Errorf("listen for debug on %s: %w", cfg.DebugAddr, err)
		}
		defer debugLn.Close()
		debugSrv = &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 5 * time.Second}
	}

	addrs := listening{HTTP: httpLn.Addr().String(), GRPC: grpcLn.Addr().String(), Admin: adminLn.Addr().String()}
	if debugLn != nil {
		addrs.Debug = debugLn.Addr().String()
	}
	log.Info("tokend listening", slog.String("http", addrs.HTTP), slog.String("grpc", addrs.GRPC),
		slog.String("admin_socket", addrs.Admin), slog.String("debug", addrs.Debug), slog.String("db", cfg.DB))
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
		// A shutdown that starts before Serve does makes it return
		// ErrServerStopped: that is a clean stop, not a failure.
		if err := public.Server.Serve(grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve gRPC: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		if err := admin.Serve(adminLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve admin socket: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		purgeIdempotency(gctx, st, log)
		return nil
	})
	g.Go(func() error {
		rec.Run(gctx, cfg.FlushInterval)
		return nil
	})
	g.Go(func() error {
		watchWrites(gctx, public.Health, writable, writeCheckInterval, log)
		return nil
	})
	if debugSrv != nil {
		g.Go(func() error {
			if err := debugSrv.Serve(debugLn); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve debug: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return debugSrv.Close()
		})
	}
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

// purgeIdempotency forgets expired idempotency keys now and every hour
// until ctx is done, so that bucket stays the size of one day's creates.
func purgeIdempotency(ctx context.Context, st *store.Store, log *slog.Logger) {
	tick := time.NewTicker(time.Hour)
	defer tick.Stop()
	for {
		if n, err := st.PurgeIdempotency(time.Now().Add(-service.IdempotencyWindow)); err != nil {
			log.Error("purge idempotency keys", slog.String("error", err.Error()))
		} else if n > 0 {
			log.Info("purged idempotency keys", slog.Int("count", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// debugHandler serves expvar and pprof. It is built here rather than taken
// from http.DefaultServeMux, which any imported package could extend.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// socketPath is where the admin socket of the database at db lives.
func socketPath(db string) string { return db + ".sock" }
