package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	tokenv1 "github.com/tokend/tokend/gen/tokend/v1"
)

// writeCheckInterval is how often the gRPC health status is brought in
// step with whether the database takes writes. Each check commits one small
// write (an fsync), so once a second is cheap, and a probe polling health
// learns of a failing disk, or of its recovery, within about a second.
const writeCheckInterval = time.Second

// watchWrites runs writable now and every interval until ctx is done, and
// sets the gRPC health status of the server as a whole ("") and of
// TokenService to SERVING while it passes and NOT_SERVING while it fails,
// logging each change once. A server whose disk takes no writes still
// serves reads, but a load balancer should prefer a healthy replica, and an
// operator should hear of it.
//
// It never undoes a shutdown: hs.Shutdown sets NOT_SERVING and makes hs
// ignore every later change, so a check that ends after shutdown began
// reports nothing.
func watchWrites(ctx context.Context, hs *health.Server, writable func(context.Context) error, interval time.Duration, log *slog.Logger) {
	services := []string{"", tokenv1.TokenService_ServiceDesc.ServiceName}
	set := func(s healthpb.HealthCheckResponse_ServingStatus) {
		for _, name := range services {
			hs.SetServingStatus(name, s)
		}
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	healthy, first := true, true
	for {
		cctx, cancel := context.WithTimeout(ctx, interval)
		err := writable(cctx)
		cancel()
		if ctx.Err() != nil {
			// The check may have failed only because ctx ended.
			return
		}
		if ok := err == nil; first || ok != healthy {
			if ok {
				if !first {
					log.Info("the database takes writes again: health is SERVING")
				}
				set(healthpb.HealthCheckResponse_SERVING)
			} else {
				log.Error("the database takes no writes: writes are refused with Unavailable (503), usage counts wait in memory, health is NOT_SERVING",
					slog.String("error", err.Error()))
				set(healthpb.HealthCheckResponse_NOT_SERVING)
			}
			healthy, first = ok, false
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// recentCheck remembers when check last passed or failed, so that a
// caller who can live with an answer up to maxAge old need not run it
// again. GET /readyz takes no authentication, and check commits a write:
// answered from the health monitor's result, which runs it once a
// second, any number of probes cost no disk write at all.
type recentCheck struct {
	check  func(context.Context) error
	maxAge time.Duration
	now    func() time.Time

	mu  sync.Mutex
	at  time.Time // when the last result was had; zero for none
	err error
}

// run runs check and remembers its result. A check cut short by ctx's
// deadline is a failure (a disk that does not finish a write in time is
// not ready) and is remembered; one cut short because the caller went
// away (ctx canceled: a client hung up, the server stops) is not the
// disk's answer, and is not.
func (c *recentCheck) run(ctx context.Context) error {
	err := c.check(ctx)
	if err != nil && errors.Is(ctx.Err(), context.Canceled) {
		return err
	}
	c.mu.Lock()
	c.at, c.err = c.now(), err
	c.mu.Unlock()
	return err
}

// recent returns the last result if it is younger than maxAge, else what
// run returns.
func (c *recentCheck) recent(ctx context.Context) error {
	c.mu.Lock()
	at, err := c.at, c.err
	c.mu.Unlock()
	if !at.IsZero() && c.now().Sub(at) < c.maxAge {
		return err
	}
	return c.run(ctx)
}
