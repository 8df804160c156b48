package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// sizeStats is GetToken at one database size and client count.
type sizeStats struct {
	Clients   int     `json:"clients"`
	RESTp50us Summary `json:"rest_p50_us"`
	RESTp99us Summary `json:"rest_p99_us"`
	RESTrps   Summary `json:"rest_rps"`
	GRPCp50us Summary `json:"grpc_p50_us"`
	GRPCp99us Summary `json:"grpc_p99_us"`
	GRPCrps   Summary `json:"grpc_rps"`
}

// scaleRow is tokend at one database size.
type scaleRow struct {
	Tokens        int         `json:"tokens"`
	Seed          seedInfo    `json:"seed"`
	StartMs       []F         `json:"start_ms"` // each trial: exec to "tokend listening"
	StartMedianMs F           `json:"start_median_ms"`
	Stats         []sizeStats `json:"stats"`
	MemAtStart    memStats    `json:"mem_at_start"`
	MemAfterLoad  memStats    `json:"mem_after_load"`
	MemAfterGC    memStats    `json:"mem_after_forced_gc"`
	// PeakHeapInuse and PeakHeapAlloc are the largest values sampled
	// (every heapSampleEvery) while the load generator drove this tokend.
	PeakHeapInuse uint64 `json:"peak_heap_inuse"`
	PeakHeapAlloc uint64 `json:"peak_heap_alloc"`
	HeapSamples   int    `json:"heap_samples"`
	RSSBytes      int64  `json:"rss_bytes_after_load"`
	// HeapProfile is tokend's heap profile after the load, in -out.
	HeapProfile string      `json:"heap_profile"`
	Runs        []runResult `json:"runs"`
	Errors      int64       `json:"errors"`
	Log         *logScan    `json:"tokend_log"`
	Exit        string      `json:"tokend_exit"`

	proc   *proc
	addrs  tokendAddrs
	logf   string
	creds  *creds
	rest   *target
	grpc   *target
	gen    *loadGen
	dbPath string
}

// stats returns the row's statistics at clients, or a zero value.
func (r *scaleRow) stats(clients int) sizeStats {
	for _, s := range r.Stats {
		if s.Clients == clients {
			return s
		}
	}
	nan := F(math.NaN())
	none := Summary{Median: nan, Lo: nan, Hi: nan, Min: nan, Max: nan}
	return sizeStats{Clients: clients, RESTp50us: none, RESTp99us: none, RESTrps: none, GRPCp50us: none, GRPCp99us: none, GRPCrps: none}
}

type scaleResults struct {
	Kind         string      `json:"kind"`
	Machine      machineInfo `json:"machine"`
	Config       config      `json:"config"`
	Clients      []int       `json:"clients"`
	Rows         []*scaleRow `json:"sizes"`
	Goals        []goal      `json:"goals"`
	Errors       int64       `json:"errors"`
	TotalSeconds F           `json:"total_seconds"`
	Note         string      `json:"note"`
}

const (
	// startTrials is how many times tokend is started on each database to
	// measure its start time; the last instance is the one measured.
	startTrials = 3
	// heapSampleEvery is how often tokend's memstats are read during load.
	// Each read stops tokend's world briefly (runtime.ReadMemStats).
	heapSampleEvery = 500 * time.Millisecond
)

// runScale measures tokend alone at each database size in cfg.Scale, at
// one client (the latency comparison) and at the largest -clients count
// (load). All sizes run side by side and their rounds interleave, so drift
// in the machine affects them alike.
func runScale(ctx context.Context, cfg config, stdout io.Writer) error {
	began := time.Now()
	e, cleanup, err := setup(ctx, cfg, stdout)
	if err != nil {
		return err
	}
	defer cleanup()
	ps := &procs{}
	defer ps.stopAll()

	clients := []int{1}
	if hi := slices.Max(cfg.Clients); hi > 1 {
		clients = append(clients, hi)
	}
	res := &scaleResults{Kind: "tokend-bench scale", Config: cfg, Clients: clients,
		Note: "GetToken over REST and gRPC, every request a different seeded token. " +
			"Start time runs from exec to the time on tokend's \"tokend listening\" log line, with the database just written (in the page cache). " +
			"Heap figures are tokend's runtime.MemStats from --debug-addr /debug/vars: the peak sampled every 500 ms during the load, " +
			"the value after the load, and after a forced GC (requesting /debug/pprof/heap?gc=1 runs a collection); " +
			"scale-heap-<tokens>.pb.gz is the heap profile then (go tool pprof -sample_index=inuse_space)."}
	for _, n := range cfg.Scale {
		dir := filepath.Join(e.tmp, fmt.Sprintf("scale-%d-%d", len(res.Rows), n))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		row := &scaleRow{Tokens: n, dbPath: filepath.Join(dir, "tokend.db"), logf: filepath.Join(dir, "tokend.log"), Log: &logScan{}}
		users := min(cfg.Users, n)
		fmt.Fprintf(stdout, "seeding %d tokens over %d users…\n", n, users)
		row.creds, row.Seed, err = seed(ctx, row.dbPath, n, users)
		if err != nil {
			return fmt.Errorf("seed %d: %w", n, err)
		}
		fmt.Fprintf(stdout, "seeded %d tokens in %.1fs (%.1f MB file)\n", n, float64(row.Seed.Seconds), float64(row.Seed.DBBytes)/1e6)
		row.gen = &loadGen{creds: row.creds}
		res.Rows = append(res.Rows, row)
	}
	e.pin(cfg, stdout)

	for _, row := range res.Rows {
		var starts []float64
		for trial := 1; trial <= startTrials; trial++ {
			p, addrs, d, err := startTokend(ctx, ps, e.tokend, row.dbPath, row.logf, e.pinned)
			if err != nil {
				return fmt.Errorf("%d tokens: %w", row.Tokens, err)
			}
			starts = append(starts, d.Seconds()*1000)
			row.StartMs = append(row.StartMs, F(d.Seconds()*1000))
			fmt.Fprintf(stdout, "%d tokens: tokend started in %.1f ms (trial %d)\n", row.Tokens, d.Seconds()*1000, trial)
			if trial < startTrials {
				p.stop()
				if p.waitErr != nil {
					return fmt.Errorf("%d tokens: tokend did not stop cleanly: %v: %s", row.Tokens, p.waitErr, logTail(row.logf))
				}
				continue
			}
			row.proc, row.addrs = p, addrs
		}
		row.StartMedianMs = summarize(starts).Median
		if row.MemAtStart, err = readMemStats(ctx, row.addrs.Debug, false); err != nil {
			return fmt.Errorf("%d tokens: read memstats: %w", row.Tokens, err)
		}
		row.rest = newHTTPTarget(nameTREST, row.proc, row.addrs.HTTP, slices.Max(clients), checkTokenJSON)
		if row.grpc, err = newGRPCTarget(nameTGRPC, row.proc, row.addrs.GRPC, checkTokenProto); err != nil {
			return err
		}
		defer row.rest.close()
		defer row.grpc.close()
	}

	measure := func(round int, row *scaleRow, t *target, c int, d time.Duration) error {
		stopSampling := row.sampleHeap(ctx)
		m, err := row.gen.run(ctx, t, c, d)
		stopSampling()
		if err != nil {
			return err
		}
		r := toResult(round, c, fmt.Sprintf("%s@%d", t.name, row.Tokens), m)
		printRun(stdout, r, cfg.ScaleRounds)
		row.Errors += r.Errors
		if round > 0 {
			row.Runs = append(row.Runs, r)
		}
		if err := row.Log.scan(row.logf, logLimit); err != nil {
			return err
		}
		if m.serverDied {
			return fmt.Errorf("tokend (%d tokens) exited during the run: %s", row.Tokens, logTail(row.logf))
		}
		return nil
	}
	if cfg.Warmup > 0 {
		for _, row := range res.Rows {
			for _, t := range []*target{row.rest, row.grpc} {
				if err := measure(0, row, t, 1, cfg.Warmup/2); err != nil {
					return err
				}
			}
		}
	}
	for round := 1; round <= cfg.ScaleRounds; round++ {
		for _, row := range res.Rows {
			for _, c := range clients {
				for _, t := range []*target{row.rest, row.grpc} {
					if err := measure(round, row, t, c, cfg.Duration); err != nil {
						return err
					}
				}
			}
		}
	}

	for _, row := range res.Rows {
		if row.MemAfterLoad, err = readMemStats(ctx, row.addrs.Debug, false); err != nil {
			return err
		}
		row.PeakHeapInuse = max(row.PeakHeapInuse, row.MemAfterLoad.HeapInuse)
		row.PeakHeapAlloc = max(row.PeakHeapAlloc, row.MemAfterLoad.HeapAlloc)
		row.RSSBytes = rssBytes(row.proc.pid())
		if row.MemAfterGC, err = readMemStats(ctx, row.addrs.Debug, true); err != nil {
			return err
		}
		row.HeapProfile = fmt.Sprintf("scale-heap-%d.pb.gz", row.Tokens)
		if cfg.Quick {
			row.HeapProfile = "" // a smoke run leaves only its JSON and markdown
		}
		if row.HeapProfile != "" {
			if err := saveHeapProfile(ctx, row.addrs.Debug, filepath.Join(cfg.Out, row.HeapProfile)); err != nil {
				return err
			}
		}
		for _, c := range clients {
			pick := func(name string, f func(runResult) F) Summary {
				var v []float64
				for _, r := range row.Runs {
					if r.Clients == c && strings.HasPrefix(r.Target, name+"@") {
						v = append(v, float64(f(r)))
					}
				}
				return summarize(v)
			}
			p50 := func(r runResult) F { return r.P50us }
			p99 := func(r runResult) F { return r.P99us }
			rps := func(r runResult) F { return r.RPS }
			row.Stats = append(row.Stats, sizeStats{
				Clients:   c,
				RESTp50us: pick(nameTREST, p50), RESTp99us: pick(nameTREST, p99), RESTrps: pick(nameTREST, rps),
				GRPCp50us: pick(nameTGRPC, p50), GRPCp99us: pick(nameTGRPC, p99), GRPCrps: pick(nameTGRPC, rps),
			})
		}
		row.rest.close()
		row.grpc.close()
		row.proc.stop()
		row.Exit = "exit 0"
		if row.proc.waitErr != nil {
			row.Exit = row.proc.waitErr.Error()
		}
		if err := row.Log.scan(row.logf, logLimit); err != nil {
			return err
		}
		res.Errors += row.Errors
	}

	e.machine.Date = began.UTC().Format(time.RFC3339)
	res.Machine = e.machine
	res.Goals = scaleGoals(res.Rows)
	res.TotalSeconds = F(time.Since(began).Seconds())
	md := scaleMarkdown(res)
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, md)
	if err := writeJSON(filepath.Join(cfg.Out, "scale.json"), res); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.Out, "scale.md"), []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "\nwrote %s and %s in %.0fs\n", filepath.Join(cfg.Out, "scale.json"), filepath.Join(cfg.Out, "scale.md"), float64(res.TotalSeconds))
	if res.Errors > 0 {
		return fmt.Errorf("%d requests failed their checks (see first_error in scale.json)", res.Errors)
	}
	for _, row := range res.Rows {
		if row.Exit != "exit 0" {
			return fmt.Errorf("tokend (%d tokens) did not shut down cleanly: %s", row.Tokens, row.Exit)
		}
	}
	return nil
}

// sampleHeap reads tokend's memstats every heapSampleEvery until the
// returned function is called, keeping the peaks.
func (r *scaleRow) sampleHeap(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(heapSampleEvery)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			m, err := readMemStats(ctx, r.addrs.Debug, false)
			if err != nil {
				continue
			}
			r.HeapSamples++
			r.PeakHeapInuse = max(r.PeakHeapInuse, m.HeapInuse)
			r.PeakHeapAlloc = max(r.PeakHeapAlloc, m.HeapAlloc)
		}
	})
	return func() {
		cancel()
		wg.Wait()
	}
}

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

// scaleGoals checks the scale targets: the largest size against
// the smallest.
func scaleGoals(rows []*scaleRow) []goal {
	if len(rows) == 0 {
		return nil
	}
	byN := slices.Clone(rows)
	slices.SortFunc(byN, func(a, b *scaleRow) int { return a.Tokens - b.Tokens })
	small, big := byN[0], byN[len(byN)-1]
	one := func(x F) Summary { return Summary{Median: x, Lo: x, Hi: x, Min: x, Max: x, N: 1} }
	var goals []goal
	if big != small {
		bs, ss := big.stats(1), small.stats(1)
		for _, x := range []struct {
			name string
			a, b Summary
		}{{"REST", bs.RESTp50us, ss.RESTp50us}, {"gRPC", bs.GRPCp50us, ss.GRPCp50us}} {
			goals = append(goals, newGoal(fmt.Sprintf("GetToken %s p50 at 1 client, %d tokens ÷ %d tokens", x.name, big.Tokens, small.Tokens),
				"<=", 1.3, one(F(ratio(float64(x.a.Median), float64(x.b.Median))))))
		}
	}
	goals = append(goals,
		newGoal(fmt.Sprintf("peak heap in use under load at %d tokens, MB", big.Tokens), "<=", 64, one(F(mb(big.PeakHeapInuse)))),
		newGoal(fmt.Sprintf("tokend start at %d tokens, s (median of %d)", big.Tokens, len(big.StartMs)), "<=", 1, one(big.StartMedianMs/1000)),
	)
	return goals
}

func scaleMarkdown(res *scaleResults) string {
	var b strings.Builder
	m := res.Machine
	fmt.Fprintf(&b, "# tokend at scale\n\n%s; %s, %d CPUs; %s; %s. %s.\n\n", m.Date, m.CPU, m.NumCPU, m.GoVersion, m.OS, m.PinNote)
	fmt.Fprintf(&b, "%s\n\n", sourceLine(m.Source))
	fmt.Fprintf(&b, "%d rounds per size of %.1fs per transport and client count %v, sizes interleaved. %s Total run %.0fs.\n\n",
		res.Config.ScaleRounds, float64(res.Config.DurationS), res.Clients, res.Note, float64(res.TotalSeconds))
	fmt.Fprintf(&b, "## Latency\n\n| tokens | clients | REST req/s | REST p50 µs | REST p99 µs | gRPC req/s | gRPC p50 µs | gRPC p99 µs |\n")
	fmt.Fprintf(&b, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, c := range res.Clients {
		for _, r := range res.Rows {
			s := r.stats(c)
			fmt.Fprintf(&b, "| %d | %d | %s | %s | %s | %s | %s | %s |\n", r.Tokens, c,
				fmtSummary(s.RESTrps, 0), fmtSummary(s.RESTp50us, 1), fmtSummary(s.RESTp99us, 1),
				fmtSummary(s.GRPCrps, 0), fmtSummary(s.GRPCp50us, 1), fmtSummary(s.GRPCp99us, 1))
		}
	}
	fmt.Fprintf(&b, "\nMedians over rounds [2.5th–97.5th percentile of the per-round values].\n")
	fmt.Fprintf(&b, "\n## Database, start and memory\n\n| tokens | seed s | db MB | start ms (median; trials) | heap in use MB: start / peak under load / after load / after GC | peak heap alloc MB | RSS MB | errors |\n")
	fmt.Fprintf(&b, "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |\n")
	for _, r := range res.Rows {
		trials := make([]string, len(r.StartMs))
		for i, x := range r.StartMs {
			trials[i] = fmtNum(x, 1)
		}
		fmt.Fprintf(&b, "| %d | %.1f | %.1f | %s (%s) | %.1f / %.1f / %.1f / %.1f | %.1f | %.1f | %d |\n",
			r.Tokens, float64(r.Seed.Seconds), float64(r.Seed.DBBytes)/1e6, fmtNum(r.StartMedianMs, 1), strings.Join(trials, ", "),
			mb(r.MemAtStart.HeapInuse), mb(r.PeakHeapInuse), mb(r.MemAfterLoad.HeapInuse), mb(r.MemAfterGC.HeapInuse),
			mb(r.PeakHeapAlloc), float64(r.RSSBytes)/(1<<20), r.Errors)
	}
	fmt.Fprintf(&b, "\nRSS includes the pages of the mmap'd database that were touched.\n")
	fmt.Fprintf(&b, "\n## Targets\n\n| target | wanted | value | result |\n| --- | --- | ---: | --- |\n")
	for _, g := range res.Goals {
		res := "MISS"
		if g.Pass {
			res = "PASS"
		}
		fmt.Fprintf(&b, "| %s | %s %s | %s | %s |\n", g.Goal, strings.ReplaceAll(g.Op, "<=", "≤"), fmtNum(g.Threshold, 2), fmtNum(g.Value, 3), res)
	}
	fmt.Fprintf(&b, "\n## tokend logs\n\n")
	for _, r := range res.Rows {
		fmt.Fprintf(&b, "- %d tokens: %d lines, %d warnings, %d errors; shutdown %s\n", r.Tokens, r.Log.Lines, r.Log.Warn, r.Log.Error, r.Exit)
		for _, s := range r.Log.Samples {
			fmt.Fprintf(&b, "  - `%s`\n", s)
		}
	}
	return b.String()
}
