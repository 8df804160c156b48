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
	"github.com/tokend/tokend/service/logjson"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/store"
	"github.com/tokend/tokend/service/telemetry"
	"github.com/tokend/tokend/service/token"
	"github.com/tokend/tokend/service/usage"
)

// lockTimeout is how long a command waits for another process to release
// the database file before saying it is in use.
const lockTimeout = 2 * time.Second

// serveConfig is the server's configuration, from flags and environment.
type serveConfig struct {
	DB              string
	HTTPAddr        string
	GRPCAddr        string
	TrustedProxies  []netip.Prefix
	LogFormat       string
	ShutdownTimeout time.Duration
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
	// MetricsAddr, if set, serves Prometheus metrics at /metrics there.
	MetricsAddr string
	// Tracing configures OTLP trace export; off without an endpoint.
	Tracing telemetry.TracingConfig
	// GRPC bounds what one gRPC call or connection may cost the server.
	GRPC rpc.ServerLimits
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
	HTTP, GRPC, Admin, Debug, Metrics string
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
	shutdown := rawFlag(fs, getenv, "shutdown-timeout", "TOKEND_SHUTDOWN_TIMEOUT", "10s",
		"how long to drain in-flight requests on SIGTERM")
	limits := limitFlags(fs, getenv)
	maxBody := rawFlag(fs, getenv, "max-body-bytes", "TOKEND_MAX_BODY_BYTES", strconv.Itoa(gateway.DefaultMaxBodyBytes),
		"largest REST request body accepted")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", envOr(getenv, "TOKEND_METRICS_ADDR", ""), "if set, serve Prometheus metrics at /metrics on this address, such as 127.0.0.1:9464; never on the public port (env TOKEND_METRICS_ADDR)")
	// The standard variable for every signal is a base URL (OpenTelemetry
	// specification); the others, and the flag, name the traces endpoint
	// itself.
	endpoint, endpointIsBase := envOr(getenv, "TOKEND_OTLP_ENDPOINT", getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")), false
	if endpoint == "" {
		endpoint = getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
		endpointIsBase = endpoint != ""
	}
	fs.StringVar(&cfg.Tracing.Endpoint, "otlp-endpoint", endpoint,
		"if set, export traces to this OTLP collector URL, such as http://127.0.0.1:4317; tracing is off otherwise (env TOKEND_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT as a base URL)")
	fs.StringVar(&cfg.Tracing.Protocol, "otlp-protocol", envOr(getenv, "TOKEND_OTLP_PROTOCOL", envOr(getenv, "OTEL_EXPORTER_OTLP_PROTOCOL", telemetry.ProtocolGRPC)),
		"OTLP transport: grpc or http/protobuf (env TOKEND_OTLP_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL)")
	sampleRatio := rawFlag(fs, getenv, "trace-sample-ratio", "TOKEND_TRACE_SAMPLE_RATIO", "1",
		"fraction of requests traced when tracing is on, 0 to 1; a client's sampled flag is not obeyed")
	grpcDef := rpc.DefaultServerLimits()
	grpcRecv := rawFlag(fs, getenv, "grpc-max-recv-bytes", "TOKEND_GRPC_MAX_RECV_BYTES", strconv.Itoa(grpcDef.MaxRecvMsgBytes),
		"largest gRPC request message; larger gets ResourceExhausted")
	grpcStreams := rawFlag(fs, getenv, "grpc-max-streams", "TOKEND_GRPC_MAX_STREAMS", strconv.Itoa(int(grpcDef.MaxConcurrentStreams)),
		"most concurrent calls on one gRPC connection")
	grpcHeader := rawFlag(fs, getenv, "grpc-max-header-bytes", "TOKEND_GRPC_MAX_HEADER_BYTES", strconv.Itoa(int(grpcDef.MaxHeaderListBytes)),
		"largest gRPC call metadata (HTTP/2 header list); a stream beyond it is reset")
	grpcCall := rawFlag(fs, getenv, "max-call-duration", "TOKEND_MAX_CALL_DURATION", grpcDef.MaxCallDuration.String(),
		"longest any call may run, over gRPC or REST, whatever deadline the client asks for; beyond it DeadlineExceeded / 504")
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
	raw := make([]*string, len(durations))
	for i, d := range durations {
		raw[i] = rawFlag(fs, getenv, d.flag, d.env, d.def, d.help)
	}
	maxHeader := rawFlag(fs, getenv, "http-max-header-bytes", "TOKEND_HTTP_MAX_HEADER_BYTES", "32768",
		"largest request header block; larger gets 431")
	failLimit := rawFlag(fs, getenv, "auth-failure-limit", "TOKEND_AUTH_FAILURE_LIMIT", "20",
		"failed authentications one client address may make per window before it gets 429; 0 turns throttling off")
	failWindow := rawFlag(fs, getenv, "auth-failure-window", "TOKEND_AUTH_FAILURE_WINDOW", "1m",
		"the window of --auth-failure-limit")
	cacheEntries := rawFlag(fs, getenv, "cache-entries", "TOKEND_CACHE_ENTRIES", strconv.Itoa(store.DefaultCacheEntries),
		"most recently authenticated tokens kept in memory, about 500 bytes each; 0 turns the cache off")
	flush := rawFlag(fs, getenv, "usage-flush-interval", "TOKEND_USAGE_FLUSH_INTERVAL", "1s",
		"how often usage counts are written to disk, at most 1m; a crash loses about this much of them")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return cfg, err
	}
	if len(pos) > 0 {
		return cfg, fmt.Errorf("%w: serve takes no arguments, got %q", errUsage, pos[0])
	}
	for i, d := range durations {
		if *d.dst, err = time.ParseDuration(*raw[i]); err != nil || *d.dst <= 0 {
			return cfg, fmt.Errorf("%w: --%s must be a positive duration, got %q", errUsage, d.flag, *raw[i])
		}
	}
	cfg.Tracing.EndpointIsBase = endpointIsBase && !isSet(fs, "otlp-endpoint")
	if cfg.Tracing.SampleRatio, err = strconv.ParseFloat(*sampleRatio, 64); err != nil {
		return cfg, fmt.Errorf("%w: --trace-sample-ratio must be a number from 0 to 1, got %q", errUsage, *sampleRatio)
	}
	if err := cfg.Tracing.Validate(); err != nil {
		var ce *telemetry.ConfigError
		if errors.As(err, &ce) {
			flag := map[string]string{"Endpoint": "otlp-endpoint", "Protocol": "otlp-protocol", "SampleRatio": "trace-sample-ratio"}[ce.Field]
			return cfg, fmt.Errorf("%w: --%s: %v", errUsage, flag, err)
		}
		return cfg, fmt.Errorf("%w: %v", errUsage, err)
	}
	if cfg.GRPC.MaxRecvMsgBytes, err = strconv.Atoi(*grpcRecv); err != nil || cfg.GRPC.MaxRecvMsgBytes < 4096 {
		return cfg, fmt.Errorf("%w: --grpc-max-recv-bytes must be a whole number of at least 4096, got %q", errUsage, *grpcRecv)
	}
	streams, err := strconv.ParseUint(*grpcStreams, 10, 32)
	if err != nil || streams == 0 {
		return cfg, fmt.Errorf("%w: --grpc-max-streams must be a positive whole number, got %q", errUsage, *grpcStreams)
	}
	cfg.GRPC.MaxConcurrentStreams = uint32(streams)
	header, err := strconv.ParseUint(*grpcHeader, 10, 32)
	if err != nil || header < 4096 {
		return cfg, fmt.Errorf("%w: --grpc-max-header-bytes must be a whole number of at least 4096, got %q", errUsage, *grpcHeader)
	}
	cfg.GRPC.MaxHeaderListBytes = uint32(header)
	if cfg.GRPC.MaxCallDuration, err = time.ParseDuration(*grpcCall); err != nil || cfg.GRPC.MaxCallDuration <= 0 {
		return cfg, fmt.Errorf("%w: --max-call-duration must be a positive duration such as 10s, got %q", errUsage, *grpcCall)
	}
	if cfg.HTTP.MaxHeaderBytes, err = strconv.Atoi(*maxHeader); err != nil || cfg.HTTP.MaxHeaderBytes < 4096 {
		return cfg, fmt.Errorf("%w: --http-max-header-bytes must be a whole number of at least 4096, got %q", errUsage, *maxHeader)
	}
	if cfg.AuthFailureLimit, err = strconv.Atoi(*failLimit); err != nil || cfg.AuthFailureLimit < 0 {
		return cfg, fmt.Errorf("%w: --auth-failure-limit must be a whole number, got %q", errUsage, *failLimit)
	}
	if cfg.AuthFailureWindow, err = time.ParseDuration(*failWindow); err != nil || cfg.AuthFailureWindow <= 0 {
		return cfg, fmt.Errorf("%w: --auth-failure-window must be a positive duration, got %q", errUsage, *failWindow)
	}
	if cfg.CacheEntries, err = strconv.Atoi(*cacheEntries); err != nil || cfg.CacheEntries < 0 {
		return cfg, fmt.Errorf("%w: --cache-entries must be a whole number, got %q", errUsage, *cacheEntries)
	}
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = -1 // store.Options: negative disables
	}
	if cfg.FlushInterval, err = time.ParseDuration(*flush); err != nil || cfg.FlushInterval < time.Millisecond || cfg.FlushInterval > time.Minute {
		return cfg, fmt.Errorf("%w: --usage-flush-interval must be a duration from 1ms to 1m, got %q", errUsage, *flush)
	}
	if cfg.Limits, err = limits(); err != nil {
		return cfg, err
	}
	if cfg.MaxBodyBytes, err = strconv.ParseInt(*maxBody, 10, 64); err != nil || cfg.MaxBodyBytes < 1024 {
		return cfg, fmt.Errorf("%w: --max-body-bytes must be a whole number of at least 1024, got %q", errUsage, *maxBody)
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
		// Peers are compared unmapped, as allowed IPs are.
		cfg.TrustedProxies = append(cfg.TrustedProxies, token.UnmapPrefix(prefix))
	}
	if cfg.LogFormat != "json" && cfg.LogFormat != "text" {
		return cfg, fmt.Errorf("%w: --log-format must be json or text, got %q", errUsage, cfg.LogFormat)
	}
	cfg.ShutdownTimeout, err = time.ParseDuration(*shutdown)
	if err != nil || cfg.ShutdownTimeout <= 0 {
		return cfg, fmt.Errorf("%w: --shutdown-timeout must be a positive duration such as 10s, got %q", errUsage, *shutdown)
	}
	if err := checkSocketPath(socketPath(cfg.DB)); err != nil {
		return cfg, fmt.Errorf("%w: --db: %w", errUsage, err)
	}
	return cfg, nil
}

// rawFlag defines the flag name on fs and returns its raw value, which the
// caller checks once the flags are parsed: the flag's, else the
// environment variable env's, else def. The help text names both.
func rawFlag(fs *flag.FlagSet, getenv func(string) string, name, env, def, help string) *string {
	v := envOr(getenv, env, def)
	fs.Func(name, help+" (env "+env+", default "+def+")", func(s string) error {
		v = s
		return nil
	})
	return &v
}

// limitFlags defines the flags of the limits on what users may ask for,
// and returns what reads them once the flags are parsed.
func limitFlags(fs *flag.FlagSet, getenv func(string) string) func() (service.Limits, error) {
	def := service.DefaultLimits()
	lifetime := rawFlag(fs, getenv, "max-token-lifetime", "TOKEND_MAX_TOKEN_LIFETIME", def.MaxLifetime.String(),
		"longest lifetime a token may be created with, 0 for no bound")
	grace := rawFlag(fs, getenv, "max-rotation-grace", "TOKEND_MAX_ROTATION_GRACE", def.MaxRotationGrace.String(),
		"longest grace period a rotation may ask for (longer is refused), 0 for none")
	live := rawFlag(fs, getenv, "max-tokens-per-user", "TOKEND_MAX_TOKENS_PER_USER", strconv.Itoa(def.MaxLivePerUser),
		"most active tokens one user may hold, 0 for no bound")
	return func() (service.Limits, error) {
		var l service.Limits
		var err error
		if l.MaxLifetime, err = time.ParseDuration(*lifetime); err != nil || l.MaxLifetime < 0 {
			return l, fmt.Errorf("%w: --max-token-lifetime must be a duration such as 8760h, got %q", errUsage, *lifetime)
		}
		if l.MaxRotationGrace, err = time.ParseDuration(*grace); err != nil || l.MaxRotationGrace < 0 {
			return l, fmt.Errorf("%w: --max-rotation-grace must be a duration such as 1h, got %q", errUsage, *grace)
		}
		if l.MaxLivePerUser, err = strconv.Atoi(*live); err != nil || l.MaxLivePerUser < 0 {
			return l, fmt.Errorf("%w: --max-tokens-per-user must be a whole number, got %q", errUsage, *live)
		}
		return l, nil
	}
}

// envLimits are the limits the environment sets, or the defaults: what the
// token commands apply when they open the database themselves, so that
// they refuse what a server started with the same environment would.
func envLimits(getenv func(string) string) (service.Limits, error) {
	return limitFlags(flag.NewFlagSet("limits", flag.ContinueOnError), getenv)()
}

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "text" {
		return slog.New(slog.NewTextHandler(w, nil))
	}
	// The same lines as slog.NewJSONHandler(w, nil), at less than half the
	// cost: one is written per request.
	return slog.New(logjson.NewHandler(w))
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
	// grpc-go's and grpc-gateway's lines, in this log while it serves.
	defer grpcLogs.use(grpcLogs.use(log))
	st, err := store.Open(cfg.DB, store.Options{LockTimeout: lockTimeout, CacheEntries: cfg.CacheEntries})
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
	version := versionString()
	tc := cfg.Tracing
	tc.ServiceVersion = version
	tracing, err := telemetry.NewTracing(ctx, tc)
	if err != nil {
		return err
	}
	// Runs after the servers have stopped: their last spans are exported.
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if terr := tracing.Shutdown(sctx); terr != nil {
			log.Warn("export of the last traces failed", slog.String("error", terr.Error()))
		}
	}()
	authn := auth.New(st, rec, cfg.TrustedProxies, time.Now).
		WithThrottle(auth.NewThrottle(cfg.AuthFailureLimit, cfg.AuthFailureWindow, 100_000))
	var metrics *telemetry.Metrics
	if cfg.MetricsAddr != "" {
		metrics = telemetry.NewMetrics(telemetry.Sources{Usage: rec, DBSize: st.Size, Version: version})
		authn.WithObserver(metrics)
	}
	deps := rpc.Deps{
		Store:   st,
		Auth:    authn,
		Usage:   rec,
		Logger:  log,
		Limits:  cfg.Limits,
		Server:  cfg.GRPC,
		Now:     time.Now,
		Metrics: metrics,
		Tracing: tracing,
	}
	public := rpc.NewPublic(deps)
	admin, _ := rpc.NewAdmin(deps)
	// writable fails while usage counts cannot be written (they wait in
	// memory, and a crash would lose them), or if the file takes no write.
	// The gRPC health status (watchWrites) follows it, checking the file
	// once a second; /readyz follows it too, answered from that check's
	// result while it is at most two intervals old (see recentCheck).
	disk := &recentCheck{check: st.CheckWritable, maxAge: 2 * writeCheckInterval, now: time.Now}
	writable := func(ctx context.Context, checkDisk func(context.Context) error) error {
		if err := rec.Err(); err != nil {
			return fmt.Errorf("usage flush failing: %w", err)
		}
		return checkDisk(ctx)
	}
	readyz := func(ctx context.Context) error { return writable(ctx, disk.recent) }
	api, err := gateway.New(ctx, gateway.Options{Conn: public.Local, Logger: log, MaxBodyBytes: cfg.MaxBodyBytes, Ready: readyz,
		Metrics: metrics, Tracing: tracing})
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

	// Side listeners for operators: debug (expvar, pprof) and metrics.
	var addrs listening
	var sides []sideServer
	for _, side := range []struct {
		name, addr string
		dst        *string
		handler    func() http.Handler
	}{
		{"debug", cfg.DebugAddr, &addrs.Debug, debugHandler},
		{"metrics", cfg.MetricsAddr, &addrs.Metrics, func() http.Handler { return metricsHandler(metrics) }},
	} {
		if side.addr == "" {
			continue
		}
		ln, err := lc.Listen(ctx, "tcp", side.addr)
		if err != nil {
			return fmt.Errorf("listen for %s on %s: %w", side.name, side.addr, err)
		}
		defer ln.Close()
		*side.dst = ln.Addr().String()
		if side.name == "debug" {
			warnExposedDebug(log, ln.Addr())
		}
		sides = append(sides, sideServer{side.name, ln, &http.Server{Handler: side.handler(), ReadHeaderTimeout: 5 * time.Second}})
	}

	addrs.HTTP, addrs.GRPC, addrs.Admin = httpLn.Addr().String(), grpcLn.Addr().String(), adminLn.Addr().String()
	log.Info("tokend listening", slog.String("http", addrs.HTTP), slog.String("grpc", addrs.GRPC),
		slog.String("admin_socket", addrs.Admin), slog.String("debug", addrs.Debug),
		slog.String("metrics", addrs.Metrics), slog.Bool("tracing", tracing != nil), slog.String("db", cfg.DB))
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
		watchWrites(gctx, public.Health, func(ctx context.Context) error { return writable(ctx, disk.run) }, writeCheckInterval, log)
		return nil
	})
	for _, side := range sides {
		g.Go(func() error {
			if err := side.srv.Serve(side.ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s: %w", side.name, err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			return side.srv.Close()
		})
	}
	g.Go(func() error {
		<-gctx.Done()
		log.Info("tokend shutting down", slog.String("drain_timeout", cfg.ShutdownTimeout.String()))
		public.Health.Shutdown()
		drain, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		// Health watchers are sent NOT_SERVING; a moment later their
		// streams end, as a graceful stop would wait for them for ever.
		endStreams := time.AfterFunc(min(watchNotice, cfg.ShutdownTimeout/2), public.EndStreams)
		defer endStreams.Stop()
		var wg errgroup.Group
		wg.Go(func() error {
			if err := httpSrv.Shutdown(drain); err != nil {
				_ = httpSrv.Close()
			}
			return nil
		})
		wg.Go(func() error {
			gracefulStop(drain, log, "gRPC", public.Server.GracefulStop, public.Server.Stop)
			return nil
		})
		wg.Go(func() error { gracefulStop(drain, log, "admin", admin.GracefulStop, admin.Stop); return nil })
		return wg.Wait()
	})
	if err := g.Wait(); err != nil {
		return err
	}
	log.Info("tokend stopped")
	return nil
}

// watchNotice is how long health watchers have, at shutdown, to be sent
// NOT_SERVING before their streams are ended.
const watchNotice = 500 * time.Millisecond

// warnExposedDebug logs a warning if the debug listener's address is not a
// loopback one: pprof and expvar take no credentials, so anyone who can
// reach them can profile the server and read its command line.
func warnExposedDebug(log *slog.Logger, addr net.Addr) {
	if tcp, ok := addr.(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		log.Warn("the debug listener (pprof, expvar; no authentication) is not on a loopback address", slog.String("debug", addr.String()))
	}
}

// gracefulStop waits for graceful to finish until ctx is done, then forces
// stop, saying so: a client holding a call open cannot keep the server up.
func gracefulStop(ctx context.Context, log *slog.Logger, name string, graceful, stop func()) {
	done := make(chan struct{})
	go func() {
		graceful()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		log.Warn("drain timed out; ending the calls still open", slog.String("server", name))
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

// sideServer is an operator's listener beside the API.
type sideServer struct {
	name string
	ln   net.Listener
	srv  *http.Server
}

// metricsHandler serves m at /metrics and nothing else.
func metricsHandler(m *telemetry.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	return mux
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

// socketPath is where the admin socket of the database at db lives. A
// relative path is anchored at "./" if it starts with "@", which Linux
// would otherwise take as the name of an abstract socket: one with no file,
// so no file mode to restrict it.
func socketPath(db string) string {
	if strings.HasPrefix(db, "@") {
		db = "./" + db
	}
	return db + ".sock"
}
