package main

import (
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/tokend/tokend/service/testutil"
)

// TestGRPCLogLevels: like grpclog's own logger, errors only unless
// GRPC_GO_LOG_SEVERITY_LEVEL asks for more, and V up to
// GRPC_GO_LOG_VERBOSITY_LEVEL; each line is one JSON line of the logger
// it was pointed at, marked component grpc, the message escaped.
func TestGRPCLogLevels(t *testing.T) {
	for _, tc := range []struct {
		severity, verbosity string
		want                []string // messages kept, in order
		v2                  bool
	}{
		{"", "", []string{"e\n\"x\""}, false},
		{"warning", "", []string{"w", "e\n\"x\""}, false},
		{"INFO", "2", []string{"i", "w", "e\n\"x\""}, true},
	} {
		env := map[string]string{"GRPC_GO_LOG_SEVERITY_LEVEL": tc.severity, "GRPC_GO_LOG_VERBOSITY_LEVEL": tc.verbosity}
		var first, buf testutil.SyncBuffer
		firstLog := slog.New(slog.NewJSONHandler(&first, nil))
		g := newGRPCLog(func(k string) string { return env[k] }, firstLog)
		if prev := g.use(slog.New(slog.NewJSONHandler(&buf, nil))); prev != firstLog {
			t.Errorf("use returned %p, want the logger it replaced, %p, for serve to put back", prev, firstLog)
		}
		g.Infof("%s", "i")
		g.Warningln("w")
		g.Error("e\n", `"x"`)
		var got []string
		for line := range strings.Lines(buf.String()) {
			var m map[string]any
			if err := json.Unmarshal([]byte(line), &m); err != nil || m["component"] != "grpc" {
				t.Errorf("severity %q: line %q (%v)", tc.severity, line, err)
			}
			got = append(got, m["msg"].(string))
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("severity %q: kept %q, want %q", tc.severity, got, tc.want)
		}
		if first.String() != "" {
			t.Errorf("a line went to the logger replaced by use: %s", first.String())
		}
		if g.V(2) != tc.v2 || !g.V(0) {
			t.Errorf("verbosity %q: V(2) = %v, V(0) = %v", tc.verbosity, g.V(2), g.V(0))
		}
	}
}
