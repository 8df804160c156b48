//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tokend/tokend/gateway"
	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/rpc"
	"github.com/tokend/tokend/service/store"
)

// TestDiskFailure makes a running tokend's disk fail for real and checks
// what issue #5 promises. It lowers the server process's RLIMIT_FSIZE
// (prlimit) below the offset of every database page but the two meta
// pages, so every write transaction fails in the kernel with EFBIG, as it
// would on a full disk (the Go runtime ignores the SIGXFSZ that comes with
// it, so the process lives on). While the limit holds:
//
//   - authenticated reads over REST and gRPC are served, with usage counts
//     that keep rising (read-your-writes, from memory);
//   - every write is refused: REST 503 problem+json with Retry-After and no
//     internals, gRPC Unavailable with STORAGE_UNAVAILABLE and RetryInfo;
//     the cause is logged once, under the request's trace id;
//   - answers decided by the data (404) are unchanged;
//   - /readyz is 503, gRPC health is NOT_SERVING, /healthz stays 200.
//
// Once the limit is lifted, /readyz and health recover and writes work; a
// graceful stop then leaves a consistent file holding exactly the uses
// served, those made while writes failed included, and none of the refused
// writes.
func TestDiskFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the tokend binary")
	}
	dir := t.TempDir()
	bin := procBuild(t)
	db := filepath.Join(dir, "tokend.db")
	srv := procStart(t, bin, db, "--usage-flush-interval", "100ms")
	pid := srv.cmd.Process.Pid

	boot := createToken(t, db, "alice", "boot") // over the child's admin socket

	conn, err := grpc.NewClient("passthrough:///"+srv.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The in-process harness's request helpers, pointed at the child.
	api := &testServer{db: db, addrs: listening{HTTP: srv.http, GRPC: srv.grpc}, client: &http.Client{Timeout: 10 * time.Second}, conn: conn}
	grpcc := api.grpcClient()
	healthc := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// uses counts the authenticated requests made with each token: what
	// its usage_count must be, in every answer and on disk at the end.
	uses := map[int64]int64{}
	const tokens = "/api/v1/me/tokens"
	send := func(method, path string, as createdToken, body any) (*http.Response, []byte) {
		t.Helper()
		uses[as.ID]++
		if body == nil {
			return api.do(t, method, path, bearer(as.Secret))
		}
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		return api.send(t, method, path, jsonType, b, bearer(as.Secret))
	}
	createREST := func(name string) createdToken {
		t.Helper()
		uses[boot.ID]++
		m := restCreate(t, api, boot.Secret, fmt.Sprintf(`{"name":%q}`, name))
		return createdToken{ID: idOf(t, m), Secret: m["secret"].(string)}
	}
	// read reads tok with its own secret over REST and gRPC, and checks
	// that each answer counts every use so far, itself included.
	read := func(tok createdToken) {
		t.Helper()
		resp, body := send(http.MethodGet, tokenPath(tok.ID), tok, nil)
		var got struct {
			Data struct {
				UsageCount int64 `json:"usage_count"`
			}
		}
		if err := json.Unmarshal(body, &got); resp.StatusCode != http.StatusOK || err != nil {
			t.Fatalf("REST GET token %d: status %d, body %s", tok.ID, resp.StatusCode, body)
		}
		if got.Data.UsageCount != uses[tok.ID] {
			t.Errorf("REST GET token %d: usage_count %d, want %d", tok.ID, got.Data.UsageCount, uses[tok.ID])
		}
		uses[tok.ID]++
		gr, err := grpcc.GetToken(as(ctx, tok.Secret), &tokenv1.GetTokenRequest{TokenId: tok.ID})
		if err != nil {
			t.Fatalf("gRPC GetToken %d: %v", tok.ID, err)
		}
		if got := gr.GetToken().GetUsageCount(); got != uses[tok.ID] {
			t.Errorf("gRPC GetToken %d: usage_count %d, want %d", tok.ID, got, uses[tok.ID])
		}
	}
	// probes reports /readyz's status and the gRPC health of the server
	// and of TokenService, and checks that /healthz is 200 throughout.
	probes := func() (ready int, health []healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		if resp, body := api.get(t, "/healthz"); resp.StatusCode != http.StatusOK {
			t.Errorf("/healthz = %d %s, want 200: the process is alive", resp.StatusCode, body)
		}
		resp, _ := api.get(t, "/readyz")
		for _, name := range []string{"", tokenv1.TokenService_ServiceDesc.ServiceName} {
			hr, err := healthc.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
			if err != nil {
				t.Fatalf("health check %q: %v", name, err)
			}
			health = append(health, hr.GetStatus())
		}
		return resp.StatusCode, health
	}
	// waitProbes polls until /readyz answers ready and both health
	// statuses are serving.
	waitProbes := func(ready int, serving healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		want := []healthpb.HealthCheckResponse_ServingStatus{serving, serving}
		var gotReady int
		var gotHealth []healthpb.HealthCheckResponse_ServingStatus
		if !waitFor(10*time.Second, func() bool {
			gotReady, gotHealth = probes()
			return gotReady == ready && slices.Equal(gotHealth, want)
		}) {
			t.Fatalf("after 10s: /readyz %d, health %v; want %d and %v\nserver log:\n%s", gotReady, gotHealth, ready, want, srv.stderr)
		}
	}

	// Healthy: make tokens and use them.
	reader := createREST("reader")
	victim := createREST("victim")
	for range 3 {
		read(reader)
	}
	waitProbes(http.StatusOK, healthpb.HealthCheckResponse_SERVING)

	// The disk fails: no write past the two meta pages succeeds.
	var was unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, nil, &was); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	low := unix.Rlimit{Cur: uint64(2 * os.Getpagesize()), Max: was.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &low, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	waitProbes(http.StatusServiceUnavailable, healthpb.HealthCheckResponse_NOT_SERVING)

	// Reads are served, and count, and a failed flush of those counts
	// keeps them: the answers after it still include every use.
	read(reader)
	read(boot)
	flushFailed := func() bool {
		return strings.Contains(srv.stderr.String(), "flush usage counts; they stay in memory and are retried")
	}
	if !waitFor(10*time.Second, flushFailed) {
		t.Fatalf("no usage flush failed within 10s of the limit\nserver log:\n%s", srv.stderr)
	}
	read(reader)
	if resp, body := send(http.MethodGet, tokens, boot, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("list while writes fail: status %d, body %s", resp.StatusCode, body)
	}

	// Every REST write is a 503 problem that says nothing of the cause.
	internals := []string{"EFBIG", "too large", "resize", "bolt", "errno", dir, "tokend.db", store.ErrUnavailable.Error()}
	var traceIDs []string
	for _, w := range []struct {
		what, method, path string
		body               any
	}{
		{"create", http.MethodPost, tokens, map[string]string{"name": "refused-rest"}},
		{"update", http.MethodPatch, tokenPath(victim.ID), map[string]string{"name": "renamed"}},
		{"revoke", http.MethodDelete, tokenPath(victim.ID), nil},
		{"rotate", http.MethodPost, tokenPath(victim.ID) + "/rotate", nil},
	} {
		resp, body := send(w.method, w.path, boot, w.body)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Content-Type") != gateway.ProblemContentType {
			t.Errorf("REST %s while writes fail: %d %q, want 503 %s; body %s", w.what, resp.StatusCode, resp.Header.Get("Content-Type"), gateway.ProblemContentType, body)
			continue
		}
		if got := resp.Header.Get("Retry-After"); got != "5" {
			t.Errorf("REST %s: Retry-After %q, want \"5\"", w.what, got)
		}
		var p gateway.Problem
		if err := json.Unmarshal(body, &p); err != nil || p.Status != http.StatusServiceUnavailable || p.Detail == "" || p.TraceID != resp.Header.Get("X-Trace-Id") {
			t.Errorf("REST %s: problem %s (%v)", w.what, body, err)
		}
		for _, leak := range internals {
			if strings.Contains(string(body), leak) {
				t.Errorf("REST %s: the 503 body contains %q: %s", w.what, leak, body)
			}
		}
		traceIDs = append(traceIDs, p.TraceID)
	}
	// An answer the data decides is unchanged while writes fail.
	if resp, body := send(http.MethodDelete, tokenPath(999999), boot, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("REST revoke of a missing token while writes fail: status %d, want 404; body %s", resp.StatusCode, body)
	}

	// gRPC writes are Unavailable, with a reason and a retry delay.
	asBoot := as(ctx, boot.Secret)
	var createMD, revokeMD metadata.MD
	uses[boot.ID]++
	_, createErr := grpcc.CreateToken(asBoot, &tokenv1.CreateTokenRequest{Name: "refused-grpc"}, grpc.Header(&createMD))
	uses[boot.ID]++
	_, revokeErr := grpcc.RevokeToken(asBoot, &tokenv1.RevokeTokenRequest{TokenId: victim.ID}, grpc.Header(&revokeMD))
	for _, md := range []metadata.MD{createMD, revokeMD} {
		ids := md.Get(rpc.TraceHeader)
		if len(ids) != 1 {
			t.Fatalf("gRPC error without one %s header: %v", rpc.TraceHeader, md)
		}
		traceIDs = append(traceIDs, ids[0])
	}
	for what, err := range map[string]error{"CreateToken": createErr, "RevokeToken": revokeErr} {
		st := status.Convert(err)
		var retry time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				retry = ri.GetRetryDelay().AsDuration()
			}
		}
		if st.Code() != codes.Unavailable || rpc.Reason(st) != rpc.ReasonStorageUnavailable || retry != 5*time.Second {
			t.Errorf("gRPC %s while writes fail = %v (reason %q, retry %v), want Unavailable, %s, 5s", what, st, rpc.Reason(st), retry, rpc.ReasonStorageUnavailable)
		}
		for _, leak := range internals {
			if strings.Contains(st.Message(), leak) {
				t.Errorf("gRPC %s: the message contains %q: %s", what, leak, st.Message())
			}
		}
	}
	uses[boot.ID]++
	if _, err := grpcc.GetToken(asBoot, &tokenv1.GetTokenRequest{TokenId: 999999}); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC GetToken of a missing token while writes fail = %v, want NotFound", err)
	}

	// Still degraded, and still alive.
	if ready, health := probes(); ready != http.StatusServiceUnavailable || health[0] != healthpb.HealthCheckResponse_NOT_SERVING || health[1] != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("while writes fail: /readyz %d, health %v; want 503, NOT_SERVING", ready, health)
	}
	if exited, err := srv.exited(); exited {
		t.Fatalf("tokend serve died while writes failed: %v\nserver log:\n%s", err, srv.stderr)
	}
	// The disk recovers.
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &was, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	waitProbes(http.StatusOK, healthpb.HealthCheckResponse_SERVING)
	createREST("after") // creates work again
	read(victim)        // its secret was not rotated, nor the token revoked
	uses[boot.ID]++
	if _, err := grpcc.RevokeToken(asBoot, &tokenv1.RevokeTokenRequest{TokenId: victim.ID}); err != nil {
		t.Errorf("gRPC RevokeToken after recovery: %v", err)
	}
	read(reader)

	if err := srv.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := srv.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("tokend serve exited %d after SIGTERM, want 0\nserver log:\n%s", code, srv.stderr)
	}
	logs := srv.stderr.String()
	if strings.Contains(logs, "final usage flush failed") {
		t.Errorf("the final flush failed:\n%s", logs)
	}
	// Every refused write's cause was logged once, under its trace
	// id. (The log is complete only now: the server batches its writes.)
	for _, id := range traceIDs {
		lines := procTraceLines(logs, "storage unavailable", id)
		for _, l := range lines {
			if e, _ := l["error"].(string); !strings.Contains(e, "file too large") {
				t.Errorf("trace %s: logged cause %q, want the EFBIG error", id, e)
			}
		}
		if n := len(lines); n != 1 {
			t.Errorf("trace %s: the cause was logged %d times, want once\nserver log:\n%s", id, n, logs)
		}
	}
	if leak := logLeak(logs); leak != "" {
		t.Errorf("the server log contains %q", leak)
	}

	// The file is consistent and holds exactly what was acknowledged.
	boltCheck(t, db)
	st, err := store.Open(db, store.Options{LockTimeout: 2 * time.Second, MustExist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Refused writes left nothing half-written.
	if err := st.Verify(); err != nil {
		t.Errorf("store.Verify after the disk failure: %v", err)
	}
	ts, err := st.List("alice")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tok := range ts {
		names = append(names, tok.Name)
		if got, want := int64(tok.UsageCount), uses[int64(tok.ID)]; got != want {
			t.Errorf("token %d (%s): usage_count %d on disk, want %d: every use served", tok.ID, tok.Name, got, want)
		}
		if tok.ID == uint64(victim.ID) && tok.RevokedAt.IsZero() {
			t.Errorf("victim: not revoked after the revoke that followed recovery")
		}
	}
	slices.Sort(names)
	if want := []string{"after", "boot", "reader", "victim"}; !slices.Equal(names, want) {
		t.Errorf("tokens on disk: %v, want %v: refused writes must leave nothing", names, want)
	}
}
