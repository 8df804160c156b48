package auth

import (
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// ErrThrottled means the client address has failed authentication too often
// recently; the wrapping *ThrottledError says when to retry.
var ErrThrottled = fmt.Errorf("too many failed authentications")

// ThrottledError is ErrThrottled with the time left until the client may
// try again.
type ThrottledError struct {
	RetryAfter time.Duration
}

// Error says the client is throttled and for how long.
func (e *ThrottledError) Error() string {
	return fmt.Sprintf("%v; retry after %s", ErrThrottled, e.RetryAfter)
}

// Is makes errors.Is(err, ErrThrottled) true.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }

// Throttle counts failed authentications per client and refuses a client
// that has failed max times within window until the window ends, so a
// secret cannot be guessed at speed. Clients are keyed by IPv4 address or
// IPv6 /64 (one subscriber's usual allocation, so rotating addresses within
// it does not help). Memory is bounded: at most capacity clients are
// tracked, and when full, expired entries go first, then arbitrary ones.
// Expired entries are swept at most once per sweepEvery, so a flood of new
// addresses costs constant time per failure rather than a scan of the
// whole table under the lock every request's Check waits for.
// Clients that authenticate successfully are never counted.
type Throttle struct {
	max      int
	window   time.Duration
	capacity int

	mu     sync.RWMutex // Check, on every request, only reads
	m      map[netip.Addr]failures
	swept  time.Time // the last sweep of expired entries
	sweeps int       // sweeps done, for tests
}

// sweepEvery bounds how often a full table looks for expired entries.
const sweepEvery = time.Second

type failures struct {
	count int
	start time.Time
}

// NewThrottle returns a Throttle; max <= 0 disables it (nil).
func NewThrottle(max int, window time.Duration, capacity int) *Throttle {
	if max <= 0 || window <= 0 {
		return nil
	}
	if capacity <= 0 {
		capacity = 100_000
	}
	return &Throttle{max: max, window: window, capacity: capacity, m: make(map[netip.Addr]failures)}
}

func throttleKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Check returns a *ThrottledError if client may not try now.
func (t *Throttle) Check(client netip.Addr, now time.Time) error {
	if t == nil {
		return nil
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	f, ok := t.m[throttleKey(client)]
	if !ok || f.count < t.max {
		return nil
	}
	if left := f.start.Add(t.window).Sub(now); left > 0 {
		return &ThrottledError{RetryAfter: left}
	}
	return nil
}

// Fail counts one failed authentication by client.
func (t *Throttle) Fail(client netip.Addr, now time.Time) {
	if t == nil {
		return
	}
	key := throttleKey(client)
	t.mu.Lock()
	defer t.mu.Unlock()
	f, ok := t.m[key]
	if !ok || now.Sub(f.start) >= t.window {
		if !ok && len(t.m) >= t.capacity {
			t.evict(now)
		}
		f = failures{start: now}
	}
	f.count++
	t.m[key] = f
}

// evict makes room: expired windows first (if not swept within
// sweepEvery), else one arbitrary entry.
func (t *Throttle) evict(now time.Time) {
	if now.Sub(t.swept) >= sweepEvery {
		t.swept = now
		t.sweeps++
		for k, f := range t.m {
			if now.Sub(f.start) >= t.window {
				delete(t.m, k)
			}
		}
	}
	if len(t.m) < t.capacity {
		return
	}
	for k := range t.m {
		delete(t.m, k)
		return
	}
}

// Len returns how many clients are tracked.
func (t *Throttle) Len() int {
	if t == nil {
		return 0
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.m)
}
