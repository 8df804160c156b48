package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
	"github.com/tokend/tokend/service/testutil"
)

// TestWatchWrites drives watchWrites with a check the test controls and
// reads the health server it sets, as a client's Check would: NOT_SERVING
// while writes fail, SERVING once they work, one log line per change, and
// nothing undoes a shutdown.
func TestWatchWrites(t *testing.T) {
	var failing atomic.Bool
	var checks atomic.Int64
	writable := func(context.Context) error {
		checks.Add(1)
		if failing.Load() {
			return errors.New("write tokend.db: file too large")
		}
		return nil
	}
	hs := health.NewServer()
	logs := &testutil.SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		watchWrites(ctx, hs, writable, 5*time.Millisecond, slog.New(slog.NewJSONHandler(logs, nil)))
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// statusIs polls until every name has status want; after returns with
	// checks made since, so that a status that should stay put is seen
	// after further checks, not before the first.
	statusIs := func(want healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		from := checks.Load()
		if !waitFor(5*time.Second, func() bool {
			ok := checks.Load() >= from+3
			for _, name := range []string{"", tokenv1.TokenService_ServiceDesc.ServiceName} {
				resp, err := hs.Check(context.Background(), &healthpb.HealthCheckRequest{Service: name})
				ok = ok && err == nil && resp.GetStatus() == want
			}
			return ok
		}) {
			t.Fatalf("health did not become %v within 5s\nlogs:\n%s", want, logs)
		}
	}

	statusIs(healthpb.HealthCheckResponse_SERVING)
	failing.Store(true)
	statusIs(healthpb.HealthCheckResponse_NOT_SERVING)
	failing.Store(false)
	statusIs(healthpb.HealthCheckResponse_SERVING)
	failing.Store(true)
	statusIs(healthpb.HealthCheckResponse_NOT_SERVING)
	if got := strings.Count(logs.String(), "takes no writes"); got != 2 {
		t.Errorf("logged the failure %d times, want once per change (2):\n%s", got, logs)
	}
	if got := strings.Count(logs.String(), "takes writes again"); got != 1 {
		t.Errorf("logged the recovery %d times, want 1:\n%s", got, logs)
	}
	if !strings.Contains(logs.String(), "file too large") {
		t.Errorf("the log lacks the cause:\n%s", logs)
	}

	// Shutdown began while writes fail; writes work again, and the server
	// must still say NOT_SERVING.
	hs.Shutdown()
	failing.Store(false)
	statusIs(healthpb.HealthCheckResponse_NOT_SERVING)

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("watchWrites did not return within 5s of its context's end")
	}
}
