package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeRefusesClearly checks that tokend serve gives up at once with a
// one-line reason, instead of starting half-way or hanging.
func TestServeRefusesClearly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, bytes.Repeat([]byte("not a database "), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "missing-dir", "x.db")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"HTTP port in use", []string{"--db", filepath.Join(dir, "a.db"), "--http-addr", busy.Addr().String(), "--grpc-addr", "127.0.0.1:0"}, "address already in use"},
		{"gRPC port in use", []string{"--db", filepath.Join(dir, "b.db"), "--http-addr", "127.0.0.1:0", "--grpc-addr", busy.Addr().String()}, "address already in use"},
		{"metrics port in use", []string{"--db", filepath.Join(dir, "c.db"), "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", busy.Addr().String()}, "listen for metrics"},
		{"not a database", []string{"--db", garbage, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, "corrupt"},
		{"unreachable path", []string{"--db", unreadable, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, "no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var logs bytes.Buffer
			started := false
			err := runServe(ctx, tc.args, func(string) string { return "" }, &logs, func(listening) { started = true })
			if err == nil || started {
				t.Fatalf("runServe = %v (started %v), want a refusal", err, started)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q, want one line mentioning %q", msg, tc.want)
			}
		})
	}
}

// TestServeRefusesBadFlags checks that every server flag with a bound
// refuses a value outside it with a usage error naming the flag, before
// anything starts.
func TestServeRefusesBadFlags(t *testing.T) {
	for _, tc := range []struct{ flag, value string }{
		{"--otlp-endpoint", "collector:4317"},
		{"--otlp-protocol", "udp"},
		{"--trace-sample-ratio", "1.5"},
		{"--trace-sample-ratio", "NaN"},
		{"--grpc-max-recv-bytes", "100"},
		{"--grpc-max-streams", "0"},
		{"--grpc-max-header-bytes", "100"},
		{"--max-call-duration", "-1s"},
		{"--usage-flush-interval", "2m"},
		{"--http-max-header-bytes", "10"},
		{"--auth-failure-limit", "-1"},
		{"--max-body-bytes", "10"},
		{"--http-read-header-timeout", "0s"},
		{"--http-read-timeout", "soon"},
		{"--http-write-timeout", "-1s"},
		{"--http-idle-timeout", "0"},
		{"--auth-failure-window", "0s"},
		{"--cache-entries", "-5"},
		{"--max-token-lifetime", "forever"},
		{"--max-rotation-grace", "-1h"},
		{"--max-tokens-per-user", "many"},
		{"--shutdown-timeout", "0s"},
		{"--log-format", "xml"},
		{"--trusted-proxy", "10.0.0.1/8"},
	} {
		args := []string{tc.flag, tc.value}
		if tc.flag == "--otlp-protocol" {
			args = append(args, "--otlp-endpoint", "http://127.0.0.1:4317")
		}
		_, err := parseServe(args, func(string) string { return "" }, io.Discard)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tc.flag+" ") && !strings.Contains(err.Error(), tc.flag+":") {
			t.Errorf("%s %s: %v, want a usage error naming it", tc.flag, tc.value, err)
		}
	}
}

// TestServeFlagsReachTheServer checks that the gRPC limits and telemetry
// flags (and their environment variables) end up in the configuration the
// server is built from.
func TestServeFlagsReachTheServer(t *testing.T) {
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4317", "TOKEND_GRPC_MAX_STREAMS": "7",
		"TOKEND_GRPC_MAX_HEADER_BYTES": "8192"}
	cfg, err := parseServe([]string{"--grpc-max-recv-bytes", "8192", "--max-call-duration", "3s", "--metrics-addr", "127.0.0.1:9464",
		"--trace-sample-ratio", "0.25"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.GRPC.MaxRecvMsgBytes != 8192 || cfg.GRPC.MaxConcurrentStreams != 7 || cfg.GRPC.MaxHeaderListBytes != 8192 || cfg.GRPC.MaxCallDuration != 3*time.Second {
		t.Errorf("gRPC limits = %+v", cfg.GRPC)
	}
	if cfg.MetricsAddr != "127.0.0.1:9464" || cfg.Tracing.Endpoint != "https://collector.example:4317" ||
		cfg.Tracing.Protocol != "grpc" || cfg.Tracing.SampleRatio != 0.25 {
		t.Errorf("telemetry = %q %+v", cfg.MetricsAddr, cfg.Tracing)
	}
	def, err := parseServe(nil, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if def.MetricsAddr != "" || def.Tracing.Endpoint != "" || def.GRPC.MaxCallDuration != 10*time.Second {
		t.Errorf("defaults: metrics %q, tracing %+v, gRPC %+v; want both off and a 10s cap", def.MetricsAddr, def.Tracing, def.GRPC)
	}
}

// TestServeRefusesTooLongSocketPath checks that a database path whose admin
// socket a unix socket address cannot hold is refused as a usage error
// naming the limit, before the database is created.
func TestServeRefusesTooLongSocketPath(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "tokend.db")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := runServe(ctx, []string{"--db", db, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"},
		func(string) string { return "" }, io.Discard, func(listening) { t.Error("the server started") })
	if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), "unix socket path holds at most") {
		t.Errorf("runServe = %v, want a usage error about the socket path's length", err)
	}
	if _, err := os.Stat(db); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the database was created (stat: %v)", err)
	}
}

// TestDebugListenerOffLoopbackWarns checks the warning for a debug
// listener that other hosts can reach, on addresses only (tests bind to
// loopback alone).
func TestDebugListenerOffLoopbackWarns(t *testing.T) {
	for _, tc := range []struct {
		addr net.Addr
		warn bool
	}{
		{&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6060}, false},
		{&net.TCPAddr{IP: net.IPv6loopback, Port: 6060}, false},
		{&net.TCPAddr{IP: net.IPv4zero, Port: 6060}, true},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 6060}, true},
		{&net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 6060}, true},
	} {
		var buf bytes.Buffer
		warnExposedDebug(slog.New(slog.NewJSONHandler(&buf, nil)), tc.addr)
		if got := strings.Contains(buf.String(), `"level":"WARN"`); got != tc.warn {
			t.Errorf("debug listener on %v: warned %v, want %v (%s)", tc.addr, got, tc.warn, buf.String())
		}
	}
}

// TestOTLPEndpointSource checks which sources of the OTLP endpoint are a
// base URL (OTEL_EXPORTER_OTLP_ENDPOINT alone, for every signal) rather
// than the traces endpoint itself.
func TestOTLPEndpointSource(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		base bool
	}{
		{"generic variable", nil, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/otel"}, true},
		{"traces variable", nil, map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/otel"}, false},
		{"tokend's variable", nil, map[string]string{"TOKEND_OTLP_ENDPOINT": "http://c:4318/otel", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://d:4318"}, false},
		{"flag", []string{"--otlp-endpoint", "http://c:4318/otel"}, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://d:4318"}, false},
	} {
		cfg, err := parseServe(tc.args, func(k string) string { return tc.env[k] }, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if cfg.Tracing.EndpointIsBase != tc.base {
			t.Errorf("%s: endpoint %q taken as a base URL: %v, want %v", tc.name, cfg.Tracing.Endpoint, cfg.Tracing.EndpointIsBase, tc.base)
		}
	}
}
