package main

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

func near(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) < 1e-9
}

func TestPercentile(t *testing.T) {
	tests := []struct {
		name   string
		sorted []float64
		p      float64
		want   float64
	}{
		{"empty", nil, 0.5, math.NaN()},
		{"one", []float64{7}, 0.99, 7},
		{"median odd", []float64{1, 2, 3}, 0.5, 2},
		{"median even", []float64{1, 2, 3, 4}, 0.5, 2.5},
		{"min", []float64{1, 2, 3, 4}, 0, 1},
		{"max", []float64{1, 2, 3, 4}, 1, 4},
		{"below 0 clamps", []float64{1, 2}, -1, 1},
		{"above 1 clamps", []float64{1, 2}, 2, 2},
		// position p*(n-1) = 0.025*9 = 0.225 between 10 and 20.
		{"2.5th of 10", []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, 0.025, 12.25},
		{"97.5th of 10", []float64{10, 20, 30, 40, 50, 60, 70, 80, 90, 100}, 0.975, 97.75},
		{"p99 of 101", seq(0, 100), 0.99, 99},
		{"p90 of 0..10", seq(0, 10), 0.9, 9},
		{"interpolated", []float64{0, 10}, 0.3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); !near(got, tt.want) {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func seq(from, to int) []float64 {
	var v []float64
	for i := from; i <= to; i++ {
		v = append(v, float64(i))
	}
	return v
}

func TestDurationPercentile(t *testing.T) {
	tests := []struct {
		sorted []time.Duration
		p      float64
		want   float64
	}{
		{nil, 0.5, math.NaN()},
		{[]time.Duration{time.Millisecond}, 0.5, 1000},
		{[]time.Duration{100 * time.Microsecond, 200 * time.Microsecond}, 0.5, 150},
		{[]time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 0.99, 0.0109},
	}
	for _, tt := range tests {
		if got := durationPercentile(tt.sorted, tt.p); !near(math.Round(got*1e6)/1e6, tt.want) {
			t.Errorf("durationPercentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name        string
		in          []float64
		med, lo, hi float64
		min, max    float64
		n           int
	}{
		{"none", nil, nan, nan, nan, nan, nan, 0},
		{"only NaN", []float64{nan}, nan, nan, nan, nan, nan, 0},
		{"one", []float64{0.7}, 0.7, 0.7, 0.7, 0.7, 0.7, 1},
		{"ten unsorted", []float64{100, 10, 90, 20, 80, 30, 70, 40, 60, 50}, 55, 12.25, 97.75, 10, 100, 10},
		{"NaN ignored", []float64{3, nan, 1, 2}, 2, 1.05, 2.95, 1, 3, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := summarize(tt.in)
			got := []float64{float64(s.Median), float64(s.Lo), float64(s.Hi), float64(s.Min), float64(s.Max)}
			want := []float64{tt.med, tt.lo, tt.hi, tt.min, tt.max}
			for i := range got {
				if !near(got[i], want[i]) {
					t.Errorf("summarize(%v) = %+v, want median/lo/hi/min/max %v", tt.in, s, want)
					break
				}
			}
			if s.N != tt.n {
				t.Errorf("N = %d, want %d", s.N, tt.n)
			}
		})
	}
}

func TestRatio(t *testing.T) {
	tests := []struct{ a, b, want float64 }{
		{3, 4, 0.75},
		{1, 0, math.NaN()},
		{math.NaN(), 1, math.NaN()},
		{1, math.NaN(), math.NaN()},
	}
	for _, tt := range tests {
		if got := ratio(tt.a, tt.b); !near(got, tt.want) {
			t.Errorf("ratio(%v, %v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestFJSON(t *testing.T) {
	tests := []struct {
		f    F
		want string
	}{
		{1.5, "1.5"},
		{F(math.NaN()), "null"},
		{F(math.Inf(1)), "null"},
		{0.123456789, "0.1235"},
		{12345, "12345"},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.f)
		if err != nil || string(b) != tt.want {
			t.Errorf("marshal %v = %s, %v; want %s", float64(tt.f), b, err, tt.want)
		}
		var back F
		if err := json.Unmarshal(b, &back); err != nil {
			t.Errorf("unmarshal %s: %v", b, err)
		}
	}
}

func TestNewGoal(t *testing.T) {
	s := summarize([]float64{0.55, 0.62, 0.65, 0.7})
	g := newGoal("x", ">=", 0.6, s)
	if !g.Pass || g.PassAll {
		t.Errorf("median 0.635 ≥ 0.6 with low end 0.555: %+v", g)
	}
	g = newGoal("y", "<=", 1.5, summarize([]float64{1.1, 1.2}))
	if !g.Pass || !g.PassAll {
		t.Errorf("%+v", g)
	}
	g = newGoal("z", "<=", 1.5, summarize(nil))
	if g.Pass {
		t.Errorf("NaN passed: %+v", g)
	}
}

func TestParseStat(t *testing.T) {
	// The command name holds spaces and a ')'.
	stat := "1234 (tok end) x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0\n"
	got, err := parseStatCPU([]byte(stat), 100)
	if err != nil || got != 3*time.Second {
		t.Errorf("parseStatCPU = %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU([]byte("1234 (x) S 1 2"), 100); err == nil {
		t.Error("short stat accepted")
	}
	procStat := "cpu  100 10 50 1000 20 5 5 30 0 0\ncpu0 50 5 25 500 10 2 3 15 0 0\n"
	busy, err := parseMachineBusy([]byte(procStat), 100)
	// user+nice+system+irq+softirq+steal = 100+10+50+5+5+30 = 200 ticks.
	if err != nil || busy != 2*time.Second {
		t.Errorf("parseMachineBusy = %v, %v; want 2s", busy, err)
	}
}

func TestChecks(t *testing.T) {
	if err := checkExample(0, http.StatusOK, "application/json", []byte(exampleBody)); err != nil {
		t.Error(err)
	}
	for _, c := range []struct {
		status int
		ct     string
		body   string
	}{
		{500, "application/json", exampleBody},
		{200, "text/plain", exampleBody},
		{200, "application/json", exampleBody[:100]},
	} {
		if checkExample(0, c.status, c.ct, []byte(c.body)) == nil {
			t.Errorf("checkExample accepted %d %s %.30s", c.status, c.ct, c.body)
		}
	}
	good := `{"data":{"id":7,"name":"bench 6","status":"active","last_used_at":"2026-01-01T00:00:00Z","usage_count":1,"expires_at":null,"created_at":"2026-01-01T00:00:00Z","allowed_ips":["127.0.0.0/8","203.0.113.12"]}}`
	if err := checkTokenJSON(7, 200, "application/json", []byte(good)); err != nil {
		t.Error(err)
	}
	bad := map[string]string{
		"other id":      strings.Replace(good, `"id":7`, `"id":8`, 1),
		"revoked":       strings.Replace(good, `"active"`, `"revoked"`, 1),
		"use not seen":  strings.Replace(good, `"usage_count":1`, `"usage_count":0`, 1),
		"not JSON":      good[:50],
		"problem":       `{"type":"about:blank","title":"Unauthorized","status":401}`,
		"no allowed ip": strings.Replace(good, `["127.0.0.0/8","203.0.113.12"]`, `null`, 1),
	}
	for name, body := range bad {
		if checkTokenJSON(7, 200, "application/json", []byte(body)) == nil {
			t.Errorf("checkTokenJSON accepted %s", name)
		}
	}
	if checkTokenJSON(7, 401, "application/json", []byte(good)) == nil {
		t.Error("checkTokenJSON accepted a 401")
	}
	if err := checkExampleProto(0, &tokenv1.GetTokenResponse{Token: exampleToken()}); err != nil {
		t.Error(err)
	}
	if checkExampleProto(0, &tokenv1.GetTokenResponse{}) == nil {
		t.Error("checkExampleProto accepted an empty response")
	}
	tok := &tokenv1.Token{Id: 7, Name: "bench 6", Status: tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE, UsageCount: 1,
		LastUsedAt: exampleToken().LastUsedAt, AllowedIps: seedAllowedIPs}
	if err := checkTokenProto(7, &tokenv1.GetTokenResponse{Token: tok}); err != nil {
		t.Error(err)
	}
	if checkTokenProto(8, &tokenv1.GetTokenResponse{Token: tok}) == nil {
		t.Error("checkTokenProto accepted another token")
	}
}

// TestGatewayOnlyBaseline checks that baseline G is tokend's gateway, not
// another bare handler: the example token's body byte for byte on the
// API route, and the gateway's own problem details where the route does
// not parse.
func TestGatewayOnlyBaseline(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveGatewayOnly(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveGatewayOnly: %v", err)
		}
	}()
	get := func(path string) (int, string, string) {
		t.Helper()
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
	}
	code, ct, body := get("/api/v1/me/tokens/7")
	if err := checkExample(7, code, ct, []byte(body)); err != nil {
		t.Errorf("GET a token: %v", err)
	}
	if code, ct, body := get("/api/v1/me/tokens/seven"); code != http.StatusBadRequest || ct != "application/problem+json" {
		t.Errorf("GET a token id that is not a number: %d %s %s, want the gateway's 400 problem", code, ct, body)
	}
}
