package budget

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"
)

func TestGrowWithinTheLimitAndRelease(t *testing.T) {
	b := New(100, time.Millisecond)
	l1, l2 := b.Lease("a"), b.Lease("b")
	if err := l1.Grow(context.Background(), 60); err != nil {
		t.Fatal(err)
	}
	if err := l2.Grow(context.Background(), 40); err != nil {
		t.Fatal(err)
	}
	if got := b.InUse(); got != 100 {
		t.Fatalf("in use %d, want 100", got)
	}
	if err := l2.Grow(context.Background(), 1); !errors.Is(err, ErrBusy) {
		t.Fatalf("grow past the limit: %v, want ErrBusy", err)
	}
	if b.Refused() != 1 {
		t.Errorf("refused %d, want 1", b.Refused())
	}
	l1.Release()
	l1.Release() // twice is harmless
	if got := b.InUse(); got != 40 {
		t.Fatalf("in use after release %d, want 40", got)
	}
	if err := l2.Grow(context.Background(), 60); err != nil {
		t.Fatalf("grow into the freed room: %v", err)
	}
}

// Shrink gives part of a lease back (a streamed view's pages once sent),
// never more than it holds; the room is free for others at once.
func TestShrink(t *testing.T) {
	b := New(100, time.Millisecond)
	l := b.Lease("a")
	if err := l.Grow(context.Background(), 80); err != nil {
		t.Fatal(err)
	}
	l.Shrink(30)
	if l.Held() != 50 || b.InUse() != 50 || b.HeldBy("a") != 50 {
		t.Fatalf("after Shrink(30) of 80: lease %d, in use %d, key %d; want 50", l.Held(), b.InUse(), b.HeldBy("a"))
	}
	if err := b.Lease("b").Grow(context.Background(), 50); err != nil {
		t.Fatalf("grow into the room given back: %v", err)
	}
	l.Shrink(1000)
	if l.Held() != 0 || b.InUse() != 50 {
		t.Fatalf("Shrink of more than held: lease %d, in use %d; want 0 and 50", l.Held(), b.InUse())
	}
}

// A request that needs more than the whole budget is told so at once: it
// could never be served, however long it waited.
func TestMoreThanTheWholeBudget(t *testing.T) {
	b := New(100, time.Hour)
	l := b.Lease("a")
	if err := l.Grow(context.Background(), 70); err != nil {
		t.Fatal(err)
	}
	var tooLarge *TooLargeError
	if err := l.Grow(context.Background(), 31); !errors.As(err, &tooLarge) || tooLarge.Limit != 100 {
		t.Fatalf("grow to 101 of 100: %v, want *TooLargeError", err)
	}
	if l.Held() != 70 {
		t.Errorf("a refused grow changed the lease: %d", l.Held())
	}
}

// A waiting Grow takes the room as soon as another lease gives it back.
func TestWaitingGrowWakesOnRelease(t *testing.T) {
	b := New(100, time.Minute)
	holder := b.Lease("a")
	if err := holder.Grow(context.Background(), 100); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Lease("b").Grow(context.Background(), 50) }()
	select {
	case err := <-done:
		t.Fatalf("grow did not wait: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	holder.Release()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("grow still waiting after the release")
	}
	if got := b.InUse(); got != 50 {
		t.Errorf("in use %d, want 50", got)
	}
}

func TestWaitEndsWithTheContext(t *testing.T) {
	b := New(10, time.Hour)
	if err := b.Lease("a").Grow(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Lease("b").Grow(ctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
}

// The reader charges what it reads (in steps), and its error is the
// budget's when the bytes find no room.
func TestReaderCharges(t *testing.T) {
	b := New(4*chargeStep, time.Millisecond)
	l := b.Lease("a")
	data := bytes.Repeat([]byte("x"), 3*chargeStep+10)
	got, err := io.ReadAll(l.Reader(context.Background(), bytes.NewReader(data)))
	if err != nil || len(got) != len(data) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	if held := l.Held(); held < int64(len(data)) || held > int64(len(data))+chargeStep {
		t.Errorf("lease holds %d for %d bytes read", held, len(data))
	}
	other := b.Lease("b")
	_, err = io.ReadAll(other.Reader(context.Background(), bytes.NewReader(data)))
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("second reader: %v, want ErrBusy", err)
	}
	other.Release()
	l.Release()
	if b.InUse() != 0 {
		t.Errorf("in use %d after every release", b.InUse())
	}
}

// Many leases growing and releasing at once never hold more than the limit
// and leave nothing behind.
func TestConcurrentLeasesStayWithinTheLimit(t *testing.T) {
	b := New(1000, 50*time.Millisecond)
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	for i := range 32 {
		wg.Go(func() {
			for range 20 {
				l := b.Lease(fmt.Sprint("k", i%8)) // 8 callers, 4 requests each at once
				for range 3 {
					if l.Grow(context.Background(), 100) != nil {
						break
					}
					mu.Lock()
					peak = max(peak, b.InUse())
					mu.Unlock()
				}
				l.Release()
			}
		})
	}
	wg.Wait()
	if peak > 1000 {
		t.Errorf("peak %d over the limit 1000", peak)
	}
	if b.InUse() != 0 {
		t.Errorf("in use %d after every release", b.InUse())
	}
}

// Reading many small bodies costs what they hold, not a step each: the
// bytes taken ahead and not read come back when each body ends.
func TestSmallReadsCostWhatTheyRead(t *testing.T) {
	b := New(1<<20, time.Millisecond)
	l := b.Lease("a")
	for range 100 { // 100 steps ahead would be 6.4 MiB
		if _, err := io.ReadAll(l.Reader(context.Background(), bytes.NewReader([]byte("0123456789")))); err != nil {
			t.Fatal(err)
		}
	}
	if held := l.Held(); held != 1000 {
		t.Errorf("lease holds %d after reading 100 × 10 bytes, want 1000", held)
	}
}
