package auth

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestThrottle(t *testing.T) {
	t0 := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	th := NewThrottle(3, time.Minute, 100)
	a := netip.MustParseAddr("198.51.100.1")
	b := netip.MustParseAddr("198.51.100.2")
	for i := range 3 {
		if err := th.Check(a, t0); err != nil {
			t.Fatalf("after %d failures: %v, want allowed", i, err)
		}
		th.Fail(a, t0.Add(time.Duration(i)*time.Second))
	}
	err := th.Check(a, t0.Add(10*time.Second))
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrThrottled) || te.RetryAfter != 50*time.Second {
		t.Fatalf("after 3 failures: %v, want throttled for 50s", err)
	}
	if err := th.Check(b, t0); err != nil {
		t.Errorf("another address is throttled too: %v", err)
	}
	if err := th.Check(netip.MustParseAddr("::ffff:198.51.100.1"), t0); err == nil {
		t.Error("the IPv4-mapped form of a throttled address is not throttled")
	}
	if err := th.Check(a, t0.Add(time.Minute)); err != nil {
		t.Errorf("after the window: %v, want allowed", err)
	}
	// IPv6 clients are counted per /64.
	for i := range 3 {
		th.Fail(netip.MustParseAddr("2001:db8:1:2::"+string(rune('a'+i))), t0)
	}
	if err := th.Check(netip.MustParseAddr("2001:db8:1:2:ffff::1"), t0); err == nil {
		t.Error("rotating addresses within one /64 escapes the throttle")
	}
	if err := th.Check(netip.MustParseAddr("2001:db8:1:3::1"), t0); err != nil {
		t.Errorf("the next /64 is throttled too: %v", err)
	}
}

func TestThrottleMemoryIsBounded(t *testing.T) {
	t0 := time.Now()
	th := NewThrottle(5, time.Minute, 1000)
	for i := range 50_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		th.Fail(a, t0)
	}
	if n := th.Len(); n > 1000 {
		t.Errorf("tracking %d addresses, want at most 1000", n)
	}
	// A flood of new addresses while the table is full of live entries
	// must not scan the table for each one: 49,000 evictions at one
	// instant, then more a minute later, sweep once per sweepEvery.
	if th.sweeps != 1 {
		t.Errorf("%d sweeps of the table for one instant's flood, want 1", th.sweeps)
	}
	later := t0.Add(2 * time.Minute)
	for i := range 1000 {
		th.Fail(netip.AddrFrom4([4]byte{11, 0, byte(i >> 8), byte(i)}), later)
	}
	if th.sweeps != 2 {
		t.Errorf("%d sweeps after a second flood, want 2", th.sweeps)
	}
	// That sweep freed the expired entries: the new addresses are all
	// tracked, none evicted by another.
	for i := range 1000 {
		a := netip.AddrFrom4([4]byte{11, 0, byte(i >> 8), byte(i)})
		if _, ok := th.m[throttleKey(a)]; !ok {
			t.Fatalf("%v is not tracked after the sweep made room", a)
		}
	}
}

func TestThrottleDisabled(t *testing.T) {
	th := NewThrottle(0, time.Minute, 0)
	th.Fail(netip.MustParseAddr("192.0.2.1"), time.Now())
	if err := th.Check(netip.MustParseAddr("192.0.2.1"), time.Now()); err != nil || th.Len() != 0 {
		t.Errorf("a disabled throttle refused or tracked: %v, %d", err, th.Len())
	}
}
