package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// target is one server the load generator drives, over one transport.
type target struct {
	name   string // A, G, T-REST, B, T-gRPC
	server *proc  // whose CPU time is measured
	// REST
	host string
	tr   *http.Transport
	// checkHTTP validates a REST response for token id.
	checkHTTP func(id int64, status int, contentType string, body []byte) error
	// gRPC
	conn      *grpc.ClientConn
	client    tokenv1.TokenServiceClient
	checkGRPC func(id int64, resp *tokenv1.GetTokenResponse) error
}

func newHTTPTarget(name string, server *proc, host string, maxConns int, check func(int64, int, string, []byte) error) *target {
	return &target{
		name:   name,
		server: server,
		host:   host,
		tr: &http.Transport{
			MaxIdleConns:          maxConns,
			MaxIdleConnsPerHost:   maxConns,
			IdleConnTimeout:       5 * time.Minute,
			DisableCompression:    true,
			ResponseHeaderTimeout: 10 * time.Second,
			ForceAttemptHTTP2:     false,
		},
		checkHTTP: check,
	}
}

func newGRPCTarget(name string, server *proc, addr string, check func(int64, *tokenv1.GetTokenResponse) error) (*target, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &target{name: name, server: server, conn: conn, client: tokenv1.NewTokenServiceClient(conn), checkGRPC: check}, nil
}

func (t *target) close() {
	if t.tr != nil {
		t.tr.CloseIdleConnections()
	}
	if t.conn != nil {
		_ = t.conn.Close()
	}
}

// checkExample validates baseline A's response: exactly the example.
func checkExample(_ int64, status int, ct string, body []byte) error {
	if status != http.StatusOK {
		return fmt.Errorf("status %d", status)
	}
	if ct != "application/json" {
		return fmt.Errorf("content type %q", ct)
	}
	if !bytes.Equal(body, []byte(exampleBody)) {
		return fmt.Errorf("body differs from the example: %.200q", body)
	}
	return nil
}

// checkTokenJSON validates tokend's REST response for token id.
func checkTokenJSON(id int64, status int, ct string, body []byte) error {
	if status != http.StatusOK {
		return fmt.Errorf("status %d: %.300s", status, body)
	}
	if !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("content type %q", ct)
	}
	var v struct {
		Data *struct {
			ID         int64    `json:"id"`
			Name       string   `json:"name"`
			Status     string   `json:"status"`
			UsageCount int64    `json:"usage_count"`
			LastUsedAt *string  `json:"last_used_at"`
			AllowedIPs []string `json:"allowed_ips"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("body is not JSON: %v: %.200q", err, body)
	}
	d := v.Data
	switch {
	case d == nil:
		return fmt.Errorf("no data: %.200q", body)
	case d.ID != id:
		return fmt.Errorf("asked for token %d, got %d", id, d.ID)
	case d.Status != "active" || !strings.HasPrefix(d.Name, "bench ") || len(d.AllowedIPs) != len(seedAllowedIPs):
		return fmt.Errorf("unexpected token: %.200q", body)
	case d.UsageCount < 1 || d.LastUsedAt == nil:
		return fmt.Errorf("token %d: this use is not counted: %.200q", id, body)
	}
	return nil
}

// checkExampleProto validates baseline B's response: the example token.
func checkExampleProto(_ int64, resp *tokenv1.GetTokenResponse) error {
	t := resp.GetToken()
	if t.GetId() != exampleID || t.GetName() != "CI Deployments" || len(t.GetAllowedIps()) != 2 {
		return fmt.Errorf("unexpected token %v", t)
	}
	return nil
}

// checkTokenProto validates tokend's gRPC response for token id.
func checkTokenProto(id int64, resp *tokenv1.GetTokenResponse) error {
	t := resp.GetToken()
	switch {
	case t.GetId() != id:
		return fmt.Errorf("asked for token %d, got %d", id, t.GetId())
	case t.GetStatus() != tokenv1.TokenStatus_TOKEN_STATUS_ACTIVE || !strings.HasPrefix(t.GetName(), "bench ") || len(t.GetAllowedIps()) != len(seedAllowedIPs):
		return fmt.Errorf("unexpected token %v", t)
	case t.GetUsageCount() < 1 || t.GetLastUsedAt() == nil:
		return fmt.Errorf("token %d: this use is not counted", id)
	}
	return nil
}

// loadGen is the closed-loop load generator: the same code for every
// target. Every request takes the next seeded token.
type loadGen struct {
	creds *creds
	next  atomic.Uint64
}

// measurement is the raw outcome of one timed run.
type measurement struct {
	requests   int64
	errors     int64
	firstErr   string
	elapsed    time.Duration
	serverCPU  time.Duration
	clientCPU  time.Duration
	otherCPU   time.Duration   // busy CPU time of the machine not spent by the server or the harness
	latencies  []time.Duration // sorted, successful requests only
	p50, p99   float64         // µs
	serverDied bool
}

// worker state, reused across requests.
type worker struct {
	lat      []time.Duration
	errs     int64
	firstErr error
	buf      bytes.Buffer
}

// run drives t with clients workers for d and measures it.
func (g *loadGen) run(ctx context.Context, t *target, clients int, d time.Duration) (measurement, error) {
	var stop atomic.Bool
	workers := make([]*worker, clients)
	perWorker := 4096
	for i := range workers {
		workers[i] = &worker{lat: make([]time.Duration, 0, perWorker)}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(d, func() { stop.Store(true) })
	defer timer.Stop()
	go func() {
		<-ctx.Done()
		stop.Store(true)
	}()

	srv0, err := cpuTime(t.server.pid())
	if err != nil {
		return measurement{}, fmt.Errorf("%s: read CPU time: %w", t.name, err)
	}
	self0, _ := cpuTime(selfPID)
	busy0, _ := machineBusy()
	start := time.Now()
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() {
			for !stop.Load() {
				i := g.next.Add(1) - 1
				k := int(i % uint64(len(g.creds.ids)))
				id, bearer := g.creds.ids[k], g.creds.bearers[k]
				t0 := time.Now()
				var err error
				if t.tr != nil {
					err = t.doHTTP(w, id, bearer)
				} else {
					err = t.doGRPC(ctx, id, bearer)
				}
				lat := time.Since(t0)
				if err != nil {
					if ctx.Err() != nil {
						return // interrupted, not a failure
					}
					w.errs++
					if w.firstErr == nil {
						w.firstErr = err
					}
					continue
				}
				w.lat = append(w.lat, lat)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	srv1, err := cpuTime(t.server.pid())
	if err != nil {
		return measurement{}, fmt.Errorf("%s: read CPU time: %w", t.name, err)
	}
	self1, _ := cpuTime(selfPID)
	busy1, _ := machineBusy()
	if err := ctx.Err(); err != nil {
		return measurement{}, err
	}

	m := measurement{elapsed: elapsed, serverCPU: srv1 - srv0, clientCPU: self1 - self0}
	m.otherCPU = max(0, busy1-busy0-m.serverCPU-m.clientCPU)
	n := 0
	for _, w := range workers {
		n += len(w.lat)
	}
	m.latencies = make([]time.Duration, 0, n)
	for _, w := range workers {
		m.latencies = append(m.latencies, w.lat...)
		m.errors += w.errs
		if w.firstErr != nil && m.firstErr == "" {
			m.firstErr = w.firstErr.Error()
		}
	}
	m.requests = int64(len(m.latencies))
	slices.Sort(m.latencies)
	m.p50 = durationPercentile(m.latencies, 0.50)
	m.p99 = durationPercentile(m.latencies, 0.99)
	m.serverDied = t.server.exited()
	if m.serverDied && m.firstErr == "" {
		m.firstErr = t.server.name + " exited"
	}
	return m, nil
}

// doHTTP sends one GET /api/v1/me/tokens/{id} and checks the response.
func (t *target) doHTTP(w *worker, id int64, bearer string) error {
	req := &http.Request{
		Method:     http.MethodGet,
		URL:        &url.URL{Scheme: "http", Host: t.host, Path: "/api/v1/me/tokens/" + strconv.FormatInt(id, 10)},
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     http.Header{"Authorization": {bearer}},
		Host:       t.host,
	}
	resp, err := t.tr.RoundTrip(req)
	if err != nil {
		return err
	}
	w.buf.Reset()
	_, err = w.buf.ReadFrom(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	return t.checkHTTP(id, resp.StatusCode, resp.Header.Get("Content-Type"), w.buf.Bytes())
}

// doGRPC calls GetToken with the bearer as authorization metadata and
// checks the response.
func (t *target) doGRPC(ctx context.Context, id int64, bearer string) error {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", bearer)
	resp, err := t.client.GetToken(ctx, &tokenv1.GetTokenRequest{TokenId: id})
	if err != nil {
		return err
	}
	return t.checkGRPC(id, resp)
}

// selfPID is the harness's own process id, for its CPU time.
var selfPID = os.Getpid()
