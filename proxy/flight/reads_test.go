package flight

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestReadsBeginAfterTheyAreAsked: a read of the count shared between
// riders began after each of them asked: an asker joins a read not begun
// yet, never one under way; a burst of askers shares a few reads.
func TestReadsBeginAfterTheyAreAsked(t *testing.T) {
	t.Parallel()
	var c Reads[int64]
	var mu sync.Mutex
	var reads int64
	started := make(chan struct{})
	release := make(chan struct{})
	read := func(context.Context) (int64, error) {
		mu.Lock()
		reads++
		n := reads
		mu.Unlock()
		if n == 1 {
			close(started)
			<-release
		}
		return n, nil
	}
	first := make(chan int64, 1)
	go func() { n, _ := c.Read(context.Background(), read); first <- n }()
	<-started // the first read is under way: later askers must not join it
	var wg sync.WaitGroup
	later := make([]int64, 20)
	for i := range later {
		wg.Go(func() { later[i], _ = c.Read(context.Background(), read) })
	}
	for deadline := time.Now().Add(10 * time.Second); c.waiting() != len(later); runtime.Gosched() {
		if time.Now().After(deadline) { // every later asker joins the next read
			t.Fatalf("%d of %d later askers joined the next read", c.waiting(), len(later))
		}
	}
	close(release)
	wg.Wait()
	if n := <-first; n != 1 {
		t.Errorf("the first asker got read %d, want 1", n)
	}
	for i, n := range later {
		if n < 2 {
			t.Errorf("asker %d got read %d, begun before it asked", i, n)
		}
	}
	if reads != 2 {
		t.Errorf("%d reads for 21 askers; want 2 (the one under way, and one for all who asked meanwhile)", reads)
	}
}
