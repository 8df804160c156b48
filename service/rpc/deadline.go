package rpc

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// capDeadline returns ctx with its deadline brought forward to now+max,
// whose release must be called when the call ends; or nil if ctx's own
// deadline comes first.
//
// context.WithTimeout would do, but costs a timer, a cancel context that
// registers with its parent (a lock and a map) and five allocations on
// every call, while the read path never waits on Done: its bbolt reads
// take no context. So the capped context answers Deadline and Err from the
// clock, and makes the real timer context only when someone asks for Done
// (a write waiting for the disk, or a context derived from this one).
func capDeadline(ctx context.Context, max time.Duration) *cappedContext {
	d := time.Now().Add(max)
	if cur, ok := ctx.Deadline(); ok && !cur.After(d) {
		return nil
	}
	return &cappedContext{Context: ctx, deadline: d}
}

// cappedContext is its parent with an earlier deadline; see capDeadline.
type cappedContext struct {
	context.Context // the parent
	deadline        time.Time
	once            sync.Once
	timed           atomic.Pointer[timedContext]

	mu sync.Mutex
	// err is the first error Err reported (or release fixed): as the
	// Context contract asks, Err keeps returning it.
	err error
	// released is set when the call has ended: like a context.WithTimeout
	// whose cancel has run, the context then reports Canceled (unless it
	// had already ended) to anything (a goroutine the handler left behind)
	// still holding it.
	released bool
}

// timedContext is the real context.WithDeadline a cappedContext makes
// once Done is asked for.
type timedContext struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *cappedContext) Deadline() (time.Time, bool) { return c.deadline, true }

// Done makes the timer context on first use, so that the channel closes
// when the parent's does or at the deadline, as context.WithDeadline's; or
// at once, if the call has ended.
func (c *cappedContext) Done() <-chan struct{} {
	c.once.Do(func() {
		ctx, cancel := context.WithDeadline(c.Context, c.deadline)
		c.timed.Store(&timedContext{ctx: ctx, cancel: cancel})
		c.mu.Lock()
		released := c.released
		c.mu.Unlock()
		if released {
			cancel()
		}
	})
	return c.timed.Load().ctx.Done()
}

// Err is nil until the context ends, then the same error from then on:
// the parent's, DeadlineExceeded once the deadline has passed, or Canceled
// once the call has ended. Once Done has been asked for, Err is non-nil
// exactly when Done is closed.
func (c *cappedContext) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = c.observe()
	}
	return c.err
}

// observe is the context's state now, before any error is fixed.
func (c *cappedContext) observe() error {
	if t := c.timed.Load(); t != nil {
		return t.ctx.Err()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// Value asks the timer context, once there is one, so that contexts derived
// from this one find it as their parent's cancel context.
func (c *cappedContext) Value(key any) any {
	if t := c.timed.Load(); t != nil {
		return t.ctx.Value(key)
	}
	return c.Context.Value(key)
}

func (c *cappedContext) String() string { return "rpc.capDeadline" }

// release ends the context when the call ends, as a context.WithTimeout's
// cancel does: its error becomes Canceled unless it had ended already, and
// the timer stops if Done made one.
func (c *cappedContext) release() {
	c.mu.Lock()
	if c.err == nil {
		if c.err = c.observe(); c.err == nil {
			c.err = context.Canceled
		}
	}
	c.released = true
	c.mu.Unlock()
	if t := c.timed.Load(); t != nil {
		t.cancel()
	}
}
