package upstream

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// TestLimiterTakesTurns: beyond max, slots go to callers in turn: a caller
// with many waiting calls gets one slot per round, so another caller's
// single call is not served after all of them. A waiter whose context ends
// leaves the queue, and a slot handed to it as it gives up is passed on.
func TestLimiterTakesTurns(t *testing.T) {
	l := newLimiter(1)
	hold, err := l.acquire(context.Background(), "busy")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []string
	var wg sync.WaitGroup
	start := func(caller string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			release, err := l.acquire(context.Background(), caller)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, caller)
			mu.Unlock()
			release()
		}()
	}
	for i := range 4 { // a caller with many pages queued first
		start("busy")
		waitQueued(t, l, i+1)
	}
	start("other")
	waitQueued(t, l, 5)
	if got := l.inFlightNow(); got != 1 {
		t.Fatalf("in flight = %d with max 1", got)
	}
	hold()
	wg.Wait()
	if len(order) != 5 || order[1] != "other" {
		t.Errorf("served in order %v; want the other caller second, not after every busy call", order)
	}
	if got := l.inFlightNow(); got != 0 {
		t.Errorf("in flight = %d after every release", got)
	}

	// A waiter that gives up leaves nothing behind.
	hold, _ = l.acquire(context.Background(), "a")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := l.acquire(ctx, "b"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a waiter whose context ended: %v", err)
	}
	hold()
	if got, q := l.inFlightNow(), len(l.round); got != 0 || q != 0 {
		t.Errorf("after a waiter gave up: in flight %d, callers waiting %d", got, q)
	}
	// No bound: everything passes, and is counted.
	free := newLimiter(0)
	r1, _ := free.acquire(context.Background(), "x")
	r2, _ := free.acquire(context.Background(), "x")
	if got := free.inFlightNow(); got != 2 {
		t.Errorf("unbounded in flight = %d, want 2", got)
	}
	r1()
	r2()
}

// waitQueued waits until l's queues hold n waiters.
func waitQueued(t *testing.T, l *limiter, n int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		l.mu.Lock()
		got := 0
		for _, q := range l.queues {
			got += len(q)
		}
		l.mu.Unlock()
		if got == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("%d calls did not queue", n)
}
