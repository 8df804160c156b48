package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary stand in for tokend-bench when the harness
// re-executes itself as a baseline server.
func TestMain(m *testing.M) {
	if isChild(os.Args[1:]) {
		if err := runChild(os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestQuickRun runs the whole harness in -quick mode: it builds tokend,
// seeds a database, starts all four servers and drives every target.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tokend and runs servers; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := t.TempDir()
	var log bytes.Buffer
	// -pin=false: pinning would move the test process itself to CPU 1.
	if err := run(ctx, []string{"-quick", "-pin=false", "-cpuprofile", "1s", "-out", out}, &log, &log); err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	for _, f := range []string{"results.json", "results.md", "ratios.svg"} {
		if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s missing or empty: %v", f, err)
		}
	}
	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res compareResults
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("results.json does not parse: %v", err)
	}
	if res.Errors != 0 {
		t.Errorf("errors = %d", res.Errors)
	}
	seen := map[string]bool{}
	for _, r := range res.Runs {
		key := fmt.Sprintf("%s@%d", r.Target, r.Clients)
		seen[key] = true
		if r.Requests <= 0 || r.Errors != 0 {
			t.Errorf("%s: %d requests, %d errors (%s)", key, r.Requests, r.Errors, r.FirstError)
		}
		if !(r.RPS > 0) || !(r.P50us > 0) || !(r.P99us >= r.P50us) {
			t.Errorf("%s: implausible numbers %+v", key, r)
		}
	}
	for _, name := range targetOrder {
		for _, c := range []int{1, 16} {
			if !seen[fmt.Sprintf("%s@%d", name, c)] {
				t.Errorf("no run of %s at %d clients", name, c)
			}
		}
	}
	if len(res.Ratios) != 20 || len(res.Goals) != 4 {
		t.Errorf("%d ratio series and %d goals, want 20 and 4", len(res.Ratios), len(res.Goals))
	}
	if res.TokendExit != "exit 0" {
		t.Errorf("tokend exit: %s", res.TokendExit)
	}
	svg, _ := os.ReadFile(filepath.Join(out, "ratios.svg"))
	if !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.HasSuffix(bytes.TrimSpace(svg), []byte("</svg>")) {
		t.Errorf("ratios.svg is not an SVG document")
	}
	md, _ := os.ReadFile(filepath.Join(out, "results.md"))
	if !bytes.Contains(md, []byte("## Targets")) {
		t.Errorf("results.md has no targets table")
	}

	// -cpuprofile: a gzipped pprof profile per transport, with tokend's
	// own functions among its samples' frames.
	for _, f := range []string{"tokend-rest.pprof", "tokend-grpc.pprof"} {
		b, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Errorf("-cpuprofile: %v", err)
			continue
		}
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Errorf("%s is not gzipped: %v", f, err)
			continue
		}
		raw, err := io.ReadAll(zr)
		if err != nil || !bytes.Contains(raw, []byte("github.com/tokend/tokend/")) {
			t.Errorf("%s: %v; no tokend function in the profile", f, err)
		}
	}

	// -redraw rebuilds the report from the JSON alone.
	again := t.TempDir()
	if err := run(ctx, []string{"-redraw", filepath.Join(out, "results.json"), "-out", again}, &log, &log); err != nil {
		t.Fatalf("redraw: %v", err)
	}
	svg2, _ := os.ReadFile(filepath.Join(again, "ratios.svg"))
	if !bytes.HasPrefix(svg2, []byte("<svg")) {
		t.Errorf("redrawn ratios.svg is not an SVG document")
	}
}

// TestQuickScale runs the scale study on two tiny databases.
func TestQuickScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds tokend and runs servers; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out := t.TempDir()
	var log bytes.Buffer
	if err := run(ctx, []string{"-quick", "-pin=false", "-scale", "500,2000", "-out", out}, &log, &log); err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}
	b, err := os.ReadFile(filepath.Join(out, "scale.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res scaleResults
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("scale.json does not parse: %v", err)
	}
	if len(res.Rows) != 2 || res.Errors != 0 || len(res.Goals) != 4 {
		t.Fatalf("rows %d, errors %d, goals %d", len(res.Rows), res.Errors, len(res.Goals))
	}
	for _, r := range res.Rows {
		if len(r.Runs) != 4 || len(r.Stats) != 2 || len(r.StartMs) != startTrials || r.MemAfterLoad.HeapInuse == 0 || r.Exit != "exit 0" {
			t.Errorf("%d tokens: %+v", r.Tokens, r)
		}
		for _, run := range r.Runs {
			if run.Requests <= 0 || run.Errors != 0 {
				t.Errorf("%s: %d requests, %d errors", run.Target, run.Requests, run.Errors)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(out, "scale.md")); err != nil {
		t.Error(err)
	}
}

func TestParseConfig(t *testing.T) {
	var stderr bytes.Buffer
	cfg, err := parseConfig(nil, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rounds != 10 || cfg.Duration != 3*time.Second || cfg.Tokens != 100000 || len(cfg.Clients) != 2 || cfg.Out != "bench" {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, err = parseConfig([]string{"-quick", "-scale", "10000,1000000"}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rounds != 1 || cfg.Tokens != 2000 || cfg.Scale[1] != 2000 {
		t.Errorf("quick: %+v", cfg)
	}
	for _, args := range [][]string{{"-clients", "1,x"}, {"-clients", "0"}, {"-rounds", "0"}, {"-scale", "-5"}, {"extra"}, {"-cpuprofile", "500ms"}, {"-cpuprofile", "1500ms"}, {"-cpuprofile", "-1s"}} {
		if _, err := parseConfig(args, &stderr); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
}

func TestFindListening(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	log := `{"time":"2026-01-02T03:04:05.123456789Z","level":"INFO","msg":"other"}
{"time":"2026-01-02T03:04:05.5Z","level":"INFO","msg":"tokend listening","http":"127.0.0.1:1","grpc":"127.0.0.1:2","admin_socket":"x.sock","debug":"127.0.0.1:3","db":"x"}
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	a, at, ok := findListening(path)
	want := tokendAddrs{HTTP: "127.0.0.1:1", GRPC: "127.0.0.1:2", Debug: "127.0.0.1:3"}
	if !ok || a != want || at.Nanosecond() != 500000000 {
		t.Errorf("got %+v %v %v", a, at, ok)
	}
	if err := os.WriteFile(path, []byte(`{"msg":"tokend listening"`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := findListening(path); ok {
		t.Error("found a listening line in a partial line")
	}
}

func TestLogScan(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	lines := []string{
		`{"level":"INFO","msg":"request"}`,
		`{"level":"WARN","msg":"slow"}`,
		`{"level":"ERROR","msg":"broken"}`,
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"+`{"level":"ERROR"`), 0o600); err != nil {
		t.Fatal(err)
	}
	var s logScan
	if err := s.scan(path, 1<<20); err != nil {
		t.Fatal(err)
	}
	if s.Lines != 3 || s.Warn != 1 || s.Error != 1 || len(s.Samples) != 2 {
		t.Errorf("first scan: %+v", s)
	}
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`,"msg":"late"}` + "\n")
	f.Close()
	if err := s.scan(path, 10); err != nil { // over the limit: truncated afterwards
		t.Fatal(err)
	}
	if s.Lines != 4 || s.Error != 2 {
		t.Errorf("second scan: %+v", s)
	}
	if fi, _ := os.Stat(path); fi.Size() != 0 || s.offset != 0 {
		t.Errorf("not truncated: size %d, offset %d", fi.Size(), s.offset)
	}
}
