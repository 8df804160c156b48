// Command tokend-bench measures tokend against bare baselines on this
// machine, in one run:
//
//	go run ./cmd/tokend-bench                 # the comparison, results in bench/
//	go run ./cmd/tokend-bench -quick          # a smoke run (seconds)
//	go run ./cmd/tokend-bench -scale 10000,100000,1000000
//
// It starts, as separate processes on 127.0.0.1, (A) a bare net/http server
// returning the example token JSON, (G) tokend's REST gateway alone in front
// of a service that answers the example token at once, (B) a bare grpc-go
// server whose GetToken returns the example token, and (T) tokend on a
// fresh bbolt file seeded with -tokens tokens over -users users. One
// closed-loop load generator drives them in interleaved rounds (A, G,
// T-REST, B, T-gRPC, the
// starting target rotating each round) at each -clients count. Every
// tokend request is an authenticated GetToken of the token whose secret it
// carries, a different token each request, and every response's status and
// body are checked. With taskset and two or more CPUs, the servers run on
// CPU 0 and the harness on CPU 1.
//
// It prints each measurement as it goes and a summary at the end, and
// writes results.json, results.md and ratios.svg to -out. With -scale it
// instead measures tokend alone at each database size (GetToken latency at
// one client, heap in use, start time) and writes scale.json and scale.md.
//
// The subcommands bare-http, gateway-only and bare-grpc are the baselines;
// the harness runs them itself.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if isChild(os.Args[1:]) {
		if err := runChild(os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintf(os.Stderr, "tokend-bench %s: %v\n", os.Args[1], err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "tokend-bench: %v\n", err)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// config is the harness's configuration, from flags.
type config struct {
	Rounds      int           `json:"rounds"`
	Duration    time.Duration `json:"-"`
	Warmup      time.Duration `json:"-"`
	DurationS   F             `json:"duration_seconds"`
	WarmupS     F             `json:"warmup_seconds"`
	Tokens      int           `json:"tokens"`
	Users       int           `json:"users"`
	Clients     []int         `json:"clients"`
	Out         string        `json:"out"`
	Scale       []int         `json:"scale,omitempty"`
	ScaleRounds int           `json:"scale_rounds,omitempty"`
	Quick       bool          `json:"quick"`
	Pin         bool          `json:"pin_requested"`
	Redraw      string        `json:"-"`
	CPUProfile  time.Duration `json:"-"`
}

func parseConfig(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("tokend-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.IntVar(&cfg.Rounds, "rounds", 10, "measured rounds; each runs every target at every client count")
	fs.DurationVar(&cfg.Duration, "duration", 3*time.Second, "length of one measured run")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "unmeasured warm-up of each target, at the largest client count, before round 1")
	fs.IntVar(&cfg.Tokens, "tokens", 100000, "tokens to seed tokend's database with")
	fs.IntVar(&cfg.Users, "users", 1000, "users the seeded tokens are spread over")
	clients := fs.String("clients", "1,16", "comma-separated concurrent client counts")
	fs.StringVar(&cfg.Out, "out", "bench", "directory for the result files")
	scale := fs.String("scale", "", "comma-separated database sizes, e.g. 10000,100000,1000000: run the scale study instead")
	fs.IntVar(&cfg.ScaleRounds, "scale-rounds", 3, "rounds per size in the scale study")
	fs.BoolVar(&cfg.Quick, "quick", false, "smoke run: 1 round of 300ms, 2000 tokens")
	fs.BoolVar(&cfg.Pin, "pin", true, "pin servers to CPU 0 and the harness to CPU 1 with taskset, where available")
	fs.DurationVar(&cfg.CPUProfile, "cpuprofile", 0, "after the rounds, load T-REST and T-gRPC at the largest client count for this long each and write tokend's CPU profiles to -out (tokend-rest.pprof, tokend-grpc.pprof); not part of the results")
	fs.StringVar(&cfg.Redraw, "redraw", "", "rewrite results.md and ratios.svg in -out from this results.json, measuring nothing")
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if cfg.Clients, err = parseInts(*clients); err != nil || len(cfg.Clients) == 0 {
		return cfg, fmt.Errorf("-clients: want comma-separated positive numbers, got %q", *clients)
	}
	if *scale != "" {
		if cfg.Scale, err = parseInts(*scale); err != nil {
			return cfg, fmt.Errorf("-scale: want comma-separated positive numbers, got %q", *scale)
		}
	}
	if cfg.Quick {
		cfg.Rounds, cfg.Duration, cfg.Warmup, cfg.Tokens, cfg.ScaleRounds = 1, 300*time.Millisecond, 300*time.Millisecond, 2000, 1
		for i, n := range cfg.Scale {
			cfg.Scale[i] = min(n, 2000)
		}
	}
	switch {
	case cfg.Rounds < 1 || cfg.ScaleRounds < 1:
		return cfg, errors.New("-rounds and -scale-rounds must be at least 1")
	case cfg.Duration <= 0 || cfg.Warmup < 0:
		return cfg, errors.New("-duration must be positive and -warmup not negative")
	case cfg.CPUProfile != 0 && (cfg.CPUProfile < time.Second || cfg.CPUProfile%time.Second != 0):
		// pprof profiles whole seconds; the load must cover the profile.
		return cfg, errors.New("-cpuprofile must be whole seconds, such as 8s")
	case cfg.Tokens < 1 || cfg.Users < 1:
		return cfg, errors.New("-tokens and -users must be at least 1")
	}
	cfg.Users = min(cfg.Users, cfg.Tokens)
	cfg.DurationS, cfg.WarmupS = F(cfg.Duration.Seconds()), F(cfg.Warmup.Seconds())
	return cfg, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// run is the whole command, minus the process exit.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	if cfg.Redraw != "" {
		return redraw(cfg.Redraw, cfg.Out, stdout)
	}
	if len(cfg.Scale) > 0 {
		return runScale(ctx, cfg, stdout)
	}
	return runCompare(ctx, cfg, stdout)
}
