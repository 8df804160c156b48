package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// fmtNum formats x with prec decimals, or "–" for NaN.
func fmtNum(x F, prec int) string {
	if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, float64(x))
}

// fmtSummary formats a summary as "median [lo–hi]".
func fmtSummary(s Summary, prec int) string {
	return fmt.Sprintf("%s [%s–%s]", fmtNum(s.Median, prec), fmtNum(s.Lo, prec), fmtNum(s.Hi, prec))
}

func fmtPct(s Summary) string {
	return fmt.Sprintf("%s%%", fmtNum(s.Median*100, 0))
}

func passWord(g goal) string {
	switch {
	case g.Pass && g.PassAll:
		return "PASS"
	case g.Pass:
		return "PASS (median; not the whole range)"
	default:
		return "MISS"
	}
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func writeCompare(dir string, res *compareResults, md string) error {
	if err := writeJSON(filepath.Join(dir, "results.json"), res); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "ratios.svg"), []byte(ratiosSVG(res)), 0o644)
}

// redraw rewrites results.md and ratios.svg from a results.json.
func redraw(from, dir string, stdout io.Writer) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	var res compareResults
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", from, err)
	}
	if len(res.Config.Clients) == 0 {
		return fmt.Errorf("%s: not a tokend-bench results.json", from)
	}
	md := compareMarkdown(&res)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ratios.svg"), []byte(ratiosSVG(&res)), 0o644); err != nil {
		return err
	}
	fmt.Fprint(stdout, md)
	return nil
}

var targetDesc = map[string]string{
	nameA:     "A: bare net/http, fixed example JSON",
	nameG:     "G: tokend's REST gateway only (edge, log line, grpc-gateway handler, contract JSON) over a service answering the example token at once",
	nameTREST: "T-REST: tokend GET /api/v1/me/tokens/{id}",
	nameB:     "B: bare grpc-go, fixed example Token",
	nameTGRPC: "T-gRPC: tokend TokenService/GetToken",
}

// compareMarkdown renders results.md, which is also the summary printed
// at the end of a run.
func compareMarkdown(res *compareResults) string {
	var b strings.Builder
	m, c := res.Machine, res.Config
	fmt.Fprintf(&b, "# tokend vs bare baselines\n\n")
	fmt.Fprintf(&b, "%s; %s, %d CPUs; %s; %s. %s.\n\n", m.Date, m.CPU, m.NumCPU, m.GoVersion, m.OS, m.PinNote)
	fmt.Fprintf(&b, "%d rounds × %d client counts %v × %d targets, %.1fs each after a %.1fs warm-up per target; "+
		"closed loop, every response checked. tokend: %d tokens over %d users (seeded in %.1fs, %.1f MB file), "+
		"started in %.0f ms; every tokend request is an authenticated GetToken with a different token. Total run %.0fs.\n\n",
		c.Rounds, len(c.Clients), c.Clients, len(targetOrder), float64(c.DurationS), float64(c.WarmupS),
		res.Seed.Tokens, res.Seed.Users, float64(res.Seed.Seconds), float64(res.Seed.DBBytes)/1e6,
		1000*float64(res.TokendStartSeconds), float64(res.TotalSeconds))
	fmt.Fprintf(&b, "%s\n\n", sourceLine(m.Source))
	fmt.Fprintf(&b, "Medians over rounds [95%% range]. %s\n\n", res.RangeNote)

	fmt.Fprintf(&b, "## Per target\n\n")
	fmt.Fprintf(&b, "| target | clients | req/s | p50 µs | p99 µs | server CPU µs/req | server CPU | load-gen CPU | other CPU | requests | errors |\n")
	fmt.Fprintf(&b, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, s := range res.Summary {
		fmt.Fprintf(&b, "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %d | %d |\n",
			s.Target, s.Clients, fmtSummary(s.RPS, 0), fmtSummary(s.P50us, 1), fmtSummary(s.P99us, 1),
			fmtSummary(s.CPUusPerReq, 1), fmtPct(s.ServerUtil), fmtPct(s.ClientUtil), fmtPct(s.OtherCPU), s.Requests, s.Errors)
	}
	fmt.Fprintf(&b, "\n")
	for _, name := range targetOrder {
		fmt.Fprintf(&b, "- %s\n", targetDesc[name])
	}
	fmt.Fprintf(&b, "\nServer CPU is the server process's user+system time over the run (from /proc/<pid>/stat) "+
		"as a share of one core; load-gen CPU is the harness's; other CPU is the rest of the machine's busy time "+
		"(/proc/stat: other processes, unattributed interrupt time, steal) in the same window, in cores. A load generator "+
		"near 100%% means that target's req/s is bounded by the client, not the server; other CPU well above a few "+
		"percent means the machine was not quiet and numbers are pessimistic and noisy.\n\n")

	fmt.Fprintf(&b, "## Ratios (computed per round, same round and client count)\n\n")
	fmt.Fprintf(&b, "| ratio | metric | clients | median | 95%% range | per round |\n")
	fmt.Fprintf(&b, "| --- | --- | ---: | ---: | --- | --- |\n")
	for _, r := range res.Ratios {
		per := make([]string, len(r.PerRound))
		for i, x := range r.PerRound {
			per[i] = fmtNum(x, 2)
		}
		metric := map[string]string{
			"rps":            "req/s",
			"p50":            "p50 latency",
			"cpu_efficiency": "CPU efficiency (denominator's µs/req ÷ numerator's)",
		}[r.Metric]
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s–%s | %s |\n", r.Name, metric, r.Clients,
			fmtNum(r.Summary.Median, 3), fmtNum(r.Summary.Lo, 3), fmtNum(r.Summary.Hi, 3), strings.Join(per, " "))
	}

	fmt.Fprintf(&b, "\nCPU efficiency is what the throughput ratio would be if each server were the only bottleneck "+
		"on a core of its own; it is far less disturbed by other load on the machine than req/s is.\n")
	fmt.Fprintf(&b, "\n## Targets\n\n")
	fmt.Fprintf(&b, "| target | wanted | median | 95%% range | result |\n")
	fmt.Fprintf(&b, "| --- | --- | ---: | --- | --- |\n")
	for _, g := range res.Goals {
		fmt.Fprintf(&b, "| %s | %s %s | %s | %s–%s | %s |\n", g.Goal, strings.ReplaceAll(strings.ReplaceAll(g.Op, ">=", "≥"), "<=", "≤"),
			fmtNum(g.Threshold, 2), fmtNum(g.Value, 3), fmtNum(g.Lo, 3), fmtNum(g.Hi, 3), passWord(g))
	}

	l := res.TokendLog
	fmt.Fprintf(&b, "\n## tokend\n\nLog: %d lines (%.1f MB), %d warnings, %d errors. Shutdown: %s. Failed checks over the whole run: %d.\n",
		l.Lines, float64(l.Bytes)/1e6, l.Warn, l.Error, res.TokendExit, res.Errors)
	for _, s := range l.Samples {
		fmt.Fprintf(&b, "\n    %s", s)
	}
	if len(l.Samples) > 0 {
		fmt.Fprintln(&b)
	}
	return b.String()
}

// ratiosSVG plots the per-round throughput ratios and p50 ratios, with
// their medians and the targets.
func ratiosSVG(res *compareResults) string {
	type group struct {
		label     string
		s         ratioSeries
		target    float64
		targetLbl string
	}
	// Targets apply to throughput at the most clients and to p50 at the
	// fewest; elsewhere no line is drawn.
	hiC, loC := slices.Max(res.Config.Clients), slices.Min(res.Config.Clients)
	var rps, p50, cpu []group
	for _, r := range res.Ratios {
		if r.Name != ratioREST && r.Name != ratioGRPC {
			continue // the plot shows the ratios; results.md has all
		}
		g := group{label: fmt.Sprintf("%s, %d client%s", r.Name, r.Clients, plural(r.Clients)), s: r, target: math.NaN()}
		switch r.Metric {
		case "rps", "cpu_efficiency":
			if r.Clients == hiC {
				g.target = 0.6
				if r.Name == ratioGRPC {
					g.target = 0.8
				}
				g.targetLbl = fmt.Sprintf("target ≥ %.1f", g.target)
			}
			if r.Metric == "rps" {
				rps = append(rps, g)
			} else {
				if r.Clients == hiC {
					g.targetLbl = fmt.Sprintf("req/s target %.1f", g.target)
				}
				cpu = append(cpu, g)
			}
		case "p50":
			if r.Clients == loC {
				g.target = 1.5
				g.targetLbl = "target ≤ 1.5"
			}
			p50 = append(p50, g)
		}
	}
	const (
		width   = 900
		panelH  = 300
		top     = 50
		left    = 70
		right   = 20
		gap     = 90
		plotW   = width - left - right
		heightT = top + 3*panelH + 2*gap + 60
	)
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		width, heightT, width, heightT)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">tokend / baseline, per round (dots), median (bar), the issue's targets (dashed red)</text>`+"\n", left)
	fmt.Fprintf(&b, `<text x="%d" y="40" fill="#555">%s; %d rounds of %.1fs; %s</text>`+"\n", left, esc(res.Machine.CPU), res.Config.Rounds, float64(res.Config.DurationS), esc(pinShort(res.Machine)))
	panel := func(y0 int, title string, groups []group, higherBetter bool) {
		maxV := 0.0
		for _, g := range groups {
			if !math.IsNaN(g.target) {
				maxV = math.Max(maxV, g.target)
			}
			for _, x := range g.s.PerRound {
				if !math.IsNaN(float64(x)) {
					maxV = math.Max(maxV, float64(x))
				}
			}
		}
		yMax := math.Ceil(maxV*1.15*5) / 5
		if yMax <= 0 {
			yMax = 1
		}
		y := func(v float64) float64 { return float64(y0+panelH) - v/yMax*float64(panelH) }
		better := "higher is better"
		if !higherBetter {
			better = "lower is better"
		}
		fmt.Fprintf(&b, `<text x="%d" y="%d" font-weight="bold">%s (%s)</text>`+"\n", left, y0-8, esc(title), better)
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, y0, plotW, panelH)
		step := 0.2
		if yMax > 3 {
			step = 0.5
		}
		if yMax > 6 {
			step = 1
		}
		for v := 0.0; v <= yMax+1e-9; v += step {
			fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", left, left+plotW, y(v), y(v))
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.1f</text>`+"\n", left-6, y(v)+4, v)
		}
		if len(groups) == 0 {
			return
		}
		gw := float64(plotW) / float64(len(groups))
		for i, g := range groups {
			x0 := float64(left) + gw*float64(i)
			cx := x0 + gw/2
			if !math.IsNaN(g.target) {
				fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#d62728" stroke-dasharray="6,4" stroke-width="1.5"/>`+"\n",
					x0+8, x0+gw-8, y(g.target), y(g.target))
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="#d62728" font-size="10">%s</text>`+"\n", x0+10, y(g.target)-4, esc(g.targetLbl))
			}
			n := len(g.s.PerRound)
			for k, v := range g.s.PerRound {
				if math.IsNaN(float64(v)) {
					continue
				}
				dx := 0.0
				if n > 1 {
					dx = (float64(k)/float64(n-1) - 0.5) * gw * 0.5
				}
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.5" fill="#1f77b4" fill-opacity="0.7"><title>round %d: %.3f</title></circle>`+"\n", cx+dx, y(float64(v)), k+1, float64(v))
			}
			if med := float64(g.s.Summary.Median); !math.IsNaN(med) {
				fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black" stroke-width="2.5"/>`+"\n", cx-gw*0.32, cx+gw*0.32, y(med), y(med))
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" font-size="11">%.2f</text>`+"\n", cx+gw*0.33, y(med)+4, med)
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", cx, y0+panelH+18, esc(g.label))
		}
	}
	panel(top+20, "Throughput ratio: tokend req/s ÷ baseline req/s", rps, true)
	panel(top+20+panelH+gap, "Median latency ratio: tokend p50 ÷ baseline p50", p50, false)
	panel(top+20+2*(panelH+gap), "CPU efficiency: baseline server CPU per request ÷ tokend's", cpu, true)
	b.WriteString("</svg>\n")
	return b.String()
}

// sourceLine says which tokend was measured.
func sourceLine(s sourceInfo) string {
	if s.Commit == "" {
		return "tokend built from the working tree (no git information)."
	}
	line := "tokend built from commit " + s.Commit
	if len(s.Dirty) > 0 {
		line += fmt.Sprintf(" plus %d uncommitted change(s): %s", len(s.Dirty), strings.Join(s.Dirty, "; "))
	}
	return line + "."
}

func pinShort(m machineInfo) string {
	if m.Pinned {
		return "servers pinned to CPU 0, load generator to CPU 1"
	}
	return "not pinned"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func esc(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;")
	return r.Replace(s)
}
