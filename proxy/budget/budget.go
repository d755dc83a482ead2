// Package budget bounds the bytes that requests hold in memory at once,
// across the whole process (push and pull bodies as they are read, client
// views as they come from the upstream), and shares them fairly between
// the callers holding them. Each request takes a Lease in its caller's
// name and grows it as it reads; when there is no room, Grow waits a
// moment, or makes a caller holding more than its share give back, then
// refuses, and the request answers 503 instead of pushing the process over
// its memory limit.
//
// # Contract
//
//   - Bound: the leases together never hold more than Limit. A lease that
//     would hold more than Limit by itself fails with *TooLargeError at
//     once: it could never be served, however long it waited.
//   - Keys: a lease belongs to a key, who is calling (the sidecar passes
//     identity.Caller.Key: the user, else the client's address; never a
//     client group or client id, which callers invent). A key's holdings
//     are the sum of its leases'. A key is active while it holds bytes or
//     a Grow of it waits.
//   - Fair share: with N active keys, a key's share is Limit/N, or its
//     largest lease when that is more: every caller may hold one request
//     in full (up to Limit), and what its other requests hold counts
//     against Limit/N. A key whose holdings exceed its share is over it.
//     Bytes of pre-empted leases (below) no longer count for their key.
//   - Grow takes room that is free, except that a grow which would put its
//     key over its share waits while another key that is within its share
//     waits: a newcomer gets freed room before the caller holding the most.
//   - Pre-emption: when a grow that keeps its key within its share finds
//     no room, and the bytes already on their way back (below) would not
//     make room either, the budget picks, among the keys over their share
//     that hold more than the grower's key will, the one holding the most,
//     and pre-empts its largest interruptible lease (the newest of equal
//     ones: the least work lost). So bytes move only from a caller holding
//     more than its share, and more than the grower, to a caller within its
//     share; and a caller's last request is never pre-empted (the share's
//     floor), only ended by its own timeouts.
//   - A lease is interruptible only between Interruptible and the done it
//     returns: while its request waits on someone (the caller's body, the
//     upstream's view, the caller reading the answer), not while it works.
//     Pre-empting a lease calls its stop function, once, on the pre-empting
//     goroutine and never after done has returned (a lease picked as its
//     holder calls done is pre-empted but not stopped). From then on every
//     Grow of the lease fails with ErrPreempted, and Err reports it. Its
//     bytes come back when its holder releases them, as for any lease:
//     until then they are counted as on their way back, so one shortage
//     pre-empts one lease, not one per waiting grow.
//   - Waiting: one Grow waits at most the budget's wait, then fails with
//     ErrBusy (counted by Refused), or with ctx's error when ctx ends
//     first. ErrPreempted wraps ErrBusy: both mean "retry in a moment".
//
// A Budget and its leases are safe for concurrent use.
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

// ErrPreempted: the lease was pre-empted to make room for a caller holding
// less. It wraps ErrBusy.
var ErrPreempted = fmt.Errorf("%w: this request was stopped to make room, its caller holding more than a fair share", ErrBusy)

// TooLargeError: a request needs more than the whole budget, so it could
// never be served, however long it waits.
type TooLargeError struct{ Limit int64 }

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("needs more than the whole in-flight budget of %d bytes (SIDECAR_MAX_INFLIGHT_VIEW_BYTES)", e.Limit)
}

// Budget is a process-wide count of bytes in flight, up to a limit, by
// key. It is safe for concurrent use.
type Budget struct {
	limit int64
	wait  time.Duration

	mu      sync.Mutex
	used    int64
	pending int64              // held by pre-empted leases: on their way back
	keys    map[string]*holder // the active keys
	waiting int                // Grow calls waiting, of every key
	changed chan struct{}      // closed (and replaced) when bytes come back or a waiter leaves
	refused int64
	preempt int64
	leases  int64 // leases made: each lease's sequence number
}

// holder is one active key: what it holds and who of it waits.
type holder struct {
	held    int64 // every lease's bytes, pre-empted ones included
	pending int64 // of held, the pre-empted leases'
	waiting int
	leases  map[*Lease]struct{} // the leases holding bytes
}

// New returns a budget of limit bytes; Grow waits at most wait for room.
func New(limit int64, wait time.Duration) *Budget {
	return &Budget{limit: limit, wait: wait, keys: map[string]*holder{}, changed: make(chan struct{})}
}

// Limit is the budget's size in bytes.
func (b *Budget) Limit() int64 { return b.limit }

// InUse is the number of bytes currently held by leases.
func (b *Budget) InUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// HeldBy is the number of bytes the leases of key hold.
func (b *Budget) HeldBy(key string) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h := b.keys[key]; h != nil {
		return h.held
	}
	return 0
}

// Refused counts the Grow calls that found no room in time.
func (b *Budget) Refused() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused
}

// Preempted counts the leases pre-empted.
func (b *Budget) Preempted() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.preempt
}

// Lease starts an empty lease for key: one request's part of the budget,
// charged to whoever is calling.
func (b *Budget) Lease(key string) *Lease {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.leases++
	return &Lease{b: b, key: key, seq: b.leases}
}

// Lease is one request's bytes. Grow may be called from several goroutines
// (a view's sources are read concurrently); Release gives everything back.
type Lease struct {
	b   *Budget
	key string
	seq int64 // later leases have larger ones

	// guarded by b.mu
	held          int64
	preempted     bool
	interruptible bool // between Interruptible and its done

	stopMu sync.Mutex // held while stop is set, cleared or called
	stop   func()
}

// Grow takes n more bytes for the lease, waiting up to the budget's wait
// for room (see the package contract for who gets room first, and when
// another caller's lease is pre-empted for it). It fails with
// *TooLargeError when the lease would hold more than the whole budget,
// with ErrPreempted once the lease is pre-empted, with ErrBusy when no room
// came in time, and with ctx's error when ctx ends first.
func (l *Lease) Grow(ctx context.Context, n int64) error {
	b := l.b
	var deadline <-chan time.Time
	waiting := false
	defer func() {
		if waiting {
			b.mu.Lock()
			b.unwait(l.key)
			b.mu.Unlock()
		}
	}()
	for {
		b.mu.Lock()
		switch {
		case l.preempted:
			b.mu.Unlock()
			return ErrPreempted
		case l.held+n > b.limit:
			b.mu.Unlock()
			return &TooLargeError{Limit: b.limit}
		case b.admits(l, n):
			b.take(l, n)
			b.mu.Unlock()
			return nil
		}
		if !waiting {
			waiting = true
			b.holder(l.key).waiting++
			b.waiting++
		}
		victim := b.pickVictim(l, n)
		changed := b.changed
		b.mu.Unlock()
		if victim != nil {
			victim.interrupt()
			continue // its bytes are on their way back: wait for them
		}
		if deadline == nil {
			t := time.NewTimer(b.wait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-changed:
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

// Err is ErrPreempted once the lease is pre-empted, and nil before.
func (l *Lease) Err() error {
	l.b.mu.Lock()
	defer l.b.mu.Unlock()
	if l.preempted {
		return ErrPreempted
	}
	return nil
}

// Release gives the lease's bytes back. The lease may grow again after it
// (unless it was pre-empted).
func (l *Lease) Release() { l.shrink(math.MaxInt64) }

// Shrink gives n of the lease's bytes back (at most all it holds): bytes
// its request no longer holds before it ends, such as the pages of a view
// already sent to the client.
func (l *Lease) Shrink(n int64) { l.shrink(n) }

// Limit is the size of the budget the lease draws from: no lease can hold
// more.
func (l *Lease) Limit() int64 { return l.b.limit }

// Interruptible makes the lease one the budget may pre-empt, until done is
// called: pre-empting it calls stop, which must end the wait the request
// is in (a body read, a fetch, a write) so that it releases the lease
// soon. stop is called at most once, never after done has returned, and
// at once if the lease was already pre-empted; it must be quick and must
// not call Interruptible or done. One Interruptible at a time per lease,
// and its done once.
func (l *Lease) Interruptible(stop func()) (done func()) {
	b := l.b
	l.stopMu.Lock()
	b.mu.Lock()
	already := l.preempted
	l.interruptible = !already
	b.mu.Unlock()
	if already {
		l.stopMu.Unlock()
		stop()
		return func() {}
	}
	l.stop = stop
	l.stopMu.Unlock()
	return func() {
		l.stopMu.Lock()
		defer l.stopMu.Unlock()
		b.mu.Lock()
		l.interruptible = false
		b.mu.Unlock()
		l.stop = nil
	}
}

// interrupt calls the stop function of a lease just pre-empted, if it is
// still set.
func (l *Lease) interrupt() {
	l.stopMu.Lock()
	defer l.stopMu.Unlock()
	if stop := l.stop; stop != nil {
		l.stop = nil
		stop()
	}
}

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
	h := b.keys[l.key]
	b.used -= n
	l.held -= n
	h.held -= n
	if l.preempted {
		b.pending -= n
		h.pending -= n
	}
	if l.held == 0 {
		delete(h.leases, l)
	}
	b.forget(l.key, h)
	b.broadcast()
}

// holder returns key's holder, making the key active. b.mu is held.
func (b *Budget) holder(key string) *holder {
	h := b.keys[key]
	if h == nil {
		h = &holder{leases: map[*Lease]struct{}{}}
		b.keys[key] = h
	}
	return h
}

// forget makes key inactive when it holds nothing and nobody of it waits.
// b.mu is held.
func (b *Budget) forget(key string, h *holder) {
	if h.held == 0 && h.waiting == 0 {
		delete(b.keys, key)
	}
}

// unwait ends one waiting Grow of key. b.mu is held.
func (b *Budget) unwait(key string) {
	h := b.keys[key]
	h.waiting--
	b.waiting--
	b.forget(key, h)
	b.broadcast() // a grow over its share may have waited for this one
}

func (b *Budget) broadcast() {
	close(b.changed)
	b.changed = make(chan struct{})
}

func (b *Budget) take(l *Lease, n int64) {
	h := b.holder(l.key)
	if l.held == 0 {
		h.leases[l] = struct{}{}
	}
	b.used += n
	l.held += n
	h.held += n
}

// admits reports whether l may take n bytes now: they are free, and the
// key stays within its share or no other key within its share waits.
// b.mu is held.
func (b *Budget) admits(l *Lease, n int64) bool {
	if b.used+n > b.limit {
		return false
	}
	own := 0
	if h := b.keys[l.key]; h != nil {
		own = h.waiting
	}
	if b.waiting == own || b.withinAfter(l, n) {
		return true
	}
	for key, h := range b.keys {
		if key != l.key && h.waiting > 0 && !b.over(h) {
			return false
		}
	}
	return true
}

// pickVictim pre-empts a lease for l's grow of n, if the contract allows
// one and one is needed, and returns it (its stop is not yet called).
// b.mu is held.
func (b *Budget) pickVictim(l *Lease, n int64) *Lease {
	if b.used-b.pending+n <= b.limit || !b.withinAfter(l, n) {
		return nil // room is on its way, or the grower is over its share
	}
	mine := n
	if h := b.keys[l.key]; h != nil {
		mine += h.held - h.pending
	}
	var most *holder
	for key, h := range b.keys {
		if key == l.key || h.held-h.pending <= mine || !b.over(h) {
			continue
		}
		if most == nil || h.held-h.pending > most.held-most.pending {
			if largestOf(h, true) != nil {
				most = h
			}
		}
	}
	if most == nil {
		return nil
	}
	v := largestOf(most, true)
	v.preempted = true
	b.pending += v.held
	most.pending += v.held
	b.preempt++
	return v
}

// largestOf is h's largest lease not pre-empted (and interruptible, if
// asked), the newest of equal ones, or nil. b.mu is held.
func largestOf(h *holder, interruptible bool) *Lease {
	var big *Lease
	for l := range h.leases {
		if l.preempted || interruptible && !l.interruptible {
			continue
		}
		if big == nil || l.held > big.held || l.held == big.held && l.seq > big.seq {
			big = l
		}
	}
	return big
}

// share is a key's fair share when its largest lease holds largest bytes.
// b.mu is held.
func (b *Budget) share(largest int64, active int) int64 {
	return max(b.limit/int64(max(active, 1)), largest)
}

// over reports whether an active key holds more than its share. b.mu is
// held.
func (b *Budget) over(h *holder) bool {
	var largest int64
	if l := largestOf(h, false); l != nil {
		largest = l.held
	}
	return h.held-h.pending > b.share(largest, len(b.keys))
}

// withinAfter reports whether l's key stays within its share once l holds
// n more bytes. b.mu is held.
func (b *Budget) withinAfter(l *Lease, n int64) bool {
	active := len(b.keys)
	held, largest := n, l.held+n
	if h := b.keys[l.key]; h != nil {
		held += h.held - h.pending
		if big := largestOf(h, false); big != nil {
			largest = max(largest, big.held)
		}
	} else {
		active++
	}
	return held <= b.share(largest, active)
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
