package budget

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// holding is a lease a test request holds: interruptible ones release
// their bytes (on their own goroutine, as a request that ends) when
// pre-empted.
type holding struct {
	key           string
	n             int64
	interruptible bool
}

// holdAll grows a lease for each holding and returns the leases.
func holdAll(t *testing.T, b *Budget, hs []holding) []*Lease {
	t.Helper()
	ls := make([]*Lease, len(hs))
	for i, h := range hs {
		l := b.Lease(h.key)
		if err := l.Grow(context.Background(), h.n); err != nil {
			t.Fatalf("holding %d (%s, %d bytes): %v", i, h.key, h.n, err)
		}
		if h.interruptible {
			done := l.Interruptible(func() { go l.Release() })
			t.Cleanup(done)
		}
		ls[i] = l
	}
	return ls
}

// idle reports what a budget keeps about keys and waiters; all zero once
// every lease is released and no Grow waits.
func (b *Budget) idle() (keys, waiting int, pending int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.keys), b.waiting, b.pending
}

// TestFairShare: who gets room, and whose lease is pre-empted for it, when
// a caller finds the budget spent. Each case fills the budget, then one
// new lease of grower grows.
func TestFairShare(t *testing.T) {
	cases := []struct {
		name   string
		limit  int64
		holds  []holding
		grower string
		n      int64
		// wantErr nil: the grow succeeds (after the pre-empted lease gives
		// its bytes back); ErrBusy: it waits and is refused.
		wantErr error
		// preempted: the indexes in holds of the leases pre-empted.
		preempted []int
	}{
		{
			// The finding: one caller's several requests hold it all; a
			// newcomer gets room from the largest of them, not a refusal.
			name: "a newcomer pre-empts the largest request of the caller over its share", limit: 100,
			holds:  []holding{{"a", 30, true}, {"a", 30, true}, {"a", 40, true}},
			grower: "b", n: 10, preempted: []int{2},
		},
		{
			// One request of one caller may take the whole budget (the share's
			// floor): ending it would leave that caller with nothing.
			// TestInflightBudget relies on this for a pull.
			name: "a caller's last request is never pre-empted", limit: 100,
			holds:  []holding{{"a", 100, true}},
			grower: "b", n: 10, wantErr: ErrBusy,
		},
		{
			// A request that is working (not waiting on anyone) cannot be
			// stopped early; the interruptible one is taken though smaller.
			name: "only interruptible requests are pre-empted", limit: 100,
			holds:  []holding{{"a", 60, false}, {"a", 40, true}},
			grower: "b", n: 10, preempted: []int{1},
		},
		{
			name: "nothing interruptible: the newcomer waits and is refused", limit: 100,
			holds:  []holding{{"a", 50, false}, {"a", 50, false}},
			grower: "b", n: 10, wantErr: ErrBusy,
		},
		{
			// Only a caller within its share may make another give back;
			// b, already over Limit/3 in two requests, waits like before.
			name: "a caller over its share pre-empts nobody", limit: 99,
			holds:  []holding{{"a", 15, true}, {"a", 15, true}, {"a", 15, true}, {"b", 20, false}, {"b", 20, false}, {"c", 14, false}},
			grower: "b", n: 5, wantErr: ErrBusy,
		},
		{
			// b holds one large request (within its share by the floor); a is
			// over its share but holds less than b would: bytes never move to
			// the caller holding more.
			name: "bytes move only to a caller that will hold less", limit: 99,
			holds:  []holding{{"a", 20, true}, {"a", 20, true}, {"b", 55, false}, {"c", 4, false}},
			grower: "b", n: 4, wantErr: ErrBusy,
		},
		{
			// a and c are both over their share; c holds the most and gives
			// back its largest request.
			name: "the caller holding the most gives back first", limit: 120,
			holds:  []holding{{"a", 25, true}, {"a", 25, true}, {"c", 15, true}, {"c", 30, true}, {"c", 15, true}, {"d", 10, false}},
			grower: "b", n: 20, preempted: []int{3},
		},
		{
			// A newcomer whose own caller holds a request already is still
			// within its share: it may take from the caller over it, whose
			// newest request of equal ones goes (the least work lost).
			name: "a second request within the share pre-empts", limit: 100,
			holds:  []holding{{"a", 30, true}, {"a", 30, true}, {"a", 30, true}, {"b", 10, false}},
			grower: "b", n: 10, preempted: []int{2},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wait := time.Minute // the pre-empted lease's bytes come back
			if tc.wantErr != nil {
				wait = 10 * time.Millisecond // nothing will come back
			}
			b := New(tc.limit, wait)
			ls := holdAll(t, b, tc.holds)
			l := b.Lease(tc.grower)
			if err := l.Grow(context.Background(), tc.n); !errors.Is(err, tc.wantErr) {
				t.Fatalf("grow of %s by %d: %v, want %v", tc.grower, tc.n, err, tc.wantErr)
			}
			var got []int
			for i, hl := range ls {
				if errors.Is(hl.Err(), ErrPreempted) {
					got = append(got, i)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.preempted) && !(len(got) == 0 && len(tc.preempted) == 0) {
				t.Errorf("pre-empted %v, want %v", got, tc.preempted)
			}
			if int(b.Preempted()) != len(tc.preempted) {
				t.Errorf("Preempted() = %d, want %d", b.Preempted(), len(tc.preempted))
			}
			if used := b.InUse(); used > tc.limit {
				t.Errorf("in use %d over the limit %d", used, tc.limit)
			}
			l.Release()
			for _, hl := range ls {
				hl.Release()
			}
			if keys, waiting, pending := b.idle(); b.InUse() != 0 || keys != 0 || waiting != 0 || pending != 0 {
				t.Errorf("after every release: in use %d, %d keys, %d waiting, %d pending", b.InUse(), keys, waiting, pending)
			}
		})
	}
}

// A caller over its share does not take room a caller within its share is
// waiting for, even when that room is enough for it alone: the newcomer
// gets it first, then the other.
func TestNewcomerGetsFreedRoomFirst(t *testing.T) {
	b := New(100, time.Minute)
	a := holdAll(t, b, []holding{{"a", 30, false}, {"a", 30, false}, {"a", 30, false}})
	newcomer := b.Lease("b")
	newcomerDone := make(chan error, 1)
	go func() { newcomerDone <- newcomer.Grow(context.Background(), 20) }()
	waitFor(t, "the newcomer to wait", func() bool { _, w, _ := b.idle(); return w == 1 })

	// a is over its share (90 of 100, two callers) and a newcomer within
	// its share waits: a's grow of 5 fits the free 10 but must wait.
	type result struct {
		err          error
		newcomerHeld int64
	}
	aDone := make(chan result, 1)
	go func() {
		err := a[0].Grow(context.Background(), 5)
		aDone <- result{err, newcomer.Held()}
	}()
	waitFor(t, "a's grow to wait too", func() bool { _, w, _ := b.idle(); return w == 2 })

	a[1].Release() // 40 free: the newcomer's 20, then a's 5
	if err := <-newcomerDone; err != nil {
		t.Fatalf("newcomer: %v", err)
	}
	r := <-aDone
	if r.err != nil {
		t.Fatalf("a's grow: %v", r.err)
	}
	if r.newcomerHeld != 20 {
		t.Errorf("a's grow got room while the newcomer held %d of its 20", r.newcomerHeld)
	}
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestPreemption: what a pre-empted lease sees, and the races around
// picking one.
func TestPreemption(t *testing.T) {
	t.Run("a pre-empted lease's grows fail with ErrPreempted, which is ErrBusy", func(t *testing.T) {
		b := New(100, time.Minute)
		ls := holdAll(t, b, []holding{{"a", 50, true}, {"a", 50, true}})
		if err := b.Lease("b").Grow(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		var victim *Lease
		for _, l := range ls {
			if l.Err() != nil {
				victim = l
			}
		}
		if victim == nil {
			t.Fatal("no lease pre-empted")
		}
		err := victim.Grow(context.Background(), 1)
		if !errors.Is(err, ErrPreempted) || !errors.Is(err, ErrBusy) {
			t.Errorf("grow after pre-emption: %v, want ErrPreempted (an ErrBusy)", err)
		}
	})

	// A lease pre-empted between two interruptible phases (say its body
	// was read and its fetch not begun) is stopped as the next begins.
	t.Run("Interruptible after pre-emption stops at once", func(t *testing.T) {
		b := New(100, time.Minute)
		ls := holdAll(t, b, []holding{{"a", 50, false}, {"a", 50, true}})
		if err := b.Lease("b").Grow(context.Background(), 10); err != nil {
			t.Fatal(err)
		}
		if ls[1].Err() == nil {
			t.Fatal("the interruptible lease was not pre-empted")
		}
		stopped := false
		ls[1].Interruptible(func() { stopped = true })()
		if !stopped {
			t.Error("Interruptible on a pre-empted lease did not stop at once")
		}
	})

	// The holder may end its interruptible phase, or release everything,
	// just as the lease is picked: stop is never called after done
	// returned, nothing is counted twice, and everything comes back.
	t.Run("a lease released or done while it is picked", func(t *testing.T) {
		for i := range 200 {
			b := New(100, time.Minute)
			var after atomic.Bool
			ls := make([]*Lease, 4)
			dones := make([]func(), 4)
			for j := range ls {
				ls[j] = b.Lease("a")
				if err := ls[j].Grow(context.Background(), 25); err != nil {
					t.Fatal(err)
				}
				l := ls[j]
				dones[j] = l.Interruptible(func() {
					if after.Load() {
						t.Error("stop called after done returned")
					}
					go l.Release()
				})
			}
			var wg sync.WaitGroup
			wg.Go(func() {
				if err := b.Lease("b").Grow(context.Background(), 10); err != nil {
					t.Errorf("round %d: newcomer: %v", i, err)
				}
			})
			wg.Go(func() {
				for j := range ls {
					dones[j]()
				}
				after.Store(true)
				for _, l := range ls {
					l.Release()
				}
			})
			wg.Wait()
			if keys, waiting, pending := b.idle(); b.InUse() != 10 || keys != 1 || waiting != 0 || pending != 0 {
				t.Fatalf("round %d: in use %d (want the newcomer's 10), %d keys, %d waiting, %d pending", i, b.InUse(), keys, waiting, pending)
			}
		}
	})
}

// One caller keeps 16 interruptible requests of 540 bytes open (each
// holds its bytes until it is pre-empted), in a budget of 1000, while 8
// callers with one small request each come and go, each when the budget is
// full: the hog is pre-empted for them, every one of theirs is served, the budget never holds more
// than its limit, and nothing is left behind.
func TestConcurrentCallersWithPreemption(t *testing.T) {
	const limit = 1000
	b := New(limit, time.Second)
	var peak atomic.Int64
	notePeak := func() {
		for used := b.InUse(); ; {
			p := peak.Load()
			if used <= p || peak.CompareAndSwap(p, used) {
				return
			}
		}
	}
	others := make(chan struct{})
	var hogs sync.WaitGroup
	for range 16 {
		hogs.Go(func() {
			for {
				select {
				case <-others:
					return
				default:
				}
				l := b.Lease("hog")
				ctx, cancel := context.WithCancel(context.Background())
				done := l.Interruptible(cancel)
				var err error
				for range 6 {
					if err = l.Grow(ctx, 90); err != nil {
						break
					}
					notePeak()
				}
				if err == nil {
					select { // hold it until pre-empted
					case <-ctx.Done():
					case <-others:
					}
				}
				done()
				cancel()
				l.Release()
			}
		})
	}
	var wg sync.WaitGroup
	var served atomic.Int64
	for i := range 8 {
		wg.Go(func() {
			for range 30 {
				// Come when the hog has filled the budget again: each grow
				// then needs a pre-emption, or room another caller's
				// pre-emption brought.
				for deadline := time.Now().Add(10 * time.Second); b.InUse() <= limit-90; {
					if time.Now().After(deadline) {
						t.Errorf("the hog did not fill the budget again (in use %d)", b.InUse())
						return
					}
					runtime.Gosched()
				}
				l := b.Lease(fmt.Sprint("caller", i))
				if err := l.Grow(context.Background(), 90); err != nil {
					t.Errorf("caller %d: %v", i, err)
				} else {
					served.Add(1)
				}
				notePeak()
				l.Release()
			}
		})
	}
	wg.Wait()
	close(others)
	hogs.Wait()
	t.Logf("%d of 240 served, %d pre-emptions, %d refused", served.Load(), b.Preempted(), b.Refused())
	if peak.Load() > limit {
		t.Errorf("peak %d over the limit %d", peak.Load(), limit)
	}
	if b.Preempted() == 0 {
		t.Error("the hog was never pre-empted")
	}
	if keys, waiting, pending := b.idle(); b.InUse() != 0 || keys != 0 || waiting != 0 || pending != 0 {
		t.Errorf("after every release: in use %d, %d keys, %d waiting, %d pending", b.InUse(), keys, waiting, pending)
	}
}
