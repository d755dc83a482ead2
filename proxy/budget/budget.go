// Package budget bounds the bytes that requests hold in memory at once,
// across the whole process: push and pull bodies as they are read, and
// client views as they come from the upstream. Each request takes a Lease
// and grows it as it reads; when the budget is spent, Grow waits a moment
// for other requests to finish, then refuses, and the request answers 503
// instead of pushing the process over its memory limit.
package budget

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"
	"time"
)

// ErrBusy: the budget stayed spent for the whole wait; retry later.
var ErrBusy = errors.New("the sidecar's in-flight memory budget is spent")

// TooLargeError: a request needs more than the whole budget, so it could
// never be served, however long it waits.
type TooLargeError struct{ Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("needs more than the whole in-flight budget of %d bytes (SIDECAR_MAX_INFLIGHT_VIEW_BYTES)", e.Limit)
}

// Budget is a process-wide count of bytes in flight, up to a limit. It is
// safe for concurrent use.
type Budget struct {
	limit int64
	wait  time.Duration

	mu      sync.Mutex
	used    int64
	freed   chan struct{} // closed (and replaced) whenever bytes are given back
	refused int64
}

// New returns a budget of limit bytes; Grow waits at most wait for room.
func New(limit int64, wait time.Duration) *Budget {
	return &Budget{limit: limit, wait: wait, freed: make(chan struct{})}
}

// Limit is the budget's size in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// InUse is the number of bytes currently held by leases.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Refused counts the Grow calls that found no room in time.
func (b *Budget) Refused() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// Lease starts an empty lease: one request's share of the budget.
func (b *Budget) Lease() *Lease { return &Lease{b: b} }

// Lease is one request's bytes. Grow may be called from several goroutines
// (a view's sources are read concurrently); Release gives everything back.
type Lease struct {
	b    *Budget
	held int64 // guarded by b.mu
}

// Grow takes n more bytes for the lease, waiting up to the budget's wait
// for other leases to give bytes back. It fails with *TooLargeError when the
// lease would hold more than the whole budget, with ErrBusy when no room
// came in time, and with ctx's error when ctx ends first.
func (l *Lease) Grow(ctx context.Context, n int64) error {
	b := l.b
	var deadline <-chan time.Time
	for {
		b.mu.Lock()
		if l.held+n > b.limit {
			b.mu.Unlock()
			return &TooLargeError{Limit: b.limit}
		}
		if b.used+n <= b.limit {
			b.used += n
			l.held += n
			b.mu.Unlock()
			return nil
		}
		freed := b.freed
		b.mu.Unlock()
		if deadline == nil {
			t := time.NewTimer(b.wait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-freed:
		case <-deadline:
			b.mu.Lock()
			b.refused++
			b.mu.Unlock()
			return ErrBusy
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Held is the number of bytes the lease holds.
func (l *Lease) Held() int64 {
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	return l.held
}

// Release gives the lease's bytes back. The lease may grow again after it.
func (l *Lease) Release() { l.shrink(math.MaxInt64) }

// Limit is the size of the budget the lease draws from: no lease can hold
// more.
func (l *Lease) Limit() int64 { return l.b.limit }

// shrink gives n of the lease's bytes back (all of them at most) and wakes
// the waiting Grow calls.
func (l *Lease) shrink(n int64) {
	b := l.b
	b.mu.Lock()
	defer b.mu.Unlock()
	n = min(n, l.held)
	if n <= 0 {
		return
	}
	b.used -= n
	l.held -= n
	close(b.freed)
	b.freed = make(chan struct{})
}

// Reader returns r, charging l for every byte read from it. A Read whose
// bytes find no room returns Grow's error. Bytes are taken a step ahead of
// the reads; what was taken but not read is given back when r ends (EOF or
// an error), so many small reads cost what they read.
func (l *Lease) Reader(ctx context.Context, r io.Reader) io.Reader {
	return &chargedReader{ctx: ctx, r: r, l: l}
}

// chargeStep is how much a chargedReader takes at a time: few enough calls
// into the shared budget, little enough held ahead of the bytes.
const chargeStep = 64 << 10

type chargedReader struct {
	ctx     context.Context
	r       io.Reader
	l       *Lease
	prepaid int64 // charged but not yet read
}

func (c *chargedReader) Read(p []byte) (int, error) {
	if c.prepaid == 0 {
		if err := c.l.Grow(c.ctx, chargeStep); err != nil {
			return 0, err
		}
		c.prepaid = chargeStep
	}
	if int64(len(p)) > c.prepaid {
		p = p[:c.prepaid]
	}
	n, err := c.r.Read(p)
	c.prepaid -= int64(n)
	if err != nil && c.prepaid > 0 {
		c.l.shrink(c.prepaid)
		c.prepaid = 0
	}
	return n, err
}
