package gate

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Waiters of one key get their turn in arrival order; another key never
// waits for them.
func TestTurnsInArrivalOrder(t *testing.T) {
	g := New(1, 10)
	release, err := g.Enter(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var order []int
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			rel, err := g.Enter(context.Background(), "a")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			rel()
		})
		waitFor(t, func() bool { return g.Waiting() == i+1 }) // arrival order is i's order
	}
	other, err := g.Enter(context.Background(), "b")
	if err != nil {
		t.Fatalf("another key waited: %v", err)
	}
	other()
	release()
	wg.Wait()
	for i, v := range order {
		if v != i {
			t.Fatalf("turns in order %v, want 0..4", order)
		}
	}
	if g.Keys() != 0 || g.Waiting() != 0 {
		t.Errorf("left behind: %d keys, %d waiting", g.Keys(), g.Waiting())
	}
}

// Beyond MaxWaiting waiters a request that needs a slot is refused at
// once, and beyond RidersPerWaiting × MaxWaiting riders one that rides;
// riders do not take waiters' places, nor waiters riders'; slots allow
// that many holders at a time.
func TestBoundedWaitingAndSlots(t *testing.T) {
	g := New(2, 2)
	r1, _ := g.Enter(context.Background(), "a")
	r2, err := g.Enter(context.Background(), "a")
	if err != nil {
		t.Fatalf("second slot: %v", err)
	}
	var leaves []func()
	for i := range RidersPerWaiting * 2 {
		leave, err := g.Ride("a")
		if err != nil {
			t.Fatalf("rider %d within the bound: %v", i, err)
		}
		leaves = append(leaves, leave)
	}
	if _, err := g.Ride("a"); !errors.Is(err, ErrBusy) {
		t.Fatalf("a rider beyond the bound: %v, want ErrBusy", err)
	}
	done := make(chan struct{}, 2)
	for range 2 {
		go func() {
			rel, err := g.Enter(context.Background(), "a")
			if err == nil {
				rel()
			}
			done <- struct{}{}
		}()
	}
	waitFor(t, func() bool { return g.Waiting() == 2*RidersPerWaiting+2 })
	if _, err := g.Enter(context.Background(), "a"); !errors.Is(err, ErrBusy) {
		t.Fatalf("third waiter: %v, want ErrBusy", err)
	}
	if g.Busy() != 2 {
		t.Errorf("busy %d, want 2", g.Busy())
	}
	for _, leave := range leaves {
		leave()
	}
	r1()
	r2()
	<-done
	<-done
	if g.Keys() != 0 || g.Waiting() != 0 {
		t.Errorf("left behind: %d keys, %d waiting", g.Keys(), g.Waiting())
	}
}

// A waiter that gives up leaves the queue; a slot handed to it as it gave
// up goes on to the next one.
func TestGivingUpPassesTheTurnOn(t *testing.T) {
	g := New(1, 10)
	release, _ := g.Enter(context.Background(), "a")
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan error, 1)
	go func() { _, err := g.Enter(ctx, "a"); gaveUp <- err }()
	waitFor(t, func() bool { return g.Waiting() == 1 })
	next := make(chan struct{})
	go func() {
		rel, err := g.Enter(context.Background(), "a")
		if err == nil {
			rel()
		}
		close(next)
	}()
	waitFor(t, func() bool { return g.Waiting() == 2 })
	cancel()
	if err := <-gaveUp; !errors.Is(err, context.Canceled) {
		t.Fatalf("gave up with %v", err)
	}
	release()
	select {
	case <-next:
	case <-time.After(5 * time.Second):
		t.Fatal("the turn was not passed on")
	}
	if g.Keys() != 0 {
		t.Errorf("%d keys left", g.Keys())
	}
}

// Many requests entering, giving up and releasing at random never lose a
// slot or hold more than the slots.
func TestConcurrentUse(t *testing.T) {
	g := New(2, 1000)
	var mu sync.Mutex
	holding, peak := 0, 0
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%4)*time.Millisecond)
			defer cancel()
			rel, err := g.Enter(ctx, "k")
			if err != nil {
				return
			}
			mu.Lock()
			holding++
			peak = max(peak, holding)
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			holding--
			mu.Unlock()
			rel()
		})
	}
	wg.Wait()
	if peak > 2 {
		t.Errorf("%d holders at once, want at most 2", peak)
	}
	if g.Keys() != 0 || g.Waiting() != 0 {
		t.Errorf("left behind: %d keys, %d waiting", g.Keys(), g.Waiting())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(time.Millisecond)
	}
}
