package main

import (
	"bytes"
	"context"
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
		{"not a database", []string{"--db", garbage, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, "corrupt"},
		{"unreachable path", []string{"--db", unreadable, "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"}, "no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var logs bytes.Buffer
			started := false
			start := time.Now()
			err := runServe(ctx, tc.args, func(string) string { return "" }, &logs, func(listening) { started = true })
			if err == nil || started {
				t.Fatalf("runServe = %v (started %v), want a refusal", err, started)
			}
			if msg := err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
				t.Errorf("error %q, want one line mentioning %q", msg, tc.want)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v to refuse", took)
			}
		})
	}
}
