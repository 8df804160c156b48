package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Target names.
const (
	nameA     = "A"
	nameG     = "G"
	nameTREST = "T-REST"
	nameB     = "B"
	nameTGRPC = "T-gRPC"
)

// targetOrder is the order of targets within a round, before rotation.
var targetOrder = []string{nameA, nameG, nameTREST, nameB, nameTGRPC}

// The ratios the issue sets targets for; the others (G/A, T-REST/G) say
// where the REST gap lies.
const (
	ratioREST = nameTREST + "/" + nameA
	ratioGRPC = nameTGRPC + "/" + nameB
)

// runResult is one measured run: one target at one client count in one
// round. Round 0 is the warm-up.
type runResult struct {
	Round         int    `json:"round"`
	Clients       int    `json:"clients"`
	Target        string `json:"target"`
	Requests      int64  `json:"requests"`
	Errors        int64  `json:"errors"`
	FirstError    string `json:"first_error,omitempty"`
	Seconds       F      `json:"seconds"`
	RPS           F      `json:"rps"`
	P50us         F      `json:"p50_us"`
	P99us         F      `json:"p99_us"`
	CPUusPerReq   F      `json:"server_cpu_us_per_req"`
	ServerCPUUtil F      `json:"server_cpu_util"`
	ClientCPUUtil F      `json:"loadgen_cpu_util"`
	// OtherCPU is how many cores' worth of CPU the rest of the machine
	// (other processes, unattributed interrupts, steal) used meanwhile.
	OtherCPU F `json:"other_cpu_cores"`
}

func toResult(round, clients int, target string, m measurement) runResult {
	secs := m.elapsed.Seconds()
	return runResult{
		Round:         round,
		Clients:       clients,
		Target:        target,
		Requests:      m.requests,
		Errors:        m.errors,
		FirstError:    m.firstErr,
		Seconds:       F(secs),
		RPS:           F(float64(m.requests) / secs),
		P50us:         F(m.p50),
		P99us:         F(m.p99),
		CPUusPerReq:   F(ratio(us(m.serverCPU), float64(m.requests))),
		ServerCPUUtil: F(m.serverCPU.Seconds() / secs),
		ClientCPUUtil: F(m.clientCPU.Seconds() / secs),
		OtherCPU:      F(m.otherCPU.Seconds() / secs),
	}
}

func printRun(w io.Writer, r runResult, rounds int) {
	label := fmt.Sprintf("round %2d/%d", r.Round, rounds)
	if r.Round == 0 {
		label = "warm-up   "
	}
	fmt.Fprintf(w, "%s  c=%-3d %-7s %9.0f req/s  p50 %8.1fµs  p99 %8.1fµs  server %7.1f µs/req  (server CPU %3.0f%%, load gen %3.0f%%, other %3.0f%%)  errors %d\n",
		label, r.Clients, r.Target, float64(r.RPS), float64(r.P50us), float64(r.P99us), float64(r.CPUusPerReq),
		100*float64(r.ServerCPUUtil), 100*float64(r.ClientCPUUtil), 100*float64(r.OtherCPU), r.Errors)
	if r.FirstError != "" {
		fmt.Fprintf(w, "    first error: %s\n", r.FirstError)
	}
}

// machineInfo describes where the benchmark ran.
type machineInfo struct {
	CPU        string `json:"cpu"`
	NumCPU     int    `json:"num_cpu"`
	GoVersion  string `json:"go_version"`
	OS         string `json:"os"`
	Kernel     string `json:"kernel,omitempty"`
	Date       string `json:"date"`
	Pinned     bool   `json:"pinned"`
	PinNote    string `json:"pin_note"`
	ClkTck     F      `json:"clk_tck"`
	GOMAXPROCS int    `json:"harness_gomaxprocs"`
	// Source is the tokend that was built.
	Source sourceInfo `json:"source"`
}

func getMachine() machineInfo {
	m := machineInfo{
		NumCPU:    runtime.NumCPU(),
		GoVersion: runtime.Version(),
		OS:        runtime.GOOS + "/" + runtime.GOARCH,
		Date:      time.Now().UTC().Format(time.RFC3339),
		ClkTck:    F(clkTck()),
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// targetSummary summarises one target at one client count over rounds.
type targetSummary struct {
	Target      string  `json:"target"`
	Clients     int     `json:"clients"`
	RPS         Summary `json:"rps"`
	P50us       Summary `json:"p50_us"`
	P99us       Summary `json:"p99_us"`
	CPUusPerReq Summary `json:"server_cpu_us_per_req"`
	ServerUtil  Summary `json:"server_cpu_util"`
	ClientUtil  Summary `json:"loadgen_cpu_util"`
	OtherCPU    Summary `json:"other_cpu_cores"`
	Requests    int64   `json:"requests"`
	Errors      int64   `json:"errors"`
}

// ratioSeries is a tokend/baseline ratio computed per round (same round,
// same client count) and summarised.
type ratioSeries struct {
	Name     string  `json:"name"`   // e.g. T-REST/A
	Metric   string  `json:"metric"` // rps, p50 or cpu_efficiency (baseline CPU/req ÷ tokend CPU/req)
	Clients  int     `json:"clients"`
	PerRound []F     `json:"per_round"`
	Summary  Summary `json:"summary"`
}

// goal is one of the targets, checked against a median.
type goal struct {
	Goal      string `json:"goal"`
	Op        string `json:"op"` // ">=" or "<="
	Threshold F      `json:"threshold"`
	Value     F      `json:"value"`
	Lo        F      `json:"range_lo"`
	Hi        F      `json:"range_hi"`
	Pass      bool   `json:"pass"`
	// PassAll says whether the whole 95% range meets the threshold.
	PassAll bool `json:"pass_whole_range"`
}

func newGoal(text, op string, threshold float64, s Summary) goal {
	meets := func(x F) bool {
		if math.IsNaN(float64(x)) {
			return false
		}
		if op == ">=" {
			return float64(x) >= threshold
		}
		return float64(x) <= threshold
	}
	g := goal{Goal: text, Op: op, Threshold: F(threshold), Value: s.Median, Lo: s.Lo, Hi: s.Hi}
	g.Pass = meets(s.Median)
	g.PassAll = meets(s.Lo) && meets(s.Hi)
	return g
}

// compareResults is everything results.json holds.
type compareResults struct {
	Kind               string          `json:"kind"`
	Machine            machineInfo     `json:"machine"`
	Config             config          `json:"config"`
	Seed               seedInfo        `json:"seed"`
	TokendStartSeconds F               `json:"tokend_start_seconds"`
	Warmup             []runResult     `json:"warmup"`
	Runs               []runResult     `json:"runs"`
	Summary            []targetSummary `json:"summary"`
	Ratios             []ratioSeries   `json:"ratios"`
	Goals              []goal          `json:"goals"`
	TokendLog          *logScan        `json:"tokend_log"`
	TokendExit         string          `json:"tokend_exit"`
	Errors             int64           `json:"errors"`
	TotalSeconds       F               `json:"total_seconds"`
	RangeNote          string          `json:"range_note"`
}

// logLimit is how large tokend's log may grow before it is truncated
// (after being scanned).
const logLimit = 256 << 20

// env is what both modes set up: a temp dir, a tokend binary, pinning.
type env struct {
	tmp     string
	tokend  string
	self    string
	pinned  bool
	machine machineInfo
}

func setup(ctx context.Context, cfg config, stdout io.Writer) (*env, func(), error) {
	tmp, err := os.MkdirTemp("", "tokend-bench-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { _ = os.RemoveAll(tmp) }
	e := &env{tmp: tmp}
	if e.self, err = os.Executable(); err != nil {
		cleanup()
		return nil, nil, err
	}
	fmt.Fprintln(stdout, "building tokend…")
	e.machine = getMachine()
	var root string
	if e.tokend, root, err = buildTokend(ctx, tmp); err != nil {
		cleanup()
		return nil, nil, err
	}
	e.machine.Source = gitSource(ctx, root)
	return e, cleanup, nil
}

// pin pins the harness to CPU 1 (servers started afterwards go on CPU 0)
// if asked and possible, and records what happened.
func (e *env) pin(cfg config, stdout io.Writer) {
	ok, why := canPin()
	switch {
	case !cfg.Pin:
		e.machine.PinNote = "pinning disabled by -pin=false"
	case !ok:
		e.machine.PinNote = "not pinned: " + why
	default:
		if err := pinSelf(); err != nil {
			e.machine.PinNote = "not pinned: " + err.Error()
		} else {
			e.pinned = true
			e.machine.PinNote = "servers on CPU 0 (taskset -c 0), load generator on CPU 1 (taskset -a -p -c 1, GOMAXPROCS=1)"
		}
	}
	e.machine.Pinned = e.pinned
	e.machine.GOMAXPROCS = runtime.GOMAXPROCS(0)
	fmt.Fprintln(stdout, e.machine.PinNote)
}

func runCompare(ctx context.Context, cfg config, stdout io.Writer) (err error) {
	began := time.Now()
	e, cleanup, err := setup(ctx, cfg, stdout)
	if err != nil {
		return err
	}
	defer cleanup()
	ps := &procs{}
	defer ps.stopAll()

	db := filepath.Join(e.tmp, "tokend.db")
	fmt.Fprintf(stdout, "seeding %d tokens over %d users…\n", cfg.Tokens, cfg.Users)
	creds, seeded, err := seed(ctx, db, cfg.Tokens, cfg.Users)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	fmt.Fprintf(stdout, "seeded in %.1fs (%.1f MB file)\n", float64(seeded.Seconds), float64(seeded.DBBytes)/1e6)
	e.pin(cfg, stdout)

	pA, addrA, err := startBaseline(ctx, ps, e.self, subBareHTTP, e.tmp, e.pinned)
	if err != nil {
		return err
	}
	pG, addrG, err := startBaseline(ctx, ps, e.self, subGatewayOnly, e.tmp, e.pinned)
	if err != nil {
		return err
	}
	pB, addrB, err := startBaseline(ctx, ps, e.self, subBareGRPC, e.tmp, e.pinned)
	if err != nil {
		return err
	}
	tlog := filepath.Join(e.tmp, "tokend.log")
	pT, addrs, startDur, err := startTokend(ctx, ps, e.tokend, db, tlog, e.pinned)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "A (bare net/http) on %s, G (tokend's gateway only) on %s, B (bare grpc-go) on %s, tokend on %s (REST) and %s (gRPC), started in %v\n",
		addrA, addrG, addrB, addrs.HTTP, addrs.GRPC, startDur.Round(time.Microsecond))

	maxC := slices.Max(cfg.Clients)
	targets := map[string]*target{
		nameA:     newHTTPTarget(nameA, pA, addrA, maxC, checkExample),
		nameG:     newHTTPTarget(nameG, pG, addrG, maxC, checkExample),
		nameTREST: newHTTPTarget(nameTREST, pT, addrs.HTTP, maxC, checkTokenJSON),
	}
	if targets[nameB], err = newGRPCTarget(nameB, pB, addrB, checkExampleProto); err != nil {
		return err
	}
	if targets[nameTGRPC], err = newGRPCTarget(nameTGRPC, pT, addrs.GRPC, checkTokenProto); err != nil {
		return err
	}
	defer func() {
		for _, t := range targets {
			t.close()
		}
	}()

	res := &compareResults{
		Kind:               "tokend-bench compare",
		Config:             cfg,
		Seed:               seeded,
		TokendStartSeconds: F(startDur.Seconds()),
		TokendLog:          &logScan{},
		RangeNote: fmt.Sprintf("Ranges are the 2.5th to 97.5th percentiles of the %d per-round values (linear interpolation); "+
			"with this few rounds that is close to the observed minimum to maximum, not a confidence interval.", cfg.Rounds),
	}
	g := &loadGen{creds: creds}
	measure := func(round, clients int, t *target, d time.Duration) (runResult, error) {
		m, err := g.run(ctx, t, clients, d)
		if err != nil {
			return runResult{}, err
		}
		r := toResult(round, clients, t.name, m)
		printRun(stdout, r, cfg.Rounds)
		if t.server == pT {
			if err := res.TokendLog.scan(tlog, logLimit); err != nil {
				return r, fmt.Errorf("scan tokend log: %w", err)
			}
		}
		if m.serverDied {
			return r, fmt.Errorf("%s exited during the run: %s", t.server.name, logTail(t.server.logPath))
		}
		return r, nil
	}

	if cfg.Warmup > 0 {
		for _, name := range targetOrder {
			r, err := measure(0, maxC, targets[name], cfg.Warmup)
			if err != nil {
				return err
			}
			res.Warmup = append(res.Warmup, r)
		}
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for _, c := range cfg.Clients {
			byName := map[string]runResult{}
			for k := range targetOrder {
				name := targetOrder[(k+round-1)%len(targetOrder)]
				r, err := measure(round, c, targets[name], cfg.Duration)
				if err != nil {
					return err
				}
				res.Runs = append(res.Runs, r)
				byName[name] = r
			}
			fmt.Fprintf(stdout, "round %2d/%d  c=%-3d ratios: T-REST/A req/s %.3f (G/A %.3f), T-gRPC/B req/s %.3f; p50 T-REST/A %.2fx, T-gRPC/B %.2fx\n",
				round, cfg.Rounds, c,
				ratio(float64(byName[nameTREST].RPS), float64(byName[nameA].RPS)),
				ratio(float64(byName[nameG].RPS), float64(byName[nameA].RPS)),
				ratio(float64(byName[nameTGRPC].RPS), float64(byName[nameB].RPS)),
				ratio(float64(byName[nameTREST].P50us), float64(byName[nameA].P50us)),
				ratio(float64(byName[nameTGRPC].P50us), float64(byName[nameB].P50us)))
		}
	}

	if cfg.CPUProfile > 0 {
		if err := profileTokend(ctx, cfg, addrs.Debug, stdout, func(t *target) error {
			_, err := measure(0, maxC, t, cfg.CPUProfile)
			return err
		}, targets[nameTREST], targets[nameTGRPC]); err != nil {
			return err
		}
	}

	// Close the clients and stop tokend so its final usage flush and
	// shutdown are checked too.
	for _, t := range targets {
		t.close()
	}
	pT.stop()
	res.TokendExit = "exit 0"
	if pT.waitErr != nil {
		res.TokendExit = pT.waitErr.Error()
	}
	if err := res.TokendLog.scan(tlog, logLimit); err != nil {
		return fmt.Errorf("scan tokend log: %w", err)
	}

	e.machine.Date = began.UTC().Format(time.RFC3339)
	res.Machine = e.machine
	summarizeCompare(res, cfg)
	res.TotalSeconds = F(time.Since(began).Seconds())
	md := compareMarkdown(res)
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, md)
	if err := writeCompare(cfg.Out, res, md); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s, %s and %s in %.0fs\n",
		filepath.Join(cfg.Out, "results.json"), filepath.Join(cfg.Out, "results.md"), filepath.Join(cfg.Out, "ratios.svg"),
		float64(res.TotalSeconds))
	switch {
	case res.Errors > 0:
		return fmt.Errorf("%d requests failed their checks (see first_error in results.json)", res.Errors)
	case res.TokendExit != "exit 0":
		return fmt.Errorf("tokend did not shut down cleanly: %s", res.TokendExit)
	}
	return nil
}

// summarizeCompare fills in summaries, ratios, goals and the error count.
func summarizeCompare(res *compareResults, cfg config) {
	for _, r := range slices.Concat(res.Warmup, res.Runs) {
		res.Errors += r.Errors
	}
	pick := func(target string, clients int, f func(runResult) F) []float64 {
		var v []float64
		for _, r := range res.Runs {
			if r.Target == target && r.Clients == clients {
				v = append(v, float64(f(r)))
			}
		}
		return v
	}
	for _, c := range cfg.Clients {
		for _, name := range targetOrder {
			s := targetSummary{Target: name, Clients: c}
			s.RPS = summarize(pick(name, c, func(r runResult) F { return r.RPS }))
			s.P50us = summarize(pick(name, c, func(r runResult) F { return r.P50us }))
			s.P99us = summarize(pick(name, c, func(r runResult) F { return r.P99us }))
			s.CPUusPerReq = summarize(pick(name, c, func(r runResult) F { return r.CPUusPerReq }))
			s.ServerUtil = summarize(pick(name, c, func(r runResult) F { return r.ServerCPUUtil }))
			s.ClientUtil = summarize(pick(name, c, func(r runResult) F { return r.ClientCPUUtil }))
			s.OtherCPU = summarize(pick(name, c, func(r runResult) F { return r.OtherCPU }))
			for _, r := range res.Runs {
				if r.Target == name && r.Clients == c {
					s.Requests += r.Requests
					s.Errors += r.Errors
				}
			}
			res.Summary = append(res.Summary, s)
		}
	}
	perRound := func(num, den string, clients int, f func(runResult) F) []float64 {
		a, b := pick(num, clients, f), pick(den, clients, f)
		out := make([]float64, min(len(a), len(b)))
		for i := range out {
			out[i] = ratio(a[i], b[i])
		}
		return out
	}
	series := func(name, metric string, clients int, v []float64) ratioSeries {
		s := ratioSeries{Name: name, Metric: metric, Clients: clients, Summary: summarize(v)}
		for _, x := range v {
			s.PerRound = append(s.PerRound, F(x))
		}
		res.Ratios = append(res.Ratios, s)
		return s
	}
	rps := func(r runResult) F { return r.RPS }
	p50 := func(r runResult) F { return r.P50us }
	cpu := func(r runResult) F { return r.CPUusPerReq }
	hi, lo := slices.Max(cfg.Clients), slices.Min(cfg.Clients)
	var restRPS, grpcRPS, restP50, grpcP50 ratioSeries
	for _, c := range cfg.Clients {
		a := series(ratioREST, "rps", c, perRound(nameTREST, nameA, c, rps))
		b := series(ratioGRPC, "rps", c, perRound(nameTGRPC, nameB, c, rps))
		ap := series(ratioREST, "p50", c, perRound(nameTREST, nameA, c, p50))
		bp := series(ratioGRPC, "p50", c, perRound(nameTGRPC, nameB, c, p50))
		// Baseline over tokend, so that higher is better like req/s.
		series(ratioREST, "cpu_efficiency", c, perRound(nameA, nameTREST, c, cpu))
		series(ratioGRPC, "cpu_efficiency", c, perRound(nameB, nameTGRPC, c, cpu))
		// Where the REST gap lies: the fixed REST layer (G/A) and
		// tokend's service behind it (T-REST/G).
		series(nameG+"/"+nameA, "rps", c, perRound(nameG, nameA, c, rps))
		series(nameG+"/"+nameA, "cpu_efficiency", c, perRound(nameA, nameG, c, cpu))
		series(nameTREST+"/"+nameG, "rps", c, perRound(nameTREST, nameG, c, rps))
		series(nameTREST+"/"+nameG, "cpu_efficiency", c, perRound(nameG, nameTREST, c, cpu))
		if c == hi {
			restRPS, grpcRPS = a, b
		}
		if c == lo {
			restP50, grpcP50 = ap, bp
		}
	}
	res.Goals = []goal{
		newGoal(fmt.Sprintf("T-REST/A req/s at %d clients", hi), ">=", 0.6, restRPS.Summary),
		newGoal(fmt.Sprintf("T-gRPC/B req/s at %d clients", hi), ">=", 0.8, grpcRPS.Summary),
		newGoal(fmt.Sprintf("T-REST p50 / A p50 at %d client(s)", lo), "<=", 1.5, restP50.Summary),
		newGoal(fmt.Sprintf("T-gRPC p50 / B p50 at %d client(s)", lo), "<=", 1.5, grpcP50.Summary),
	}
}

// profileTokend loads each of ts in turn with load (which runs for
// cfg.CPUProfile) while taking tokend's CPU profile over the same time, and
// writes the profiles to cfg.Out as tokend-rest.pprof and tokend-grpc.pprof.
func profileTokend(ctx context.Context, cfg config, debugAddr string, stdout io.Writer, load func(*target) error, ts ...*target) error {
	if debugAddr == "" {
		return errors.New("-cpuprofile: tokend reported no debug listener")
	}
	for _, t := range ts {
		name := "tokend-grpc.pprof"
		if t.name == nameTREST {
			name = "tokend-rest.pprof"
		}
		path := filepath.Join(cfg.Out, name)
		done := make(chan error, 1)
		go func() { done <- saveCPUProfile(ctx, debugAddr, cfg.CPUProfile, path) }()
		if err := load(t); err != nil {
			<-done
			return err
		}
		if err := <-done; err != nil {
			return fmt.Errorf("-cpuprofile %s: %w", t.name, err)
		}
		fmt.Fprintf(stdout, "wrote %s (go tool pprof -top %s)\n", path, path)
	}
	return nil
}
